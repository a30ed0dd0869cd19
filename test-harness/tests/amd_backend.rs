//! The AMD-Vi backend (`iommu_hal::amd`) driving the register-level AMD-Vi model
//! (`iommu_test_harness::model::amd`): bring-up under several EFR / capability
//! configurations, DMA through tables built with `PageTable<AmdV1>`, blocked devices that
//! fault and never pass through, invalidation sufficiency (the model's DTE cache, IOTLB and
//! page-directory cache keep stale entries until the right command), the event log and its
//! overflow, the event interrupt, command errors and their recovery, bounded waits and
//! hostile register values.

use std::cell::Cell;
use std::rc::Rc;

use iommu_hal::RegisterAccess;
use iommu_hal::amd::{
    AmdBackend, AmdConfig, AmdError, AmdRegs, AmdUnit, ConfigAccess, NoConfig, Timing, WaitFor,
    regs, tables,
};
use iommu_hal::backend::{
    Backend, BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultReason, FaultRecord,
};
use iommu_hal::pagetable::format::AmdV1;
use iommu_hal::pagetable::{Gather, LeafSizes, Map, PageTable, Perms, Unmap};
use iommu_test_harness::model::amd::{
    AmdFault, AmdHandle, AmdModelConfig as ModelCfg, EventCode, InvalidationRecord, decode_range,
};
use iommu_test_harness::rig::{self, FakeDelay};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = AmdBackend<AmdHandle, AmdHandle, SharedMem, FakeDelay, 2>;

const POOL: u64 = 0x100_0000;
const DEV: u16 = 0x0008; // 00:01.0
const DEV2: u16 = 0x0010; // 00:02.0

/// The configuration the tests bring units up with: the IOMMU capability at the model's
/// offset, a device table for bus 0.
fn cfg() -> AmdConfig {
    AmdConfig {
        max_device_id: 0x00ff,
        cap_offset: Some(0x40),
        ..AmdConfig::default()
    }
}

struct Rig {
    mem: SharedMem,
    hw: AmdHandle,
    be: Be,
    alloc: SimAlloc,
    delay: FakeDelay,
}

fn rig_with(model: ModelCfg, config: AmdConfig) -> Rig {
    let mem = SharedMem::new();
    let hw = AmdHandle::new(mem.clone(), model);
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 2048);
    let delay = FakeDelay::default();
    let mut be = Be::new(mem.clone(), delay.clone());
    let regs = AmdRegs {
        mmio: hw.clone(),
        config: hw.clone(),
    };
    let idx = be.add_unit(regs, &mut alloc, config).expect("bring-up");
    assert_eq!(idx, 0);
    Rig {
        mem,
        hw,
        be,
        alloc,
        delay,
    }
}

fn rig(model: ModelCfg) -> Rig {
    rig_with(model, cfg())
}

impl Rig {
    fn table(&mut self) -> PageTable<AmdV1> {
        rig::unit_table(&self.be.unit_info(0), &mut self.alloc)
    }

    fn attach(&mut self, dev: u16, pt: &PageTable<AmdV1>, tag: u16) {
        let d = rig::domain(pt, tag);
        self.be
            .attach(&mut self.alloc, 0, u32::from(dev), d)
            .expect("attach");
    }

