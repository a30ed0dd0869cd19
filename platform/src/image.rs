//! What every QEMU image does around its IOMMU, written once for all architectures.
//!
//! An image discovers its machine (ACPI/DMAR on x86, the device tree on Arm), brings edu and
//! its IOMMU units up, and hands the rest to this module:
//!
//! 1. [`Memory::take`]: the image's statically allocated memory (client 1's 8 MiB region,
//!    client 2's 64 KiB, a page granted to nobody, the frame pool);
//! 2. [`passthrough_check`]: edu copies a page through RAM with the IOMMU still off, so a later
//!    failure is the IOMMU's, not the device's;
//! 3. [`serve`]: the static configuration (client 1 owns edu and its region, client 2 only its
//!    own 64 KiB), the server over the image's backend, the units' fault interrupts
//!    ([`Delivery`]), the client scenario ([`crate::scenario`]) through [`LocalTransport`]s
//!    with the server's notifications as its [`FaultSignal`], and the server's statistics;
//! 4. [`exit`]: `PASS` and the success exit, or `FAIL` with the reason.

use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, Ordering};

use iommu_hal::backend::{Backend, FaultInterrupt, UnitIndex};
use iommu_hal::pagetable::Perms;
use iommu_protocol::client::Client;
use iommu_protocol::{DeviceHandle, IovaRange};
use iommu_server::{ClientConfig, ClientId, Config, DeviceGrant, RegionGrant, Server};

use crate::arch;
use crate::dma::DmaEngine;
use crate::fault_irq::{self, FlagNotify};
use crate::fault_log::FaultLog;
use crate::local::LocalTransport;
use crate::mem::{DmaRegion, Frame, FramePool, IdentityMem};
use crate::pci::Bdf;
use crate::scenario::{self, FaultEvidence, FaultSignal, Layout, REGION_LEN};

const PAGE: usize = 4096;
/// Page-table and unit-structure frames for the server and the backend (4 MiB).
const FRAMES: usize = 1024;
/// Where the scenario puts its IOVAs: 16 MiB, far below edu's default 28-bit DMA limit.
const IOVA_BASE: u64 = 0x100_0000;

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
/// Whether [`Memory::take`] handed the memory out.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The image's memory, handed out once.
pub struct Memory {
    /// Client 1's region (8 MiB, 2 MiB aligned): the CPU fills and checks it, edu reads and
    /// writes it by DMA.
    pub client1: DmaRegion,
    /// The frames the backend and the server build their structures in.
    pub pool: FramePool,
}

impl Memory {
    /// The image's memory; `None` after the first call.
    pub fn take() -> Option<Memory> {
        if TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        let frames: *mut [Frame; FRAMES] = &raw mut FRAME_POOL;
        // SAFETY: this runs once (TAKEN); from now on CLIENT1_MEM is used only through this
        // region (by the CPU) and by DMA, and the pool's memory only by the pool.
        unsafe {
            Some(Memory {
                client1: DmaRegion::new((&raw mut CLIENT1_MEM).cast(), REGION_LEN),
                pool: FramePool::new(&mut *frames),
            })
        }
    }
}

/// The byte pattern of the untranslated check at byte `i`.
fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7) ^ (i >> 8) as u8 ^ 0x5a
}

/// edu copies a page RAM -> device -> RAM untranslated (`state` says why, e.g. "IOMMU off").
pub fn passthrough_check<E: DmaEngine>(
    edu: &mut E,
    mem: &mut DmaRegion,
    state: &str,
) -> Result<(), &'static str> {
    let (src, dst) = (0, PAGE);
    mem.fill(src, PAGE, pattern);
    mem.fill(dst, PAGE, |_| 0);
    let t0 = arch::time::micros();
    edu.device_read(mem.phys(src), 0, PAGE as u32)
        .map_err(|_| "edu DMA RAM -> device failed")?;
    edu.device_write(0, mem.phys(dst), PAGE as u32)
        .map_err(|_| "edu DMA device -> RAM failed")?;
    let t1 = arch::time::micros();
    if let Some((i, got)) = mem.first_mismatch(dst, PAGE, pattern) {
        defmt::error!(
            "byte {=usize}: got {=u8:#04x}, expected {=u8:#04x}",
            i,
            got,
            pattern(i)
        );
        return Err("untranslated DMA round trip corrupted data (edu's DMA mask too small?)");
    }
    defmt::info!(
        "untranslated DMA ({=str}): {=usize} bytes {=u64:#x} -> edu -> {=u64:#x} intact ({=u64} us)",
        state,
        PAGE,
        mem.phys(src),
        mem.phys(dst),
        t1 - t0
    );
    Ok(())
}

