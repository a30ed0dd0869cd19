//! The SMMUv3 backend (`iommu_hal::smmuv3`) driving the register-level SMMUv3 model
//! (`iommu_test_harness::model::smmuv3`): bring-up under several IDR configurations, DMA
//! through tables built with `PageTable<ArmS1>`, invalidation sufficiency (the model's TLB,
//! walk cache and STE/CD caches keep stale entries until the right command, and invalidations
//! take effect only at CMD_SYNC), block splits, unlinked tables, blocking, moving devices
//! between domains, event draining, command-error recovery, bounded waits and bad input.

use std::cell::Cell;
use std::rc::Rc;

use iommu_hal::RegisterAccess;
use iommu_hal::backend::{
    Backend, BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultReason, FaultRecord,
};
use iommu_hal::pagetable::format::ArmS1;
use iommu_hal::pagetable::{Gather, LeafSizes, Map, PageTable, Perms, PtError, TableConfig, Unmap};
use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig, SmmuError, Timing, WaitFor};
use iommu_test_harness::model::smmuv3::{
    Access, EventType, Irq, IrqSource, SmmuConfig as ModelCfg, SmmuFault, SmmuHandle,
};
use iommu_test_harness::rig::{self, FakeDelay, Tap};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = SmmuBackend<SmmuHandle, SharedMem, FakeDelay, 2>;

const POOL: u64 = 0x100_0000;
const SID: u32 = 0x0008; // 00:01.0, edu on QEMU virt
const SID2: u32 = 0x0310; // 03:02.0
const DATA: u64 = 0x4000_0000;
/// What the model answers for DMA of a blocked device: its STE is invalid (V = 0), the access
/// is aborted and C_BAD_STE recorded (SMMUv3 5.2 STE.V).
const BAD_STE: SmmuFault = SmmuFault::Terminated {
    event: EventType::CBadSte,
    recorded: true,
    abort: true,
};

struct Rig {
    mem: SharedMem,
    hw: SmmuHandle,
    be: Be,
    alloc: SimAlloc,
    delay: FakeDelay,
}

fn try_rig(model: ModelCfg, cfg: SmmuConfig) -> (Result<Rig, SmmuError>, SharedMem, SmmuHandle) {
    let mem = SharedMem::new();
    let hw = SmmuHandle::new(mem.clone(), model);
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 2048);
    let delay = FakeDelay::default();
    let mut be = Be::new(mem.clone(), delay.clone());
    let r = be.add_unit(hw.clone(), &mut alloc, cfg).map(|idx| {
        assert_eq!(idx, 0);
        Rig {
            mem: mem.clone(),
            hw: hw.clone(),
            be,
            alloc,
            delay,
        }
    });
    (r, mem, hw)
}

fn rig_with(model: ModelCfg, cfg: SmmuConfig) -> Rig {
    try_rig(model, cfg).0.expect("bring-up")
}

fn rig(model: ModelCfg) -> Rig {
    rig_with(model, SmmuConfig::default())
}

impl Rig {
    fn table(&mut self) -> PageTable<ArmS1> {
        rig::unit_table(&self.be.unit_info(0), &mut self.alloc)
    }

    fn domain(&self, pt: &PageTable<ArmS1>, tag: u16) -> DomainConfig {
        rig::domain(pt, tag)
    }

    fn attach(&mut self, sid: u32, pt: &PageTable<ArmS1>, tag: u16) {
        let d = self.domain(pt, tag);
        self.be.attach(&mut self.alloc, 0, sid, d).expect("attach");
    }

    fn map(&mut self, pt: &mut PageTable<ArmS1>, iova: u64, phys: u64, len: u64, perms: Perms) {
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
        // SMMUv3 never caches invalid entries: a map needs no invalidation.
        assert!(!self.be.unit_info(0).caches_not_present);
        g.release(&mut self.mem, &mut self.alloc);
    }

    /// Unmaps, invalidates the gather, then frees the unlinked tables.
    fn unmap(&mut self, pt: &mut PageTable<ArmS1>, tag: u16, iova: u64, len: u64) -> Gather {
        let mut g = Gather::new();
        pt.unmap(&mut self.mem, &mut self.alloc, Unmap { iova, len }, &mut g)
            .expect("unmap");
        self.be.invalidate(0, tag, &g).expect("invalidate");
        g
    }

    fn release(&mut self, mut g: Gather) {
        g.release(&mut self.mem, &mut self.alloc);
    }

    fn fill(&self, phys: u64, len: usize, byte: u8) {
        self.mem.borrow_mut().write_bytes(phys, &vec![byte; len]);
    }

    fn read(&self, sid: u32, iova: u64, len: usize) -> Result<Vec<u8>, SmmuFault> {
        self.hw.dma_read(sid, iova, len)
    }

    fn drain(&mut self) -> (Vec<FaultRecord>, bool) {
        let mut v = Vec::new();
        let ovf = self.be.drain_faults(0, &mut |r| v.push(r)).expect("drain");
        (v, ovf)
    }

    fn assert_clean(&self) {
        let m = self.hw.borrow();
        assert!(
            m.misuse.is_empty(),
            "model saw driver errors: {:#?}",
            m.misuse
        );
        assert_eq!(m.active_gerrors(), 0, "GERROR left active");
        let s = self.hw.stats();
        assert_eq!(s.stale_hits, 0, "stale TLB hits");
        assert_eq!(s.stale_cfg_hits, 0, "stale STE/CD cache hits");
        assert_eq!(s.cmd_errors, 0, "command errors");
    }

    fn counters(&self) -> iommu_hal::smmuv3::SmmuCounters {
        self.be.counters(0).unwrap()
    }
}

fn model() -> ModelCfg {
    ModelCfg::default()
}

fn configs() -> Vec<(&'static str, ModelCfg, SmmuConfig)> {
    let d = SmmuConfig::default;
    vec![
        ("qemu", model(), d()),
        (
            "no-ril",
            ModelCfg {
                ril: false,
                ..model()
            },
            d(),
        ),
        ("bbml0", ModelCfg { bbml: 0, ..model() }, d()),
        (
            "linear-only",
            ModelCfg {
                st_level_2: false,
                ..model()
            },
            d(),
        ),
        (
            "linear-forced",
            model(),
            SmmuConfig {
                force_linear: true,
                ..d()
            },
        ),
        (
            "sid8-linear",
            ModelCfg {
                sidsize: 8,
                st_level_2: false,
                ..model()
            },
            d(),
        ),
        (
            "non-coherent",
            ModelCfg {
                cohacc: false,
                ..model()
            },
            d(),
        ),
        (
            "asid8-oas48",
            ModelCfg {
                asid16: false,
                oas: 5,
                ..model()
            },
            d(),
        ),
        (
            "small-queues",
            ModelCfg {
                cmdqs: 2,
                eventqs: 2,
                ..model()
            },
            d(),
        ),
        (
            "no-page1-alias",
            ModelCfg {
                page1_alias: false,
                ..model()
            },
            d(),
        ),
        (
            "immediate-invalidation",
            ModelCfg {
                complete_invalidation_at_sync: false,
                gbpa_abort_at_reset: true,
                ..model()
            },
            d(),
        ),
    ]
}

