//! Tests of the VT-d model, driven through its registers with tables built by hand from the
//! spec's bit layouts (chapter 9 entries, chapter 11 registers, 6.5.2 descriptors).

use iommu_hal::RegisterAccess;
use iommu_test_harness::model::vtd::{
    FaultReason, Granularity, InvalidationRecord, QEMU_CAP, VtdConfig, VtdHandle, VtdModel,
};
use iommu_test_harness::sim::SharedMem;

// Register offsets (spec 11.4), written out here rather than taken from the model.
const CAP: usize = 0x08;
const ECAP: usize = 0x10;
const GCMD: usize = 0x18;
const GSTS: usize = 0x1c;
const RTADDR: usize = 0x20;
const CCMD: usize = 0x28;
const FSTS: usize = 0x34;
const FECTL: usize = 0x38;
const FEDATA: usize = 0x3c;
const FEADDR: usize = 0x40;
const IQH: usize = 0x80;
const IQT: usize = 0x88;
const IQA: usize = 0x90;
const ICS: usize = 0x9c;
const IVA: usize = 0xf0;
const IOTLB: usize = 0xf8;
const FRCD: usize = 0x220;

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const WBF: u32 = 1 << 27;
const QIE: u32 = 1 << 26;
const PERSISTENT: u32 = TE | (1 << 28) | QIE | (1 << 25) | (1 << 23);

const ROOT: u64 = 0x10_0000;
const SID: u16 = 0x0008; // 00:01.0
const DID: u16 = 1;

const R: u64 = 1;
const W: u64 = 2;
const RW: u64 = 3;
const PS: u64 = 1 << 7;

/// A unit plus a bump allocator of table frames and the helpers software would use.
struct Rig {
    m: VtdModel,
    mem: SharedMem,
    next: u64,
}

impl Rig {
    fn new(cfg: VtdConfig) -> Self {
        let mem = SharedMem::new();
        let m = VtdModel::new(mem.clone(), cfg);
        Rig {
            m,
            mem,
            next: 0x20_0000,
        }
    }

    fn frame(&mut self) -> u64 {
        let f = self.next;
        self.next += 0x1000;
        f
    }

    fn w64(&self, pa: u64, v: u64) {
        self.mem.borrow_mut().write(pa, v);
    }

    fn r64(&self, pa: u64) -> u64 {
        self.mem.borrow().read(pa)
    }

    /// Issues one GCMD command the way the spec asks: persistent state from GSTS plus the bit.
    fn gcmd(&mut self, set: u32, clear: u32) {
        let s = self.m.read32(GSTS) & PERSISTENT;
        self.m.write32(GCMD, (s | set) & !clear);
    }

    /// Root entry for the bus of `sid` (allocating a context table) and a context entry.
    fn context(&mut self, sid: u16, did: u16, slpt: u64, aw: u64, tt: u64) {
        let re = ROOT + u64::from(sid >> 8) * 16;
        let mut ctp = self.r64(re) & !0xfff;
        if self.r64(re) & 1 == 0 {
            ctp = self.frame();
            self.w64(re, ctp | 1);
        }
        let ce = ctp + u64::from(sid & 0xff) * 16;
        self.w64(ce + 8, aw | (u64::from(did) << 8));
        self.w64(ce, slpt | (tt << 2) | 1);
    }

    /// Maps `iova` -> `pa` with a leaf at `leaf_level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) in the
    /// second-level tables rooted at `top` with `levels` levels.
    fn map(&mut self, top: u64, levels: u8, iova: u64, pa: u64, leaf_level: u8, perm: u64) {
        let mut table = top;
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (u32::from(level) - 1);
            let ea = table + ((iova >> shift) & 511) * 8;
            if level == leaf_level {
                let ps = if level > 1 { PS } else { 0 };
                self.w64(ea, pa | ps | perm);
                return;
            }
            let e = self.r64(ea);
            table = if e & 3 != 0 {
                e & !0xfff
            } else {
                let t = self.frame();
                self.w64(ea, t | RW);
                t
            };
            level -= 1;
        }
    }

    /// The address of the entry at `level` for `iova` (tables must exist down to it).
    fn entry(&self, top: u64, levels: u8, iova: u64, level: u8) -> u64 {
        let mut table = top;
        let mut l = levels;
        loop {
            let shift = 12 + 9 * (u32::from(l) - 1);
            let ea = table + ((iova >> shift) & 511) * 8;
            if l == level {
                return ea;
            }
            table = self.r64(ea) & !0xfff & ((1 << 52) - 1);
            l -= 1;
        }
    }

    /// Register-based global context-cache and IOTLB invalidation.
    fn flush_all_registers(&mut self) {
        self.m.write64(CCMD, (1 << 63) | (1 << 61));
        assert_eq!(self.m.read64(CCMD) >> 63, 0);
        self.m.write64(IOTLB, (1 << 63) | (1 << 60));
        assert_eq!(self.m.read64(IOTLB) >> 63, 0);
    }

    /// RTADDR, SRTP, global invalidations, TE: the enable sequence of the spec.
    fn enable(&mut self) {
        self.m.write64(RTADDR, ROOT);
        self.gcmd(SRTP, 0);
        assert_ne!(self.m.read32(GSTS) & SRTP, 0, "RTPS");
        self.flush_all_registers();
        self.gcmd(TE, 0);
        assert_ne!(self.m.read32(GSTS) & TE, 0, "TES");
    }

    /// A 4-level domain for SID with DID, enabled, returning its top table.
    fn simple(cfg: VtdConfig) -> (Rig, u64) {
        let mut r = Rig::new(cfg);
        let top = r.frame();
        r.context(SID, DID, top, 2, 0);
        r.enable();
        (r, top)
    }

    fn psi(&mut self, did: u16, addr: u64, am: u64, ih: bool) -> u64 {
        self.m.write64(IVA, addr | (u64::from(ih) << 6) | am);
        self.m
            .write64(IOTLB, (1 << 63) | (3 << 60) | (u64::from(did) << 32));
        let v = self.m.read64(IOTLB);
        assert_eq!(v >> 63, 0);
        (v >> 57) & 3
    }

    fn frcd(&mut self, n: usize) -> (u64, u64) {
        (
            self.m.read64(FRCD + 16 * n),
            self.m.read64(FRCD + 16 * n + 8),
        )
    }
}

