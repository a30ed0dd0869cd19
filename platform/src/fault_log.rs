//! A backend wrapper that remembers the last fault records its units reported, raw (unit,
//! requester / stream id, IOVA), before the server routes or drops them: after a failure the
//! image prints them, so that a DMA blocked under an unexpected requester id (a bridge alias
//! nobody attached) shows that id, which the server counts only as an unowned fault.
//!
//! Everything else is forwarded unchanged (in the manner of a Hubris ring buffer: a fixed
//! number of `Copy` records, the oldest overwritten).

use iommu_hal::FrameAlloc;
use iommu_hal::backend::{Backend, DomainConfig, FaultInterrupt, FaultRecord, UnitIndex, UnitInfo};
use iommu_hal::pagetable::Gather;

/// `B` with the last `N` fault records it drained.
#[derive(Debug)]
pub struct FaultLog<B, const N: usize> {
    inner: B,
    ring: [Option<FaultRecord>; N],
    next: usize,
    total: u64,
}

impl<B: Backend, const N: usize> FaultLog<B, N> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        FaultLog {
            inner,
            ring: [None; N],
            next: 0,
            total: 0,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Records drained since the start (also those no longer kept).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The records kept, oldest first (at most `N`).
    pub fn recent(&self) -> impl Iterator<Item = FaultRecord> + '_ {
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).flatten().copied()
    }
}

impl<B: Backend, const N: usize> Backend for FaultLog<B, N> {
    type Format = B::Format;
    type Error = B::Error;

