//! The command buffer and the commands this driver issues (AMD IOMMU spec 2.4 "Commands";
//! registers: 3.4 Command Buffer Base Address, Head and Tail Pointer Registers, MMIO
//! 0008h / 2000h / 2008h).
//!
//! The command buffer is a ring of 16-byte commands in memory. Software writes commands at
//! the tail and publishes them by writing the Command Buffer Tail Pointer Register; the
//! IOMMU executes them in order from the head and advances the Head Pointer Register. The
//! buffer is empty when head equals tail, so it holds one command less than its size.
//!
//! Every batch ends with a COMPLETION_WAIT whose store (`s` = 1) writes a sequence number to
//! a status word in memory: COMPLETION_WAIT completes only after every earlier command has
//! completed (2.4.1), so the status word changing is the proof that the batch took effect.
//! Every wait is bounded.
//!
//! Errors: on an illegal command (unknown opcode, reserved bits set, a form the unit does not
//! support) the IOMMU logs ILLEGAL_COMMAND_ERROR, stops fetching with the head pointer at the
//! offending command and clears CmdBufRun in the Status Register; a command it cannot fetch
//! gives COMMAND_HARDWARE_ERROR the same way. This driver notices the stop while it waits,
//! replaces the offending command by a harmless COMPLETION_WAIT (storing to a scratch word),
//! restarts the buffer (CmdBufEn cleared, the head pointer written back, CmdBufEn set) and
//! reports [`AmdError::CommandError`] once its own COMPLETION_WAIT has completed.

use embedded_hal::delay::DelayNs;

use super::regs::{self, control, status};
use super::{AmdCounters, AmdError, Timing, WaitFor, poll};
use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};
use crate::pagetable::Gather;

/// Size of one command in bytes.
pub const CMD_SIZE: u64 = 16;
/// log2 of the commands one 4 KiB frame holds (ComLen = 8, the smallest allowed).
pub const LOG2_ENTRIES: u32 = 8;
/// Commands in the buffer.
pub const ENTRIES: u32 = 1 << LOG2_ENTRIES;

/// Command opcodes (bits 63:60 of the first word; 2.4).
pub mod op {
    /// 2.4.1 COMPLETION_WAIT.
    pub const COMPLETION_WAIT: u64 = 0x1;
    /// 2.4.2 INVALIDATE_DEVTAB_ENTRY.
    pub const INVALIDATE_DEVTAB_ENTRY: u64 = 0x2;
    /// 2.4.3 INVALIDATE_IOMMU_PAGES.
    pub const INVALIDATE_IOMMU_PAGES: u64 = 0x3;
    /// 2.4.5 INVALIDATE_INTERRUPT_TABLE.
    pub const INVALIDATE_INTERRUPT_TABLE: u64 = 0x5;
    /// 2.4.8 INVALIDATE_IOMMU_ALL (only when EFR.IASup).
    pub const INVALIDATE_IOMMU_ALL: u64 = 0x8;
    /// Bit position of the opcode.
    pub const SHIFT: u32 = 60;
}

/// INVALIDATE_IOMMU_PAGES second-word flags (2.4.3).
pub mod pages {
    /// S (bit 0): the range is larger than 4 KiB; its size is given by the position of the
    /// lowest zero bit of Address at or above bit 12 (the range is naturally aligned and
    /// twice as large as that bit's value).
    pub const S: u64 = 1 << 0;
    /// PDE (bit 1): invalidate cached page directory entries too, not only leaf entries.
    pub const PDE: u64 = 1 << 1;
    /// GN (bit 2): the PASID field is valid (guest translation; never set here).
    pub const GN: u64 = 1 << 2;
    /// Address bits 63:12.
    pub const ADDR_MASK: u64 = !0xfff;
    /// The address that, with S = 1, covers every address of the domain: every bit from 12
    /// to 62 set, bit 63 clear (a 2^64-byte range).
    pub const ALL: u64 = 0x7fff_ffff_ffff_f000;
}

