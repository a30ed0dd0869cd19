//! The AMD-Vi image for QEMU q35 + amd-iommu + edu: the same client scenario as the VT-d
//! image, through the AMD-Vi backend.
//!
//! 1. Boot, find the AMD IOMMUs in the ACPI IVRS table (IVHD blocks: register base, PCI
//!    segment, the IOMMU's own PCI function and capability offset, the DeviceIDs and aliases
//!    each unit covers) and edu on the PCI bus (nothing hard-coded but edu's PCI ids).
//! 2. Before the IOMMU is touched, check that edu's DMA works untranslated.
//! 3. Bring every unit up with the AMD-Vi backend (`iommu_hal::amd`): every DTE blocked, the
//!    device table covering the DeviceIDs the IVHD lists.
//! 4. Probe what the unit reports: edu, blocked, writes a page; the page must stay untouched,
//!    and the event log either records the fault or (QEMU 10.0, whose event log records
//!    nothing) does not. The scenario then checks refused DMA by the data, and by the fault
//!    records too when the unit produces them.
//! 5. Enable the local APIC and program every unit's event-log interrupt as a message to it
//!    through the IOMMU's PCI MSI capability (`iommu_platform::x86::apic`).
//! 6. Build the server (client 1 owns edu, with the IVHD's aliases of its DeviceID) and run
//!    the client scenario (`iommu_platform::scenario`): faults reach the server by interrupt
//!    where the unit logs them; QEMU 10.0's event log logs nothing, so there no interrupt
//!    comes and the scenario does not wait for one.
//!
//! Prints `PASS` and exits with the success code only if every step passed. Run with
//! `cargo run -p iommu-test-harness --bin qemu -- amd`. On the host this file builds to an
//! empty program; on other bare-metal targets to an image that reports it is x86_64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", not(target_arch = "x86_64")))]
mod stub {
    use iommu_platform::arch::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the amd image runs on x86_64 only");
        arch::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod image {
    use core::cell::RefCell;

    use heapless::Vec;
    use iommu_hal::amd::{AmdBackend, AmdConfig, AmdRegs, ConfigAccess, regs};
    use iommu_hal::backend::{Backend, FaultInterrupt};
    use iommu_hal::mem::RegisterAccess;
    use iommu_platform::dma::DmaEngine;
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::image::{self, Delivery, Memory};
    use iommu_platform::ivrs::Ivrs;
    use iommu_platform::mem::{IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, ConfigSpace};
    use iommu_platform::scenario::FaultEvidence;
    use iommu_platform::x86::pci::PortConfig;
    use iommu_platform::x86::time::TscDelay;
    use iommu_platform::x86::{self, BootInfo};
    use iommu_protocol::IovaRange;
    use iommu_server::DeviceGrant;

    iommu_platform::entry!(main);

    /// Most AMD IOMMUs the image drives.
    const MAX_UNITS: usize = 4;
    /// Most aliases of edu's DeviceID kept.
    const MAX_ALIASES: usize = 8;
    /// The x86 interrupt (MSI) window, which AMD-Vi never translates: reserved in every domain.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0xfee0_0000,
        last: 0xfeef_ffff,
    };

