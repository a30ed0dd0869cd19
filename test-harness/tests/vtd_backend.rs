//! The VT-d backend (`iommu_hal::vtd`) driving the register-level VT-d model
//! (`iommu_test_harness::model::vtd`): bring-up under several CAP/ECAP configurations, DMA
//! through tables built with `PageTable<VtdSl>`, invalidation sufficiency (the model's IOTLB,
//! context cache and paging-structure cache keep stale entries until the right invalidation),
//! blocking, fault draining, bounded waits and hostile register values.

use std::cell::Cell;
use std::rc::Rc;

use iommu_hal::RegisterAccess;
use iommu_hal::backend::{
    Backend, BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultReason, FaultRecord,
};
use iommu_hal::pagetable::format::VtdSl;
use iommu_hal::pagetable::{Gather, LeafSizes, Map, PageTable, Perms, Unmap};
use iommu_hal::vtd::{Timing, VtdBackend, VtdConfig, VtdError, VtdUnit, WaitFor, regs};
use iommu_test_harness::model::vtd::{
    FaultReason as HwReason, Granularity, InvalidationRecord, VtdConfig as ModelCfg, VtdHandle,
};
use iommu_test_harness::rig::{self, FakeDelay, Tap};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = VtdBackend<VtdHandle, SharedMem, FakeDelay, 2>;

const POOL: u64 = 0x100_0000;
const SID: u16 = 0x0008; // 00:01.0
const SID2: u16 = 0x0310; // 03:02.0

struct Rig {
    mem: SharedMem,
    hw: VtdHandle,
    be: Be,
    alloc: SimAlloc,
}

fn rig_with(model: ModelCfg, cfg: VtdConfig) -> Rig {
    let mem = SharedMem::new();
    let hw = VtdHandle::new(mem.clone(), model);
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 1024);
    let mut be = Be::new(mem.clone(), FakeDelay::default());
    let idx = be.add_unit(hw.clone(), &mut alloc, cfg).expect("bring-up");
    assert_eq!(idx, 0);
    Rig { mem, hw, be, alloc }
}

fn rig(model: ModelCfg) -> Rig {
    rig_with(model, VtdConfig::default())
}

impl Rig {
    fn table(&mut self) -> PageTable<VtdSl> {
        rig::unit_table(&self.be.unit_info(0), &mut self.alloc)
    }

    fn domain(&self, pt: &PageTable<VtdSl>, tag: u16) -> DomainConfig {
        rig::domain(pt, tag)
    }

    fn attach(&mut self, sid: u16, pt: &PageTable<VtdSl>, tag: u16) {
        let d = self.domain(pt, tag);
        self.be
            .attach(&mut self.alloc, 0, sid as u32, d)
            .expect("attach");
    }

    /// Maps, then invalidates when the unit caches not-present entries (what the server does).
    fn map(
        &mut self,
        pt: &mut PageTable<VtdSl>,
        tag: u16,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
    ) {
        let mut g = Gather::new();
        pt.map(
            &mut self.mem,
            &mut self.alloc,
            Map {
                iova,
                phys,
                len,
                perms,
            },
            &mut g,
        )
        .expect("map");
        if self.be.unit_info(0).caches_not_present {
            self.be.invalidate(0, tag, &g).expect("invalidate map");
        }
        g.release(&mut self.mem, &mut self.alloc);
    }

    /// Unmaps, invalidates the gather, then frees the unlinked tables.
    fn unmap(&mut self, pt: &mut PageTable<VtdSl>, tag: u16, iova: u64, len: u64) {
        let mut g = Gather::new();
        pt.unmap(&mut self.mem, &mut self.alloc, Unmap { iova, len }, &mut g)
            .expect("unmap");
        self.be.invalidate(0, tag, &g).expect("invalidate");
        g.release(&mut self.mem, &mut self.alloc);
    }

    fn fill(&self, phys: u64, len: usize, byte: u8) {
        self.mem.borrow_mut().write_bytes(phys, &vec![byte; len]);
    }

    fn drain(&mut self) -> (Vec<FaultRecord>, bool) {
        let mut v = Vec::new();
        let ovf = self.be.drain_faults(0, &mut |r| v.push(r)).expect("drain");
        (v, ovf)
    }

    fn assert_clean(&self) {
        let v = self.hw.violations();
        assert!(v.is_empty(), "model saw driver errors: {v:#?}");
        let s = self.hw.stats();
        assert_eq!(s.stale_hits, 0, "stale IOTLB hits");
        assert_eq!(s.stale_context_hits, 0, "stale context-cache hits");
    }

    fn iotlb_log(&self) -> Vec<InvalidationRecord> {
        self.hw
            .invalidation_log()
            .into_iter()
            .filter(|r| matches!(r, InvalidationRecord::Iotlb { .. }))
            .collect()
    }
}

fn configs() -> Vec<(&'static str, ModelCfg, VtdConfig)> {
    let regs_only = VtdConfig {
        use_queue: false,
        ..VtdConfig::default()
    };
    vec![
        ("qemu", ModelCfg::qemu(), VtdConfig::default()),
        (
            "no-qi",
            ModelCfg::qemu().with_qi(false),
            VtdConfig::default(),
        ),
        ("qi-unused", ModelCfg::qemu(), regs_only),
        (
            "caching-mode",
            ModelCfg::qemu().with_caching_mode(true),
            VtdConfig::default(),
        ),
        (
            "cm-no-qi",
            ModelCfg::qemu().with_caching_mode(true).with_qi(false),
            VtdConfig::default(),
        ),
        (
            "no-1g",
            ModelCfg::qemu().with_large_pages(true, false),
            VtdConfig::default(),
        ),
        (
            "4k-only",
            ModelCfg::qemu().with_large_pages(false, false),
            VtdConfig::default(),
        ),
        (
            "39-bit",
            ModelCfg::qemu().with_widths(true, false, false),
            VtdConfig::default(),
        ),
        (
            "57-bit",
            ModelCfg::qemu().with_widths(false, false, true),
            VtdConfig::default(),
        ),
        (
            "rwbf-coherent",
            ModelCfg::qemu().with_rwbf(true).with_coherent(true),
            VtdConfig::default(),
        ),
        (
            "no-psi",
            ModelCfg::qemu().with_psi(false, 0),
            VtdConfig::default(),
        ),
        (
            "mamv-4",
            ModelCfg::qemu().with_psi(true, 4),
            VtdConfig::default(),
        ),
        (
            "8-records",
            ModelCfg::qemu().with_fault_records(8),
            VtdConfig::default(),
        ),
    ]
}

