//! The hardware-access traits of `iommu_hal::mem`, implemented for an identity-mapped machine:
//! MMIO register blocks, physical memory, and a frame allocator over a static region.
//!
//! Identity mapping means a physical address is also the CPU's virtual address. The bare-metal
//! runtimes map memory that way (riscv64 runs in M-mode, where addresses are physical), so the
//! same code serves x86_64, aarch64 and riscv64.

use iommu_hal::mem::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem, RegisterAccess};

/// One memory-mapped register block, reached with volatile accesses at `base + offset`.
#[derive(Debug)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// A register block at `base`.
    ///
    /// # Safety
    /// `base` must be the identity-mapped address of a register block that this value alone
    /// drives, large enough for every offset it will be given, and mapped as device memory
    /// (or memory whose accesses the platform does not reorder or merge).
    pub const unsafe fn new(base: usize) -> Self {
        Mmio { base }
    }

    /// The block's base address.
    pub const fn base(&self) -> usize {
        self.base
    }
}

impl RegisterAccess for Mmio {
    fn read32(&mut self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract: `base + offset` is a register of the block this value owns.
        let v = unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) };
        barrier::after_mmio_read();
        v
    }
    fn write32(&mut self, offset: usize, value: u32) {
        barrier::before_mmio_write();
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
    fn read64(&mut self, offset: usize) -> u64 {
        // SAFETY: as in `read32`.
        let v = unsafe { core::ptr::read_volatile((self.base + offset) as *const u64) };
        barrier::after_mmio_read();
        v
    }
    fn write64(&mut self, offset: usize, value: u64) {
        barrier::before_mmio_write();
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u64, value) }
    }
}

/// The barriers behind the ordering contract of `iommu_hal::mem::PhysMem` and
/// `RegisterAccess`, per architecture (the same choices as Linux's `dma_wmb()`, `writel()` and
/// `readl()` on each).
///
/// - x86_64: stores to write-back memory and uncached MMIO stores become visible in program
///   order (Intel SDM vol. 3, 9.2.2), so only the compiler must be kept from reordering.
/// - aarch64: `dmb oshst` orders earlier stores before later stores for every observer in the
///   outer-shareable domain, the SMMU included; `dmb osh` before an MMIO store orders every
///   earlier load and store before it (a queue's consumer index must not hand a slot back
///   before the record in it was read); `dmb oshld` orders an MMIO read before later loads
///   (Arm ARM B2.3, "Memory barriers").
/// - riscv64: `fence w,w` (memory stores before memory stores), `fence rw,o` (memory loads and
///   stores before the device store), `fence i,r` (the device load before later memory loads)
///   (RISC-V unprivileged ISA, "Memory Ordering Instructions").
pub mod barrier {
    /// Orders earlier stores to memory before later stores to memory, as a unit sees them.
    #[inline(always)]
    pub fn dma_wmb() {
        #[cfg(all(target_os = "none", target_arch = "aarch64"))]
        // SAFETY: a barrier instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
        };
        #[cfg(all(target_os = "none", target_arch = "riscv64"))]
        // SAFETY: a fence instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("fence w,w", options(nostack, preserves_flags))
        };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Orders earlier loads and stores to memory before the MMIO store that follows.
    #[inline(always)]
    pub fn before_mmio_write() {
        #[cfg(all(target_os = "none", target_arch = "aarch64"))]
        // SAFETY: a barrier instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("dmb osh", options(nostack, preserves_flags))
        };
        #[cfg(all(target_os = "none", target_arch = "riscv64"))]
        // SAFETY: a fence instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("fence rw,o", options(nostack, preserves_flags))
        };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Orders the MMIO load just made before later loads from memory.
    #[inline(always)]
    pub fn after_mmio_read() {
        #[cfg(all(target_os = "none", target_arch = "aarch64"))]
        // SAFETY: a barrier instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
        };
        #[cfg(all(target_os = "none", target_arch = "riscv64"))]
        // SAFETY: a fence instruction; no memory is accessed.
        unsafe {
            core::arch::asm!("fence i,r", options(nostack, preserves_flags))
        };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Physical memory read and written in place through the identity mapping.
