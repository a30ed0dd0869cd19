//! The command queue (RISC-V IOMMU spec 1.0, 3.1 "Command-Queue (CQ)": 3.1.1 "IOMMU
//! Page-Table cache invalidation commands", 3.1.2 "IOMMU Command-queue Fence commands",
//! 3.1.3 "IOMMU directory cache invalidation commands"; 5.6 to 5.8 and 5.15 for `cqb`, `cqh`,
//! `cqt` and `cqcsr`).
//!
//! Commands are 16 bytes. Software writes them at `cqt` and advances `cqt`; the unit fetches
//! from `cqh` and advances it. The indexes hold no wrap bit: the queue is empty when
//! `cqh == cqt` and full when `cqt == cqh - 1`, so one slot always stays unused. The unit may
//! execute fetched commands out of order: only the completion of an `IOFENCE.C`, seen as `cqh`
//! moving past it, guarantees that every earlier command completed. Every batch therefore
//! ends with one `IOFENCE.C` (with `PR` and `PW`, so that device accesses already translated
//! under an old mapping are committed before memory is reused), and is complete when `cqh`
//! reaches the batch's end.
//!
//! Errors (`cqcsr`): an illegal or unsupported command stops the queue with `cmd_ill` set and
//! `cqh` at the command; a command timeout sets `cmd_to`, a memory fault `cqmf`. Each stops
//! processing until software clears it by writing 1. This driver replaces an illegal command
//! by an `IOFENCE.C` (always legal) before clearing `cmd_ill`, so the queue resumes and the
//! batch completes, and reports the error.

use embedded_hal::delay::DelayNs;
use heapless::Vec;

use super::regs::{self, cqcsr};
use super::{RiscvCounters, RiscvError, Timing, WaitFor, poll};
use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};
use crate::pagetable::Gather;

/// Size of one command in bytes (3.1).
pub const CMD_SIZE: u64 = 16;
/// log2 of the commands one 4 KiB frame holds.
pub const MAX_LOG2_ENTRIES: u32 = 8;
/// The most commands one batch may carry (an `IOFENCE.C` is added).
pub const MAX_BATCH: usize = 20;
/// The most address-specific `IOTINVAL.VMA` commands one gather may take (one per 4 KiB
/// page) before a whole-PSCID invalidation is used instead.
pub const MAX_ADDR_CMDS: u64 = 16;

/// Command opcodes (3.1, table "IOMMU command opcodes").
pub mod op {
    /// `IOTINVAL` (3.1.1).
    pub const IOTINVAL: u8 = 1;
    /// `IOFENCE` (3.1.2).
    pub const IOFENCE: u8 = 2;
    /// `IODIR` (3.1.3).
    pub const IODIR: u8 = 3;
    /// `ATS` (3.1.4; never issued).
    pub const ATS: u8 = 4;
}

/// `IOTINVAL` dword 0: bit 10 `AV`, address valid.
const IOTINVAL_AV: u64 = 1 << 10;
/// `IOTINVAL` dword 0: bits 31:12 `PSCID`.
const IOTINVAL_PSCID_SHIFT: u32 = 12;
/// `IOTINVAL` dword 0: bit 32 `PSCV`, `PSCID` valid.
const IOTINVAL_PSCV: u64 = 1 << 32;
/// `IOTINVAL` dword 1: bits 61:10 hold `ADDR[63:12]`.
const IOTINVAL_ADDR_SHIFT: u32 = 10;
/// `IOFENCE` dword 0: bit 12 `PR`, order previous device reads.
const IOFENCE_PR: u64 = 1 << 12;
/// `IOFENCE` dword 0: bit 13 `PW`, order previous device writes.
const IOFENCE_PW: u64 = 1 << 13;
/// `IODIR` dword 0: bit 33 `DV`, `DID` valid.
const IODIR_DV: u64 = 1 << 33;
/// `IODIR` dword 0: bits 63:40 `DID`.
const IODIR_DID_SHIFT: u32 = 40;
/// `func3` (bits 9:7) position.
const FUNC3_SHIFT: u32 = 7;

/// One command, independent of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cmd {
    /// `IOTINVAL.VMA` with `GV` = 0 (host address spaces, second stage Bare): every cached
    /// first-stage translation of `pscid` (all PSCIDs when `None`); with an address, only
    /// entries holding a leaf for that IOVA (non-leaf entries stay cached).
    IotinvalVma {
        /// `PSCV`/`PSCID`.
        pscid: Option<u32>,
        /// `AV`/`ADDR` (bits 63:12 used).
        addr: Option<u64>,
    },
    /// `IODIR.INVAL_DDT`: the cached device context of `did` (with its PDT entries), or
    /// every cached DDT entry when `None`.
    IodirInvalDdt {
        /// `DV`/`DID`.
        did: Option<u32>,
    },
    /// `IOFENCE.C` with `PR` = `PW` = 1 and no `AV`/`WSI`: completes once every earlier
    /// command completed and every device access already processed is committed.
    IofenceC,
}

