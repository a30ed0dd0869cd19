//! Invalidation: the queued interface (VT-d spec 6.5.2) and the register-based interface
//! (VT-d spec 6.5.1), behind one request type [`Inv`].
//!
//! Every batch of requests ends with a completion wait: on the queue an invalidation wait
//! descriptor (VT-d spec 6.5.2.8) whose status write is polled in RAM; on registers the ICC /
//! IVT bit is polled until hardware clears it. Every wait is bounded.

use embedded_hal::delay::DelayNs;

use super::regs::{self, ccmd, fsts, iotlb, iq};
use super::{Timing, VtdCounters, VtdError, WaitFor, poll};
use crate::mem::{PhysAddr, PhysMem, RegisterAccess};

/// Entries in the invalidation queue: one 4 KiB page of 128-bit descriptors (IQA.QS = 0).
pub const QUEUE_ENTRIES: u32 = 256;
/// Size of one legacy (128-bit) descriptor.
pub const DESC_SIZE: u64 = 16;
/// The most requests one batch may carry (the wait descriptor takes one more slot).
pub const MAX_BATCH: usize = 8;

/// Descriptor types (VT-d spec 6.5.2, bits 3:0 of every descriptor).
pub mod desc_type {
    /// Context-cache invalidate descriptor (VT-d spec 6.5.2.1).
    pub const CONTEXT: u64 = 0x1;
    /// IOTLB invalidate descriptor (VT-d spec 6.5.2.3).
    pub const IOTLB: u64 = 0x2;
    /// Invalidation wait descriptor (VT-d spec 6.5.2.8).
    pub const WAIT: u64 = 0x5;
}

/// Invalidation wait descriptor SW (bit 5): write the status data to the status address.
pub const WAIT_SW: u64 = 1 << 5;

/// One invalidation request, independent of the interface that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Inv {
    /// Every context-cache entry.
    ContextGlobal,
    /// Context-cache entries tagged with `did`.
    ContextDomain {
        /// Domain id.
        did: u16,
    },
    /// The context-cache entry of one requester (`did` is the domain id the entry held;
    /// 0 for a formerly non-present entry, which caching-mode hardware tags with domain 0).
    ContextDevice {
        /// Domain id.
        did: u16,
        /// Source id (`bus << 8 | devfn`).
        sid: u16,
    },
    /// Every IOTLB and paging-structure cache entry.
    IotlbGlobal,
    /// IOTLB and paging-structure cache entries of domain `did`.
    IotlbDomain {
        /// Domain id.
        did: u16,
    },
    /// IOTLB entries of domain `did` for the `2^am` pages at `addr` (aligned to that size);
    /// with `ih` (invalidation hint) the paging-structure caches are kept.
    IotlbPages {
        /// Domain id.
        did: u16,
        /// First byte, aligned to `4 KiB << am`.
        addr: u64,
        /// Address mask: `2^am` pages.
        am: u32,
        /// Invalidation hint: only leaf entries changed.
        ih: bool,
    },
}

impl Inv {
    /// The 128-bit queue descriptor as `[low, high]` (VT-d spec 6.5.2.1 and 6.5.2.3).
    /// `dr`/`dw` set the drain bits of IOTLB descriptors (only when CAP.DRD/DWD allow).
    pub fn encode(self, dr: bool, dw: bool) -> [u64; 2] {
        let cc = |g: u64, did: u16, sid: u16| {
            [
                desc_type::CONTEXT | (g << 4) | ((did as u64) << 16) | ((sid as u64) << 32),
                0,
            ]
        };
        let drain = if dr { 1 << 7 } else { 0 } | if dw { 1 << 6 } else { 0 };
        let tlb = |g: u64, did: u16, hi: u64| {
            [
                desc_type::IOTLB | (g << 4) | drain | ((did as u64) << 16),
                hi,
            ]
        };
        match self {
            Inv::ContextGlobal => cc(1, 0, 0),
            Inv::ContextDomain { did } => cc(2, did, 0),
            Inv::ContextDevice { did, sid } => cc(3, did, sid),
            Inv::IotlbGlobal => tlb(1, 0, 0),
            Inv::IotlbDomain { did } => tlb(2, did, 0),
            Inv::IotlbPages { did, addr, am, ih } => tlb(3, did, iotlb::address(addr, am, ih)),
        }
    }