///
/// The cache maintenance hooks do what a unit that does not snoop the CPU caches needs (hal
/// calls them only for such units): on x86_64 `sync_for_device` writes the lines back with
/// `clflush` (VT-d 6.6, "Caching mode" and ECAP.C = 0: software must flush table writes) and
/// DMA writes are always snooped, so `sync_for_cpu` has nothing to do; on aarch64 they clean
/// (`dc cvac`) and invalidate (`dc ivac`) to the point of coherency, then `dsb sy` (Arm ARM
/// D7.5 data cache maintenance). Elsewhere (riscv64, whose IOMMU walks are coherent, and the
/// host) they do nothing.
#[derive(Debug)]
pub struct IdentityMem {
    _private: (),
}

impl IdentityMem {
    /// Access to all physical memory.
    ///
    /// # Safety
    /// Memory must be identity mapped, and every address later given to this value must be
    /// memory that its user owns (page-table frames from the frame allocator, unit structures):
    /// never memory that Rust code holds references to.
    pub const unsafe fn new() -> Self {
        IdentityMem { _private: () }
    }
}

impl PhysMem for IdentityMem {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        // SAFETY: `new`'s contract: `pa` is identity-mapped memory owned by the user; the hal
        // traits promise naturally aligned addresses.
        unsafe { core::ptr::read_volatile(pa as usize as *const u64) }
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        // SAFETY: as in `read_u64`. An aligned 64-bit store is single-copy atomic.
        unsafe { core::ptr::write_volatile(pa as usize as *mut u64, value) }
    }
    fn order_writes(&mut self) {
        barrier::dma_wmb();
    }
    fn sync_for_device(&mut self, pa: PhysAddr, len: u64) {
        cache::clean(pa, len);
    }
    fn sync_for_cpu(&mut self, pa: PhysAddr, len: u64) {
        cache::invalidate(pa, len);
    }
}

/// Data-cache maintenance by address over identity-mapped memory.
mod cache {
    use iommu_hal::PhysAddr;

    /// The smallest data-cache line of the supported CPUs (x86_64 and Armv8-A: 64 bytes).
    /// Stepping by the smallest line size covers every line of the range.
    #[cfg(all(
        target_os = "none",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    const LINE: u64 = 64;

    /// Lines covering `[pa, pa + len)`, as start addresses.
    #[cfg(all(
        target_os = "none",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn lines(pa: PhysAddr, len: u64) -> impl Iterator<Item = u64> {
        let start = pa & !(LINE - 1);
        let end = pa.saturating_add(len);
        (start..end).step_by(LINE as usize)
    }

    /// Writes dirty lines back so a non-snooping walker sees them.
    pub fn clean(pa: PhysAddr, len: u64) {
        #[cfg(all(target_os = "none", target_arch = "x86_64"))]
        {
            for line in lines(pa, len) {
                // SAFETY: `clflush` of an identity-mapped address the caller owns (the
                // `IdentityMem` contract) has no effect on memory contents.
                unsafe { core::arch::asm!("clflush [{}]", in(reg) line, options(nostack)) };
            }
            // SAFETY: a fence orders the flushes before the register write that follows.
            unsafe { core::arch::asm!("mfence", options(nostack)) };
        }
        #[cfg(all(target_os = "none", target_arch = "aarch64"))]
        {
            for line in lines(pa, len) {
                // SAFETY: cleaning a line to the point of coherency does not change memory
                // contents as the program sees them.
                unsafe { core::arch::asm!("dc cvac, {}", in(reg) line, options(nostack)) };
            }
            // SAFETY: a barrier completing the maintenance before later MMIO writes.
            unsafe { core::arch::asm!("dsb sy", options(nostack)) };
        }
        #[cfg(not(all(
            target_os = "none",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )))]
        let _ = (pa, len);
    }

    /// Drops cached copies of lines a non-snooping device wrote, before the CPU reads them.
    pub fn invalidate(pa: PhysAddr, len: u64) {
        #[cfg(all(target_os = "none", target_arch = "aarch64"))]
        {
            // SAFETY: a barrier ordering earlier reads of the device's completion signal.
            unsafe { core::arch::asm!("dsb sy", options(nostack)) };
            for line in lines(pa, len) {
                // SAFETY: the range holds records the device wrote and the CPU has not
                // modified (the `IdentityMem` contract), so discarding cached copies loses
                // nothing.
                unsafe { core::arch::asm!("dc ivac, {}", in(reg) line, options(nostack)) };
            }
            // SAFETY: a barrier completing the invalidation before the reads that follow.
            unsafe { core::arch::asm!("dsb sy", options(nostack)) };
        }
        #[cfg(not(all(target_os = "none", target_arch = "aarch64")))]
        let _ = (pa, len);
    }
}

