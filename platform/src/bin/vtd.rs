//! The VT-d image for QEMU q35 + intel-iommu + edu: the main job of the project, end to end.
//!
//! 1. Boot, find the VT-d units in the ACPI DMAR table and edu on the PCI bus (nothing
//!    hard-coded but edu's PCI ids), and the requester ids edu's DMA may carry (its own and
//!    the aliases of the bridges above it, e.g. a PCI Express to PCI bridge's secondary bus).
//! 2. Before the IOMMU is touched, check that edu's DMA works untranslated (passthrough at
//!    boot), so a later failure is the IOMMU's, not the device's.
//! 3. Bring every DRHD up with the VT-d backend (`iommu_hal::vtd`), build the server
//!    (`iommu_server`) with a static configuration granting client 1 the edu device and 8 MiB
//!    of RAM, and client 2 only 64 KiB of its own RAM.
//! 4. Enable the local APIC and program every unit's fault event as a message to it
//!    (`iommu_platform::x86::apic`), so faults reach the server by interrupt.
//! 5. Run the client scenario (`iommu_platform::scenario`): the clients talk to the server only
//!    through encoded protocol messages, edu does real DMA through VT-d, and the client learns
//!    of its faults from the server's notification.
//!
//! Prints `PASS` and exits with the success code only if every step passed. Run with
//! `cargo run -p iommu-test-harness --bin qemu -- vtd`. On the host this file builds to an
//! empty program; on other bare-metal targets to an image that reports it is x86_64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", not(target_arch = "x86_64")))]
mod stub {
    use iommu_platform::arch::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the vtd image runs on x86_64 only");
        arch::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod image {
    use iommu_hal::backend::{Backend, FaultInterrupt};
    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::vtd::{VtdBackend, VtdConfig};
    use iommu_platform::dmar::Dmar;
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::image::{self, Delivery, Memory};
    use iommu_platform::mem::{IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, ConfigSpace, Topology};
    use iommu_platform::x86::pci::PortConfig;
    use iommu_platform::x86::time::TscDelay;
    use iommu_platform::x86::{self, BootInfo};
    use iommu_protocol::IovaRange;
    use iommu_server::DeviceGrant;

    iommu_platform::entry!(main);

    /// VT-d registers read before the backend takes over (VT-d 3.4, section 11.4).
    const GSTS_REG: usize = 0x1c;
    /// GSTS.TES: translation enabled.
    const GSTS_TES: u32 = 1 << 31;

    /// Most VT-d units the image drives.
    const MAX_UNITS: usize = 4;
    /// The x86 interrupt (MSI) window, which VT-d never translates: reserved in every domain.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0xfee0_0000,
        last: 0xfeef_ffff,
    };

    /// Where edu is and which unit translates it.
    struct Found {
        dmar: Dmar,
        edu: Bdf,
        /// The requester ids edu's DMA may carry: its own first, then the aliases the
        /// bridges above it give its requests.
        ids: heapless::Vec<u16, { pci::MAX_ALIASES }>,
        topology: Topology,
        bar0: u64,
        unit: usize,
    }

    fn discover(boot: &BootInfo, cfg: &mut PortConfig) -> Result<Found, &'static str> {
        let dmar = x86::acpi::find_dmar(boot.rsdp).map_err(|e| {
            defmt::error!("DMAR: {}", e);
            if x86::acpi::iommu_tables(boot.rsdp).ivrs {
                "an AMD IOMMU is present (IVRS), use the amd image"
            } else {
                "no usable DMAR table"
            }
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
        let bdf = pci::find(cfg, edu::VENDOR, edu::DEVICE).ok_or("edu not found")?;
        let bar = pci::mem_bar(cfg, bdf, 0).ok_or("edu BAR0 unassigned")?;
        defmt::info!("edu at {} (rid {=u16:#06x}), BAR0 {}", bdf, bdf.rid(), bar);
        let topology = Topology::scan(cfg, u8::MAX).map_err(|e| {
            defmt::error!("PCI bridges: {}", e);
            "cannot read the PCI bridges"
        })?;
        for b in topology.bridges() {
            defmt::info!(
                "bridge {} -> buses {=u8}..={=u8}, PCIe port type {}",
                b.bdf,
                b.secondary,
                b.subordinate,
                pci::pcie_port_type(cfg, b.bdf)
            );
        }
        let ids = pci::dma_aliases(cfg, &topology, bdf).map_err(|e| {
            defmt::error!("edu's DMA aliases: {}", e);
            "cannot work out edu's requester ids"
        })?;
        defmt::info!("edu's DMA carries requester id(s) {:#06x}", ids.as_slice());
        let unit = dmar
            .unit_for(0, (bdf.bus, bdf.dev, bdf.func), |b, d, f| {
                let br = Bdf::new(b, d, f);
                Some((
                    cfg.read8(br, pci::SECONDARY_BUS),
                    cfg.read8(br, pci::SUBORDINATE_BUS),
                ))
            })
            .ok_or("no DRHD covers edu")?;
        defmt::info!("edu is behind DRHD {=usize}", unit);
        Ok(Found {
            dmar,
            edu: bdf,
            ids,
            topology,
            bar0: bar.addr,
            unit,
        })
    }

    fn run(boot: &BootInfo) -> Result<(), &'static str> {
        defmt::info!("boot: {}", boot);
        // SAFETY: the only configuration-space accessor of this image.
        let mut cfg = unsafe { PortConfig::new() };
        let found = discover(boot, &mut cfg)?;
        for u in &found.dmar.units {
            // SAFETY: the DRHD's register page, identity mapped (uncached) by the boot code;
            // only read here, before the backend takes the unit.
            let gsts = unsafe { Mmio::new(u.register_base as usize) }.read32(GSTS_REG);
            if gsts & GSTS_TES != 0 {
                return Err("translation already enabled at boot");
            }
        }

        pci::enable_upstream_bridges(&mut cfg, &found.topology, found.edu)
            .map_err(|_| "cannot enable the bridges above edu")?;
        pci::enable_mem_and_dma(&mut cfg, found.edu);
        // SAFETY: edu's BAR0 (1 MiB), identity mapped (uncached); this driver is its only user.
        let regs = unsafe { Mmio::new(found.bar0 as usize) };
        let mut edu = Edu::new(regs, TscDelay).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());