#[test]
fn bring_up_on_qemu_defaults() {
    let mut r = rig(model());
    let info = r.be.unit_info(0);
    assert_eq!(r.be.unit_count(), 1);
    assert_eq!(info.addr_width, 48);
    assert_eq!(info.phys_width, 44);
    assert_eq!(info.leaf_sizes, LeafSizes::STANDARD);
    assert!(!info.caches_not_present);
    assert!(info.split_live_blocks);
    assert!(info.coherent_walk);
    assert_eq!(info.max_tag, u16::MAX);
    // An out-of-range unit answers with unit 0's info.
    assert_eq!(r.be.unit_info(7), info);
    let u = r.be.unit(0).unwrap();
    let st = u.stream_table();
    assert!(st.two_level);
    assert_eq!(st.log2size, 16);
    assert_eq!(st.frames, 2, "1024 level-1 descriptors = 8 KiB");
    assert_eq!(st.base % 0x2000, 0);
    assert!(u.range_invalidation());
    {
        let m = r.hw.borrow();
        assert!(m.enabled());
        assert_eq!(m.cr0ack(), 0b1101, "SMMUEN, EVENTQEN, CMDQEN");
    }
    let c = r.counters();
    assert_eq!(
        (c.cfgi_all, c.tlbi_nsnh_all, c.syncs, c.batches),
        (1, 1, 1, 1)
    );
    let s = r.hw.stats();
    assert_eq!(s.syncs, 1);
    assert_eq!(s.commands.get(&0x04), Some(&1), "CFGI_ALL");
    assert_eq!(s.commands.get(&0x30), Some(&1), "TLBI_NSNH_ALL");
    // Nothing attached: DMA is refused and reported (no level-2 table yet: C_BAD_STREAMID),
    // nothing bypasses.
    assert!(r.read(SID, 0x1000, 8).is_err());
    assert_eq!(r.hw.stats().bypassed, 0);
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].device, recs[0].reason),
        (SID, FaultReason::Blocked)
    );
    r.assert_clean();
}

/// Map, DMA, unmap one page and a 2 MiB block, DMA must fault (a stale TLB would be caught),
/// neighbours still readable; under every configuration.
#[test]
fn dma_and_unmap_under_every_config() {
    for (name, m, cfg) in configs() {
        let mut r = rig_with(m.clone(), cfg);
        let mut pt = r.table();
        // Another 64-StreamID group, within every configuration's stream table.
        let sid2 = 0x48;
        r.attach(SID, &pt, 1);
        r.attach(sid2, &pt, 1);
        r.fill(DATA + 0x21_0000, 0x1000, 0x5a);
        r.fill(DATA + 0x3000, 8, 0xa5);
        r.map(&mut pt, 0x10_0000, DATA, 0x8000, Perms::RW);
        r.map(&mut pt, 0x20_0000, DATA + 0x20_0000, 0x20_0000, Perms::R);
        for sid in [SID, sid2] {
            assert_eq!(r.read(sid, 0x10_3000, 8).unwrap(), vec![0xa5; 8], "{name}");
            assert_eq!(r.read(sid, 0x21_0000, 4).unwrap(), vec![0x5a; 4], "{name}");
            r.hw.dma_write(sid, 0x10_0000, &[1, 2, 3, 4]).unwrap();
        }
        assert_eq!(
            r.read(SID, 0x10_0000, 4).unwrap(),
            vec![1, 2, 3, 4],
            "{name}"
        );
        assert!(
            r.hw.dma_write(SID, 0x20_0000, &[0]).is_err(),
            "{name}: read-only"
        );
        assert!(r.hw.borrow().tlb_len() > 0, "{name}: translations cached");

        let g = r.unmap(&mut pt, 1, 0x10_3000, 0x1000);
        r.release(g);
        let g = r.unmap(&mut pt, 1, 0x20_0000, 0x20_0000);
        r.release(g);
        for sid in [SID, sid2] {
            assert!(r.read(sid, 0x10_3000, 8).is_err(), "{name}: unmapped page");
            assert!(r.read(sid, 0x20_0000, 8).is_err(), "{name}: unmapped block");
            assert!(
                r.read(sid, 0x3f_f000, 8).is_err(),
                "{name}: unmapped block end"
            );
            assert!(r.read(sid, 0x10_2000, 8).is_ok(), "{name}: neighbour");
            assert!(r.read(sid, 0x10_4000, 8).is_ok(), "{name}: neighbour");
        }
        let c = r.counters();
        if m.ril {
            assert!(c.tlbi_nh_va_range > 0, "{name}: range form used");
        } else {
            assert_eq!(c.tlbi_nh_va_range, 0, "{name}: no range form without RIL");
            assert!(c.tlbi_nh_va > 0, "{name}");
        }
        r.assert_clean();
    }
}

#[test]
fn unit_info_follows_idrs() {
    let r = rig(ModelCfg {
        cohacc: false,
        asid16: false,
        bbml: 1,
        oas: 2,
        ..model()
    });
    let i = r.be.unit_info(0);
    assert!(!i.coherent_walk);
    assert_eq!(i.max_tag, 255);
    assert!(!i.split_live_blocks);
    assert_eq!(i.phys_width, 40);
    // Linear table under SIDSIZE 8: 256 STEs = 4 frames, fully usable.
    let r = rig(ModelCfg {
        sidsize: 8,
        st_level_2: false,
        ..model()
    });
    let st = r.be.unit(0).unwrap().stream_table();
    assert!(!st.two_level);
    assert_eq!((st.log2size, st.frames), (8, 4));
    // SIDSIZE 5 with 2-level support: a linear table is enough.
    let r = rig(ModelCfg {
        sidsize: 5,
        ..model()
    });
    let st = r.be.unit(0).unwrap().stream_table();
    assert!(!st.two_level);
    assert_eq!(st.log2size, 5);
}

#[test]
fn unsupported_units_are_refused_untouched() {
    for m in [
        ModelCfg {
            s1p: false,
            ..model()
        },
        ModelCfg {
            gran4k: false,
            ..model()
        },
    ] {
        let (r, _mem, hw) = try_rig(m, SmmuConfig::default());
        assert_eq!(r.err(), Some(SmmuError::Unsupported));
        assert!(!hw.borrow().enabled());
        assert_eq!(hw.stats().syncs, 0);
    }
}

#[test]
fn split_of_a_live_block_with_bbml2() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(SID, &pt, 3);
    for off in [0x4000, 0x5000, 0x6000, 0x1_0000, 0x1f_f000] {
        r.fill(DATA + off, 0x1000, 0x11);
    }
    r.map(&mut pt, 0x40_0000, DATA, 0x20_0000, Perms::RW);
    // Cache the block translation.
    assert_eq!(r.read(SID, 0x40_5000, 2).unwrap(), vec![0x11; 2]);
    assert_eq!(r.read(SID, 0x41_0000, 2).unwrap(), vec![0x11; 2]);
    let g = r.unmap(&mut pt, 3, 0x40_5000, 0x1000);
    r.release(g);
    assert!(r.read(SID, 0x40_5000, 8).is_err(), "split-out page gone");
    assert_eq!(r.read(SID, 0x40_4000, 2).unwrap(), vec![0x11; 2]);
    assert_eq!(r.read(SID, 0x40_6000, 2).unwrap(), vec![0x11; 2]);
    assert_eq!(r.read(SID, 0x5f_f000, 2).unwrap(), vec![0x11; 2]);
    r.assert_clean();
}

