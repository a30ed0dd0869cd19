//! The Command queue (SMMUv3 3.5 Queues, chapter 4 Commands, 7.1 Command queue errors).
//!
//! Commands are 16 bytes. Software writes entries at PROD and publishes them by writing
//! SMMU_CMDQ_PROD; the SMMU consumes them and advances SMMU_CMDQ_CONS. Both pointers carry
//! the index in bits `[log2size-1:0]` and a wrap bit at `[log2size]` (3.5.1): the queue is
//! empty when they are equal and full when only the wrap bits differ. A batch always ends
//! with a CMD_SYNC (4.7.3); with CS = SIG_NONE its completion is observed as CONS moving past
//! it, which happens only once every earlier command has completed.

use embedded_hal::delay::DelayNs;
use heapless::Vec;

use super::regs::{self, gerror, queue};
use super::{SmmuCounters, SmmuError, Timing, WaitFor, poll};
use crate::mem::{PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};
use crate::pagetable::Gather;

/// Size of one command in bytes (4.1).
pub const CMD_SIZE: u64 = 16;
/// log2 of the entries one 4 KiB frame holds.
pub const MAX_LOG2_ENTRIES: u32 = 8;
/// The most commands one batch may carry (a CMD_SYNC is added).
pub const MAX_BATCH: usize = 20;
/// The most range-form TLBI_NH_VA commands one gather may take before a whole-ASID
/// invalidation is used instead.
pub const MAX_RANGE_CMDS: usize = 4;
/// The most single-address TLBI_NH_VA commands one gather may take (one per leaf granule)
/// before a whole-ASID invalidation is used instead.
pub const MAX_VA_CMDS: u64 = 16;

/// Command opcodes (4.1.1 and the section of each command).
pub mod op {
    /// 4.3.2 CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// 4.3.3 CMD_CFGI_STE_RANGE (CMD_CFGI_ALL is the form with Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// 4.3.4 CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// 4.4.2 CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// 4.4.2 CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// 4.4.3 CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// 4.7.3 CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

/// One command, independent of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cmd {
    /// CMD_CFGI_STE(StreamID, Leaf): the STE (and, with `leaf` false, the level-1
    /// descriptor) of one stream.
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Only the STE, not the level-1 descriptor.
        leaf: bool,
    },
    /// CMD_CFGI_ALL: every cached STE, L1STD and CD (CMD_CFGI_STE_RANGE with Range = 31).
    CfgiAll,
    /// CMD_CFGI_CD(StreamID, SubstreamID 0, Leaf = 1): the CD of one stream.
    CfgiCd {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ASID(VMID 0, ASID): every stage-1 TLB and walk-cache entry of an ASID.
    TlbiNhAsid {
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA(VMID 0, ASID, Address, Leaf, TG, TTL, NUM, SCALE).
    TlbiNhVa {
        /// ASID.
        asid: u16,
        /// Address (bits 63:12 used).
        addr: u64,
        /// Leaf: only last-level entries changed; walk caches may be kept.
        leaf: bool,
        /// Range form: `(tg, ttl, num, scale)` with TG = 1 (4 KiB); `None` for the
        /// single-address form (TG = 0).
        range: Option<Range>,
    },
    /// CMD_TLBI_NSNH_ALL: every non-secure non-hypervisor TLB entry.
    TlbiNsnhAll,
    /// CMD_SYNC with CS = SIG_NONE.
    Sync,
}

/// The range fields of a range-form TLBI (4.4.1.1, SMMU_IDR3.RIL): the range is
/// `(num + 1) * 2^scale` 4 KiB granules starting at the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Range {
    /// TTL: level of the leaf entries (1, 2, 3), or 0 when unknown / mixed.
    pub ttl: u8,
    /// NUM (0..=31).
    pub num: u8,
    /// SCALE (0..=31).
    pub scale: u8,
}

/// TG = 0b01: 4 KiB translation granule (4.4.1.1).
const TG_4K: u64 = 1;