/// One 4 KiB frame of a static frame region.
#[repr(C, align(4096))]
pub struct Frame(pub [u8; PAGE_SIZE as usize]);

impl Frame {
    /// A zeroed frame, for `static` arrays.
    pub const ZERO: Frame = Frame([0; PAGE_SIZE as usize]);
}

/// The most frames a [`FramePool`] can hold: 4096 (16 MiB).
pub const MAX_POOL_FRAMES: usize = 4096;

/// A frame allocator over one contiguous region of identity-mapped memory, with a bitmap of
/// frames in use. Frames come back zeroed. A frame freed twice, or an address that is not a
/// frame of the pool, is ignored and counted in [`FramePool::bad_frees`].
pub struct FramePool {
    base: usize,
    /// Physical address of the frame at `base` (equal to `base` when identity mapped).
    phys_base: u64,
    frames: usize,
    bitmap: [u64; MAX_POOL_FRAMES / 64],
    in_use: usize,
    peak: usize,
    next: usize,
    bad_frees: usize,
}

impl FramePool {
    /// A pool over `region`, which it owns from now on (at most [`MAX_POOL_FRAMES`] frames are
    /// used).
    pub fn new(region: &'static mut [Frame]) -> Self {
        let frames = region.len().min(MAX_POOL_FRAMES);
        let base = region.as_mut_ptr() as usize;
        FramePool {
            base,
            phys_base: base as u64,
            frames,
            bitmap: [0; MAX_POOL_FRAMES / 64],
            in_use: 0,
            peak: 0,
            next: 0,
            bad_frees: 0,
        }
    }

    /// A pool over `frames` frames mapped at virtual address `virt` whose physical address is
    /// `phys` (memory not identity mapped, e.g. a Microkit memory region whose physical
    /// address the system description gives). Frames are zeroed through `virt` and handed out
    /// as physical addresses.
    ///
    /// # Safety
    /// `[virt, virt + frames * 4096)` must be mapped, writable, used by nothing but the pool
    /// from now on, and backed by the physical range starting at `phys`; `virt` and `phys`
    /// must be 4 KiB aligned.
    pub unsafe fn over_mapped(virt: usize, phys: u64, frames: usize) -> Self {
        // The frame at physical 0 is never handed out (`FrameAlloc`'s contract): a region
        // starting there gives up its first frame.
        let skip = usize::from(phys == 0 && frames > 0);
        FramePool {
            base: virt + skip * PAGE_SIZE as usize,
            phys_base: phys + (skip as u64) * PAGE_SIZE,
            frames: (frames - skip).min(MAX_POOL_FRAMES),
            bitmap: [0; MAX_POOL_FRAMES / 64],
            in_use: 0,
            peak: 0,
            next: 0,
            bad_frees: 0,
        }
    }

    /// Frames currently allocated.
    pub const fn in_use(&self) -> usize {
        self.in_use
    }
    /// The most frames that were allocated at once.
    pub const fn peak(&self) -> usize {
        self.peak
    }
    /// Frames in the pool.
    pub const fn capacity(&self) -> usize {
        self.frames
    }
    /// Frees of addresses that were not allocated frames of this pool.
    pub const fn bad_frees(&self) -> usize {
        self.bad_frees
    }

    fn is_set(&self, i: usize) -> bool {
        self.bitmap[i / 64] & (1 << (i % 64)) != 0
    }
}

