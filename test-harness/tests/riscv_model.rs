//! The RISC-V IOMMU model (`iommu_test_harness::model::riscv`) on its own, driven through its
//! registers with structures and commands built here by hand from the spec (no hal code):
//! `ddtp` mode rules, `fctl` guards, queue enables, command legality and `cmd_ill` recovery,
//! the semantics of each `IOTINVAL.VMA` form and of `IODIR.INVAL_DDT`, completion at
//! `IOFENCE.C`, device-context checks, the first-stage walk's faults, the fault queue's
//! overflow and interrupt pending bits, MSIs.

use iommu_hal::RegisterAccess;
use iommu_test_harness::model::riscv::{RiscvConfig, RiscvHandle, regs::*};
use iommu_test_harness::sim::SharedMem;

const DDT_ROOT: u64 = 0x10_0000;
const CQ: u64 = 0x11_0000;
const FQ: u64 = 0x12_0000;
const PT: u64 = 0x20_0000; // page-table frames from here
const DATA: u64 = 0x4000_0000;

// PTE bits (privileged spec 4.3.1).
const V: u64 = 1;
const R: u64 = 2;
const W: u64 = 4;
const U: u64 = 16;
const G: u64 = 32;
const A: u64 = 64;
const D: u64 = 128;
const LEAF_RW: u64 = V | R | W | U | A | D;

fn pte(pa: u64, bits: u64) -> u64 {
    ((pa >> 12) << 10) | bits
}

struct M {
    mem: SharedMem,
    hw: RiscvHandle,
    tail: u32,
    next_table: u64,
}

impl M {
    /// A unit with a 1-level DDT (extended contexts: device ids 0..64), an 8-entry command
    /// queue and a 4-entry fault queue, all enabled.
    fn new(cfg: RiscvConfig) -> M {
        let mem = SharedMem::new();
        let hw = RiscvHandle::new(mem.clone(), cfg);
        let mut m = M {
            mem,
            hw,
            tail: 0,
            next_table: PT,
        };
        m.w64(CQB, ((CQ >> 12) << 10) | 2);
        m.w32(CQCSR, CQCSR_CQEN);
        m.w64(FQB, ((FQ >> 12) << 10) | 1);
        m.w32(FQCSR, FQCSR_FQEN);
        m.w64(DDTP, ((DDT_ROOT >> 12) << 10) | MODE_1LVL);
        m
    }
    fn w32(&mut self, off: usize, v: u32) {
        self.hw.clone().write32(off, v)
    }
    fn w64(&mut self, off: usize, v: u64) {
        self.hw.clone().write64(off, v)
    }
    fn r32(&mut self, off: usize) -> u32 {
        self.hw.clone().read32(off)
    }
    fn r64(&mut self, off: usize) -> u64 {
        self.hw.clone().read64(off)
    }
    fn put(&self, pa: u64, v: u64) {
        self.mem.borrow_mut().write(pa, v);
    }
    fn get(&self, pa: u64) -> u64 {
        self.mem.borrow().read(pa)
    }
    /// Queues commands and rings `cqt`.
    fn cmds(&mut self, cmds: &[[u64; 2]]) {
        for c in cmds {
            let a = CQ + 16 * u64::from(self.tail);
            self.put(a, c[0]);
            self.put(a + 8, c[1]);
            self.tail = (self.tail + 1) & 7;
        }
        let t = self.tail;
        self.w32(CQT, t);
    }
    fn table(&mut self) -> u64 {
        let t = self.next_table;
        self.next_table += 0x1000;
        t
    }
    /// An Sv39 table mapping `iova` to `pa` with `bits` at `level` (0 = 4 KiB), tables
    /// allocated as needed under `root`.
    fn map(&mut self, root: u64, iova: u64, pa: u64, level: u32, bits: u64) {
        let mut t = root;
        for l in (level + 1..3).rev() {
            let i = (iova >> (12 + 9 * l)) & 0x1ff;
            let e = self.get(t + 8 * i);
            t = if e & V == 0 {
                let n = self.table();
                self.put(t + 8 * i, pte(n, V));
                n
            } else {
                ((e >> 10) << 12) & ((1 << 56) - 1)
            };
        }
        let i = (iova >> (12 + 9 * level)) & 0x1ff;
        self.put(t + 8 * i, pte(pa, bits));
    }
    /// Device `did`'s extended context: Sv39 at `root`, PSCID `pscid`, `tc` extra bits.
    fn dc(&self, did: u32, pscid: u32, root: u64, tc: u64) {
        let a = DDT_ROOT + 64 * u64::from(did);
        self.put(a + 16, u64::from(pscid) << 12);
        self.put(a + 24, (8 << 60) | (root >> 12));
        self.put(a, 1 | tc);
    }
    fn read(&self, did: u32, iova: u64) -> Result<u64, u16> {
        self.hw.translate(did, iova, false).map_err(|f| f.cause)
    }
    fn write(&self, did: u32, iova: u64) -> Result<u64, u16> {
        self.hw.translate(did, iova, true).map_err(|f| f.cause)
    }
    fn stale(&self) -> u64 {
        self.hw.stats().stale_hits
    }
}