#[test]
fn split_refused_without_bbml2() {
    let mut r = rig(ModelCfg { bbml: 0, ..model() });
    assert!(!r.be.unit_info(0).split_live_blocks);
    let mut pt = r.table();
    r.attach(SID, &pt, 3);
    r.map(&mut pt, 0x40_0000, DATA, 0x20_0000, Perms::RW);
    let mut g = Gather::new();
    assert_eq!(
        pt.unmap(
            &mut r.mem,
            &mut r.alloc,
            Unmap {
                iova: 0x40_5000,
                len: 0x1000
            },
            &mut g
        ),
        Err(PtError::SplitForbidden)
    );
    assert!(g.is_empty());
    assert!(r.read(SID, 0x40_5000, 8).is_ok(), "nothing changed");
    // Unmapping the whole block is fine.
    let g = r.unmap(&mut pt, 3, 0x40_0000, 0x20_0000);
    r.release(g);
    assert!(r.read(SID, 0x40_5000, 8).is_err());
    r.assert_clean();
}

/// Unmapping a whole range unlinks its tables: Leaf = 0 (walk caches invalidated), and a
/// later map through new tables is seen, under RIL and without.
#[test]
fn unlinked_tables_are_forgotten() {
    for ril in [true, false] {
        let mut r = rig(ModelCfg { ril, ..model() });
        let mut pt = r.table();
        r.attach(SID, &pt, 9);
        r.fill(DATA, 0x1_0000, 0x22);
        r.fill(DATA + 0x10_0000, 0x1_0000, 0x33);
        // 16 pages in their own level-3 table (and level-2, level-1 tables).
        let iova = 0x80_0000_0000;
        r.map(&mut pt, iova, DATA, 0x1_0000, Perms::RW);
        assert_eq!(r.read(SID, iova + 0x3000, 1).unwrap(), vec![0x22]);
        assert!(r.hw.borrow().walk_cache_len() > 0 || r.hw.borrow().tlb_len() > 0);
        // The whole 2 MiB its level-3 table translates: the table goes (a smaller unmap
        // would keep it, empty, in the engine's reserve).
        let g = r.unmap(&mut pt, 9, iova, 0x20_0000);
        assert!(g.tables_removed());
        assert!(g.frames_pending() > 0);
        r.release(g);
        assert!(r.read(SID, iova + 0x3000, 1).is_err(), "ril {ril}");
        // Occupy the freed frames with something else, then map again through new tables.
        let mut other = r.table();
        r.map(&mut other, 0x1000, DATA, 0x1000, Perms::R);
        r.map(&mut pt, iova, DATA + 0x10_0000, 0x1_0000, Perms::RW);
        assert_eq!(
            r.read(SID, iova + 0x3000, 1).unwrap(),
            vec![0x33],
            "ril {ril}"
        );
        let c = r.counters();
        if ril {
            assert!(c.tlbi_nh_va_range > 0);
        } else {
            assert_eq!(c.tlbi_nh_va, 16);
        }
        r.assert_clean();
    }
}

#[test]
fn large_spans_fall_back_to_asid_invalidation() {
    let mut r = rig(ModelCfg {
        ril: false,
        ..model()
    });
    let mut pt = r.table();
    r.attach(SID, &pt, 4);
    r.map(&mut pt, 0x100_0000, DATA, 0x40_000, Perms::RW);
    assert!(r.read(SID, 0x103_f000, 8).is_ok());
    let before = r.counters();
    let g = r.unmap(&mut pt, 4, 0x100_0000, 0x40_000); // 64 pages
    r.release(g);
    let after = r.counters();
    assert_eq!(after.tlbi_nh_asid, before.tlbi_nh_asid + 1);
    assert_eq!(after.tlbi_nh_va, before.tlbi_nh_va);
    assert_eq!(after.syncs, before.syncs + 1, "one batch, one sync");
    assert!(r.read(SID, 0x103_f000, 8).is_err());
    r.assert_clean();
}

#[test]
fn one_batch_per_gather() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(SID, &pt, 4);
    // 256 + 1 pages (4 KiB leaves), with a lone page at the end of the 2 MiB region.
    r.map(&mut pt, 0x100_0000, DATA, 0x10_0000, Perms::RW);
    r.map(&mut pt, 0x110_0000, DATA, 0x1000, Perms::RW);
    r.map(&mut pt, 0x11f_f000, DATA, 0x1000, Perms::RW);
    for iova in [0x100_0000, 0x10f_f000, 0x11f_f000, 0x110_0000] {
        assert!(r.read(SID, iova, 8).is_ok());
    }
    let before = r.counters();
    // 256 pages + a lone page far away: one gather, one range batch.
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x100_0000,
            len: 0x10_0000,
        },
        &mut g,
    )
    .unwrap();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x11f_f000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    r.be.invalidate(0, 4, &g).unwrap();
    r.release(g);
    let after = r.counters();
    assert_eq!(after.batches, before.batches + 1);
    assert_eq!(after.syncs, before.syncs + 1);
    assert!(r.read(SID, 0x100_0000, 8).is_err());
    assert!(r.read(SID, 0x10f_f000, 8).is_err());
    assert!(r.read(SID, 0x11f_f000, 8).is_err());
    assert!(r.read(SID, 0x110_0000, 8).is_ok());
    // An empty gather costs nothing.
    r.be.invalidate(0, 4, &Gather::new()).unwrap();
    assert_eq!(r.counters().batches, after.batches);
    r.assert_clean();
}

#[test]
fn block_and_reattach() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(SID, &pt, 5);
    r.fill(DATA, 0x1000, 0x44);
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::RW);
    assert_eq!(r.read(SID, 0x1000, 1).unwrap(), vec![0x44]);
    r.be.block(0, SID).unwrap();
    assert_eq!(r.read(SID, 0x1000, 1), Err(BAD_STE));
    // Blocking again is never short-cut (an earlier block may have failed after writing the
    // STE): CFGI_STE and a CMD_SYNC again. A StreamID whose level-2 table was never
    // allocated was never valid and needs nothing.
    let (syncs, cfgi) = (r.counters().syncs, r.counters().cfgi_ste);
    r.be.block(0, SID).unwrap();
    assert_eq!(r.counters().syncs, syncs + 1);
    assert_eq!(r.counters().cfgi_ste, cfgi + 1);
    r.be.block(0, 0x0400).unwrap();
    assert_eq!(r.counters().syncs, syncs + 1);
    r.attach(SID, &pt, 5);
    assert_eq!(r.read(SID, 0x1000, 1).unwrap(), vec![0x44]);
    r.assert_clean();
}

#[test]
fn moving_a_device_between_domains() {
    let mut r = rig(model());
    let mut a = r.table();
    let mut b = r.table();
    r.fill(DATA, 0x1000, 0xaa);
    r.fill(DATA + 0x1000, 0x1000, 0xbb);
    r.map(&mut a, 0x5000, DATA, 0x1000, Perms::RW);
    r.map(&mut b, 0x5000, DATA + 0x1000, 0x1000, Perms::RW);
    r.attach(SID, &a, 1);
    r.attach(SID2, &a, 1);
    assert_eq!(r.read(SID, 0x5000, 1).unwrap(), vec![0xaa]);
    r.attach(SID, &b, 2);
    assert_eq!(
        r.read(SID, 0x5000, 1).unwrap(),
        vec![0xbb],
        "new domain at once"
    );
    assert_eq!(
        r.read(SID2, 0x5000, 1).unwrap(),
        vec![0xaa],
        "other device stays"
    );
    let u = r.be.unit(0).unwrap();
    let cds = u.context_descriptors();
    assert_eq!(cds.len(), 2);
    assert_eq!(cds.iter().find(|c| c.tag == 1).unwrap().users, 1);
    assert_eq!(cds.iter().find(|c| c.tag == 2).unwrap().users, 1);
    // Attaching again to the same domain changes nothing.
    let syncs = r.counters().syncs;
    r.attach(SID, &b, 2);
    assert_eq!(r.counters().syncs, syncs);
    // A CD is freed only once no STE uses it.
    let free = r.alloc.available();
    assert!(!r.be.release_cd(0, &mut r.alloc, 1).unwrap());
    r.be.block(0, SID2).unwrap();
    assert!(r.be.release_cd(0, &mut r.alloc, 1).unwrap());
    assert_eq!(r.alloc.available(), free + 1);
    assert_eq!(r.be.unit(0).unwrap().context_descriptors().len(), 1);
    // The tag can be used again, for another table.
    r.attach(SID2, &b, 1);
    assert_eq!(r.read(SID2, 0x5000, 1).unwrap(), vec![0xbb]);
    r.assert_clean();
}