    fn count(self, c: &mut VtdCounters) {
        match self {
            Inv::ContextGlobal => c.ctx_global += 1,
            Inv::ContextDomain { .. } => c.ctx_domain += 1,
            Inv::ContextDevice { .. } => c.ctx_device += 1,
            Inv::IotlbGlobal => c.iotlb_global += 1,
            Inv::IotlbDomain { .. } => c.iotlb_domain += 1,
            Inv::IotlbPages { .. } => c.iotlb_pages += 1,
        }
    }
}

/// The invalidation wait descriptor (VT-d spec 6.5.2.8): SW = 1, status data in bits 63:32,
/// status address (4-byte aligned) in the upper half.
pub fn wait_descriptor(status: PhysAddr, data: u32) -> [u64; 2] {
    [
        desc_type::WAIT | WAIT_SW | ((data as u64) << 32),
        status & !3,
    ]
}

/// The page-selective invalidation covering `[first, last]`: the smallest naturally aligned
/// power-of-two block of pages holding both ends, as `(address, AM)`, or `None` when that
/// block needs a mask above `mamv` (VT-d spec 6.5.2.3: AM may not exceed CAP.MAMV).
pub fn psi_for_span(first: u64, last: u64, mamv: u32) -> Option<(u64, u32)> {
    if last < first {
        return None;
    }
    let (a, b) = (first >> 12, last >> 12);
    // Number of low pfn bits in which the two ends differ.
    let am = 64 - (a ^ b).leading_zeros();
    if am > mamv || am >= 52 {
        return None;
    }
    Some(((a >> am) << am << 12, am))
}

/// The queued invalidation interface of one unit: a 4 KiB queue and a status frame.
#[derive(Debug)]
pub struct InvQueue {
    base: PhysAddr,
    status: PhysAddr,
    tail: u32,
    seq: u32,
}

impl InvQueue {
    /// A queue in the all-zero frame `base`, with status writes going to `status` (a frame of
    /// its own: word 0 for completion, word 1 as scratch for error recovery).
    pub fn new(base: PhysAddr, status: PhysAddr) -> Self {
        InvQueue {
            base,
            status,
            tail: 0,
            seq: 0,
        }
    }

    /// The queue frame.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// The status frame.
    pub fn status_frame(&self) -> PhysAddr {
        self.status
    }

    /// The IQA register value: base, DW = 0 (128-bit descriptors), QS = 0 (256 entries).
    pub fn iqa(&self) -> u64 {
        self.base & iq::ADDR_MASK
    }

    /// Resets the software tail (after hardware reset IQH to 0 on enabling).
    pub fn reset(&mut self) {
        self.tail = 0;
    }

    fn head<R: RegisterAccess + ?Sized>(regs: &mut R) -> Result<u32, VtdError> {
        let h = ((regs.read64(regs::IQH) & iq::PTR_MASK) >> 4) as u32;
        if h >= QUEUE_ENTRIES {
            return Err(VtdError::QueueError { fsts: 0 });
        }
        Ok(h)
    }

    /// Submits `reqs` followed by a wait descriptor and waits for the status write.
    #[allow(clippy::too_many_arguments)]
    pub fn run<R, M, D>(
        &mut self,
        regs: &mut R,
        mem: &mut M,
        delay: &mut D,
        timing: Timing,
        coherent: bool,
        drain: (bool, bool),
        reqs: &[Inv],
        counters: &mut VtdCounters,
    ) -> Result<(), VtdError>
    where
        R: RegisterAccess + ?Sized,
        M: PhysMem + ?Sized,
        D: DelayNs + ?Sized,
    {
        if reqs.len() > MAX_BATCH {
            return Err(VtdError::Unsupported);
        }
        let needed = reqs.len() as u32 + 1;
        // Room for the batch: free slots = head - tail - 1 (mod size).
        let tail = self.tail;
        let status = self.status;
        let base = self.base;
        poll(delay, timing, WaitFor::QueueSpace, || {
            check_errors(regs, mem, base, status)?;
            let head = Self::head(regs)?;
            let free = (head + QUEUE_ENTRIES - tail - 1) % QUEUE_ENTRIES;
            Ok(free >= needed)
        })?;

        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        mem.write_u64(self.status, 0);
        let mut t = self.tail;
        for d in reqs
            .iter()
            .map(|r| r.encode(drain.0, drain.1))
            .chain(core::iter::once(wait_descriptor(self.status, seq)))
        {
            let pa = self.base + t as u64 * DESC_SIZE;
            mem.write_u64(pa, d[0]);
            mem.write_u64(pa + 8, d[1]);
            if !coherent {
                mem.sync_for_device(pa, DESC_SIZE);
            }
            t = (t + 1) % QUEUE_ENTRIES;
        }
        self.tail = t;
        // The doorbell: RegisterAccess orders this write after every memory write above (the
        // status word's reset, the descriptors and their cache cleans), as writel() does, so
        // the unit never fetches a descriptor older than the tail announces.
        regs.write64(regs::IQT, (t as u64) << 4);
        for r in reqs {
            r.count(counters);
        }
        counters.waits += 1;

        // The status word is read after the register reads of each poll and, being written by
        // the unit, needs no barrier of ours beyond the cache invalidate below.
        let result = poll(delay, timing, WaitFor::Queue, || {
            if !coherent {
                // The unit writes the status word by DMA (VT-d 6.5.2.8): drop any stale
                // cached copy before reading it.
                mem.sync_for_cpu(status, 8);
            }
            if mem.read_u64(status) as u32 == seq {
                return Ok(true);
            }
            check_errors(regs, mem, base, status)?;
            Ok(false)
        });
        if let Err(e) = result {
            counters.count_error(e);
        }
        result
    }
}

