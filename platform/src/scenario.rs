//! The driver-client scenario every QEMU image runs, written once for all architectures.
//!
//! A client talks to the IOMMU server only through encoded protocol messages (any
//! [`Transport`]) and has a real device do DMA (any [`DmaEngine`]) through the IOVAs it
//! mapped. Each step checks what the device actually read and wrote, byte for byte, and what
//! the server reported:
//!
//! 1. map a buffer; the device copies it in and back out through the IOVA; no fault;
//! 2. unmap it; the same DMA faults both ways, memory is untouched, and the client is notified
//!    (the unit's fault interrupt made the server route the records) and receives the faults
//!    through the `Faults` request;
//! 3. map 4 MiB (2 MiB aligned on both sides, so the server may use large pages), unmap one
//!    4 KiB page inside it: DMA still works on both sides of the hole and the hole faults;
//! 4. map, DMA, unmap over the same IOVA again and again with different memory behind it (large
//!    and small pages in turn): a stale IOTLB entry would show the previous memory;
//! 5. hostile requests (memory not granted, a device not owned, another client's domain, an
//!    unknown client, malformed bytes, misaligned, overlapping and reserved ranges) are refused
//!    with their specific errors and change nothing;
//! 6. detaching blocks the device.
//!
//! Faults reach the client the way a driver on a microkernel gets them: a step that expects
//! faults waits (bounded) for the server's notification ([`FaultSignal`]), then reads the
//! `Faults` reply; it never polls the server. When a step fails, the platform is first asked
//! to print the units' raw fault records ([`FaultSignal::report_faults`]), so a DMA blocked
//! under an unexpected requester id shows that id.
//!
//! The memory the client owns is a [`DmaRegion`] it fills and checks through the CPU; the
//! region must be identity mapped and 2 MiB aligned, at least [`REGION_LEN`] bytes.
//!
//! Refused DMA is always checked by the data (reads see zeros, writes do not land). Whether
//! fault records (and their notification) must come back too depends on what the unit can
//! report ([`Layout::faults`]): a unit whose fault log records nothing (QEMU 10.0's AMD-Vi
//! event log) runs the same steps with the records optional and without waiting for a
//! notification.

use heapless::Vec;
use iommu_protocol::client::{Client, ClientError, Faults, Translation, Transport};
use iommu_protocol::{
    ByteLen, DeviceHandle, DomainHandle, Error, FaultReason, FaultRecord, Iova, MAX_MESSAGE, Perms,
    PhysAddr, Reply, decode_reply,
};

use crate::dma::DmaEngine;
use crate::mem::DmaRegion;

const SZ_4K: u64 = 0x1000;
const SZ_2M: u64 = 0x20_0000;
const PAGE: usize = SZ_4K as usize;

/// How long a step waits for the fault notification after the DMA that faulted completed.
pub const NOTIFY_TIMEOUT_US: u64 = 2_000_000;

/// The client's side of the server's fault notification.
pub trait FaultSignal {
    /// Waits at most `timeout_us` for the notification that faults are queued for the
    /// client; returns whether it came (and consumes it).
    fn wait(&mut self, timeout_us: u64) -> bool;
    /// Consumes a pending notification without waiting; returns whether there was one.
    fn take(&mut self) -> bool;
    /// A step failed: drain the units and print every fault record they reported, raw.
    fn report_faults(&mut self);
}

/// Bytes of client memory the scenario needs (8 MiB).
pub const REGION_LEN: usize = 0x80_0000;
/// IOVA space the scenario uses above [`Layout::iova_base`] (16 MiB).
pub const IOVA_SPAN: u64 = 0x100_0000;

// Offsets in the client's region.
/// Step 3's 4 MiB buffer (2 MiB aligned).
const BIG: usize = 0;
/// Step 4's 2 MiB block (2 MiB aligned).
const BLOCK: usize = 0x40_0000;
/// Step 1's source and destination pages.
const SRC: usize = 0x60_0000;
const DST: usize = 0x60_1000;
/// The bounce page through which the device's buffer is read back, mapped throughout.
const BOUNCE: usize = 0x60_2000;
/// A page whose content the device loads before writing elsewhere.
const STAGE: usize = 0x60_3000;
/// Step 4's small pages, one per cycle.
const CYCLE_PAGES: usize = 0x61_0000;

