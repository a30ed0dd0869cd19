//! The AMD-Vi model on its own, driven by raw register writes and hand-built tables (no hal
//! code): that it behaves as the AMD IOMMU specification says, so that the backend tests
//! over it mean something. DTE V / TV / Mode semantics, the v1 walk with level skipping and
//! Next Level 7 pages, the caches and which commands drop them, command processing with its
//! stop on illegal commands and the restart, the event log with overflow, the run-bit
//! handshakes.

use iommu_hal::RegisterAccess;
use iommu_test_harness::model::amd::regs::*;
use iommu_test_harness::model::amd::{
    AmdFault, AmdHandle, AmdModelConfig as ModelCfg, EventCode, InvalidationRecord,
};
use iommu_test_harness::sim::SharedMem;

const DEVTAB: u64 = 0x10_0000;
const CMDBUF: u64 = 0x20_0000;
const EVTLOG: u64 = 0x21_0000;
const STATUS_WORD: u64 = 0x22_0000;
const V: u64 = 1;
const TV: u64 = 2;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;
const PR: u64 = 1;

struct Unit {
    mem: SharedMem,
    hw: AmdHandle,
    tail: u64,
    seq: u64,
}

/// A unit with a one-page device table (devices 0..128 with DTE V = 0), the buffers set up and
/// everything enabled.
fn unit(cfg: ModelCfg) -> Unit {
    let mem = SharedMem::new();
    let hw = AmdHandle::new(mem.clone(), cfg);
    {
        let mut m = hw.borrow_mut();
        m.write64(MMIO_DEVTAB, DEVTAB);
        m.write64(MMIO_CMDBUF, CMDBUF | (8 << 56));
        m.write64(MMIO_EVTLOG, EVTLOG | (8 << 56));
        m.write64(
            MMIO_CONTROL,
            CTL_IOMMU_EN | CTL_CMD_BUF_EN | CTL_EVT_LOG_EN | CTL_COHERENT,
        );
    }
    Unit {
        mem,
        hw,
        tail: 0,
        seq: 0,
    }
}

impl Unit {
    fn dte(&self, dev: u16, w0: u64, domain: u16) {
        let pa = DEVTAB + u64::from(dev) * 32;
        let mut m = self.mem.borrow_mut();
        m.write(pa + 8, u64::from(domain));
        m.write(pa, w0);
    }
    fn pte(&self, table: u64, index: u64, v: u64) {
        self.mem.borrow_mut().write(table + index * 8, v);
    }
    /// Submits raw commands and a completion wait; returns whether the wait completed.
    fn commands(&mut self, cmds: &[[u64; 2]]) -> bool {
        self.seq += 1;
        let wait = [(1 << 60) | STATUS_WORD | 1, self.seq];
        for c in cmds.iter().chain([&wait]) {
            let mut m = self.mem.borrow_mut();
            m.write(CMDBUF + self.tail, c[0]);
            m.write(CMDBUF + self.tail + 8, c[1]);
            self.tail = (self.tail + 16) % 4096;
        }
        self.hw.borrow_mut().write64(MMIO_CMD_TAIL, self.tail);
        self.mem.borrow().read(STATUS_WORD) == self.seq
    }
    fn inv_pages(&mut self, domain: u16, w1: u64) -> bool {
        self.commands(&[[(3 << 60) | (u64::from(domain) << 32), w1]])
    }
}

fn table(level: u64, addr: u64) -> u64 {
    addr | PR | (level << 9) | IR | IW
}

#[test]
fn dte_valid_bits_decide_passthrough_block_and_translation() {
    let u = unit(ModelCfg::qemu());
    // V = 0: passes untranslated (why an all-zero table must never be installed).
    assert_eq!(u.hw.translate(1, 0x1234, true), Ok(0x1234));
    assert_eq!(u.hw.stats().passthrough, 1);
    // V = 1, TV = 1, Mode 0, IR = IW = 0: everything refused, IO_PAGE_FAULT with PR.
    u.dte(2, V | TV, 0);
    assert_eq!(
        u.hw.translate(2, 0x1234, false),
        Err(AmdFault::PageFault { present: true })
    );
    // Mode 0 with IR only: reads pass untranslated, writes fault.
    u.dte(3, V | TV | IR, 0);
    assert_eq!(u.hw.translate(3, 0x5000, false), Ok(0x5000));
    assert!(u.hw.translate(3, 0x5000, true).is_err());
    // Reserved / unsupported fields and Mode 7: ILLEGAL_DEV_TABLE_ENTRY.
    u.dte(4, V | TV | (7 << 9), 0);
    assert_eq!(u.hw.translate(4, 0, false), Err(AmdFault::IllegalDte));
    u.dte(5, V | TV | (1 << 55), 0);
    assert_eq!(u.hw.translate(5, 0, false), Err(AmdFault::IllegalDte));
    let codes: Vec<EventCode> = u.hw.borrow().events.iter().map(|e| e.code).collect();
    assert_eq!(
        codes,
        [
            EventCode::IoPageFault,
            EventCode::IoPageFault,
            EventCode::IllegalDevTableEntry,
            EventCode::IllegalDevTableEntry
        ]
    );
    // Beyond the one-page table: refused, and a violation of the driver.
    assert_eq!(u.hw.translate(0x80, 0, false), Err(AmdFault::BeyondTable));
    assert!(
        u.hw.violations()
            .iter()
            .any(|v| v.contains("beyond the device table"))
    );
}