// ---- register basics ----

#[test]
fn reset_values_and_capabilities() {
    let mut r = Rig::new(VtdConfig::default());
    assert_eq!(r.m.read64(CAP), 0x00d2_008c_222f_0606);
    assert_eq!(QEMU_CAP, 0x00d2_008c_222f_0606);
    let ecap = r.m.read64(ECAP);
    assert_eq!(((ecap >> 8) & 0x3ff) * 16, 0xf0, "IOTLB registers at 0xf0");
    assert_ne!(ecap & 2, 0, "QI");
    assert_eq!(r.m.read32(GSTS), 0);
    assert_eq!(r.m.read32(FECTL), 1 << 31, "FECTL.IM set at reset");
    assert_eq!(r.m.read32(FSTS), 0);
    // 32-bit halves of a 64-bit register.
    assert_eq!(r.m.read32(CAP), 0x222f_0606);
    assert_eq!(r.m.read32(CAP + 4), 0x00d2_008c);
    // Unknown offsets read 0; writes there are violations.
    assert_eq!(r.m.read32(0x30), 0);
    assert!(r.m.violations().is_empty());
    r.m.write32(0x30, 5);
    assert_eq!(r.m.violations().len(), 1);
    // CAP is read-only.
    r.m.write64(CAP, 0);
    assert_eq!(r.m.read64(CAP), QEMU_CAP);
    assert_eq!(r.m.violations().len(), 2);
}

#[test]
fn gcmd_handshakes_and_persistent_bits() {
    let mut r = Rig::new(VtdConfig::default());
    r.m.write64(RTADDR, ROOT);
    r.gcmd(SRTP, 0);
    assert_eq!(r.m.read32(GSTS), SRTP, "RTPS set, nothing else");
    assert_eq!(r.m.root_table(), ROOT);
    assert_eq!(r.m.read32(GCMD), 0, "GCMD reads as 0");
    r.gcmd(TE, 0);
    assert_eq!(r.m.read32(GSTS), SRTP | TE);
    r.gcmd(WBF, 0);
    assert_eq!(
        r.m.read32(GSTS) & WBF,
        0,
        "WBFS clear once the flush is done"
    );
    assert_eq!(r.m.stats().wbf, 1);
    assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());

    // A driver that writes only the one-shot bit (not rebuilding from GSTS) turns TE off.
    r.m.write32(GCMD, SRTP);
    assert_eq!(
        r.m.read32(GSTS) & TE,
        0,
        "TE disabled by a GCMD write without TE"
    );
    assert_eq!(r.m.stats().te_disables, 1);
    assert_eq!(r.m.violations().len(), 1, "two fields changed in one write");

    // A driver that copies GSTS (including RTPS) into GCMD re-issues SRTP.
    r.m.clear_violations();
    r.gcmd(TE, 0);
    let srtp_before = r.m.stats().srtp;
    let gsts = r.m.read32(GSTS);
    r.m.write32(GCMD, gsts | WBF);
    assert_eq!(r.m.stats().srtp, srtp_before + 1);
    assert_eq!(r.m.violations().len(), 1);
}

#[test]
fn enabling_te_before_srtp_is_a_violation() {
    let mut r = Rig::new(VtdConfig::default());
    r.gcmd(TE, 0);
    assert_ne!(r.m.read32(GSTS) & TE, 0);
    assert_eq!(r.m.violations().len(), 1);
}

// ---- translation ----

#[test]
fn translation_4k_all_levels_and_widths() {
    for (aw, levels, cfg) in [
        (1u64, 3u8, VtdConfig::default()),
        (2, 4, VtdConfig::default()),
        (3, 5, VtdConfig::default().with_widths(true, true, true)),
    ] {
        let mut r = Rig::new(cfg);
        let top = r.frame();
        r.context(SID, DID, top, aw, 0);
        r.enable();
        let iova = 0x7f_1234_5000 & ((1u64 << (30 + 9 * aw)) - 1);
        let pa = 0x4000_0000;
        r.map(top, levels, iova, pa, 1, RW);
        r.m.dma_write(SID, iova + 0x10, b"hello").unwrap();
        assert_eq!(
            r.mem.borrow().read(pa + 0x10) & 0xff_ffff_ffff,
            0x6f6c6c6568
        );
        assert_eq!(r.m.dma_read(SID, iova + 0x10, 5).unwrap(), b"hello");
        assert_eq!(r.m.translate(SID, iova + 0xabc, false), Ok(pa + 0xabc));
        assert_eq!(r.m.probe(SID, iova, true), Ok(pa));
        // The next page is not mapped.
        let e = r.m.dma_read(SID, iova + 0x1000, 4).unwrap_err();
        assert_eq!(e.reason, FaultReason::Read);
        assert_eq!(e.addr, iova + 0x1000);
        assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());
    }
}

