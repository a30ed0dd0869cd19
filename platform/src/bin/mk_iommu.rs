//! The IOMMU server protection domain (seL4 Microkit) for QEMU virt with an SMMUv3: the only
//! PD that maps the SMMU's registers and the memory its tables live in.
//!
//! What it maps (`platform/microkit/iommu.system`): the SMMUv3 register block (`smmu_regs`,
//! uncached), the PCIe ECAM of buses 0-1 (`ecam`, uncached: this PD is also the PCI bus owner
//! at boot, as there is no firmware), and its table memory (`iommu_tables`, 4 MiB, whose
//! physical address the tool patches into `tables_paddr`). It is told, not given, the physical
//! addresses of the clients' memory (`driver_dma_paddr`, `intruder_dma_paddr`) and of the
//! place for edu's BAR (`edu_bar_paddr`).
//!
//! `init`:
//! 1. checks the SMMU (off, and coherent: its table walks snoop the caches, so the table
//!    memory can be mapped cached) and brings it up with the SMMUv3 backend: stream
//!    table, queues and page tables from `iommu_tables`, every stream aborted;
//! 2. finds edu on the PCI bus; its StreamID is its requester id (virt's `iommu-map` is the
//!    identity);
//! 3. builds the server with the configuration the system description implies: client 1 (the
//!    driver's channel) owns edu and `driver_dma`; client 2 (the intruder's first channel)
//!    owns only `intruder_dma`; the intruder's second channel is no client. The server blocks
//!    edu;
//! 4. places edu's BAR0 at `edu_bar` and enables memory decoding and bus mastering (edu's DMA
//!    is blocked by the SMMU until client 1 attaches it);
//! 5. enables the SMMU's wired event-queue and global-error interrupts (hal's
//!    `enable_fault_interrupt(unit, Wired)`), drains once, and enters the event loop: protected calls are requests (the client is the channel's), the interrupts drain
//!    the fault records, notify the owners and are acknowledged.
//!
//! A failure in `init` prints `FAIL` and stops the PD (the monitor reports it); no client
//! call is answered then.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod pd {
    use core::cell::Cell;

    use iommu_hal::backend::{Backend, FaultInterrupt};
    use iommu_hal::mem::RegisterAccess;
    use iommu_hal::pagetable::Perms;
    use iommu_hal::smmuv3::regs::{self, Idr0, cr0};
    use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig};
    use iommu_platform::bars::{BarAllocator, BarWindow};
    use iommu_platform::edu;
    use iommu_platform::mem::{FramePool, Mmio};
    use iommu_platform::microkit::abi::ChannelSet;
    use iommu_platform::microkit::event::EventLoop;
    use iommu_platform::microkit::memory::OffsetMem;
    use iommu_platform::microkit::pd::Pd;
    use iommu_platform::microkit::serve::{ChannelNotify, ClientChannel, ServerPd};
    use iommu_platform::microkit::system::{self, server as ch};
    use iommu_platform::microkit::time::CounterDelay;
    use iommu_platform::pci::{self, Ecam};
    use iommu_protocol::IovaRange;
    use iommu_server::{ClientConfig, ClientId, Config, DeviceGrant, RegionGrant, Server};

    iommu_platform::pd_main!(main);
    iommu_platform::microkit_setvar!(smmu_regs_vaddr => smmu_vaddr);
    iommu_platform::microkit_setvar!(ecam_vaddr => ecam_base);
    iommu_platform::microkit_setvar!(tables_vaddr => table_vaddr);
    iommu_platform::microkit_setvar!(tables_paddr => table_paddr);
    iommu_platform::microkit_setvar!(edu_bar_paddr => bar_paddr);
    iommu_platform::microkit_setvar!(driver_dma_paddr => driver_paddr);
    iommu_platform::microkit_setvar!(intruder_dma_paddr => intruder_paddr);

    /// The IOVA window Linux's arm-smmu-v3 driver reserves for MSI doorbells (1 MiB), reserved
    /// in every domain here too.
    const MSI_WINDOW: IovaRange = IovaRange {
        first: 0x800_0000,
        last: 0x80f_ffff,
    };
    /// Buses the mapped ECAM covers.
    const ECAM_BUSES: u16 = (system::ECAM_SIZE >> 20) as u16;

    type Smmu = SmmuBackend<Mmio, OffsetMem, CounterDelay, 1>;

    /// Stops the PD after saying why (the monitor reports the deliberate fault).
    fn fail_stop(why: &str) -> ! {
        defmt::error!("FAIL: {=str}", why);
        iommu_platform::pd_println!("FAIL: iommu: {}", why);
        panic!("server initialisation failed");
    }

    /// Reads the SMMU's identification before the backend takes it: it must be off and
    /// coherent (SMMUv3 6.3.1 IDR0.COHACC, 6.3.9 CR0); GBPA (6.3.14) is logged.
    fn check_smmu(base: usize) -> Result<(), &'static str> {
        // SAFETY: the SMMU's register block, mapped uncached at `base`; read only here,
        // before the backend takes it.
        let mut r = unsafe { Mmio::new(base) };
        let idr0 = Idr0(r.read32(regs::IDR0));
        let (cr0v, gbpav) = (r.read32(regs::CR0), r.read32(regs::GBPA));
        defmt::info!(
            "SMMU at {=u64:#x} (mapped at {=usize:#x}): IDR0 {=u32:#010x} (S1 {=bool}, COHACC {=bool}), CR0 {=u32:#x}, GBPA {=u32:#010x}",
            system::SMMU_PADDR,
            base,
            idr0.0,
            idr0.s1p(),
            idr0.cohacc(),
            cr0v,
            gbpav
        );
        if cr0v & cr0::SMMUEN != 0 {
            return Err("SMMU already enabled");
        }
        if !idr0.cohacc() {
            // User level cannot invalidate data caches: a non-coherent SMMU needs the table
            // region mapped uncached, which this system description does not do.
            return Err("SMMU is not coherent (IDR0.COHACC = 0): map iommu_tables uncached");
        }
        Ok(())
    }

    fn main(pd: Pd) -> ! {
        defmt::info!(
            "iommu: SMMU regs at {=u64:#x}, ECAM at {=u64:#x}, tables {=u64:#x} + {=u64:#x} mapped at {=u64:#x}",
            smmu_vaddr(),
            ecam_base(),
            table_paddr(),
            system::TABLES_SIZE,
            table_vaddr()
        );
        let smmu_base = smmu_vaddr() as usize;
        if let Err(why) = check_smmu(smmu_base) {
            fail_stop(why);
        }

        // 1. The SMMU, brought up by the backend: translation on, every stream aborted.
        // SAFETY: `iommu_tables` is mapped at `tables_vaddr`, physically contiguous from
        // `tables_paddr` (a region with a `region_paddr` setvar), and used only by the pool,
        // the backend and the server through these values.
        let (mut pool, mem) = unsafe {
            (
                FramePool::over_mapped(
                    table_vaddr() as usize,
                    table_paddr(),
                    (system::TABLES_SIZE / 4096) as usize,
                ),
                OffsetMem::new(table_vaddr() as usize, table_paddr(), system::TABLES_SIZE),
            )
        };
        let mut backend: Smmu = SmmuBackend::new(mem, CounterDelay);
        // SAFETY: the SMMU's register block (both 64 KiB pages), mapped uncached; the backend
        // is its only user from now on.
        let regs = unsafe { Mmio::new(smmu_base) };
        let unit = match backend.add_unit(regs, &mut pool, SmmuConfig::default()) {
            Ok(u) => u,
            Err(e) => {
                defmt::error!("SMMU bring-up: {}", e);
                fail_stop("SMMU bring-up failed");
            }
        };
        if let Some(u) = backend.unit(unit) {
            defmt::info!(
                "SMMU up: {}, stream table {}, {=u32} StreamID bits",
                u.info(),
                u.stream_table(),
                u.sid_bits()
            );
        }

        // 2. edu on the PCI bus.
        // SAFETY: the ECAM of buses 0-1, mapped uncached at `ecam_vaddr`; this is its only
        // accessor.
        let mut cfg = unsafe { Ecam::new(ecam_base() as usize, ECAM_BUSES) };
        let Some(bdf) = pci::find(&mut cfg, edu::VENDOR, edu::DEVICE) else {
            fail_stop("edu not found on PCI buses 0-1");
        };
        let sid = u32::from(bdf.rid());
        defmt::info!(
            "edu at {} (rid {=u16:#06x}): StreamID {=u32:#x}",
            bdf,
            bdf.rid(),
            sid
        );

        // 3. The server, configured as the system description says.
        let clients_by_channel = [
            ClientChannel {
                channel: ch::DRIVER,
                client: ClientId(1),
            },
            ClientChannel {
                channel: ch::INTRUDER,
                client: ClientId(2),
            },
        ];
        let devices1 = [DeviceGrant::new(unit, sid)];
        let regions1 = [RegionGrant {
            base: driver_paddr(),
            len: system::DRIVER_DMA_SIZE,
            perms: Perms::RW,
        }];
        let regions2 = [RegionGrant {
            base: intruder_paddr(),
            len: system::INTRUDER_DMA_SIZE,
            perms: Perms::RW,
        }];
        let clients = [
            ClientConfig {
                id: ClientId(1),
                devices: &devices1,
                regions: &regions1,
                max_domains: 4,
                max_table_frames: 64,
            },
            ClientConfig {
                id: ClientId(2),
                devices: &[],
                regions: &regions2,
                max_domains: 1,
                max_table_frames: 8,
            },
        ];
        let config = Config {
            clients: &clients,
            reserved: &[MSI_WINDOW],
        };
        let pending = Cell::new(ChannelSet::default());
        let notify = ChannelNotify::new(&clients_by_channel, &pending);
        let server =
            match Server::<_, _, _, _, 2, 8, 2, 16>::new(backend, mem, pool, notify, config) {
                Ok(s) => s,
                Err(e) => {
                    defmt::error!("server: {}", e);
                    fail_stop("server refused the configuration");
                }
            };
        iommu_platform::scenario::log_server_up(server.table_config());

        // 4. edu's BAR0 where the system description put `edu_bar`; memory and bus master on.
        let mut bars = BarAllocator::new(BarWindow {
            pci_base: bar_paddr(),
            size: system::EDU_BAR_SIZE,
            cpu_base: bar_paddr(),
        });
        match bars.assign(&mut cfg, bdf) {
            Ok(assigned) => {
                for b in &assigned {
                    defmt::info!("edu BAR{=u16}: {}", b.index, b);
                }
            }
            Err(e) => {
                defmt::error!("edu BARs: {}", e);
                fail_stop("edu's BARs do not fit the edu_bar region");
            }
        }
        pci::enable_mem_and_dma(&mut cfg, bdf);

        // 5. Fault interrupts, then the event loop.
        let mut server = server;
        if let Err(e) = server
            .backend_mut()
            .enable_fault_interrupt(unit, FaultInterrupt::Wired)
        {
            defmt::error!("fault interrupt: {}", e);
            fail_stop("cannot enable the SMMU's wired fault interrupts");
        }
        defmt::info!("SMMU fault interrupts enabled (wired: event queue and GERROR)");
        let irqs = ChannelSet(ch::EVENTQ_IRQ.bit() | ch::GERROR_IRQ.bit());
        let mut handler = match ServerPd::new(server, &clients_by_channel, irqs, &pending) {
            Ok(h) => h,
            Err(e) => {
                defmt::error!("channel table: {}", e);
                fail_stop("bad channel table");
            }
        };
        let mut kernel = pd.kernel();
        // Records pending before the interrupt was enabled may raise none.
        handler.drain(&mut kernel);
        defmt::info!("iommu: serving clients 1 (channel 0) and 2 (channel 1)");
        EventLoop::new().run(&mut kernel, &mut handler, pd.masks.irqs)
    }
}
