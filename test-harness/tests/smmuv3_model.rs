//! Register-level tests of the SMMUv3 model: the model is driven only through its registers,
//! with Stream tables, STEs, CDs, commands and page tables hand-built from the bit layouts of
//! the Arm SMMUv3 specification (IHI 0070) and the VMSAv8-64 descriptor formats.

use iommu_hal::RegisterAccess;
use iommu_test_harness::model::smmuv3::{
    Access, EventType, Irq, IrqSource, SmmuConfig, SmmuFault, SmmuHandle, regs,
};
use iommu_test_harness::sim::SharedMem;

// Memory layout of the fixture.
const STRTAB: u64 = 0x10_0000;
const CMDQ: u64 = 0x20_0000;
const CMDQ_LOG2: u32 = 8;
const EVTQ: u64 = 0x21_0000;
const CD0: u64 = 0x30_0000;
const CD1: u64 = 0x30_0040;
const TABLES: u64 = 0x40_0000;
const DATA: u64 = 0x8000_0000;

// Command opcodes (IHI 0070 4.1.1).
const CMD_CFGI_STE: u64 = 0x03;
const CMD_CFGI_STE_RANGE: u64 = 0x04;
const CMD_CFGI_CD: u64 = 0x05;
const CMD_TLBI_NH_ASID: u64 = 0x11;
const CMD_TLBI_NH_VA: u64 = 0x12;
const CMD_TLBI_EL2_ALL: u64 = 0x20;
const CMD_TLBI_NSNH_ALL: u64 = 0x30;
const CMD_SYNC: u64 = 0x46;

// Leaf descriptor bits (VMSAv8-64 stage 1).
const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AP_EL0: u64 = 1 << 6; // AP[1]
const AP_RO: u64 = 1 << 7; // AP[2]
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const RW_PAGE: u64 = VALID | TABLE_OR_PAGE | AP_EL0 | SH_INNER | AF | NG;
const RW_BLOCK: u64 = VALID | AP_EL0 | SH_INNER | AF | NG;

struct Rig {
    mem: SharedMem,
    smmu: SmmuHandle,
    /// The "driver's" register view (a clone of the same handle).
    regs: SmmuHandle,
    next_table: u64,
    root: u64,
}

impl Rig {
    fn new(cfg: SmmuConfig) -> Rig {
        let mem = SharedMem::new();
        let smmu = SmmuHandle::new(mem.clone(), cfg);
        let regs = smmu.clone();
        let mut r = Rig {
            mem,
            smmu,
            regs,
            next_table: TABLES,
            root: 0,
        };
        r.root = r.alloc_table();
        r
    }