#[test]
fn bring_up_on_qemu_unit() {
    let r = rig(ModelCfg::qemu());
    let info = r.be.unit_info(0);
    assert_eq!(r.be.unit_count(), 1);
    assert_eq!(info.addr_width, 48);
    assert_eq!(info.phys_width, 48);
    assert_eq!(info.leaf_sizes, LeafSizes::STANDARD);
    assert!(!info.caches_not_present);
    assert!(info.split_live_blocks);
    assert!(!info.coherent_walk);
    assert_eq!(info.max_tag, u16::MAX);
    let unit = r.be.unit(0).unwrap();
    assert!(unit.uses_queue());
    {
        let m = r.hw.borrow();
        assert!(m.translation_enabled());
        assert_eq!(m.root_table(), unit.root_table());
    }
    let s = r.hw.stats();
    assert_eq!(s.qi_enables, 1);
    assert_eq!(s.srtp, 1);
    assert_eq!(s.te_enables, 1);
    // Global context-cache then global IOTLB invalidation, through the queue, then a wait.
    let log = r.hw.invalidation_log();
    assert!(matches!(
        log[0],
        InvalidationRecord::Context {
            granularity: Granularity::Global,
            queued: true,
            ..
        }
    ));
    assert!(matches!(
        log[1],
        InvalidationRecord::Iotlb {
            granularity: Granularity::Global,
            queued: true,
            ..
        }
    ));
    assert!(matches!(
        log[2],
        InvalidationRecord::Wait {
            status_write: Some(_),
            ..
        }
    ));
    let c = r.be.counters(0).unwrap();
    assert_eq!((c.ctx_global, c.iotlb_global, c.waits), (1, 1, 1));
    // Out-of-range unit index: the first unit's info.
    assert_eq!(r.be.unit_info(7), info);
    r.assert_clean();
}

#[test]
fn bring_up_variants() {
    for (name, model, cfg) in configs() {
        let r = rig_with(model.clone(), cfg);
        let info = r.be.unit_info(0);
        let unit = r.be.unit(0).unwrap();
        assert!(r.hw.borrow().translation_enabled(), "{name}");
        let qi = model.ecap & 2 != 0 && cfg.use_queue;
        assert_eq!(unit.uses_queue(), qi, "{name}");
        if !qi {
            assert!(r.hw.stats().register_invalidations >= 2, "{name}");
            assert_eq!(r.hw.stats().qi_enables, 0, "{name}");
        }
        assert_eq!(info.caches_not_present, model.cap & (1 << 7) != 0, "{name}");
        let expect_aw = match name {
            "39-bit" => 39,
            "57-bit" => 57,
            _ => 48,
        };
        assert_eq!(info.addr_width, expect_aw, "{name}");
        let expect_leaves = match name {
            "no-1g" => LeafSizes::SZ_4K.union(LeafSizes::SZ_2M),
            "4k-only" => LeafSizes::SZ_4K,
            _ => LeafSizes::STANDARD,
        };
        assert_eq!(info.leaf_sizes, expect_leaves, "{name}");
        assert_eq!(info.coherent_walk, name == "rwbf-coherent", "{name}");
        if name == "rwbf-coherent" {
            assert!(r.hw.stats().wbf >= 1);
        }
        r.assert_clean();
    }
}

#[test]
fn domain_id_space_follows_nd() {
    for nd in 0..=6u8 {
        let r = rig(ModelCfg::qemu().with_nd(nd));
        let expect = ((1u32 << (4 + 2 * nd as u32)) - 1) as u16;
        assert_eq!(r.be.unit_info(0).max_tag, expect, "nd {nd}");
    }
}

#[test]
fn dma_through_attached_domain() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let mut pt = r.table();
        r.attach(SID, &pt, 1);
        r.map(&mut pt, 1, 0x10000, 0x4000_0000, 0x4000, Perms::RW);
        r.fill(0x4000_1000, 0x1000, 0xab);
        let got = r.hw.dma_read(SID, 0x11000, 16).expect(name);
        assert_eq!(got, vec![0xab; 16], "{name}");
        r.hw.dma_write(SID, 0x13ff8, &[7; 8]).expect(name);
        let mut b = [0u8; 8];
        r.mem.borrow().read_bytes(0x4000_3ff8, &mut b);
        assert_eq!(b, [7; 8], "{name}");
        // Another device on another bus (a second context table) is still blocked.
        let e = r.hw.dma_read(SID2, 0x11000, 4).unwrap_err();
        assert_eq!(e.reason, HwReason::RootNotPresent, "{name}");
        let (faults, _) = r.drain();
        assert_eq!(faults.len(), 1, "{name}");
        assert_eq!(faults[0].reason, FaultReason::Blocked, "{name}");
        assert_eq!(faults[0].device, SID2 as u32, "{name}");
        r.assert_clean();
    }
}

#[test]
fn unmap_then_invalidate_makes_dma_fault() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let mut pt = r.table();
        r.attach(SID, &pt, 3);
        r.map(&mut pt, 3, 0x40_0000, 0x4000_0000, 0x10000, Perms::RW);
        // Warm the IOTLB with every page.
        for p in 0..16u64 {
            r.hw.dma_read(SID, 0x40_0000 + p * 0x1000, 8).expect(name);
        }
        r.unmap(&mut pt, 3, 0x40_3000, 0x2000);
        for p in 0..16u64 {
            let iova = 0x40_0000 + p * 0x1000;
            let res = r.hw.dma_read(SID, iova, 8);
            if (3..5).contains(&p) {
                let e = res.unwrap_err();
                assert_eq!(e.reason, HwReason::Read, "{name} page {p}");
            } else {
                res.unwrap_or_else(|e| panic!("{name} page {p}: {e:?}"));
            }
        }
        let (faults, ovf) = r.drain();
        assert!(!faults.is_empty(), "{name}");
        assert!(!ovf || name != "8-records", "{name}");
        for f in &faults {
            assert_eq!(f.reason, FaultReason::NotPresent, "{name}");
            assert!(!f.write);
            assert!(f.iova == 0x40_3000 || f.iova == 0x40_4000, "{name} {f:?}");
        }
        r.assert_clean();
    }
}