/// Reads FSTS; on an invalidation queue error recovers the queue and reports the error.
///
/// VT-d spec 6.5.2.10: on IQE hardware stops fetching with IQH at the offending descriptor;
/// software replaces it by a harmless wait descriptor (status written to the scratch word) and
/// clears IQE (W1C), after which hardware resumes. ITE and ICE concern device-TLBs (never
/// used here) and are cleared (W1C) and reported.
fn check_errors<R, M>(
    regs: &mut R,
    mem: &mut M,
    base: PhysAddr,
    status: PhysAddr,
) -> Result<(), VtdError>
where
    R: RegisterAccess + ?Sized,
    M: PhysMem + ?Sized,
{
    let f = regs.read32(regs::FSTS);
    let errs = f & fsts::QUEUE_ERRORS;
    if errs == 0 {
        return Ok(());
    }
    if errs & fsts::IQE != 0 {
        let h = ((regs.read64(regs::IQH) & iq::PTR_MASK) >> 4) as u32;
        if h < QUEUE_ENTRIES {
            let pa = base + h as u64 * DESC_SIZE;
            let d = wait_descriptor(status + 8, 0);
            mem.write_u64(pa, d[0]);
            mem.write_u64(pa + 8, d[1]);
            mem.sync_for_device(pa, DESC_SIZE);
        }
    }
    // Clearing IQE lets the unit fetch the replaced descriptor; the register write is ordered
    // after the memory writes above (RegisterAccess's contract).
    regs.write32(regs::FSTS, errs);
    Err(VtdError::QueueError { fsts: f })
}

/// Register-based invalidation (VT-d spec 6.5.1): one request through CCMD or the IOTLB
/// registers at `iotlb_off` (= ECAP.IRO * 16), waiting for ICC / IVT to clear.
#[allow(clippy::too_many_arguments)]
pub fn run_register<R, D>(
    regs: &mut R,
    delay: &mut D,
    timing: Timing,
    iotlb_off: usize,
    drain: (bool, bool),
    req: Inv,
    counters: &mut VtdCounters,
) -> Result<(), VtdError>
where
    R: RegisterAccess + ?Sized,
    D: DelayNs + ?Sized,
{
    req.count(counters);
    counters.waits += 1;
    let r = match req {
        Inv::ContextGlobal | Inv::ContextDomain { .. } | Inv::ContextDevice { .. } => {
            let v = match req {
                Inv::ContextDomain { did } => ccmd::request(ccmd::DOMAIN, did, 0, 0),
                Inv::ContextDevice { did, sid } => ccmd::request(ccmd::DEVICE, did, sid, 0),
                _ => ccmd::request(ccmd::GLOBAL, 0, 0, 0),
            };
            register_command(regs, delay, timing, regs::CCMD, v, ccmd::ICC, WaitFor::Ccmd).and_then(
                |done| {
                    if ccmd::caig(done) == 0 {
                        Err(VtdError::InvalidationRejected)
                    } else {
                        Ok(())
                    }
                },
            )
        }
        Inv::IotlbGlobal | Inv::IotlbDomain { .. } | Inv::IotlbPages { .. } => {
            let v = match req {
                Inv::IotlbDomain { did } => iotlb::request(iotlb::DOMAIN, did, drain.0, drain.1),
                Inv::IotlbPages { did, addr, am, ih } => {
                    regs.write64(iotlb_off, iotlb::address(addr, am, ih));
                    iotlb::request(iotlb::PAGE, did, drain.0, drain.1)
                }
                _ => iotlb::request(iotlb::GLOBAL, 0, drain.0, drain.1),
            };
            register_command(
                regs,
                delay,
                timing,
                iotlb_off + 8,
                v,
                iotlb::IVT,
                WaitFor::Iotlb,
            )
            .and_then(|done| {
                if iotlb::iaig(done) == 0 {
                    Err(VtdError::InvalidationRejected)
                } else {
                    Ok(())
                }
            })
        }
    };
    if let Err(e) = r {
        counters.count_error(e);
    }
    r
}