fn iotinval(pscid: Option<u32>, addr: Option<u64>) -> [u64; 2] {
    let mut d0 = 1u64;
    let mut d1 = 0;
    if let Some(p) = pscid {
        d0 |= (u64::from(p) << 12) | (1 << 32);
    }
    if let Some(a) = addr {
        d0 |= 1 << 10;
        d1 = (a >> 12) << 10;
    }
    [d0, d1]
}

fn iodir(did: Option<u32>) -> [u64; 2] {
    [3 | did.map_or(0, |d| (1 << 33) | (u64::from(d) << 40)), 0]
}

const FENCE: [u64; 2] = [2, 0];

#[test]
fn reset_state_refuses_all_dma() {
    let hw = RiscvHandle::new(SharedMem::new(), RiscvConfig::qemu());
    let f = hw.translate(8, 0x1000, false).unwrap_err();
    assert_eq!(
        (f.cause, f.recorded),
        (256, false),
        "Off; the fault queue is off"
    );
    let mut h = hw.clone();
    let cap = h.read64(CAPABILITIES);
    assert_eq!(cap & 0xff, 0x10);
    assert_eq!((cap >> 9) & 7, 7, "Sv39/48/57");
    assert_eq!((cap >> 32) & 0x3f, 56);
    assert_eq!(h.read64(DDTP), 0);
}

#[test]
fn ddtp_mode_changes_follow_5_5() {
    let mut m = M::new(RiscvConfig {
        ddt_levels: [true, false, true],
        ddtp_busy_reads: 2,
        ..RiscvConfig::qemu()
    });
    let v = m.r64(DDTP);
    assert_eq!(v & DDTP_BUSY, DDTP_BUSY, "busy after the write");
    m.r64(DDTP);
    assert_eq!(m.r64(DDTP), ((DDT_ROOT >> 12) << 10) | 2);
    // A table mode from a table mode: UNSPECIFIED, refused and noted.
    m.w64(DDTP, ((DDT_ROOT >> 12) << 10) | 4);
    assert_eq!(m.hw.borrow().ddtp() & DDTP_MODE, 2);
    assert_eq!(m.hw.borrow().misuse.len(), 1);
    // Through Off, then an unsupported mode (2LVL) is not retained.
    for _ in 0..3 {
        m.r64(DDTP);
    }
    m.w64(DDTP, 0);
    m.w64(DDTP, ((DDT_ROOT >> 12) << 10) | 3);
    assert_eq!(m.hw.borrow().ddtp() & DDTP_MODE, 0);
    m.w64(DDTP, ((DDT_ROOT >> 12) << 10) | 4);
    assert_eq!(m.hw.borrow().ddtp() & DDTP_MODE, 4);
}