#[test]
fn one_page_selective_invalidation_per_gather() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(SID, &pt, 2);
    r.map(&mut pt, 2, 0x100_0000, 0x4000_0000, 0x40_0000, Perms::RW);
    r.hw.borrow_mut().clear_invalidation_log();
    let before = r.be.counters(0).unwrap();
    // 3 pages at an odd offset inside a 2 MiB leaf: the leaf is split, and the whole 2 MiB
    // must be invalidated (AM = 9).
    r.unmap(&mut pt, 2, 0x101_3000, 0x3000);
    let log = r.iotlb_log();
    assert_eq!(log.len(), 1, "{log:?}");
    match log[0] {
        InvalidationRecord::Iotlb {
            granularity: Granularity::Page,
            did: 2,
            addr,
            am,
            queued: true,
            ..
        } => {
            assert_eq!(addr, 0x100_0000);
            assert_eq!(am, 9);
        }
        ref other => panic!("{other:?}"),
    }
    let after = r.be.counters(0).unwrap();
    assert_eq!(after.iotlb_pages, before.iotlb_pages + 1);
    assert_eq!(after.waits, before.waits + 1);
    // An empty gather issues nothing.
    r.be.invalidate(0, 2, &Gather::new()).unwrap();
    assert_eq!(r.iotlb_log().len(), 1);
    assert_eq!(r.be.counters(0).unwrap().waits, after.waits);
    r.assert_clean();
}

#[test]
fn psi_falls_back_to_domain_selective() {
    // Without PSI, and with a span that needs a mask above MAMV.
    for (model, iova, len) in [
        (ModelCfg::qemu().with_psi(false, 0), 0x40_0000u64, 0x1000u64),
        (ModelCfg::qemu().with_psi(true, 2), 0x40_0000, 0x8000),
        // Two pages straddling a 1 GiB boundary need AM 19 > 18.
        (ModelCfg::qemu(), 0x3fff_f000, 0x2000),
    ] {
        let mut r = rig(model);
        let mut pt = r.table();
        r.attach(SID, &pt, 5);
        r.map(&mut pt, 5, iova, 0x4000_0000, len, Perms::RW);
        r.hw.dma_read(SID, iova, 8).unwrap();
        r.hw.borrow_mut().clear_invalidation_log();
        r.unmap(&mut pt, 5, iova, len);
        let log = r.iotlb_log();
        assert_eq!(log.len(), 1);
        assert!(
            matches!(
                log[0],
                InvalidationRecord::Iotlb {
                    requested: 2,
                    did: 5,
                    ..
                }
            ),
            "{log:?}"
        );
        assert!(r.hw.dma_read(SID, iova, 8).is_err());
        r.assert_clean();
    }
}

#[test]
fn split_of_a_2m_leaf_is_invalidated_entirely() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        if !r.be.unit_info(0).leaf_sizes.contains(1 << 21) {
            continue;
        }
        let mut pt = r.table();
        r.attach(SID, &pt, 4);
        r.map(&mut pt, 4, 0x20_0000, 0x4020_0000, 0x20_0000, Perms::RW);
        assert_eq!(pt.query(&r.mem, 0x20_0000).unwrap().leaf_size, 1 << 21);
        // Cache the 2 MiB translation.
        r.hw.dma_read(SID, 0x20_0000, 8).expect(name);
        r.unmap(&mut pt, 4, 0x30_0000, 0x1000);
        assert!(r.hw.dma_read(SID, 0x30_0000, 8).is_err(), "{name}");
        assert!(r.hw.dma_write(SID, 0x30_0ff0, &[1; 8]).is_err(), "{name}");
        // Everything else still reaches the same memory.
        for off in [0u64, 0xff000, 0x101000, 0x1ff000] {
            r.fill(0x4020_0000 + off, 8, off as u8 ^ 0x5a);
            let got = r.hw.dma_read(SID, 0x20_0000 + off, 8).expect(name);
            assert_eq!(got, vec![off as u8 ^ 0x5a; 8], "{name} {off:#x}");
        }
        r.assert_clean();
    }
}

#[test]
fn unlinked_tables_are_not_reached_through_stale_walk_caches() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let mut pt = r.table();
        r.attach(SID, &pt, 6);
        // A lone page: unmapping it empties (and unlinks) its page table and directory.
        let iova = 0x10_0000_0000u64;
        r.map(&mut pt, 6, iova, 0x4000_0000, 0x1000, Perms::RW);
        r.fill(0x4000_0000, 8, 0x11);
        assert_eq!(r.hw.dma_read(SID, iova, 8).expect(name), vec![0x11; 8]);
        let free_before = r.alloc.available();
        // Unmapping the whole 2 MiB the page table translates unlinks it (a smaller unmap
        // keeps it, empty, in the engine's reserve).
        r.unmap(&mut pt, 6, iova, 0x20_0000);
        assert!(r.alloc.available() > free_before, "{name}: tables freed");
        assert!(r.hw.dma_read(SID, iova, 8).is_err(), "{name}");
        // Reuse the freed frames for new tables at another place, then map the old IOVA anew
        // to other memory: a stale walk cache would lead into a recycled frame.
        r.map(&mut pt, 6, 0x1_0000_0000, 0x5000_0000, 0x1000, Perms::RW);
        r.map(&mut pt, 6, iova, 0x4100_0000, 0x1000, Perms::RW);
        r.fill(0x4100_0000, 8, 0x22);
        r.fill(0x5000_0000, 8, 0x33);
        assert_eq!(r.hw.dma_read(SID, iova, 8).expect(name), vec![0x22; 8]);
        assert_eq!(
            r.hw.dma_read(SID, 0x1_0000_0000, 8).expect(name),
            vec![0x33; 8]
        );
        r.drain();
        r.assert_clean();
    }
}

#[test]
fn missing_invalidation_is_visible_in_the_model() {
    // The control experiment: without the backend's invalidation the model serves the stale
    // translation, so the tests above do test the invalidations.
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    r.map(&mut pt, 1, 0x10000, 0x4000_0000, 0x1000, Perms::RW);
    r.hw.dma_read(SID, 0x10000, 8).unwrap();
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x10000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    assert!(r.hw.dma_read(SID, 0x10000, 8).is_ok(), "stale hit expected");
    assert!(r.hw.stats().stale_hits > 0);
    r.be.invalidate(0, 1, &g).unwrap();
    assert!(r.hw.dma_read(SID, 0x10000, 8).is_err());
}

