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
///
/// # Ordering contract
///
/// A CPU may make plain stores visible to a unit in an order other than program order (the Arm
/// and RISC-V memory models; on x86 only the compiler reorders stores to write-back memory).
/// Whatever a unit reads through a pointer must therefore be visible before the pointer is:
/// a table before the entry that links it, a descriptor's other words before its valid word,
/// a command before the doorbell that announces it. Implementations give three promises:
///
/// - [`PhysMem::write_u64`] is one single-copy-atomic store and promises nothing about its
///   order against other stores as the unit sees them.
/// - [`PhysMem::order_writes`] is a write barrier toward the unit (Linux `dma_wmb()`): every
///   write made through this accessor before the call, and the cache maintenance of every
///   [`PhysMem::sync_for_device`] before it, is visible to the unit before any write made
///   after it. [`PhysMem::publish_u64`] is that barrier followed by the store.
/// - [`RegisterAccess`] writes are ordered after every earlier [`PhysMem`] access: after
///   every write (a doorbell never overtakes what it announces: Linux `writel()`) and after
///   every read (a consumer index hands a slot back to the unit only after the record in it
///   was read: the barrier Linux adds before a queue's consumer index, `__iomb()`).
///   [`RegisterAccess`] reads are ordered before every later [`PhysMem`] read (a record is
///   read only after the index that announced it: Linux `readl()`).
///
/// Hal code calls [`PhysMem::order_writes`] (or [`PhysMem::publish_u64`]) before every store
/// that makes a structure reachable by a unit; it relies on the register promises for
/// doorbells and producer/consumer indices.
pub trait PhysMem {
    /// Reads the naturally aligned 64-bit word at `pa`.
    fn read_u64(&self, pa: PhysAddr) -> u64;
    /// Writes the naturally aligned 64-bit word at `pa`. A single call is one single-copy-atomic
    /// store: the walker sees either the old or the new value, never a mix.
    fn write_u64(&mut self, pa: PhysAddr, value: u64);
    /// Write barrier toward the unit: every earlier write through this accessor (and the cache
    /// maintenance of earlier [`PhysMem::sync_for_device`] calls) becomes visible to the unit
    /// before any later write. See the ordering contract above. On x86 with write-back memory
    /// a compiler barrier suffices; on Arm `dmb oshst` (or `dsb st` after cache maintenance);
    /// on RISC-V `fence w,w`. Required, so that no implementation forgets it.
    fn order_writes(&mut self);
    /// Publishes `value` at `pa`: [`PhysMem::order_writes`], then [`PhysMem::write_u64`]. The
    /// unit sees everything written before this call no later than it sees `value`.
    fn publish_u64(&mut self, pa: PhysAddr, value: u64) {
        self.order_writes();
        self.write_u64(pa, value);
    }
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
    ///
    /// Never the frame at physical address 0: the page-table engine uses 0 for "no frame"
    /// (the end of a [`Gather`](crate::pagetable::Gather)'s chain of frames to free, a table
    /// without a shadow), so an allocator over memory that starts at 0 (DRAM does on some
    /// SoCs) must leave that frame out. Debug builds check it.
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
    fn order_writes(&mut self) {
        (**self).order_writes()
    }
    fn publish_u64(&mut self, pa: PhysAddr, value: u64) {
        (**self).publish_u64(pa, value)
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
///
/// Ordering (see [`PhysMem`]'s contract): a write is ordered after every earlier [`PhysMem`]
/// access (write or read) and a read before every later [`PhysMem`] read, as Linux's
/// `writel()` (with `__iomb()` where a read must not pass it) and `readl()` are.
/// Implementations for weakly ordered CPUs put the barrier inside the access.
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