    fn alloc_table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += 0x1000;
        t
    }

    fn w(&self, pa: u64, v: u64) {
        self.mem.borrow_mut().write(pa, v);
    }
    fn r(&self, pa: u64) -> u64 {
        self.mem.borrow().read(pa)
    }

    fn wait_ack(&mut self, want: u32) {
        for _ in 0..100 {
            if self.regs.read32(regs::CR0ACK) == want {
                return;
            }
        }
        panic!("CR0ACK never became {want:#x}");
    }

    /// Programs a linear Stream table of 256 STEs, a 256-entry Command queue and a 16-entry
    /// Event queue, then enables the queues and translation (3.11 initialization order).
    fn enable_linear(&mut self) {
        self.regs.write64(regs::STRTAB_BASE, STRTAB);
        self.regs.write32(regs::STRTAB_BASE_CFG, 8); // FMT linear, LOG2SIZE 8
        self.setup_queues(4);
        self.enable();
    }

    fn setup_queues(&mut self, evtq_log2: u64) {
        self.regs.write64(regs::CMDQ_BASE, CMDQ | CMDQ_LOG2 as u64);
        self.regs.write32(regs::CMDQ_PROD, 0);
        self.regs.write32(regs::CMDQ_CONS, 0);
        self.regs.write64(regs::EVENTQ_BASE, EVTQ | evtq_log2);
        self.regs.write32(regs::EVENTQ_PROD, 0);
        self.regs.write32(regs::EVENTQ_CONS, 0);
    }

    fn enable(&mut self) {
        let q = regs::CR0_CMDQEN | regs::CR0_EVENTQEN;
        self.regs.write32(regs::CR0, q);
        self.wait_ack(q);
        // Invalidate everything before turning translation on.
        self.cmd(CMD_CFGI_STE_RANGE, 31);
        self.cmd(CMD_TLBI_NSNH_ALL, 0);
        self.sync();
        self.regs.write32(regs::CR0, q | regs::CR0_SMMUEN);
        self.wait_ack(q | regs::CR0_SMMUEN);
    }

    /// Writes one command at CMDQ_PROD and publishes it.
    fn cmd(&mut self, d0: u64, d1: u64) {
        let prod = self.regs.read32(regs::CMDQ_PROD);
        let idx = prod & ((1 << CMDQ_LOG2) - 1);
        self.w(CMDQ + 16 * idx as u64, d0);
        self.w(CMDQ + 16 * idx as u64 + 8, d1);
        let next = (prod + 1) & ((2 << CMDQ_LOG2) - 1);
        self.regs.write32(regs::CMDQ_PROD, next);
    }

    /// CMD_SYNC (CS = SIG_NONE), then checks it was consumed.
    fn sync(&mut self) {
        self.cmd(CMD_SYNC, 0);
        let prod = self.regs.read32(regs::CMDQ_PROD);
        assert_eq!(
            self.regs.read32(regs::CMDQ_CONS) & 0xfffff,
            prod,
            "CMD_SYNC not consumed"
        );
    }

    fn cfgi_ste(&mut self, sid: u32) {
        self.cmd(CMD_CFGI_STE | (sid as u64) << 32, 1);
    }
    /// CMD_TLBI_NH_VA (VMID 0), non-range form.
    fn tlbi_va(&mut self, asid: u16, va: u64, leaf: bool) {
        self.cmd(CMD_TLBI_NH_VA | (asid as u64) << 48, va | leaf as u64);
    }

    /// STE: V, Config = 0b101 (stage 1 translate, stage 2 bypass), S1ContextPtr (5.2).
    fn ste_s1(&self, ste_addr: u64, cd: u64) {
        self.w(ste_addr, 1 | 0b101 << 1 | cd);
        for i in 1..8 {
            self.w(ste_addr + 8 * i, 0);
        }
    }

    /// CD (5.4): T0SZ = 16 (48-bit VA), TG0 = 4 KiB, IR0/OR0 WBWA, SH0 inner, EPD1, V,
    /// IPS = 44 bits, AA64, R, A, ASID; TTB0.
    fn cd(&self, cd_addr: u64, asid: u16, ttb0: u64) {
        let d0 = 16
            | 1 << 8
            | 1 << 10
            | 3 << 12
            | 1 << 30
            | 1 << 31
            | 0b100 << 32
            | 1 << 41
            | 1 << 45
            | 1 << 46
            | (asid as u64) << 48;
        self.w(cd_addr, d0);
        self.w(cd_addr + 8, ttb0);
        for i in 2..8 {
            self.w(cd_addr + 8 * i, 0);
        }
    }

    /// Walks/creates tables from `root` down to `level` for `va`; returns the table at `level`.
    fn table_for(&mut self, root: u64, va: u64, level: u32) -> u64 {
        let mut t = root;
        for l in 0..level {
            let shift = 39 - 9 * l;
            let slot = t + 8 * ((va >> shift) & 0x1ff);
            let d = self.r(slot);
            t = if d & 3 == 3 {
                d & 0x0000_ffff_ffff_f000
            } else {
                let n = self.alloc_table();
                self.w(slot, n | 3);
                n
            };
        }
        t
    }

    /// Installs descriptor `desc` for `va` at `level` under `root`.
    fn map(&mut self, root: u64, va: u64, level: u32, desc: u64) {
        let t = self.table_for(root, va, level);
        let shift = 39 - 9 * level;
        self.w(t + 8 * ((va >> shift) & 0x1ff), desc);
    }

    /// Standard stream: STE `sid` -> CD0 (ASID 1) -> tables at `root`.
    fn stream(&mut self, sid: u32) {
        let root = self.root;
        self.cd(CD0, 1, root);
        self.ste_s1(STRTAB + 64 * sid as u64, CD0);
    }

    /// Event records between EVENTQ_CONS and EVENTQ_PROD, raw, consumed.
    fn take_events(&mut self, log2: u32) -> Vec<[u64; 4]> {
        let mut out = Vec::new();
        let prod = self.regs.read32(regs::EVENTQ_PROD);
        let mut cons = self.regs.read32(regs::EVENTQ_CONS);
        let m = (2u32 << log2) - 1;
        while cons & m != prod & m {
            let a = EVTQ + 32 * (cons & ((1 << log2) - 1)) as u64;
            out.push([self.r(a), self.r(a + 8), self.r(a + 16), self.r(a + 24)]);
            cons = (cons & !m) | ((cons + 1) & m);
        }
        self.regs.write32(regs::EVENTQ_CONS, cons);
        out
    }
}

fn ev_type(e: &[u64; 4]) -> u64 {
    e[0] & 0xff
}
fn ev_sid(e: &[u64; 4]) -> u64 {
    e[0] >> 32
}
fn ev_rnw(e: &[u64; 4]) -> bool {
    (e[1] >> 35) & 1 == 1
}

fn rig() -> Rig {
    let mut r = Rig::new(SmmuConfig::default());
    r.enable_linear();
    r
}

#[test]
fn id_registers_default_to_qemu() {
    let mut r = Rig::new(SmmuConfig::default());
    assert_eq!(r.regs.read32(regs::IDR0), 0x0d44_101b);
    let idr1 = r.regs.read32(regs::IDR1);
    assert_eq!(idr1 & 0x3f, 16, "SIDSIZE");
    assert_eq!((idr1 >> 16) & 0x1f, 19, "EVENTQS");
    assert_eq!((idr1 >> 21) & 0x1f, 19, "CMDQS");
    let idr3 = r.regs.read32(regs::IDR3);
    assert_eq!((idr3 >> 10) & 1, 1, "RIL");
    assert_eq!((idr3 >> 11) & 3, 2, "BBML2");
    let idr5 = r.regs.read32(regs::IDR5);
    assert_eq!(idr5 & 7, 4, "OAS 44 bits");
    assert_eq!((idr5 >> 4) & 7, 7, "4K/16K/64K granules");
}