// IOVAs relative to the base.
const IOVA_STEP1: u64 = 0;
const IOVA_BIG: u64 = 0x40_0000;
const IOVA_CYCLE: u64 = 0x80_0000;
const IOVA_BOUNCE: u64 = 0xa0_0000;
const IOVA_STAGE: u64 = 0xa0_1000;
const IOVA_HOSTILE: u64 = 0xc0_0000;
/// The hole punched into step 3's mapping: the last page of the first 2 MiB.
const HOLE: u64 = 0x1f_f000;

/// What the unit tells about the DMA it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum FaultEvidence {
    /// Every refused access is recorded: the scenario requires the fault records.
    Records,
    /// The unit refuses DMA but its fault log records nothing (QEMU 10.0's AMD-Vi event log):
    /// refused DMA is shown by the data alone; records that do come back are still checked.
    DataOnly,
    /// Every refused access is recorded, but not whether it read or wrote (QEMU 10.0's RISC-V
    /// IOMMU records every translation fault as a write): the records are required and
    /// matched by device, page and reason.
    RecordsWithoutDirection,
}

/// Where the scenario's client finds its device, memory and IOVA space.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The client's handle of its DMA device.
    pub device: DeviceHandle,
    /// A handle that names none of the client's devices.
    pub foreign_device: DeviceHandle,
    /// Start of the IOVA space the scenario uses ([`IOVA_SPAN`] bytes, 2 MiB aligned, all
    /// reachable by the device and usable in the server's domains).
    pub iova_base: u64,
    /// Physical address of a page the client was not granted.
    pub forbidden_phys: u64,
    /// An IOVA inside a window the server reserves (e.g. the x86 MSI window).
    pub reserved_iova: u64,
    /// Whether refused DMA must come back as fault records.
    pub faults: FaultEvidence,
}

/// Which step failed, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Failure {
    /// Step number (0 = setup).
    pub step: u8,
    /// What went wrong.
    pub what: &'static str,
}

/// Counts reported when the scenario passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, defmt::Format)]
pub struct Summary {
    /// DMA transfers the device performed.
    pub transfers: u32,
    /// Bytes the device moved.
    pub bytes: u64,
    /// Fault records the client received.
    pub faults: u32,
    /// Hostile requests refused.
    pub refused: u32,
}

/// The pattern of step/cycle `seed` at byte `i`.
fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed.wrapping_mul(0x3b) ^ 0xa5
}

struct Ctx<'a, T: Transport, E: DmaEngine, S: FaultSignal> {
    client: &'a mut Client<T>,
    dma: &'a mut E,
    signal: &'a mut S,
    mem: &'a mut DmaRegion,
    layout: Layout,
    step: u8,
    summary: Summary,
}