#[test]
fn tag_reused_with_another_table_rewrites_the_cd() {
    let mut r = rig(model());
    let mut a = r.table();
    let mut b = r.table();
    r.fill(DATA, 0x1000, 0xaa);
    r.fill(DATA + 0x1000, 0x1000, 0xbb);
    r.map(&mut a, 0x5000, DATA, 0x1000, Perms::RW);
    r.map(&mut b, 0x5000, DATA + 0x1000, 0x1000, Perms::RW);
    r.attach(SID, &a, 7);
    assert_eq!(r.read(SID, 0x5000, 1).unwrap(), vec![0xaa]);
    r.attach(SID2, &b, 7);
    assert_eq!(r.read(SID2, 0x5000, 1).unwrap(), vec![0xbb]);
    assert_eq!(
        r.read(SID, 0x5000, 1).unwrap(),
        vec![0xbb],
        "one CD per tag"
    );
    r.assert_clean();
}

#[test]
fn two_level_tables_are_allocated_per_group() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::R);
    let free = r.alloc.available();
    r.attach(SID, &pt, 1); // level-2 table for SIDs 0..63, and the CD
    assert_eq!(r.alloc.available(), free - 2);
    r.attach(SID + 1, &pt, 1); // same group, same CD
    assert_eq!(r.alloc.available(), free - 2);
    r.attach(SID2, &pt, 1); // another group
    assert_eq!(r.alloc.available(), free - 3);
    r.attach(0xffff, &pt, 1);
    for sid in [SID, SID + 1, SID2, 0xffff] {
        assert!(r.read(sid, 0x1000, 8).is_ok(), "{sid:#x}");
    }
    // A neighbour of an attached device in the same group stays blocked, and is reported.
    assert_eq!(r.read(SID + 2, 0x1000, 8), Err(BAD_STE));
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].device, recs[0].reason),
        (SID + 2, FaultReason::Blocked)
    );
    r.assert_clean();
}

#[test]
fn faults_are_drained_into_records() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::R);
    assert!(r.hw.dma_write(SID, 0x9000, &[1]).is_err());
    assert!(r.read(SID, 0xa000, 1).is_err());
    assert!(r.hw.dma_write(SID, 0x1000, &[1]).is_err());
    let (recs, ovf) = r.drain();
    assert!(!ovf);
    assert_eq!(
        recs,
        vec![
            FaultRecord {
                unit: 0,
                device: SID,
                iova: 0x9000,
                write: true,
                reason: FaultReason::NotPresent
            },
            FaultRecord {
                unit: 0,
                device: SID,
                iova: 0xa000,
                write: false,
                reason: FaultReason::NotPresent
            },
            FaultRecord {
                unit: 0,
                device: SID,
                iova: 0x1000,
                write: true,
                reason: FaultReason::Permission
            },
        ]
    );
    assert_eq!(r.drain(), (vec![], false));
    assert_eq!(r.counters().faults, 3);
    // A device beyond the stream table (RECINVSID set): C_BAD_STREAMID is a Blocked record.
    let mut small = rig(ModelCfg {
        sidsize: 6,
        ..model()
    });
    assert!(small.read(0x40, 0, 8).is_err());
    let (recs, _) = small.drain();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reason, FaultReason::Blocked);
    assert_eq!(recs[0].device, 0x40);
    r.assert_clean();
}

#[test]
fn event_queue_overflow_is_reported_once() {
    let mut r = rig(model());
    let pt = r.table();
    r.attach(SID, &pt, 1);
    // The queue holds 128 records (one frame); 200 faults overflow it.
    for i in 0..200u64 {
        let _ = r.read(SID, 0x10_0000 + i * 0x1000, 1);
    }
    assert!(r.hw.stats().events_discarded > 0);
    let (recs, ovf) = r.drain();
    assert!(ovf);
    assert!(recs.len() >= 127 && recs.len() <= 128, "{}", recs.len());
    assert!(recs.iter().all(|f| f.reason == FaultReason::NotPresent));
    assert_eq!(r.counters().overflows, 1);
    // Acknowledged: later faults are recorded again, without a new overflow.
    let _ = r.read(SID, 0x9000, 1);
    let (recs, ovf) = r.drain();
    assert!(!ovf);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].iova, 0x9000);
    r.assert_clean();
}

/// The unit refuses a command (here: a range TLBI after range invalidation was withdrawn
/// behind the driver's back): the error is reported as Hardware, the queue is recovered and
/// the gather still ends up invalidated (whole-ASID fallback).
#[test]
fn command_error_is_recovered() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(SID, &pt, 2);
    r.fill(DATA, 0x2000, 0x66);
    r.map(&mut pt, 0x1000, DATA, 0x2000, Perms::RW);
    assert!(r.read(SID, 0x1000, 1).is_ok());
    r.hw.borrow_mut().config_mut().ril = false;
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x1000,
            len: 0x2000,
        },
        &mut g,
    )
    .unwrap();
    let e = r.be.invalidate(0, 2, &g).unwrap_err();
    assert_eq!(
        e,
        SmmuError::CommandError {
            code: 1,
            opcode: 0x12
        }
    );
    assert_eq!(e.kind(), ErrorKind::Hardware);
    r.release(g);
    assert_eq!(r.hw.borrow().active_gerrors(), 0, "acknowledged");
    assert!(
        r.read(SID, 0x1000, 1).is_err(),
        "invalidated by the fallback"
    );
    assert!(r.read(SID, 0x2000, 1).is_err());
    // The queue works afterwards.
    r.be.invalidate_all(0, 2).unwrap();
    let c = r.counters();
    assert_eq!(c.cmd_errors, 1);
    let s = r.hw.stats();
    assert_eq!(s.cmd_errors, 1);
    assert_eq!(s.stale_hits, 0);
}

#[test]
fn bounded_wait_when_cr0ack_never_follows() {
    let (res, _mem, hw) = try_rig(
        ModelCfg {
            ack_delay_reads: u32::MAX,
            ..model()
        },
        SmmuConfig::default(),
    );
    // CR0 = 0 is acknowledged already (CR0ACK resets to 0); CMDQEN never is.
    assert_eq!(
        res.err(),
        Some(SmmuError::Timeout(WaitFor::Cr0Ack(
            iommu_hal::smmuv3::regs::cr0::CMDQEN
        )))
    );
    assert!(!hw.borrow().enabled());
}