    /// Maps, then invalidates when the unit caches not-present entries (what the server does).
    fn map(
        &mut self,
        pt: &mut PageTable<AmdV1>,
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
    fn unmap(&mut self, pt: &mut PageTable<AmdV1>, tag: u16, iova: u64, len: u64) {
        let mut g = Gather::new();
        pt.unmap(&mut self.mem, &mut self.alloc, Unmap { iova, len }, &mut g)
            .expect("unmap");
        self.be.invalidate(0, tag, &g).expect("invalidate");
        g.release(&mut self.mem, &mut self.alloc);
    }

    fn drain(&mut self) -> (Vec<FaultRecord>, bool) {
        let mut v = Vec::new();
        let lost = self.be.drain_faults(0, &mut |r| v.push(r)).expect("drain");
        (v, lost)
    }

    fn assert_clean(&self) {
        let v = self.hw.violations();
        assert!(v.is_empty(), "model saw driver errors: {v:#?}");
        let s = self.hw.stats();
        assert_eq!(s.stale_hits, 0, "stale IOTLB hits");
        assert_eq!(s.stale_dte_hits, 0, "stale DTE cache hits");
    }

    fn pages_log(&self) -> Vec<InvalidationRecord> {
        self.hw
            .invalidation_log()
            .into_iter()
            .filter(|r| matches!(r, InvalidationRecord::Pages { .. }))
            .collect()
    }

    fn dte(&self, dev: u16) -> tables::Dte {
        let t = self.be.unit(0).unwrap().device_table();
        tables::DeviceTable::read(&self.mem, t.entry_pa(u32::from(dev)).unwrap())
    }
}

// ---- bring-up --------------------------------------------------------------------------

#[test]
fn bring_up_on_qemu_unit() {
    let r = rig(ModelCfg::qemu());
    let info = r.be.unit_info(0);
    assert_eq!(info.addr_width, 48);
    assert_eq!(info.phys_width, 46, "QEMU 10.0.2's PAsize");
    assert_eq!(info.leaf_sizes, LeafSizes::STANDARD, "no 512 GiB leaves");
    assert!(info.caches_not_present, "QEMU sets NpCache");
    assert!(info.coherent_walk && info.split_live_blocks);
    assert_eq!(info.max_tag, u16::MAX);
    let unit = r.be.unit(0).unwrap();
    assert_eq!(unit.max_levels(), 6);
    assert!(unit.efr().ia_sup());
    assert_eq!(unit.device_table().entries(), 256);
    {
        let m = r.hw.borrow();
        assert!(m.enabled());
        let run = regs::status::CMD_BUF_RUN | regs::status::EVENT_LOG_RUN;
        assert_eq!(m.status() & run, run);
        assert_ne!(m.control() & regs::control::COHERENT, 0);
        assert_eq!(m.devtab_entries(), 256);
    }
    // Every DTE blocks: none passes through, none translates.
    for d in 0..256u16 {
        assert_eq!(r.dte(d).state(), tables::DteState::Blocked, "device {d:#x}");
    }
    // One INVALIDATE_IOMMU_ALL and its completion wait.
    let log = r.hw.invalidation_log();
    assert_eq!(log[0], InvalidationRecord::All);
    assert!(matches!(
        log[1],
        InvalidationRecord::CompletionWait { store: Some(_) }
    ));
    assert_eq!(log.len(), 2);
    r.assert_clean();
}

#[test]
fn bring_up_variants() {
    // Without IASup: every DTE and every DomainID, through the 256-entry buffer many times.
    let r = rig(ModelCfg::qemu().with_invalidate_all(false));
    let s = r.hw.stats();
    assert_eq!(s.inv_all, 0);
    assert_eq!(s.inv_devtab, 256);
    assert_eq!(s.inv_pages, 0x1_0000);
    assert_eq!(s.completion_waits, 1);
    r.assert_clean();
    // HATS 4 levels: 48-bit tables; HATS 5 with a 39-bit VAsize: 39-bit tables.
    let r = rig(ModelCfg::qemu().with_max_levels(4));
    assert_eq!(r.be.unit_info(0).addr_width, 48);
    let r = rig(ModelCfg {
        va_size: 39,
        ..ModelCfg::qemu().with_max_levels(5)
    });
    assert_eq!(r.be.unit_info(0).addr_width, 39);
    // NpCache clear: maps need no invalidation.
    let r = rig(ModelCfg::qemu().with_np_cache(false));
    assert!(!r.be.unit_info(0).caches_not_present);
    // The run bits follow the enables late: the driver waits for them.
    let r = rig(ModelCfg {
        run_delay_reads: 7,
        ..ModelCfg::qemu()
    });
    assert!(r.hw.borrow().enabled());
    r.assert_clean();
    // EFRSup clear: the IVRS image is used (here without IASup, HATS 4 levels).
    let r = rig_with(
        ModelCfg::qemu().with_efr(false, 0),
        AmdConfig {
            efr_image: Some(0),
            ..cfg()
        },
    );
    assert_eq!(r.be.unit(0).unwrap().max_levels(), 4);
    assert_eq!(r.hw.stats().inv_all, 0);
    // No PCI access: NpCache assumed, EFR read from MMIO.
    let mem = SharedMem::new();
    let hw = AmdHandle::new(mem.clone(), ModelCfg::qemu().with_np_cache(false));
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be: AmdBackend<AmdHandle, NoConfig, SharedMem, FakeDelay, 1> =
        AmdBackend::new(mem.clone(), FakeDelay::default());
    let c = AmdConfig {
        cap_offset: None,
        ..cfg()
    };
    be.add_unit(
        AmdRegs {
            mmio: hw.clone(),
            config: NoConfig,
        },
        &mut alloc,
        c,
    )
    .unwrap();
    assert!(be.unit_info(0).caches_not_present);
    assert_eq!(be.unit_info(0).phys_width, 52);
    assert!(hw.violations().is_empty());
}

#[test]
fn device_table_covers_the_configured_device_ids_and_no_more() {
    for (max, pages) in [
        (0u16, 1u32),
        (0x7f, 1),
        (0xff, 2),
        (0x1ff, 4),
        (0xffff, 512),
    ] {
        let r = rig_with(
            ModelCfg::qemu(),
            AmdConfig {
                max_device_id: max,
                ..cfg()
            },
        );
        let t = r.be.unit(0).unwrap().device_table();
        assert_eq!(t.pages(), pages, "max {max:#x}");
        assert!(t.entries() > u32::from(max));
        assert_eq!(r.hw.borrow().devtab_entries(), u64::from(t.entries()));
        // Contiguous frames from the pool.
        assert_eq!(t.base() % 4096, 0);
        for d in [0, max / 2, max] {
            assert_eq!(r.dte(d).state(), tables::DteState::Blocked);
        }
    }
    // A device beyond the table cannot be attached or blocked.
    let mut r = rig(ModelCfg::qemu());
    let pt = r.table();
    let d = rig::domain(&pt, 1);
    assert_eq!(
        r.be.attach(&mut r.alloc, 0, 0x100, d),
        Err(AmdError::BadDevice)
    );
    assert_eq!(r.be.block(0, 0x100), Err(AmdError::BadDevice));
    assert_eq!(r.be.block(0, 0x1_0000), Err(AmdError::BadDevice));
}

// ---- blocked devices -------------------------------------------------------------------

#[test]
fn blocked_devices_fault_and_never_pass_through() {
    let mut r = rig(ModelCfg::qemu());
    r.mem.borrow_mut().write_bytes(0x1000, &[0xaa; 64]);
    // Every device, configured or not, attached never: refused both ways, and logged.
    for dev in [0u16, DEV, DEV2, 0xff] {
        assert_eq!(
            r.hw.dma_read(dev, 0x1000, 64),
            Err(AmdFault::PageFault { present: true })
        );
        assert_eq!(
            r.hw.dma_write(dev, 0x2000, &[1; 8]),
            Err(AmdFault::PageFault { present: true })
        );
    }
    assert!(r.mem.borrow().frame_is_zero(0x2000), "nothing written");
    let (recs, lost) = r.drain();
    assert!(!lost);
    assert_eq!(recs.len(), 8);
    for rec in &recs {
        assert_eq!(rec.reason, FaultReason::Blocked);
    }
    assert!(recs.contains(&FaultRecord {
        unit: 0,
        device: u32::from(DEV),
        iova: 0x2000,
        write: true,
        reason: FaultReason::Blocked
    }));
    assert!(recs.contains(&FaultRecord {
        unit: 0,
        device: u32::from(DEV2),
        iova: 0x1000,
        write: false,
        reason: FaultReason::Blocked
    }));
    r.assert_clean();
}

#[test]
fn block_makes_dma_fault_is_idempotent_and_never_short_cut() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 3);
    r.map(&mut pt, 3, 0x10_0000, 0x40_0000, 0x1000, Perms::RW);
    assert_eq!(r.hw.translate(DEV, 0x10_0000, true), Ok(0x40_0000));
    let before = r.hw.invalidation_log().len();
    r.be.block(0, u32::from(DEV)).unwrap();
    let log = r.hw.invalidation_log()[before..].to_vec();
    assert_eq!(
        log[..2],
        [
            InvalidationRecord::DevTab { device: DEV },
            InvalidationRecord::Pages {
                domain: 3,
                first: 0,
                last: u64::MAX,
                pde: true
            }
        ]
    );
    assert_eq!(r.dte(DEV).state(), tables::DteState::Blocked);
    assert_eq!(
        r.hw.translate(DEV, 0x10_0000, true),
        Err(AmdFault::PageFault { present: true })
    );
    // Again: the entry reads as blocked, the DTE is invalidated and waited for anyway.
    let before = r.hw.invalidation_log().len();
    r.be.block(0, u32::from(DEV)).unwrap();
    let log = r.hw.invalidation_log()[before..].to_vec();
    assert_eq!(log[0], InvalidationRecord::DevTab { device: DEV });
    assert!(matches!(log[1], InvalidationRecord::CompletionWait { .. }));
    let (recs, _) = r.drain();
    assert!(
        recs.iter()
            .all(|x| x.reason == FaultReason::Blocked && x.iova == 0x10_0000)
    );
    r.assert_clean();
}