#[test]
fn dma_crossing_pages_is_translated_per_page() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x1000, 0x50_0000, 1, RW);
    r.map(top, 4, 0x2000, 0x90_0000, 1, RW);
    let data: Vec<u8> = (0..32u8).collect();
    r.m.dma_write(SID, 0x1ff0, &data).unwrap();
    let mut a = [0u8; 16];
    r.mem.borrow().read_bytes(0x50_0ff0, &mut a);
    assert_eq!(&a, &data[..16]);
    r.mem.borrow().read_bytes(0x90_0000, &mut a);
    assert_eq!(&a, &data[16..]);
    assert_eq!(r.m.dma_read(SID, 0x1ff0, 32).unwrap(), data);
    // A write running into an unmapped page faults at the first unmapped byte.
    let e = r.m.dma_write(SID, 0x2ff8, &[1; 16]).unwrap_err();
    assert_eq!(
        (e.reason, e.addr, e.write),
        (FaultReason::Write, 0x3000, true)
    );
}

#[test]
fn large_pages_2m_and_1g() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x4020_0000, 0x8000_0000, 2, RW);
    r.map(top, 4, 0x80_0000_0000, 0x1_0000_0000, 3, R);
    assert_eq!(
        r.m.translate(SID, 0x4020_0000 + 0x1f_f123, true),
        Ok(0x8000_0000 + 0x1f_f123)
    );
    assert_eq!(
        r.m.translate(SID, 0x80_0000_0000 + 0x3fff_f000, false),
        Ok(0x1_3fff_f000)
    );
    assert_eq!(
        r.m.translate(SID, 0x80_0000_0000, true),
        Err(FaultReason::Write),
        "1 GiB page is read-only"
    );
    assert!(
        r.m.iotlb_contains(DID, 0x4030_0000),
        "one 2 MiB IOTLB entry covers the page"
    );
}

#[test]
fn large_page_without_sllps_or_misaligned_is_reserved() {
    let (mut r, top) = Rig::simple(VtdConfig::default().with_large_pages(true, false));
    r.map(top, 4, 0x4000_0000, 0x4000_0000, 3, RW);
    assert_eq!(
        r.m.translate(SID, 0x4000_0000, false),
        Err(FaultReason::PagingEntryReserved)
    );
    r.map(top, 4, 0x20_0000, 0x60_1000, 2, RW); // address bits 20:12 set in a 2 MiB leaf
    assert_eq!(
        r.m.translate(SID, 0x20_0000, false),
        Err(FaultReason::PagingEntryReserved)
    );
    // Bit 7 in a PML4E is reserved.
    let e = r.entry(top, 4, 0x20_0000, 4);
    let v = r.r64(e);
    r.w64(e, v | PS);
    r.m.write64(IOTLB, (1 << 63) | (1 << 60));
    assert_eq!(
        r.m.translate(SID, 0x20_0000, false),
        Err(FaultReason::PagingEntryReserved)
    );
    // Address bits above HAW (48) are reserved.
    r.w64(e, v | (1 << 50));
    r.m.write64(IOTLB, (1 << 63) | (1 << 60));
    assert_eq!(
        r.m.translate(SID, 0x20_0000, false),
        Err(FaultReason::PagingEntryReserved)
    );
}

#[test]
fn root_and_context_faults() {
    let mut r = Rig::new(VtdConfig::default());
    r.enable();
    assert_eq!(
        r.m.translate(0x0100, 0, false),
        Err(FaultReason::RootNotPresent)
    );
    let top = r.frame();
    r.context(SID, DID, top, 2, 0);
    assert_eq!(
        r.m.translate(SID + 1, 0, false),
        Err(FaultReason::ContextNotPresent)
    );
    // AW = 3 (57-bit) is not in QEMU's SAGAW.
    r.context(SID + 2, DID, top, 3, 0);
    assert_eq!(
        r.m.translate(SID + 2, 0, false),
        Err(FaultReason::ContextInvalid)
    );
    // TT = 11 is reserved; TT = 01 needs device-TLB support.
    r.context(SID + 3, DID, top, 2, 3);
    assert_eq!(
        r.m.translate(SID + 3, 0, false),
        Err(FaultReason::ContextInvalid)
    );
    r.context(SID + 4, DID, top, 2, 1);
    assert_eq!(
        r.m.translate(SID + 4, 0, false),
        Err(FaultReason::ContextInvalid)
    );
    // Reserved bits in the context entry.
    r.context(SID + 5, DID, top, 2 | (1 << 30), 0);
    assert_eq!(
        r.m.translate(SID + 5, 0, false),
        Err(FaultReason::ContextReserved)
    );
    // Reserved bits in the root entry.
    let re = ROOT + 2 * 16;
    let ct = r.frame();
    r.w64(re, ct | 1 | (1 << 5));
    assert_eq!(
        r.m.translate(0x0200, 0, false),
        Err(FaultReason::RootReserved)
    );
    // A 39-bit context: addresses from 2^39 up are beyond the width.
    r.context(SID + 6, DID + 1, top, 1, 0);
    assert_eq!(
        r.m.translate(SID + 6, 1 << 39, false),
        Err(FaultReason::AddressBeyondMgaw)
    );
    // Pass-through (TT = 10, ECAP.PT).
    r.context(SID + 7, DID, 0, 2, 2);
    assert_eq!(r.m.translate(SID + 7, 0x1234_5678, true), Ok(0x1234_5678));
}