/// Fault records the image keeps, raw, to print when a step fails.
const FAULT_LOG: usize = 16;

/// The server every image runs: its backend wrapped in a [`FaultLog`], its notifications
/// [`FlagNotify`] flags.
pub type ImageServer<'a, B> =
    Server<'a, FaultLog<B, FAULT_LOG>, IdentityMem, FramePool, FlagNotify>;

/// How the units' faults reach the server.
#[derive(Clone, Copy, Debug)]
pub enum Delivery<'d> {
    /// By interrupt: each listed unit's fault interrupt is programmed as given
    /// ([`Backend::enable_fault_interrupt`]), the architecture's handler calls
    /// [`fault_irq::on_interrupt`], and the CPU takes interrupts while the scenario runs.
    Interrupts(&'d [(UnitIndex, FaultInterrupt)]),
    /// Without interrupts: the client's wait for a notification drains the units itself
    /// (`service_faults`), as polling would.
    Polling,
}

/// The client's view of the server's notifications (see [`FaultSignal`]).
struct Signal<'s, 'a, B: Backend> {
    server: &'s RefCell<ImageServer<'a, B>>,
    client: ClientId,
    poll: bool,
}

impl<B: Backend> Signal<'_, '_, B> {
    fn check(&mut self) -> bool {
        if self.poll {
            crate::without_interrupts(|| {
                if let Ok(mut s) = self.server.try_borrow_mut() {
                    s.service_faults();
                }
            });
        }
        fault_irq::take_notification(self.client)
    }
}