impl Cmd {
    /// The two doublewords of the command (4.1, and the layout of each command in 4.3, 4.4,
    /// 4.7).
    pub const fn encode(self) -> [u64; 2] {
        match self {
            Cmd::CfgiSte { sid, leaf } => [
                op::CFGI_STE as u64 | ((sid as u64) << 32),
                if leaf { 1 } else { 0 },
            ],
            Cmd::CfgiAll => [op::CFGI_STE_RANGE as u64, 31],
            Cmd::CfgiCd { sid } => [op::CFGI_CD as u64 | ((sid as u64) << 32), 1],
            Cmd::TlbiNhAsid { asid } => [op::TLBI_NH_ASID as u64 | ((asid as u64) << 48), 0],
            Cmd::TlbiNhVa {
                asid,
                addr,
                leaf,
                range,
            } => {
                let mut dw0 = op::TLBI_NH_VA as u64 | ((asid as u64) << 48);
                let mut dw1 = (addr & !0xfff) | if leaf { 1 } else { 0 };
                if let Some(r) = range {
                    dw0 |= ((r.num as u64 & 0x1f) << 12) | ((r.scale as u64 & 0x1f) << 20);
                    dw1 |= (TG_4K << 10) | ((r.ttl as u64 & 3) << 8);
                }
                [dw0, dw1]
            }
            Cmd::TlbiNsnhAll => [op::TLBI_NSNH_ALL as u64, 0],
            Cmd::Sync => [op::SYNC as u64, 0],
        }
    }

    fn count(self, c: &mut SmmuCounters) {
        match self {
            Cmd::CfgiSte { .. } => c.cfgi_ste += 1,
            Cmd::CfgiAll => c.cfgi_all += 1,
            Cmd::CfgiCd { .. } => c.cfgi_cd += 1,
            Cmd::TlbiNhAsid { .. } => c.tlbi_nh_asid += 1,
            Cmd::TlbiNhVa { range: None, .. } => c.tlbi_nh_va += 1,
            Cmd::TlbiNhVa { range: Some(_), .. } => c.tlbi_nh_va_range += 1,
            Cmd::TlbiNsnhAll => c.tlbi_nsnh_all += 1,
            Cmd::Sync => c.syncs += 1,
        }
    }
}

/// The TTL hint for leaves of `size` bytes with the 4 KiB granule (4.4.1.1): Arm level 3
/// for 4 KiB pages, 2 for 2 MiB blocks, 1 for 1 GiB blocks, 0 (unknown) otherwise.
pub const fn ttl_for_leaf(size: u64) -> u8 {
    match size {
        0x1000 => 3,
        0x20_0000 => 2,
        0x4000_0000 => 1,
        _ => 0,
    }
}

/// Splits `pages` 4 KiB pages starting at `addr` into range-form commands (4.4.1.1): each
/// command covers `(NUM + 1) * 2^SCALE` pages, taking the lowest set bits of the remaining
/// count five at a time. Returns `None` when more than `max` commands would be needed. A
/// one-page piece without a TTL hint (NUM = SCALE = TTL = 0 is reserved) uses the
/// single-address form.
pub fn range_cmds(
    asid: u16,
    addr: u64,
    pages: u64,
    leaf: bool,
    ttl: u8,
    max: usize,
) -> Option<Vec<Cmd, MAX_BATCH>> {
    let mut out = Vec::new();
    let mut left = pages;
    let mut a = addr;
    while left != 0 {
        let scale = left.trailing_zeros();
        if scale > 31 {
            return None;
        }
        let num = (left >> scale) & 0x1f;
        let covered = num << scale;
        let range = if num == 1 && scale == 0 && ttl == 0 {
            None
        } else {
            Some(Range {
                ttl,
                num: (num - 1) as u8,
                scale: scale as u8,
            })
        };
        if out.len() >= max {
            return None;
        }
        out.push(Cmd::TlbiNhVa {
            asid,
            addr: a,
            leaf,
            range,
        })
        .ok()?;
        left -= covered;
        a = a.checked_add(covered.checked_mul(PAGE_SIZE)?)?;
    }
    Some(out)
}