#[test]
fn translation_disabled_passes_through() {
    let mut r = Rig::new(VtdConfig::default());
    assert_eq!(r.m.translate(SID, 0xabc_d000, true), Ok(0xabc_d000));
    r.m.dma_write(SID, 0x3000, &[7; 4]).unwrap();
    assert_eq!(r.r64(0x3000) & 0xffff_ffff, 0x0707_0707);
}

#[test]
fn permissions_are_anded_across_levels() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x5000, 0x9000, 1, RW);
    let pde = r.entry(top, 4, 0x5000, 2);
    let v = r.r64(pde);
    r.w64(pde, v & !W);
    assert_eq!(r.m.translate(SID, 0x5000, true), Err(FaultReason::Write));
    assert_eq!(r.m.translate(SID, 0x5000, false), Ok(0x9000));
    r.map(top, 4, 0x6000, 0xa000, 1, W);
    assert_eq!(r.m.translate(SID, 0x6000, false), Err(FaultReason::Read));
}

// ---- fault recording ----

#[test]
fn fault_recording_w1c_and_overflow() {
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    let e = r.m.dma_write(SID, 0xdead_b000 + 8, &[1]).unwrap_err();
    assert!(e.recorded);
    assert_eq!(e.reason, FaultReason::Write);
    let fsts = r.m.read32(FSTS);
    assert_ne!(fsts & 2, 0, "PPF");
    assert_eq!((fsts >> 8) & 0xff, 0, "FRI");
    let (lo, hi) = r.frcd(0);
    assert_eq!(lo, 0xdead_b000);
    assert_eq!(hi >> 63, 1, "F");
    assert_eq!((hi >> 62) & 1, 0, "T = 0: write");
    assert_eq!((hi >> 32) & 0xff, 5, "FR");
    assert_eq!(hi & 0xffff, u64::from(SID));
    // NFR = 1: the next fault overflows.
    let e2 = r.m.dma_read(SID, 0x1000, 1).unwrap_err();
    assert!(!e2.recorded);
    assert_ne!(r.m.read32(FSTS) & 1, 0, "PFO");
    assert_eq!(r.frcd(0).0, 0xdead_b000, "first record kept");
    // PPF is read-only: writing it changes nothing.
    r.m.write32(FSTS, 2);
    assert_ne!(r.m.read32(FSTS) & 2, 0);
    // Clear F with a 32-bit W1C of bit 31 of the top dword.
    r.m.write32(FRCD + 12, 1 << 31);
    assert_eq!(r.frcd(0).1 >> 63, 0);
    assert_eq!(r.m.read32(FSTS) & 2, 0, "PPF follows the F fields");
    // PFO still set: faults are dropped until it is cleared.
    assert!(!r.m.dma_read(SID, 0x1000, 1).unwrap_err().recorded);
    r.m.write32(FSTS, 1);
    assert_eq!(r.m.read32(FSTS), 0);
    let e3 = r.m.dma_read(SID, 0x2000, 1).unwrap_err();
    assert!(e3.recorded);
    let (lo, hi) = r.frcd(0);
    assert_eq!(
        (lo, (hi >> 62) & 1, (hi >> 32) & 0xff),
        (0x2000, 1, 6),
        "read fault, T = 1"
    );
    // Clear with a 64-bit write of the value read.
    r.m.write64(FRCD + 8, hi);
    assert!(r.m.fault_records().is_empty());
    assert_eq!(r.m.stats().faults_recorded, 2);
    assert_eq!(r.m.stats().faults_dropped, 2);
    assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());
}

#[test]
fn fault_record_index_advances_and_wraps() {
    let (mut r, _top) = Rig::simple(VtdConfig::default().with_fault_records(3));
    for i in 0..3u64 {
        assert!(r.m.dma_read(SID, i << 12, 1).unwrap_err().recorded);
    }
    let recs = r.m.fault_records();
    assert_eq!(
        recs.iter().map(|f| f.page).collect::<Vec<_>>(),
        vec![0, 0x1000, 0x2000]
    );
    assert_eq!((r.m.read32(FSTS) >> 8) & 0xff, 0, "FRI: first pending");
    // Free register 0 and 1; the next fault goes to register 0 (wrapped).
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.write32(FRCD + 16 + 12, 1 << 31);
    assert!(r.m.dma_read(SID, 0x9000, 1).unwrap_err().recorded);
    assert_eq!(r.frcd(0).0, 0x9000);
    assert!(r.m.dma_read(SID, 0xa000, 1).unwrap_err().recorded);
    assert_eq!(r.frcd(1).0, 0xa000);
    assert!(
        !r.m.dma_read(SID, 0xb000, 1).unwrap_err().recorded,
        "register 2 still full"
    );
}

#[test]
fn fault_event_respects_the_mask() {
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    r.m.dma_read(SID, 0, 1).unwrap_err();
    assert_eq!(r.m.stats().fault_interrupts, 0, "masked at reset");
    assert_eq!(r.m.read32(FECTL), (1 << 31) | (1 << 30), "IM and IP");
    r.m.write32(FECTL, 0);
    assert_eq!(r.m.stats().fault_interrupts, 1, "delivered on unmask");
    assert_eq!(r.m.read32(FECTL), 0);
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.dma_read(SID, 0, 1).unwrap_err();
    assert_eq!(r.m.stats().fault_interrupts, 2);
}