// ---- translation and invalidation --------------------------------------------------------

#[test]
fn dma_through_attached_domain() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 1, 0x10_0000, 0x40_0000, 0x3000, Perms::RW);
    r.map(&mut pt, 1, 0x4000_0000, 0x80_0000, 0x40_0000, Perms::R);
    r.mem
        .borrow_mut()
        .write_bytes(0x40_1000, b"through the IOMMU");
    assert_eq!(
        r.hw.dma_read(DEV, 0x10_1000, 17).unwrap(),
        b"through the IOMMU"
    );
    r.hw.dma_write(DEV, 0x10_2ff0, &[7; 32]).unwrap_err(); // crosses into an unmapped page
    assert_eq!(r.hw.translate(DEV, 0x4020_1234, false), Ok(0xa0_1234));
    assert_eq!(
        r.hw.translate(DEV, 0x4020_1234, true),
        Err(AmdFault::PageFault { present: true }),
        "read-only 2 MiB page"
    );
    // The DTE: V, TV, Mode 4, root, IR, IW, DomainID 1.
    assert_eq!(
        r.dte(DEV).state(),
        tables::DteState::Translated {
            root: pt.root(),
            levels: 4,
            domain: 1
        }
    );
    r.assert_clean();
}

#[test]
fn one_invalidation_per_gather_covering_its_span() {
    let mut r = rig(ModelCfg::qemu().with_np_cache(false));
    let mut pt = r.table();
    r.attach(DEV, &pt, 2);
    for i in 0..16u64 {
        r.map(
            &mut pt,
            2,
            i * 0x1000 + 0x20_0000,
            0x40_0000 + i * 0x1000,
            0x1000,
            Perms::RW,
        );
    }
    for i in 0..16u64 {
        assert!(r.hw.translate(DEV, 0x20_0000 + i * 0x1000, false).is_ok());
    }
    let n0 = r.pages_log().len();
    r.unmap(&mut pt, 2, 0x20_3000, 0x5000);
    let log = r.pages_log()[n0..].to_vec();
    assert_eq!(log.len(), 1, "one command for five pages");
    let InvalidationRecord::Pages {
        domain,
        first,
        last,
        pde,
    } = log[0]
    else {
        unreachable!()
    };
    assert_eq!(domain, 2);
    assert!(first <= 0x20_3000 && last >= 0x20_7fff);
    assert!(
        last - first < 0x10_0000,
        "a block near the span, not the domain"
    );
    assert!(!pde, "only leaves changed on a unit without NpCache");
    for i in 0..16u64 {
        let r2 = r.hw.translate(DEV, 0x20_0000 + i * 0x1000, false);
        assert_eq!(r2.is_ok(), !(3..8).contains(&i), "page {i}");
    }
    r.assert_clean();
}

