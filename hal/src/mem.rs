//! The small traits through which hardware is reached.
//!
//! Everything in `hal` touches memory and registers only through these, so the same code runs
//! on bare metal (identity-mapped physical memory, MMIO) and on the host against the
//! register-level models in `test-harness`.

/// A physical (bus) address, as the IOMMU's table walker sees it.
pub type PhysAddr = u64;

/// The size of the smallest page and of every page-table frame: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// Access to physical memory in 64-bit units, as a DMA-capable table walker sees it.
pub trait PhysMem {
    /// Reads the naturally aligned 64-bit word at `pa`.
    fn read_u64(&self, pa: PhysAddr) -> u64;
    /// Writes the naturally aligned 64-bit word at `pa`. A single call is one single-copy-atomic
    /// store: the walker sees either the old or the new value, never a mix.
    fn write_u64(&mut self, pa: PhysAddr, value: u64);
    /// Makes earlier writes to `[pa, pa + len)` visible to a walker that does not snoop the CPU
    /// caches (a cache clean to the point of coherency). The default does nothing, which is right
    /// for coherent walkers and for host models.
    fn sync_for_device(&mut self, pa: PhysAddr, len: u64) {
        let _ = (pa, len);
    }
    /// Makes what a non-snooping device wrote to `[pa, pa + len)` visible to the CPU (a cache
    /// invalidate), before the CPU reads records the unit wrote (event / fault queues,
    /// completion status words). The default does nothing, which is right for coherent units
    /// and for host models.
    fn sync_for_cpu(&mut self, pa: PhysAddr, len: u64) {
        let _ = (pa, len);
    }
}

/// A source of 4 KiB page-table frames.
pub trait FrameAlloc {
    /// Returns the physical address of a 4 KiB-aligned frame whose 4096 bytes are all zero,
    /// or `None` when no frame is available (or a quota says no).
    fn alloc_frame(&mut self) -> Option<PhysAddr>;
    /// Returns a frame obtained from [`FrameAlloc::alloc_frame`]. Its contents need not be zero.
    fn free_frame(&mut self, pa: PhysAddr);
}

impl<T: FrameAlloc + ?Sized> FrameAlloc for &mut T {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        (**self).alloc_frame()
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        (**self).free_frame(pa)
    }
}

impl<T: PhysMem + ?Sized> PhysMem for &mut T {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        (**self).read_u64(pa)
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        (**self).write_u64(pa, value)
    }
    fn sync_for_device(&mut self, pa: PhysAddr, len: u64) {
        (**self).sync_for_device(pa, len)
    }
    fn sync_for_cpu(&mut self, pa: PhysAddr, len: u64) {
        (**self).sync_for_cpu(pa, len)
    }
}

/// Access to one unit's memory-mapped register block. Offsets are relative to the unit's base.
///
/// 32-bit and 64-bit accesses are distinct because several IOMMUs define registers that must be
/// accessed at one width only (e.g. SMMUv3 queue pointers are 32-bit).
pub trait RegisterAccess {
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&mut self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&mut self, offset: usize, value: u64);
}