/// COMPLETION_WAIT first-word flags (2.4.1).
pub mod wait {
    /// s (bit 0): store StoreData to StoreAddress when the wait completes.
    pub const S: u64 = 1 << 0;
    /// i (bit 1): set ComWaitInt (and interrupt when ComWaitIntEn) when the wait completes.
    pub const I: u64 = 1 << 1;
    /// f (bit 2): flush queue (wait for earlier commands' effects on outstanding requests).
    pub const F: u64 = 1 << 2;
    /// StoreAddress bits 51:3.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_fff8;
}

/// One command, independent of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cmd {
    /// COMPLETION_WAIT with a store of `data` to the 8-byte aligned `addr`.
    CompletionWait {
        /// StoreAddress.
        addr: PhysAddr,
        /// StoreData.
        data: u64,
    },
    /// INVALIDATE_DEVTAB_ENTRY: drop every cached copy of the DTE of `device`.
    InvalidateDte {
        /// DeviceID.
        device: u16,
    },
    /// INVALIDATE_IOMMU_PAGES of domain `domain` (PASID 0, GN = 0).
    InvalidatePages {
        /// DomainID.
        domain: u16,
        /// The Address field with the S bit: see [`pages_for_span`].
        addr: u64,
        /// S: `addr` encodes a range larger than 4 KiB.
        size: bool,
        /// PDE: page directory entries too.
        pde: bool,
    },
    /// INVALIDATE_IOMMU_ALL: every cached DTE, translation and interrupt table entry.
    InvalidateAll,
}

impl Cmd {
    /// Whole-domain INVALIDATE_IOMMU_PAGES of `domain` (leaves and page directory entries).
    pub const fn domain(domain: u16) -> Cmd {
        Cmd::InvalidatePages {
            domain,
            addr: pages::ALL,
            size: true,
            pde: true,
        }
    }

    /// The two words of the command (2.4.1, 2.4.2, 2.4.3, 2.4.8).
    pub const fn encode(self) -> [u64; 2] {
        match self {
            Cmd::CompletionWait { addr, data } => [
                (op::COMPLETION_WAIT << op::SHIFT) | (addr & wait::ADDR_MASK) | wait::S,
                data,
            ],
            Cmd::InvalidateDte { device } => [
                (op::INVALIDATE_DEVTAB_ENTRY << op::SHIFT) | device as u64,
                0,
            ],
            Cmd::InvalidatePages {
                domain,
                addr,
                size,
                pde,
            } => [
                (op::INVALIDATE_IOMMU_PAGES << op::SHIFT) | ((domain as u64) << 32),
                (addr & pages::ADDR_MASK)
                    | if size { pages::S } else { 0 }
                    | if pde { pages::PDE } else { 0 },
            ],
            Cmd::InvalidateAll => [op::INVALIDATE_IOMMU_ALL << op::SHIFT, 0],
        }
    }

    fn count(self, c: &mut AmdCounters) {
        match self {
            Cmd::CompletionWait { .. } => c.completion_waits += 1,
            Cmd::InvalidateDte { .. } => c.inv_devtab += 1,
            Cmd::InvalidatePages {
                addr: pages::ALL,
                size: true,
                ..
            } => c.inv_pages_domain += 1,
            Cmd::InvalidatePages { .. } => c.inv_pages += 1,
            Cmd::InvalidateAll => c.inv_all += 1,
        }
    }
}

/// The INVALIDATE_IOMMU_PAGES Address and S for the inclusive byte range `[first, last]`
/// (2.4.3): one 4 KiB page as itself with S = 0; otherwise the smallest naturally aligned
/// power-of-two block holding both ends, as its base with every address bit from 12 up to
/// (not including) the block's top bit set, and S = 1. `None` when that block is larger than
/// 2^51 bytes (use [`pages::ALL`]).
pub fn pages_for_span(first: u64, last: u64) -> Option<(u64, bool)> {
    if last < first {
        return None;
    }
    let (a, b) = (first & !(PAGE_SIZE - 1), last & !(PAGE_SIZE - 1));
    if a == b {
        return Some((a, false));
    }
    // Index of the highest bit in which the two ends differ (>= 12): the block is twice that.
    let top = 63 - (a ^ b).leading_zeros();
    if top >= 51 {
        return None;
    }
    let size = 2u64 << top;
    let base = a & !(size - 1);
    Some((base | ((size / 2 - 1) & !(PAGE_SIZE - 1)), true))
}