impl FrameAlloc for FramePool {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        if self.in_use == self.frames {
            return None;
        }
        // First free frame at or after the hint, wrapping once.
        let i = (0..self.frames)
            .map(|k| (self.next + k) % self.frames)
            .find(|&i| !self.is_set(i))?;
        self.bitmap[i / 64] |= 1 << (i % 64);
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.next = (i + 1) % self.frames;
        let addr = self.base + i * PAGE_SIZE as usize;
        // SAFETY: frame `i` lies inside the region `new` was given exclusively, and nobody holds
        // it (its bit was clear).
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, PAGE_SIZE as usize) };
        Some(self.phys_base + (i as u64) * PAGE_SIZE)
    }

    fn free_frame(&mut self, pa: PhysAddr) {
        let Some(off) = pa.checked_sub(self.phys_base) else {
            self.bad_frees += 1;
            return;
        };
        let i = (off / PAGE_SIZE) as usize;
        if off % PAGE_SIZE != 0 || i >= self.frames || !self.is_set(i) {
            self.bad_frees += 1;
            return;
        }
        self.bitmap[i / 64] &= !(1 << (i % 64));
        self.in_use -= 1;
    }
}

/// Memory that devices read and write by DMA, reached only with volatile accesses (the
/// compiler cannot see a device's writes).
#[derive(Debug)]
pub struct DmaRegion {
    base: usize,
    /// Physical address of `base` (equal to `base` when identity mapped).
    phys_base: PhysAddr,
    len: usize,
}