#[test]
fn fctl_changes_only_while_off_with_queues_off() {
    let mut m = M::new(RiscvConfig {
        igs: 2,
        ..RiscvConfig::qemu()
    });
    m.w32(FCTL, FCTL_WSI);
    assert_eq!(m.r32(FCTL), 0, "ignored: ddtp not Off, queues on");
    assert_eq!(m.hw.borrow().misuse.len(), 1);
    m.w64(DDTP, 0);
    m.w32(CQCSR, 0);
    m.w32(FQCSR, 0);
    m.w32(FCTL, FCTL_WSI | FCTL_BE);
    assert_eq!(
        m.r32(FCTL),
        FCTL_WSI,
        "WSI writable with IGS = BOTH; BE not without END"
    );
    // IGS = MSI: WSI reads 0 and stays so.
    let mut h = RiscvHandle::new(SharedMem::new(), RiscvConfig::qemu());
    h.write32(FCTL, FCTL_WSI);
    assert_eq!(h.read32(FCTL), 0);
}

#[test]
fn queue_enable_resets_indexes_and_cqon_follows() {
    let mut m = M::new(RiscvConfig {
        queue_on_delay_reads: 2,
        ..RiscvConfig::qemu()
    });
    // The constructor enabled the queues; cqon follows after two reads.
    assert_eq!(m.r32(CQCSR) & (CQCSR_CQON | CQCSR_BUSY), CQCSR_BUSY);
    m.r32(CQCSR);
    assert_eq!(m.r32(CQCSR) & (CQCSR_CQON | CQCSR_BUSY), CQCSR_CQON);
    m.cmds(&[FENCE, FENCE]);
    assert_eq!(m.r32(CQH), 2);
    m.w32(CQCSR, 0);
    for _ in 0..3 {
        m.r32(CQCSR);
    }
    assert_eq!(m.r32(CQCSR) & CQCSR_CQON, 0);
    assert_eq!((m.r32(CQH), m.r32(CQT)), (0, 0), "reset when turned off");
}

#[test]
fn illegal_commands_stop_the_queue_until_cleared() {
    let mut m = M::new(RiscvConfig {
        ats: false,
        ..RiscvConfig::qemu()
    });
    let cases: [[u64; 2]; 7] = [
        [1 | (1 << 11), 0],            // IOTINVAL reserved bit 11
        [1 | (1 << 7) | (1 << 32), 0], // IOTINVAL.GVMA with PSCV
        [2 | (1 << 11), 0],            // IOFENCE.C with WSI while fctl.WSI = 0
        [3 | (1 << 7), 0],             // IODIR.INVAL_PDT with DV = 0
        [4, 0],                        // ATS without capabilities.ATS
        [5, 0],                        // reserved opcode
        [3, 1],                        // IODIR dword 1 reserved
    ];
    for (i, c) in cases.iter().enumerate() {
        let head = m.r32(CQH);
        m.cmds(&[*c, FENCE]);
        assert_ne!(m.r32(CQCSR) & CQCSR_CMD_ILL, 0, "case {i}");
        assert_eq!(m.r32(CQH), head, "case {i}: cqh stays at the command");
        // Replace it with a fence and clear cmd_ill: processing resumes.
        let a = CQ + 16 * u64::from(head);
        m.put(a, FENCE[0]);
        m.put(a + 8, 0);
        m.w32(CQCSR, CQCSR_CQEN | CQCSR_CMD_ILL);
        assert_eq!(m.r32(CQCSR) & CQCSR_CMD_ILL, 0);
        assert_eq!(m.r32(CQH), m.tail, "case {i}");
    }
    assert_eq!(m.hw.stats().cmd_errors, 7);
}

#[test]
fn invalidations_complete_at_the_fence() {
    let mut m = M::new(RiscvConfig::qemu());
    let root = m.table();
    m.map(root, 0x1000, DATA, 0, LEAF_RW);
    m.dc(8, 1, root, 0);
    assert_eq!(m.read(8, 0x1000), Ok(DATA));
    m.map(root, 0x1000, 0, 0, 0); // cleared
    m.cmds(&[iotinval(Some(1), Some(0x1000))]);
    assert_eq!(m.hw.borrow().pending_invalidations(), 1);
    assert_eq!(m.read(8, 0x1000), Ok(DATA), "not yet: no fence");
    assert_eq!(m.stale(), 1);
    m.cmds(&[FENCE]);
    assert_eq!(m.read(8, 0x1000), Err(13));
}