#[test]
fn bounded_wait_when_the_command_queue_hangs() {
    let timing = Timing {
        timeout_ns: 1_000_000,
        poll_ns: 1_000,
    };
    let cfg = SmmuConfig {
        timing,
        ..SmmuConfig::default()
    };
    // Hung from the start: bring-up's CMD_SYNC times out.
    let (res, _mem, _hw) = try_rig(
        ModelCfg {
            cmdq_hung: true,
            ..model()
        },
        cfg,
    );
    assert_eq!(res.err(), Some(SmmuError::Timeout(WaitFor::CmdqSync)));
    // Hung later: an invalidation gives up after the timeout.
    let mut r = rig_with(model(), cfg);
    let pt = r.table();
    r.attach(SID, &pt, 1);
    r.hw.borrow_mut().set_cmdq_hung(true);
    let t0 = r.delay.0.get();
    let e = r.be.invalidate_all(0, 1).unwrap_err();
    assert_eq!(e, SmmuError::Timeout(WaitFor::CmdqSync));
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let waited = r.delay.0.get() - t0;
    assert!((1_000_000..=1_010_000).contains(&waited), "{waited}");
    assert_eq!(r.counters().timeouts, 1);
    // Once the unit resumes, the queue is usable again.
    r.hw.borrow_mut().set_cmdq_hung(false);
    r.be.invalidate_all(0, 1).unwrap();
}

#[test]
fn slow_consumption_is_waited_for() {
    let mut r = rig(ModelCfg {
        cons_delay_reads: 3,
        ack_delay_reads: 2,
        ..model()
    });
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::RW);
    assert!(r.read(SID, 0x1000, 1).is_ok());
    let g = r.unmap(&mut pt, 1, 0x1000, 0x1000);
    r.release(g);
    assert!(r.read(SID, 0x1000, 1).is_err());
    assert!(r.delay.0.get() > 0);
    r.assert_clean();
}

#[test]
fn bad_input_changes_nothing() {
    let mut r = rig(ModelCfg {
        asid16: false,
        ..model()
    });
    let pt = r.table();
    let good = r.domain(&pt, 1);
    let snap = r.mem.borrow().snapshot();
    let free = r.alloc.free_list().to_vec();
    let cases: Vec<(u32, DomainConfig, SmmuError)> = vec![
        (SID, DomainConfig { tag: 0, ..good }, SmmuError::BadTag),
        (SID, DomainConfig { tag: 256, ..good }, SmmuError::BadTag),
        (0x1_0000, good, SmmuError::BadDevice),
        (
            SID,
            DomainConfig {
                root: good.root + 8,
                ..good
            },
            SmmuError::BadDomain,
        ),
        (
            SID,
            DomainConfig {
                root: 1 << 44,
                ..good
            },
            SmmuError::BadDomain,
        ),
        (
            SID,
            DomainConfig {
                addr_width: 39,
                ..good
            },
            SmmuError::BadDomain,
        ),
        (
            SID,
            DomainConfig {
                addr_width: 57,
                levels: 5,
                ..good
            },
            SmmuError::BadDomain,
        ),
    ];
    for (dev, d, want) in cases {
        assert_eq!(r.be.attach(&mut r.alloc, 0, dev, d), Err(want), "{d:?}");
        assert_eq!(
            want.kind() == ErrorKind::BadDevice,
            want == SmmuError::BadDevice
        );
    }
    assert_eq!(
        r.be.attach(&mut r.alloc, 3, SID, good),
        Err(SmmuError::BadUnit)
    );
    assert_eq!(r.be.block(0, 0x1_0000), Err(SmmuError::BadDevice));
    assert_eq!(r.be.invalidate_all(0, 0), Err(SmmuError::BadTag));
    assert_eq!(
        r.be.invalidate(1, 1, &Gather::new()),
        Err(SmmuError::BadUnit)
    );
    assert_eq!(r.be.drain_faults(1, &mut |_| {}), Err(SmmuError::BadUnit));
    assert_eq!(r.mem.borrow().snapshot(), snap);
    assert_eq!(r.alloc.free_list(), &free[..]);
    r.assert_clean();
}

#[test]
fn a_full_context_descriptor_list_changes_nothing() {
    // Two CDs per unit: a third tag is refused before any frame is taken or word written,
    // also for a StreamID whose level-2 table does not exist yet.
    let mem = SharedMem::new();
    let hw = SmmuHandle::new(mem.clone(), model());
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 256);
    let mut be: SmmuBackend<SmmuHandle, SharedMem, FakeDelay, 1, 2> =
        SmmuBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(hw.clone(), &mut alloc, SmmuConfig::default())
        .expect("bring-up");
    let info = be.unit_info(0);
    let pts: Vec<PageTable<ArmS1>> = (0..3).map(|_| rig::unit_table(&info, &mut alloc)).collect();
    be.attach(&mut alloc, 0, SID, rig::domain(&pts[0], 1))
        .expect("first tag");
    be.attach(&mut alloc, 0, SID2, rig::domain(&pts[1], 2))
        .expect("second tag");
    let snap = mem.borrow().snapshot();
    let free = alloc.free_list().to_vec();
    let attempts = alloc.attempts;
    for sid in [SID + 1, 0x0500] {
        assert_eq!(
            be.attach(&mut alloc, 0, sid, rig::domain(&pts[2], 3)),
            Err(SmmuError::TooManyDomains),
            "StreamID {sid:#x}"
        );
    }
    assert_eq!(mem.borrow().snapshot(), snap);
    assert_eq!(alloc.free_list(), &free[..]);
    assert_eq!(alloc.attempts, attempts, "no frame asked for");
    // An existing tag still attaches, its CD shared.
    be.attach(&mut alloc, 0, 0x0500, rig::domain(&pts[1], 2))
        .expect("existing tag on a new level-2 table");
    assert_eq!(be.unit(0).unwrap().context_descriptors().len(), 2);
    assert_eq!(be.unit(0).unwrap().context_descriptors()[1].users, 2);
}

#[test]
fn out_of_frames_changes_nothing() {
    let mut r = rig(model());
    let pt = r.table();
    let d = r.domain(&pt, 1);
    let snap = r.mem.borrow().snapshot();
    let free = r.alloc.free_list().to_vec();
    for nth in [0, 1] {
        r.alloc.fail_in(nth); // level-2 table, then the CD
        assert_eq!(
            r.be.attach(&mut r.alloc, 0, SID, d),
            Err(SmmuError::NoFrame)
        );
        assert_eq!(r.mem.borrow().snapshot(), snap, "fail {nth}");
        assert_eq!(r.alloc.free_list(), &free[..], "fail {nth}");
    }
    r.alloc.no_failures();
    r.attach(SID, &pt, 1);
    // Bring-up without frames: nothing touched, nothing leaked.
    for nth in 0..4 {
        let mem = SharedMem::new();
        let hw = SmmuHandle::new(mem.clone(), model());
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
        let before = alloc.free_list().to_vec();
        alloc.fail_in(nth);
        let mut be = Be::new(mem.clone(), FakeDelay::default());
        // A failure while collecting the 2-frame level-1 table shrinks it to one frame
        // (15 StreamID bits); a failure for a queue frame is fatal.
        match be.add_unit(hw.clone(), &mut alloc, SmmuConfig::default()) {
            Ok(_) => {
                assert!(nth < 2, "fail {nth}");
                let st = be.unit(0).unwrap().stream_table();
                assert_eq!((st.frames, st.log2size), (1, 15));
            }
            Err(e) => {
                assert_eq!(e, SmmuError::NoFrame, "fail {nth}");
                assert_eq!(alloc.free_list(), &before[..], "fail {nth}");
                assert_eq!(hw.stats().syncs, 0);
            }
        }
    }
}