impl<T: Transport, E: DmaEngine, S: FaultSignal> Ctx<'_, T, E, S> {
    fn fail(&self, what: &'static str) -> Failure {
        defmt::error!("step {=u8}: {=str}", self.step, what);
        Failure {
            step: self.step,
            what,
        }
    }

    fn client_failed(&self, what: &'static str, e: ClientError) -> Failure {
        defmt::error!("step {=u8}: {=str}: {}", self.step, what, e);
        Failure {
            step: self.step,
            what,
        }
    }

    fn iova(&self, off: u64) -> u64 {
        self.layout.iova_base + off
    }

    fn map(
        &mut self,
        d: DomainHandle,
        iova_off: u64,
        mem_off: usize,
        len: u64,
    ) -> Result<(), Failure> {
        let (iova, phys) = (self.iova(iova_off), self.mem.phys(mem_off));
        defmt::debug!("  map {=u64:#x}+{=u64:#x} -> {=u64:#x}", iova, len, phys);
        self.client
            .map(d, Iova(iova), PhysAddr(phys), ByteLen(len), Perms::RW)
            .map_err(|e| self.client_failed("map refused", e))
    }

    fn unmap(
        &mut self,
        d: DomainHandle,
        iova_off: u64,
        len: u64,
        expect: u64,
    ) -> Result<(), Failure> {
        let iova = self.iova(iova_off);
        defmt::debug!("  unmap {=u64:#x}+{=u64:#x}", iova, len);
        match self.client.unmap(d, Iova(iova), ByteLen(len)) {
            Ok(ByteLen(n)) if n == expect => Ok(()),
            Ok(ByteLen(n)) => {
                defmt::error!(
                    "unmap returned {=u64:#x} bytes, expected {=u64:#x}",
                    n,
                    expect
                );
                Err(self.fail("unmap reported the wrong byte count"))
            }
            Err(e) => Err(self.client_failed("unmap refused", e)),
        }
    }

    /// The device reads `len` bytes at IOVA offset `iova_off` into its buffer at 0.
    fn dev_read(&mut self, iova_off: u64, len: usize) -> Result<(), Failure> {
        let iova = self.iova(iova_off);
        self.summary.transfers += 1;
        self.summary.bytes += len as u64;
        self.dma.device_read(iova, 0, len as u32).map_err(|e| {
            defmt::error!(
                "device read of {=u64:#x}: {}",
                iova,
                defmt::Debug2Format(&e)
            );
            self.fail("device read did not complete")
        })
    }

    /// The device writes `len` bytes of its buffer at 0 to IOVA offset `iova_off`.
    fn dev_write(&mut self, iova_off: u64, len: usize) -> Result<(), Failure> {
        let iova = self.iova(iova_off);
        self.summary.transfers += 1;
        self.summary.bytes += len as u64;
        self.dma.device_write(0, iova, len as u32).map_err(|e| {
            defmt::error!(
                "device write to {=u64:#x}: {}",
                iova,
                defmt::Debug2Format(&e)
            );
            self.fail("device write did not complete")
        })
    }

    /// Loads the device's buffer with `pattern(seed)` through the stage page.
    fn load_buffer(&mut self, seed: u8) -> Result<(), Failure> {
        self.mem.fill(STAGE, PAGE, |i| pattern(seed, i));
        self.dev_read(IOVA_STAGE, PAGE)
    }

    /// Copies the device's buffer out through the bounce page and checks it against `f`.
    fn check_buffer(&mut self, what: &'static str, f: impl Fn(usize) -> u8) -> Result<(), Failure> {
        self.mem.fill(BOUNCE, PAGE, |_| 0x5c);
        self.dev_write(IOVA_BOUNCE, PAGE)?;
        self.check_mem(BOUNCE, what, f)
    }

    /// Checks one page of client memory at `off` against `f`.
    fn check_mem(
        &self,
        off: usize,
        what: &'static str,
        f: impl Fn(usize) -> u8,
    ) -> Result<(), Failure> {
        match self.mem.first_mismatch(off, PAGE, &f) {
            None => Ok(()),
            Some((i, got)) => {
                defmt::error!(
                    "{=str}: byte {=usize} is {=u8:#04x}, expected {=u8:#04x}",
                    what,
                    i,
                    got,
                    f(i)
                );
                Err(self.fail(what))
            }
        }
    }

    /// Takes every pending fault record.
    /// Takes every pending fault record. The log shows a run of records that differ at most
    /// in the IOVA's offset within one page (a byte-wise DMA faults once per access) as one
    /// line: the first record, the count and the last IOVA.
    fn faults(&mut self) -> Result<Vec<FaultRecord, 64>, Failure> {
        /// The first record of a run, its count and its last IOVA.
        type Run = (FaultRecord, u32, u64);
        fn log(run: Option<Run>) {
            match run {
                Some((r, 1, _)) => defmt::info!("  fault: {}", r),
                Some((r, n, last)) => defmt::info!(
                    "  fault: {} and {=u32} more in its page, the last at {=u64:#x}",
                    r,
                    n - 1,
                    last
                ),
                None => {}
            }
        }
        fn same_run(a: &FaultRecord, b: &FaultRecord) -> bool {
            a.device == b.device
                && a.write == b.write
                && a.reason == b.reason
                && a.iova & !(SZ_4K - 1) == b.iova & !(SZ_4K - 1)
        }
        let mut all = Vec::new();
        let mut run: Option<Run> = None;
        loop {
            let Faults { records, lost } = self.client.faults().map_err(|e| {
                log(run.take());
                self.client_failed("Faults refused", e)
            })?;
            if lost > 0 {
                log(run.take());
                defmt::warn!("  {=u32} fault record(s) lost", lost);
            }
            let n = records.len();
            for r in records {
                match &mut run {
                    Some((first, count, last)) if same_run(first, &r) => {
                        *count += 1;
                        *last = r.iova;
                    }
                    _ => log(run.replace((r, 1, r.iova))),
                }
                let _ = all.push(r);
            }
            self.summary.faults += n as u32;
            if n == 0 || all.is_full() {
                log(run);
                return Ok(all);
            }
        }
    }

    /// Waits for the server's notification that faults are queued.
    fn await_faults(&mut self) -> Result<(), Failure> {
        if self.layout.faults == FaultEvidence::DataOnly {
            // Nothing may come: no waiting (a notification that did come is consumed).
            let _ = self.signal.take();
            return Ok(());
        }
        if self.signal.wait(NOTIFY_TIMEOUT_US) {
            Ok(())
        } else {
            Err(self.fail("no fault notification (fault interrupt not delivered?)"))
        }
    }

    fn expect_no_faults(&mut self) -> Result<(), Failure> {
        let notified = self.signal.take();
        if self.faults()?.is_empty() {
            return Ok(());
        }
        if !notified {
            defmt::error!("fault records were queued without a notification");
        }
        Err(self.fail("unexpected fault records"))
    }

    /// Expects fault records for IOVA offset `iova_off`'s page, direction `write`, reason
    /// `reason`, and none for any other page.
    fn expect_fault(
        &mut self,
        iova_off: u64,
        write: bool,
        reason: FaultReason,
    ) -> Result<(), Failure> {
        let page = self.iova(iova_off) & !(SZ_4K - 1);
        self.await_faults()?;
        let records = self.faults()?;
        let mut matched = false;
        for r in &records {
            if r.device != self.layout.device || r.iova & !(SZ_4K - 1) != page {
                return Err(self.fail("fault record for another device or page"));
            }
            let direction =
                r.write == write || self.layout.faults == FaultEvidence::RecordsWithoutDirection;
            matched |= direction && r.reason == reason;
        }
        if matched || (records.is_empty() && self.layout.faults == FaultEvidence::DataOnly) {
            Ok(())
        } else {
            Err(self.fail("expected fault not reported"))
        }
    }

    fn expect_refusal<R>(
        &mut self,
        what: &'static str,
        result: Result<R, ClientError>,
        expected: Error,
    ) -> Result<(), Failure> {
        match result {
            Err(ClientError::Server(e)) if e == expected => {
                defmt::info!("  refused as expected: {=str}: {}", what, e);
                self.summary.refused += 1;
                Ok(())
            }
            Err(e) => Err(self.client_failed(what, e)),
            Ok(_) => Err(self.fail(what)),
        }
    }
}

