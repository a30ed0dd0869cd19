//! Per-request frame accounting: a [`FrameAlloc`] wrapper that charges a client's quota.

use iommu_hal::{FrameAlloc, PhysAddr};

/// Wraps the global frame allocator for one request of one client. Refuses an allocation that
/// would take the client past its page-table frame quota (remembering that it was the quota,
/// not the global pool, that said no) and counts frames handed out and back.
pub(crate) struct Counting<'a, A: FrameAlloc + ?Sized> {
    inner: &'a mut A,
    /// Frames the client held when the request started.
    held: u64,
    /// The client's quota.
    limit: u64,
    /// Frames allocated during this request.
    pub(crate) allocated: u64,
    /// Frames freed during this request.
    pub(crate) freed: u64,
    /// Whether an allocation was refused because of the quota.
    pub(crate) quota_refused: bool,
}

impl<'a, A: FrameAlloc + ?Sized> Counting<'a, A> {
    /// A wrapper for a client holding `held` frames with quota `limit`.
    pub(crate) fn new(inner: &'a mut A, held: u64, limit: u64) -> Self {
        Counting {
            inner,
            held,
            limit,
            allocated: 0,
            freed: 0,
            quota_refused: false,
        }
    }

    /// Frames the client holds now.
    pub(crate) fn held_now(&self) -> u64 {
        (self.held + self.allocated).saturating_sub(self.freed)
    }
}

impl<A: FrameAlloc + ?Sized> FrameAlloc for Counting<'_, A> {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        if self.held_now() >= self.limit {
            self.quota_refused = true;
            return None;
        }
        let f = self.inner.alloc_frame()?;
        self.allocated += 1;
        Some(f)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        self.freed += 1;
        self.inner.free_frame(pa)
    }
}