#[test]
fn block_makes_dma_fault_and_records_it() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let mut pt = r.table();
        r.attach(SID, &pt, 9);
        r.map(&mut pt, 9, 0x10000, 0x4000_0000, 0x1000, Perms::RW);
        r.hw.dma_write(SID, 0x10000, &[1; 8]).expect(name);
        assert!(r.hw.borrow().context_cached(SID), "{name}");
        r.be.block(0, SID as u32).expect(name);
        let e = r.hw.dma_write(SID, 0x10008, &[2; 8]).unwrap_err();
        assert_eq!(e.reason, HwReason::ContextNotPresent, "{name}");
        let (faults, ovf) = r.drain();
        assert!(!ovf);
        assert_eq!(faults.len(), 1, "{name}");
        let f = faults[0];
        assert_eq!(
            f,
            FaultRecord {
                unit: 0,
                device: SID as u32,
                iova: 0x10000,
                write: true,
                reason: FaultReason::Blocked,
            },
            "{name}"
        );
        // Drained means cleared.
        assert!(r.hw.fault_records().is_empty(), "{name}");
        assert!(r.drain().0.is_empty());
        // Blocking again is never short-cut (an earlier block may have cleared the entry and
        // failed before the invalidation completed; its domain id is gone): a global
        // context-cache invalidation and a wait. A device on a bus without a context table
        // was never attached since bring-up and needs nothing.
        let c = r.be.counters(0).unwrap();
        r.be.block(0, SID as u32).unwrap();
        r.be.block(0, SID2 as u32).unwrap();
        let now = r.be.counters(0).unwrap();
        assert_eq!(now.ctx_global, c.ctx_global + 1, "{name}");
        assert_eq!(now.waits, c.waits + 1, "{name}");
        assert_eq!(now.iotlb_domain, c.iotlb_domain, "{name}");
        // Re-attaching restores DMA.
        r.attach(SID, &pt, 9);
        r.hw.dma_write(SID, 0x10000, &[3; 8]).expect(name);
        r.assert_clean();
    }
}

#[test]
fn moving_a_device_between_domains() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let mut a = r.table();
        let mut b = r.table();
        r.map(&mut a, 1, 0x10000, 0x4000_0000, 0x1000, Perms::RW);
        r.map(&mut b, 2, 0x10000, 0x4100_0000, 0x1000, Perms::RW);
        r.fill(0x4000_0000, 8, 0xaa);
        r.fill(0x4100_0000, 8, 0xbb);
        r.attach(SID, &a, 1);
        assert_eq!(r.hw.dma_read(SID, 0x10000, 8).expect(name), vec![0xaa; 8]);
        r.hw.borrow_mut().clear_invalidation_log();
        r.attach(SID, &b, 2);
        assert_eq!(r.hw.dma_read(SID, 0x10000, 8).expect(name), vec![0xbb; 8]);
        let log = r.hw.invalidation_log();
        assert!(
            log.iter().any(|x| matches!(
                x,
                InvalidationRecord::Context {
                    granularity: Granularity::Device,
                    sid: SID,
                    did: 1,
                    ..
                }
            )),
            "{name} {log:?}"
        );
        assert!(
            log.iter().any(|x| matches!(
                x,
                InvalidationRecord::Iotlb {
                    granularity: Granularity::Domain,
                    did: 1,
                    ..
                }
            )),
            "{name} {log:?}"
        );
        // Attaching to the same domain again changes nothing.
        let c = r.be.counters(0).unwrap();
        r.attach(SID, &b, 2);
        assert_eq!(r.be.counters(0).unwrap(), c, "{name}");
        // And back.
        r.attach(SID, &a, 1);
        assert_eq!(r.hw.dma_read(SID, 0x10000, 8).expect(name), vec![0xaa; 8]);
        r.assert_clean();
    }
}

#[test]
fn permission_and_not_present_faults_are_told_apart() {
    let mut r = rig(ModelCfg::qemu().with_fault_records(4));
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    r.map(&mut pt, 1, 0x10000, 0x4000_0000, 0x1000, Perms::R);
    r.hw.dma_read(SID, 0x10000, 8).unwrap();
    assert!(r.hw.dma_write(SID, 0x10010, &[1; 4]).is_err());
    assert!(r.hw.dma_read(SID, 0x20000, 4).is_err());
    assert!(r.hw.dma_read(SID, 1 << 50, 4).is_err());
    let (faults, ovf) = r.drain();
    assert!(!ovf);
    assert_eq!(faults.len(), 3, "{faults:?}");
    assert_eq!(
        (faults[0].iova, faults[0].write, faults[0].reason),
        (0x10000, true, FaultReason::Permission)
    );
    assert_eq!(
        (faults[1].iova, faults[1].write, faults[1].reason),
        (0x20000, false, FaultReason::NotPresent)
    );
    assert_eq!(faults[2].reason, FaultReason::AddressSize);
    assert_eq!(r.be.counters(0).unwrap().faults, 3);
    r.assert_clean();
}

#[test]
fn fault_overflow_is_reported_once() {
    let mut r = rig(ModelCfg::qemu()); // one recording register
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    for p in 0..3u64 {
        assert!(r.hw.dma_read(SID, 0x10000 + p * 0x1000, 4).is_err());
    }
    let (faults, ovf) = r.drain();
    assert_eq!(faults.len(), 1);
    assert!(ovf);
    let (faults, ovf) = r.drain();
    assert!(faults.is_empty());
    assert!(!ovf);
    // Recording works again after the drain.
    assert!(r.hw.dma_read(SID, 0x50000, 4).is_err());
    let (faults, ovf) = r.drain();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].iova, 0x50000);
    assert!(!ovf);
    let _ = &mut pt;
    r.assert_clean();
}

#[test]
fn invalidate_all_drops_every_translation_of_the_domain() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(SID, &pt, 7);
    r.map(&mut pt, 7, 0x10000, 0x4000_0000, 0x8000, Perms::RW);
    for p in 0..8u64 {
        r.hw.dma_read(SID, 0x10000 + p * 0x1000, 4).unwrap();
    }
    assert!(r.hw.borrow().iotlb_contains(7, 0x13000));
    r.be.invalidate_all(0, 7).unwrap();
    assert!(!r.hw.borrow().iotlb_contains(7, 0x13000));
    assert_eq!(r.be.counters(0).unwrap().iotlb_domain, 1);
    r.assert_clean();
}

