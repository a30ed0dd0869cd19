//! The Event queue and event records (SMMUv3 3.5 Queues, 7.2 Event queue recorded faults
//! and events, 7.3 Event records).
//!
//! The SMMU writes 32-byte records at EVENTQ_PROD and advances it; software reads records
//! from EVENTQ_CONS and advances CONS. When the queue was full and a record had to be
//! dropped, the SMMU toggles EVENTQ_PROD.OVFLG; software acknowledges by writing
//! EVENTQ_CONS.OVACKFLG equal to it (7.4 Event queue overflow).
//!
//! Records are also lost when the SMMU's write of one is aborted: SMMU_GERROR.EVENTQ_ABT_ERR
//! (6.3.18) becomes active, and software acknowledges it by toggling the same bit of
//! SMMU_GERRORN (6.3.19). QEMU (hw/arm/smmuv3.c, up to at least 10.0) signals a full queue
//! this way instead of with OVFLG. Both are reported as lost records.
//!
//! Interrupts (3.18 Interrupts and notifications, 6.3.16 SMMU_IRQ_CTRL): the Event queue
//! interrupt is edge-like, sent when the queue goes from empty to non-empty, and the GERROR
//! interrupt when a GERROR condition becomes active. A record written while the queue still
//! holds unconsumed records raises nothing, so [`EventQueue::drain`] reads EVENTQ_PROD again
//! after returning the slots and keeps draining until it sees the queue empty: the next
//! record then raises the next interrupt. Both interrupts are wired lines or, with
//! SMMU_IDR0.MSI, messages configured in `*_IRQ_CFG0..2` (6.3.20 to 6.3.22, 6.3.30 to 6.3.32).

use embedded_hal::delay::DelayNs;

use super::regs::{self, Idr0, gerror, irq, queue};
use super::{SmmuError, Timing, WaitFor, poll};
use crate::backend::{FaultInterrupt, FaultReason, FaultRecord, UnitIndex};
use crate::mem::{PhysAddr, PhysMem, RegisterAccess};

/// Size of one event record in bytes (7.3).
pub const EVENT_SIZE: u64 = 32;
/// log2 of the records one 4 KiB frame holds.
pub const MAX_LOG2_ENTRIES: u32 = 7;

/// Event type codes (7.3, bits 7:0 of the first doubleword).
pub mod event {
    /// F_UUT: unsupported upstream transaction.
    pub const F_UUT: u8 = 0x01;
    /// C_BAD_STREAMID: StreamID out of range of the stream table (or its level-1 entry
    /// invalid).
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// F_STE_FETCH: abort fetching an STE.
    pub const F_STE_FETCH: u8 = 0x03;
    /// C_BAD_STE: an invalid or ILLEGAL STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// F_STREAM_DISABLED: stream table not in use for this traffic.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// F_TRANSL_FORBIDDEN: translated transaction refused.
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    /// C_BAD_SUBSTREAMID.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// F_CD_FETCH: abort fetching a CD.
    pub const F_CD_FETCH: u8 = 0x09;
    /// C_BAD_CD: an invalid or ILLEGAL CD.
    pub const C_BAD_CD: u8 = 0x0a;
    /// F_WALK_EABT: external abort during a table walk.
    pub const F_WALK_EABT: u8 = 0x0b;
    /// F_TRANSLATION: no valid translation (invalid descriptor, or input beyond T0SZ).
    pub const F_TRANSLATION: u8 = 0x10;
    /// F_ADDR_SIZE: output address beyond the configured size.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// F_ACCESS: access flag fault (AF = 0 in a leaf).
    pub const F_ACCESS: u8 = 0x12;
    /// F_PERMISSION: the leaf does not allow the access.
    pub const F_PERMISSION: u8 = 0x13;
}

/// Bit 35 of the second doubleword (event bit 99): RnW, 1 = read (7.3.x, records carrying
/// an access).
const RNW: u64 = 1 << 35;