#[test]
fn unmap_of_a_split_large_page_invalidates_all_of_it_and_the_directories() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 5);
    r.map(&mut pt, 5, 0x4000_0000, 0x20_0000, 0x20_0000, Perms::RW);
    for p in [0, 0x1000, 0x1f_f000] {
        assert!(r.hw.translate(DEV, 0x4000_0000 + p, true).is_ok());
    }
    let n0 = r.pages_log().len();
    r.unmap(&mut pt, 5, 0x4000_1000, 0x1000);
    let InvalidationRecord::Pages { first, last, .. } = r.pages_log()[n0] else {
        unreachable!()
    };
    assert!(
        first <= 0x4000_0000 && last >= 0x401f_ffff,
        "the whole 2 MiB leaf"
    );
    assert_eq!(
        r.hw.translate(DEV, 0x4000_1000, true),
        Err(AmdFault::PageFault { present: false })
    );
    assert_eq!(r.hw.translate(DEV, 0x4000_2000, true), Ok(0x20_2000));
    // Unmapping everything frees the tables; the PDE cache must not lead into them.
    r.unmap(&mut pt, 5, 0x4000_0000, 0x20_0000);
    let InvalidationRecord::Pages { pde, .. } = *r.pages_log().last().unwrap() else {
        unreachable!()
    };
    assert!(pde, "tables were removed");
    assert!(r.hw.translate(DEV, 0x4000_2000, false).is_err());
    r.assert_clean();
}

#[test]
fn missing_invalidation_is_visible_in_the_model() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 1, 0x10_0000, 0x40_0000, 0x1000, Perms::RW);
    assert_eq!(r.hw.translate(DEV, 0x10_0000, false), Ok(0x40_0000));
    // Unmap without invalidating: the IOTLB still translates, and the model says so.
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x10_0000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    assert_eq!(
        r.hw.translate(DEV, 0x10_0000, false),
        Ok(0x40_0000),
        "stale"
    );
    assert_eq!(r.hw.stats().stale_hits, 1);
    r.be.invalidate(0, 1, &g).unwrap();
    g.release(&mut r.mem, &mut r.alloc);
    assert!(r.hw.translate(DEV, 0x10_0000, false).is_err());
    // A DTE change without INVALIDATE_DEVTAB_ENTRY is stale too.
    let pa =
        r.be.unit(0)
            .unwrap()
            .device_table()
            .entry_pa(u32::from(DEV))
            .unwrap();
    r.mem.borrow_mut().write(pa, tables::Dte::blocked().0[0]);
    let _ = r.hw.translate(DEV, 0x10_0000, false);
    assert_eq!(r.hw.stats().stale_dte_hits, 1);
}

#[test]
fn maps_are_invalidated_on_units_caching_not_present_entries() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 1, 0x10_0000, 0x40_0000, 0x1000, Perms::RW);
    // A fault at a page that is not mapped yet: cached as not present.
    assert!(r.hw.translate(DEV, 0x50_0000, false).is_err());
    let mut g = Gather::new();
    pt.map(
        &mut r.mem,
        &mut r.alloc,
        Map {
            iova: 0x50_0000,
            phys: 0x41_0000,
            len: 0x1000,
            perms: Perms::RW,
        },
        &mut g,
    )
    .unwrap();
    assert!(
        r.hw.translate(DEV, 0x50_0000, false).is_err(),
        "negative entry kept"
    );
    assert_eq!(r.hw.stats().stale_hits, 1);
    r.be.invalidate(0, 1, &g).unwrap();
    g.release(&mut r.mem, &mut r.alloc);
    assert_eq!(r.hw.translate(DEV, 0x50_0000, false), Ok(0x41_0000));
    // A map that adds tables where a not-present directory entry was cached: PDE is set.
    assert!(r.hw.translate(DEV, 0x80_0000_0000, false).is_err());
    let n0 = r.pages_log().len();
    r.map(&mut pt, 1, 0x80_0000_0000, 0x42_0000, 0x1000, Perms::RW);
    assert!(matches!(
        r.pages_log()[n0],
        InvalidationRecord::Pages { pde: true, .. }
    ));
    assert_eq!(r.hw.translate(DEV, 0x80_0000_0000, false), Ok(0x42_0000));
}

