//! What one page-table call changed, and what must happen after the IOTLB invalidation.

use crate::mem::{FrameAlloc, PhysAddr, PhysMem};

/// Records what one `map`/`unmap` call (or several, merged) changed: the IOVA span, the
/// smallest leaf size touched, whether non-leaf entries were removed (so paging-structure
/// caches must be invalidated too), and the table frames that may be freed only once the
/// invalidation has completed.
///
/// Frames waiting to be freed are chained through their first entry. The frames are unlinked,
/// all-zero tables; a 4 KiB-aligned physical address stored in an entry is a *non-present* entry
/// in every supported format (VT-d R=W=0, AMD-Vi PR=0, ARM bit 0 = 0, RISC-V V=0), so a walker
/// still holding a stale pointer to such a frame sees only non-present entries. The chain
/// needs no memory of its own, so one gather covers any range.
/// Deliberately not `Clone`: two copies would free the same frames twice.
///
/// `repr(C)` with `start` and `last` apart: they are written by separate 8-byte stores, and a
/// copy of [`Gather::span`] right after a call must not read them with one 16-byte load (a
/// load that spans two pending stores cannot be forwarded from them and stalls).
#[derive(Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Gather {
    /// First byte changed (valid when `changed`).
    start: u64,
    /// Smallest leaf size touched (0 when none).
    min_leaf: u64,
    /// Last byte changed, inclusive (valid when `changed`).
    last: u64,
    /// Largest leaf size touched (0 when none).
    max_leaf: u64,
    changed: bool,
    tables_removed: bool,
    free_head: Option<PhysAddr>,
    free_count: u64,
}

impl Gather {
    /// An empty gather.
    pub const fn new() -> Self {
        Gather {
            start: 0,
            last: 0,
            changed: false,
            min_leaf: 0,
            max_leaf: 0,
            tables_removed: false,
            free_head: None,
            free_count: 0,
        }
    }

    /// Whether nothing was recorded: no invalidation is needed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.changed && self.free_head.is_none() && !self.tables_removed
    }

    /// The changed IOVA span as `(first, last)` inclusive, if any leaf changed.
    #[inline]
    pub fn span(&self) -> Option<(u64, u64)> {
        self.changed.then_some((self.start, self.last))
    }

    /// Smallest leaf size touched, in bytes (0 when no leaf changed).
    #[inline]
    pub fn min_leaf(&self) -> u64 {
        self.min_leaf
    }

    /// Largest leaf size touched, in bytes (0 when no leaf changed).
    #[inline]
    pub fn max_leaf(&self) -> u64 {
        self.max_leaf
    }

    /// Whether non-leaf entries were removed or replaced, so paging-structure caches (VT-d
    /// PDE caches, SMMU walk caches, ...) must be invalidated, not only leaf IOTLB entries.
    #[inline]
    pub fn tables_removed(&self) -> bool {
        self.tables_removed
    }

    /// How many frames wait for the invalidation before they can be freed.
    #[inline]
    pub fn frames_pending(&self) -> u64 {
        self.free_count
    }

    /// Records that leaves of `leaf_size` bytes covering `[iova, iova + len)` changed.
    #[inline(always)]
    pub fn add_range(&mut self, iova: u64, len: u64, leaf_size: u64) {
        if len == 0 {
            return;
        }
        let last = iova.saturating_add(len - 1);
        if self.changed {
            self.start = self.start.min(iova);
            self.last = self.last.max(last);
        } else {
            self.start = iova;
            self.last = last;
            self.changed = true;
        }
        if self.min_leaf == 0 || leaf_size < self.min_leaf {
            self.min_leaf = leaf_size;
        }
        self.max_leaf = self.max_leaf.max(leaf_size);
    }

    /// Records that a non-leaf entry was removed or replaced.
    #[inline]
    pub fn note_table_removed(&mut self) {
        self.tables_removed = true;
    }

    /// Queues an unlinked, all-zero table frame to be freed after the invalidation. Writes the
    /// chain link into the frame's first entry (a non-present value in every format).
    pub fn defer_free<M: PhysMem + ?Sized>(&mut self, mem: &mut M, frame: PhysAddr) {
        debug_assert_eq!(frame % crate::PAGE_SIZE, 0);
        mem.write_u64(frame, self.free_head.unwrap_or(0));
        self.free_head = Some(frame);
        self.free_count += 1;
        self.tables_removed = true;
    }

    /// Moves everything recorded in `other` into `self` (one invalidation for both).
    pub fn merge<M: PhysMem + ?Sized>(&mut self, mem: &mut M, mut other: Gather) {
        if let Some((s, l)) = other.span() {
            self.add_range(s, l - s + 1, other.min_leaf);
            self.max_leaf = self.max_leaf.max(other.max_leaf);
        }
        self.tables_removed |= other.tables_removed;
        while let Some(frame) = other.pop_frame(mem) {
            self.defer_free(mem, frame);
        }
    }

    fn pop_frame<M: PhysMem + ?Sized>(&mut self, mem: &mut M) -> Option<PhysAddr> {
        let frame = self.free_head?;
        let next = mem.read_u64(frame);
        mem.write_u64(frame, 0);
        self.free_head = if next == 0 { None } else { Some(next) };
        self.free_count -= 1;
        Some(frame)
    }

    /// Frees the queued frames. Call only after the invalidation covering this gather has
    /// completed on every unit that could have cached the removed tables. Returns how many
    /// frames were freed. The gather is empty afterwards.
    pub fn release<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
    ) -> u64 {
        let mut n = 0;
        while let Some(frame) = self.pop_frame(mem) {
            alloc.free_frame(frame);
            n += 1;
        }
        *self = Gather::new();
        n
    }
}