impl Cmd {
    /// The two doublewords of the command (3.1.1 to 3.1.3).
    pub const fn encode(self) -> [u64; 2] {
        match self {
            Cmd::IotinvalVma { pscid, addr } => {
                let mut d0 = op::IOTINVAL as u64; // func3 0 = VMA
                if let Some(p) = pscid {
                    d0 |= (((p as u64) & 0xf_ffff) << IOTINVAL_PSCID_SHIFT) | IOTINVAL_PSCV;
                }
                let d1 = match addr {
                    Some(a) => {
                        d0 |= IOTINVAL_AV;
                        (a >> 12) << IOTINVAL_ADDR_SHIFT
                    }
                    None => 0,
                };
                [d0, d1]
            }
            Cmd::IodirInvalDdt { did } => {
                let mut d0 = op::IODIR as u64; // func3 0 = INVAL_DDT
                if let Some(d) = did {
                    d0 |= IODIR_DV | (((d as u64) & 0xff_ffff) << IODIR_DID_SHIFT);
                }
                [d0, 0]
            }
            Cmd::IofenceC => [op::IOFENCE as u64 | IOFENCE_PR | IOFENCE_PW, 0],
        }
    }

    fn count(self, c: &mut RiscvCounters) {
        match self {
            Cmd::IotinvalVma {
                addr: Some(_),
                pscid: Some(_),
            } => c.iotinval_addr += 1,
            Cmd::IotinvalVma { pscid: Some(_), .. } => c.iotinval_pscid += 1,
            Cmd::IotinvalVma { pscid: None, .. } => c.iotinval_all += 1,
            Cmd::IodirInvalDdt { .. } => c.iodir_ddt += 1,
            Cmd::IofenceC => c.fences += 1,
        }
    }
}

/// The opcode and `func3` of an encoded command's first doubleword.
pub const fn opcode_func3(d0: u64) -> (u8, u8) {
    ((d0 & 0x7f) as u8, ((d0 >> FUNC3_SHIFT) & 7) as u8)
}

/// The `IOTINVAL.VMA` commands for one gather of domain `pscid` (no fence). Spec 1.0 offers
/// two forms for a host address space, address-specific (`AV` = 1, leaves only) and
/// whole-PSCID (`AV` = 0); the later Non-leaf PTE Invalidation and Address Range Invalidation
/// extensions are not used.
///
/// - a gather that removed or replaced non-leaf entries, or has no leaf span, takes the
///   whole PSCID (`AV` = 0), because address-specific invalidations reach only cached leaf
///   entries (3.1.1, table "IOTINVAL.VMA operands and operations");
/// - else one address-specific command per 4 KiB page of the span, when at most
///   [`MAX_ADDR_CMDS`] cover it;
/// - else the whole PSCID.
///
/// Address-specific commands step by 4 KiB whatever the leaf size: the spec has a command
/// remove every cached entry holding a leaf for its address, but an IOMMU that caches a large
/// leaf as 4 KiB pieces may remove only the piece holding the address (QEMU 10.0's
/// riscv-iommu does: its IOTLB is keyed by 4 KiB page and `AV` matches the page exactly), so a
/// gather of large leaves takes the whole PSCID.
pub fn iotinval_for_gather(pscid: u32, gather: &Gather) -> Vec<Cmd, MAX_BATCH> {
    let mut out = Vec::new();
    let all = Cmd::IotinvalVma {
        pscid: Some(pscid),
        addr: None,
    };
    match gather.span() {
        Some((first, last)) if !gather.tables_removed() => {
            let start = first & !(PAGE_SIZE - 1);
            let n = (last - start) / PAGE_SIZE + 1;
            if n <= MAX_ADDR_CMDS {
                for i in 0..n {
                    let _ = out.push(Cmd::IotinvalVma {
                        pscid: Some(pscid),
                        addr: Some(start + i * PAGE_SIZE),
                    });
                }
                return out;
            }
            let _ = out.push(all);
        }
        _ => {
            let _ = out.push(all);
        }
    }
    out
}

/// The command queue of one unit: one 4 KiB frame of up to 256 commands.
#[derive(Debug)]
pub struct CmdQueue {
    base: PhysAddr,
    log2: u32,
    /// Software's `cqt`.
    tail: u32,
}