/// Runs the scenario. `client` owns `layout.device` and `mem` and is told of its faults by
/// `signal`; `intruder` is another configured client (owning no device, not granted `mem`);
/// `stranger` is a client identity the server does not know.
pub fn run<T, U, V, E, S>(
    client: &mut Client<T>,
    intruder: &mut Client<U>,
    stranger: &mut Client<V>,
    dma: &mut E,
    signal: &mut S,
    mem: &mut DmaRegion,
    layout: Layout,
) -> Result<Summary, Failure>
where
    T: Transport,
    U: Transport,
    V: Transport,
    E: DmaEngine,
    S: FaultSignal,
{
    let mut cx = Ctx {
        client,
        dma,
        signal,
        mem,
        layout,
        step: 0,
        summary: Summary::default(),
    };
    let r = steps(&mut cx, intruder, stranger);
    if r.is_err() {
        cx.signal.report_faults();
    }
    r.map(|()| cx.summary)
}

fn steps<T, U, V, E, S>(
    cx: &mut Ctx<'_, T, E, S>,
    intruder: &mut Client<U>,
    stranger: &mut Client<V>,
) -> Result<(), Failure>
where
    T: Transport,
    U: Transport,
    V: Transport,
    E: DmaEngine,
    S: FaultSignal,
{
    let layout = cx.layout;
    if cx.mem.len() < REGION_LEN || cx.mem.phys(0) % SZ_2M != 0 || layout.iova_base % SZ_2M != 0 {
        return Err(cx.fail("region or IOVA base too small or not 2 MiB aligned"));
    }
    if cx.dma.buffer_len() < PAGE as u32 {
        return Err(cx.fail("DMA engine buffer smaller than a page"));
    }

    // Setup: version, capabilities, one domain with the device and the two helper pages.
    let version = cx
        .client
        .hello()
        .map_err(|e| cx.client_failed("hello", e))?;
    let info = cx.client.info().map_err(|e| cx.client_failed("info", e))?;
    defmt::info!(
        "server: protocol {=u16}, {=u32} unit(s), page sizes {=u64:#x}, limits {}",
        version,
        info.units,
        info.page_sizes,
        info.limits
    );
    for k in &info.domain_kinds {
        defmt::info!(
            "  domain kind: {=u8}-bit IOVA, ranges {}",
            k.address_width,
            k.ranges.as_slice()
        );
    }
    let dom = cx
        .client
        .create_domain()
        .map_err(|e| cx.client_failed("create domain", e))?;
    cx.client
        .attach(dom, layout.device)
        .map_err(|e| cx.client_failed("attach", e))?;
    cx.map(dom, IOVA_BOUNCE, BOUNCE, 2 * SZ_4K)?; // bounce + stage pages
    defmt::info!(
        "setup: domain {=u32}, device {=u32} attached",
        dom.0,
        layout.device.0
    );
    cx.expect_no_faults()?;

    step1(cx, dom)?;
    step2(cx, dom)?;
    step3(cx, dom)?;
    step4(cx, dom)?;
    step5(cx, dom, intruder, stranger)?;
    step6(cx, dom)
}