/// VT-d 7.3: one fault event message per new interrupt condition (a status bit set while
/// none was), sent as FEDATA to FEADDR; nothing while masked (IP holds it) or while an earlier
/// condition is still pending; the next fault after software cleared every status raises the
/// next message.
#[test]
fn fault_event_is_one_message_per_condition() {
    let (mut r, _top) = Rig::simple(VtdConfig::default().with_fault_records(2));
    r.m.write32(FEDATA, 0x41);
    r.m.write32(FEADDR, 0xfee0_0000);
    r.m.write32(FECTL, 0);
    r.m.dma_read(SID, 0, 1).unwrap_err();
    assert_eq!(r.m.fault_messages(), [(0xfee0_0000, 0x41)]);
    assert!(!r.m.fault_event_pending());
    // PPF still set: a second fault is no new condition.
    r.m.dma_read(SID, 0x1000, 1).unwrap_err();
    assert_eq!(r.m.fault_messages().len(), 1);
    // Clearing one record leaves PPF set (the other record): still nothing new.
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.dma_read(SID, 0x2000, 1).unwrap_err();
    assert_eq!(r.m.fault_messages().len(), 1);
    // Every record cleared: the next fault raises the next message.
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.write32(FRCD + 16 + 12, 1 << 31);
    assert_eq!(r.m.read32(FSTS) & 2, 0, "PPF clear");
    r.m.dma_read(SID, 0x3000, 1).unwrap_err();
    assert_eq!(r.m.fault_messages().len(), 2);
    // Masked: held pending, sent on unmask.
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.write32(FRCD + 16 + 12, 1 << 31);
    r.m.write32(FECTL, 1 << 31);
    r.m.dma_read(SID, 0x4000, 1).unwrap_err();
    assert_eq!(r.m.fault_messages().len(), 2);
    assert!(r.m.fault_event_pending());
    r.m.write32(FECTL, 0);
    assert_eq!(r.m.fault_messages().len(), 3);
    assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());
    // Overflow: PFO stays set until cleared, and blocks new conditions like PPF does.
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    r.m.write32(FEDATA, 0x42);
    r.m.write32(FEADDR, 0xfee0_1000);
    r.m.write32(FECTL, 0);
    r.m.dma_read(SID, 0, 1).unwrap_err();
    r.m.dma_read(SID, 0x1000, 1).unwrap_err(); // dropped: PFO
    assert_eq!(r.m.read32(FSTS) & 3, 3, "PFO and PPF");
    r.m.write32(FRCD + 12, 1 << 31);
    r.m.dma_read(SID, 0x2000, 1).unwrap_err(); // PFO pending: no event, not recorded
    assert_eq!(r.m.fault_messages().len(), 1);
    r.m.write32(FSTS, 1);
    r.m.dma_read(SID, 0x3000, 1).unwrap_err();
    assert_eq!(r.m.fault_messages(), [(0xfee0_1000, 0x42); 2]);
}

/// The fault event is an interrupt message that is never remapped: an address outside the
/// interrupt range is a software error.
#[test]
fn fault_event_outside_the_interrupt_range_is_a_violation() {
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    r.m.write32(FEADDR, 0x1000);
    r.m.write32(FECTL, 0);
    r.m.dma_read(SID, 0, 1).unwrap_err();
    assert_eq!(r.m.fault_messages(), [(0x1000, 0)]);
    assert_eq!(r.m.violations().len(), 1, "{:?}", r.m.violations());
}

#[test]
fn fpd_suppresses_recording() {
    let mut r = Rig::new(VtdConfig::default());
    let top = r.frame();
    r.context(SID, DID, top, 2, 0);
    let ce = (r.r64(ROOT) & !0xfff) + u64::from(SID & 0xff) * 16;
    let v = r.r64(ce);
    r.w64(ce, v | 2);
    r.enable();
    let e = r.m.dma_read(SID, 0x1000, 4).unwrap_err();
    assert_eq!(e.reason, FaultReason::Read);
    assert!(!e.recorded);
    assert_eq!(r.m.read32(FSTS), 0);
    assert_eq!(r.m.stats().faults_suppressed, 1);
}

// ---- caches ----

#[test]
fn stale_iotlb_entry_until_right_page_invalidation() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x40_0000, 0x100_0000, 1, RW);
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Ok(0x100_0000));
    // Remap to another page without invalidating: the device still reaches the old one.
    r.map(top, 4, 0x40_0000, 0x200_0000, 1, RW);
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Ok(0x100_0000));
    assert_eq!(r.m.probe(SID, 0x40_0000, false), Ok(0x200_0000));
    assert_eq!(r.m.stats().stale_hits, 1);
    // Wrong DID.
    assert_eq!(r.psi(DID + 1, 0x40_0000, 0, false), 3);
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Ok(0x100_0000));
    // Right DID, wrong page.
    r.psi(DID, 0x40_1000, 0, false);
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Ok(0x100_0000));
    // Right DID and page.
    r.psi(DID, 0x40_0000, 0, false);
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Ok(0x200_0000));
    // Unmap + domain invalidation: the page faults.
    let pte = r.entry(top, 4, 0x40_0000, 1);
    r.w64(pte, 0);
    assert_eq!(
        r.m.translate(SID, 0x40_0000, false),
        Ok(0x200_0000),
        "stale until invalidated"
    );
    r.m.write64(IOTLB, (1 << 63) | (2 << 60) | (u64::from(DID) << 32));
    assert_eq!((r.m.read64(IOTLB) >> 57) & 3, 2, "IAIG: domain");
    assert_eq!(r.m.translate(SID, 0x40_0000, false), Err(FaultReason::Read));
}

