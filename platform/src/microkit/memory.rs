//! Physical memory the server PD reaches through a mapping at a fixed offset: a Microkit
//! memory region whose physical address the tool patched in (`<setvar region_paddr>`) and
//! whose virtual address the system description gives (`setvar_vaddr`).

use iommu_hal::mem::{PhysAddr, PhysMem};

use crate::mem::barrier;

/// [`PhysMem`] over one region mapped at `virt`, physically at `phys`, `len` bytes.
///
/// Only addresses inside the region are valid: the backend and the server touch nothing but
/// frames of the pool built over the same region. An address outside it is a bug in the
/// caller, and panics (the PD stops and the monitor reports it) rather than touching memory
/// the PD does not own.
///
/// Cache maintenance hooks do nothing: user level cannot invalidate data caches on Arm
/// (`DC IVAC` is EL1 only), so a unit that does not snoop the CPU's caches needs the region
/// mapped uncached (`cached="false"`); the server PD refuses a non-coherent SMMU.
#[derive(Clone, Copy, Debug)]
pub struct OffsetMem {
    virt: usize,
    phys: PhysAddr,
    len: u64,
}

impl OffsetMem {
    /// The region `[phys, phys + len)` mapped at `virt`.
    ///
    /// # Safety
    /// `[virt, virt + len)` must be mapped readable and writable for the program's lifetime,
    /// backed by `[phys, phys + len)`, and used by nothing that holds Rust references into it.
    pub const unsafe fn new(virt: usize, phys: PhysAddr, len: u64) -> Self {
        OffsetMem { virt, phys, len }
    }

    /// The virtual address of the 8 bytes at `pa`.
    fn at(&self, pa: PhysAddr) -> *mut u64 {
        let off = pa.wrapping_sub(self.phys);
        assert!(
            pa >= self.phys && off <= self.len.saturating_sub(8) && pa % 8 == 0,
            "physical address {pa:#x} outside the mapped region"
        );
        (self.virt + off as usize) as *mut u64
    }
}

impl PhysMem for OffsetMem {
    fn read_u64(&self, pa: PhysAddr) -> u64 {
        // SAFETY: `at` checked that `pa` is an aligned word of the region `new` vouched for.
        unsafe { self.at(pa).read_volatile() }
    }
    fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        // SAFETY: as in `read_u64`; an aligned 64-bit store is single-copy atomic.
        unsafe { self.at(pa).write_volatile(value) }
    }
    fn order_writes(&mut self) {
        barrier::dma_wmb();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    #[test]
    fn words_are_reached_at_the_offset_and_nowhere_else() {
        let buf: &'static mut [u64; 8] = Box::leak(Box::new([0u64; 8]));
        let virt = buf.as_mut_ptr() as usize;
        // SAFETY: the leaked buffer is used only through this value.
        let mut m = unsafe { OffsetMem::new(virt, 0x8000_0000, 64) };
        m.write_u64(0x8000_0038, 7);
        m.publish_u64(0x8000_0000, 9);
        assert_eq!((m.read_u64(0x8000_0038), m.read_u64(0x8000_0000)), (7, 9));
        for bad in [0x7fff_fff8, 0x8000_0040, 0x8000_0004, u64::MAX] {
            let r = std::panic::catch_unwind(|| m.read_u64(bad));
            assert!(r.is_err(), "{bad:#x} is outside");
        }
    }
}