#[test]
fn moving_a_device_between_domains_blocks_first() {
    let mut r = rig(ModelCfg::qemu());
    let mut a = r.table();
    let mut b = r.table();
    r.attach(DEV, &a, 1);
    r.map(&mut a, 1, 0x10_0000, 0x40_0000, 0x1000, Perms::RW);
    r.map(&mut b, 2, 0x10_0000, 0x50_0000, 0x1000, Perms::RW);
    assert_eq!(r.hw.translate(DEV, 0x10_0000, false), Ok(0x40_0000));
    let before = r.hw.invalidation_log().len();
    r.attach(DEV, &b, 2);
    let log = r.hw.invalidation_log()[before..].to_vec();
    assert_eq!(
        log[..2],
        [
            InvalidationRecord::DevTab { device: DEV },
            InvalidationRecord::Pages {
                domain: 1,
                first: 0,
                last: u64::MAX,
                pde: true
            }
        ]
    );
    assert!(matches!(log[2], InvalidationRecord::CompletionWait { .. }));
    assert_eq!(log[3], InvalidationRecord::DevTab { device: DEV });
    assert_eq!(r.hw.translate(DEV, 0x10_0000, false), Ok(0x50_0000));
    // Attaching again to the same domain still invalidates the DTE and waits.
    let before = r.hw.invalidation_log().len();
    r.attach(DEV, &b, 2);
    assert_eq!(
        r.hw.invalidation_log()[before],
        InvalidationRecord::DevTab { device: DEV }
    );
    r.assert_clean();
}

#[test]
fn permission_not_present_and_address_size_faults_are_told_apart() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 1, 0x10_0000, 0x40_0000, 0x1000, Perms::R);
    assert!(r.hw.translate(DEV, 0x10_0000, true).is_err());
    assert!(r.hw.translate(DEV, 0x20_0000, false).is_err());
    assert!(r.hw.translate(DEV, 1 << 50, false).is_err());
    let (recs, _) = r.drain();
    let reasons: Vec<_> = recs.iter().map(|x| (x.iova, x.write, x.reason)).collect();
    assert_eq!(
        reasons,
        [
            (0x10_0000, true, FaultReason::Permission),
            (0x20_0000, false, FaultReason::NotPresent),
            (1 << 50, false, FaultReason::AddressSize),
        ]
    );
}

#[test]
fn invalidate_all_drops_every_translation_of_the_domain() {
    let mut r = rig(ModelCfg::qemu());
    let mut pt = r.table();
    r.attach(DEV, &pt, 9);
    r.map(&mut pt, 9, 0, 0x40_0000, 0x40_0000, Perms::RW);
    for p in (0..0x40_0000).step_by(0x10_0000) {
        r.hw.translate(DEV, p, false).unwrap();
    }
    assert!(r.hw.borrow().iotlb_len() > 0);
    r.be.invalidate_all(0, 9).unwrap();
    assert_eq!(r.hw.borrow().iotlb_len(), 0);
    assert_eq!(r.hw.borrow().pde_cache_len(), 0);
    // An empty gather needs nothing.
    let n = r.hw.invalidation_log().len();
    r.be.invalidate(0, 9, &Gather::new()).unwrap();
    assert_eq!(r.hw.invalidation_log().len(), n);
}

#[test]
fn bad_requests_are_refused_without_touching_the_unit() {
    let mut r = rig(ModelCfg::qemu().with_max_levels(4));
    let pt = r.table();
    let good = rig::domain(&pt, 1);
    let n = r.hw.invalidation_log().len();
    let cases = [
        (DomainConfig { tag: 0, ..good }, AmdError::BadTag),
        (
            DomainConfig {
                levels: 6,
                addr_width: 64,
                ..good
            },
            AmdError::BadDomain,
        ),
        (DomainConfig { levels: 3, ..good }, AmdError::BadDomain),
        (
            DomainConfig {
                root: good.root + 8,
                ..good
            },
            AmdError::BadDomain,
        ),
        (
            DomainConfig {
                root: 1 << 47,
                ..good
            },
            AmdError::BadDomain,
        ),
    ];
    for (d, e) in cases {
        assert_eq!(
            r.be.attach(&mut r.alloc, 0, u32::from(DEV), d),
            Err(e),
            "{d:?}"
        );
    }
    assert_eq!(
        r.be.attach(&mut r.alloc, 1, u32::from(DEV), good),
        Err(AmdError::BadUnit)
    );
    assert_eq!(r.be.invalidate_all(0, 0), Err(AmdError::BadTag));
    assert_eq!(r.be.invalidate(0, 0, &Gather::new()), Err(AmdError::BadTag));
    assert_eq!(r.hw.invalidation_log().len(), n, "nothing reached the unit");
    assert_eq!(r.dte(DEV).state(), tables::DteState::Blocked);
    assert_eq!(AmdError::BadDomain.kind(), ErrorKind::Unsupported);
}

