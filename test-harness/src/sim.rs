//! Simulated physical memory and frame allocators for host tests.
//!
//! [`SimMemory`] is a sparse physical address space shared (via [`SharedMem`], an
//! `Rc<RefCell<_>>`) between the code under test, the frame allocator and the hardware models,
//! the way real RAM is shared between the CPU and a DMA-capable IOMMU walker.
//! [`SimAlloc`] hands out zeroed frames from a fixed pool, in a deterministic order, and can be
//! told to fail its Nth allocation (the `fail_nth` technique of Linux iommufd selftests).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::vec::Vec;

use iommu_hal::{FrameAlloc, PAGE_SIZE, PhysAddr, PhysMem};

/// A sparse physical address space of 4 KiB frames. Untouched memory reads as zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimMemory {
    frames: BTreeMap<u64, Box<[u64; 512]>>,
    /// Number of 64-bit writes performed (all addresses).
    pub writes: u64,
    /// Number of `sync_for_device` calls.
    pub syncs: u64,
    /// Number of `sync_for_cpu` calls.
    pub cpu_syncs: u64,
    /// Number of `order_writes` barriers.
    pub barriers: u64,
}

impl SimMemory {
    /// An empty (all-zero) address space.
    pub fn new() -> Self {
        Self::default()
    }
    /// Reads the 64-bit word at `pa` (must be 8-byte aligned).
    pub fn read(&self, pa: u64) -> u64 {
        assert_eq!(pa % 8, 0, "unaligned 64-bit read at {pa:#x}");
        self.frames
            .get(&(pa / PAGE_SIZE))
            .map_or(0, |f| f[((pa % PAGE_SIZE) / 8) as usize])
    }
    /// Writes the 64-bit word at `pa` (must be 8-byte aligned).
    pub fn write(&mut self, pa: u64, value: u64) {
        assert_eq!(pa % 8, 0, "unaligned 64-bit write at {pa:#x}");
        self.writes += 1;
        let f = self
            .frames
            .entry(pa / PAGE_SIZE)
            .or_insert_with(|| Box::new([0; 512]));
        f[((pa % PAGE_SIZE) / 8) as usize] = value;
    }
    /// Reads `buf.len()` bytes starting at `pa` (any alignment).
    pub fn read_bytes(&self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa + i as u64;
            let w = self.read(a & !7);
            *b = (w >> ((a & 7) * 8)) as u8;
        }
    }
    /// Writes `buf` starting at `pa` (any alignment).
    pub fn write_bytes(&mut self, pa: u64, buf: &[u8]) {
        for (i, b) in buf.iter().enumerate() {
            let a = pa + i as u64;
            let mut w = self.read(a & !7);
            let sh = (a & 7) * 8;
            w = (w & !(0xffu64 << sh)) | ((*b as u64) << sh);
            self.write(a & !7, w);
        }
    }
    /// Reads a 32-bit word at `pa` (4-byte aligned).
    pub fn read32(&self, pa: u64) -> u32 {
        let w = self.read(pa & !7);
        (w >> ((pa & 4) * 8)) as u32
    }
    /// Writes a 32-bit word at `pa` (4-byte aligned).
    pub fn write32(&mut self, pa: u64, value: u32) {
        let mut w = self.read(pa & !7);
        let sh = (pa & 4) * 8;
        w = (w & !(0xffff_ffffu64 << sh)) | ((value as u64) << sh);
        self.write(pa & !7, w);
    }
    /// Whether the frame at `pa` holds only zeros.
    pub fn frame_is_zero(&self, pa: u64) -> bool {
        self.frames
            .get(&(pa / PAGE_SIZE))
            .is_none_or(|f| f.iter().all(|&w| w == 0))
    }
    /// Sets every word of the frame at `pa` to zero.
    pub fn zero_frame(&mut self, pa: u64) {
        self.frames.remove(&(pa / PAGE_SIZE));
    }
    /// A canonical snapshot of all non-zero words, for before/after comparisons.
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for (fno, f) in &self.frames {
            for (i, &w) in f.iter().enumerate() {
                if w != 0 {
                    v.push((fno * PAGE_SIZE + i as u64 * 8, w));
                }
            }
        }
        v
    }
}

/// Simulated memory shared between the code under test, allocators and hardware models.
#[derive(Debug, Clone, Default)]
pub struct SharedMem(pub Rc<RefCell<SimMemory>>);