/// The TLB invalidation commands for one gather of domain `asid` (no CMD_SYNC):
/// - with range invalidation (`ril`), range-form TLBI_NH_VA over the span when at most
///   [`MAX_RANGE_CMDS`] commands do;
/// - else one single-address TLBI_NH_VA per smallest-leaf granule of the span when at most
///   [`MAX_VA_CMDS`] are needed (each hits every TLB entry holding its address);
/// - else TLBI_NH_ASID.
///
/// Leaf = 1 only when no table was removed; a TTL hint only when every leaf touched had the
/// same size and Leaf = 1. A gather with no leaf span (only tables removed) gets
/// TLBI_NH_ASID.
pub fn tlbi_for_gather(asid: u16, gather: &Gather, ril: bool) -> Vec<Cmd, MAX_BATCH> {
    let mut out = Vec::new();
    let all = Cmd::TlbiNhAsid { asid };
    let Some((first, last)) = gather.span() else {
        let _ = out.push(all);
        return out;
    };
    let leaf = !gather.tables_removed();
    let start = first & !(PAGE_SIZE - 1);
    let pages = (last - start) / PAGE_SIZE + 1;
    if ril {
        let ttl = if leaf && gather.min_leaf() == gather.max_leaf() {
            ttl_for_leaf(gather.min_leaf())
        } else {
            0
        };
        if let Some(cmds) = range_cmds(asid, start, pages, leaf, ttl, MAX_RANGE_CMDS) {
            return cmds;
        }
    } else {
        let step = gather.min_leaf().max(PAGE_SIZE);
        if step.is_power_of_two() {
            let s = first & !(step - 1);
            let n = (last - s) / step + 1;
            if n <= MAX_VA_CMDS {
                for i in 0..n {
                    let _ = out.push(Cmd::TlbiNhVa {
                        asid,
                        addr: s + i * step,
                        leaf,
                        range: None,
                    });
                }
                return out;
            }
        }
    }
    out.clear();
    let _ = out.push(all);
    out
}

/// The Command queue of one unit: one 4 KiB frame of up to 256 entries.
#[derive(Debug)]
pub struct CmdQueue {
    base: PhysAddr,
    log2: u32,
    /// Software's PROD (index and wrap bit).
    prod: u32,
}

