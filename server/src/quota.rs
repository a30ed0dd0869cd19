//! Per-request frame accounting: a [`FrameAlloc`] wrapper that charges a client's quota.

use iommu_hal::{FrameAlloc, PhysAddr};

/// Wraps the global frame allocator for one request of one client: refuses an allocation that
/// would take the client past its frame quota (remembering that it was the quota, not the
/// global pool, that said no) and keeps the client's count of frames held up to date as
/// frames are handed out and back.
pub(crate) struct Counting<'a, A: FrameAlloc + ?Sized> {
    inner: &'a mut A,
    /// The client's count of frames held, updated in place.
    held: &'a mut u64,
    /// The client's quota.
    limit: u64,
    /// Whether an allocation was refused because of the quota.
    pub(crate) quota_refused: bool,
}

impl<'a, A: FrameAlloc + ?Sized> Counting<'a, A> {
    /// A wrapper charging `held` (the client's count) against `limit` (its quota).
    pub(crate) fn new(inner: &'a mut A, held: &'a mut u64, limit: u32) -> Self {
        Counting {
            inner,
            held,
            limit: u64::from(limit),
            quota_refused: false,
        }
    }
}

impl<A: FrameAlloc + ?Sized> FrameAlloc for Counting<'_, A> {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        if *self.held >= self.limit {
            self.quota_refused = true;
            return None;
        }
        let f = self.inner.alloc_frame()?;
        *self.held += 1;
        Some(f)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        *self.held = self.held.saturating_sub(1);
        self.inner.free_frame(pa)
    }
}
