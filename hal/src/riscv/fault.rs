//! The fault queue and fault records (RISC-V IOMMU spec 1.0, 3.2 "Fault/Event-Queue (FQ)";
//! 5.9 to 5.11 and 5.16 for `fqb`, `fqh`, `fqt` and `fqcsr`; 5.18 `ipsr`).
//!
//! The unit writes 32-byte records at `fqt` and advances it; software reads from `fqh` and
//! advances `fqh`. The queue is full when `fqt == fqh - 1`. A record that finds the queue full
//! is discarded and `fqcsr.fqof` set; a memory fault writing a record sets `fqcsr.fqmf`. While
//! either bit is set every further record is discarded, until software clears it (RW1C).
//! When fault-queue interrupts are enabled (`fqcsr.fie`), a new record or an error bit sets
//! `ipsr.fip`, which software clears by writing 1.

use super::regs::{self, fqcsr, ipsr};
use crate::backend::{FaultReason, FaultRecord, UnitIndex};
use crate::mem::{PhysAddr, PhysMem, RegisterAccess};

/// Size of one fault record in bytes (3.2).
pub const RECORD_SIZE: u64 = 32;
/// log2 of the records one 4 KiB frame holds.
pub const MAX_LOG2_ENTRIES: u32 = 7;

/// Fault `CAUSE` codes (3.2, table "Fault record CAUSE field encodings").
pub mod cause {
    /// Instruction access fault.
    pub const INSTR_ACCESS: u16 = 1;
    /// Read access fault (e.g. a page-table load refused by PMA/PMP).
    pub const READ_ACCESS: u16 = 5;
    /// Write/AMO access fault.
    pub const WRITE_ACCESS: u16 = 7;
    /// Instruction page fault.
    pub const INSTR_PAGE: u16 = 12;
    /// Read page fault: no valid first-stage translation allows the read.
    pub const READ_PAGE: u16 = 13;
    /// Write/AMO page fault: no valid first-stage translation allows the write.
    pub const WRITE_PAGE: u16 = 15;
    /// All inbound transactions disallowed (`ddtp.iommu_mode` = Off).
    pub const ALL_DISALLOWED: u16 = 256;
    /// DDT entry load access fault.
    pub const DDT_LOAD_ACCESS: u16 = 257;
    /// DDT entry not valid: the device is blocked (or its DDT path was never built).
    pub const DDT_INVALID: u16 = 258;
    /// DDT entry misconfigured.
    pub const DDT_MISCONFIGURED: u16 = 259;
    /// Transaction type disallowed (e.g. a `device_id` wider than the DDT resolves).
    pub const TTYP_DISALLOWED: u16 = 260;
}

/// Fault record `TTYP` encodings (3.2, table "Fault record TTYP field encodings").
pub mod ttyp {
    /// Untranslated read for execute.
    pub const UNTRANSLATED_EXEC: u8 = 1;
    /// Untranslated read.
    pub const UNTRANSLATED_READ: u8 = 2;
    /// Untranslated write/AMO.
    pub const UNTRANSLATED_WRITE: u8 = 3;
    /// Translated read for execute.
    pub const TRANSLATED_EXEC: u8 = 5;
    /// Translated read.
    pub const TRANSLATED_READ: u8 = 6;
    /// Translated write/AMO.
    pub const TRANSLATED_WRITE: u8 = 7;
    /// PCIe ATS translation request.
    pub const ATS_REQUEST: u8 = 8;
}

/// Decodes one record (`d` = its four doublewords) from `unit` (3.2, "Fault-queue record"):
/// `CAUSE` bits 11:0, `TTYP` bits 39:34 and `DID` bits 63:40 of doubleword 0, `iotval` in
/// doubleword 2 (the IOVA, for transaction types that carry one).
///
/// Reasons: the page faults (12, 13, 15) are [`FaultReason::NotPresent`]: RISC-V reports a
/// missing translation and one that does not allow the access with the same cause, and this
/// driver's tables have no other reason to fault (every leaf has A = D = 1 and U = 1). "All
/// inbound transactions disallowed" (256), "DDT entry not valid" (258) and "Transaction type
/// disallowed" (260) are [`FaultReason::Blocked`]. Everything else is reported raw.
pub fn decode(unit: UnitIndex, d: [u64; 4]) -> FaultRecord {
    let cause = (d[0] & 0xfff) as u16;
    let t = ((d[0] >> 34) & 0x3f) as u8;
    let reason = match cause {
        cause::INSTR_PAGE | cause::READ_PAGE | cause::WRITE_PAGE => FaultReason::NotPresent,
        cause::ALL_DISALLOWED | cause::DDT_INVALID | cause::TTYP_DISALLOWED => FaultReason::Blocked,
        other => FaultReason::Other(other),
    };
    let carries_iova = matches!(
        t,
        ttyp::UNTRANSLATED_EXEC
            | ttyp::UNTRANSLATED_READ
            | ttyp::UNTRANSLATED_WRITE
            | ttyp::TRANSLATED_EXEC
            | ttyp::TRANSLATED_READ
            | ttyp::TRANSLATED_WRITE
            | ttyp::ATS_REQUEST
    );
    FaultRecord {
        unit,
        device: (d[0] >> 40) as u32,
        iova: if carries_iova { d[2] } else { 0 },
        write: matches!(t, ttyp::UNTRANSLATED_WRITE | ttyp::TRANSLATED_WRITE),
        reason,
    }
}