#[test]
fn cr0_handshake_immediate_and_delayed() {
    let mut r = Rig::new(SmmuConfig::default());
    r.regs.write32(regs::CR0, regs::CR0_CMDQEN);
    assert_eq!(r.regs.read32(regs::CR0ACK), regs::CR0_CMDQEN);

    let mut d = Rig::new(SmmuConfig {
        ack_delay_reads: 3,
        ..SmmuConfig::default()
    });
    d.setup_queues(4);
    d.regs.write32(regs::CR0, regs::CR0_CMDQEN);
    // Until acknowledged, the queue is off: a published command is not consumed.
    d.cmd(CMD_SYNC, 0);
    assert_eq!(d.regs.read32(regs::CMDQ_CONS), 0);
    assert_eq!(d.regs.read32(regs::CR0ACK), 0);
    assert_eq!(d.regs.read32(regs::CR0ACK), 0);
    assert_eq!(d.regs.read32(regs::CR0ACK), regs::CR0_CMDQEN);
    // The acknowledged enable consumes what was pending.
    assert_eq!(d.regs.read32(regs::CMDQ_CONS), 1);
}

#[test]
fn smmu_disabled_bypasses_unless_gbpa_abort() {
    let mut r = Rig::new(SmmuConfig::default());
    r.smmu.dma_write(8, DATA, b"bypass").unwrap();
    assert_eq!(r.smmu.dma_read(8, DATA, 6).unwrap(), b"bypass");
    // A GBPA write without Update is ignored and noted.
    r.regs.write32(regs::GBPA, regs::GBPA_ABORT);
    assert!(r.smmu.dma_read(8, DATA, 6).is_ok());
    assert!(!r.smmu.borrow().misuse.is_empty());
    r.regs
        .write32(regs::GBPA, regs::GBPA_UPDATE | regs::GBPA_ABORT);
    assert_eq!(
        r.regs.read32(regs::GBPA) & regs::GBPA_UPDATE,
        0,
        "update completes"
    );
    assert_eq!(r.smmu.dma_read(8, DATA, 6), Err(SmmuFault::GlobalAbort));
}

#[test]
fn linear_stream_table_l3_page_translation() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x1000_0000, 3, (DATA + 0x5000) | RW_PAGE);
    r.smmu.dma_write(8, 0x1000_0123, b"hello smmu").unwrap();
    let mut buf = [0u8; 10];
    r.mem.borrow().read_bytes(DATA + 0x5123, &mut buf);
    assert_eq!(&buf, b"hello smmu");
    assert_eq!(r.smmu.dma_read(8, 0x1000_0123, 10).unwrap(), b"hello smmu");
    assert_eq!(
        r.smmu.translate(8, 0x1000_0fff, Access::Read),
        Ok(DATA + 0x5fff)
    );
    // Unmapped neighbour: F_TRANSLATION recorded (CD.R = 1) with SID, address and RnW.
    let f = r.smmu.dma_read(8, 0x1000_1000, 4).unwrap_err();
    assert_eq!(f.event(), Some(EventType::FTranslation));
    let evs = r.take_events(4);
    assert_eq!(evs.len(), 1);
    assert_eq!(ev_type(&evs[0]), 0x10);
    assert_eq!(ev_sid(&evs[0]), 8);
    assert!(ev_rnw(&evs[0]));
    assert_eq!(evs[0][2], 0x1000_1000);
}

#[test]
fn two_level_stream_table() {
    let mut r = Rig::new(SmmuConfig::default());
    // FMT = 2-level, SPLIT = 8, LOG2SIZE = 16: 256 L1STDs of 8 bytes.
    r.regs.write64(regs::STRTAB_BASE, STRTAB);
    r.regs.write32(regs::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    r.regs.write32(regs::CR2, regs::CR2_RECINVSID);
    r.setup_queues(4);
    r.enable();
    // L1STD[1]: Span = 9 (2^8 STEs), L2Ptr = 0x12_0000 (5.1).
    let l2 = 0x12_0000u64;
    r.w(STRTAB + 8, l2 | 9);
    let sid = 0x105u32;
    let root = r.root;
    r.cd(CD0, 3, root);
    r.ste_s1(l2 + 64 * 5, CD0);
    r.map(root, 0x4000, 3, (DATA + 0x7000) | RW_PAGE);
    assert_eq!(
        r.smmu.translate(sid, 0x4010, Access::Write),
        Ok(DATA + 0x7010)
    );
    // L1STD[2] has Span = 0: StreamIDs 0x200..0x2ff are invalid, C_BAD_STREAMID recorded.
    let f = r.smmu.translate(0x201, 0x4000, Access::Read).unwrap_err();
    assert_eq!(f.event(), Some(EventType::CBadStreamId));
    // Out of range of LOG2SIZE.
    let f = r
        .smmu
        .translate(0x1_0000, 0x4000, Access::Read)
        .unwrap_err();
    assert_eq!(f.event(), Some(EventType::CBadStreamId));
    let evs = r.take_events(4);
    assert_eq!(evs.iter().map(ev_type).collect::<Vec<_>>(), vec![2, 2]);
    assert_eq!(ev_sid(&evs[0]), 0x201);

    // The L1STD is cached: making span 2 valid needs a non-leaf CFGI_STE.
    let l2b = 0x13_0000u64;
    r.ste_s1(l2b + 64, CD0);
    r.w(STRTAB + 16, l2b | 9);
    assert!(r.smmu.translate(0x201, 0x4000, Access::Read).is_err());
    r.cmd(CMD_CFGI_STE | 0x201 << 32, 1); // leaf: keeps the L1STD
    r.sync();
    assert!(r.smmu.translate(0x201, 0x4000, Access::Read).is_err());
    r.cmd(CMD_CFGI_STE | 0x201 << 32, 0); // non-leaf
    r.sync();
    assert_eq!(
        r.smmu.translate(0x201, 0x4000, Access::Read),
        Ok(DATA + 0x7000)
    );
}

#[test]
fn block_translations_at_level_2_and_level_1() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    // 2 MiB block at level 2, 1 GiB block at level 1.
    r.map(root, 0x20_0000, 2, 0x4000_0000 | RW_BLOCK);
    r.map(root, 0x80_0000_0000, 1, 0xc000_0000 | RW_BLOCK);
    assert_eq!(
        r.smmu.translate(8, 0x21_2345, Access::Read),
        Ok(0x4001_2345)
    );
    assert_eq!(
        r.smmu.translate(8, 0x80_3456_789a, Access::Write),
        Ok(0xf456_789a)
    );
    // A block descriptor at level 3 (bits[1:0] = 0b01) is invalid.
    r.map(root, 0x1000_0000, 3, DATA | RW_BLOCK);
    assert_eq!(
        r.smmu
            .translate(8, 0x1000_0000, Access::Read)
            .unwrap_err()
            .event(),
        Some(EventType::FTranslation)
    );
    // An output address beyond IPS/OAS (44 bits) is an Address Size fault.
    r.map(root, 0x1000_1000, 3, (1u64 << 44) | RW_PAGE);
    assert_eq!(
        r.smmu
            .translate(8, 0x1000_1000, Access::Read)
            .unwrap_err()
            .event(),
        Some(EventType::FAddrSize)
    );
}