#[test]
fn bad_requests_are_refused_without_touching_the_unit() {
    let mut r = rig(ModelCfg::qemu().with_nd(0).with_widths(true, true, false));
    let mut pt = r.table();
    r.map(&mut pt, 1, 0x10000, 0x4000_0000, 0x1000, Perms::RW);
    let good = r.domain(&pt, 1);
    let snapshot = r.mem.borrow().snapshot();
    let log = r.hw.invalidation_log().len();
    let c = r.be.counters(0).unwrap();
    let cases: Vec<(u32, u32, DomainConfig, VtdError)> = vec![
        (1, SID as u32, good, VtdError::BadUnit),
        (0, 0x1_0000, good, VtdError::BadDevice),
        (
            0,
            SID as u32,
            DomainConfig { tag: 0, ..good },
            VtdError::BadTag,
        ),
        (
            0,
            SID as u32,
            DomainConfig { tag: 16, ..good },
            VtdError::BadTag,
        ),
        (
            0,
            SID as u32,
            DomainConfig {
                addr_width: 57,
                levels: 5,
                ..good
            },
            VtdError::BadDomain,
        ),
        (
            0,
            SID as u32,
            DomainConfig { levels: 3, ..good },
            VtdError::BadDomain,
        ),
        (
            0,
            SID as u32,
            DomainConfig {
                root: good.root + 8,
                ..good
            },
            VtdError::BadDomain,
        ),
    ];
    for (unit, dev, d, want) in cases {
        let e =
            r.be.attach(&mut r.alloc, unit as usize, dev, d)
                .unwrap_err();
        assert_eq!(e, want);
    }
    assert_eq!(VtdError::BadUnit.kind(), ErrorKind::BadDevice);
    assert_eq!(VtdError::BadTag.kind(), ErrorKind::Unsupported);
    assert_eq!(r.be.block(3, SID as u32), Err(VtdError::BadUnit));
    assert_eq!(r.be.block(0, 0x2_0000), Err(VtdError::BadDevice));
    assert_eq!(r.be.invalidate(0, 0, &Gather::new()), Err(VtdError::BadTag));
    assert_eq!(r.be.invalidate_all(0, 16), Err(VtdError::BadTag));
    assert_eq!(r.be.drain_faults(2, &mut |_| {}), Err(VtdError::BadUnit));
    assert_eq!(r.mem.borrow().snapshot(), snapshot);
    assert_eq!(r.hw.invalidation_log().len(), log);
    assert_eq!(r.be.counters(0).unwrap(), c);
    r.assert_clean();
}

#[test]
fn frame_shortage() {
    // At bring-up: nothing is written to the unit and every frame comes back.
    let mem = SharedMem::new();
    let hw = VtdHandle::new(mem.clone(), ModelCfg::qemu());
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be = Be::new(mem.clone(), FakeDelay::default());
    for n in 0..3 {
        alloc.fail_in(n);
        let e = be
            .add_unit(hw.clone(), &mut alloc, VtdConfig::default())
            .unwrap_err();
        assert_eq!(e, VtdError::NoFrame);
        assert_eq!(e.kind(), ErrorKind::NoFrame);
        assert_eq!(alloc.in_use, 0);
        assert_eq!(hw.stats().gcmd_writes, 0);
        assert_eq!(be.unit_count(), 0);
    }
    alloc.no_failures();
    be.add_unit(hw.clone(), &mut alloc, VtdConfig::default())
        .unwrap();

    // At attach: the context table of a new bus.
    let mut r = rig(ModelCfg::qemu());
    let pt = r.table();
    let d = r.domain(&pt, 1);
    r.alloc.fail_in(0);
    let snapshot = r.mem.borrow().snapshot();
    assert_eq!(
        r.be.attach(&mut r.alloc, 0, SID as u32, d),
        Err(VtdError::NoFrame)
    );
    assert_eq!(r.mem.borrow().snapshot(), snapshot);
    r.alloc.no_failures();
    r.attach(SID, &pt, 1);
    // A second device on the same bus needs no frame.
    r.alloc.fail_in(0);
    r.be.attach(&mut r.alloc, 0, (SID + 1) as u32, d).unwrap();
}

#[test]
fn too_many_units() {
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be: VtdBackend<VtdHandle, SharedMem, FakeDelay, 1> =
        VtdBackend::new(mem.clone(), FakeDelay::default());
    let a = VtdHandle::new(mem.clone(), ModelCfg::qemu());
    let b = VtdHandle::new(mem.clone(), ModelCfg::qemu());
    assert_eq!(be.add_unit(a, &mut alloc, VtdConfig::default()), Ok(0));
    assert_eq!(
        be.add_unit(b.clone(), &mut alloc, VtdConfig::default()),
        Err(VtdError::TooManyUnits)
    );
    assert_eq!(b.stats().gcmd_writes, 0);
}

#[test]
fn two_units_are_independent() {
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 256);
    let mut be = Be::new(mem.clone(), FakeDelay::default());
    let u0 = VtdHandle::new(mem.clone(), ModelCfg::qemu());
    let u1 = VtdHandle::new(mem.clone(), ModelCfg::qemu().with_qi(false));
    assert_eq!(
        be.add_unit(u0.clone(), &mut alloc, VtdConfig::default()),
        Ok(0)
    );
    assert_eq!(
        be.add_unit(u1.clone(), &mut alloc, VtdConfig::default()),
        Ok(1)
    );
    let info = be.unit_info(1);
    let mut pt: PageTable<VtdSl> = rig::unit_table(&info, &mut alloc);
    let mut g = Gather::new();
    let mut m = mem.clone();
    pt.map(
        &mut m,
        &mut alloc,
        Map {
            iova: 0x10000,
            phys: 0x4000_0000,
            len: 0x1000,
            perms: Perms::RW,
        },
        &mut g,
    )
    .unwrap();
    let d = rig::domain(&pt, 1);
    be.attach(&mut alloc, 1, SID as u32, d).unwrap();
    assert!(u1.dma_read(SID, 0x10000, 4).is_ok());
    assert!(u0.dma_read(SID, 0x10000, 4).is_err());
    assert!(u0.violations().is_empty() && u1.violations().is_empty());
}