/// What one drain found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records delivered.
    pub records: u64,
    /// Records were lost (`fqof` or `fqmf` was set).
    pub lost: bool,
    /// `fqmf` was set: a record write faulted.
    pub memory_fault: bool,
}

/// The fault queue of one unit: one 4 KiB frame of up to 128 records.
#[derive(Debug)]
pub struct FaultQueue {
    base: PhysAddr,
    log2: u32,
    /// Software's `fqh`.
    head: u32,
}

impl FaultQueue {
    /// A queue in the frame `base` with `2^log2` records (1 <= `log2` <= 7).
    pub fn new(base: PhysAddr, log2: u32) -> Self {
        FaultQueue {
            base,
            log2: log2.clamp(1, MAX_LOG2_ENTRIES),
            head: 0,
        }
    }

    /// The queue frame.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// log2 of the number of records.
    pub fn log2_entries(&self) -> u32 {
        self.log2
    }

    /// The `fqb` value (5.9).
    pub fn base_reg(&self) -> u64 {
        regs::queue::base(self.base, self.log2)
    }

    /// Resets the software head (written to `fqh` with it).
    pub fn reset(&mut self) {
        self.head = 0;
    }

    /// Reads every record between `fqh` and `fqt` into `sink` and hands the slots back by
    /// writing `fqh`, following the spec's interrupt-handler sequence (chapter 6, "Guidelines
    /// for handling interrupts from IOMMU"): `ipsr.fip` is cleared first, so that a record
    /// written after `fqt` was read raises a new interrupt; `fqof`/`fqmf` are cleared after
    /// the records before them were read (re-enabling reporting), `ipsr.fip` cleared again
    /// (it stays set while an error bit is), and the queue read once more for records that
    /// arrived meanwhile. `fie` (as given) and `fqen` are kept on every `fqcsr` write. At most
    /// two queues' worth of records are read per call, whatever `fqt` says; a `fqt` outside
    /// the queue is treated as empty.
    ///
    /// When the unit is not coherent (`coherent` false), each record is invalidated from the
    /// CPU caches ([`PhysMem::sync_for_cpu`]) before it is read.
    pub fn drain<R, M>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        coherent: bool,
        fie: bool,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Drained
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
    {
        let mut out = Drained::default();
        regs.write32(regs::IPSR, ipsr::FIP);
        let csr = regs.read32(regs::FQCSR);
        out.records += self.read_records(regs, mem, coherent, unit, sink);
        let errors = csr & fqcsr::ERRORS;
        if errors != 0 {
            out.lost = true;
            out.memory_fault = errors & fqcsr::FQMF != 0;
            let keep = fqcsr::FQEN | if fie { fqcsr::FIE } else { 0 };
            regs.write32(regs::FQCSR, keep | errors);
            regs.write32(regs::IPSR, ipsr::FIP);
            out.records += self.read_records(regs, mem, coherent, unit, sink);
        }
        out
    }

    fn read_records<R, M>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        coherent: bool,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> u64
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
    {
        let entries = 1u32 << self.log2;
        let tail = regs.read32(regs::FQT);
        if tail >= entries {
            return 0;
        }
        let mut n = 0;
        while self.head != tail {
            let pa = self.base + u64::from(self.head) * RECORD_SIZE;
            if !coherent {
                mem.sync_for_cpu(pa, RECORD_SIZE);
            }
            let d = [
                mem.read_u64(pa),
                mem.read_u64(pa + 8),
                mem.read_u64(pa + 16),
                mem.read_u64(pa + 24),
            ];
            sink(decode(unit, d));
            self.head = (self.head + 1) & (entries - 1);
            n += 1;
        }
        if n > 0 {
            regs.write32(regs::FQH, self.head);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cause: u64, ttyp: u64, did: u64, iotval: u64) -> [u64; 4] {
        [cause | (ttyp << 34) | (did << 40), 0, iotval, 0]
    }

    #[test]
    fn decode_records() {
        assert_eq!(
            decode(1, rec(15, 3, 0x10, 0x1234_5000)),
            FaultRecord {
                unit: 1,
                device: 0x10,
                iova: 0x1234_5000,
                write: true,
                reason: FaultReason::NotPresent
            }
        );
        let r = decode(0, rec(13, 2, 0xab_cdef, 0x5000));
        assert_eq!((r.device, r.write, r.iova), (0xab_cdef, false, 0x5000));
        assert_eq!(
            decode(0, rec(258, 2, 8, 0x6000)).reason,
            FaultReason::Blocked
        );
        assert_eq!(decode(0, rec(258, 2, 8, 0x6000)).iova, 0x6000);
        assert_eq!(decode(0, rec(256, 3, 8, 0)).reason, FaultReason::Blocked);
        assert_eq!(decode(0, rec(260, 2, 8, 0)).reason, FaultReason::Blocked);
        assert_eq!(decode(0, rec(259, 2, 8, 0)).reason, FaultReason::Other(259));
        assert_eq!(decode(0, rec(5, 2, 8, 0)).reason, FaultReason::Other(5));
        // No transaction: no IOVA, no device access direction.
        let r = decode(0, rec(272, 0, 0, 0xdead));
        assert_eq!((r.iova, r.write), (0, false));
    }
}