/// The one INVALIDATE_IOMMU_PAGES command covering what `gather` recorded for domain `tag`:
/// the span widened to whole leaves of the largest size touched (a large-page IOTLB entry is
/// invalidated by a range covering all of it), encoded by [`pages_for_span`]; the
/// whole-domain form when the span does not fit or no leaf changed. PDE is set when page
/// directory entries may be cached stale: a table was removed, or the unit caches
/// not-present entries (`np_cache`; a map then turned a cached not-present directory entry
/// into a table pointer).
pub fn pages_for_gather(tag: u16, gather: &Gather, np_cache: bool) -> Cmd {
    let pde = gather.tables_removed() || np_cache;
    let leaf = gather.max_leaf().max(PAGE_SIZE);
    let span = gather
        .span()
        .filter(|_| leaf.is_power_of_two())
        .and_then(|(s, l)| pages_for_span(s & !(leaf - 1), l | (leaf - 1)));
    match span {
        Some((addr, size)) => Cmd::InvalidatePages {
            domain: tag,
            addr,
            size,
            pde,
        },
        None => Cmd::domain(tag),
    }
}

/// The command buffer of one unit: one 4 KiB frame of 256 commands, and a status frame
/// (word 0: completion stores; word 1: the scratch word of commands replaced after an
/// error).
#[derive(Debug)]
pub struct CmdBuffer {
    base: PhysAddr,
    status: PhysAddr,
    /// Software's tail, in entries.
    tail: u32,
    seq: u64,
}

impl CmdBuffer {
    /// A buffer in the all-zero frame `base`, completion stores going to frame `status`.
    pub fn new(base: PhysAddr, status: PhysAddr) -> Self {
        CmdBuffer {
            base,
            status,
            tail: 0,
            seq: 0,
        }
    }

    /// The buffer frame.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// The status frame.
    pub fn status_frame(&self) -> PhysAddr {
        self.status
    }

    /// The Command Buffer Base Address Register value (ComLen = 8).
    pub fn register(&self) -> u64 {
        regs::buffer_base(self.base, LOG2_ENTRIES)
    }

    /// Resets the software tail (the unit's head and tail are written 0 with it).
    pub fn reset(&mut self) {
        self.tail = 0;
    }

    fn entry_pa(&self, index: u32) -> PhysAddr {
        self.base + u64::from(index % ENTRIES) * CMD_SIZE
    }

    /// The unit's head, in entries. A head equal to the buffer size (some implementations
    /// report the wrap that way) is 0; anything else beyond the buffer is an error.
    fn head<R: RegisterAccess + ?Sized>(regs: &mut R) -> Result<u32, AmdError> {
        let raw = regs.read64(regs::CMD_HEAD);
        let h = ((raw & regs::PTR_MASK) / CMD_SIZE) as u32;
        if raw & !regs::PTR_MASK != 0 || h > ENTRIES {
            return Err(AmdError::BadQueuePointer);
        }
        Ok(h % ENTRIES)
    }

    /// Free slots between the unit's head and our tail (one slot always stays empty).
    fn free<R: RegisterAccess + ?Sized>(&self, regs: &mut R) -> Result<u32, AmdError> {
        let head = Self::head(regs)?;
        Ok((head + ENTRIES - self.tail - 1) % ENTRIES)
    }