/// 1. Map a buffer; DMA in and out through the IOVA; every byte checked; no fault.
fn step1<T: Transport, E: DmaEngine, S: FaultSignal>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
) -> Result<(), Failure> {
    cx.step = 1;
    defmt::info!("step 1: map a buffer, DMA through it both ways");
    cx.mem.fill(SRC, PAGE, |i| pattern(1, i));
    cx.mem.fill(DST, PAGE, |_| 0);
    cx.map(dom, IOVA_STEP1, SRC, 2 * SZ_4K)?;
    let Translation { phys, perms } = cx
        .client
        .query(dom, Iova(cx.iova(IOVA_STEP1 + 0x123)))
        .map_err(|e| cx.client_failed("query", e))?;
    if phys != PhysAddr(cx.mem.phys(SRC + 0x123)) || perms != Perms::RW {
        return Err(cx.fail("query returned the wrong translation"));
    }
    cx.dev_read(IOVA_STEP1, PAGE)?;
    cx.dev_write(IOVA_STEP1 + SZ_4K, PAGE)?;
    cx.check_mem(DST, "page copied through the IOMMU", |i| pattern(1, i))?;
    // An unaligned piece: 0x123 bytes from SRC+0x35 to DST+0x800.
    cx.dma
        .device_read(cx.iova(IOVA_STEP1 + 0x35), 0x400, 0x123)
        .map_err(|_| cx.fail("device read did not complete"))?;
    cx.dma
        .device_write(0x400, cx.iova(IOVA_STEP1 + SZ_4K + 0x800), 0x123)
        .map_err(|_| cx.fail("device write did not complete"))?;
    cx.summary.transfers += 2;
    cx.summary.bytes += 2 * 0x123;
    match cx
        .mem
        .first_mismatch(DST + 0x800, 0x123, |i| pattern(1, i + 0x35))
    {
        None => {}
        Some(_) => return Err(cx.fail("unaligned piece copied wrongly")),
    }
    cx.expect_no_faults()?;
    defmt::info!(
        "step 1 passed: 4096 + 291 bytes in and out through IOVA {=u64:#x}",
        cx.iova(IOVA_STEP1)
    );
    Ok(())
}

