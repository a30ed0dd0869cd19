//! The VT-d image for QEMU q35 + intel-iommu + edu.
//!
//! Stage 1 (this file so far): boot, find the VT-d unit in the ACPI DMAR table and edu on the
//! PCI bus, check that translation is off, and have edu copy a page RAM -> device -> RAM with
//! untranslated addresses, checking every byte. Prints `PASS` and exits with the success code.
//!
//! Run with `cargo run -p iommu-test-harness --bin qemu -- vtd`. On the host this file builds
//! to an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod image {
    use iommu_hal::mem::RegisterAccess;
    use iommu_platform::dma::DmaEngine;
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::mem::{DmaRegion, Mmio};
    use iommu_platform::pci::{self, Bdf, ConfigSpace};
    use iommu_platform::x86::pci::PortConfig;
    use iommu_platform::x86::time::TscDelay;
    use iommu_platform::x86::{self, BootInfo};

    iommu_platform::entry!(main);

    /// VT-d registers read here (VT-d 3.4, section 11.4): version, capabilities, extended
    /// capabilities, global status.
    const VER_REG: usize = 0x00;
    const CAP_REG: usize = 0x08;
    const ECAP_REG: usize = 0x10;
    const GSTS_REG: usize = 0x1c;
    /// GSTS.TES: translation enabled.
    const GSTS_TES: u32 = 1 << 31;

    const PAGE: usize = 4096;

    #[repr(C, align(4096))]
    struct Pages([u8; 2 * PAGE]);
    static mut DMA_PAGES: Pages = Pages([0; 2 * PAGE]);

    fn pattern(i: usize) -> u8 {
        (i as u8).wrapping_mul(7) ^ (i >> 8) as u8 ^ 0x5a
    }

    fn run(boot: &BootInfo) -> Result<(), &'static str> {
        defmt::info!("boot: {}", boot);
        let dmar = x86::acpi::find_dmar(boot.rsdp).map_err(|e| {
            defmt::error!("DMAR: {}", e);
            "no usable DMAR table"
        })?;
        defmt::info!(
            "DMAR: host address width {=u8}, flags {=u8:#x}, {=usize} unit(s)",
            dmar.host_address_width,
            dmar.flags,
            dmar.units.len()
        );
        for (i, u) in dmar.units.iter().enumerate() {
            defmt::info!(
                "  DRHD {=usize}: base {=u64:#x}, segment {=u16}, include-all {=bool}, {=usize} scope(s)",
                i,
                u.register_base,
                u.segment,
                u.include_pci_all,
                u.scopes.len()
            );
            for s in &u.scopes {
                defmt::debug!("    scope {}", s);
            }
        }

        // SAFETY: the only configuration-space accessor of this image.
        let mut cfg = unsafe { PortConfig::new() };
        let bdf = pci::find(&mut cfg, edu::VENDOR, edu::DEVICE).ok_or("edu not found")?;
        let bar = pci::mem_bar(&mut cfg, bdf, 0).ok_or("edu BAR0 unassigned")?;
        defmt::info!("edu at {} (rid {=u16:#06x}), BAR0 {}", bdf, bdf.rid(), bar);
        let unit = dmar
            .unit_for(0, (bdf.bus, bdf.dev, bdf.func), |b, d, f| {
                let br = Bdf::new(b, d, f);
                Some((
                    cfg.read8(br, pci::SECONDARY_BUS),
                    cfg.read8(br, pci::SUBORDINATE_BUS),
                ))
            })
            .ok_or("no DRHD covers edu")?;
        let base = dmar.units[unit].register_base;
        defmt::info!("edu is behind DRHD {=usize} at {=u64:#x}", unit, base);

        // SAFETY: the DRHD's register page, identity mapped (uncached) by the boot code; only
        // read here.
        let mut vtd = unsafe { Mmio::new(base as usize) };
        let gsts = vtd.read32(GSTS_REG);
        defmt::info!(
            "VT-d: version {=u32:#x}, CAP {=u64:#018x}, ECAP {=u64:#018x}, GSTS {=u32:#010x}",
            vtd.read32(VER_REG),
            vtd.read64(CAP_REG),
            vtd.read64(ECAP_REG),
            gsts
        );
        if gsts & GSTS_TES != 0 {
            return Err("translation already enabled at boot");
        }

        pci::enable_mem_and_dma(&mut cfg, bdf);
        // SAFETY: edu's BAR0 (1 MiB), identity mapped (uncached); this driver is its only user.
        let regs = unsafe { Mmio::new(bar.addr as usize) };
        let mut edu = Edu::new(regs, TscDelay).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());

        // SAFETY: DMA_PAGES is used only through this region (and by edu's DMA).
        let mut mem = unsafe { DmaRegion::new((&raw mut DMA_PAGES).cast(), 2 * PAGE) };
        let (src, dst) = (0, PAGE);
        mem.fill(src, PAGE, pattern);
        mem.fill(dst, PAGE, |_| 0);
        let t0 = x86::time::micros();
        edu.device_read(mem.phys(src), 0, PAGE as u32)
            .map_err(|_| "edu DMA RAM -> device failed")?;
        edu.device_write(0, mem.phys(dst), PAGE as u32)
            .map_err(|_| "edu DMA device -> RAM failed")?;
        let t1 = x86::time::micros();
        if let Some((i, got)) = mem.first_mismatch(dst, PAGE, pattern) {
            defmt::error!(
                "byte {=usize}: got {=u8:#04x}, expected {=u8:#04x}",
                i,
                got,
                pattern(i)
            );
            return Err("DMA round trip corrupted data");
        }
        defmt::info!(
            "untranslated DMA: {=usize} bytes {=u64:#x} -> edu -> {=u64:#x} intact ({=u64} us)",
            PAGE,
            mem.phys(src),
            mem.phys(dst),
            t1 - t0
        );
        Ok(())
    }

    fn main(boot: BootInfo) -> ! {
        match run(&boot) {
            Ok(()) => {
                defmt::println!("PASS");
                iommu_platform::console!("PASS");
                x86::exit_success()
            }
            Err(why) => {
                defmt::error!("FAIL: {=str}", why);
                iommu_platform::console!("FAIL: {}", why);
                x86::exit_failure()
            }
        }
    }
}