impl CmdQueue {
    /// A queue in the all-zero frame `base` with `2^log2` entries (1 <= `log2` <= 8).
    pub fn new(base: PhysAddr, log2: u32) -> Self {
        CmdQueue {
            base,
            log2: log2.clamp(1, MAX_LOG2_ENTRIES),
            tail: 0,
        }
    }

    /// The queue frame.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// log2 of the number of entries.
    pub fn log2_entries(&self) -> u32 {
        self.log2
    }

    /// The `cqb` value (5.6).
    pub fn base_reg(&self) -> u64 {
        regs::queue::base(self.base, self.log2)
    }

    /// Resets the software tail (enabling the queue resets `cqh` and `cqt` to 0).
    pub fn reset(&mut self) {
        self.tail = 0;
    }

    fn entries(&self) -> u32 {
        1 << self.log2
    }

    fn entry_pa(&self, index: u32) -> PhysAddr {
        self.base + u64::from(index & (self.entries() - 1)) * CMD_SIZE
    }

    /// Reads `cqh`, refusing a value outside the queue.
    fn head<R: RegisterAccess + ?Sized>(&self, regs: &mut R) -> Result<u32, RiscvError> {
        let h = regs.read32(regs::CQH);
        if h >= self.entries() {
            return Err(RiscvError::BadQueuePointer);
        }
        Ok(h)
    }

    /// Submits `cmds` followed by an `IOFENCE.C`, and waits until `cqh` has passed the fence.
    ///
    /// Commands are written as space allows (`cqt` is written whenever the queue is full and
    /// at the end), so a batch larger than the queue still completes. A queue error seen
    /// while waiting is recovered (see [`recover`]) and, once the fence completed, reported
    /// as [`RiscvError::CommandError`]. A queue found off (`cqon` = 0) cannot complete the
    /// batch: [`RiscvError::QueueOff`].
    #[allow(clippy::too_many_arguments)]
    pub fn run<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        cie: bool,
        cmds: &[Cmd],
        counters: &mut RiscvCounters,
    ) -> Result<(), RiscvError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        counters.batches += 1;
        let mut first_err: Option<RiscvError> = None;
        let r = self.submit(
            regs,
            mem,
            delay,
            timing,
            cie,
            cmds,
            counters,
            &mut first_err,
        );
        let r = r.and_then(|()| {
            let target = self.tail;
            self.wait(
                regs,
                mem,
                delay,
                timing,
                cie,
                WaitFor::CqFence,
                &mut first_err,
                |_, head| head == target,
            )
        });
        match r.err().or(first_err) {
            Some(e) => {
                counters.count_error(e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        cie: bool,
        cmds: &[Cmd],
        counters: &mut RiscvCounters,
        first_err: &mut Option<RiscvError>,
    ) -> Result<(), RiscvError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let mask = self.entries() - 1;
        let mut head = self.head(regs)?;
        for c in cmds.iter().copied().chain(core::iter::once(Cmd::IofenceC)) {
            if (self.tail + 1) & mask == head {
                // Full: hand over what was written and wait for a free slot.
                regs.write32(regs::CQT, self.tail);
                let tail = self.tail;
                self.wait(
                    regs,
                    mem,
                    delay,
                    timing,
                    cie,
                    WaitFor::CqSpace,
                    first_err,
                    |_, h| (tail + 1) & mask != h,
                )?;
                head = self.head(regs)?;
            }
            let pa = self.entry_pa(self.tail);
            let [d0, d1] = c.encode();
            mem.write_u64(pa, d0);
            mem.write_u64(pa + 8, d1);
            self.tail = (self.tail + 1) & mask;
            c.count(counters);
        }
        // The register write is ordered after the commands' memory writes (the
        // `RegisterAccess` contract).
        regs.write32(regs::CQT, self.tail);
        Ok(())
    }

    /// Polls `cqh` until `done(self, cqh)`, recovering queue errors on every poll.
    #[allow(clippy::too_many_arguments)]
    fn wait<R, M, D>(
        &self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        cie: bool,
        what: WaitFor,
        first_err: &mut Option<RiscvError>,
        done: impl Fn(&Self, u32) -> bool,
    ) -> Result<(), RiscvError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        poll(delay, timing, what, || {
            let csr = regs.read32(regs::CQCSR);
            if csr & cqcsr::CQON == 0 && csr & cqcsr::BUSY == 0 {
                return Err(RiscvError::QueueOff);
            }
            if let Err(e) = recover(regs, mem, self.base, self.log2, csr, cie) {
                first_err.get_or_insert(e);
            }
            let head = self.head(regs)?;
            Ok(done(self, head))
        })
    }
}

