//! The RISC-V IOMMU image for QEMU `-machine virt` + a RISC-V IOMMU + edu: the VT-d image's
//! job on RISC-V.
//!
//! 1. Boot (riscv64 runtime, M-mode), read the device tree: memory, the RISC-V IOMMUs (the
//!    platform form `"riscv,iommu"` of `-machine virt,iommu-sys=on`, or the PCI form
//!    `"riscv,pci-iommu"` of `-device riscv-iommu-pci`), the PCIe host (ECAM, memory windows,
//!    `iommu-map`). Nothing is hard-coded but edu's PCI ids and the compatible strings.
//! 2. Scan PCI through ECAM, find edu, size and place its BARs (and a PCI IOMMU's, whose
//!    registers are its BAR0) in the host's 32-bit memory window (no firmware did), enable
//!    memory decoding and bus mastering. edu's device id is its requester id put through the
//!    host's `iommu-map`, which also names the IOMMU.
//! 3. The IOMMU comes out of reset Off (`ddtp.iommu_mode` = Off: all DMA refused); it is put
//!    in Bare mode for a moment to check that edu's DMA works untranslated, so a later
//!    failure is the IOMMU's, not the device's. This needs edu's DMA mask widened to reach RAM
//!    at 2 GiB (`-device edu,dma_mask=0xffffffffff`, passed by the runner; the `Edu` driver is
//!    told the matching 40-bit limit).
//! 4. Bring every IOMMU up with the RISC-V IOMMU backend (`iommu_hal::riscv`: Off, queues, a
//!    3-level device directory in which every device is blocked, then the table mode), build
//!    the server (`iommu_server`) granting client 1 the edu device and 8 MiB of RAM, and
//!    client 2 only 64 KiB of its own RAM.
//! 5. Run the client scenario (`iommu_platform::scenario`) shared with the other images: the
//!    clients talk to the server only through encoded protocol messages, and edu does real
//!    DMA through the IOMMU. Faults arrive by interrupt: a unit that signals by wire gets
//!    every cause on vector 0 (`icvec`), its first `interrupts` line enabled at the PLIC for
//!    the hart's machine-mode context, and `fqcsr.fie`/`cqcsr.cie` set; the trap vector takes
//!    the machine external interrupt, the PLIC names the line, and the server drains the unit
//!    (which clears `ipsr` and lowers the line). A unit that signals by MSI (the PCI form) has
//!    no MSI target on this machine (no IMSIC): its faults are drained by polling.
//!
//! Prints `PASS` and exits with status 0 (the `sifive_test` device) only if every step
//! passed. Run with `cargo run -p iommu-test-harness --bin qemu -- riscv`. On the host this
//! file builds to an empty program; on other bare-metal targets to an image that reports it
//! is riscv64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", not(target_arch = "riscv64")))]
mod stub {
    use iommu_platform::arch::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the riscv image runs on riscv64 only");
        arch::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "riscv64"))]
mod image {
    use heapless::Vec;
    use iommu_hal::backend::{FaultInterrupt, UnitIndex};
    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::riscv::regs::{self, Cap, ddtp};
    use iommu_hal::riscv::{RiscvBackend, RiscvConfig};
    use iommu_platform::bars::{BarAllocator, BarWindow};
    use iommu_platform::devtree::{self, MAX_RISCV_IOMMUS, Machine, RiscvIommuAt};
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::image::{self, Delivery, Memory};
    use iommu_platform::mem::{IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, Ecam};
    use iommu_platform::riscv64::time::MtimeDelay;
    use iommu_platform::riscv64::{BootInfo, plic};
    use iommu_platform::scenario::FaultEvidence;
    use iommu_protocol::IovaRange;
    use iommu_server::DeviceGrant;

    iommu_platform::entry!(main);