    fn unit_count(&self) -> usize {
        self.inner.unit_count()
    }
    fn unit_info(&self, unit: UnitIndex) -> UnitInfo {
        self.inner.unit_info(unit)
    }
    fn prepare(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
    ) -> Result<(), B::Error> {
        self.inner.prepare(alloc, unit, device)
    }
    fn attach(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        device: u32,
        domain: DomainConfig,
    ) -> Result<(), B::Error> {
        self.inner.attach(alloc, unit, device, domain)
    }
    fn block(&mut self, unit: UnitIndex, device: u32) -> Result<(), B::Error> {
        self.inner.block(unit, device)
    }
    fn invalidate(&mut self, unit: UnitIndex, tag: u16, gather: &Gather) -> Result<(), B::Error> {
        self.inner.invalidate(unit, tag, gather)
    }
    fn invalidate_all(&mut self, unit: UnitIndex, tag: u16) -> Result<(), B::Error> {
        self.inner.invalidate_all(unit, tag)
    }
    fn release_tag(
        &mut self,
        alloc: &mut dyn FrameAlloc,
        unit: UnitIndex,
        tag: u16,
    ) -> Result<(), B::Error> {
        self.inner.release_tag(alloc, unit, tag)
    }
    fn enable_fault_interrupt(
        &mut self,
        unit: UnitIndex,
        irq: FaultInterrupt,
    ) -> Result<(), B::Error> {
        self.inner.enable_fault_interrupt(unit, irq)
    }
    fn drain_faults(
        &mut self,
        unit: UnitIndex,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<bool, B::Error> {
        let FaultLog {
            inner,
            ring,
            next,
            total,
        } = self;
        inner.drain_faults(unit, &mut |rec| {
            if N > 0 {
                ring[*next] = Some(rec);
                *next = (*next + 1) % N;
            }
            *total += 1;
            sink(rec);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt;
    use iommu_hal::backend::{BackendError, ErrorKind, FaultReason};
    use iommu_hal::pagetable::format::VtdSl;
    use std::vec::Vec;

    #[derive(Debug, PartialEq)]
    struct E;
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("e")
        }
    }
    impl core::error::Error for E {}
    impl BackendError for E {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    /// Drains `per_drain` records per call, device ids counting up; records every call.
    #[derive(Default)]
    struct Fake {
        per_drain: u32,
        next_id: u32,
        calls: Vec<&'static str>,
    }

    impl Backend for Fake {
        type Format = VtdSl;
        type Error = E;
        fn unit_count(&self) -> usize {
            1
        }
        fn unit_info(&self, _unit: UnitIndex) -> UnitInfo {
            UnitInfo {
                addr_width: 48,
                phys_width: 48,
                leaf_sizes: iommu_hal::pagetable::LeafSizes::SZ_4K,
                caches_not_present: false,
                split_live_blocks: true,
                coherent_walk: true,
                max_tag: 7,
            }
        }
        fn prepare(&mut self, _: &mut dyn FrameAlloc, _: UnitIndex, _: u32) -> Result<(), E> {
            self.calls.push("prepare");
            Ok(())
        }
        fn attach(
            &mut self,
            _: &mut dyn FrameAlloc,
            _: UnitIndex,
            _: u32,
            _: DomainConfig,
        ) -> Result<(), E> {
            self.calls.push("attach");
            Err(E)
        }
        fn block(&mut self, _: UnitIndex, _: u32) -> Result<(), E> {
            self.calls.push("block");
            Ok(())
        }
        fn invalidate(&mut self, _: UnitIndex, _: u16, _: &Gather) -> Result<(), E> {
            self.calls.push("invalidate");
            Ok(())
        }
        fn invalidate_all(&mut self, _: UnitIndex, _: u16) -> Result<(), E> {
            self.calls.push("invalidate_all");
            Ok(())
        }
        fn release_tag(&mut self, _: &mut dyn FrameAlloc, _: UnitIndex, _: u16) -> Result<(), E> {
            self.calls.push("release_tag");
            Ok(())
        }
        fn enable_fault_interrupt(&mut self, _: UnitIndex, _: FaultInterrupt) -> Result<(), E> {
            self.calls.push("enable_fault_interrupt");
            Ok(())
        }
        fn drain_faults(
            &mut self,
            unit: UnitIndex,
            sink: &mut dyn FnMut(FaultRecord),
        ) -> Result<bool, E> {
            self.calls.push("drain_faults");
            for _ in 0..self.per_drain {
                sink(FaultRecord {
                    unit,
                    device: self.next_id,
                    iova: 0x1000,
                    write: true,
                    reason: FaultReason::Blocked,
                });
                self.next_id += 1;
            }
            Ok(self.per_drain > 2)
        }
    }

    struct NoFrames;
    impl FrameAlloc for NoFrames {
        fn alloc_frame(&mut self) -> Option<u64> {
            None
        }
        fn free_frame(&mut self, _pa: u64) {}
    }

    #[test]
    fn keeps_the_last_records_and_forwards_everything() {
        let mut log: FaultLog<Fake, 4> = FaultLog::new(Fake {
            per_drain: 3,
            ..Fake::default()
        });
        let mut seen = Vec::new();
        assert_eq!(log.drain_faults(0, &mut |r| seen.push(r.device)), Ok(true));
        assert_eq!(seen, [0, 1, 2], "the server still gets every record");
        assert_eq!(
            log.recent().map(|r| r.device).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        log.drain_faults(0, &mut |_| {}).unwrap();
        assert_eq!(
            log.recent().map(|r| r.device).collect::<Vec<_>>(),
            [2, 3, 4, 5],
            "the oldest overwritten"
        );
        assert_eq!(log.total(), 6);
        // Every other call is forwarded with its result.
        let mut a = NoFrames;
        let d = DomainConfig {
            tag: 1,
            root: 0x1000,
            levels: 4,
            addr_width: 48,
        };
        assert_eq!(log.prepare(&mut a, 0, 8), Ok(()));
        assert_eq!(log.attach(&mut a, 0, 8, d), Err(E));
        assert_eq!(log.block(0, 8), Ok(()));
        assert_eq!(log.invalidate(0, 1, &Gather::new()), Ok(()));
        assert_eq!(log.invalidate_all(0, 1), Ok(()));
        assert_eq!(log.release_tag(&mut a, 0, 1), Ok(()));
        assert_eq!(log.enable_fault_interrupt(0, FaultInterrupt::Wired), Ok(()));
        assert_eq!(log.unit_count(), 1);
        assert_eq!(log.unit_info(0).max_tag, 7);
        assert_eq!(
            log.inner().calls,
            [
                "drain_faults",
                "drain_faults",
                "prepare",
                "attach",
                "block",
                "invalidate",
                "invalidate_all",
                "release_tag",
                "enable_fault_interrupt"
            ]
        );
    }
}