/// 2. Unmap; the same DMA now faults both ways, memory untouched, faults delivered.
fn step2<T: Transport, E: DmaEngine, S: FaultSignal>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
) -> Result<(), Failure> {
    cx.step = 2;
    defmt::info!("step 2: unmap, DMA again: blocked, faults reported");
    cx.unmap(dom, IOVA_STEP1, 2 * SZ_4K, 2 * SZ_4K)?;
    match cx.client.query(dom, Iova(cx.iova(IOVA_STEP1))) {
        Err(ClientError::Server(Error::NotMapped)) => {}
        _ => return Err(cx.fail("query still finds the unmapped page")),
    }
    // Device write to the unmapped destination: must not land (a stale IOTLB would let it).
    cx.mem.fill(DST, PAGE, |_| 0xee);
    cx.load_buffer(2)?;
    cx.dev_write(IOVA_STEP1 + SZ_4K, PAGE)?;
    cx.check_mem(DST, "memory after a blocked device write", |_| 0xee)?;
    cx.expect_fault(IOVA_STEP1 + SZ_4K, true, FaultReason::NotPresent)?;
    // Device read from the unmapped source: must not see the data.
    cx.dev_read(IOVA_STEP1, PAGE)?;
    cx.expect_fault(IOVA_STEP1, false, FaultReason::NotPresent)?;
    cx.check_buffer("device buffer after a blocked read", |_| 0)?;
    cx.expect_no_faults()?;
    defmt::info!("step 2 passed: both directions blocked and reported");
    Ok(())
}

/// 3. 4 MiB mapped with large pages, one 4 KiB page unmapped in the middle.
fn step3<T: Transport, E: DmaEngine, S: FaultSignal>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
) -> Result<(), Failure> {
    cx.step = 3;
    defmt::info!("step 3: map 4 MiB, unmap one 4 KiB page inside a 2 MiB page");
    let seed = |page: u64| (page / SZ_4K) as u8 ^ 0x30;
    let probes = [0, HOLE - SZ_4K, HOLE, SZ_2M, 2 * SZ_2M - SZ_4K];
    for &p in &probes {
        cx.mem.fill(BIG + p as usize, PAGE, |i| pattern(seed(p), i));
    }
    cx.map(dom, IOVA_BIG, BIG, 2 * SZ_2M)?;
    cx.unmap(dom, IOVA_BIG + HOLE, SZ_4K, SZ_4K)?;
    for &p in &probes {
        let r = cx.client.query(dom, Iova(cx.iova(IOVA_BIG + p)));
        let ok = match r {
            Err(ClientError::Server(Error::NotMapped)) => p == HOLE,
            Ok(t) => p != HOLE && t.phys == PhysAddr(cx.mem.phys(BIG + p as usize)),
            Err(_) => false,
        };
        if !ok {
            return Err(cx.fail("query disagrees with the mapping around the hole"));
        }
    }
    // Reads on both sides of the hole and at both ends.
    for &p in probes.iter().filter(|&&p| p != HOLE) {
        cx.dev_read(IOVA_BIG + p, PAGE)?;
        cx.check_buffer("read through the split mapping", |i| pattern(seed(p), i))?;
    }
    // Writes on both sides of the hole.
    for (k, &p) in [HOLE - SZ_4K, SZ_2M].iter().enumerate() {
        cx.load_buffer(0x70 + k as u8)?;
        cx.dev_write(IOVA_BIG + p, PAGE)?;
        cx.check_mem(BIG + p as usize, "write through the split mapping", |i| {
            pattern(0x70 + k as u8, i)
        })?;
    }
    cx.expect_no_faults()?;
    // The hole: a write must not land, a read must not see the memory.
    cx.load_buffer(0x7f)?;
    cx.dev_write(IOVA_BIG + HOLE, PAGE)?;
    cx.check_mem(
        BIG + HOLE as usize,
        "memory behind the hole after a write",
        |i| pattern(seed(HOLE), i),
    )?;
    cx.expect_fault(IOVA_BIG + HOLE, true, FaultReason::NotPresent)?;
    cx.dev_read(IOVA_BIG + HOLE, PAGE)?;
    cx.expect_fault(IOVA_BIG + HOLE, false, FaultReason::NotPresent)?;
    cx.check_buffer("device buffer after reading the hole", |_| 0)?;
    cx.expect_no_faults()?;
    cx.unmap(dom, IOVA_BIG, 2 * SZ_2M, 2 * SZ_2M - SZ_4K)?;
    defmt::info!("step 3 passed: both sides of the hole work, the hole faults");
    Ok(())
}

