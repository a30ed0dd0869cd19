//! The driver protection domain (seL4 Microkit): the edu driver and the shared client scenario
//! (`iommu_platform::scenario`), talking to the IOMMU server PD only by protected procedure
//! calls with the encoded requests in message registers.
//!
//! What it maps (`platform/microkit/iommu.system`): edu's BAR0 (`edu_bar`, uncached) and its
//! own DMA memory (`driver_dma`, 8 MiB in 2 MiB pages, whose physical address the tool patches
//! into `dma_paddr`). It is told where the server's tables are (`forbidden_paddr`), to try to
//! map them (refused: granted to no client). Nothing of the SMMU, of the PCI ECAM, or of the server's tables. The
//! server PD owns the PCI bus: it placed edu's BAR0 at the address the system description
//! gives `edu_bar` and enabled memory decoding and bus mastering before it started answering
//! calls, so the driver's first call (Hello) also waits for that.
//!
//! Faults reach it by notification: the SMMU's event-queue interrupt wakes the server, which
//! routes the records to client 1 and signals the driver's channel; the scenario waits for that
//! signal (bounded) before it asks for the records.
//!
//! After the scenario it reports `PASS`, then shows the isolation: it reads the SMMU's
//! register page at its physical address, which it has no mapping for; the Microkit monitor
//! stops it and reports the fault, and the runner requires exactly that report.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod pd {
    use embedded_hal::delay::DelayNs;
    use iommu_platform::edu::Edu;
    use iommu_platform::mem::{DmaRegion, Mmio};
    use iommu_platform::microkit::Channel;
    use iommu_platform::microkit::pd::Pd;
    use iommu_platform::microkit::sys::Sel4;
    use iommu_platform::microkit::system::{self, driver as ch};
    use iommu_platform::microkit::time::{self, CounterDelay};
    use iommu_platform::microkit::transport::PpcTransport;
    use iommu_platform::scenario::{self, FaultEvidence, FaultSignal, Layout};
    use iommu_protocol::DeviceHandle;
    use iommu_protocol::client::Client;

    iommu_platform::pd_main!(main);
    iommu_platform::microkit_setvar!(edu_bar_vaddr => bar_vaddr);
    iommu_platform::microkit_setvar!(dma_vaddr => region_vaddr);
    iommu_platform::microkit_setvar!(dma_paddr => region_paddr);
    iommu_platform::microkit_setvar!(forbidden_paddr => forbidden_phys);

    /// Where the scenario puts its IOVAs: 16 MiB, below edu's default 28-bit DMA limit.
    const IOVA_BASE: u64 = 0x100_0000;
    /// An IOVA inside the window the server reserves in every domain (the MSI doorbell window
    /// Linux's arm-smmu-v3 reserves; `mk-iommu`'s `MSI_WINDOW`).
    const RESERVED_IOVA: u64 = 0x800_0000;
    /// The server's fault signal: a notification on the server's channel, polled on the
    /// driver's notification (its input capability: it receives no calls).
    struct ServerSignal {
        kernel: Sel4,
        channel: Channel,
        signals: u32,
    }

    impl FaultSignal for ServerSignal {
        fn wait(&mut self, timeout_us: u64) -> bool {
            let start = time::micros();
            loop {
                if self.kernel.poll_notifications().contains(self.channel) {
                    self.signals = self.signals.wrapping_add(1);
                    return true;
                }
                if time::micros() - start > timeout_us {
                    return false;
                }
                CounterDelay.delay_us(100);
            }
        }

        fn take(&mut self) -> bool {
            let signalled = self.kernel.poll_notifications().contains(self.channel);
            self.signals += u32::from(signalled);
            signalled
        }

        fn report_faults(&mut self) {
            // The units' raw records are the server's to read; this PD maps no unit.
            defmt::warn!("the raw fault records are only visible to the iommu PD");
        }
    }

    fn run(pd: &Pd) -> Result<(), &'static str> {
        let mut client = Client::new(PpcTransport::new(pd.kernel(), ch::SERVER));
        // The first call waits until the server is up (and edu's BAR is placed).
        let version = client.hello().map_err(|e| {
            defmt::error!("hello: {}", e);
            "the server does not answer"
        })?;
        defmt::info!(
            "driver: server up (protocol {=u16}); edu BAR0 at {=u64:#x} mapped at {=u64:#x}, DMA region {=u64:#x} + {=u64:#x} mapped at {=u64:#x}; the server's tables (not granted) at {=u64:#x}",
            version,
            system::EDU_BAR_PADDR,
            bar_vaddr(),
            region_paddr(),
            system::DRIVER_DMA_SIZE,
            region_vaddr(),
            forbidden_phys()
        );
        // SAFETY: edu's BAR0, mapped uncached at `bar_vaddr` by the system description; the
        // `Edu` driver is its only user.
        let regs = unsafe { Mmio::new(bar_vaddr() as usize) };
        let mut edu = Edu::new(regs, CounterDelay).map_err(|e| {
            defmt::error!("edu: {}", e);
            "edu does not answer"
        })?;
        defmt::info!("edu: id {=u32:#010x}", edu.id());
        // SAFETY: `driver_dma`, mapped at `dma_vaddr`, physically contiguous from `dma_paddr`
        // (a region with a `region_paddr` setvar), used only through this value and by edu.
        let mut mem = unsafe {
            DmaRegion::with_phys(
                region_vaddr() as *mut u8,
                region_paddr(),
                system::DRIVER_DMA_SIZE as usize,
            )
        };
        let mut intruder = Client::new(PpcTransport::new(pd.kernel(), ch::INTRUDER_AS_CLIENT));
        let mut stranger = Client::new(PpcTransport::new(pd.kernel(), ch::INTRUDER_AS_STRANGER));
        let mut signal = ServerSignal {
            kernel: pd.kernel(),
            channel: ch::SERVER,
            signals: 0,
        };
        let layout = Layout {
            device: DeviceHandle(0),
            foreign_device: DeviceHandle(1),
            iova_base: IOVA_BASE,
            forbidden_phys: forbidden_phys(),
            reserved_iova: RESERVED_IOVA,
            // The SMMUv3 records every refused access: the records are required.
            faults: FaultEvidence::Records,
        };
        let t0 = time::micros();
        let result = scenario::run(
            &mut client,
            &mut intruder,
            &mut stranger,
            &mut edu,
            &mut signal,
            &mut mem,
            layout,
        );
        let t1 = time::micros();
        defmt::info!(
            "{=u64} calls to the server in {=u64} ms, {=u32} fault notifications",
            client.transport_mut().calls(),
            (t1 - t0) / 1000,
            signal.signals
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

    fn main(pd: Pd) -> ! {
        match run(&pd) {
            Ok(()) => {
                defmt::println!("PASS");
                iommu_platform::pd_println!("PASS");
            }
            Err(why) => {
                defmt::error!("FAIL: {=str}", why);
                iommu_platform::pd_println!("FAIL: {}", why);
            }
        }
        // Isolation: the SMMU's registers are at this address physically; this PD has no
        // mapping there, so the read faults and the Microkit monitor reports it.
        defmt::info!(
            "isolation: reading the SMMU's register page at {=u64:#x}, which this PD does not map",
            system::SMMU_PADDR
        );
        // SAFETY: deliberately faulting; the kernel stops this thread at the read.
        let idr0 = unsafe { (system::SMMU_PADDR as usize as *const u32).read_volatile() };
        defmt::error!(
            "the driver read SMMU_IDR0 = {=u32:#x}: isolation broken",
            idr0
        );
        iommu_platform::pd_println!("FAIL: the driver PD reached the SMMU");
        loop {
            core::hint::spin_loop();
        }
    }
}