#[test]
fn address_mask_too_small_misses_entries() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    for i in 0..8u64 {
        r.map(top, 4, i << 12, 0x100_0000 + (i << 12), 1, RW);
        r.m.translate(SID, i << 12, false).unwrap();
    }
    for i in 0..8u64 {
        let e = r.entry(top, 4, i << 12, 1);
        r.w64(e, 0);
    }
    // 8 pages unmapped, but AM = 2 covers only 4.
    r.psi(DID, 0, 2, false);
    for i in 0..4u64 {
        assert_eq!(r.m.translate(SID, i << 12, false), Err(FaultReason::Read));
    }
    for i in 4..8u64 {
        assert!(
            r.m.translate(SID, i << 12, false).is_ok(),
            "page {i} still cached"
        );
    }
    r.psi(DID, 0, 3, false);
    for i in 0..8u64 {
        assert_eq!(r.m.translate(SID, i << 12, false), Err(FaultReason::Read));
    }
}

#[test]
fn superpage_needs_a_covering_address_mask() {
    for lenient in [false, true] {
        let cfg = VtdConfig {
            psi_overlap_invalidates_superpages: lenient,
            ..VtdConfig::default()
        };
        let (mut r, top) = Rig::simple(cfg);
        r.map(top, 4, 0x20_0000, 0x4000_0000, 2, RW);
        r.m.translate(SID, 0x20_0000, false).unwrap();
        let pde = r.entry(top, 4, 0x20_0000, 2);
        r.w64(pde, 0);
        r.psi(DID, 0x20_0000, 0, false);
        assert_eq!(
            r.m.translate(SID, 0x20_0000, false).is_ok(),
            !lenient,
            "AM = 0 leaves the 2 MiB entry unless the model is lenient"
        );
        r.psi(DID, 0x20_0000, 9, false);
        assert_eq!(r.m.translate(SID, 0x20_0000, false), Err(FaultReason::Read));
    }
}

#[test]
fn invalidation_hint_keeps_paging_structure_cache() {
    for ih in [true, false] {
        let (mut r, top) = Rig::simple(VtdConfig::default());
        r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
        r.m.translate(SID, 0x1000, false).unwrap();
        // Replace the page table under the PDE with a new one mapping elsewhere.
        let new_pt = r.frame();
        r.w64(new_pt + 8, 0x300_0000 | RW);
        let pde = r.entry(top, 4, 0x1000, 2);
        r.w64(pde, new_pt | RW);
        r.psi(DID, 0x1000, 0, ih);
        let got = r.m.translate(SID, 0x1000, false).unwrap();
        if ih {
            assert_eq!(
                got, 0x100_0000,
                "IH = 1: cached PDE still points at the old table"
            );
            assert!(r.m.stats().psc_hits >= 1);
            assert_eq!(r.m.probe(SID, 0x1000, false), Ok(0x300_0000));
        } else {
            assert_eq!(got, 0x300_0000);
        }
    }
}

#[test]
fn context_cache_stale_until_ccmd() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.m.translate(SID, 0x1000, false).unwrap();
    assert!(r.m.context_cached(SID));
    // Move the device to another domain with other tables.
    let top2 = r.frame();
    r.map(top2, 4, 0x1000, 0x200_0000, 1, RW);
    r.context(SID, 2, top2, 2, 0);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));
    assert!(r.m.stats().stale_context_hits >= 1);
    // Device-selective with the wrong DID (the new one) does not drop the cached entry.
    r.m.write64(CCMD, (1 << 63) | (3 << 61) | (u64::from(SID) << 16) | 2);
    assert_eq!((r.m.read64(CCMD) >> 59) & 3, 3, "CAIG: device");
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));
    // With the DID of the cached entry it does.
    r.m.write64(
        CCMD,
        (1 << 63) | (3 << 61) | (u64::from(SID) << 16) | u64::from(DID),
    );
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x200_0000));
    // Domain-selective.
    r.context(SID, 3, top, 2, 0);
    r.m.write64(CCMD, (1 << 63) | (2 << 61) | 3);
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Ok(0x200_0000),
        "DID 3 had nothing cached"
    );
    r.m.write64(CCMD, (1 << 63) | (2 << 61) | 2);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));
    // Global context invalidation with 32-bit writes: low half first, ICC in the high half.
    r.context(SID, 2, top2, 2, 0);
    r.m.write32(CCMD, 0);
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Ok(0x100_0000),
        "low half alone does nothing"
    );
    r.m.write32(CCMD + 4, (1 << 31) | (1 << 29));
    assert_eq!(r.m.read32(CCMD + 4) >> 31, 0);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x200_0000));
    let log = r.m.invalidation_log();
    assert!(log.iter().any(|i| matches!(
        i,
        InvalidationRecord::Context {
            granularity: Granularity::Device,
            queued: false,
            ..
        }
    )));
    assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());
}

#[test]
fn psi_without_capability_is_domain_wide_and_bad_mask_is_ignored() {
    let (mut r, top) = Rig::simple(VtdConfig::default().with_psi(false, 0));
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.m.translate(SID, 0x1000, false).unwrap();
    assert_eq!(r.psi(DID, 0x8000, 0, false), 2, "IAIG: domain");
    assert!(!r.m.iotlb_contains(DID, 0x1000));

    let (mut r, top) = Rig::simple(VtdConfig::default());
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.m.translate(SID, 0x1000, false).unwrap();
    assert_eq!(r.psi(DID, 0, 19, false), 0, "AM above MAMV (18): ignored");
    assert!(r.m.iotlb_contains(DID, 0x1000));
    assert_eq!(r.m.violations().len(), 1);
}

// ---- queued invalidation ----