/// 4. Map/DMA/unmap cycles over one IOVA with different memory behind it each time.
fn step4<T: Transport, E: DmaEngine, S: FaultSignal>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
) -> Result<(), Failure> {
    cx.step = 4;
    defmt::info!("step 4: map/DMA/unmap cycles over one IOVA, new memory each time");
    // (memory offset, mapping length): 2 MiB and 4 KiB mappings alternate.
    let cycles: [(usize, u64); 6] = [
        (BLOCK, SZ_2M),
        (CYCLE_PAGES, SZ_4K),
        (CYCLE_PAGES + PAGE, SZ_4K),
        (BLOCK, SZ_2M),
        (CYCLE_PAGES + 2 * PAGE, SZ_4K),
        (CYCLE_PAGES + 3 * PAGE, SZ_4K),
    ];
    let mut previous: Option<(usize, u8)> = None;
    for (k, &(off, len)) in cycles.iter().enumerate() {
        let seed = 0x40 + k as u8;
        cx.mem.fill(off, PAGE, |i| pattern(seed, i));
        cx.map(dom, IOVA_CYCLE, off, len)?;
        // Read: the device must see this cycle's memory.
        cx.dev_read(IOVA_CYCLE, PAGE)?;
        cx.check_buffer("read after remapping (stale IOTLB?)", |i| pattern(seed, i))?;
        // Write: must land in this cycle's memory, not the previous cycle's.
        cx.load_buffer(seed ^ 0x80)?;
        cx.dev_write(IOVA_CYCLE, PAGE)?;
        cx.check_mem(off, "write after remapping", |i| pattern(seed ^ 0x80, i))?;
        if let Some((prev, prev_seed)) = previous
            && prev != off
        {
            cx.check_mem(prev, "previous cycle's memory (stale IOTLB?)", |i| {
                pattern(prev_seed ^ 0x80, i)
            })?;
        }
        cx.unmap(dom, IOVA_CYCLE, len, len)?;
        previous = Some((off, seed));
    }
    cx.expect_no_faults()?;
    defmt::info!(
        "step 4 passed: {=usize} cycles, every DMA saw the current mapping",
        cycles.len()
    );
    Ok(())
}

/// 5. Hostile requests are refused and change nothing.
fn step5<T, U, V, E, S>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
    intruder: &mut Client<U>,
    stranger: &mut Client<V>,
) -> Result<(), Failure>
where
    T: Transport,
    U: Transport,
    V: Transport,
    E: DmaEngine,
    S: FaultSignal,
{
    cx.step = 5;
    defmt::info!("step 5: hostile requests");
    let iova = Iova(cx.iova(IOVA_HOSTILE));
    let l = cx.layout;
    let end = PhysAddr(cx.mem.phys(0) + cx.mem.len() as u64);
    let stage = PhysAddr(cx.mem.phys(STAGE));
    let (page, two_pages) = (ByteLen(SZ_4K), ByteLen(2 * SZ_4K));
    let r = cx
        .client
        .map(dom, iova, PhysAddr(l.forbidden_phys), page, Perms::RW);
    cx.expect_refusal("map memory not granted", r, Error::NotPermitted)?;
    let r = cx
        .client
        .map(dom, iova, PhysAddr(end.0 - SZ_4K), two_pages, Perms::RW);
    cx.expect_refusal("map a range running past the grant", r, Error::NotPermitted)?;
    let r = cx.client.attach(dom, l.foreign_device);
    cx.expect_refusal("attach a device not owned", r, Error::NoSuchDevice)?;
    let r = cx
        .client
        .map(dom, Iova(iova.0 + 0x10), stage, page, Perms::RW);
    cx.expect_refusal("map a misaligned IOVA", r, Error::Misaligned)?;
    let bounce = Iova(cx.iova(IOVA_BOUNCE));
    let r = cx.client.map(dom, bounce, stage, page, Perms::RW);
    cx.expect_refusal("map over an existing mapping", r, Error::Overlap)?;
    let r = cx
        .client
        .map(dom, Iova(l.reserved_iova), stage, page, Perms::RW);
    cx.expect_refusal("map inside a reserved IOVA window", r, Error::OutOfRange)?;
    let r = cx.client.destroy_domain(dom);
    cx.expect_refusal(
        "destroy a domain with a device attached",
        r,
        Error::DomainBusy,
    )?;

    // Another configured client: cannot reach this client's domain, device or memory.
    let r = intruder.map(dom, iova, stage, page, Perms::RW);
    cx.expect_refusal(
        "intruder maps into another client's domain",
        r,
        Error::NoSuchDomain,
    )?;
    let r = intruder.unmap(dom, bounce, page);
    cx.expect_refusal(
        "intruder unmaps in another client's domain",
        r,
        Error::NoSuchDomain,
    )?;
    let r = intruder.detach(l.device);
    cx.expect_refusal(
        "intruder detaches another client's device",
        r,
        Error::NoSuchDevice,
    )?;
    let own = intruder
        .create_domain()
        .map_err(|e| cx.client_failed("intruder's own domain", e))?;
    let r = intruder.map(own, iova, stage, page, Perms::RW);
    cx.expect_refusal(
        "intruder maps another client's memory",
        r,
        Error::NotPermitted,
    )?;
    let r = intruder.attach(own, l.device);
    cx.expect_refusal(
        "intruder attaches a device it does not own",
        r,
        Error::NoSuchDevice,
    )?;
    intruder
        .destroy_domain(own)
        .map_err(|e| cx.client_failed("intruder destroys its own domain", e))?;

    // A client the server does not know.
    let r = stranger.hello();
    cx.expect_refusal("unknown client", r, Error::NotPermitted)?;

    // Bytes that are no message.
    let mut reply = [0u8; MAX_MESSAGE];
    let garbage = [0xff_u8, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00];
    let n = cx
        .client
        .transport_mut()
        .call(&garbage, &mut reply)
        .map_err(|_| cx.fail("transport refused garbage"))?;
    match decode_reply(&reply[..n]) {
        Ok(Reply::Error(Error::BadMessage)) => {
            defmt::info!("  refused as expected: malformed message: BadMessage");
            cx.summary.refused += 1;
        }
        _ => return Err(cx.fail("malformed message not answered with BadMessage")),
    }

    // Nothing changed: the hostile IOVA is unmapped, the helper pages still work.
    match cx.client.query(dom, iova) {
        Err(ClientError::Server(Error::NotMapped)) => {}
        _ => return Err(cx.fail("a refused request left a mapping")),
    }
    cx.load_buffer(0x55)?;
    cx.check_buffer("helper pages after hostile requests", |i| pattern(0x55, i))?;
    cx.expect_no_faults()?;
    defmt::info!(
        "step 5 passed: {=u32} hostile requests refused, state unchanged",
        cx.summary.refused
    );
    Ok(())
}