// ---- events ---------------------------------------------------------------------------

#[test]
fn event_log_overflow_is_reported_once_and_logging_restarts() {
    let mut r = rig(ModelCfg::qemu());
    // 255 records fill the 256-entry log; the next ones overflow.
    for i in 0..300u64 {
        let _ = r.hw.translate(DEV, i * 0x1000, false);
    }
    assert_eq!(r.hw.stats().overflows, 1);
    let (recs, lost) = r.drain();
    assert!(lost);
    assert_eq!(recs.len(), 255);
    assert_eq!(r.be.counters(0).unwrap().overflows, 1);
    // Logging was restarted: new faults are recorded, and nothing more is lost.
    let _ = r.hw.translate(DEV, 0x77_7000, true);
    let (recs, lost) = r.drain();
    assert!(!lost);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].iova, 0x77_7000);
    assert!(r.hw.violations().is_empty());
}

#[test]
fn event_interrupt_through_the_msi_capability() {
    let mut r = rig(ModelCfg::qemu());
    assert_eq!(
        r.be.enable_fault_interrupt(0, FaultInterrupt::Wired),
        Err(AmdError::Unsupported)
    );
    let irq = FaultInterrupt::Msi {
        address: 0xfee0_0000,
        data: 0x41,
    };
    r.be.enable_fault_interrupt(0, irq).unwrap();
    {
        let m = r.hw.borrow();
        assert_ne!(m.control() & regs::control::EVENT_INT_EN, 0);
        assert_eq!(m.pci().msi_addr, 0xfee0_0000);
        assert_eq!(m.pci().msi_data, 0x41);
        assert_eq!(m.pci().msi_control & 1, 1);
        assert_ne!(m.pci().command & 0b100, 0, "bus master for the message");
    }
    let _ = r.hw.translate(DEV, 0x1000, false);
    assert_eq!(r.hw.borrow().msis, vec![(0xfee0_0000, 0x41)]);
    assert_ne!(r.hw.borrow().status() & regs::status::EVENT_LOG_INT, 0);
    // Until the drain acknowledges EventLogInt, further records raise no interrupt.
    let _ = r.hw.translate(DEV, 0x3000, false);
    assert_eq!(r.hw.borrow().msis.len(), 1);
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        r.hw.borrow().status() & regs::status::EVENT_LOG_INT,
        0,
        "acknowledged"
    );
    let _ = r.hw.translate(DEV, 0x2000, false);
    assert_eq!(
        r.hw.borrow().msis.len(),
        2,
        "the next record interrupts again"
    );
    assert!(r.hw.violations().is_empty());
    // No MSI capability: refused, nothing changes.
    let mut r = rig(ModelCfg {
        msi: false,
        ..ModelCfg::qemu()
    });
    assert_eq!(
        r.be.enable_fault_interrupt(0, irq),
        Err(AmdError::Unsupported)
    );
    assert_eq!(r.hw.borrow().control() & regs::control::EVENT_INT_EN, 0);
    let _ = &mut r;
}

// ---- command errors, bounded waits, hostile registers ------------------------------------

/// Wraps the model; when armed, corrupts the first command of the next submission (after the
/// driver wrote it, before the unit fetches it), as a buggy command would.
struct Corrupting {
    hw: AmdHandle,
    mem: SharedMem,
    base: u64,
    last_tail: u64,
    armed: Rc<Cell<bool>>,
}

impl RegisterAccess for Corrupting {
    fn read32(&mut self, o: usize) -> u32 {
        RegisterAccess::read32(&mut self.hw, o)
    }
    fn write32(&mut self, o: usize, v: u32) {
        RegisterAccess::write32(&mut self.hw, o, v)
    }
    fn read64(&mut self, o: usize) -> u64 {
        self.hw.read64(o)
    }
    fn write64(&mut self, o: usize, v: u64) {
        if o == regs::CMD_BASE {
            self.base = v & regs::BASE_MASK;
        }
        if o == regs::CMD_TAIL {
            if self.armed.replace(false) {
                // Opcode 0xf: not a command.
                self.mem
                    .borrow_mut()
                    .write(self.base + self.last_tail, 0xf << 60);
            }
            self.last_tail = v;
        }
        self.hw.write64(o, v)
    }
}

