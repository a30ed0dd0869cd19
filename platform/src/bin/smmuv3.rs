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
//! empty program; on x86_64-unknown-none to an image that reports it is aarch64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod stub {
    use iommu_platform::x86::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the smmuv3 image runs on aarch64 only");
        x86::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod image {
    use core::cell::RefCell;
    use core::mem::MaybeUninit;

    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::pagetable::Perms;
    use iommu_hal::smmuv3::regs::{self, Idr0, Idr1, Idr5, cr0, gbpa};
    use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig};
    use iommu_platform::aarch64::time::{self, CounterDelay};
    use iommu_platform::aarch64::{self, BootInfo};
    use iommu_platform::bars::{BarAllocator, BarWindow};
    use iommu_platform::devtree::{self, Machine};
    use iommu_platform::dma::DmaEngine;
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::local::LocalTransport;
    use iommu_platform::mem::{DmaRegion, Frame, FramePool, IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, Ecam};
    use iommu_platform::scenario::{self, Layout, REGION_LEN};
    use iommu_protocol::client::Client;
    use iommu_protocol::{DeviceHandle, IovaRange};
    use iommu_server::{
        ClientConfig, ClientId, Config, DeviceGrant, NoNotify, RegionGrant, Server,
    };

    iommu_platform::entry!(main);

    const PAGE: usize = 4096;
    /// Page-table and unit-structure frames for the server and the backend (4 MiB).
    const FRAMES: usize = 1024;
    /// Most SMMUs the image drives.
    const MAX_UNITS: usize = 4;
    /// Where the scenario puts its IOVAs: 16 MiB, far below edu's default 28-bit DMA limit.
    const IOVA_BASE: u64 = 0x100_0000;
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

    #[repr(C, align(0x200000))]
    struct Granted([u8; REGION_LEN]);
    #[repr(C, align(4096))]
    struct Pages<const N: usize>([[u8; PAGE]; N]);

    /// Client 1's memory (2 MiB aligned, so the server can map it with 2 MiB pages).
    static mut CLIENT1_MEM: Granted = Granted([0; REGION_LEN]);
    /// Client 2's memory.
    static mut CLIENT2_MEM: Pages<16> = Pages([[0; PAGE]; 16]);
    /// Memory granted to nobody.
    static mut SECRET: Pages<1> = Pages([[0; PAGE]; 1]);
    /// The frame pool.
    static mut FRAME_POOL: [Frame; FRAMES] = [Frame::ZERO; FRAMES];

    /// The configuration lives in statics filled once at run time (edu's StreamID and the
    /// memory addresses are only known then).
    static mut CLIENT1_DEVICES: MaybeUninit<[DeviceGrant; 1]> = MaybeUninit::uninit();
    static mut CLIENT1_REGIONS: MaybeUninit<[RegionGrant; 1]> = MaybeUninit::uninit();
    static mut CLIENT2_REGIONS: MaybeUninit<[RegionGrant; 1]> = MaybeUninit::uninit();
    static mut CLIENTS: MaybeUninit<[ClientConfig; 2]> = MaybeUninit::uninit();

    /// Stores `value` in `slot` and returns it for the rest of the program.
    ///
    /// # Safety
    /// Called at most once per slot, before anything reads it.
    unsafe fn init_static<T>(slot: *mut MaybeUninit<T>, value: T) -> &'static T {
        // SAFETY: the caller's contract: exclusive, first and only initialisation.
        unsafe { (*slot).write(value) }
    }

    fn pattern(i: usize) -> u8 {
        (i as u8).wrapping_mul(7) ^ (i >> 8) as u8 ^ 0x5a
    }

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
        for (i, s) in machine.smmus.iter().enumerate() {
            defmt::info!("SMMU {=usize}: {}", i, s);
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

    /// edu copies a page RAM -> device -> RAM with the SMMU disabled (bypass).
    fn passthrough_check<E: DmaEngine>(
        edu: &mut E,
        mem: &mut DmaRegion,
    ) -> Result<(), &'static str> {
        let (src, dst) = (0, PAGE);
        mem.fill(src, PAGE, pattern);
        mem.fill(dst, PAGE, |_| 0);
        let t0 = time::micros();
        edu.device_read(mem.phys(src), 0, PAGE as u32)
            .map_err(|_| "edu DMA RAM -> device failed")?;
        edu.device_write(0, mem.phys(dst), PAGE as u32)
            .map_err(|_| "edu DMA device -> RAM failed")?;
        let t1 = time::micros();
        if let Some((i, got)) = mem.first_mismatch(dst, PAGE, pattern) {
            defmt::error!(
                "byte {=usize} is {=u8:#04x}, expected {=u8:#04x}",
                i,
                got,
                pattern(i)
            );
            return Err("untranslated DMA round trip corrupted data (edu dma_mask too small?)");
        }
        defmt::info!(
            "untranslated DMA (SMMU off, bypass): {=usize} bytes {=u64:#x} -> edu -> {=u64:#x} intact ({=u64} us)",
            PAGE,
            mem.phys(src),
            mem.phys(dst),
            t1 - t0
        );
        Ok(())
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
        // SAFETY: CLIENT1_MEM is used only through this region (by the CPU) and by edu's DMA.
        let mut mem1 = unsafe { DmaRegion::new((&raw mut CLIENT1_MEM).cast(), REGION_LEN) };
        passthrough_check(&mut edu, &mut mem1)?;

        // The SMMUs, brought up by the backend: translation on, every stream aborted.
        let frames: *mut [Frame; FRAMES] = &raw mut FRAME_POOL;
        // SAFETY: the pool's memory is handed over once, here, and used by nothing else.
        let mut pool = FramePool::new(unsafe { &mut *frames });
        // SAFETY: memory is identity mapped; the backend and the server touch only frames from
        // the pool and their own unit structures.
        let mut backend: SmmuBackend<Mmio, IdentityMem, CounterDelay, MAX_UNITS> =
            SmmuBackend::new(unsafe { IdentityMem::new() }, CounterDelay);
        let mut edu_unit = None;
        for (i, s) in found.machine.smmus.iter().enumerate() {
            // SAFETY: the SMMU's register frame (both 64 KiB pages), identity mapped as
            // device memory; the backend is its only user from now on.
            let regs = unsafe { Mmio::new(s.reg.base as usize) };
            let index = backend
                .add_unit(regs, &mut pool, SmmuConfig::default())
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
        let edu_unit = edu_unit.ok_or("edu's SMMU was not brought up")?;

        // The static configuration: client 1 owns edu and CLIENT1_MEM, client 2 only its own
        // 64 KiB.
        let c2_base = (&raw const CLIENT2_MEM) as u64;
        let c2_len = core::mem::size_of::<Pages<16>>() as u64;
        // SAFETY: each slot is initialised exactly once, here, before the server reads it.
        let config = unsafe {
            let devices = init_static(
                &raw mut CLIENT1_DEVICES,
                [DeviceGrant {
                    unit: edu_unit,
                    device: found.sid,
                }],
            );
            let regions1 = init_static(
                &raw mut CLIENT1_REGIONS,
                [RegionGrant {
                    base: mem1.phys(0),
                    len: REGION_LEN as u64,
                    perms: Perms::RW,
                }],
            );
            let regions2 = init_static(
                &raw mut CLIENT2_REGIONS,
                [RegionGrant {
                    base: c2_base,
                    len: c2_len,
                    perms: Perms::RW,
                }],
            );
            let clients = init_static(
                &raw mut CLIENTS,
                [
                    ClientConfig {
                        id: ClientId(1),
                        devices,
                        regions: regions1,
                        max_domains: 4,
                        max_table_frames: 64,
                    },
                    ClientConfig {
                        id: ClientId(2),
                        devices: &[],
                        regions: regions2,
                        max_domains: 1,
                        max_table_frames: 8,
                    },
                ],
            );
            Config {
                clients,
                reserved: &[MSI_WINDOW],
            }
        };
        // SAFETY: as for the backend's accessor above.
        let server: Server<_, _, _, _> = Server::new(
            backend,
            unsafe { IdentityMem::new() },
            pool,
            NoNotify,
            config,
        )
        .map_err(|e| {
            defmt::error!("server: {}", e);
            "server refused the configuration"
        })?;
        defmt::info!("server up: {}", server.table_config());
        let server = RefCell::new(server);

        let mut client1 = Client::new(LocalTransport::new(&server, ClientId(1)));
        let mut client2 = Client::new(LocalTransport::new(&server, ClientId(2)));
        let mut stranger = Client::new(LocalTransport::new(&server, ClientId(99)));
        let layout = Layout {
            device: DeviceHandle(0),
            foreign_device: DeviceHandle(1),
            iova_base: IOVA_BASE,
            forbidden_phys: (&raw const SECRET) as u64,
            reserved_iova: MSI_WINDOW.first,
        };
        let t0 = time::micros();
        let result = scenario::run(
            &mut client1,
            &mut client2,
            &mut stranger,
            &mut edu,
            &mut mem1,
            layout,
        );
        let t1 = time::micros();

        let server = &*server.borrow();
        defmt::info!("server stats: {}", server.stats());
        defmt::info!(
            "frames: {=usize} in use, peak {=usize} of {=usize}",
            server.alloc().in_use(),
            server.alloc().peak(),
            server.alloc().capacity()
        );
        for u in 0..found.machine.smmus.len() {
            if let Some(c) = server.backend().counters(u) {
                defmt::info!("SMMU unit {=usize} counters: {}", u, c);
            }
        }
        defmt::info!(
            "{=u64} requests from client 1 in {=u64} ms",
            client1.transport_mut().calls(),
            (t1 - t0) / 1000
        );
        match result {
            Ok(summary) => {
                defmt::info!("scenario passed: {}", summary);
                Ok(())
            }
            Err(f) => {
                defmt::error!("scenario failed: {}", f);
                Err("scenario failed")
            }
        }
    }

    fn main(boot: BootInfo) -> ! {
        match run(&boot) {
            Ok(()) => {
                defmt::println!("PASS");
                iommu_platform::console!("PASS");
                aarch64::exit_success()
            }
            Err(why) => {
                defmt::error!("FAIL: {=str}", why);
                iommu_platform::console!("FAIL: {}", why);
                aarch64::exit_failure()
            }
        }
    }
}