/// 6. Detach blocks the device; the domain can then be destroyed.
fn step6<T: Transport, E: DmaEngine, S: FaultSignal>(
    cx: &mut Ctx<'_, T, E, S>,
    dom: DomainHandle,
) -> Result<(), Failure> {
    cx.step = 6;
    defmt::info!("step 6: detach blocks the device");
    cx.client
        .detach(cx.layout.device)
        .map_err(|e| cx.client_failed("detach", e))?;
    cx.mem.fill(BOUNCE, PAGE, |_| 0x33);
    cx.load_buffer(0x66)?; // blocked: the buffer fills with zeros
    cx.dma
        .device_write(0, cx.iova(IOVA_BOUNCE), PAGE as u32)
        .map_err(|_| cx.fail("device write did not complete"))?;
    cx.check_mem(BOUNCE, "memory after DMA of a detached device", |_| 0x33)?;
    cx.await_faults()?;
    let records = cx.faults()?;
    let required = cx.layout.faults == FaultEvidence::Records;
    if (required && records.is_empty()) || records.iter().any(|r| r.device != cx.layout.device) {
        return Err(cx.fail("blocked DMA of the detached device not reported"));
    }
    cx.unmap(dom, IOVA_BOUNCE, 2 * SZ_4K, 2 * SZ_4K)?;
    cx.client
        .destroy_domain(dom)
        .map_err(|e| cx.client_failed("destroy domain", e))?;
    defmt::info!("step 6 passed: detached device blocked, domain destroyed");
    Ok(())
}

/// Logs the page tables the server builds, once it is up (every image and the Microkit server
/// PD say the same).
pub fn log_server_up(tc: iommu_hal::pagetable::TableConfig) {
    defmt::info!(
        "server up: tables for {=u32}-bit IOVAs, leaf sizes {=u64:#x}, live block split {=bool}, coherent walk {=bool}",
        tc.addr_width,
        tc.leaf_sizes.0,
        tc.split_live_blocks,
        tc.coherent
    );
}