/// Waits for `busy` to be clear in the 64-bit register at `off`, writes `value`, waits for
/// `busy` to clear again and returns the final register value.
fn register_command<R, D>(
    regs: &mut R,
    delay: &mut D,
    timing: Timing,
    off: usize,
    value: u64,
    busy: u64,
    what: WaitFor,
) -> Result<u64, VtdError>
where
    R: RegisterAccess + ?Sized,
    D: DelayNs + ?Sized,
{
    poll(delay, timing, what, || Ok(regs.read64(off) & busy == 0))?;
    regs.write64(off, value);
    let mut last = 0;
    poll(delay, timing, what, || {
        last = regs.read64(off);
        Ok(last & busy == 0)
    })?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_encodings() {
        assert_eq!(Inv::ContextGlobal.encode(false, false), [0x11, 0]);
        assert_eq!(
            Inv::ContextDevice {
                did: 3,
                sid: 0x0010
            }
            .encode(true, true),
            [0x1 | (3 << 4) | (3 << 16) | (0x10 << 32), 0]
        );
        assert_eq!(
            Inv::IotlbDomain { did: 9 }.encode(true, true),
            [0x2 | (2 << 4) | (1 << 7) | (1 << 6) | (9 << 16), 0]
        );
        assert_eq!(
            Inv::IotlbPages {
                did: 1,
                addr: 0x20_0000,
                am: 9,
                ih: true
            }
            .encode(false, false),
            [0x2 | (3 << 4) | (1 << 16), 0x20_0000 | 0x40 | 9]
        );
        assert_eq!(wait_descriptor(0x5000, 7), [0x5 | 0x20 | (7 << 32), 0x5000]);
    }

    #[test]
    fn psi_masks() {
        // One page.
        assert_eq!(psi_for_span(0x3000, 0x3fff, 18), Some((0x3000, 0)));
        // Two pages straddling a 2-page boundary need a 4-page block.
        assert_eq!(psi_for_span(0x1000, 0x2fff, 18), Some((0, 2)));
        // An aligned 2 MiB leaf.
        assert_eq!(psi_for_span(0x20_0000, 0x3f_ffff, 18), Some((0x20_0000, 9)));
        // A 4 KiB page inside a 2 MiB region, with MAMV 0.
        assert_eq!(psi_for_span(0x20_0000, 0x20_0fff, 0), Some((0x20_0000, 0)));
        assert_eq!(psi_for_span(0x20_0000, 0x3f_ffff, 8), None);
        // A 1 GiB leaf needs AM 18 (QEMU's MAMV).
        assert_eq!(
            psi_for_span(0x4000_0000, 0x7fff_ffff, 18),
            Some((0x4000_0000, 18))
        );
        // Crossing a 1 GiB boundary with two pages needs AM 19 > 18.
        assert_eq!(psi_for_span(0x3fff_f000, 0x4000_0fff, 18), None);
        assert_eq!(psi_for_span(2, 1, 18), None);
        // The whole 64-bit space never fits.
        assert_eq!(psi_for_span(0, u64::MAX, 63), None);
    }

    #[test]
    fn psi_block_always_covers_span() {
        let spans = [
            (0x0u64, 0xfffu64),
            (0x7000, 0x9fff),
            (0x1ff000, 0x200fff),
            (0x12345000, 0x1234ffff),
            (0xfff_ffff_f000, 0xfff_ffff_ffff),
        ];
        for (s, l) in spans {
            let (a, am) = psi_for_span(s, l, 63).unwrap();
            let size = 4096u64 << am;
            assert_eq!(a % size, 0);
            assert!(a <= s && l < a + size, "{s:#x}..{l:#x} -> {a:#x}/{am}");
            if am > 0 {
                // Minimal: half the block would not cover both ends.
                let half = size / 2;
                assert!(s < a + half && l >= a + half);
            }
        }
    }
}
