//! The page-table algorithm, written once for every [`Format`].
//!
//! PLACEHOLDER API: the bodies are being written; the signatures are the contract.

use core::marker::PhantomData;

use super::{Format, Gather, LeafSizes, Perms, PtError};
use crate::mem::{FrameAlloc, PhysAddr, PhysMem};

/// How a table is built for one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TableConfig {
    /// Input address width in bits (one of the format's `ADDR_WIDTHS`).
    pub addr_width: u32,
    /// Leaf sizes the unit allows; intersected with the levels the format allows.
    pub leaf_sizes: LeafSizes,
    /// Whether a live block may be replaced by a table in one write. When false (SMMUv3
    /// without BBML2), an unmap that must split a block fails with `SplitForbidden`.
    pub split_live_blocks: bool,
    /// Whether the walker snoops CPU caches; when false every table write is followed by
    /// `PhysMem::sync_for_device` before it can matter to the walker.
    pub coherent: bool,
}

/// What one IOVA translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Translation {
    /// Physical address of the queried IOVA (not of the leaf's start).
    pub phys: PhysAddr,
    /// Permissions of the leaf.
    pub perms: Perms,
    /// Size of the leaf that maps it, in bytes.
    pub leaf_size: u64,
}

/// Counters of the work a table did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Leaf entries written (set or cleared).
    pub leaf_writes: u64,
    /// Non-leaf (table pointer) entries written (set or cleared).
    pub table_writes: u64,
    /// Frames allocated.
    pub frames_allocated: u64,
    /// Frames handed back (directly, or queued in a gather).
    pub frames_freed: u64,
}

/// One I/O page table.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    root: PhysAddr,
    levels: u8,
    config: TableConfig,
    counters: Counters,
    _format: PhantomData<F>,
}

impl<F: Format> PageTable<F> {
    /// Allocates an empty root table.
    pub fn new<A: FrameAlloc + ?Sized>(
        config: TableConfig,
        alloc: &mut A,
    ) -> Result<Self, PtError> {
        let _ = (config, alloc);
        todo!()
    }
    /// Physical address of the root table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }
    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }
    /// The configuration it was built with.
    pub fn config(&self) -> TableConfig {
        self.config
    }
    /// Work counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// Maps `[iova, iova + len)` to `[phys, phys + len)`.
    #[allow(clippy::too_many_arguments)]
    pub fn map<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        iova: u64,
        phys: PhysAddr,
        len: u64,
        perms: Perms,
        gather: &mut Gather,
    ) -> Result<(), PtError> {
        let _ = (mem, alloc, iova, phys, len, perms, gather);
        todo!()
    }
    /// Unmaps exactly the pages of `[iova, iova + len)`; returns the bytes that were mapped.
    pub fn unmap<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(
        &mut self,
        mem: &mut M,
        alloc: &mut A,
        iova: u64,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, PtError> {
        let _ = (mem, alloc, iova, len, gather);
        todo!()
    }
    /// What `iova` translates to.
    pub fn query<M: PhysMem + ?Sized>(&self, mem: &M, iova: u64) -> Option<Translation> {
        let _ = (mem, iova);
        todo!()
    }
    /// Lowest `align`-aligned IOVA `>= lo` such that `[iova, iova + len)` lies within
    /// `[lo, last]` and no page of it is mapped. Walks the table (no second copy of the space).
    pub fn find_free<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        len: u64,
        align: u64,
        lo: u64,
        last: u64,
    ) -> Result<Option<u64>, PtError> {
        let _ = (mem, len, align, lo, last);
        todo!()
    }
    /// Frees every frame of the table, root included. Call only after every device using the
    /// table is blocked and the invalidation has completed.
    pub fn destroy<M: PhysMem + ?Sized, A: FrameAlloc + ?Sized>(self, mem: &mut M, alloc: &mut A) {
        let _ = (mem, alloc);
        todo!()
    }
}