#[test]
fn gbpa_aborts_before_and_while_disabled() {
    let r = rig(model());
    let gbpa = {
        use iommu_hal::RegisterAccess;
        let mut h = r.hw.clone();
        h.read32(iommu_hal::smmuv3::regs::GBPA)
    };
    assert_ne!(gbpa & iommu_hal::smmuv3::regs::gbpa::ABORT, 0);
    assert_eq!(gbpa & iommu_hal::smmuv3::regs::gbpa::UPDATE, 0);
    let ev = r.hw.borrow().event_log.clone();
    assert!(ev.iter().all(|e| e.code != EventType::CBadSte as u8));
    let _ = Access::Read;
}

/// Physical memory that remembers which words the driver wrote and has not yet cleaned
/// with `sync_for_device`, as a non-coherent walker would need.
#[derive(Clone, Default)]
struct SyncMem {
    mem: SharedMem,
    dirty: Rc<std::cell::RefCell<std::collections::BTreeSet<u64>>>,
    syncs: Rc<Cell<u64>>,
    /// Bytes invalidated for the CPU (`sync_for_cpu`), by start address.
    invalidated: Rc<std::cell::RefCell<std::collections::BTreeMap<u64, u64>>>,
}

impl iommu_hal::PhysMem for SyncMem {
    fn read_u64(&self, pa: u64) -> u64 {
        self.mem.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, value: u64) {
        self.dirty.borrow_mut().insert(pa);
        self.mem.write_u64(pa, value)
    }
    fn order_writes(&mut self) {
        self.mem.order_writes()
    }
    fn sync_for_device(&mut self, pa: u64, len: u64) {
        self.syncs.set(self.syncs.get() + 1);
        let mut d = self.dirty.borrow_mut();
        let gone: Vec<u64> = d.range(pa..pa + len).copied().collect();
        for a in gone {
            d.remove(&a);
        }
    }
    fn sync_for_cpu(&mut self, pa: u64, len: u64) {
        self.invalidated.borrow_mut().insert(pa, len);
    }
}

#[test]
fn non_coherent_units_get_every_structure_write_cleaned() {
    for cohacc in [false, true] {
        let mem = SharedMem::new();
        let smem = SyncMem {
            mem: mem.clone(),
            ..SyncMem::default()
        };
        let hw = SmmuHandle::new(mem.clone(), ModelCfg { cohacc, ..model() });
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 256);
        let mut be: SmmuBackend<SmmuHandle, SyncMem, FakeDelay, 1> =
            SmmuBackend::new(smem.clone(), FakeDelay::default());
        be.add_unit(hw.clone(), &mut alloc, SmmuConfig::default())
            .unwrap();
        let info = be.unit_info(0);
        assert_eq!(info.coherent_walk, cohacc);
        let mut pt: PageTable<ArmS1> = rig::unit_table(&info, &mut alloc);
        let d = DomainConfig {
            tag: 1,
            root: pt.root(),
            levels: pt.levels(),
            addr_width: 48,
        };
        be.attach(&mut alloc, 0, SID, d).unwrap();
        let mut m = mem.clone();
        let mut g = Gather::new();
        pt.map(
            &mut m,
            &mut alloc,
            Map {
                iova: 0x1000,
                phys: DATA,
                len: 0x1000,
                perms: Perms::RW,
            },
            &mut g,
        )
        .unwrap();
        assert!(hw.dma_read(SID, 0x1000, 8).is_ok());
        pt.unmap(
            &mut m,
            &mut alloc,
            Unmap {
                iova: 0x1000,
                len: 0x1000,
            },
            &mut g,
        )
        .unwrap();
        be.invalidate(0, 1, &g).unwrap();
        be.block(0, SID).unwrap();
        // Two event records written by the unit, then drained by the CPU.
        assert!(hw.dma_read(SID, 0x1000, 8).is_err());
        assert!(hw.dma_read(SID, 0x2000, 8).is_err());
        let mut recs = 0;
        be.drain_faults(0, &mut |_| recs += 1).unwrap();
        assert_eq!(recs, 2);
        if cohacc {
            assert_eq!(smem.syncs.get(), 0, "coherent: no cache maintenance");
            assert!(smem.invalidated.borrow().is_empty());
        } else {
            assert!(smem.syncs.get() > 0);
            let dirty = smem.dirty.borrow();
            assert!(dirty.is_empty(), "written, never cleaned: {dirty:x?}");
            let inv = smem.invalidated.borrow();
            assert_eq!(
                inv.len(),
                2,
                "each event record invalidated before it is read"
            );
            assert!(inv.values().all(|&len| len == 32));
        }
    }
}

#[test]
fn batches_larger_than_the_queue_wait_for_space() {
    // A 4-entry Command queue; 12 single-page TLBIs and a CMD_SYNC go through it in turns.
    let mut r = rig(ModelCfg {
        cmdqs: 2,
        ril: false,
        cons_delay_reads: 1,
        ..model()
    });
    assert_eq!(r.be.unit(0).unwrap().stream_table().log2size, 16);
    let mut pt = r.table();
    r.attach(SID, &pt, 1);
    r.map(&mut pt, 0x10_0000, DATA, 0xc000, Perms::RW);
    for i in 0..12 {
        assert!(r.read(SID, 0x10_0000 + i * 0x1000, 1).is_ok());
    }
    let before = r.counters();
    let g = r.unmap(&mut pt, 1, 0x10_0000, 0xc000);
    r.release(g);
    let after = r.counters();
    assert_eq!(after.tlbi_nh_va - before.tlbi_nh_va, 12);
    assert_eq!(after.syncs - before.syncs, 1);
    for i in 0..12 {
        assert!(r.read(SID, 0x10_0000 + i * 0x1000, 1).is_err());
    }
    r.assert_clean();
}

/// Blocked and never-attached devices (STE.V = 0) fault visibly under every configuration:
/// each access is a C_BAD_STE event with the device's StreamID, drained as a Blocked record;
/// a STE being blocked is never seen half-valid, and the model notes no misuse.
#[test]
fn blocked_dma_is_reported_under_every_config() {
    for (name, m, cfg) in configs() {
        let mut r = rig_with(m.clone(), cfg);
        let mut pt = r.table();
        r.fill(DATA, 0x1000, 0x5a);
        r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::RW);
        r.attach(SID, &pt, 3);
        assert_eq!(r.read(SID, 0x1000, 4).unwrap(), vec![0x5a; 4], "{name}");
        let ste = {
            let u = r.be.unit(0).unwrap();
            u.stream_table().ste_pa(&r.mem, SID).unwrap()
        };
        let dw1 = r.mem.borrow().read(ste + 8);
        assert_ne!(dw1, 0, "{name}");
        r.be.block(0, SID).unwrap();
        assert_eq!(r.mem.borrow().read(ste), 0, "{name}: V = 0");
        assert_eq!(
            r.mem.borrow().read(ste + 8),
            dw1,
            "{name}: only dword 0 stored"
        );
        assert_eq!(r.read(SID, 0x1000, 4), Err(BAD_STE), "{name}");
        assert_eq!(
            r.hw.dma_write(SID, 0x1000, &[1, 2, 3, 4]).unwrap_err(),
            BAD_STE,
            "{name}"
        );
        // A never-attached neighbour (same level-2 table or linear table) too.
        assert_eq!(r.read(SID + 1, 0x2000, 4), Err(BAD_STE), "{name}");
        let (recs, lost) = r.drain();
        assert!(!lost, "{name}");
        let got: Vec<(u32, FaultReason)> = recs.iter().map(|f| (f.device, f.reason)).collect();
        assert_eq!(
            got,
            vec![
                (SID, FaultReason::Blocked),
                (SID, FaultReason::Blocked),
                (SID + 1, FaultReason::Blocked)
            ],
            "{name}"
        );
        let log = r.hw.borrow().event_log.clone();
        assert_eq!(
            log.iter()
                .filter(|e| e.code == EventType::CBadSte as u8)
                .map(|e| e.sid)
                .collect::<Vec<_>>(),
            vec![SID, SID, SID + 1],
            "{name}"
        );
        let mut buf = [0u8; 4];
        r.mem.borrow().read_bytes(DATA, &mut buf);
        assert_eq!(buf, [0x5a; 4], "{name}: the blocked write reached nothing");
        // Attached again: dwords 1-7 first, V last; translation resumes.
        r.attach(SID, &pt, 3);
        assert_eq!(r.read(SID, 0x1000, 4).unwrap(), vec![0x5a; 4], "{name}");
        r.assert_clean();
    }
}