#[test]
fn address_invalidations_reach_leaves_only() {
    let mut m = M::new(RiscvConfig {
        complete_invalidation_at_fence: false,
        ..RiscvConfig::qemu()
    });
    let root = m.table();
    m.map(root, 0x40_0000, DATA, 0, LEAF_RW);
    m.dc(8, 1, root, 0);
    assert!(m.read(8, 0x40_0000).is_ok());
    assert!(m.hw.borrow().walk_cache_len() > 0);
    // Replace the whole level-0 table (a non-leaf change): AV = 1 keeps the cached pointer.
    let l1 = (m.get(root) >> 10) << 12;
    let new_t = m.table();
    m.put(new_t, pte(DATA + 0x1000, LEAF_RW));
    m.put(l1 + 8 * 2, pte(new_t, V));
    m.cmds(&[iotinval(Some(1), Some(0x40_0000)), FENCE]);
    assert_eq!(m.read(8, 0x40_0000), Ok(DATA), "walked the stale table");
    // AV = 0 for the PSCID drops the non-leaf entries too.
    m.cmds(&[iotinval(Some(1), None), FENCE]);
    assert_eq!(m.read(8, 0x40_0000), Ok(DATA + 0x1000));
}

#[test]
fn pscid_invalidations_keep_other_spaces_and_global_leaves() {
    let mut m = M::new(RiscvConfig {
        complete_invalidation_at_fence: false,
        ..RiscvConfig::qemu()
    });
    let (a, b) = (m.table(), m.table());
    m.map(a, 0x1000, DATA, 0, LEAF_RW);
    m.map(a, 0x2000, DATA + 0x1000, 0, LEAF_RW | G);
    m.map(b, 0x1000, DATA + 0x2000, 0, LEAF_RW);
    m.dc(8, 1, a, 0);
    m.dc(9, 2, b, 0);
    for (d, i) in [(8, 0x1000), (8, 0x2000), (9, 0x1000)] {
        assert!(m.read(d, i).is_ok());
    }
    m.map(a, 0x1000, 0, 0, 0);
    m.map(a, 0x2000, 0, 0, 0);
    m.map(b, 0x1000, 0, 0, 0);
    m.cmds(&[iotinval(Some(1), None)]);
    assert_eq!(m.read(8, 0x1000), Err(13));
    assert!(
        m.read(8, 0x2000).is_ok(),
        "global: kept by a PSCID invalidation"
    );
    assert!(m.read(9, 0x1000).is_ok(), "another PSCID: kept");
    m.cmds(&[iotinval(None, None)]);
    assert_eq!(m.read(8, 0x2000), Err(13));
    assert_eq!(m.read(9, 0x1000), Err(13));
}

#[test]
fn splintered_large_leaves_need_every_page() {
    for splinter in [false, true] {
        let mut m = M::new(RiscvConfig {
            complete_invalidation_at_fence: false,
            splinter_leaves: splinter,
            ..RiscvConfig::qemu()
        });
        let root = m.table();
        m.map(root, 0x20_0000, DATA, 1, LEAF_RW);
        m.dc(8, 1, root, 0);
        assert!(m.read(8, 0x20_0000).is_ok());
        assert!(m.read(8, 0x20_5000).is_ok());
        m.map(root, 0x20_0000, 0, 1, 0);
        m.cmds(&[iotinval(Some(1), Some(0x20_0000))]);
        assert_eq!(m.read(8, 0x20_0000), Err(13));
        // Per the spec the one command reaches the whole leaf; a splintering unit keeps the
        // other pieces.
        assert_eq!(
            m.read(8, 0x20_5000).is_ok(),
            splinter,
            "splinter {splinter}"
        );
    }
}