impl DmaRegion {
    /// The region `[base, base + len)`.
    ///
    /// # Safety
    /// The memory must be identity mapped, valid for `len` bytes, and used by nothing but this
    /// value and the devices it is handed to (no Rust references to it).
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        DmaRegion {
            base: base as usize,
            phys_base: base as PhysAddr,
            len,
        }
    }

    /// The region mapped at `base` whose physical address is `phys` (memory that is not
    /// identity mapped, e.g. a Microkit memory region).
    ///
    /// # Safety
    /// As [`DmaRegion::new`], except that the memory need not be identity mapped: it must be
    /// physically contiguous from `phys`.
    pub unsafe fn with_phys(base: *mut u8, phys: PhysAddr, len: usize) -> Self {
        DmaRegion {
            base: base as usize,
            phys_base: phys,
            len,
        }
    }

    /// Physical address of byte `offset`.
    pub const fn phys(&self, offset: usize) -> PhysAddr {
        self.phys_base + offset as PhysAddr
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the byte at `offset` (`None` outside the region).
    pub fn read(&self, offset: usize) -> Option<u8> {
        // SAFETY: `new`'s contract, and `offset` is inside the region.
        (offset < self.len)
            .then(|| unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) })
    }

    /// Writes the byte at `offset`; ignored outside the region.
    pub fn write(&mut self, offset: usize, value: u8) {
        if offset < self.len {
            // SAFETY: `new`'s contract, and `offset` is inside the region.
            unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) }
        }
    }

    /// Sets `len` bytes from `offset` to `f(i)` for `i` in `0..len` (clipped to the region).
    pub fn fill(&mut self, offset: usize, len: usize, f: impl Fn(usize) -> u8) {
        for i in 0..len {
            self.write(offset + i, f(i));
        }
    }

    /// The first index `i < len` where byte `offset + i` differs from `f(i)`, with the byte
    /// found (a byte outside the region counts as a mismatch reading 0).
    pub fn first_mismatch(
        &self,
        offset: usize,
        len: usize,
        f: impl Fn(usize) -> u8,
    ) -> Option<(usize, u8)> {
        (0..len).find_map(|i| {
            let got = self.read(offset + i);
            (got != Some(f(i))).then_some((i, got.unwrap_or(0)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    fn pool(n: usize) -> FramePool {
        let region: &'static mut [Frame] = Box::leak((0..n).map(|_| Frame::ZERO).collect());
        FramePool::new(region)
    }

    #[test]
    fn frames_are_aligned_distinct_zeroed_and_reused() {
        let mut p = pool(4);
        let a: Vec<_> = (0..4).map(|_| p.alloc_frame().unwrap()).collect();
        assert!(a.iter().all(|&f| f % PAGE_SIZE == 0));
        assert_eq!(p.alloc_frame(), None);
        assert_eq!(p.in_use(), 4);
        // Dirty a frame, free it, get it back zeroed.
        // SAFETY: the test only touches frames of its own leaked pool.
        let mut mem = unsafe { IdentityMem::new() };
        mem.write_u64(a[2] + 8, 0xdead_beef);
        p.free_frame(a[2]);
        let again = p.alloc_frame().unwrap();
        assert_eq!(again, a[2]);
        assert_eq!(mem.read_u64(again + 8), 0);
        assert_eq!(p.peak(), 4);
    }

    #[test]
    fn dma_region_reads_writes_and_compares_within_bounds() {
        let mem: &'static mut [u8] = Box::leak(std::vec![0u8; 64].into_boxed_slice());
        let base = mem.as_mut_ptr();
        // SAFETY: the leaked buffer is used by nothing else.
        let mut r = unsafe { DmaRegion::new(base, 64) };
        r.fill(8, 16, |i| i as u8 + 1);
        assert_eq!(r.first_mismatch(8, 16, |i| i as u8 + 1), None);
        assert_eq!(r.first_mismatch(8, 17, |i| i as u8 + 1), Some((16, 0)));
        assert_eq!(r.read(64), None);
        r.write(64, 1); // ignored
        assert_eq!(r.first_mismatch(60, 8, |_| 0), Some((4, 0)));
        assert_eq!(r.phys(3), base as u64 + 3);
    }

    #[test]
    fn a_pool_over_mapped_memory_hands_out_physical_addresses() {
        let region: &'static mut [Frame] = Box::leak((0..3).map(|_| Frame::ZERO).collect());
        let virt = region.as_mut_ptr() as usize;
        region[1].0[8] = 0xaa;
        const PHYS: u64 = 0x7000_0000;
        // SAFETY: the leaked frames are used by the pool only.
        let mut p = unsafe { FramePool::over_mapped(virt, PHYS, 3) };
        let a: Vec<_> = (0..3).map(|_| p.alloc_frame().unwrap()).collect();
        assert_eq!(a, [PHYS, PHYS + 0x1000, PHYS + 0x2000]);
        // Zeroed through the mapping.
        // SAFETY: frame 1 of the leaked region, now the pool's; read only.
        assert_eq!(unsafe { ((virt + 0x1008) as *const u8).read_volatile() }, 0);
        p.free_frame(virt as u64);
        assert_eq!(
            p.bad_frees(),
            1,
            "a virtual address is no frame of the pool"
        );
        p.free_frame(PHYS + 0x1000);
        assert_eq!(p.alloc_frame(), Some(PHYS + 0x1000));
        // SAFETY: a leaked buffer used by nothing else.
        let r = unsafe { DmaRegion::with_phys(virt as *mut u8, PHYS, 64) };
        assert_eq!(r.phys(3), PHYS + 3);
    }

    #[test]
    fn a_pool_over_memory_at_physical_zero_never_hands_out_frame_zero() {
        let region: &'static mut [Frame] = Box::leak((0..3).map(|_| Frame::ZERO).collect());
        let virt = region.as_mut_ptr() as usize;
        // SAFETY: the leaked frames are used by the pool only.
        let mut p = unsafe { FramePool::over_mapped(virt, 0, 3) };
        assert_eq!(p.capacity(), 2);
        let a: Vec<_> = core::iter::from_fn(|| p.alloc_frame()).collect();
        assert_eq!(a, [0x1000, 0x2000]);
    }

    #[test]
    fn bad_frees_are_ignored() {
        let mut p = pool(2);
        let f = p.alloc_frame().unwrap();
        p.free_frame(f + 8);
        p.free_frame(f + 2 * PAGE_SIZE);
        p.free_frame(0);
        p.free_frame(f);
        p.free_frame(f);
        assert_eq!(p.bad_frees(), 4);
        assert_eq!(p.in_use(), 0);
    }
}