#[test]
fn access_flag_zero_is_access_fault() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x5000, 3, (DATA | RW_PAGE) & !AF);
    let f = r.smmu.dma_write(8, 0x5008, &[1, 2]).unwrap_err();
    assert_eq!(
        f,
        SmmuFault::Terminated {
            event: EventType::FAccess,
            recorded: true,
            abort: true
        }
    );
    let evs = r.take_events(4);
    assert_eq!(ev_type(&evs[0]), 0x12);
    assert!(!ev_rnw(&evs[0]), "write");
    assert_eq!(evs[0][2], 0x5008);
    // Nothing was cached for the faulting descriptor: fixing AF needs no invalidation.
    r.map(root, 0x5000, 3, DATA | RW_PAGE);
    assert_eq!(r.smmu.translate(8, 0x5000, Access::Write), Ok(DATA));
}

#[test]
fn read_only_page_faults_on_write_only() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x6000, 3, DATA | RW_PAGE | AP_RO);
    assert!(r.smmu.dma_read(8, 0x6000, 8).is_ok());
    let f = r.smmu.dma_write(8, 0x6000, &[0; 8]).unwrap_err();
    assert_eq!(f.event(), Some(EventType::FPermission));
    let evs = r.take_events(4);
    assert_eq!(evs.len(), 1);
    assert_eq!(ev_type(&evs[0]), 0x13);
    // AP[1] = 0 denies unprivileged (PCIe) DMA even for reads.
    r.map(root, 0x7000, 3, (DATA | RW_PAGE) & !AP_EL0);
    assert_eq!(
        r.smmu
            .translate(8, 0x7000, Access::Read)
            .unwrap_err()
            .event(),
        Some(EventType::FPermission)
    );
    // CD.R = 0 suppresses the record but not the abort.
    let mut q = rig();
    q.stream(8);
    q.w(CD0, q.r(CD0) & !(1 << 45));
    let f = q.smmu.translate(8, 0x9000, Access::Read).unwrap_err();
    assert_eq!(
        f,
        SmmuFault::Terminated {
            event: EventType::FTranslation,
            recorded: false,
            abort: true
        }
    );
    assert!(q.take_events(4).is_empty());
}

#[test]
fn stale_tlb_until_tlbi_nh_va_covers_it() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x1_0000, 3, DATA | RW_PAGE);
    assert_eq!(r.smmu.translate(8, 0x1_0000, Access::Read), Ok(DATA));
    // Remap without invalidation: the TLB keeps the old translation.
    r.map(root, 0x1_0000, 3, (DATA + 0x1000) | RW_PAGE);
    assert_eq!(r.smmu.translate(8, 0x1_0000, Access::Read), Ok(DATA));
    assert!(r.smmu.stats().stale_hits >= 1);
    // Wrong address, wrong ASID: still stale.
    r.tlbi_va(1, 0x2_0000, true);
    r.tlbi_va(2, 0x1_0000, true);
    r.sync();
    assert_eq!(r.smmu.translate(8, 0x1_0000, Access::Read), Ok(DATA));
    // The right one.
    r.tlbi_va(1, 0x1_0000, true);
    r.sync();
    assert_eq!(
        r.smmu.translate(8, 0x1_0000, Access::Read),
        Ok(DATA + 0x1000)
    );
    // Unmap + invalidate: the device can no longer reach the page.
    r.map(root, 0x1_0000, 3, 0);
    r.tlbi_va(1, 0x1_0000, true);
    r.sync();
    assert!(r.smmu.translate(8, 0x1_0000, Access::Read).is_err());
}

