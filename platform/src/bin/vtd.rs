//! The VT-d image for QEMU q35 + intel-iommu + edu: the main job of the project, end to end.
//!
//! 1. Boot, find the VT-d units in the ACPI DMAR table and edu on the PCI bus (nothing
//!    hard-coded but edu's PCI ids).
//! 2. Before the IOMMU is touched, check that edu's DMA works untranslated (passthrough at
//!    boot), so a later failure is the IOMMU's, not the device's.
//! 3. Bring every DRHD up with the VT-d backend (`iommu_hal::vtd`), build the server
//!    (`iommu_server`) with a static configuration granting client 1 the edu device and 8 MiB
//!    of RAM, and client 2 only 64 KiB of its own RAM.
//! 4. Run the client scenario (`iommu_platform::scenario`): the clients talk to the server only
//!    through encoded protocol messages, and edu does real DMA through VT-d.
//!
//! Prints `PASS` and exits with the success code only if every step passed. Run with
//! `cargo run -p iommu-test-harness --bin qemu -- vtd`. On the host this file builds to an
//! empty program; on aarch64-unknown-none to an image that reports it is x86_64 only.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod stub {
    use iommu_platform::aarch64::{self, BootInfo};

    iommu_platform::entry!(main);

    fn main(_boot: BootInfo) -> ! {
        iommu_platform::console!("FAIL: the vtd image runs on x86_64 only");
        aarch64::exit_failure()
    }
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod image {
    use core::cell::RefCell;
    use core::mem::MaybeUninit;

    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::pagetable::Perms;
    use iommu_hal::vtd::{VtdBackend, VtdConfig};
    use iommu_platform::dma::DmaEngine;
    use iommu_platform::dmar::Dmar;
    use iommu_platform::edu::{self, Edu};
    use iommu_platform::local::LocalTransport;
    use iommu_platform::mem::{DmaRegion, Frame, FramePool, IdentityMem, Mmio};
    use iommu_platform::pci::{self, Bdf, ConfigSpace};
    use iommu_platform::scenario::{self, Layout, REGION_LEN};
    use iommu_platform::x86::pci::PortConfig;
    use iommu_platform::x86::time::TscDelay;
    use iommu_platform::x86::{self, BootInfo};
    use iommu_protocol::client::Client;
    use iommu_protocol::{DeviceHandle, IovaRange};
    use iommu_server::{
        ClientConfig, ClientId, Config, DeviceGrant, NoNotify, RegionGrant, Server,
    };

    iommu_platform::entry!(main);

    /// VT-d registers read before the backend takes over (VT-d 3.4, section 11.4).
    const GSTS_REG: usize = 0x1c;
    /// GSTS.TES: translation enabled.
    const GSTS_TES: u32 = 1 << 31;

    const PAGE: usize = 4096;
    /// Page-table and unit-structure frames for the server and the backend (4 MiB).
    const FRAMES: usize = 1024;
    /// Most VT-d units the image drives.
    const MAX_UNITS: usize = 4;
    /// Where the scenario puts its IOVAs: 16 MiB, far below edu's 28-bit DMA limit.
    const IOVA_BASE: u64 = 0x100_0000;
    /// The x86 interrupt (MSI) window, which VT-d never translates: reserved in every domain.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0xfee0_0000,
        last: 0xfeef_ffff,
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

    /// The configuration lives in statics filled once at run time (edu's requester id and
    /// the memory addresses are only known then).
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

    /// Where edu is and which unit translates it.
    struct Found {
        dmar: Dmar,
        edu: Bdf,
        bar0: u64,
        unit: usize,
    }

    fn discover(boot: &BootInfo, cfg: &mut PortConfig) -> Result<Found, &'static str> {
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
        let bdf = pci::find(cfg, edu::VENDOR, edu::DEVICE).ok_or("edu not found")?;
        let bar = pci::mem_bar(cfg, bdf, 0).ok_or("edu BAR0 unassigned")?;
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
        defmt::info!("edu is behind DRHD {=usize}", unit);
        Ok(Found {
            dmar,
            edu: bdf,
            bar0: bar.addr,
            unit,
        })
    }

    /// edu copies a page RAM -> device -> RAM with translation off.
    fn passthrough_check<E: DmaEngine>(
        edu: &mut E,
        mem: &mut DmaRegion,
    ) -> Result<(), &'static str> {
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
            return Err("untranslated DMA round trip corrupted data");
        }
        defmt::info!(
            "untranslated DMA (IOMMU off): {=usize} bytes {=u64:#x} -> edu -> {=u64:#x} intact ({=u64} us)",
            PAGE,
            mem.phys(src),
            mem.phys(dst),
            t1 - t0
        );
        Ok(())
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

        pci::enable_mem_and_dma(&mut cfg, found.edu);
        // SAFETY: edu's BAR0 (1 MiB), identity mapped (uncached); this driver is its only user.
        let regs = unsafe { Mmio::new(found.bar0 as usize) };
        let mut edu = Edu::new(regs, TscDelay).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());

        // SAFETY: CLIENT1_MEM is used only through this region (by the CPU) and by edu's DMA.
        let mut mem1 = unsafe { DmaRegion::new((&raw mut CLIENT1_MEM).cast(), REGION_LEN) };
        passthrough_check(&mut edu, &mut mem1)?;

        // The VT-d units, brought up by the backend: translation on, every device blocked.
        let frames: *mut [Frame; FRAMES] = &raw mut FRAME_POOL;
        // SAFETY: the pool's memory is handed over once, here, and used by nothing else.
        let mut pool = FramePool::new(unsafe { &mut *frames });
        // SAFETY: memory is identity mapped; the backend and the server touch only frames from
        // the pool and their own unit structures.
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
            let index = backend.add_unit(regs, &mut pool, config).map_err(|e| {
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

        // The static configuration: client 1 owns edu and CLIENT1_MEM, client 2 only its own
        // 64 KiB.
        let c2_base = (&raw const CLIENT2_MEM) as u64;
        let c2_len = core::mem::size_of::<Pages<16>>() as u64;
        // SAFETY: each slot is initialised exactly once, here, before the server reads it.
        let config = unsafe {
            let devices = init_static(
                &raw mut CLIENT1_DEVICES,
                [DeviceGrant {
                    unit: found.unit,
                    device: u32::from(found.edu.rid()),
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
        let t0 = x86::time::micros();
        let result = scenario::run(
            &mut client1,
            &mut client2,
            &mut stranger,
            &mut edu,
            &mut mem1,
            layout,
        );
        let t1 = x86::time::micros();

        let server = server.borrow();
        defmt::info!("server stats: {}", server.stats());
        defmt::info!(
            "frames: {=usize} in use, peak {=usize} of {=usize}",
            server.alloc().in_use(),
            server.alloc().peak(),
            server.alloc().capacity()
        );
        for u in 0..found.dmar.units.len() {
            if let Some(c) = server.backend().counters(u) {
                defmt::info!("VT-d unit {=usize} counters: {}", u, c);
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
