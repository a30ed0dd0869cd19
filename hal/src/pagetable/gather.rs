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
/// Frames pending in a gather are freed only through [`Gather::release`] (or moved by
/// [`Gather::merge`], or deliberately abandoned with [`Gather::leak`]). Dropping a gather that
/// still holds frames loses them: debug builds panic, and with the `defmt` feature the loss is
/// logged as an error.
///
/// `repr(C)` with `start` and `last` apart: they are written by separate 8-byte stores, and a
/// copy of [`Gather::span`] right after a call must not read them with one 16-byte load (a
/// load that spans two pending stores cannot be forwarded from them and stalls).
///
/// Nothing changed is the empty span `start > last` (`u64::MAX`, 0), so recording a span is
/// a `min` and a `max` with no test; leaf sizes are powers of two, so the sizes touched are
/// one word of bits, its lowest set bit the smallest, its highest the largest.
#[derive(Debug, PartialEq, Eq)]
#[repr(C)]
#[must_use = "a gather must be invalidated and released, or its frames are lost"]
pub struct Gather {
    /// First byte changed; above `last` (`u64::MAX`) when nothing changed.
    start: u64,
    /// Every leaf size touched, OR-ed together (0 when none).
    leaf_sizes: u64,
    /// Last byte changed, inclusive; below `start` (0) when nothing changed.
    last: u64,
    tables_removed: bool,
    free_head: Option<PhysAddr>,
    free_count: u64,
}

impl Default for Gather {
    fn default() -> Self {
        Gather::new()
    }
}

impl Gather {
    /// An empty gather.
    pub const fn new() -> Self {
        Gather {
            start: u64::MAX,
            leaf_sizes: 0,
            last: 0,
            tables_removed: false,
            free_head: None,
            free_count: 0,
        }
    }