#[test]
fn walk_with_level_skipping_and_sized_pages() {
    let u = unit(ModelCfg::qemu());
    // Mode 4 root at 0x30_0000; its entry 0 skips level 3 and points at a level-2 table.
    u.dte(8, V | TV | (4 << 9) | 0x30_0000 | IR | IW, 7);
    u.pte(0x30_0000, 0, table(2, 0x31_0000));
    u.pte(0x31_0000, 1, table(1, 0x32_0000)); // IOVA 0x20_0000..
    u.pte(0x32_0000, 3, 0x40_0000 | PR | IR | IW); // 4 KiB page at 0x20_3000
    // A 2 MiB page at IOVA 0x40_0000 (level-2 entry 2, Next Level 0), read-only.
    u.pte(0x31_0000, 2, 0x60_0000 | PR | IR);
    // A 16 KiB page (Next Level 7, address bit 12 set, bit 13 clear) at IOVA 0x20_8000,
    // replicated in the four entries it covers.
    for i in 8..12 {
        u.pte(0x32_0000, i, 0x70_1000 | PR | (7 << 9) | IR | IW);
    }
    assert_eq!(u.hw.translate(8, 0x20_3abc, true), Ok(0x40_0abc));
    assert_eq!(u.hw.translate(8, 0x41_2345, false), Ok(0x61_2345));
    assert!(u.hw.translate(8, 0x41_2345, true).is_err(), "read-only");
    assert_eq!(u.hw.translate(8, 0x20_a004, false), Ok(0x70_2004));
    // The skipped level's IOVA bits (38:30) must be zero.
    assert_eq!(
        u.hw.translate(8, (1 << 30) | 0x20_3000, false),
        Err(AmdFault::PageFault { present: false })
    );
    // Beyond the 48-bit width of Mode 4.
    assert!(u.hw.translate(8, 1 << 48, false).is_err());
    // A Next Level that does not go down is malformed.
    u.pte(0x31_0000, 3, table(2, 0x33_0000));
    assert!(u.hw.translate(8, 0x60_0000, false).is_err());
    assert!(u.hw.violations().iter().any(|v| v.contains("Next Level")));
}

#[test]
fn iotlb_and_pde_cache_keep_entries_until_the_right_command() {
    let mut u = unit(ModelCfg::qemu().with_np_cache(false));
    u.dte(8, V | TV | (3 << 9) | 0x30_0000 | IR | IW, 7);
    u.pte(0x30_0000, 0, table(2, 0x31_0000));
    u.pte(0x31_0000, 0, table(1, 0x32_0000));
    u.pte(0x32_0000, 1, 0x40_0000 | PR | IR | IW);
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x40_0000));
    // The leaf changes in memory: the IOTLB keeps the old one (stale) until invalidated.
    u.pte(0x32_0000, 1, 0x50_0000 | PR | IR | IW);
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x40_0000));
    assert_eq!(u.hw.stats().stale_hits, 1);
    // Another domain's invalidation, or a range that misses, changes nothing.
    assert!(u.inv_pages(6, 0x1000));
    assert!(u.inv_pages(7, 0x3000));
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x40_0000));
    assert!(u.inv_pages(7, 0x1000));
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x50_0000));
    // A new level-1 table: the cached pointer to the old one survives PDE = 0.
    u.pte(0x31_0000, 0, table(1, 0x34_0000));
    u.pte(0x34_0000, 1, 0x60_0000 | PR | IR | IW);
    assert!(u.inv_pages(7, 0x1000 | 1)); // S = 1: 0..0x3fff, leaves only
    assert_eq!(
        u.hw.translate(8, 0x1000, false),
        Ok(0x50_0000),
        "walk from the cached PDE"
    );
    assert!(u.hw.stats().pde_hits > 0);
    assert!(u.inv_pages(7, 0x1000 | 1 | 2)); // with PDE
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x60_0000));
    // The DTE cache: a changed DTE is used only after INVALIDATE_DEVTAB_ENTRY.
    u.dte(8, V | TV, 7);
    assert_eq!(u.hw.translate(8, 0x1000, false), Ok(0x60_0000));
    assert_eq!(u.hw.stats().stale_dte_hits, 1);
    assert!(u.commands(&[[(2 << 60) | 8, 0]]));
    assert!(u.hw.translate(8, 0x1000, false).is_err());
    // INVALIDATE_IOMMU_ALL drops everything.
    u.dte(8, V | TV | (3 << 9) | 0x30_0000 | IR | IW, 7);
    assert!(u.commands(&[[(2 << 60) | 8, 0]]));
    assert!(u.hw.translate(8, 0x1000, false).is_ok());
    assert!(u.commands(&[[8 << 60, 0]]));
    assert_eq!(
        (u.hw.borrow().iotlb_len(), u.hw.borrow().pde_cache_len()),
        (0, 0)
    );
    assert!(!u.hw.borrow().dte_cached(8));
}