impl<B: Backend> FaultSignal for Signal<'_, '_, B> {
    fn wait(&mut self, timeout_us: u64) -> bool {
        let start = arch::time::micros();
        loop {
            if self.check() {
                return true;
            }
            if arch::time::micros().saturating_sub(start) >= timeout_us {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    fn take(&mut self) -> bool {
        self.check()
    }

    fn report_faults(&mut self) {
        crate::without_interrupts(|| {
            let Ok(mut s) = self.server.try_borrow_mut() else {
                return;
            };
            s.service_faults();
            let log = s.backend();
            defmt::warn!(
                "fault records the units reported: {=u64} in all, the last {=usize} kept:",
                log.total(),
                FAULT_LOG
            );
            for r in log.recent() {
                defmt::warn!(
                    "  unit {=usize}: id {=u32:#06x} (as a PCI requester id: {}), iova {=u64:#x}, {=str}, {}",
                    r.unit,
                    r.device,
                    Bdf::from_rid(r.device as u16),
                    r.iova,
                    if r.write { "write" } else { "read" },
                    r.reason
                );
            }
            defmt::warn!(
                "  of which routed to a client: {=u64}, owned by nobody: {=u64}",
                s.stats().faults_routed,
                s.stats().faults_unowned
            );
        });
    }
}

/// Builds the server over `backend` (its units up) and `mem` with the static configuration
/// (client 1 owns `device`, `reserved` is reserved in every domain and must not be empty),
/// sets up fault delivery (`delivery`), runs the client scenario with `edu` doing the DMA,
/// and logs the server's statistics, then the backend's (`log_backend`). The units record
/// every fault ([`FaultEvidence::Records`]).
pub fn serve<B, E>(
    backend: B,
    mem: Memory,
    device: DeviceGrant<'_>,
    reserved: &[IovaRange],
    delivery: Delivery<'_>,
    edu: &mut E,
    log_backend: impl FnOnce(&B),
) -> Result<(), &'static str>
where
    B: Backend,
    E: DmaEngine,
{
    serve_with(
        backend,
        mem,
        device,
        reserved,
        delivery,
        edu,
        FaultEvidence::Records,
        log_backend,
    )
}

/// [`serve`], for units that tell about refused DMA as `faults` says.
#[allow(clippy::too_many_arguments)]
pub fn serve_with<B, E>(
    backend: B,
    mem: Memory,
    device: DeviceGrant<'_>,
    reserved: &[IovaRange],
    delivery: Delivery<'_>,
    edu: &mut E,
    faults: FaultEvidence,
    log_backend: impl FnOnce(&B),
) -> Result<(), &'static str>
where
    B: Backend,
    E: DmaEngine,
{
    let reserved_iova = reserved.first().ok_or("no reserved IOVA window")?.first;
    let Memory {
        client1: mut mem1,
        pool,
    } = mem;
    // The configuration, built here at run time (the device's id and the memory addresses are
    // only known now) and borrowed by the server for as long as it runs: client 1 owns
    // `device` and its region, client 2 only its own 64 KiB.
    let devices = [device];
    let regions1 = [RegionGrant {
        base: mem1.phys(0),
        len: mem1.len() as u64,
        perms: Perms::RW,
    }];
    let regions2 = [RegionGrant {
        base: (&raw const CLIENT2_MEM) as u64,
        len: core::mem::size_of::<Pages<16>>() as u64,
        perms: Perms::RW,
    }];
    let clients = [
        ClientConfig {
            id: ClientId(1),
            devices: &devices,
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
        reserved,
    };
    // SAFETY: memory is identity mapped; the server touches only frames from the pool.
    let server: ImageServer<'_, B> = Server::new(
        FaultLog::new(backend),
        unsafe { IdentityMem::new() },
        pool,
        FlagNotify,
        config,
    )
    .map_err(|e| {
        defmt::error!("server: {}", e);
        "server refused the configuration"
    })?;
    crate::scenario::log_server_up(server.table_config());
    let mut server = server;
    let interrupts = match delivery {
        Delivery::Interrupts(units) => {
            for &(unit, irq) in units {
                server
                    .backend_mut()
                    .enable_fault_interrupt(unit, irq)
                    .map_err(|e| {
                        defmt::error!(
                            "unit {=usize}: fault interrupt {}: {}",
                            unit,
                            irq,
                            defmt::Display2Format(&e)
                        );
                        "cannot enable a unit's fault interrupt"
                    })?;
                defmt::info!("unit {=usize}: fault interrupt enabled: {}", unit, irq);
            }
            // Records from before the interrupt was enabled raise none: drain them now.
            server.service_faults();
            true
        }
        Delivery::Polling => {
            defmt::warn!("no fault interrupt: the client's waits drain the units (polling)");
            false
        }
    };
    let server = RefCell::new(server);

    let mut client1 = Client::new(LocalTransport::new(&server, ClientId(1)));
    let mut client2 = Client::new(LocalTransport::new(&server, ClientId(2)));
    let mut stranger = Client::new(LocalTransport::new(&server, ClientId(99)));
    let layout = Layout {
        device: DeviceHandle(0),
        foreign_device: DeviceHandle(1),
        iova_base: IOVA_BASE,
        forbidden_phys: (&raw const SECRET) as u64,
        reserved_iova,
        faults,
    };
    let mut signal = Signal {
        server: &server,
        client: ClientId(1),
        poll: !interrupts,
    };
    let taken = fault_irq::interrupts_taken();
    let t0 = arch::time::micros();
    let result = fault_irq::serving(&server, || {
        if interrupts {
            arch::irq::enable();
        }
        let r = scenario::run(
            &mut client1,
            &mut client2,
            &mut stranger,
            edu,
            &mut signal,
            &mut mem1,
            layout,
        );
        arch::irq::disable();
        r
    });
    let t1 = arch::time::micros();

    let server = &*server.borrow();
    if interrupts {
        defmt::info!(
            "fault interrupts taken: {=u32}",
            fault_irq::interrupts_taken() - taken
        );
    }
    defmt::info!("server stats: {}", server.stats());
    defmt::info!(
        "frames: {=usize} in use, peak {=usize} of {=usize}",
        server.alloc().in_use(),
        server.alloc().peak(),
        server.alloc().capacity()
    );
    log_backend(server.backend().inner());
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

/// Reports the image's outcome (`PASS`, or `FAIL` and the reason, on the console and in the
/// defmt log) and ends the machine with the matching exit status.
pub fn exit(result: Result<(), &'static str>) -> ! {
    match result {
        Ok(()) => {
            defmt::println!("PASS");
            crate::console!("PASS");
            arch::exit_success()
        }
        Err(why) => {
            defmt::error!("FAIL: {=str}", why);
            crate::console!("FAIL: {}", why);
            arch::exit_failure()
        }
    }
}