    /// The configuration space of one IOMMU's own PCI function, shared with the rest of the
    /// image through a `RefCell` (one port pair for every function).
    struct IommuFunction<'a> {
        cfg: &'a RefCell<PortConfig>,
        bdf: Bdf,
    }

    impl ConfigAccess for IommuFunction<'_> {
        fn read32(&mut self, offset: u16) -> u32 {
            self.cfg.borrow_mut().read32(self.bdf, offset)
        }
        fn write32(&mut self, offset: u16, value: u32) {
            self.cfg.borrow_mut().write32(self.bdf, offset, value)
        }
    }

    type Be<'a> = AmdBackend<Mmio, IommuFunction<'a>, IdentityMem, TscDelay, MAX_UNITS>;

    /// Where edu is and which unit translates it.
    struct Found {
        ivrs: Ivrs,
        edu: Bdf,
        bar0: u64,
        unit: usize,
    }

    fn discover(boot: &BootInfo, cfg: &mut PortConfig) -> Result<Found, &'static str> {
        let ivrs = x86::acpi::find_ivrs(boot.rsdp).map_err(|e| {
            defmt::error!("IVRS: {}", e);
            if x86::acpi::iommu_tables(boot.rsdp).dmar {
                "an Intel VT-d unit is present (DMAR), use the vtd image"
            } else {
                "no usable IVRS table"
            }
        })?;
        defmt::info!(
            "IVRS: IVinfo {=u32:#x} (PAsize {=u32}, VAsize {=u32}, EFRSup {=bool}), {=usize} IVHD block(s), units from type {=u8:#x}, {=u8} IVMD block(s)",
            ivrs.iv_info,
            ivrs.pa_size(),
            ivrs.va_size(),
            ivrs.efr_sup(),
            ivrs.blocks.len(),
            ivrs.unit_kind().unwrap_or(0),
            ivrs.memory_blocks
        );
        for (i, u) in ivrs.units().enumerate() {
            defmt::info!(
                "  IVHD {=usize}: base {=u64:#x}, segment {=u16}, IOMMU at {} (cap {=u16:#x}), flags {=u8:#x}, {=usize} range(s), {=usize} alias(es), highest DeviceID {=u16:#06x}",
                i,
                u.base,
                u.segment,
                Bdf::from_rid(u.device_id),
                u.cap_offset,
                u.flags,
                u.ranges.len(),
                u.aliases.len(),
                u.max_device_id()
            );
            for r in &u.ranges {
                defmt::debug!("    devices {=u16:#06x}..={=u16:#06x}", r.first, r.last);
            }
            for a in &u.aliases {
                defmt::debug!(
                    "    devices {=u16:#06x}..={=u16:#06x} carry {=u16:#06x}",
                    a.first,
                    a.last,
                    a.alias
                );
            }
        }
        let bdf = pci::find(cfg, edu::VENDOR, edu::DEVICE).ok_or("edu not found")?;
        let bar = pci::mem_bar(cfg, bdf, 0).ok_or("edu BAR0 unassigned")?;
        defmt::info!("edu at {} (rid {=u16:#06x}), BAR0 {}", bdf, bdf.rid(), bar);
        let unit = ivrs.unit_for(0, bdf.rid()).ok_or("no IVHD covers edu")?;
        defmt::info!("edu is behind IVHD {=usize}", unit);
        Ok(Found {
            ivrs,
            edu: bdf,
            bar0: bar.addr,
            unit,
        })
    }

    /// edu, blocked, writes a page: the page must stay as it was. Returns whether the unit
    /// recorded the refused write (its event log works).
    fn probe<'a, E: DmaEngine>(
        backend: &mut Be<'a>,
        unit: usize,
        edu: &mut E,
        mem: &mut iommu_platform::mem::DmaRegion,
    ) -> Result<FaultEvidence, &'static str> {
        const PAGE: usize = 4096;
        mem.fill(0, PAGE, |_| 0x5c);
        edu.device_write(0, mem.phys(0), PAGE as u32)
            .map_err(|_| "edu DMA device -> RAM failed")?;
        if mem.first_mismatch(0, PAGE, |_| 0x5c).is_some() {
            return Err("a blocked device's write reached memory");
        }
        let mut records = 0u32;
        for u in 0..backend.unit_count() {
            backend
                .drain_faults(u, &mut |r| {
                    records += 1;
                    defmt::debug!("  probe fault: {}", r);
                })
                .map_err(|e| {
                    defmt::error!("AMD-Vi unit {=usize}: {}", u, e);
                    "draining the event log failed"
                })?;
        }
        let evidence = if records > 0 {
            FaultEvidence::Records
        } else {
            FaultEvidence::DataOnly
        };
        defmt::info!(
            "probe: edu's write to {=u64:#x} while blocked was dropped; unit {=usize} logged {=u32} event(s): refused DMA is checked by {=str}",
            mem.phys(0),
            unit,
            records,
            if records > 0 {
                "the data and the fault records"
            } else {
                "the data only (this unit's event log records nothing, as QEMU 10.0's)"
            }
        );
        Ok(evidence)
    }

    fn run(boot: &BootInfo) -> Result<(), &'static str> {
        defmt::info!("boot: {}", boot);
        // SAFETY: the only configuration-space accessor of this image.
        let cfg = RefCell::new(unsafe { PortConfig::new() });
        let found = discover(boot, &mut cfg.borrow_mut())?;
        for u in found.ivrs.units() {
            // The boot code maps the low 4 GiB only.
            if u.base % 0x4000 != 0 || u.base > (1 << 32) - regs::MMIO_SIZE as u64 {
                return Err("IOMMU registers unaligned or above 4 GiB (not mapped by this image)");
            }
            // SAFETY: the IOMMU's register block, identity mapped (uncached) by the boot code
            // (checked just above); only read here, before the backend takes the unit.
            let ctl = unsafe { Mmio::new(u.base as usize) }.read64(regs::CONTROL);
            if ctl & regs::control::IOMMU_EN != 0 {
                return Err("translation already enabled at boot");
            }
        }

        pci::enable_mem_and_dma(&mut *cfg.borrow_mut(), found.edu);
        // SAFETY: edu's BAR0 (1 MiB), identity mapped (uncached); this driver is its only user.
        let regs = unsafe { Mmio::new(found.bar0 as usize) };
        let mut edu = Edu::new(regs, TscDelay).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());

        let mut mem = Memory::take().ok_or("image memory already taken")?;
        image::passthrough_check(&mut edu, &mut mem.client1, "IOMMU off")?;

        // The units, brought up by the backend: translation on, every device blocked.
        // SAFETY: memory is identity mapped; the backend touches only frames from the pool and
        // its own unit structures.
        let mut backend: Be<'_> = AmdBackend::new(unsafe { IdentityMem::new() }, TscDelay);
        let pa_size = found.ivrs.pa_size();
        for (i, u) in found.ivrs.units().enumerate() {
            let config = AmdConfig {
                max_device_id: u.max_device_id(),
                cap_offset: Some(u.cap_offset),
                efr_image: u.efr.filter(|_| found.ivrs.efr_sup()),
                phys_width: (pa_size != 0).then_some(pa_size),
                ivhd_flags: u.flags,
                ..AmdConfig::default()
            };
            let regs = AmdRegs {
                // SAFETY: the IOMMU's 16 KiB register block, identity mapped (uncached); the
                // backend is its only user from now on.
                mmio: unsafe { Mmio::new(u.base as usize) },
                config: IommuFunction {
                    cfg: &cfg,
                    bdf: Bdf::from_rid(u.device_id),
                },
            };
            let index = backend.add_unit(regs, &mut mem.pool, config).map_err(|e| {
                defmt::error!("AMD-Vi unit {=usize}: {}", i, e);
                "AMD-Vi unit bring-up failed"
            })?;
            let unit = backend.unit(index).ok_or("unit vanished")?;
            defmt::info!(
                "AMD-Vi unit {=usize}: EFR {=u64:#018x}, capability {=u32:#010x}, misc {=u32:#010x}, HATS {=u8} levels, device table {=u32} entries, {}",
                index,
                unit.efr().0,
                unit.cap_header().map_or(0, |h| h.0),
                unit.misc_info().map_or(0, |m| m.0),
                unit.max_levels(),
                unit.device_table().entries(),
                unit.info()
            );
        }

        let faults = probe(&mut backend, found.unit, &mut edu, &mut mem.client1)?;

        // edu's own DeviceID and the aliases the IVHD gives it.
        let rid = found.edu.rid();
        let ivhd = found.ivrs.units().nth(found.unit).ok_or("unit vanished")?;
        let mut aliases: Vec<u32, MAX_ALIASES> = Vec::new();
        for a in ivhd.aliases_of(rid) {
            if !aliases.contains(&u32::from(a)) {
                aliases.push(u32::from(a)).map_err(|_| "too many aliases")?;
            }
        }
        defmt::info!(
            "edu's DeviceIDs: {=u16:#06x} and aliases {=[?]:#06x}",
            rid,
            aliases.as_slice()
        );
        let device = DeviceGrant {
            unit: found.unit,
            device: u32::from(rid),
            aliases: &aliases,
        };
        // The event-log interrupt of every unit is a message to this CPU's local APIC (never
        // remapped: QEMU runs with intremap=off), sent through the IOMMU's MSI capability.
        let irq = x86::apic::fault_interrupt().map_err(|e| {
            defmt::error!("local APIC: {}", e);
            "cannot take fault interrupts"
        })?;
        defmt::info!(
            "local APIC enabled: fault interrupts at vector {=u8:#x}",
            x86::apic::FAULT_VECTOR
        );
        let units = found.ivrs.units().count();
        let irqs: Vec<(usize, FaultInterrupt), MAX_UNITS> =
            (0..backend.unit_count()).map(|u| (u, irq)).collect();
        image::serve_with(
            backend,
            mem,
            device,
            &[MSI_WINDOW],
            Delivery::Interrupts(&irqs),
            &mut edu,
            faults,
            |backend| {
                for u in 0..units {
                    if let Some(c) = backend.counters(u) {
                        defmt::info!("AMD-Vi unit {=usize} counters: {}", u, c);
                    }
                }
            },
        )
    }

    fn main(boot: BootInfo) -> ! {
        image::exit(run(&boot))
    }
}