fn cc_desc(g: u64, did: u16, sid: u16, fm: u64) -> [u64; 2] {
    [
        1 | (g << 4) | (u64::from(did) << 16) | (u64::from(sid) << 32) | (fm << 48),
        0,
    ]
}

fn iotlb_desc(g: u64, did: u16, addr: u64, am: u64, ih: bool) -> [u64; 2] {
    [
        2 | (g << 4) | (u64::from(did) << 16),
        addr | (u64::from(ih) << 6) | am,
    ]
}

fn wait_desc(data: u32, addr: u64, interrupt: bool) -> [u64; 2] {
    [
        5 | (u64::from(interrupt) << 4) | (1 << 5) | (u64::from(data) << 32),
        addr,
    ]
}

/// Enables QI with a one-page queue at `q`.
fn enable_qi(r: &mut Rig) -> u64 {
    let q = r.frame();
    r.m.write64(IQT, 0);
    r.m.write64(IQA, q);
    r.gcmd(QIE, 0);
    assert_ne!(r.m.read32(GSTS) & QIE, 0, "QIES");
    q
}

/// Appends descriptors at IQT and moves IQT past them.
fn submit(r: &mut Rig, q: u64, descs: &[[u64; 2]]) {
    let mut t = r.m.read64(IQT);
    for d in descs {
        r.w64(q + t, d[0]);
        r.w64(q + t + 8, d[1]);
        t = (t + 16) % 4096;
    }
    r.m.write64(IQT, t);
}

#[test]
fn queued_invalidation_with_wait_status_write() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    let q = enable_qi(&mut r);
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.m.translate(SID, 0x1000, false).unwrap();
    r.map(top, 4, 0x1000, 0x200_0000, 1, RW);
    let status = r.frame();
    submit(
        &mut r,
        q,
        &[
            iotlb_desc(3, DID, 0x1000, 0, false),
            wait_desc(0xfeed_beef, status, false),
        ],
    );
    assert_eq!(r.m.read64(IQH), r.m.read64(IQT), "all fetched");
    assert_eq!(r.m.read64(IQH), 32);
    assert_eq!(r.r64(status) & 0xffff_ffff, 0xfeed_beef);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x200_0000));
    let st = r.m.stats();
    assert_eq!((st.iotlb_inv_page, st.wait_descriptors), (1, 1));
    assert!(matches!(
        r.m.invalidation_log().last(),
        Some(InvalidationRecord::Wait { status_write: Some((a, 0xfeed_beef)), .. }) if *a == status
    ));
    // Context-cache descriptor, global IOTLB, wait with interrupt flag (masked at reset).
    submit(
        &mut r,
        q,
        &[
            cc_desc(1, 0, 0, 0),
            iotlb_desc(1, 0, 0, 0, false),
            wait_desc(1, status, true),
        ],
    );
    assert_eq!(r.m.read32(ICS), 1, "IWC");
    assert_eq!(r.m.stats().inv_interrupts, 0);
    r.m.write32(ICS, 1);
    assert_eq!(r.m.read32(ICS), 0);
    assert_eq!(r.m.cache_sizes(), (0, 0, 0));
    assert!(r.m.violations().is_empty(), "{:?}", r.m.violations());
    // Disabling QI resets IQH.
    r.gcmd(0, QIE);
    assert_eq!(r.m.read32(GSTS) & QIE, 0);
    assert_eq!(r.m.read64(IQH), 0);
}

#[test]
fn queue_wraps_around() {
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    let q = enable_qi(&mut r);
    let status = r.frame();
    for i in 0..300u32 {
        submit(&mut r, q, &[wait_desc(i, status, false)]);
    }
    assert_eq!(r.m.read64(IQH), (300 * 16) % 4096);
    assert_eq!(r.r64(status) & 0xffff_ffff, 299);
    assert_eq!(r.m.stats().wait_descriptors, 300);
}

#[test]
fn register_invalidation_is_ignored_while_qi_is_enabled() {
    let (mut r, top) = Rig::simple(VtdConfig::default());
    enable_qi(&mut r);
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.m.translate(SID, 0x1000, false).unwrap();
    r.map(top, 4, 0x1000, 0x200_0000, 1, RW);
    r.m.write64(IOTLB, (1 << 63) | (1 << 60));
    assert_eq!(r.m.read64(IOTLB) >> 63, 1, "IVT never clears");
    r.m.write64(CCMD, (1 << 63) | (1 << 61));
    assert_eq!(r.m.read64(CCMD) >> 63, 1, "ICC never clears");
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Ok(0x100_0000),
        "nothing invalidated"
    );
    assert_eq!(r.m.stats().register_inv_ignored, 2);
    assert_eq!(r.m.violations().len(), 2);
}

#[test]
fn invalid_descriptor_sets_iqe_and_stops() {
    let (mut r, _top) = Rig::simple(VtdConfig::default());
    let q = enable_qi(&mut r);
    let status = r.frame();
    // Type 3 (device-TLB) is unsupported by QEMU's unit; type 9 is not a legacy type.
    submit(
        &mut r,
        q,
        &[
            wait_desc(1, status, false),
            [3, 0],
            wait_desc(2, status, false),
        ],
    );
    assert_ne!(r.m.read32(FSTS) & (1 << 4), 0, "IQE");
    assert_eq!(r.m.read64(IQH), 16, "IQH at the bad descriptor");
    assert_eq!(r.r64(status) & 0xffff_ffff, 1);
    // Software replaces it and clears IQE: hardware resumes.
    r.w64(q + 16, wait_desc(7, status, false)[0]);
    r.w64(q + 24, status);
    r.m.write32(FSTS, 1 << 4);
    assert_eq!(r.m.read64(IQH), 48);
    assert_eq!(r.r64(status) & 0xffff_ffff, 2);
    // Reserved bits in an IOTLB descriptor and granularity 0.
    submit(&mut r, q, &[[2 | (1 << 4) | (1 << 8), 0]]);
    assert_ne!(r.m.read32(FSTS) & (1 << 4), 0);
}