    /// Whether nothing was recorded: no invalidation is needed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start > self.last && self.free_head.is_none() && !self.tables_removed
    }

    /// The changed IOVA span as `(first, last)`, both inclusive, if any entry changed.
    #[inline]
    pub fn span(&self) -> Option<(u64, u64)> {
        (self.start <= self.last).then_some((self.start, self.last))
    }

    /// Smallest leaf size touched, in bytes (0 when no leaf changed).
    #[inline]
    pub fn min_leaf(&self) -> u64 {
        self.leaf_sizes & self.leaf_sizes.wrapping_neg()
    }

    /// Largest leaf size touched, in bytes (0 when no leaf changed).
    #[inline]
    pub fn max_leaf(&self) -> u64 {
        match self.leaf_sizes {
            0 => 0,
            sizes => 1 << (63 - sizes.leading_zeros()),
        }
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

    /// Records that leaves of `leaf_size` bytes covering the `len` bytes from `iova` changed.
    /// A range that wraps past the top of the 64-bit space is recorded up to its top.
    #[inline(always)]
    pub fn add_range(&mut self, iova: u64, len: u64, leaf_size: u64) {
        if len == 0 {
            return;
        }
        self.add_span(iova, iova.saturating_add(len - 1), leaf_size);
    }

    /// Records that leaves of `leaf_size` bytes (a power of two; 0 records the span alone)
    /// covering `first..=last` changed (inclusive, so the whole 64-bit space can be recorded).
    #[inline(always)]
    pub fn add_span(&mut self, first: u64, last: u64, leaf_size: u64) {
        debug_assert!(first <= last);
        debug_assert!(leaf_size == 0 || leaf_size.is_power_of_two());
        self.start = self.start.min(first);
        self.last = self.last.max(last);
        self.leaf_sizes |= leaf_size;
    }

    /// Records leaf sizes touched within a span already recorded (`sizes`: sizes OR-ed).
    #[inline(always)]
    pub(crate) fn add_leaf_sizes(&mut self, sizes: u64) {
        self.leaf_sizes |= sizes;
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
        if let Some((first, last)) = other.span() {
            self.add_span(first, last, 0);
        }
        self.add_leaf_sizes(other.leaf_sizes);
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

    /// Abandons the queued frames on purpose: they stay allocated forever (e.g. a domain
    /// quarantined because its invalidation can never complete). Returns how many. The gather
    /// is empty afterwards.
    pub fn leak(&mut self) -> u64 {
        let n = self.free_count;
        self.free_head = None;
        self.free_count = 0;
        *self = Gather::new();
        n
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
        // Every frame is out: nothing is lost with the record replaced.
        *self = Gather::new();
        n
    }
}

impl Drop for Gather {
    /// Frames still pending are lost with the gather: loud in debug builds and in the log.
    fn drop(&mut self) {
        if self.free_count != 0 {
            #[cfg(feature = "defmt")]
            defmt::error!(
                "Gather dropped with {=u64} table frames pending: they are leaked",
                self.free_count
            );
            debug_assert!(
                self.free_count == 0,
                "Gather dropped with {} table frames pending (release, merge or leak it)",
                self.free_count
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keeps the frames it is given back.
    struct Frames(std::vec::Vec<PhysAddr>);
    impl FrameAlloc for Frames {
        fn alloc_frame(&mut self) -> Option<PhysAddr> {
            self.0.pop()
        }
        fn free_frame(&mut self, pa: PhysAddr) {
            self.0.push(pa);
        }
    }

    #[derive(Default)]
    struct Ram(BTreeMap<u64, u64>);
    impl PhysMem for Ram {
        fn read_u64(&self, pa: PhysAddr) -> u64 {
            self.0.get(&pa).copied().unwrap_or(0)
        }
        fn write_u64(&mut self, pa: PhysAddr, value: u64) {
            self.0.insert(pa, value);
        }
        fn order_writes(&mut self) {}
    }

    /// Issue 11: a span covering all 64 bits survives a merge (it used to wrap to length 0,
    /// or panic with overflow checks).
    #[test]
    fn merge_keeps_a_span_of_the_whole_64_bit_space() {
        let mut a = Gather::new();
        a.add_span(0, u64::MAX, 1 << 39);
        a.add_range(0x1000, 0x2000, 0x1000);
        let mut into = Gather::new();
        into.merge(&mut Ram::default(), a);
        assert_eq!(into.span(), Some((0, u64::MAX)));
        assert_eq!((into.min_leaf(), into.max_leaf()), (0x1000, 1 << 39));
        // 0x1000..2^64 (AMD v1 at 64 bits), recorded as a length: reaches the top.
        let mut b = Gather::new();
        b.add_range(0x1000, 0u64.wrapping_sub(0x1000), 0x1000);
        let mut into = Gather::new();
        into.merge(&mut Ram::default(), b);
        assert_eq!(into.span(), Some((0x1000, u64::MAX)));
    }

    /// What a gather says it holds: empty only when nothing at all was recorded (a span of
    /// one byte, a removed table alone and a frame alone each make it non-empty), and the
    /// smallest and largest of the leaf sizes recorded.
    #[test]
    fn a_gather_reports_exactly_what_was_recorded() {
        let g = Gather::new();
        assert!(g.is_empty());
        assert_eq!((g.span(), g.min_leaf(), g.max_leaf()), (None, 0, 0));
        assert_eq!(Gather::default(), g);

        let mut g = Gather::new();
        g.add_span(0x5000, 0x5000, 0);
        assert!(!g.is_empty());
        assert_eq!(
            (g.span(), g.min_leaf(), g.max_leaf()),
            (Some((0x5000, 0x5000)), 0, 0)
        );

        let mut g = Gather::new();
        g.note_table_removed();
        assert!(!g.is_empty());
        assert_eq!(g.span(), None);

        let mut ram = Ram::default();
        let mut g = Gather::new();
        g.defer_free(&mut ram, 0x3000);
        assert!(!g.is_empty());
        assert_eq!(g.release(&mut ram, &mut Frames(std::vec::Vec::new())), 1);
        assert!(g.is_empty());

        let mut g = Gather::new();
        g.add_range(0x20_0000, 0x20_0000, 0x20_0000);
        g.add_range(0x1000, 0x1000, 0x1000);
        g.add_range(0x4000_0000, 0x4000_0000, 0x4000_0000);
        assert_eq!(g.span(), Some((0x1000, 0x7fff_ffff)));
        assert_eq!((g.min_leaf(), g.max_leaf()), (0x1000, 0x4000_0000));
        assert_eq!(g.release(&mut ram, &mut Frames(std::vec::Vec::new())), 0);
        assert_eq!((g.span(), g.min_leaf(), g.max_leaf()), (None, 0, 0));

        // A merge carries a removed table alone (no span, no frame) too.
        let mut removed = Gather::new();
        removed.note_table_removed();
        let mut into = Gather::new();
        into.merge(&mut ram, removed);
        assert!(into.tables_removed() && !into.is_empty());
    }

    #[test]
    fn frames_move_with_a_merge_and_leak_is_explicit() {
        let mut ram = Ram::default();
        let mut a = Gather::new();
        a.defer_free(&mut ram, 0x1000);
        a.defer_free(&mut ram, 0x2000);
        let mut b = Gather::new();
        b.merge(&mut ram, a);
        assert_eq!(b.frames_pending(), 2);
        assert!(b.tables_removed());
        assert_eq!(b.leak(), 2);
        assert!(b.is_empty());
    }

    #[test]
    #[should_panic(expected = "table frames pending")]
    #[cfg(debug_assertions)]
    fn dropping_pending_frames_is_loud() {
        let mut ram = Ram::default();
        let mut a = Gather::new();
        a.defer_free(&mut ram, 0x1000);
        drop(a);
    }
}