impl CmdQueue {
    /// A queue in the all-zero frame `base` with `2^log2` entries (`log2` <= 8).
    pub fn new(base: PhysAddr, log2: u32) -> Self {
        CmdQueue {
            base,
            log2: log2.min(MAX_LOG2_ENTRIES),
            prod: 0,
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

    /// The SMMU_CMDQ_BASE value (6.3.26).
    pub fn base_reg(&self) -> u64 {
        queue::base(self.base, self.log2)
    }

    /// Resets the software PROD (the unit's PROD and CONS are written 0 with it).
    pub fn reset(&mut self) {
        self.prod = 0;
    }

    fn entries(&self) -> u32 {
        1 << self.log2
    }

    /// Mask of index plus wrap bit.
    fn ptr_mask(&self) -> u32 {
        (self.entries() << 1) - 1
    }

    /// Entries in use between `cons` and our PROD, or `None` if CONS is inconsistent
    /// (ahead of PROD).
    fn used(&self, cons: u32) -> Option<u32> {
        let u = self.prod.wrapping_sub(cons) & self.ptr_mask();
        (u <= self.entries()).then_some(u)
    }

    fn entry_pa(&self, ptr: u32) -> PhysAddr {
        self.base + (ptr & (self.entries() - 1)) as u64 * CMD_SIZE
    }

    /// Submits `cmds` followed by a CMD_SYNC and waits until CONS has passed the CMD_SYNC.
    ///
    /// Commands are written as space allows (PROD is published whenever the queue is full
    /// and at the end), so a batch larger than the queue still completes. A command error
    /// (GERROR.CMDQ_ERR) seen while waiting is recovered (see [`recover`]) and reported as
    /// [`SmmuError::CommandError`] once the CMD_SYNC has completed; any other active GERROR
    /// condition is acknowledged and reported as [`SmmuError::GlobalError`].
    #[allow(clippy::too_many_arguments)]
    pub fn run<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        coherent: bool,
        cmds: &[Cmd],
        counters: &mut SmmuCounters,
    ) -> Result<(), SmmuError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        let mut first_err: Option<SmmuError> = None;
        counters.batches += 1;
        // Free slots as of one CONS read; read again only when they run out.
        let mut free = self.free_slots(regs)?;
        for c in cmds.iter().copied().chain(core::iter::once(Cmd::Sync)) {
            if free == 0 {
                // Doorbell for the commands written so far; RegisterAccess orders it after
                // them (as writel() does), so the SMMU never reads a command older than PROD
                // announces.
                regs.write32(regs::CMDQ_PROD, self.prod);
                let r = self.wait(
                    regs,
                    mem,
                    delay,
                    timing,
                    WaitFor::CmdqSpace,
                    &mut first_err,
                    |q, cons| q.used(cons).is_some_and(|u| u < q.entries()),
                );
                if let Err(e) = r {
                    counters.count_error(e);
                    return Err(e);
                }
                free = self.free_slots(regs)?;
            }
            free -= 1;
            let pa = self.entry_pa(self.prod);
            let [d0, d1] = c.encode();
            mem.write_u64(pa, d0);
            mem.write_u64(pa + 8, d1);
            if !coherent {
                mem.sync_for_device(pa, CMD_SIZE);
            }
            self.prod = (self.prod + 1) & self.ptr_mask();
            c.count(counters);
        }
        // The doorbell, ordered after the commands and their cache cleans (RegisterAccess's
        // contract): no barrier of our own is needed between them.
        regs.write32(regs::CMDQ_PROD, self.prod);
        let target = self.prod;
        let r = self.wait(
            regs,
            mem,
            delay,
            timing,
            WaitFor::CmdqSync,
            &mut first_err,
            |_, cons| cons == target,
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

    /// Free entries between our PROD and the unit's CONS.
    fn free_slots<R: RegisterAccess + ?Sized>(&self, regs: &mut R) -> Result<u32, SmmuError> {
        let cons = regs.read32(regs::CMDQ_CONS) & self.ptr_mask();
        match self.used(cons) {
            Some(u) => Ok(self.entries() - u),
            None => Err(SmmuError::BadQueuePointer),
        }
    }

    /// Polls CMDQ_CONS until `done(self, cons)`, handling GERROR on every poll.
    #[allow(clippy::too_many_arguments)]
    fn wait<R, M, D>(
        &self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        what: WaitFor,
        first_err: &mut Option<SmmuError>,
        done: impl Fn(&Self, u32) -> bool,
    ) -> Result<(), SmmuError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        poll(delay, timing, what, || {
            if let Err(e) = recover(regs, mem, self.base, self.log2) {
                first_err.get_or_insert(e);
                if matches!(e, SmmuError::GlobalError { gerror } if gerror & gerror::SFM_ERR != 0) {
                    // Service failure mode: the unit consumes nothing any more.
                    return Err(e);
                }
            }
            let cons = regs.read32(regs::CMDQ_CONS) & self.ptr_mask();
            if self.used(cons).is_none() {
                return Err(SmmuError::BadQueuePointer);
            }
            Ok(done(self, cons))
        })
    }
}

/// Checks GERROR and recovers from what it reports (7.1 Command queue errors, 6.3.18).
///
/// On CMDQ_ERR the SMMU has stopped with CMDQ_CONS pointing at the offending command and
/// CMDQ_CONS.ERR giving the reason. The command is replaced by a CMD_SYNC (always legal),
/// and the error acknowledged by toggling GERRORN.CMDQ_ERR, after which the SMMU resumes at
/// CONS. Other active conditions are acknowledged and reported (Service Failure Mode cannot
/// be left without a reset and stays reported), except EVENTQ_ABT_ERR: it concerns only the
/// Event queue (lost event records; QEMU raises it for a full queue) and is left active for
/// [`super::fault::EventQueue::drain`], which acknowledges it and reports the loss. A
/// command batch never fails because of it.
pub fn recover<R, M>(regs: &mut R, mem: &mut M, base: PhysAddr, log2: u32) -> Result<(), SmmuError>
where
    R: RegisterAccess + ?Sized,
    M: PhysMem + ?Sized,
{
    let g = regs.read32(regs::GERROR);
    let n = regs.read32(regs::GERRORN);
    let active = (g ^ n) & gerror::ALL & !gerror::EVENTQ_ABT_ERR;
    if active == 0 {
        return Ok(());
    }
    let mut err = SmmuError::GlobalError { gerror: active };
    if active & gerror::CMDQ_ERR != 0 {
        let cons = regs.read32(regs::CMDQ_CONS);
        let pa = base + (cons & ((1 << log2) - 1)) as u64 * CMD_SIZE;
        let opcode = mem.read_u64(pa) as u8;
        let [d0, d1] = Cmd::Sync.encode();
        mem.write_u64(pa, d0);
        mem.write_u64(pa + 8, d1);
        mem.sync_for_device(pa, CMD_SIZE);
        // The GERRORN write below that lets the SMMU resume at CONS is ordered after this
        // replacement (RegisterAccess's contract).
        err = SmmuError::CommandError {
            code: queue::cons_err(cons) as u8,
            opcode,
        };
    }
    regs.write32(regs::GERRORN, n ^ active);
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_encodings() {
        assert_eq!(
            Cmd::CfgiSte {
                sid: 8,
                leaf: false
            }
            .encode(),
            [0x03 | (8 << 32), 0]
        );
        assert_eq!(
            Cmd::CfgiSte { sid: 8, leaf: true }.encode(),
            [0x03 | (8 << 32), 1]
        );
        assert_eq!(Cmd::CfgiAll.encode(), [0x04, 31]);
        assert_eq!(
            Cmd::CfgiCd { sid: 0x108 }.encode(),
            [0x05 | (0x108 << 32), 1]
        );
        assert_eq!(
            Cmd::TlbiNhAsid { asid: 0xabcd }.encode(),
            [0x11 | (0xabcd << 48), 0]
        );
        assert_eq!(Cmd::TlbiNsnhAll.encode(), [0x30, 0]);
        assert_eq!(Cmd::Sync.encode(), [0x46, 0]);
        assert_eq!(
            Cmd::TlbiNhVa {
                asid: 7,
                addr: 0x1234_5678,
                leaf: true,
                range: None
            }
            .encode(),
            [0x12 | (7 << 48), 0x1234_5000 | 1]
        );
        assert_eq!(
            Cmd::TlbiNhVa {
                asid: 7,
                addr: 0x20_0000,
                leaf: false,
                range: Some(Range {
                    ttl: 2,
                    num: 3,
                    scale: 9
                })
            }
            .encode(),
            [
                0x12 | (7 << 48) | (3 << 12) | (9 << 20),
                0x20_0000 | (1 << 10) | (2 << 8)
            ]
        );
    }

    fn covered(cmds: &[Cmd]) -> Vec<(u64, u64), 32> {
        let mut v = Vec::new();
        for c in cmds {
            if let Cmd::TlbiNhVa { addr, range, .. } = *c {
                let pages = range.map_or(1, |r| (r.num as u64 + 1) << r.scale);
                v.push((addr, pages)).unwrap();
            }
        }
        v
    }

    #[test]
    fn range_split_is_exact_and_contiguous() {
        for pages in [
            1u64,
            2,
            3,
            31,
            32,
            33,
            512,
            513,
            0b1_0110_1011_0101,
            1 << 20,
            262_143,
        ] {
            let Some(cmds) = range_cmds(1, 0x4000_0000, pages, true, 0, MAX_BATCH) else {
                panic!("{pages}");
            };
            let mut next = 0x4000_0000;
            let mut total = 0;
            for (a, n) in covered(&cmds) {
                assert_eq!(a, next);
                next += n * PAGE_SIZE;
                total += n;
            }
            assert_eq!(total, pages, "{pages}");
            for c in &cmds {
                if let Cmd::TlbiNhVa { range: Some(r), .. } = c {
                    assert!(r.num <= 31 && r.scale <= 31);
                    assert!(
                        r.num != 0 || r.scale != 0 || r.ttl != 0,
                        "reserved encoding"
                    );
                }
            }
        }
        // 512 pages: one command, NUM = 0, SCALE = 9.
        let c = range_cmds(1, 0, 512, true, 2, 4).unwrap();
        assert_eq!(
            c[..],
            [Cmd::TlbiNhVa {
                asid: 1,
                addr: 0,
                leaf: true,
                range: Some(Range {
                    ttl: 2,
                    num: 0,
                    scale: 9
                })
            }]
        );
        // One page without TTL: the single-address form.
        let c = range_cmds(1, 0x5000, 1, true, 0, 4).unwrap();
        assert!(matches!(c[0], Cmd::TlbiNhVa { range: None, .. }));
        // Bit patterns that need many commands are refused past the limit.
        assert!(range_cmds(1, 0, 0b1000010000100001000010000100001, true, 0, 4).is_none());
    }

    struct NoMem;
    impl PhysMem for NoMem {
        fn read_u64(&self, _: u64) -> u64 {
            0
        }
        fn write_u64(&mut self, _: u64, _: u64) {}
        fn order_writes(&mut self) {}
    }

    #[test]
    fn gather_plans() {
        let m = &mut NoMem;
        // Empty leaf span but tables removed: whole ASID.
        let mut g = Gather::new();
        g.note_table_removed();
        assert_eq!(
            tlbi_for_gather(3, &g, true)[..],
            [Cmd::TlbiNhAsid { asid: 3 }]
        );

        // Three 4 KiB pages, RIL: one range command, Leaf, TTL 3.
        let mut g = Gather::new();
        g.add_range(0x10_0000, 3 * PAGE_SIZE, PAGE_SIZE);
        let c = tlbi_for_gather(3, &g, true);
        assert_eq!(
            c[..],
            [Cmd::TlbiNhVa {
                asid: 3,
                addr: 0x10_0000,
                leaf: true,
                range: Some(Range {
                    ttl: 3,
                    num: 2,
                    scale: 0
                })
            }]
        );
        // Without RIL: three single-address commands.
        let c = tlbi_for_gather(3, &g, false);
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|c| matches!(
            c,
            Cmd::TlbiNhVa {
                leaf: true,
                range: None,
                ..
            }
        )));