#[test]
fn device_contexts_are_cached_until_iodir_and_invalid_ones_never() {
    let mut m = M::new(RiscvConfig {
        complete_invalidation_at_fence: false,
        ..RiscvConfig::qemu()
    });
    let root = m.table();
    m.map(root, 0x1000, DATA, 0, LEAF_RW);
    assert_eq!(m.read(8, 0x1000), Err(258));
    // Valid now: no invalidation needed (invalid contexts are not cached).
    m.dc(8, 1, root, 0);
    m.dc(9, 1, root, 0);
    assert!(m.read(8, 0x1000).is_ok());
    assert!(m.read(9, 0x1000).is_ok());
    m.put(DDT_ROOT + 64 * 8, 0);
    m.put(DDT_ROOT + 64 * 9, 0);
    assert!(m.read(8, 0x1000).is_ok(), "cached");
    assert_eq!(m.hw.stats().stale_dc_hits, 1);
    m.cmds(&[iodir(Some(8))]);
    assert_eq!(m.read(8, 0x1000), Err(258));
    assert!(m.read(9, 0x1000).is_ok(), "another device's context stays");
    m.cmds(&[iodir(None)]);
    assert_eq!(m.read(9, 0x1000), Err(258));
}

#[test]
fn misconfigured_contexts_fault_259() {
    let m = M::new(RiscvConfig::qemu());
    let root = m.next_table;
    for (tc, why) in [
        (1 << 20, "tc reserved"),
        (1 << 8, "SADE without AMO_HWAD"),
        (1 << 3, "T2GPA"),
        (1 << 9, "DPE without PDTV"),
    ] {
        m.dc(8, 1, root, tc);
        assert_eq!(m.read(8, 0), Err(259), "{why}");
    }
    // fsc reserved mode.
    m.dc(8, 1, root, 0);
    m.put(DDT_ROOT + 64 * 8 + 24, 5 << 60);
    assert_eq!(m.read(8, 0), Err(259));
    assert_eq!(m.hw.borrow().misuse.len(), 5);
    // First stage Bare: the device passes untranslated (counted).
    m.put(DDT_ROOT + 64 * 8 + 24, 0);
    assert_eq!(m.read(8, 0x1234), Ok(0x1234));
    assert_eq!(m.hw.stats().bypassed, 1);
}

#[test]
fn first_stage_walk_faults() {
    let mut m = M::new(RiscvConfig::qemu());
    let root = m.table();
    m.map(root, 0x1000, DATA, 0, V | R | W | A | D); // no U
    m.map(root, 0x2000, DATA, 0, V | R | W | U | D); // no A
    m.map(root, 0x3000, DATA, 0, V | R | W | U | A); // no D
    m.map(root, 0x4000, DATA, 0, V | W | U | A | D); // W without R
    m.map(root, 0x5000, DATA, 0, LEAF_RW | (1 << 61)); // PBMT without Svpbmt
    m.map(root, 0x40_0000, DATA + 0x1000, 1, LEAF_RW); // misaligned megapage
    m.map(root, 0x80_0000, DATA, 1, V | R | U | A | D); // read-only megapage
    m.dc(8, 1, root, 0);
    assert_eq!(m.read(8, 0x1000), Err(13), "U = 0: user access refused");
    assert_eq!(m.read(8, 0x2000), Err(13), "A = 0 without SADE");
    assert_eq!(m.read(8, 0x3000), Ok(DATA));
    assert_eq!(m.write(8, 0x3000), Err(15), "D = 0 for a store");
    assert_eq!(m.read(8, 0x4000), Err(13));
    assert_eq!(m.read(8, 0x5000), Err(13));
    assert_eq!(m.read(8, 0x40_0000), Err(13));
    assert_eq!(m.read(8, 0x80_1234), Ok(DATA + 0x1234));
    assert_eq!(m.write(8, 0x80_1234), Err(15));
    assert_eq!(m.read(8, 1 << 38), Err(13), "not sign-extended for Sv39");
    assert_eq!(m.read(8, 0x6000), Err(13), "not mapped");
    // DTF: translation faults are not reported, DDT faults still are.
    m.put(DDT_ROOT + 64 * 8, 1 | (1 << 4));
    m.cmds(&[iodir(Some(8)), FENCE]);
    let before = m.hw.stats().records_suppressed;
    assert_eq!(m.read(8, 0x6000), Err(13));
    assert_eq!(m.hw.stats().records_suppressed, before + 1);
}