#[test]
fn not_present_entries_are_cached_only_with_npcache() {
    for np in [false, true] {
        let mut u = unit(ModelCfg::qemu().with_np_cache(np));
        u.dte(8, V | TV | (3 << 9) | 0x30_0000 | IR | IW, 7);
        u.pte(0x30_0000, 0, table(2, 0x31_0000));
        u.pte(0x31_0000, 0, table(1, 0x32_0000));
        assert!(u.hw.translate(8, 0x2000, false).is_err());
        u.pte(0x32_0000, 2, 0x40_0000 | PR | IR | IW);
        assert_eq!(u.hw.translate(8, 0x2000, false).is_ok(), !np);
        assert!(u.inv_pages(7, 0x2000));
        assert_eq!(u.hw.translate(8, 0x2000, false), Ok(0x40_0000));
    }
}

#[test]
fn illegal_commands_stop_the_buffer_until_restarted() {
    let mut u = unit(ModelCfg::qemu().with_invalidate_all(false));
    // INVALIDATE_IOMMU_ALL without IASup: refused; the buffer stops at it.
    assert!(!u.commands(&[[8 << 60, 0]]));
    let st = u.hw.borrow_mut().read64(MMIO_STATUS);
    assert_eq!(st & ST_CMD_RUN, 0);
    assert_eq!(u.hw.borrow_mut().read64(MMIO_CMD_HEAD), 0);
    let ev = u.hw.borrow().events[0];
    assert_eq!(ev.code, EventCode::IllegalCommandError);
    assert_eq!(ev.addr, CMDBUF);
    // Nothing runs until software restarts the buffer (after replacing the command).
    assert!(!u.commands(&[]));
    {
        let mut m = u.mem.borrow_mut();
        m.write(CMDBUF, (1 << 60) | (STATUS_WORD + 8) | 1);
        m.write(CMDBUF + 8, 0);
    }
    let ctl = u.hw.borrow().control();
    u.hw.borrow_mut()
        .write64(MMIO_CONTROL, ctl & !CTL_CMD_BUF_EN);
    u.hw.borrow_mut().write64(MMIO_CMD_HEAD, 0);
    u.hw.borrow_mut().write64(MMIO_CONTROL, ctl);
    assert_eq!(
        u.mem.borrow().read(STATUS_WORD),
        u.seq,
        "every queued wait completed"
    );
    // Reserved bits are illegal too.
    assert!(!u.commands(&[[(2 << 60) | (1 << 20) | 8, 0]]));
}

#[test]
fn event_log_overflow_stops_logging_until_restarted() {
    let u = unit(ModelCfg::qemu());
    u.dte(1, V | TV, 0);
    for i in 0..256u64 {
        let _ = u.hw.translate(1, i << 12, false);
    }
    // 255 records fit (one slot stays empty); the 256th overflows and stops the log.
    assert_eq!(u.hw.borrow().pending_events().len(), 255);
    let st = u.hw.borrow_mut().read64(MMIO_STATUS);
    assert_ne!(st & ST_EVT_OVERFLOW, 0);
    assert_eq!(st & ST_EVT_RUN, 0);
    let _ = u.hw.translate(1, 0x99_9000, false);
    assert_eq!(u.hw.borrow().pending_events().len(), 255, "stopped");
    // Consume, restart: EventLogEn off, EventOverflow cleared, EventLogEn on.
    let tail = u.hw.borrow_mut().read64(MMIO_EVT_TAIL);
    let ctl = u.hw.borrow().control();
    let mut m = u.hw.borrow_mut();
    m.write64(MMIO_EVT_HEAD, tail);
    m.write64(MMIO_CONTROL, ctl & !CTL_EVT_LOG_EN);
    m.write64(MMIO_STATUS, ST_EVT_OVERFLOW);
    m.write64(MMIO_CONTROL, ctl);
    drop(m);
    let _ = u.hw.translate(1, 0x77_7000, true);
    let ev = u.hw.borrow().pending_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0][1], 0x77_7000);
    assert_eq!(ev[0][0] >> 60, 2, "IO_PAGE_FAULT");
    assert_ne!(ev[0][0] & (1 << 53), 0, "RW: a write");
    assert!(u.hw.violations().is_empty());
}