    /// Submits `cmds` followed by a COMPLETION_WAIT and waits until its store lands.
    /// Commands are written as space allows (the tail is published whenever the buffer is
    /// full and at the end), so any number of commands completes. A stop on a command error
    /// seen while waiting is recovered (see the module documentation) and reported as
    /// [`AmdError::CommandError`] once the batch's COMPLETION_WAIT has completed.
    #[allow(clippy::too_many_arguments)]
    pub fn run<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        coherent: bool,
        cmds: impl IntoIterator<Item = Cmd>,
        counters: &mut AmdCounters,
    ) -> Result<(), AmdError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let mut first_err: Option<AmdError> = None;
        counters.batches += 1;
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let done = Cmd::CompletionWait {
            addr: self.status,
            data: seq,
        };
        mem.write_u64(self.status, 0);
        let mut free = match self.free(regs) {
            Ok(f) => f,
            Err(e) => {
                counters.count_error(e);
                return Err(e);
            }
        };
        for c in cmds.into_iter().chain(core::iter::once(done)) {
            if free == 0 {
                regs.write64(regs::CMD_TAIL, u64::from(self.tail) * CMD_SIZE);
                let r = self.wait(
                    regs,
                    mem,
                    delay,
                    timing,
                    WaitFor::CmdSpace,
                    &mut first_err,
                    |q, regs, _| Ok(q.free(regs)? > 0),
                );
                free = match r.and_then(|()| self.free(regs)) {
                    Ok(f) => f,
                    Err(e) => {
                        counters.count_error(e);
                        return Err(e);
                    }
                };
            }
            free -= 1;
            let pa = self.entry_pa(self.tail);
            let [w0, w1] = c.encode();
            mem.write_u64(pa, w0);
            mem.write_u64(pa + 8, w1);
            if !coherent {
                mem.sync_for_device(pa, CMD_SIZE);
            }
            self.tail = (self.tail + 1) % ENTRIES;
            c.count(counters);
        }
        // The tail register write is ordered after the command writes (RegisterAccess).
        regs.write64(regs::CMD_TAIL, u64::from(self.tail) * CMD_SIZE);
        let status = self.status;
        let r = self.wait(
            regs,
            mem,
            delay,
            timing,
            WaitFor::Completion,
            &mut first_err,
            |_, _, mem| {
                if !coherent {
                    // The IOMMU writes the status word by DMA: drop a stale cached copy first.
                    mem.sync_for_cpu(status, 8);
                }
                Ok(mem.read_u64(status) == seq)
            },
        );
        if let Err(e) = r {
            counters.count_error(e);
            return Err(e);
        }
        if let Some(e) = first_err {
            counters.count_error(e);
            return Err(e);
        }
        Ok(())
    }

    /// Polls until `done`, recovering a stopped buffer on every poll.
    #[allow(clippy::too_many_arguments)]
    fn wait<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        what: WaitFor,
        first_err: &mut Option<AmdError>,
        mut done: impl FnMut(&Self, &mut R, &mut M) -> Result<bool, AmdError>,
    ) -> Result<(), AmdError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        poll(delay, timing, what, || {
            if done(self, regs, mem)? {
                return Ok(true);
            }
            if regs.read64(regs::STATUS) & status::CMD_BUF_RUN == 0 {
                let e = self.recover(regs, mem)?;
                first_err.get_or_insert(e);
            }
            Ok(false)
        })
    }

    /// Restarts a buffer the IOMMU stopped on a command error: the command at the head is
    /// replaced by a COMPLETION_WAIT storing to the scratch word, CmdBufEn is cleared, the
    /// head pointer written back, and CmdBufEn set again, so the IOMMU resumes with the
    /// commands after the offending one. Returns the error to report.
    fn recover<R, M>(&mut self, regs: &mut R, mem: &mut M) -> Result<AmdError, AmdError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
    {
        let head = Self::head(regs)?;
        let pa = self.entry_pa(head);
        let opcode = (mem.read_u64(pa) >> op::SHIFT) as u8;
        let [w0, w1] = Cmd::CompletionWait {
            addr: self.status + 8,
            data: 0,
        }
        .encode();
        mem.write_u64(pa, w0);
        mem.write_u64(pa + 8, w1);
        mem.sync_for_device(pa, CMD_SIZE);
        let ctl = regs.read64(regs::CONTROL);
        regs.write64(regs::CONTROL, ctl & !control::CMD_BUF_EN);
        regs.write64(regs::CMD_HEAD, u64::from(head) * CMD_SIZE);
        regs.write64(regs::CONTROL, ctl | control::CMD_BUF_EN);
        Ok(AmdError::CommandError {
            index: head as u16,
            opcode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_encodings() {
        assert_eq!(
            Cmd::CompletionWait {
                addr: 0x1234_5678,
                data: 9
            }
            .encode(),
            [(1 << 60) | 0x1234_5678 | 1, 9]
        );
        assert_eq!(
            Cmd::InvalidateDte { device: 0x0108 }.encode(),
            [(2 << 60) | 0x0108, 0]
        );
        assert_eq!(
            Cmd::InvalidatePages {
                domain: 5,
                addr: 0x20_0000,
                size: false,
                pde: true
            }
            .encode(),
            [(3 << 60) | (5 << 32), 0x20_0000 | 2]
        );
        assert_eq!(Cmd::domain(1).encode()[1], 0x7fff_ffff_ffff_f000 | 3);
        assert_eq!(Cmd::InvalidateAll.encode(), [8 << 60, 0]);
    }

    /// Decodes a (Address, S) pair back to the inclusive range it names (2.4.3).
    fn decode(addr: u64, s: bool) -> (u64, u64) {
        if !s {
            return (addr, addr + 0xfff);
        }
        let ones = (addr >> 12).trailing_ones();
        if 12 + ones + 1 >= 64 {
            return (0, u64::MAX);
        }
        let size = 1u64 << (12 + ones + 1);
        let base = addr & !(size - 1);
        (base, base + size - 1)
    }

    #[test]
    fn span_encodings() {
        assert_eq!(pages_for_span(0x3000, 0x3fff), Some((0x3000, false)));
        // Two pages in one aligned 8 KiB block.
        assert_eq!(pages_for_span(0x2000, 0x3fff), Some((0x2000, true)));
        // Two pages straddling an 8 KiB boundary: a 16 KiB block.
        assert_eq!(pages_for_span(0x1000, 0x2fff), Some((0x1000, true)));
        assert_eq!(decode(0x1000, true), (0, 0x3fff));
        // A 2 MiB leaf.
        assert_eq!(
            decode(pages_for_span(0x20_0000, 0x3f_ffff).unwrap().0, true),
            (0x20_0000, 0x3f_ffff)
        );
        // The whole 64-bit space does not fit.
        assert_eq!(pages_for_span(0, u64::MAX), None);
        assert_eq!(pages_for_span(2, 1), None);
        assert_eq!(decode(pages::ALL, true), (0, u64::MAX));
    }

    #[test]
    fn span_block_always_covers_and_is_minimal() {
        let spans = [
            (0x0u64, 0xfffu64),
            (0x7000, 0x9fff),
            (0x1ff000, 0x200fff),
            (0x12345000, 0x1234ffff),
            (0xfff_ffff_f000, 0xfff_ffff_ffff),
            (0x4000_0000, 0x7fff_ffff),
        ];
        for (s, l) in spans {
            let (a, big) = pages_for_span(s, l).unwrap();
            let (lo, hi) = decode(a, big);
            assert!(lo <= s && l <= hi, "{s:#x}..{l:#x} -> {lo:#x}..{hi:#x}");
            if big {
                let half = (hi - lo).div_ceil(2);
                assert!(s < lo + half && l >= lo + half, "minimal");
            }
        }
    }

    #[test]
    fn gather_commands() {
        let mut g = Gather::new();
        g.add_range(0x10_0000, 3 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(
            pages_for_gather(4, &g, false),
            Cmd::InvalidatePages {
                domain: 4,
                addr: 0x10_0000 | 0x1000,
                size: true,
                pde: false
            }
        );
        assert!(matches!(
            pages_for_gather(4, &g, true),
            Cmd::InvalidatePages { pde: true, .. }
        ));
        // A 4 KiB page inside a 2 MiB leaf that was split: the whole leaf.
        let mut g = Gather::new();
        g.add_range(0x20_1000, PAGE_SIZE, 0x20_0000);
        g.note_table_removed();
        let Cmd::InvalidatePages {
            addr, size, pde, ..
        } = pages_for_gather(4, &g, false)
        else {
            panic!()
        };
        assert!(pde);
        assert_eq!(decode(addr, size), (0x20_0000, 0x3f_ffff));
        // Only tables removed: the whole domain.
        let mut g = Gather::new();
        g.note_table_removed();
        assert_eq!(pages_for_gather(4, &g, false), Cmd::domain(4));
    }
}