// ---- bounded waits -----------------------------------------------------------------------

/// A unit whose registers read as QEMU's CAP/ECAP and otherwise as zero: GSTS never
/// acknowledges anything.
#[derive(Debug)]
struct DeadUnit;

impl RegisterAccess for DeadUnit {
    fn read32(&mut self, _offset: usize) -> u32 {
        0
    }
    fn write32(&mut self, _offset: usize, _value: u32) {}
    fn read64(&mut self, offset: usize) -> u64 {
        match offset {
            regs::CAP => 0x00d2_008c_222f_0606,
            regs::ECAP => 0xf0_0f0a,
            _ => 0,
        }
    }
    fn write64(&mut self, _offset: usize, _value: u64) {}
}

/// A unit that acknowledges global commands but never processes its invalidation queue.
#[derive(Debug, Default)]
struct StuckQueue {
    gsts: u32,
}

impl RegisterAccess for StuckQueue {
    fn read32(&mut self, offset: usize) -> u32 {
        if offset == regs::GSTS { self.gsts } else { 0 }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        if offset == regs::GCMD {
            self.gsts = (value & regs::gcmd::PERSISTENT) | (value & regs::gcmd::SRTP);
        }
    }
    fn read64(&mut self, offset: usize) -> u64 {
        DeadUnit.read64(offset)
    }
    fn write64(&mut self, _offset: usize, _value: u64) {}
}

#[test]
fn unacknowledged_command_times_out() {
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let delay = FakeDelay::default();
    let mut m = mem.clone();
    let mut d = delay.clone();
    let e = VtdUnit::new(DeadUnit, &mut m, &mut d, &mut alloc, VtdConfig::default()).unwrap_err();
    assert_eq!(e, VtdError::Timeout(WaitFor::Gsts(regs::gcmd::SRTP)));
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // 10 ms of (fake) waiting, not more.
    assert_eq!(delay.0.get(), 10_000_000);

    let delay = FakeDelay::default();
    let mut d = delay.clone();
    let cfg = VtdConfig {
        timing: Timing {
            timeout_ns: 1_000,
            poll_ns: 300,
        },
        ..VtdConfig::default()
    };
    let e = VtdUnit::new(StuckQueue::default(), &mut m, &mut d, &mut alloc, cfg).unwrap_err();
    assert_eq!(e, VtdError::Timeout(WaitFor::Queue));
    assert_eq!(delay.0.get(), 1_200);
}

#[test]
fn register_invalidation_that_never_completes_times_out() {
    /// Register-based invalidation whose ICC bit never clears.
    #[derive(Debug, Default)]
    struct StuckCcmd(StuckQueue, u64);
    impl RegisterAccess for StuckCcmd {
        fn read32(&mut self, o: usize) -> u32 {
            self.0.read32(o)
        }
        fn write32(&mut self, o: usize, v: u32) {
            self.0.write32(o, v)
        }
        fn read64(&mut self, o: usize) -> u64 {
            match o {
                regs::ECAP => 0xf0_0f08, // no QI
                regs::CCMD => self.1,
                _ => self.0.read64(o),
            }
        }
        fn write64(&mut self, o: usize, v: u64) {
            if o == regs::CCMD {
                self.1 = v;
            }
        }
    }
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut m = mem.clone();
    let mut d = FakeDelay::default();
    let e = VtdUnit::new(
        StuckCcmd::default(),
        &mut m,
        &mut d,
        &mut alloc,
        VtdConfig::default(),
    )
    .unwrap_err();
    assert_eq!(e, VtdError::Timeout(WaitFor::Ccmd));
}

// ---- queue error recovery ----------------------------------------------------------------

/// Wraps the model; when armed, corrupts the first descriptor of the next submission (after
/// the driver wrote it, before the unit fetches it), as a buggy descriptor would.
struct Corrupting {
    hw: VtdHandle,
    mem: SharedMem,
    queue: u64,
    last_tail: u64,
    armed: Rc<Cell<bool>>,
}

impl RegisterAccess for Corrupting {
    fn read32(&mut self, o: usize) -> u32 {
        self.hw.read32(o)
    }
    fn write32(&mut self, o: usize, v: u32) {
        self.hw.write32(o, v)
    }
    fn read64(&mut self, o: usize) -> u64 {
        self.hw.read64(o)
    }
    fn write64(&mut self, o: usize, v: u64) {
        if o == regs::IQA {
            self.queue = v & !0xfff;
        }
        if o == regs::IQT {
            if self.armed.replace(false) {
                // Type 0xf: not a descriptor type.
                self.mem
                    .borrow_mut()
                    .write(self.queue + self.last_tail, 0xf);
            }
            self.last_tail = v;
        }
        self.hw.write64(o, v)
    }
}

#[test]
fn queue_error_is_reported_and_the_queue_recovers() {
    let mem = SharedMem::new();
    let hw = VtdHandle::new(mem.clone(), ModelCfg::qemu());
    let armed = Rc::new(Cell::new(false));
    let regs = Corrupting {
        hw: hw.clone(),
        mem: mem.clone(),
        queue: 0,
        last_tail: 0,
        armed: armed.clone(),
    };
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be: VtdBackend<Corrupting, SharedMem, FakeDelay, 1> =
        VtdBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(regs, &mut alloc, VtdConfig::default()).unwrap();
    armed.set(true);
    let e = be.invalidate_all(0, 1).unwrap_err();
    assert!(
        matches!(e, VtdError::QueueError { fsts } if fsts & regs::fsts::IQE != 0),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Hardware);
    assert_eq!(be.counters(0).unwrap().hw_errors, 1);
    // The unit resumed: the next requests complete, and IQE is clear.
    be.invalidate_all(0, 1).unwrap();
    be.invalidate_all(0, 2).unwrap();
    assert_eq!(hw.borrow_mut().read32(regs::FSTS) & regs::fsts::IQE, 0);
    let doms: Vec<u16> = hw
        .invalidation_log()
        .iter()
        .filter_map(|r| match r {
            InvalidationRecord::Iotlb {
                granularity: Granularity::Domain,
                did,
                ..
            } => Some(*did),
            _ => None,
        })
        .collect();
    assert_eq!(doms, vec![1, 2]);
}