#[test]
fn range_tlbi_with_ril_and_ttl() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    for i in 0..4u64 {
        r.map(
            root,
            0x10_0000 + i * 0x1000,
            3,
            (DATA + i * 0x1000) | RW_PAGE,
        );
        assert!(
            r.smmu
                .translate(8, 0x10_0000 + i * 0x1000, Access::Read)
                .is_ok()
        );
        r.map(
            root,
            0x10_0000 + i * 0x1000,
            3,
            (DATA + 0x10_0000 + i * 0x1000) | RW_PAGE,
        );
    }
    // TG = 4K, TTL = 2 (level-2 leaves only): does not touch these level-3 entries.
    let range = |num: u64, scale: u64| CMD_TLBI_NH_VA | 1 << 48 | num << 12 | scale << 20;
    r.cmd(range(1, 0), 0x10_0000 | 1 | 2 << 8 | 1 << 10);
    r.sync();
    assert_eq!(r.smmu.translate(8, 0x10_0000, Access::Read), Ok(DATA));
    // NUM = 1, SCALE = 0, TG = 4K, TTL = 3: two pages from 0x100000.
    r.cmd(range(1, 0), 0x10_0000 | 1 | 3 << 8 | 1 << 10);
    r.sync();
    for i in 0..4u64 {
        let want = if i < 2 { DATA + 0x10_0000 } else { DATA } + i * 0x1000;
        assert_eq!(
            r.smmu.translate(8, 0x10_0000 + i * 0x1000, Access::Read),
            Ok(want),
            "page {i}"
        );
    }
    // TG != 0 with NUM = SCALE = TTL = 0 is Reserved: CERROR_ILL.
    r.cmd(range(0, 0), 0x10_0000 | 1 << 10);
    assert_eq!(r.regs.read32(regs::GERROR) & 1, 1);
    assert_eq!((r.regs.read32(regs::CMDQ_CONS) >> 24) & 0x7f, 1);
}

#[test]
fn range_tlbi_is_illegal_without_ril() {
    let mut r = Rig::new(SmmuConfig {
        ril: false,
        ..SmmuConfig::default()
    });
    r.enable_linear();
    r.cmd(CMD_TLBI_NH_VA | 1 << 48 | 1 << 12, 0x10_0000 | 1 << 10);
    assert_eq!(r.regs.read32(regs::GERROR) & 1, 1);
}

#[test]
fn leaf_only_tlbi_keeps_walk_cache() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    let va = 0x4000_0000u64; // L0 index 0, L1 index 1, L2 index 0
    r.map(root, va, 3, DATA | RW_PAGE);
    assert_eq!(r.smmu.translate(8, va, Access::Read), Ok(DATA));
    // Replace the level-2 table by a new one mapping va elsewhere (as a driver freeing an
    // intermediate table would), then invalidate only the leaf.
    let l1 = r.table_for(root, va, 1);
    let new_l2 = r.alloc_table();
    let new_l3 = r.alloc_table();
    r.w(new_l3, (DATA + 0x3000) | RW_PAGE);
    r.w(new_l2, new_l3 | 3);
    r.w(l1 + 8, new_l2 | 3);
    r.tlbi_va(1, va, true);
    r.sync();
    // The walk restarts from the cached level-3 table pointer: the old page.
    assert_eq!(r.smmu.translate(8, va, Access::Read), Ok(DATA));
    assert!(r.smmu.stats().walk_cache_hits >= 1);
    // Non-leaf invalidation drops the cached table descriptors too.
    r.tlbi_va(1, va, false);
    r.sync();
    assert_eq!(r.smmu.translate(8, va, Access::Read), Ok(DATA + 0x3000));
}

#[test]
fn global_entries_survive_tlbi_by_asid() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x8000, 3, (DATA | RW_PAGE) & !NG);
    r.map(root, 0x9000, 3, DATA | RW_PAGE);
    assert!(r.smmu.translate(8, 0x8000, Access::Read).is_ok());
    assert!(r.smmu.translate(8, 0x9000, Access::Read).is_ok());
    r.map(root, 0x8000, 3, 0);
    r.map(root, 0x9000, 3, 0);
    r.cmd(CMD_TLBI_NH_ASID | 1 << 48, 0);
    r.sync();
    assert!(
        r.smmu.translate(8, 0x8000, Access::Read).is_ok(),
        "global kept"
    );
    assert!(
        r.smmu.translate(8, 0x9000, Access::Read).is_err(),
        "nG dropped"
    );
    // TLBI_NH_VA matches global entries whatever the ASID.
    r.tlbi_va(7, 0x8000, true);
    r.sync();
    assert!(r.smmu.translate(8, 0x8000, Access::Read).is_err());
}

#[test]
fn stale_ste_and_cd_until_cfgi() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x1000, 3, DATA | RW_PAGE);
    assert_eq!(r.smmu.translate(8, 0x1000, Access::Read), Ok(DATA));
    // A second context (ASID 2, other tables) in CD1; repoint the STE without CFGI_STE.
    let root2 = r.alloc_table();
    r.map(root2, 0x1000, 3, (DATA + 0x2000) | RW_PAGE);
    r.cd(CD1, 2, root2);
    r.ste_s1(STRTAB + 64 * 8, CD1);
    assert_eq!(r.smmu.translate(8, 0x1000, Access::Read), Ok(DATA));
    assert!(r.smmu.stats().stale_cfg_hits >= 1);
    // CFGI_CD alone does not reload the STE.
    r.cmd(CMD_CFGI_CD | 8 << 32, 1);
    r.sync();
    assert!(r.smmu.borrow().ste_cached(8));
    // CFGI_STE invalidates the STE and the CDs fetched through it (4.3.1).
    r.cfgi_ste(8);
    r.sync();
    assert_eq!(r.smmu.translate(8, 0x1000, Access::Read), Ok(DATA + 0x2000));
    // Editing the CD in place (new TTB0, same ASID) needs CFGI_CD.
    let root3 = r.alloc_table();
    r.map(root3, 0x1000, 3, (DATA + 0x4000) | RW_PAGE);
    r.cd(CD1, 3, root3);
    r.cmd(CMD_TLBI_NH_ASID | 2 << 48, 0);
    r.sync();
    assert_eq!(r.smmu.translate(8, 0x1000, Access::Read), Ok(DATA + 0x2000));
    r.cmd(CMD_CFGI_CD | 8 << 32, 1);
    r.sync();
    assert_eq!(r.smmu.translate(8, 0x1000, Access::Read), Ok(DATA + 0x4000));
}