/// A flood of blocked DMA (more records than the queue holds) is reported as lost records
/// plus what fitted, all Blocked.
#[test]
fn blocked_flood_overflows_visibly() {
    let mut r = rig(model());
    let pt = r.table();
    r.attach(SID, &pt, 1);
    r.be.block(0, SID).unwrap();
    // A blocked 4 KiB edu transfer: one event per 4-byte access, 1024 of them.
    for i in 0..1024u64 {
        assert_eq!(
            r.read(SID, 0x10_0000 + 4 * i, 4),
            Err(SmmuFault::Terminated {
                event: EventType::CBadSte,
                recorded: i < 128,
                abort: true,
            })
        );
    }
    let (recs, lost) = r.drain();
    assert!(lost);
    assert_eq!(recs.len(), 128);
    assert!(
        recs.iter()
            .all(|f| f.device == SID && f.reason == FaultReason::Blocked)
    );
    assert_eq!(r.drain(), (vec![], false));
    r.assert_clean();
}

/// The model's registers with an Event queue abort (GERROR.EVENTQ_ABT_ERR, 6.3.18) the test
/// can raise, as QEMU does for a full Event queue; the model itself never raises it. The bit
/// lives here: GERROR/GERRORN reads carry it, GERRORN writes keep it from the model.
#[derive(Clone)]
struct AbtRegs {
    hw: SmmuHandle,
    /// (GERROR.EVENTQ_ABT_ERR, GERRORN.EVENTQ_ABT_ERR).
    abt: Rc<Cell<(bool, bool)>>,
}

const ABT: u32 = iommu_hal::smmuv3::regs::gerror::EVENTQ_ABT_ERR;

impl AbtRegs {
    fn raise(&self) {
        let (g, n) = self.abt.get();
        if g == n {
            self.abt.set((!g, n));
        }
    }
    fn active(&self) -> bool {
        let (g, n) = self.abt.get();
        g != n
    }
}