// ---- hostile registers -------------------------------------------------------------------

/// Every read returns pseudo-random bits; writes are ignored.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl RegisterAccess for Noise {
    fn read32(&mut self, _o: usize) -> u32 {
        self.next() as u32
    }
    fn write32(&mut self, _o: usize, _v: u32) {}
    fn read64(&mut self, _o: usize) -> u64 {
        self.next()
    }
    fn write64(&mut self, _o: usize, _v: u64) {}
}

#[test]
fn hostile_register_values_give_errors_not_panics() {
    let cfg = VtdConfig {
        timing: Timing {
            timeout_ns: 2_000,
            poll_ns: 500,
        },
        ..VtdConfig::default()
    };
    let mut ok = 0;
    for seed in 1..400u64 {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
        let mut be: VtdBackend<Noise, SharedMem, FakeDelay, 1> =
            VtdBackend::new(mem.clone(), FakeDelay::default());
        if be
            .add_unit(Noise(seed * 0x9e37_79b9), &mut alloc, cfg)
            .is_err()
        {
            continue;
        }
        ok += 1;
        let info = be.unit_info(0);
        let d = DomainConfig {
            tag: 1,
            root: 0x20_0000,
            levels: match info.addr_width {
                39 => 3,
                57 => 5,
                _ => 4,
            },
            addr_width: info.addr_width,
        };
        let _ = be.attach(&mut alloc, 0, SID as u32, d);
        let mut g = Gather::new();
        g.add_range(0x1000, 0x3000, 0x1000);
        let _ = be.invalidate(0, 1, &g);
        let _ = be.invalidate_all(0, 1);
        let _ = be.drain_faults(0, &mut |_| {});
        let _ = be.block(0, SID as u32);
        let _ = be.drain_faults(0, &mut |_| {});
    }
    // Noise rarely passes bring-up (its FRO/NFR/IRO hardly fit the register block).
    let _ = ok;
}

/// The model, until `noisy` is set; from then on every read returns pseudo-random bits and
/// every write still reaches the model.
struct TurnsHostile {
    hw: VtdHandle,
    noisy: Rc<Cell<bool>>,
    rng: Noise,
}

impl RegisterAccess for TurnsHostile {
    fn read32(&mut self, o: usize) -> u32 {
        if self.noisy.get() {
            self.rng.next() as u32
        } else {
            self.hw.read32(o)
        }
    }
    fn write32(&mut self, o: usize, v: u32) {
        self.hw.write32(o, v)
    }
    fn read64(&mut self, o: usize) -> u64 {
        if self.noisy.get() {
            self.rng.next()
        } else {
            self.hw.read64(o)
        }
    }
    fn write64(&mut self, o: usize, v: u64) {
        self.hw.write64(o, v)
    }
}

#[test]
fn a_unit_turning_hostile_after_bring_up_gives_errors_not_panics() {
    let cfg = VtdConfig {
        timing: Timing {
            timeout_ns: 2_000,
            poll_ns: 500,
        },
        ..VtdConfig::default()
    };
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 1..200u64 {
        for model in [ModelCfg::qemu(), ModelCfg::qemu().with_qi(false)] {
            let mem = SharedMem::new();
            let hw = VtdHandle::new(mem.clone(), model.with_fault_records(4));
            let noisy = Rc::new(Cell::new(false));
            let regs = TurnsHostile {
                hw: hw.clone(),
                noisy: noisy.clone(),
                rng: Noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
            let mut be: VtdBackend<TurnsHostile, SharedMem, FakeDelay, 1> =
                VtdBackend::new(mem.clone(), FakeDelay::default());
            be.add_unit(regs, &mut alloc, cfg).unwrap();
            let info = be.unit_info(0);
            let mut pt: PageTable<VtdSl> = rig::unit_table(&info, &mut alloc);
            let mut g = Gather::new();
            let mut m = mem.clone();
            pt.map(
                &mut m,
                &mut alloc,
                Map {
                    iova: 0x10000,
                    phys: 0x4000_0000,
                    len: 0x1000,
                    perms: Perms::R,
                },
                &mut g,
            )
            .unwrap();
            let d = rig::domain(&pt, 1);
            be.attach(&mut alloc, 0, SID as u32, d).unwrap();
            let _ = hw.dma_write(SID, 0x10000, &[1; 4]);
            noisy.set(true);
            let mut record = |r: Result<(), VtdError>| {
                outcomes.insert(format!("{:?}", r.map_err(|e| e.kind())));
            };
            record(be.attach(&mut alloc, 0, SID2 as u32, d));
            record(be.invalidate(0, 1, &g));
            record(be.invalidate_all(0, 1));
            record(be.drain_faults(0, &mut |_| {}).map(|_| ()));
            record(be.block(0, SID as u32));
            record(be.attach(&mut alloc, 0, SID as u32, d));
        }
    }
    // Both successes and the error kinds hostile values lead to were seen.
    assert!(outcomes.contains("Ok(())"), "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o.contains("Timeout")),
        "{outcomes:?}"
    );
}

/// A unit that does not snoop (ECAP.C = 0) writes the wait descriptor's status word by DMA:
/// the backend invalidates it from the CPU caches before each read; a coherent unit needs no
/// cache maintenance at all.
#[test]
fn queue_status_is_invalidated_before_reads_only_on_non_coherent_units() {
    for coherent in [false, true] {
        let mut r = rig(ModelCfg::qemu().with_coherent(coherent));
        assert_eq!(r.be.unit_info(0).coherent_walk, coherent);
        let mut pt = r.table();
        r.attach(SID, &pt, 1);
        r.map(&mut pt, 1, 0x10000, 0x4000_0000, 0x1000, Perms::RW);
        let before = r.mem.borrow().cpu_syncs;
        r.unmap(&mut pt, 1, 0x10000, 0x1000);
        let after = r.mem.borrow().cpu_syncs;
        if coherent {
            assert_eq!(after, 0, "coherent: no cache maintenance");
        } else {
            assert!(
                after > before,
                "non-coherent: status word invalidated before reading"
            );
        }
        r.assert_clean();
    }
}

/// The x86 fault-event message the tests program: the local APIC window, vector 0x41.
const MSI: FaultInterrupt = FaultInterrupt::Msi {
    address: 0xfee0_0000,
    data: 0x41,
};

/// VT-d 7.3: with the fault event programmed, a fault raises one message (FEDATA to FEADDR);
/// before that the event is masked (held pending, sent as the mask clears); after a drain the
/// next fault raises the next message, also when the drain found the unit overflowed.
#[test]
fn fault_interrupt_when_enabled_not_when_masked_and_again_after_a_drain() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        let pt = r.table();
        r.attach(SID, &pt, 1);
        assert!(r.hw.dma_read(SID, 0x10000, 4).is_err());
        assert!(r.hw.fault_messages().is_empty(), "{name}: masked at reset");
        r.be.enable_fault_interrupt(0, MSI).expect("enable");
        assert_eq!(
            r.hw.fault_messages(),
            [(0xfee0_0000, 0x41)],
            "{name}: the pending event is sent as the mask clears"
        );
        assert_eq!(r.drain().0.len(), 1, "{name}");
        assert!(r.hw.dma_read(SID, 0x11000, 4).is_err());
        assert_eq!(
            r.hw.fault_messages().len(),
            2,
            "{name}: re-armed by the drain"
        );
        // Faults while one is pending raise nothing new (here the single recording register
        // of QEMU's unit overflows); the drain clears everything, the next fault interrupts.
        for p in 0..3u64 {
            assert!(r.hw.dma_read(SID, 0x20000 + p * 0x1000, 4).is_err());
        }
        assert_eq!(r.hw.fault_messages().len(), 2, "{name}");
        let (recs, _) = r.drain();
        assert!(!recs.is_empty(), "{name}");
        assert!(r.hw.dma_read(SID, 0x30000, 4).is_err());
        assert_eq!(
            r.hw.fault_messages(),
            [(0xfee0_0000, 0x41); 3],
            "{name}: re-armed after an overflow"
        );
        r.assert_clean();
    }
}