#[test]
fn fault_queue_overflow_and_interrupt_pending() {
    let mut m = M::new(RiscvConfig::qemu());
    m.w32(FQCSR, FQCSR_FQEN | FQCSR_FIE);
    // Four slots, three usable.
    for i in 0..5 {
        assert_eq!(m.read(8, i * 0x1000), Err(258));
    }
    assert_eq!(m.r32(FQT), 3);
    assert_ne!(m.r32(FQCSR) & FQCSR_FQOF, 0);
    assert_ne!(m.r32(IPSR) & IPSR_FIP, 0);
    let recs = m.hw.borrow().pending_records();
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .all(|r| r.cause == 258 && r.did == 8 && r.ttyp == 2)
    );
    assert_eq!(recs[2].iotval, 0x2000);
    // fip stays while fqof is set.
    m.w32(IPSR, IPSR_FIP);
    assert_ne!(m.r32(IPSR) & IPSR_FIP, 0);
    m.w32(FQH, 3);
    m.w32(FQCSR, FQCSR_FQEN | FQCSR_FIE | FQCSR_FQOF);
    m.w32(IPSR, IPSR_FIP);
    assert_eq!(m.r32(IPSR) & IPSR_FIP, 0);
    assert_eq!(m.read(8, 0x9000), Err(258));
    assert_eq!(m.r32(FQT), 0, "reporting resumed");
    assert_eq!(m.hw.stats().records_discarded, 2);
}

#[test]
fn msis_and_wires() {
    let mut m = M::new(RiscvConfig::qemu());
    m.w64(ICVEC, 0x0031); // civ 1, fiv 3
    m.w64(MSI_CFG_TBL + 16 * 3, 0x2400_0000);
    m.w32(MSI_CFG_TBL + 16 * 3 + 8, 0x77);
    m.w32(MSI_CFG_TBL + 16 * 3 + 12, 1); // masked
    m.w32(FQCSR, FQCSR_FQEN | FQCSR_FIE);
    assert!(m.read(8, 0).is_err());
    assert_eq!(m.mem.borrow().read32(0x2400_0000), 0, "masked: held");
    m.w32(MSI_CFG_TBL + 16 * 3 + 12, 0);
    assert_eq!(m.mem.borrow().read32(0x2400_0000), 0x77, "sent on unmask");
    let s = m.hw.stats();
    assert_eq!((s.masked_msis, s.msis), (1, 1));
    // A fence with AV writes its data.
    m.cmds(&[[2 | (0xabcd << 32) | (1 << 10), 0x2400_0100 >> 2]]);
    assert_eq!(m.mem.borrow().read32(0x2400_0100), 0xabcd);
    // Wires: IGS = WSI.
    let mut w = M::new(RiscvConfig {
        igs: 1,
        ..RiscvConfig::qemu()
    });
    assert_eq!(w.r32(FCTL) & FCTL_WSI, FCTL_WSI);
    w.w32(FQCSR, FQCSR_FQEN | FQCSR_FIE);
    assert!(w.read(8, 0).is_err());
    assert!(w.hw.borrow().wire(0));
    w.w32(IPSR, IPSR_FIP);
    assert!(!w.hw.borrow().wire(0));
    // A command-queue error raises cip on its vector when cie is set.
    w.w32(CQCSR, CQCSR_CQEN | CQCSR_CIE);
    w.cmds(&[[5, 0]]);
    assert_ne!(w.r32(IPSR) & IPSR_CIP, 0);
    w.w32(IPSR, IPSR_CIP);
    assert_ne!(w.r32(IPSR) & IPSR_CIP, 0, "stays while cmd_ill is set");
}

#[test]
fn register_width_rules() {
    let mut h = RiscvHandle::new(SharedMem::new(), RiscvConfig::qemu());
    h.write64(CQCSR, 1);
    h.read64(FQT);
    assert_eq!(
        h.borrow().misuse.len(),
        2,
        "32-bit registers take 32-bit accesses"
    );
    // 64-bit registers take two 32-bit halves.
    h.write32(CQB, 0x1234_5402);
    h.write32(CQB + 4, 0);
    assert_eq!(h.read64(CQB), 0x1234_5402);
}