    /// edu's DMA limit with the runner's `-device edu,dma_mask=0xffffffffff` (40 bits): RAM
    /// starts at 2 GiB on virt, beyond the default 28-bit mask, and the untranslated check
    /// uses physical addresses.
    const EDU_DMA_LIMIT: u64 = 1 << 40;
    /// The IOVA window Linux's dma-iommu layer reserves for MSI doorbells (MSI_IOVA_BASE,
    /// 1 MiB): reserved in every domain here too, outside the scenario's IOVAs.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0x800_0000,
        last: 0x80f_ffff,
    };

    /// Where edu is and which IOMMU translates it.
    struct Found {
        machine: Machine,
        edu: Bdf,
        /// CPU address of edu's BAR0.
        bar0: u64,
        /// Register block of each IOMMU in `machine.riscv_iommus`.
        bases: Vec<u64, MAX_RISCV_IOMMUS>,
        /// Index of edu's IOMMU in `machine.riscv_iommus`.
        iommu: usize,
        /// edu's device id at that IOMMU.
        did: u32,
    }

    fn discover(boot: &BootInfo) -> Result<(Found, Ecam), &'static str> {
        let dtb = boot.dtb.ok_or("no device tree")?;
        // SAFETY: the runtime found an FDT header at `dtb`, in RAM QEMU filled and nothing
        // writes.
        let machine = unsafe { devtree::parse_at(dtb) }.map_err(|e| {
            defmt::error!("device tree: {}", e);
            "unusable device tree"
        })?;
        for m in &machine.memory {
            defmt::info!("memory: {=u64:#x} + {=u64:#x}", m.base, m.size);
        }
        for (i, u) in machine.riscv_iommus.iter().enumerate() {
            defmt::info!("RISC-V IOMMU {=usize}: {}", i, u);
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

        // SAFETY: the ECAM window from the device tree; M-mode reaches it at its physical
        // address, and this is its only accessor.
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
        // Every IOMMU's register block: a platform unit's from the device tree, a PCI unit's
        // BAR0, placed here.
        let mut bases = Vec::new();
        for u in &machine.riscv_iommus {
            let base = match u.at {
                RiscvIommuAt::Platform(reg) => reg.base,
                RiscvIommuAt::Pci(rid) => {
                    let ubdf = Bdf::from_rid(rid);
                    let assigned = bars.assign(&mut cfg, ubdf).map_err(|e| {
                        defmt::error!("IOMMU {} BARs: {}", ubdf, e);
                        "cannot place a PCI IOMMU's BARs"
                    })?;
                    let b0 = assigned
                        .iter()
                        .find(|b| b.index == 0)
                        .ok_or("PCI IOMMU has no BAR0")?;
                    defmt::info!("IOMMU at {}: BAR0 {}", ubdf, b0);
                    // It reads its tables and queues by DMA.
                    pci::enable_mem_and_dma(&mut cfg, ubdf);
                    b0.cpu_addr
                }
            };
            bases.push(base).map_err(|_| "too many IOMMUs")?;
        }
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

        let (phandle, did) = host.iommu_for(bdf.rid()).ok_or("edu is behind no IOMMU")?;
        let (iommu, _) = machine
            .riscv_iommu_by_phandle(phandle)
            .ok_or("edu's IOMMU is not a RISC-V IOMMU")?;
        defmt::info!(
            "edu at {} (rid {=u16:#06x}): BAR0 {=u64:#x}, IOMMU {=usize}, device id {=u32:#x}",
            bdf,
            bdf.rid(),
            bar0,
            iommu,
            did
        );
        Ok((
            Found {
                machine,
                edu: bdf,
                bar0,
                bases,
                iommu,
                did,
            },
            cfg,
        ))
    }

    /// Reads the IOMMU's identification and state before the backend takes it: it must be
    /// Off, as at reset (spec 5.5), and is then put in Bare mode so that the untranslated
    /// check can run.
    fn bare_for_the_check(base: u64) -> Result<(), &'static str> {
        // SAFETY: the IOMMU's register block (device tree or assigned BAR0); used only here,
        // before the backend takes the unit.
        let mut r = unsafe { Mmio::new(base as usize) };
        let cap = Cap(r.read64(regs::CAPABILITIES));
        let fctl = r.read32(regs::FCTL);
        let d = r.read64(regs::DDTP);
        defmt::info!(
            "IOMMU at {=u64:#x}: capabilities {=u64:#x} (version {=u8:#x}, Sv39 {=bool}, Sv48 {=bool}, Sv57 {=bool}, MSI_FLAT {=bool}, IGS {}, PAS {=u32}), fctl {=u32:#x}, ddtp {=u64:#x}",
            base,
            cap.0,
            cap.version(),
            cap.sv39(),
            cap.sv48(),
            cap.sv57(),
            cap.msi_flat(),
            cap.igs(),
            cap.pas(),
            fctl,
            d
        );
        if d & ddtp::MODE_MASK != ddtp::OFF {
            return Err("IOMMU not Off at boot");
        }
        for _ in 0..1000 {
            if r.read64(regs::DDTP) & ddtp::BUSY == 0 {
                break;
            }
        }
        r.write64(regs::DDTP, ddtp::BARE);
        for _ in 0..1000 {
            if r.read64(regs::DDTP) & ddtp::BUSY == 0 {
                break;
            }
        }
        if r.read64(regs::DDTP) & ddtp::MODE_MASK != ddtp::BARE {
            return Err("IOMMU refused Bare mode");
        }
        Ok(())
    }

    fn run(boot: &BootInfo) -> Result<(), &'static str> {
        defmt::info!("boot: {}", boot);
        let (found, mut cfg) = discover(boot)?;
        bare_for_the_check(found.bases[found.iommu])?;

        pci::enable_mem_and_dma(&mut cfg, found.edu);
        // SAFETY: edu's BAR0 (1 MiB) as placed above; the `Edu` driver is its only user.
        let regs = unsafe { Mmio::new(found.bar0 as usize) };
        let mut edu = Edu::with_dma_limit(regs, MtimeDelay, EDU_DMA_LIMIT).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());
        let mut mem = Memory::take().ok_or("image memory already taken")?;
        image::passthrough_check(&mut edu, &mut mem.client1, "IOMMU in Bare mode")?;

        // The IOMMUs, brought up by the backend: Off, then a device directory in which every
        // device is blocked.
        // SAFETY: M-mode reaches all memory at its physical address; the backend touches only
        // frames from the pool and its own unit structures.
        let mut backend: RiscvBackend<Mmio, IdentityMem, MtimeDelay, MAX_RISCV_IOMMUS> =
            RiscvBackend::new(unsafe { IdentityMem::new() }, MtimeDelay);
        let mut edu_unit = None;
        let mut wired: heapless::Vec<UnitIndex, MAX_RISCV_IOMMUS> = heapless::Vec::new();
        for (i, &base) in found.bases.iter().enumerate() {
            // SAFETY: the IOMMU's register block; the backend is its only user from now on.
            let regs = unsafe { Mmio::new(base as usize) };
            let index = backend
                .add_unit(regs, &mut mem.pool, RiscvConfig::default())
                .map_err(|e| {
                    defmt::error!("IOMMU {=usize}: {}", i, e);
                    "IOMMU bring-up failed"
                })?;
            let unit = backend.unit(index).ok_or("unit vanished")?;
            defmt::info!(
                "IOMMU {=usize} up as unit {=usize}: {}, fctl {=u32:#x} (interrupts {=str}), DDT {}",
                i,
                index,
                unit.info(),
                unit.fctl(),
                if unit.wired() { "wired" } else { "MSI" },
                unit.ddt()
            );
            if unit.wired() {
                wired.push(index).map_err(|_| "too many IOMMUs")?;
            }
            if i == found.iommu {
                edu_unit = Some(index);
            }
        }

        let device = DeviceGrant::new(edu_unit.ok_or("edu's IOMMU was not brought up")?, found.did);
        // Faults arrive by interrupt: each wired unit's vector 0 (every cause) on its first
        // line at the PLIC. Units that signal by MSI (the PCI form) have nowhere to send them
        // on this machine (no IMSIC): their faults are drained by polling.
        let lines = wire_interrupts(&found.machine, &wired)?;
        let units: heapless::Vec<(UnitIndex, FaultInterrupt), MAX_RISCV_IOMMUS> =
            lines.iter().map(|&u| (u, FaultInterrupt::Wired)).collect();
        let delivery = if units.is_empty() {
            Delivery::Polling
        } else {
            Delivery::Interrupts(&units)
        };
        // QEMU 10.0 records every translation fault as a write/AMO (TTYP 3), reads too.
        image::serve_with(
            backend,
            mem,
            device,
            &[MSI_WINDOW],
            delivery,
            &mut edu,
            FaultEvidence::RecordsWithoutDirection,
            |backend: &RiscvBackend<Mmio, IdentityMem, MtimeDelay, MAX_RISCV_IOMMUS>| {
                for u in 0..found.bases.len() {
                    if let Some(c) = backend.counters(u) {
                        defmt::info!("RISC-V IOMMU unit {=usize} counters: {}", u, c);
                    }
                }
                if plic::other_interrupts() != 0 {
                    defmt::warn!(
                        "PLIC: {=u32} interrupt(s) that were no fault line",
                        plic::other_interrupts()
                    );
                }
            },
        )
    }

    /// Sets the PLIC up and enables the fault line (vector 0: the first `interrupts` entry) of
    /// each wired unit in `wired` (indexes into both the backend and `machine.riscv_iommus`,
    /// which the image brings up in order). Returns the units whose line was enabled; none
    /// when the machine describes no PLIC.
    fn wire_interrupts(
        machine: &Machine,
        wired: &[UnitIndex],
    ) -> Result<heapless::Vec<UnitIndex, MAX_RISCV_IOMMUS>, &'static str> {
        let mut out = heapless::Vec::new();
        if wired.is_empty() {
            return Ok(out);
        }
        let Some(p) = &machine.plic else {
            defmt::warn!("no PLIC in the device tree");
            return Ok(out);
        };
        defmt::info!("PLIC: {}", p);
        plic::init(p).map_err(|e| {
            defmt::error!("PLIC: {}", e);
            "cannot set the PLIC up"
        })?;
        for &u in wired {
            let Some(&line) = machine
                .riscv_iommus
                .get(u)
                .and_then(|m| m.interrupts.first())
            else {
                defmt::warn!("IOMMU {=usize}: no interrupt in the device tree", u);
                continue;
            };
            plic::enable_fault_line(line).map_err(|e| {
                defmt::error!("PLIC source {=u32}: {}", line, e);
                "cannot enable an IOMMU interrupt at the PLIC"
            })?;
            defmt::info!(
                "IOMMU {=usize}: fault vector 0 on PLIC source {=u32}",
                u,
                line
            );
            out.push(u).map_err(|_| "too many IOMMUs")?;
        }
        Ok(out)
    }

    fn main(boot: BootInfo) -> ! {
        image::exit(run(&boot))
    }
}