#[test]
fn illegal_command_is_reported_and_the_buffer_recovers() {
    let mem = SharedMem::new();
    let hw = AmdHandle::new(mem.clone(), ModelCfg::qemu());
    let armed = Rc::new(Cell::new(false));
    let mmio = Corrupting {
        hw: hw.clone(),
        mem: mem.clone(),
        base: 0,
        last_tail: 0,
        armed: armed.clone(),
    };
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be: AmdBackend<Corrupting, AmdHandle, SharedMem, FakeDelay, 1> =
        AmdBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(
        AmdRegs {
            mmio,
            config: hw.clone(),
        },
        &mut alloc,
        cfg(),
    )
    .unwrap();
    armed.set(true);
    let mut g = Gather::new();
    g.add_range(0x1000, 0x1000, 0x1000);
    let e = be.invalidate(0, 4, &g).unwrap_err();
    assert!(
        matches!(e, AmdError::CommandError { opcode: 0xf, .. }),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Hardware);
    assert_eq!(hw.stats().illegal_commands, 1);
    // The refused command was replaced, the buffer restarted, the domain then invalidated
    // as a whole; the next requests complete.
    let log = hw.invalidation_log();
    assert!(log.contains(&InvalidationRecord::Pages {
        domain: 4,
        first: 0,
        last: u64::MAX,
        pde: true
    }));
    be.invalidate_all(0, 5).unwrap();
    assert_eq!(be.counters(0).unwrap().cmd_errors, 1);
    let ran = hw.borrow().status() & regs::status::CMD_BUF_RUN;
    assert_ne!(ran, 0);
    // The ILLEGAL_COMMAND_ERROR record is counted, not delivered as a device fault.
    let mut n = 0;
    be.drain_faults(0, &mut |_| n += 1).unwrap();
    assert_eq!(n, 0);
    assert_eq!(be.counters(0).unwrap().cmd_error_events, 1);
    assert_eq!(hw.borrow().events[0].code, EventCode::IllegalCommandError);
}

#[test]
fn a_hung_unit_times_out_within_the_bound() {
    let mut r = rig(ModelCfg::qemu());
    r.hw.borrow_mut().set_cmd_hung(true);
    let t0 = r.delay.0.get();
    let e = r.be.invalidate_all(0, 1).unwrap_err();
    assert_eq!(e, AmdError::Timeout(WaitFor::Completion));
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let waited = r.delay.0.get() - t0;
    assert!((10_000_000..=10_010_000).contains(&waited), "{waited} ns");
    assert_eq!(r.be.counters(0).unwrap().timeouts, 1);
    // Blocking fails the same way; the entry is blocked in memory already.
    let mut pt = r.table();
    r.hw.borrow_mut().set_cmd_hung(false);
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 1, 0, 0x40_0000, 0x1000, Perms::RW);
    r.hw.borrow_mut().set_cmd_hung(true);
    assert!(r.be.block(0, u32::from(DEV)).is_err());
    assert_eq!(r.dte(DEV).state(), tables::DteState::Blocked);
    // Filling the buffer while hung: waiting for space is bounded too.
    let e = r.be.invalidate_all(0, 1).unwrap_err();
    assert!(matches!(e, AmdError::Timeout(_)));
}

#[test]
fn bring_up_waits_are_bounded() {
    /// Reads zero everywhere; the run bits never follow the enables.
    #[derive(Debug)]
    struct Dead;
    impl RegisterAccess for Dead {
        fn read32(&mut self, _: usize) -> u32 {
            0
        }
        fn write32(&mut self, _: usize, _: u32) {}
        fn read64(&mut self, _: usize) -> u64 {
            0
        }
        fn write64(&mut self, _: usize, _: u64) {}
    }
    let mem = SharedMem::new();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let delay = FakeDelay::default();
    let mut m = mem.clone();
    let mut d = delay.clone();
    let c = AmdConfig {
        cap_offset: None,
        timing: Timing {
            timeout_ns: 1_000,
            poll_ns: 300,
        },
        ..cfg()
    };
    let e = AmdUnit::new(
        AmdRegs {
            mmio: Dead,
            config: NoConfig,
        },
        &mut m,
        &mut d,
        &mut alloc,
        c,
    )
    .unwrap_err();
    assert_eq!(e, AmdError::Timeout(WaitFor::Running));
    assert_eq!(delay.0.get(), 1_200);
}

#[test]
fn a_unit_enabled_at_boot_is_refused_untouched() {
    let mem = SharedMem::new();
    let hw = AmdHandle::new(mem.clone(), ModelCfg::qemu());
    hw.borrow_mut().write64(regs::DEVTAB_BASE, 0x5000);
    hw.borrow_mut()
        .write64(regs::CONTROL, regs::control::IOMMU_EN);
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let free = alloc.available();
    let mut be: Be = AmdBackend::new(mem.clone(), FakeDelay::default());
    let e = be
        .add_unit(
            AmdRegs {
                mmio: hw.clone(),
                config: hw.clone(),
            },
            &mut alloc,
            cfg(),
        )
        .unwrap_err();
    assert_eq!(e, AmdError::EnabledAtBoot);
    assert_eq!(alloc.available(), free);
    assert_eq!(hw.borrow().control(), regs::control::IOMMU_EN);
}

