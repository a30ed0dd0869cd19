//! The SMMUv3 image for QEMU `-machine virt,iommu=smmuv3` + edu: the VT-d image's job on Arm.
//!
//! 1. Boot (aarch64 runtime), read the device tree: memory, the SMMUv3 units, the PCIe host
//!    (ECAM, memory windows, `iommu-map`). Nothing is hard-coded but edu's PCI ids and the
//!    compatible strings.
//! 2. Scan PCI through ECAM, find edu, size and place its BARs in the host's 32-bit memory
//!    window (no firmware did), enable memory decoding and bus mastering. Its StreamID is its
//!    requester id put through the host's `iommu-map`, which also names the SMMU.
//! 3. Before the SMMU is touched (SMMUEN = 0 and GBPA.ABORT = 0 at reset: DMA bypasses),
//!    check that edu's DMA works untranslated, so a later failure is the SMMU's, not the
//!    device's. This needs edu's DMA mask widened to reach RAM at 1 GiB
//!    (`-device edu,dma_mask=0xffffffffff`, passed by the runner; the `Edu` driver is told
//!    the matching 40-bit limit).
//! 4. Bring the SMMU up with the SMMUv3 backend (`iommu_hal::smmuv3`), build the server
//!    (`iommu_server`) with a static configuration granting client 1 the edu device (unit, SID)
//!    and 8 MiB of RAM, and client 2 only 64 KiB of its own RAM.
//! 5. Run the client scenario (`iommu_platform::scenario`) shared with the VT-d image: the
//!    clients talk to the server only through encoded protocol messages, and edu does real
//!    DMA through the SMMU.
//!
//! Prints `PASS` and exits with status 0 (semihosting) only if every step passed. Run with
//! `cargo run -p iommu-test-harness --bin qemu -- smmuv3`. On the host this file builds to an
//! empty program; on other bare-metal targets to an image that reports it is aarch64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", not(target_arch = "aarch64")))]
mod stub {
    use iommu_platform::arch::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the smmuv3 image runs on aarch64 only");
        arch::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod image {
    use iommu_hal::backend::FaultInterrupt;
    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::smmuv3::regs::{self, Idr0, Idr1, Idr5, cr0, gbpa};
    use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig};
    use iommu_platform::aarch64::time::CounterDelay;
    use iommu_platform::aarch64::{BootInfo, gic};
    use iommu_platform::bars::{BarAllocator, BarWindow};
    use iommu_platform::devtree::{self, Machine};
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::image::{self, Delivery, Memory};
    use iommu_platform::mem::{IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, Ecam};
    use iommu_protocol::IovaRange;
    use iommu_server::DeviceGrant;

    iommu_platform::entry!(main);