impl iommu_hal::RegisterAccess for AbtRegs {
    fn read32(&mut self, offset: usize) -> u32 {
        use iommu_hal::smmuv3::regs::{GERROR, GERRORN};
        let v = self.hw.read32(offset);
        let (g, n) = self.abt.get();
        match offset {
            GERROR if g => v | ABT,
            GERRORN if n => v | ABT,
            _ => v,
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        if offset == iommu_hal::smmuv3::regs::GERRORN {
            let (g, _) = self.abt.get();
            self.abt.set((g, value & ABT != 0));
            self.hw.write32(offset, value & !ABT);
        } else {
            self.hw.write32(offset, value);
        }
    }
    fn read64(&mut self, offset: usize) -> u64 {
        self.hw.read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        self.hw.write64(offset, value)
    }
}

/// EVENTQ_ABT_ERR: commands are not failed by it (and leave it active), the next drain reports
/// lost records, acknowledges it and still drains the queue in the same call.
#[test]
fn eventq_abort_error_reports_loss_and_still_drains() {
    let mem = SharedMem::new();
    let hw = SmmuHandle::new(mem.clone(), model());
    let regs = AbtRegs {
        hw: hw.clone(),
        abt: Rc::new(Cell::new((false, false))),
    };
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 256);
    let mut be: SmmuBackend<AbtRegs, SharedMem, FakeDelay, 1> =
        SmmuBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(regs.clone(), &mut alloc, SmmuConfig::default())
        .unwrap();
    let mut pt: PageTable<ArmS1> = PageTable::new(
        TableConfig {
            addr_width: 48,
            phys_width: 48,
            leaf_sizes: LeafSizes::STANDARD,
            split_live_blocks: true,
            coherent: true,
        },
        &mut alloc,
    )
    .unwrap();
    let d = DomainConfig {
        tag: 1,
        root: pt.root(),
        levels: pt.levels(),
        addr_width: 48,
    };
    be.attach(&mut alloc, 0, SID, d).unwrap();
    let mut m = mem.clone();
    let mut g = Gather::new();
    pt.map(
        &mut m,
        &mut alloc,
        Map {
            iova: 0x1000,
            phys: DATA,
            len: 0x1000,
            perms: Perms::RW,
        },
        &mut g,
    )
    .unwrap();
    be.block(0, SID).unwrap();
    for i in 0..3 {
        assert_eq!(hw.dma_read(SID, 0x1000 + 4 * i, 4), Err(BAD_STE));
    }
    regs.raise();
    // Commands go on while it is active, and do not acknowledge it.
    be.attach(&mut alloc, 0, SID, d).unwrap();
    pt.unmap(
        &mut m,
        &mut alloc,
        Unmap {
            iova: 0x1000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    be.invalidate(0, 1, &g).unwrap();
    g.release(&mut m, &mut alloc);
    assert!(regs.active());
    let mut recs = Vec::new();
    let lost = be.drain_faults(0, &mut |r| recs.push(r)).unwrap();
    assert!(lost, "EVENTQ_ABT_ERR is lost records");
    assert_eq!(recs.len(), 3, "drained in the same call");
    assert!(
        recs.iter()
            .all(|f| f.device == SID && f.reason == FaultReason::Blocked)
    );
    assert!(!regs.active(), "acknowledged");
    assert_eq!(be.counters(0).unwrap().overflows, 1);
    assert_eq!(be.counters(0).unwrap().hw_errors, 0);
    let mut n = 0;
    assert!(!be.drain_faults(0, &mut |_| n += 1).unwrap());
    assert_eq!(n, 0);
    let model = hw.borrow();
    assert!(model.misuse.is_empty(), "{:#?}", model.misuse);
    assert_eq!(model.active_gerrors(), 0);
}

/// Offsets of the registers the interrupt tests read back (SMMUv3 6.3.16 to 6.3.32).
const IRQ_CTRLACK: usize = 0x54;
const GERROR_IRQ_CFG0: usize = 0x68;
const EVENTQ_IRQ_CFG0: usize = 0xb0;
const EVENTQ_IRQ_CFG1: usize = 0xb8;
const EVENTQ_IRQ_CFG2: usize = 0xbc;

const EVENTQ_WIRED: Irq = Irq {
    source: IrqSource::EventQueue,
    msi: None,
};

/// DMA of a device never attached: refused, one event per access (C_BAD_STE, or
/// C_BAD_STREAMID where its level-2 stream table does not exist).
fn blocked_access(r: &Rig, page: u64) {
    assert!(r.read(SID2, page << 12, 1).is_err());
}

/// IRQ_CTRL (6.3.16): the Event queue and GERROR interrupts enabled on the wired lines. An
/// event raises the Event queue interrupt only once enabled; events behind undrained ones
/// raise nothing (3.18: empty to non-empty); after a drain the next event raises it again.
#[test]
fn event_interrupt_when_enabled_not_before_and_again_after_a_drain() {
    for (name, model, cfg) in configs() {
        let mut r = rig_with(model, cfg);
        blocked_access(&r, 1);
        assert!(r.hw.borrow().irq_log.is_empty(), "{name}: disabled");
        r.be.enable_fault_interrupt(0, FaultInterrupt::Wired)
            .expect("enable");
        assert_eq!(r.hw.borrow_mut().read32(IRQ_CTRLACK), 0b101, "{name}");
        assert!(
            r.hw.borrow().irq_log.is_empty(),
            "{name}: nothing for the event already queued"
        );
        // What the platform does right after enabling: drain once.
        assert_eq!(r.drain().0.len(), 1, "{name}");
        blocked_access(&r, 2);
        blocked_access(&r, 3);
        assert_eq!(r.hw.borrow().irq_log, [EVENTQ_WIRED], "{name}");
        assert_eq!(r.drain().0.len(), 2, "{name}");
        blocked_access(&r, 4);
        assert_eq!(r.hw.borrow().irq_log, [EVENTQ_WIRED; 2], "{name}: re-armed");
        r.assert_clean();
    }
}

/// A GERROR condition raises the GERROR interrupt; the drain acknowledges it and reports it
/// as the error, and still drains the Event queue, so that its next record interrupts again.
#[test]
fn gerror_interrupt_and_drain_still_empties_the_queue() {
    let mut r = rig(model());
    r.be.enable_fault_interrupt(0, FaultInterrupt::Wired)
        .expect("enable");
    blocked_access(&r, 1);
    const SFM_ERR: u32 = 1 << 8;
    r.hw.borrow_mut().inject_global_error(SFM_ERR);
    assert_eq!(
        r.hw.borrow().irq_log,
        [
            EVENTQ_WIRED,
            Irq {
                source: IrqSource::Gerror,
                msi: None
            }
        ]
    );
    let mut recs = Vec::new();
    let e = r.be.drain_faults(0, &mut |x| recs.push(x)).unwrap_err();
    assert_eq!(e, SmmuError::GlobalError { gerror: SFM_ERR });
    assert_eq!(recs.len(), 1, "the queue drained all the same");
    assert_eq!(r.hw.borrow().active_gerrors(), 0, "acknowledged");
    blocked_access(&r, 2);
    assert_eq!(r.hw.borrow().irq_log.len(), 3, "the next event interrupts");
    assert_eq!(r.hw.borrow().irq_log[2], EVENTQ_WIRED);
}

/// With IDR0.MSI, `Msi` programs both sources' CFG0/1/2 (address, data, Device-nGnRE) while
/// the interrupts are off; `Wired` writes ADDR = 0 so the wired lines are used. Without
/// IDR0.MSI an MSI is refused and nothing is written.
#[test]
fn msi_configuration_follows_idr0_msi() {
    let msi = FaultInterrupt::Msi {
        address: 0x0802_0040,
        data: 0x6a,
    };
    let mut r = rig(ModelCfg {
        msi: true,
        ..model()
    });
    r.be.enable_fault_interrupt(0, msi).expect("enable");
    {
        let mut m = r.hw.borrow_mut();
        assert_eq!(m.read64(EVENTQ_IRQ_CFG0), 0x0802_0040);
        assert_eq!(m.read32(EVENTQ_IRQ_CFG1), 0x6a);
        assert_eq!(m.read32(EVENTQ_IRQ_CFG2), 1);
        assert_eq!(m.read64(GERROR_IRQ_CFG0), 0x0802_0040);
    }
    blocked_access(&r, 1);
    assert_eq!(
        r.hw.borrow().irq_log,
        [Irq {
            source: IrqSource::EventQueue,
            msi: Some((0x0802_0040, 0x6a))
        }]
    );
    // Reprogramming turns the interrupts off first (no misuse), then wired: ADDR = 0.
    r.drain();
    r.be.enable_fault_interrupt(0, FaultInterrupt::Wired)
        .expect("wired");
    assert_eq!(r.hw.borrow_mut().read64(EVENTQ_IRQ_CFG0), 0);
    blocked_access(&r, 2);
    assert_eq!(r.hw.borrow().irq_log[1], EVENTQ_WIRED);
    r.assert_clean();

    let mut r = rig(model());
    assert_eq!(
        r.be.enable_fault_interrupt(0, msi),
        Err(SmmuError::Unsupported)
    );
    let bad = FaultInterrupt::Msi {
        address: 0x0802_0042,
        data: 0,
    };
    let mut m = rig(ModelCfg {
        msi: true,
        ..model()
    });
    assert_eq!(
        m.be.enable_fault_interrupt(0, bad),
        Err(SmmuError::Unsupported)
    );
    assert_eq!(r.hw.borrow_mut().read32(IRQ_CTRLACK), 0);
    assert_eq!(m.hw.borrow_mut().read32(IRQ_CTRLACK), 0);
    r.assert_clean();
    m.assert_clean();
}

/// IRQ_CTRLACK never following IRQ_CTRL is a bounded wait that times out.
#[test]
fn bounded_wait_when_irq_ctrlack_never_follows() {
    let mut r = rig(ModelCfg {
        irq_ctrl_hung: true,
        ..model()
    });
    let before = r.delay.0.get();
    let e =
        r.be.enable_fault_interrupt(0, FaultInterrupt::Wired)
            .unwrap_err();
    assert_eq!(e, SmmuError::Timeout(WaitFor::IrqCtrlAck(0b101)));
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(r.delay.0.get() > before, "waited");
    assert_eq!(r.counters().timeouts, 1);
}

/// A record written while the drain returns the slots (the queue still non-empty as the SMMU
/// sees it) raises no interrupt: the drain reads PROD again and takes it, leaving the queue
/// empty, so the next record interrupts.
#[test]
fn event_recorded_during_a_drain_is_drained_and_the_queue_re_armed() {
    let mem = SharedMem::new();
    let hw = SmmuHandle::new(mem.clone(), model());
    let tap = Tap::new(hw.clone());
    let arm = tap.arming();
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 2048);
    let mut be: SmmuBackend<Tap<SmmuHandle>, SharedMem, FakeDelay, 1> =
        SmmuBackend::new(mem.clone(), FakeDelay::default());
    be.add_unit(tap, &mut alloc, SmmuConfig::default())
        .expect("bring-up");
    be.enable_fault_interrupt(0, FaultInterrupt::Wired)
        .expect("enable");
    assert!(hw.dma_read(SID2, 0x1000, 1).is_err());
    assert_eq!(hw.borrow().irq_log.len(), 1);
    let late = hw.clone();
    arm.before_write(0x1_00ac, move || {
        assert!(late.dma_read(SID2, 0x2000, 1).is_err());
    });
    let mut recs = 0;
    be.drain_faults(0, &mut |r| {
        assert_eq!((r.device, r.reason), (SID2, FaultReason::Blocked));
        recs += 1;
    })
    .expect("drain");
    assert!(arm.all_ran());
    assert_eq!(recs, 2, "the late record drained too");
    assert_eq!(
        hw.borrow().irq_log.len(),
        1,
        "no interrupt for the late record"
    );
    assert!(hw.borrow().pending_events().is_empty());
    assert!(hw.dma_read(SID2, 0x3000, 1).is_err());
    assert_eq!(hw.borrow().irq_log.len(), 2, "the next record interrupts");
    assert!(hw.borrow().misuse.is_empty(), "{:?}", hw.borrow().misuse);
}