#[test]
fn run_bits_follow_the_enables_after_the_configured_reads() {
    let mem = SharedMem::new();
    let hw = AmdHandle::new(
        mem,
        ModelCfg {
            run_delay_reads: 3,
            ..ModelCfg::qemu()
        },
    );
    let mut m = hw.borrow_mut();
    m.write64(MMIO_DEVTAB, DEVTAB);
    m.write64(MMIO_CMDBUF, CMDBUF | (8 << 56));
    m.write64(MMIO_EVTLOG, EVTLOG | (8 << 56));
    m.write64(MMIO_CONTROL, CTL_IOMMU_EN | CTL_CMD_BUF_EN | CTL_EVT_LOG_EN);
    let run = ST_CMD_RUN | ST_EVT_RUN;
    assert_eq!(m.read64(MMIO_STATUS) & run, 0);
    assert_eq!(m.read64(MMIO_STATUS) & run, 0);
    assert_eq!(m.read64(MMIO_STATUS) & run, run);
    // Disabling is immediate.
    m.write64(MMIO_CONTROL, CTL_IOMMU_EN);
    assert_eq!(m.read64(MMIO_STATUS) & run, 0);
    // Changing a base while in use, and disabling translation, are violations.
    m.write64(MMIO_DEVTAB, DEVTAB);
    m.write64(MMIO_CONTROL, 0);
    assert_eq!(m.violations().len(), 2, "{:?}", m.violations());
}

#[test]
fn completion_wait_stores_and_interrupts() {
    let mut u = unit(ModelCfg::qemu());
    assert!(u.commands(&[]));
    let log = u.hw.invalidation_log();
    assert_eq!(
        log,
        [InvalidationRecord::CompletionWait {
            store: Some((STATUS_WORD, 1))
        }]
    );
    // i = 1 with ComWaitIntEn and MSI set up: ComWaitInt and one message.
    {
        let mut m = u.hw.borrow_mut();
        use iommu_hal::amd::ConfigAccess;
        ConfigAccess::write32(&mut *m, MSI_OFFSET + 4, 0xfee0_0000);
        ConfigAccess::write32(&mut *m, MSI_OFFSET + 12, 0x33);
        ConfigAccess::write32(&mut *m, MSI_OFFSET, 1 << 16);
        ConfigAccess::write32(&mut *m, 0x04, 0b110);
        let c = m.control();
        m.write64(MMIO_CONTROL, c | CTL_COMWAIT_INT_EN);
    }
    assert!(u.commands(&[[(1 << 60) | 2, 0]]));
    assert_ne!(u.hw.borrow().status() & ST_COMWAIT_INT, 0);
    assert_eq!(u.hw.borrow().msis, vec![(0xfee0_0000, 0x33)]);
}

#[test]
fn a_range_must_cover_a_large_page_to_drop_it() {
    for partial in [false, true] {
        let mut u = unit(ModelCfg {
            partial_range_invalidates: partial,
            ..ModelCfg::qemu()
        });
        u.dte(8, V | TV | (3 << 9) | 0x30_0000 | IR | IW, 7);
        u.pte(0x30_0000, 0, table(2, 0x31_0000));
        u.pte(0x31_0000, 1, 0x60_0000 | PR | IR | IW); // 2 MiB at IOVA 0x20_0000
        assert_eq!(u.hw.translate(8, 0x20_1000, false), Ok(0x60_1000));
        u.pte(0x31_0000, 1, 0);
        // One 4 KiB page inside the 2 MiB page.
        assert!(u.inv_pages(7, 0x20_1000));
        assert_eq!(u.hw.translate(8, 0x20_1000, false).is_ok(), !partial);
        // The whole 2 MiB page.
        assert!(u.inv_pages(7, 0x20_0000 | 0xf_f000 | 1));
        assert!(u.hw.translate(8, 0x20_1000, false).is_err());
    }
}