/// Requests the unit cannot signal are refused with Unsupported and change nothing: a wired
/// line (the fault event is a message only), reserved address bits, an upper address on a
/// unit without extended interrupt mode, data wider than FEDATA's 16 bits.
#[test]
fn fault_interrupts_the_unit_cannot_send_are_refused_untouched() {
    let mut model = ModelCfg::qemu();
    model.ecap &= !(1 << 4); // no ECAP.EIM
    let mut r = rig(model);
    let bad = [
        FaultInterrupt::Wired,
        FaultInterrupt::Msi {
            address: 0xfee0_0002,
            data: 0x41,
        },
        FaultInterrupt::Msi {
            address: 0x1_fee0_0000,
            data: 0x41,
        },
        FaultInterrupt::Msi {
            address: 0xfee0_0000,
            data: 0x1_0041,
        },
    ];
    for irq in bad {
        let e = r.be.enable_fault_interrupt(0, irq).unwrap_err();
        assert_eq!(e, VtdError::Unsupported, "{irq:?}");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
    assert_eq!(
        r.hw.borrow_mut().read32(regs::FECTL),
        regs::fectl::IM,
        "still masked"
    );
    assert_eq!(r.hw.borrow_mut().read32(regs::FEADDR), 0);
    assert_eq!(
        r.be.enable_fault_interrupt(3, MSI),
        Err(VtdError::BadUnit),
        "no such unit"
    );
    // With extended interrupt mode the upper half goes to FEUADDR.
    let mut r = rig(ModelCfg::qemu());
    let x2apic = FaultInterrupt::Msi {
        address: 0x0000_0100_fee0_0000,
        data: 0x41,
    };
    r.be.enable_fault_interrupt(0, x2apic).expect("enable");
    assert_eq!(r.hw.borrow_mut().read32(regs::FEUADDR), 0x100);
    let pt = r.table();
    r.attach(SID, &pt, 1);
    assert!(r.hw.dma_read(SID, 0x1000, 4).is_err());
    assert_eq!(r.hw.fault_messages(), [(0x0000_0100_fee0_0000, 0x41)]);
    r.assert_clean();
}

/// A fault recorded while the drain runs, in a register the drain already passed, leaves
/// PPF set: no new fault event will come for it. The drain sees PPF still set, drains again,
/// and leaves the unit with nothing pending, so the next fault raises the next message.
#[test]
fn fault_recorded_during_a_drain_is_drained_and_the_unit_re_armed() {
    let mem = SharedMem::new();
    let hw = VtdHandle::new(mem.clone(), ModelCfg::qemu().with_fault_records(2));
    let tap = Tap::new(hw.clone());
    let arm = tap.arming();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 1024);
    let mut be: VtdBackend<Tap<VtdHandle>, SharedMem, FakeDelay, 1> =
        VtdBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(tap, &mut alloc, VtdConfig::default())
        .expect("bring-up");
    let pt: PageTable<VtdSl> = rig::unit_table(&be.unit_info(0), &mut alloc);
    be.attach(&mut alloc, 0, u32::from(SID), rig::domain(&pt, 1))
        .expect("attach");
    be.enable_fault_interrupt(0, MSI).expect("enable");
    // Records 0 and 1 hold a fault each; one message.
    assert!(hw.dma_read(SID, 0x1000, 4).is_err());
    assert!(hw.dma_read(SID, 0x2000, 4).is_err());
    assert_eq!(hw.fault_messages().len(), 1);
    // As the drain clears record 1 (the last of its pass), the device faults again: the
    // record lands in register 0, already passed, while PPF is set.
    let fro = ((hw.borrow().config().cap >> 24) & 0x3ff) as usize * 16;
    let late = hw.clone();
    arm.before_write(fro + 16 + 8, move || {
        assert!(late.dma_read(SID, 0x3000, 4).is_err());
    });
    let mut recs = Vec::new();
    be.drain_faults(0, &mut |r| recs.push(r.iova))
        .expect("drain");
    assert!(arm.all_ran());
    assert_eq!(
        recs,
        [0x1000, 0x2000, 0x3000],
        "the late record drained too"
    );
    assert_eq!(
        hw.fault_messages().len(),
        1,
        "no message for the late record"
    );
    assert!(hw.fault_records().is_empty());
    assert!(hw.dma_read(SID, 0x4000, 4).is_err());
    assert_eq!(hw.fault_messages().len(), 2, "the next fault interrupts");
    assert!(hw.violations().is_empty(), "{:?}", hw.violations());
}