#[test]
fn invalid_and_abort_stes() {
    let mut r = rig();
    // STE.V = 0 -> C_BAD_STE recorded.
    let f = r.smmu.translate(9, 0, Access::Read).unwrap_err();
    assert_eq!(f.event(), Some(EventType::CBadSte));
    // STE.Config = 0b000 -> abort, no event.
    r.w(STRTAB + 64 * 10, 1);
    assert_eq!(
        r.smmu.translate(10, 0, Access::Read),
        Err(SmmuFault::SteAbort)
    );
    // Bypass STE.
    r.w(STRTAB + 64 * 11, 1 | 0b100 << 1);
    assert_eq!(r.smmu.translate(11, 0x1234, Access::Write), Ok(0x1234));
    // CD without A = 1 is ILLEGAL with TERM_MODEL = 1: C_BAD_CD.
    r.stream(12);
    r.w(CD0, r.r(CD0) & !(1 << 46));
    let f = r.smmu.translate(12, 0, Access::Read).unwrap_err();
    assert_eq!(f.event(), Some(EventType::CBadCd));
    let evs = r.take_events(4);
    assert_eq!(evs.iter().map(ev_type).collect::<Vec<_>>(), vec![4, 0xa]);
}

#[test]
fn cmd_sync_completion_and_msi() {
    let mut r = Rig::new(SmmuConfig {
        cons_delay_reads: 2,
        msi: true,
        ..SmmuConfig::default()
    });
    r.regs.write64(regs::STRTAB_BASE, STRTAB);
    r.regs.write32(regs::STRTAB_BASE_CFG, 8);
    r.setup_queues(4);
    r.regs.write32(regs::CR0, regs::CR0_CMDQEN);
    // SYNC with CS = SIG_IRQ and an MSI to 0x50_0000 carrying 0xabcd.
    r.cmd(CMD_SYNC | 1 << 12 | 0xabcd << 32, 0x50_0000);
    assert_eq!(r.regs.read32(regs::CMDQ_CONS), 0, "not yet consumed");
    assert_eq!(r.regs.read32(regs::CMDQ_CONS), 1, "consumed");
    assert_eq!(r.mem.borrow().read32(0x50_0000), 0xabcd);
    let s = r.smmu.stats();
    assert_eq!((s.syncs, s.sync_msis), (1, 1));
    // CS = 0b11 is Reserved.
    r.cmd(CMD_SYNC | 3 << 12, 0);
    r.regs.read32(regs::CMDQ_CONS);
    assert_eq!((r.regs.read32(regs::CMDQ_CONS) >> 24) & 0x7f, 1);
}

#[test]
fn illegal_command_stops_queue_until_gerrorn_ack() {
    let mut r = rig();
    let cons0 = r.regs.read32(regs::CMDQ_CONS);
    r.cmd(0x0f, 0); // Reserved opcode
    r.cmd(CMD_SYNC, 0);
    let cons = r.regs.read32(regs::CMDQ_CONS);
    assert_eq!(cons & 0xfffff, cons0, "CONS stays at the bad command");
    assert_eq!((cons >> 24) & 0x7f, 1, "CERROR_ILL");
    let gerror = r.regs.read32(regs::GERROR);
    let gerrorn = r.regs.read32(regs::GERRORN);
    assert_eq!((gerror ^ gerrorn) & 1, 1, "CMDQ_ERR active");
    // More commands are not consumed while the error is active.
    r.cmd(CMD_SYNC, 0);
    assert_eq!(r.regs.read32(regs::CMDQ_CONS) & 0xfffff, cons0);
    // Fix the command in place (replace with a SYNC) and acknowledge.
    let idx = cons0 & ((1 << CMDQ_LOG2) - 1);
    r.w(CMDQ + 16 * idx as u64, CMD_SYNC);
    r.regs.write32(regs::GERRORN, gerror);
    let prod = r.regs.read32(regs::CMDQ_PROD);
    assert_eq!(r.regs.read32(regs::CMDQ_CONS) & 0xfffff, prod);
    assert_eq!(r.smmu.stats().cmd_errors, 1);
    // EL2 invalidation without IDR0.HYP is ILLEGAL too.
    r.cmd(CMD_TLBI_EL2_ALL, 0);
    assert_eq!(
        (r.regs.read32(regs::GERROR) ^ r.regs.read32(regs::GERRORN)) & 1,
        1
    );
}