/// Decodes one record (`d` = its four doublewords) from `unit` into a [`FaultRecord`]:
/// StreamID (bits 63:32) is the device, InputAddr (third doubleword) the IOVA; RnW gives the
/// direction for records that describe an access (translation-class faults, F_UUT,
/// F_TRANSL_FORBIDDEN, F_WALK_EABT), others report `write: false`.
pub fn decode(unit: UnitIndex, d: [u64; 4]) -> FaultRecord {
    let ty = d[0] as u8;
    let carries_access = matches!(
        ty,
        event::F_UUT
            | event::F_TRANSL_FORBIDDEN
            | event::F_WALK_EABT
            | event::F_TRANSLATION
            | event::F_ADDR_SIZE
            | event::F_ACCESS
            | event::F_PERMISSION
    );
    let reason = match ty {
        event::F_TRANSLATION => FaultReason::NotPresent,
        event::F_PERMISSION => FaultReason::Permission,
        event::F_ADDR_SIZE => FaultReason::AddressSize,
        event::C_BAD_STREAMID
        | event::C_BAD_STE
        | event::F_STREAM_DISABLED
        | event::F_TRANSL_FORBIDDEN => FaultReason::Blocked,
        // F_ACCESS cannot come from tables this server built (every leaf has AF = 1): it is
        // reported raw, as are configuration errors the driver never provokes.
        other => FaultReason::Other(other as u16),
    };
    FaultRecord {
        unit,
        device: (d[0] >> 32) as u32,
        iova: d[2],
        write: carries_access && d[1] & RNW == 0,
        reason,
    }
}

/// Passes over the Event queue one drain makes at most before giving up on a unit that keeps
/// recording events (each pass reads at most one queue's worth of records).
pub const MAX_DRAIN_PASSES: u32 = 4;

/// Writes SMMU_IRQ_CTRL and waits (bounded) for SMMU_IRQ_CTRLACK to follow (6.3.16, 6.3.17).
fn set_irq_ctrl<R, D>(
    regs: &mut R,
    delay: &mut D,
    timing: Timing,
    value: u32,
) -> Result<(), SmmuError>
where
    R: RegisterAccess + ?Sized,
    D: DelayNs + ?Sized,
{
    regs.write32(regs::IRQ_CTRL, value);
    poll(delay, timing, WaitFor::IrqCtrlAck(value), || {
        Ok(regs.read32(regs::IRQ_CTRLACK) & irq::ACK_MASK == value & irq::ACK_MASK)
    })
}

/// Enables the Event queue and GERROR interrupts (6.3.16) signalled as `irq`:
///
/// 1. interrupts off (IRQ_CTRL = 0, wait for IRQ_CTRLACK), because the MSI configuration must
///    not change while an enable is set (6.3.20, 6.3.30);
/// 2. [`FaultInterrupt::Msi`] (only with SMMU_IDR0.MSI): both sources' CFG0 = the address,
///    CFG1 = the data, CFG2 = Device-nGnRE; [`FaultInterrupt::Wired`]: on a unit with MSI
///    support both CFG0 = 0, which sends no MSI so the wired lines are used (6.3.20 ADDR);
/// 3. IRQ_CTRL = EVENTQ_IRQEN | GERROR_IRQEN, wait for IRQ_CTRLACK.
///
/// Records already in the Event queue and GERROR conditions already active raise no interrupt
/// (nothing goes from empty to non-empty): the caller drains once after enabling. An MSI the
/// unit cannot send (no IDR0.MSI, an address outside ADDR's bits 51:2) is refused before any
/// register is written.
pub fn enable_interrupt<R, D>(
    regs: &mut R,
    delay: &mut D,
    timing: Timing,
    idr0: Idr0,
    irq: FaultInterrupt,
) -> Result<(), SmmuError>
where
    R: RegisterAccess + ?Sized,
    D: DelayNs + ?Sized,
{
    let msi = match irq {
        FaultInterrupt::Msi { address, data } => {
            if !idr0.msi() || address & !irq::ADDR_MASK != 0 || address == 0 {
                return Err(SmmuError::Unsupported);
            }
            Some((address, data))
        }
        FaultInterrupt::Wired => None,
    };
    if regs.read32(regs::IRQ_CTRLACK) & irq::ACK_MASK != 0 {
        set_irq_ctrl(regs, delay, timing, 0)?;
    }
    if idr0.msi() {
        let (address, data) = msi.unwrap_or((0, 0));
        for (cfg0, cfg1, cfg2) in [
            (
                regs::EVENTQ_IRQ_CFG0,
                regs::EVENTQ_IRQ_CFG1,
                regs::EVENTQ_IRQ_CFG2,
            ),
            (
                regs::GERROR_IRQ_CFG0,
                regs::GERROR_IRQ_CFG1,
                regs::GERROR_IRQ_CFG2,
            ),
        ] {
            regs.write64(cfg0, address);
            regs.write32(cfg1, data);
            regs.write32(cfg2, irq::MEMATTR_DEVICE_NGNRE);
        }
    }
    set_irq_ctrl(regs, delay, timing, irq::EVENTQ_IRQEN | irq::GERROR_IRQEN)
}

/// The Event queue of one unit: one 4 KiB frame of up to 128 records.
#[derive(Debug)]
pub struct EventQueue {
    base: PhysAddr,
    log2: u32,
    /// Software's CONS (index and wrap bit).
    cons: u32,
    /// The overflow flag last acknowledged.
    ovack: u32,
    prod_off: usize,
    cons_off: usize,
}