impl SharedMem {
    /// A new, empty shared address space.
    pub fn new() -> Self {
        Self::default()
    }
    /// Borrows the memory.
    pub fn borrow(&self) -> std::cell::Ref<'_, SimMemory> {
        self.0.borrow()
    }
    /// Borrows the memory mutably.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, SimMemory> {
        self.0.borrow_mut()
    }
}

impl PhysMem for SharedMem {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.0.borrow().read(pa)
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.0.borrow_mut().write(pa, value)
    }
    fn order_writes(&mut self) {
        self.0.borrow_mut().barriers += 1;
    }
    fn sync_for_device(&mut self, _pa: PhysAddr, _len: u64) {
        self.0.borrow_mut().syncs += 1;
    }
    fn sync_for_cpu(&mut self, _pa: PhysAddr, _len: u64) {
        self.0.borrow_mut().cpu_syncs += 1;
    }
}

impl PhysMem for SimMemory {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        self.read(pa)
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        self.write(pa, value)
    }
    fn order_writes(&mut self) {
        self.barriers += 1;
    }
    fn sync_for_device(&mut self, _pa: PhysAddr, _len: u64) {
        self.syncs += 1;
    }
    fn sync_for_cpu(&mut self, _pa: PhysAddr, _len: u64) {
        self.cpu_syncs += 1;
    }
}

/// A deterministic frame allocator over `[base, base + frames * 4 KiB)` of a [`SharedMem`].
///
/// Frames are handed out lowest-address first and freed frames are reused first (LIFO), so the
/// allocator's state after an allocation followed by its free equals the state before.
#[derive(Debug, Clone)]
pub struct SimAlloc {
    mem: SharedMem,
    free: Vec<u64>,
    /// The same frames as `free`, for the double-free check (a scan of `free` made every free
    /// cost the pool's size).
    free_set: BTreeSet<u64>,
    /// Allocations made so far (successful or not), for `fail_nth`.
    pub attempts: u64,
    /// When `Some(n)`, the allocation attempt with index `n` (0-based, counted in `attempts`)
    /// fails, and so does every later one if `fail_after` is set.
    pub fail_nth: Option<u64>,
    /// Make every attempt from `fail_nth` on fail, not only that one.
    pub fail_after: bool,
    /// Frames currently handed out.
    pub in_use: u64,
    /// Successful allocations.
    pub allocated: u64,
    /// Frees.
    pub freed: u64,
}

impl SimAlloc {
    /// A pool of `frames` frames starting at `base` (4 KiB aligned).
    pub fn new(mem: SharedMem, base: u64, frames: u64) -> Self {
        assert_eq!(base % PAGE_SIZE, 0);
        let free: Vec<u64> = (0..frames).rev().map(|i| base + i * PAGE_SIZE).collect();
        SimAlloc {
            mem,
            free_set: free.iter().copied().collect(),
            free,
            attempts: 0,
            fail_nth: None,
            fail_after: false,
            in_use: 0,
            allocated: 0,
            freed: 0,
        }
    }
    /// Frames still available.
    pub fn available(&self) -> usize {
        self.free.len()
    }
    /// The free list, for before/after comparisons.
    pub fn free_list(&self) -> &[u64] {
        &self.free
    }
    /// Fail the `n`th attempt from now (0 = the next one).
    pub fn fail_in(&mut self, n: u64) {
        self.fail_nth = Some(self.attempts + n);
    }
    /// Stop injecting failures.
    pub fn no_failures(&mut self) {
        self.fail_nth = None;
    }
}

impl FrameAlloc for SimAlloc {
    fn alloc_frame(&mut self) -> Option<PhysAddr> {
        let n = self.attempts;
        self.attempts += 1;
        if let Some(f) = self.fail_nth
            && (n == f || (self.fail_after && n > f))
        {
            return None;
        }
        let pa = self.free.pop()?;
        self.free_set.remove(&pa);
        self.mem.borrow_mut().zero_frame(pa);
        self.in_use += 1;
        self.allocated += 1;
        Some(pa)
    }
    fn free_frame(&mut self, pa: PhysAddr) {
        assert_eq!(pa % PAGE_SIZE, 0, "freeing unaligned frame {pa:#x}");
        assert!(self.free_set.insert(pa), "double free of frame {pa:#x}");
        self.in_use -= 1;
        self.freed += 1;
        self.free.push(pa);
    }
}