#[test]
fn event_queue_overflow() {
    let mut r = Rig::new(SmmuConfig::default());
    r.regs.write64(regs::STRTAB_BASE, STRTAB);
    r.regs.write32(regs::STRTAB_BASE_CFG, 8);
    r.setup_queues(1); // 2 entries
    r.enable();
    for sid in 20..23 {
        let f = r.smmu.translate(sid, 0, Access::Read).unwrap_err();
        assert_eq!(f.event(), Some(EventType::CBadSte));
        assert_eq!(
            f,
            SmmuFault::Terminated {
                event: EventType::CBadSte,
                recorded: sid < 22,
                abort: true
            }
        );
    }
    let prod = r.regs.read32(regs::EVENTQ_PROD);
    assert_eq!(prod >> 31, 1, "OVFLG toggled");
    assert_eq!(prod & 3, 0b10, "full: index 0, wrap 1");
    let evs = r.take_events(1);
    assert_eq!(evs.iter().map(ev_sid).collect::<Vec<_>>(), vec![20, 21]);
    // Acknowledge the overflow; the next event is recorded and no new overflow is flagged.
    let cons = r.regs.read32(regs::EVENTQ_CONS);
    r.regs.write32(regs::EVENTQ_CONS, cons | regs::EVENTQ_OVFLG);
    assert!(r.smmu.translate(23, 0, Access::Read).is_err());
    let evs = r.take_events(1);
    assert_eq!(evs.len(), 1);
    assert_eq!(ev_sid(&evs[0]), 23);
    assert_eq!(r.regs.read32(regs::EVENTQ_PROD) >> 31, 1);
}

#[test]
fn guarded_registers_ignore_writes_while_enabled() {
    let mut r = rig();
    assert!(
        r.smmu.borrow().misuse.is_empty(),
        "{:?}",
        r.smmu.borrow().misuse
    );
    r.regs.write64(regs::STRTAB_BASE, 0xdead_0000);
    assert_eq!(r.regs.read64(regs::STRTAB_BASE), STRTAB);
    r.regs.write64(regs::CMDQ_BASE, 0);
    assert_eq!(r.regs.read64(regs::CMDQ_BASE), CMDQ | CMDQ_LOG2 as u64);
    r.regs.write32(regs::STRTAB_BASE_CFG, 0);
    assert_eq!(r.regs.read32(regs::STRTAB_BASE_CFG), 8);
    assert_eq!(r.smmu.borrow().misuse.len(), 3);
    // A 64-bit access to a 32-bit register is noted and ignored.
    let prod = r.regs.read32(regs::CMDQ_PROD);
    r.regs.write64(regs::CMDQ_PROD, 0);
    assert_eq!(r.regs.read32(regs::CMDQ_PROD), prod);
    assert_eq!(r.smmu.borrow().misuse.len(), 4);
}

#[test]
fn event_queue_registers_live_in_page_1() {
    let mut strict = Rig::new(SmmuConfig {
        page1_alias: false,
        ..SmmuConfig::default()
    });
    strict.regs.write32(0xa8, 5);
    assert_eq!(strict.regs.read32(regs::EVENTQ_PROD), 0);
    strict.regs.write32(regs::EVENTQ_PROD, 5);
    assert_eq!(strict.regs.read32(regs::EVENTQ_PROD), 5);
    // QEMU aliases page 1 onto page 0.
    let mut q = Rig::new(SmmuConfig::default());
    q.regs.write32(0xa8, 5);
    assert_eq!(q.regs.read32(regs::EVENTQ_PROD), 5);
}

#[test]
fn invalidation_completes_only_at_cmd_sync() {
    let mut r = rig();
    r.stream(8);
    let root = r.root;
    r.map(root, 0x3000, 3, DATA | RW_PAGE);
    assert_eq!(r.smmu.translate(8, 0x3000, Access::Read), Ok(DATA));
    r.map(root, 0x3000, 3, 0);
    // Consumed (CONS passed it) but not complete without a CMD_SYNC (4.3.8).
    r.tlbi_va(1, 0x3000, true);
    let prod = r.regs.read32(regs::CMDQ_PROD);
    assert_eq!(r.regs.read32(regs::CMDQ_CONS) & 0xfffff, prod);
    assert_eq!(r.smmu.borrow().pending_invalidations(), 1);
    assert_eq!(r.smmu.translate(8, 0x3000, Access::Read), Ok(DATA));
    r.sync();
    assert!(r.smmu.translate(8, 0x3000, Access::Read).is_err());
    // QEMU-like immediate completion when the knob is off.
    let mut q = Rig::new(SmmuConfig {
        complete_invalidation_at_sync: false,
        ..SmmuConfig::default()
    });
    q.enable_linear();
    q.stream(8);
    let root = q.root;
    q.map(root, 0x3000, 3, DATA | RW_PAGE);
    assert!(q.smmu.translate(8, 0x3000, Access::Read).is_ok());
    q.map(root, 0x3000, 3, 0);
    q.tlbi_va(1, 0x3000, true);
    assert!(q.smmu.translate(8, 0x3000, Access::Read).is_err());
}

#[test]
fn config_error_records_carry_only_stream_ids() {
    let mut r = rig();
    assert!(r.smmu.translate(33, 0xabc000, Access::Read).is_err());
    let evs = r.take_events(4);
    assert_eq!(evs.len(), 1);
    assert_eq!(ev_type(&evs[0]), 0x04);
    assert_eq!(ev_sid(&evs[0]), 33);
    assert_eq!((evs[0][1], evs[0][2], evs[0][3]), (0, 0, 0));
}

const WIRED_EVENTQ: Irq = Irq {
    source: IrqSource::EventQueue,
    msi: None,
};