impl EventQueue {
    /// A queue in the all-zero frame `base` with `2^log2` records (`log2` <= 7), whose
    /// PROD/CONS registers live at `page1 + 0xA8` / `page1 + 0xAC`.
    pub fn new(base: PhysAddr, log2: u32, page1: usize) -> Self {
        EventQueue {
            base,
            log2: log2.min(MAX_LOG2_ENTRIES),
            cons: 0,
            ovack: 0,
            prod_off: page1 + super::regs::EVENTQ_PROD_PAGE1,
            cons_off: page1 + super::regs::EVENTQ_CONS_PAGE1,
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

    /// The SMMU_EVENTQ_BASE value (6.3.29).
    pub fn base_reg(&self) -> u64 {
        queue::base(self.base, self.log2)
    }

    /// Offset of EVENTQ_PROD.
    pub fn prod_reg(&self) -> usize {
        self.prod_off
    }

    /// Offset of EVENTQ_CONS.
    pub fn cons_reg(&self) -> usize {
        self.cons_off
    }

    /// Resets the software CONS and overflow state (the unit's PROD/CONS are written 0).
    pub fn reset(&mut self) {
        self.cons = 0;
        self.ovack = 0;
    }

    fn ptr_mask(&self) -> u32 {
        (2u32 << self.log2) - 1
    }

    /// Reads every record between CONS and PROD into `sink`, returns the consumed slots to
    /// the SMMU by writing CONS (with OVACKFLG acknowledging any overflow), and reads PROD
    /// again, until PROD shows no new record (at most [`MAX_DRAIN_PASSES`] queues' worth of
    /// records per call, whatever PROD says). The queue is then empty as the SMMU last saw
    /// it, so its next record raises the Event queue interrupt (3.18). Returns whether records
    /// were lost and the number of records delivered.
    ///
    /// Records were lost if EVENTQ_PROD.OVFLG differs from the last acknowledged value (7.4)
    /// or GERROR.EVENTQ_ABT_ERR is active (6.3.18). The latter is acknowledged (its GERRORN
    /// bit toggled, no other bit changed) before the queue is read, so that a record
    /// dropped while this call drains raises it again and is reported by the next call.
    ///
    /// When the unit is not coherent (`coherent` false), each record's bytes are invalidated
    /// from the CPU caches ([`PhysMem::sync_for_cpu`]) before they are read.
    pub fn drain<R, M>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        coherent: bool,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> (bool, u64)
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
    {
        let gerrorn = regs.read32(regs::GERRORN);
        let abort = (regs.read32(regs::GERROR) ^ gerrorn) & gerror::EVENTQ_ABT_ERR != 0;
        if abort {
            regs.write32(regs::GERRORN, gerrorn ^ gerror::EVENTQ_ABT_ERR);
        }
        let entries = 1u32 << self.log2;
        let mut total = 0u64;
        let mut overflow = false;
        for _ in 0..MAX_DRAIN_PASSES {
            let raw = regs.read32(self.prod_off);
            let prod = raw & self.ptr_mask();
            let ovflg = raw & queue::OVFLG;
            let avail = prod.wrapping_sub(self.cons) & self.ptr_mask();
            let n = avail.min(entries);
            for _ in 0..n {
                let pa = self.base + (self.cons & (entries - 1)) as u64 * EVENT_SIZE;
                if !coherent {
                    mem.sync_for_cpu(pa, EVENT_SIZE);
                }
                let d = [
                    mem.read_u64(pa),
                    mem.read_u64(pa + 8),
                    mem.read_u64(pa + 16),
                    mem.read_u64(pa + 24),
                ];
                sink(decode(unit, d));
                self.cons = (self.cons + 1) & self.ptr_mask();
            }
            let lost = ovflg != self.ovack;
            self.ovack = ovflg;
            overflow |= lost;
            total += u64::from(n);
            if n == 0 && !lost {
                break;
            }
            // Hands the slots back to the SMMU; RegisterAccess orders this write after the
            // reads of the records above, so none is overwritten before it was read.
            regs.write32(self.cons_off, self.cons | self.ovack);
        }
        (overflow || abort, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_events() {
        let rec = |ty: u64, sid: u64, rnw: bool, addr: u64| {
            decode(2, [ty | (sid << 32), if rnw { RNW } else { 0 }, addr, 0])
        };
        let r = rec(0x10, 8, false, 0x1234_5678);
        assert_eq!(
            r,
            FaultRecord {
                unit: 2,
                device: 8,
                iova: 0x1234_5678,
                write: true,
                reason: FaultReason::NotPresent
            }
        );
        assert!(!rec(0x10, 8, true, 0).write);
        assert_eq!(rec(0x13, 1, false, 0).reason, FaultReason::Permission);
        assert_eq!(rec(0x11, 1, false, 0).reason, FaultReason::AddressSize);
        assert_eq!(rec(0x12, 1, false, 0).reason, FaultReason::Other(0x12));
        assert_eq!(rec(0x04, 1, false, 0).reason, FaultReason::Blocked);
        assert_eq!(rec(0x02, 0xffff, false, 0).reason, FaultReason::Blocked);
        assert!(!rec(0x04, 1, false, 0).write, "no access in config errors");
        assert_eq!(rec(0x0a, 1, false, 0).reason, FaultReason::Other(0x0a));
    }

    type Mem = std::collections::BTreeMap<u64, u64>;

    /// The registers of a unit whose Event queue (4 records at 0x1000) the test fills:
    /// GERROR/GERRORN, EVENTQ_PROD/CONS (page 0 aliases), and the values written.
    #[derive(Default)]
    struct Fake {
        gerror: u32,
        gerrorn: u32,
        prod: u32,
        cons: u32,
        writes: std::vec::Vec<(usize, u32)>,
    }

    impl RegisterAccess for Fake {
        fn read32(&mut self, offset: usize) -> u32 {
            match offset {
                regs::GERROR => self.gerror,
                regs::GERRORN => self.gerrorn,
                regs::EVENTQ_PROD_PAGE1 => self.prod,
                regs::EVENTQ_CONS_PAGE1 => self.cons,
                _ => 0,
            }
        }
        fn write32(&mut self, offset: usize, value: u32) {
            self.writes.push((offset, value));
            match offset {
                regs::GERRORN => self.gerrorn = value,
                regs::EVENTQ_CONS_PAGE1 => self.cons = value,
                _ => {}
            }
        }
        fn read64(&mut self, _offset: usize) -> u64 {
            0
        }
        fn write64(&mut self, _offset: usize, _value: u64) {}
    }

    impl PhysMem for Mem {
        fn read_u64(&self, pa: u64) -> u64 {
            *self.get(&pa).unwrap_or(&0)
        }
        fn write_u64(&mut self, pa: u64, v: u64) {
            self.insert(pa, v);
        }
        fn order_writes(&mut self) {}
    }

    impl Fake {
        /// The SMMU records a C_BAD_STE for `sid` (if there is room).
        fn record(&mut self, mem: &mut Mem, sid: u32) -> bool {
            let used = self.prod.wrapping_sub(self.cons) & 7;
            if used == 4 {
                return false;
            }
            let pa = 0x1000 + u64::from(self.prod & 3) * EVENT_SIZE;
            mem.insert(pa, u64::from(event::C_BAD_STE) | (u64::from(sid) << 32));
            self.prod = (self.prod + 1) & 7;
            true
        }
    }

    #[test]
    fn eventq_abort_error_is_lost_records_acknowledged_and_drained() {
        let mut f = Fake {
            gerror: gerror::CMDQ_ERR, // active, not the queue's business
            ..Fake::default()
        };
        let mut mem = Mem::new();
        let mut q = EventQueue::new(0x1000, 2, 0);
        // A flood: the queue fills, the fifth record is dropped with EVENTQ_ABT_ERR (QEMU).
        for _ in 0..5 {
            if !f.record(&mut mem, 8) {
                f.gerror ^= gerror::EVENTQ_ABT_ERR;
            }
        }
        let mut got = std::vec::Vec::new();
        let (lost, n) = q.drain(&mut f, &mut mem, true, 0, &mut |r| got.push(r));
        assert!(lost);
        assert_eq!(n, 4, "drained in the same call");
        assert!(
            got.iter()
                .all(|r| r.device == 8 && r.reason == FaultReason::Blocked)
        );
        assert_eq!(
            f.gerrorn,
            gerror::EVENTQ_ABT_ERR,
            "only EVENTQ_ABT_ERR acknowledged"
        );
        let ack = f.writes.iter().position(|w| w.0 == regs::GERRORN);
        let cons = f.writes.iter().position(|w| w.0 == regs::EVENTQ_CONS_PAGE1);
        assert!(ack < cons, "acknowledged before the records are released");
        assert_eq!(f.cons, 4);
        // Nothing new: nothing lost, nothing written.
        f.writes.clear();
        assert_eq!(
            q.drain(&mut f, &mut mem, true, 0, &mut |_| panic!()),
            (false, 0)
        );
        assert!(f.writes.is_empty());
    }
}