#[test]
fn frame_shortage_at_every_allocation_leaves_the_unit_untouched() {
    for nth in 0..8u64 {
        let mem = SharedMem::new();
        let hw = AmdHandle::new(mem.clone(), ModelCfg::qemu());
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
        alloc.fail_in(nth);
        let free = alloc.free_list().to_vec();
        let mut be: Be = AmdBackend::new(mem.clone(), FakeDelay::default());
        let r = be.add_unit(
            AmdRegs {
                mmio: hw.clone(),
                config: hw.clone(),
            },
            &mut alloc,
            cfg(),
        );
        if nth >= 5 {
            // Two table pages and three frames: five allocations.
            assert!(r.is_ok());
            continue;
        }
        assert_eq!(r.unwrap_err(), AmdError::NoFrame, "allocation {nth}");
        let mut a = alloc.free_list().to_vec();
        let mut b = free.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "every frame returned");
        assert_eq!(hw.borrow().control(), 0);
        assert_eq!(hw.borrow().devtab_entries(), 128, "base never written");
    }
}

#[test]
fn hostile_register_values_give_errors_not_panics() {
    /// Every read returns pseudo-random bits; writes are ignored.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
    impl RegisterAccess for Noise {
        fn read32(&mut self, _: usize) -> u32 {
            self.next() as u32
        }
        fn write32(&mut self, _: usize, _: u32) {}
        fn read64(&mut self, _: usize) -> u64 {
            self.next()
        }
        fn write64(&mut self, _: usize, _: u64) {}
    }
    impl ConfigAccess for Noise {
        fn read32(&mut self, _: u16) -> u32 {
            self.next() as u32
        }
        fn write32(&mut self, _: u16, _: u32) {}
    }
    for seed in 1..200u64 {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
        let mut be: AmdBackend<Noise, Noise, SharedMem, FakeDelay, 1> =
            AmdBackend::new(mem.clone(), FakeDelay::default());
        let c = AmdConfig {
            timing: Timing {
                timeout_ns: 2_000,
                poll_ns: 500,
            },
            ..cfg()
        };
        let regs = AmdRegs {
            mmio: Noise(seed),
            config: Noise(seed * 7),
        };
        if be.add_unit(regs, &mut alloc, c).is_ok() {
            let mut g = Gather::new();
            g.add_range(0, 0x1000, 0x1000);
            let _ = be.invalidate(0, 1, &g);
            let _ = be.block(0, 3);
            let _ = be.drain_faults(0, &mut |_| {});
            let _ = be.enable_fault_interrupt(
                0,
                FaultInterrupt::Msi {
                    address: 0xfee0_0000,
                    data: 1,
                },
            );
        }
    }
}

#[test]
fn two_units_are_independent() {
    let mem = SharedMem::new();
    let hws = [0, 1].map(|_| AmdHandle::new(mem.clone(), ModelCfg::qemu()));
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 256);
    let mut be: Be = AmdBackend::new(mem.clone(), FakeDelay::default());
    for hw in &hws {
        be.add_unit(
            AmdRegs {
                mmio: hw.clone(),
                config: hw.clone(),
            },
            &mut alloc,
            cfg(),
        )
        .unwrap();
    }
    let mut pt: PageTable<AmdV1> = rig::unit_table(&be.unit_info(1), &mut alloc);
    let mut g = Gather::new();
    let mut m = mem.clone();
    pt.map(
        &mut m,
        &mut alloc,
        Map {
            iova: 0,
            phys: 0x40_0000,
            len: 0x1000,
            perms: Perms::RW,
        },
        &mut g,
    )
    .unwrap();
    be.attach(&mut alloc, 1, u32::from(DEV), rig::domain(&pt, 1))
        .unwrap();
    assert_eq!(hws[1].translate(DEV, 0, false), Ok(0x40_0000));
    assert!(
        hws[0].translate(DEV, 0, false).is_err(),
        "unit 0 still blocks"
    );
    let mut recs = Vec::new();
    be.drain_faults(0, &mut |r| recs.push(r)).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].unit, 0);
    be.drain_faults(1, &mut |r| recs.push(r)).unwrap();
    assert_eq!(recs.len(), 1);
}

#[test]
fn range_encoding_matches_the_models_decoding() {
    // The driver's INVALIDATE_IOMMU_PAGES encoding, decoded by the model's own reading of
    // the spec, covers the gather.
    for (s, l) in [
        (0x1000u64, 0x1fffu64),
        (0x3000, 0x8fff),
        (0x1f_f000, 0x20_0fff),
    ] {
        let (addr, size) = iommu_hal::amd::queue::pages_for_span(s, l).unwrap();
        let (first, last) = decode_range(addr | u64::from(size));
        assert!(first <= s && last >= l);
    }
}