/// Recovers from the command-queue errors in `csr` (a `cqcsr` value just read; 5.15).
///
/// `cmd_ill`: the command at `cqh` is replaced by an `IOFENCE.C` (always legal, and harmless
/// where it stands), then `cmd_ill` is cleared, so the unit fetches the replacement and goes
/// on. `cmd_to` and `cqmf` are cleared, which makes the unit retry. Every write keeps `cqen`
/// and `cie` as they are (`cie` as given). Returns the error seen, if any.
pub fn recover<R, M>(
    regs: &mut R,
    mem: &mut M,
    base: PhysAddr,
    log2: u32,
    csr: u32,
    cie: bool,
) -> Result<(), RiscvError>
where
    R: RegisterAccess + ?Sized,
    M: PhysMem + ?Sized,
{
    let errors = csr & cqcsr::ERRORS;
    if errors == 0 {
        return Ok(());
    }
    let mut opcode = 0;
    if errors & cqcsr::CMD_ILL != 0 {
        let head = regs.read32(regs::CQH) & ((1 << log2) - 1);
        let pa = base + u64::from(head) * CMD_SIZE;
        opcode = (mem.read_u64(pa) & 0x7f) as u8;
        let [d0, d1] = Cmd::IofenceC.encode();
        mem.write_u64(pa, d0);
        mem.write_u64(pa + 8, d1);
    }
    let keep = cqcsr::CQEN | if cie { cqcsr::CIE } else { 0 };
    regs.write32(regs::CQCSR, keep | errors);
    Err(RiscvError::CommandError {
        cqcsr: errors,
        opcode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_encodings() {
        // IOTINVAL.VMA, PSCV, PSCID 0x12345, AV, ADDR 0x1234_5000.
        assert_eq!(
            Cmd::IotinvalVma {
                pscid: Some(0x12345),
                addr: Some(0x1234_5678)
            }
            .encode(),
            [1 | (1 << 10) | (0x12345 << 12) | (1 << 32), 0x12345 << 10]
        );
        assert_eq!(
            Cmd::IotinvalVma {
                pscid: Some(3),
                addr: None
            }
            .encode(),
            [1 | (3 << 12) | (1 << 32), 0]
        );
        assert_eq!(
            Cmd::IotinvalVma {
                pscid: None,
                addr: None
            }
            .encode(),
            [1, 0]
        );
        assert_eq!(
            Cmd::IodirInvalDdt { did: Some(0x0108) }.encode(),
            [3 | (1 << 33) | (0x108 << 40), 0]
        );
        assert_eq!(Cmd::IodirInvalDdt { did: None }.encode(), [3, 0]);
        assert_eq!(Cmd::IofenceC.encode(), [2 | (1 << 12) | (1 << 13), 0]);
        assert_eq!(opcode_func3(Cmd::IofenceC.encode()[0]), (2, 0));
    }

    #[test]
    fn gather_plans() {
        let all = |p| Cmd::IotinvalVma {
            pscid: Some(p),
            addr: None,
        };
        // Tables removed: the whole PSCID.
        let mut g = Gather::new();
        g.add_range(0x10_0000, PAGE_SIZE, PAGE_SIZE);
        g.note_table_removed();
        assert_eq!(iotinval_for_gather(3, &g)[..], [all(3)]);
        // No leaf span: the whole PSCID.
        let mut g = Gather::new();
        g.note_table_removed();
        assert_eq!(iotinval_for_gather(3, &g)[..], [all(3)]);
        // Three 4 KiB pages: three address-specific commands.
        let mut g = Gather::new();
        g.add_range(0x10_0000, 3 * PAGE_SIZE, PAGE_SIZE);
        let c = iotinval_for_gather(5, &g);
        assert_eq!(
            c[..],
            [0x10_0000, 0x10_1000, 0x10_2000].map(|a| Cmd::IotinvalVma {
                pscid: Some(5),
                addr: Some(a)
            })
        );
        // A 2 MiB leaf: 512 pages, the whole PSCID (see the function's documentation).
        let mut g = Gather::new();
        g.add_range(0x20_0000, 0x20_0000, 0x20_0000);
        assert_eq!(iotinval_for_gather(5, &g)[..], [all(5)]);
        // 17 pages: too many, the whole PSCID.
        let mut g = Gather::new();
        g.add_range(0, 17 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(iotinval_for_gather(5, &g)[..], [all(5)]);
        // 16 pages: still address-specific.
        let mut g = Gather::new();
        g.add_range(0, 16 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(iotinval_for_gather(5, &g).len(), 16);
    }
}