        let mut mem = Memory::take().ok_or("image memory already taken")?;
        image::passthrough_check(&mut edu, &mut mem.client1, "IOMMU off")?;

        // The VT-d units, brought up by the backend: translation on, every device blocked.
        // SAFETY: memory is identity mapped; the backend touches only frames from the pool and
        // its own unit structures.
        let mut backend: VtdBackend<Mmio, IdentityMem, TscDelay, MAX_UNITS> =
            VtdBackend::new(unsafe { IdentityMem::new() }, TscDelay);
        for (i, u) in found.dmar.units.iter().enumerate() {
            let config = VtdConfig {
                reg_size: u.register_size as usize,
                host_addr_width: Some(u32::from(found.dmar.host_address_width)),
                ..VtdConfig::default()
            };
            // SAFETY: the DRHD's register block, identity mapped (uncached); the backend is
            // its only user from now on.
            let regs = unsafe { Mmio::new(u.register_base as usize) };
            let index = backend.add_unit(regs, &mut mem.pool, config).map_err(|e| {
                defmt::error!("VT-d unit {=usize}: {}", i, e);
                "VT-d unit bring-up failed"
            })?;
            let unit = backend.unit(index).ok_or("unit vanished")?;
            defmt::info!(
                "VT-d unit {=usize}: version {=u32:#x}, CAP {=u64:#018x}, ECAP {=u64:#018x}, queued invalidation {=bool}, {}",
                index,
                unit.version(),
                unit.cap().0,
                unit.ecap().0,
                unit.uses_queue(),
                unit.info()
            );
        }

        // Every id edu's DMA may carry is granted to its client: attached and blocked together.
        let aliases: heapless::Vec<u32, { pci::MAX_ALIASES }> =
            found.ids.iter().skip(1).map(|&id| u32::from(id)).collect();
        let device = DeviceGrant {
            unit: found.unit,
            device: u32::from(found.edu.rid()),
            aliases: &aliases,
        };
        // Faults arrive by interrupt: every unit's fault event is a message to this CPU's
        // local APIC (VT-d 7.3; never remapped, and QEMU runs with intremap=off).
        let irq = x86::apic::fault_interrupt().map_err(|e| {
            defmt::error!("local APIC: {}", e);
            "cannot take fault interrupts"
        })?;
        defmt::info!(
            "local APIC enabled: fault interrupts at vector {=u8:#x}",
            x86::apic::FAULT_VECTOR
        );
        let irqs: heapless::Vec<(usize, FaultInterrupt), MAX_UNITS> =
            (0..backend.unit_count()).map(|u| (u, irq)).collect();
        let delivery = Delivery::Interrupts(&irqs);
        image::serve(
            backend,
            mem,
            device,
            &[MSI_WINDOW],
            delivery,
            &mut edu,
            |backend| {
                for u in 0..found.dmar.units.len() {
                    if let Some(c) = backend.counters(u) {
                        defmt::info!("VT-d unit {=usize} counters: {}", u, c);
                    }
                }
            },
        )
    }

    fn main(boot: BootInfo) -> ! {
        image::exit(run(&boot))
    }
}