    /// Most SMMUs the image drives.
    const MAX_UNITS: usize = 4;
    /// edu's DMA limit with the runner's `-device edu,dma_mask=0xffffffffff` (40 bits): RAM
    /// starts at 1 GiB on virt, beyond the default 28-bit mask, and the untranslated check
    /// uses physical addresses.
    const EDU_DMA_LIMIT: u64 = 1 << 40;
    /// The IOVA window Linux's arm-smmu-v3 driver reserves for MSI doorbells (MSI_IOVA_BASE,
    /// 1 MiB): reserved in every domain here too, outside the scenario's IOVAs.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0x800_0000,
        last: 0x80f_ffff,
    };

    /// Where edu is and which SMMU translates it.
    struct Found {
        machine: Machine,
        edu: Bdf,
        /// CPU address of edu's BAR0.
        bar0: u64,
        /// Index of edu's SMMU in `machine.smmus`.
        smmu: usize,
        /// edu's StreamID at that SMMU.
        sid: u32,
    }

    fn discover(boot: &BootInfo) -> Result<(Found, Ecam), &'static str> {
        let dtb = boot.dtb.ok_or("no device tree")?;
        // SAFETY: the runtime found an FDT header at `dtb`, in identity-mapped RAM below the
        // image that nothing writes.
        let machine = unsafe { devtree::parse_at(dtb) }.map_err(|e| {
            defmt::error!("device tree: {}", e);
            "unusable device tree"
        })?;
        for m in &machine.memory {
            defmt::info!("memory: {=u64:#x} + {=u64:#x}", m.base, m.size);
        }
        if machine.smmus.is_empty() {
            return Err("no SMMUv3 in the device tree: run QEMU with iommu=smmuv3");
        }
        for (i, s) in machine.smmus.iter().enumerate() {
            defmt::info!("SMMU {=usize}: {}", i, s);
        }
        if let Some(gic) = &machine.gic {
            defmt::info!("GIC: {}", gic);
        }
        let host = machine
            .pci
            .as_ref()
            .ok_or("no PCIe host in the device tree")?;
        defmt::info!("PCIe host: {}", host);
        for w in &host.windows {
            defmt::info!("  window {}", w);
        }
        for e in &host.iommu_map {
            defmt::info!("  iommu-map {}", e);
        }
        if host.bus_first != 0 {
            return Err("PCIe host does not start at bus 0");
        }

        // SAFETY: the ECAM window from the device tree, identity mapped as device memory by
        // the boot code; this is its only accessor.
        let mut cfg = unsafe { Ecam::new(host.ecam.base as usize, host.bus_count()) };
        pci::scan(&mut cfg, host.bus_last, |bdf, v, d| {
            defmt::info!("pci {}: {=u16:04x}:{=u16:04x}", bdf, v, d);
        });
        let bdf = pci::find(&mut cfg, edu::VENDOR, edu::DEVICE).ok_or("edu not found")?;

        let mem32 = host.mem32().ok_or("no 32-bit memory window")?;
        let mut bars = BarAllocator::new(BarWindow {
            pci_base: mem32.pci_addr,
            size: mem32.size,
            cpu_base: mem32.cpu_addr,
        });
        let assigned = bars.assign(&mut cfg, bdf).map_err(|e| {
            defmt::error!("edu BARs: {}", e);
            "cannot place edu's BARs"
        })?;
        for b in &assigned {
            defmt::info!("edu BAR{=u16}: {}", b.index, b);
        }
        let bar0 = assigned
            .iter()
            .find(|b| b.index == 0)
            .ok_or("edu has no BAR0")?
            .cpu_addr;

        let (phandle, sid) = host.iommu_for(bdf.rid()).ok_or("edu is behind no IOMMU")?;
        let (smmu, _) = machine
            .smmu_by_phandle(phandle)
            .ok_or("edu's IOMMU is not an SMMUv3")?;
        defmt::info!(
            "edu at {} (rid {=u16:#06x}): BAR0 {=u64:#x}, SMMU {=usize}, StreamID {=u32:#x}",
            bdf,
            bdf.rid(),
            bar0,
            smmu,
            sid
        );
        Ok((
            Found {
                machine,
                edu: bdf,
                bar0,
                smmu,
                sid,
            },
            cfg,
        ))
    }

    /// Reads the SMMU's identification and state before the backend takes it: it must be off
    /// and let DMA bypass (SMMUv3 6.3.9, 6.3.14).
    fn check_smmu_at_reset(base: u64) -> Result<(), &'static str> {
        // SAFETY: the SMMU's register frame from the device tree, identity mapped as device
        // memory; only read here, before the backend takes the unit.
        let mut r = unsafe { Mmio::new(base as usize) };
        let (idr0, idr1, idr5) = (
            Idr0(r.read32(regs::IDR0)),
            Idr1(r.read32(regs::IDR1)),
            Idr5(r.read32(regs::IDR5)),
        );
        let (cr0v, gbpav) = (r.read32(regs::CR0), r.read32(regs::GBPA));
        defmt::info!(
            "SMMU at {=u64:#x}: IDR0 {=u32:#010x} (S1 {=bool}, S2 {=bool}, COHACC {=bool}, ST_LEVEL {=u32}), IDR1 SIDSIZE {=u32}, IDR5 OAS {=u32} bits, CR0 {=u32:#x}, GBPA {=u32:#010x}",
            base,
            idr0.0,
            idr0.s1p(),
            idr0.s2p(),
            idr0.cohacc(),
            idr0.st_level(),
            idr1.sidsize(),
            regs::oas_bits(idr5.oas()),
            cr0v,
            gbpav
        );
        if cr0v & cr0::SMMUEN != 0 {
            return Err("SMMU already enabled at boot");
        }
        if gbpav & gbpa::ABORT != 0 {
            return Err("SMMU aborts DMA at boot (GBPA.ABORT)");
        }
        Ok(())
    }

    /// Sets the GIC up and enables every SMMU's Event queue and GERROR lines (from its
    /// device-tree node) as fault lines. Returns the SMMUs (indices in the device tree, which
    /// are the units' indices: every one is brought up, in order) whose faults will arrive by
    /// interrupt; none when the machine describes no GIC or no SMMU line (the image then
    /// polls).
    fn wire_interrupts(machine: &Machine) -> Result<heapless::Vec<usize, MAX_UNITS>, &'static str> {
        let mut units = heapless::Vec::new();
        let Some(gic) = &machine.gic else {
            defmt::warn!("no GIC in the device tree");
            return Ok(units);
        };
        gic::init(gic).map_err(|e| {
            defmt::error!("GIC: {}", e);
            "cannot set the GIC up"
        })?;
        for (i, s) in machine.smmus.iter().enumerate() {
            let lines = s.irqs.fault_lines();
            if s.irqs.eventq.is_none() && s.irqs.combined.is_none() {
                defmt::warn!(
                    "SMMU {=usize}: no Event queue interrupt in the device tree",
                    i
                );
                continue;
            }
            for line in &lines {
                gic::enable_fault_line(*line).map_err(|e| {
                    defmt::error!("SMMU {=usize}: GIC line {}: {}", i, line, e);
                    "cannot enable an SMMU interrupt at the GIC"
                })?;
            }
            defmt::info!(
                "SMMU {=usize}: fault lines {} enabled at the GIC",
                i,
                lines.as_slice()
            );
            let _ = units.push(i);
        }
        Ok(units)
    }

    fn run(boot: &BootInfo) -> Result<(), &'static str> {
        defmt::info!("boot: {}", boot);
        let (found, mut cfg) = discover(boot)?;
        let smmu_base = found.machine.smmus[found.smmu].reg.base;
        check_smmu_at_reset(smmu_base)?;

        pci::enable_mem_and_dma(&mut cfg, found.edu);
        // SAFETY: edu's BAR0 (1 MiB) as placed above, identity mapped as device memory; the
        // `Edu` driver is its only user.
        let regs = unsafe { Mmio::new(found.bar0 as usize) };
        let mut edu = Edu::with_dma_limit(regs, CounterDelay, EDU_DMA_LIMIT).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());
        let mut mem = Memory::take().ok_or("image memory already taken")?;
        image::passthrough_check(&mut edu, &mut mem.client1, "SMMU off, bypass")?;

        // The SMMUs, brought up by the backend: translation on, every stream aborted.
        // SAFETY: memory is identity mapped; the backend touches only frames from the pool and
        // its own unit structures.
        let mut backend: SmmuBackend<Mmio, IdentityMem, CounterDelay, MAX_UNITS> =
            SmmuBackend::new(unsafe { IdentityMem::new() }, CounterDelay);
        let mut edu_unit = None;
        for (i, s) in found.machine.smmus.iter().enumerate() {
            // SAFETY: the SMMU's register frame (both 64 KiB pages), identity mapped as
            // device memory; the backend is its only user from now on.
            let regs = unsafe { Mmio::new(s.reg.base as usize) };
            let index = backend
                .add_unit(regs, &mut mem.pool, SmmuConfig::default())
                .map_err(|e| {
                    defmt::error!("SMMU {=usize}: {}", i, e);
                    "SMMU bring-up failed"
                })?;
            let unit = backend.unit(index).ok_or("unit vanished")?;
            defmt::info!(
                "SMMU {=usize} up as unit {=usize}: {}, stream table {}, {=u32} StreamID bits, range invalidation {=bool}",
                i,
                index,
                unit.info(),
                unit.stream_table(),
                unit.sid_bits(),
                unit.range_invalidation()
            );
            if i == found.smmu {
                edu_unit = Some(index);
            }
        }

        let device = DeviceGrant::new(edu_unit.ok_or("edu's SMMU was not brought up")?, found.sid);
        // Faults arrive by interrupt: the SMMU's wired Event queue and GERROR lines at the GIC.
        let units: heapless::Vec<(usize, FaultInterrupt), MAX_UNITS> =
            wire_interrupts(&found.machine)?
                .into_iter()
                .map(|u| (u, FaultInterrupt::Wired))
                .collect();
        let delivery = if units.is_empty() {
            Delivery::Polling
        } else {
            Delivery::Interrupts(&units)
        };
        image::serve(
            backend,
            mem,
            device,
            &[MSI_WINDOW],
            delivery,
            &mut edu,
            |backend| {
                for u in 0..found.machine.smmus.len() {
                    if let Some(c) = backend.counters(u) {
                        defmt::info!("SMMU unit {=usize} counters: {}", u, c);
                    }
                }
            },
        )
    }

    fn main(boot: BootInfo) -> ! {
        image::exit(run(&boot))
    }
}