        // A 2 MiB block and tables removed: Leaf = 0, no TTL.
        let mut g = Gather::new();
        g.add_range(0x20_0000, 0x20_0000, 0x20_0000);
        g.note_table_removed();
        let c = tlbi_for_gather(3, &g, true);
        assert_eq!(
            c[..],
            [Cmd::TlbiNhVa {
                asid: 3,
                addr: 0x20_0000,
                leaf: false,
                range: Some(Range {
                    ttl: 0,
                    num: 0,
                    scale: 9
                })
            }]
        );
        // Without RIL, the 2 MiB block is one command (step = min leaf).
        let c = tlbi_for_gather(3, &g, false);
        assert_eq!(c.len(), 1);

        // 64 pages without RIL: too many, whole ASID.
        let mut g = Gather::new();
        g.add_range(0, 64 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(
            tlbi_for_gather(3, &g, false)[..],
            [Cmd::TlbiNhAsid { asid: 3 }]
        );
        // Mixed leaf sizes: no TTL.
        g.add_range(0x20_0000, 0x20_0000, 0x20_0000);
        let c = tlbi_for_gather(3, &g, true);
        assert!(c.iter().all(|c| matches!(
            c,
            Cmd::TlbiNhVa {
                range: Some(Range { ttl: 0, .. }),
                ..
            }
        )));
        let _ = m;
    }
}