/// 3.18 / 6.3.16: with EVENTQ_IRQEN acknowledged, a record that makes the Event queue
/// non-empty raises the interrupt; records behind unconsumed ones raise nothing; once the
/// queue was emptied the next record raises it again. Nothing while disabled, and enabling
/// raises nothing for records already there.
#[test]
fn event_queue_interrupt_on_empty_to_non_empty() {
    let mut r = rig();
    assert!(r.smmu.translate(20, 0, Access::Read).is_err());
    assert!(r.smmu.borrow().irq_log.is_empty(), "disabled");
    r.regs.write32(regs::IRQ_CTRL, regs::IRQ_CTRL_EVENTQ_IRQEN);
    assert_eq!(
        r.regs.read32(regs::IRQ_CTRLACK),
        regs::IRQ_CTRL_EVENTQ_IRQEN
    );
    assert!(r.smmu.translate(21, 0, Access::Read).is_err());
    assert!(
        r.smmu.borrow().irq_log.is_empty(),
        "queue was not empty: no edge"
    );
    assert_eq!(r.take_events(4).len(), 2);
    assert!(r.smmu.translate(22, 0, Access::Read).is_err());
    assert!(r.smmu.translate(23, 0, Access::Read).is_err());
    assert_eq!(r.smmu.borrow().irq_log, [WIRED_EVENTQ]);
    assert_eq!(r.take_events(4).len(), 2);
    assert!(r.smmu.translate(24, 0, Access::Read).is_err());
    assert_eq!(r.smmu.borrow().irq_log, [WIRED_EVENTQ; 2]);
    assert_eq!(r.smmu.stats().eventq_irqs, 2);
    // Disabled again: nothing.
    r.take_events(4);
    r.regs.write32(regs::IRQ_CTRL, 0);
    assert!(r.smmu.translate(25, 0, Access::Read).is_err());
    assert_eq!(r.smmu.borrow().irq_log.len(), 2);
    assert!(r.smmu.borrow().misuse.is_empty());
}

/// GERROR_IRQEN: an interrupt when a GERROR condition becomes active, not again while it
/// stays active.
#[test]
fn gerror_interrupt_when_a_condition_becomes_active() {
    let mut r = rig();
    r.regs.write32(regs::IRQ_CTRL, regs::IRQ_CTRL_GERROR_IRQEN);
    r.cmd(0xff, 0); // illegal opcode: CMDQ_ERR
    r.cmd(0xfe, 0);
    assert_eq!(
        r.smmu.borrow().irq_log,
        [Irq {
            source: IrqSource::Gerror,
            msi: None
        }]
    );
    assert_eq!(r.smmu.stats().gerror_irqs, 1);
}

/// With IDR0.MSI, a source whose CFG0.ADDR is non-zero signals by writing CFG1 to CFG0; ADDR 0
/// means the wired line. Writing the MSI configuration while the source is enabled, or on a
/// unit without MSIs, is misuse.
#[test]
fn interrupts_as_msis_and_their_configuration_rules() {
    let mut r = Rig::new(SmmuConfig {
        msi: true,
        ..SmmuConfig::default()
    });
    r.enable_linear();
    r.regs.write64(regs::EVENTQ_IRQ_CFG0, 0x0800_0040);
    r.regs.write32(regs::EVENTQ_IRQ_CFG1, 0x2a);
    r.regs.write32(regs::EVENTQ_IRQ_CFG2, 1);
    r.regs.write32(regs::IRQ_CTRL, regs::IRQ_CTRL_EVENTQ_IRQEN);
    assert!(r.smmu.translate(20, 0, Access::Read).is_err());
    assert_eq!(
        r.smmu.borrow().irq_log,
        [Irq {
            source: IrqSource::EventQueue,
            msi: Some((0x0800_0040, 0x2a))
        }]
    );
    assert!(r.smmu.borrow().misuse.is_empty());
    r.regs.write32(regs::EVENTQ_IRQ_CFG1, 0x2b);
    assert_eq!(r.smmu.borrow().misuse.len(), 1, "changed while enabled");
    r.regs.write32(regs::IRQ_CTRL, 0);
    r.regs.write64(regs::EVENTQ_IRQ_CFG0, 0);
    r.regs.write32(regs::IRQ_CTRL, regs::IRQ_CTRL_EVENTQ_IRQEN);
    r.take_events(4);
    assert!(r.smmu.translate(21, 0, Access::Read).is_err());
    assert_eq!(r.smmu.borrow().irq_log[1], WIRED_EVENTQ, "ADDR 0: wired");
    assert_eq!(r.smmu.borrow().misuse.len(), 1);

    let mut r = rig();
    r.regs.write64(regs::GERROR_IRQ_CFG0, 0x0800_0040);
    assert_eq!(r.smmu.borrow().misuse.len(), 1, "no MSIs on this unit");
}

/// A hung unit never acknowledges IRQ_CTRL (and raises nothing).
#[test]
fn irq_ctrl_acknowledgement_can_hang() {
    let mut r = Rig::new(SmmuConfig {
        irq_ctrl_hung: true,
        ..SmmuConfig::default()
    });
    r.enable_linear();
    r.regs.write32(regs::IRQ_CTRL, regs::IRQ_CTRL_EVENTQ_IRQEN);
    assert_eq!(r.regs.read32(regs::IRQ_CTRLACK), 0);
    assert!(r.smmu.translate(20, 0, Access::Read).is_err());
    assert!(r.smmu.borrow().irq_log.is_empty());
}