// ---- caching mode ----

#[test]
fn caching_mode_caches_not_present_entries() {
    let (mut r, top) = Rig::simple(VtdConfig::default().with_caching_mode(true));
    assert_eq!(r.m.translate(SID, 0x1000, false), Err(FaultReason::Read));
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Err(FaultReason::Read),
        "negative entry: a map needs an invalidation under CM"
    );
    assert_eq!(r.m.stats().negative_hits, 1);
    r.psi(DID, 0x1000, 0, false);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));

    // Without CM the same sequence needs no invalidation.
    let (mut r, top) = Rig::simple(VtdConfig::default());
    assert_eq!(r.m.translate(SID, 0x1000, false), Err(FaultReason::Read));
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));
}

#[test]
fn caching_mode_caches_a_not_present_upper_entry_for_its_whole_region() {
    let (mut r, top) = Rig::simple(VtdConfig::default().with_caching_mode(true));
    // One access to an empty domain: the level-4 entry is not present and is cached for the
    // 512 GiB it maps.
    assert_eq!(r.m.translate(SID, 0x1000, false), Err(FaultReason::Read));
    // A map elsewhere in that region (other 2 MiB and 1 GiB ranges) is not seen either.
    r.map(top, 4, 0x4020_0000, 0x100_0000, 1, RW);
    assert_eq!(
        r.m.translate(SID, 0x4020_0000, false),
        Err(FaultReason::Read),
        "negative upper-level entry: a map anywhere under it needs an invalidation"
    );
    assert_eq!(r.m.stats().negative_hits, 1);
    // A leaf-only invalidation (IH = 1) keeps paging-structure entries, negative ones too.
    r.psi(DID, 0x4020_0000, 0, true);
    assert_eq!(
        r.m.translate(SID, 0x4020_0000, false),
        Err(FaultReason::Read)
    );
    // IH = 0 over the mapped page drops the cached entry above it.
    r.psi(DID, 0x4020_0000, 0, false);
    assert_eq!(r.m.translate(SID, 0x4020_0000, false), Ok(0x100_0000));
    // Now the walk reaches a level-1 table: a not-present page next to the mapped one is
    // cached as a negative IOTLB entry for that page only.
    assert_eq!(
        r.m.translate(SID, 0x4020_1000, false),
        Err(FaultReason::Read)
    );
    r.map(top, 4, 0x4020_1000, 0x100_1000, 1, RW);
    assert_eq!(
        r.m.translate(SID, 0x4020_1000, false),
        Err(FaultReason::Read)
    );
    assert_eq!(r.m.translate(SID, 0x4020_0000, false), Ok(0x100_0000));
    r.psi(DID, 0x4020_1000, 0, true);
    assert_eq!(r.m.translate(SID, 0x4020_1000, false), Ok(0x100_1000));
    assert_eq!(
        r.m.stats().stale_hits,
        3,
        "each negative hit differed from memory"
    );
}

#[test]
fn caching_mode_context_not_present_needs_did0_invalidation() {
    let mut r = Rig::new(VtdConfig::default().with_caching_mode(true));
    r.enable();
    let top = r.frame();
    r.map(top, 4, 0x1000, 0x100_0000, 1, RW);
    r.context(SID + 1, DID, top, 2, 0); // creates the bus-0 context table
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Err(FaultReason::ContextNotPresent)
    );
    r.context(SID, DID, top, 2, 0);
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Err(FaultReason::ContextNotPresent)
    );
    // Device-selective with the new DID misses the negative entry (tagged DID 0).
    r.m.write64(
        CCMD,
        (1 << 63) | (3 << 61) | (u64::from(SID) << 16) | u64::from(DID),
    );
    assert_eq!(
        r.m.translate(SID, 0x1000, false),
        Err(FaultReason::ContextNotPresent)
    );
    r.m.write64(CCMD, (1 << 63) | (3 << 61) | (u64::from(SID) << 16));
    assert_eq!(r.m.translate(SID, 0x1000, false), Ok(0x100_0000));
    // DID 0 in a context entry is reserved under CM.
    r.context(SID + 2, 0, top, 2, 0);
    r.m.translate(SID + 2, 0x1000, false).unwrap();
    assert_eq!(r.m.violations().len(), 1);
}

// ---- sharing ----

#[test]
fn handle_is_shared_between_driver_and_test() {
    let mem = SharedMem::new();
    let h = VtdHandle::new(mem.clone(), VtdConfig::default());
    let mut driver_side: Box<dyn RegisterAccess> = Box::new(h.clone());
    driver_side.write64(RTADDR, ROOT);
    driver_side.write32(GCMD, SRTP);
    driver_side.write32(GCMD, TE);
    assert!(h.borrow().translation_enabled());
    // No root entry: the test's DMA faults and the driver sees the record.
    let e = h.dma_read(SID, 0x1000, 8).unwrap_err();
    assert_eq!(e.reason, FaultReason::RootNotPresent);
    assert_ne!(driver_side.read32(FSTS) & 2, 0);
    assert_eq!(h.fault_records().len(), 1);
    assert_eq!(h.fault_records()[0].reason, 1);
}
