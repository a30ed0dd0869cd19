//! The RISC-V IOMMU backend (`iommu_hal::riscv`) driving the register-level RISC-V IOMMU
//! model (`iommu_test_harness::model::riscv`): bring-up under several capability
//! configurations, DMA through Sv39/48/57 tables built with `PageTable<RiscvSv>`,
//! invalidation sufficiency (the model's device-context cache, IOTLB and non-leaf cache keep
//! entries until the right command, and invalidations take effect only at `IOFENCE.C`), block
//! splits, unlinked tables, blocking, moving devices between domains, fault draining and
//! overflow, command-queue error recovery, bounded waits, interrupts, publication order and
//! bad input.

use std::cell::RefCell;
use std::rc::Rc;

use iommu_hal::backend::{
    Backend, BackendError, DomainConfig, ErrorKind, FaultInterrupt, FaultReason, FaultRecord,
};
use iommu_hal::mem::{FrameAlloc, PhysMem};
use iommu_hal::pagetable::format::RiscvSv;
use iommu_hal::pagetable::{Gather, LeafSizes, Map, PageTable, Perms, TableConfig, Unmap};
use iommu_hal::riscv::{RiscvBackend, RiscvConfig, RiscvError, Timing, WaitFor};
use iommu_test_harness::model::riscv::{RiscvConfig as ModelCfg, RiscvFault, RiscvHandle, regs};
use iommu_test_harness::rig::{self, FakeDelay};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = RiscvBackend<RiscvHandle, SharedMem, FakeDelay, 2>;

const POOL: u64 = 0x100_0000;
const DEV: u32 = 0x0010; // 00:02.0, edu on QEMU virt with riscv-iommu-pci at 00:01.0
const DEV2: u32 = 0x0310; // 03:02.0: another DDT leaf
const DATA: u64 = 0x4000_0000;

/// The fault of a blocked device: "DDT entry not valid", recorded.
const BLOCKED: u16 = 258;

struct Rig {
    mem: SharedMem,
    hw: RiscvHandle,
    be: Be,
    alloc: SimAlloc,
    delay: FakeDelay,
}

fn try_rig(model: ModelCfg, cfg: RiscvConfig) -> (Result<Rig, RiscvError>, SharedMem, RiscvHandle) {
    let mem = SharedMem::new();
    let hw = RiscvHandle::new(mem.clone(), model);
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

fn rig_with(model: ModelCfg, cfg: RiscvConfig) -> Rig {
    try_rig(model, cfg).0.expect("bring-up")
}

fn rig(model: ModelCfg) -> Rig {
    rig_with(model, RiscvConfig::default())
}

impl Rig {
    fn table(&mut self) -> PageTable<RiscvSv> {
        rig::unit_table(&self.be.unit_info(0), &mut self.alloc)
    }

    fn table_of(&mut self, addr_width: u32) -> PageTable<RiscvSv> {
        let info = self.be.unit_info(0);
        PageTable::new(
            TableConfig {
                addr_width,
                ..rig::unit_table_config(&info)
            },
            &mut self.alloc,
        )
        .expect("table")
    }

    fn attach(&mut self, dev: u32, pt: &PageTable<RiscvSv>, tag: u16) {
        let d = rig::domain(pt, tag);
        self.be.attach(&mut self.alloc, 0, dev, d).expect("attach");
    }

    fn map(&mut self, pt: &mut PageTable<RiscvSv>, iova: u64, phys: u64, len: u64, perms: Perms) {
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
        // Invalid entries are never cached (spec chapter 6): a map needs no invalidation.
        assert!(!self.be.unit_info(0).caches_not_present);
        g.release(&mut self.mem, &mut self.alloc);
    }

    /// Unmaps, invalidates the gather, then frees the unlinked tables.
    fn unmap(&mut self, pt: &mut PageTable<RiscvSv>, tag: u16, iova: u64, len: u64) {
        let mut g = Gather::new();
        pt.unmap(&mut self.mem, &mut self.alloc, Unmap { iova, len }, &mut g)
            .expect("unmap");
        self.be.invalidate(0, tag, &g).expect("invalidate");
        g.release(&mut self.mem, &mut self.alloc);
    }

    fn fill(&self, phys: u64, len: usize, byte: u8) {
        self.mem.borrow_mut().write_bytes(phys, &vec![byte; len]);
    }

    fn read(&self, dev: u32, iova: u64, len: usize) -> Result<Vec<u8>, RiscvFault> {
        self.hw.dma_read(dev, iova, len)
    }

    fn drain(&mut self) -> (Vec<FaultRecord>, bool) {
        let mut v = Vec::new();
        let lost = self.be.drain_faults(0, &mut |r| v.push(r)).expect("drain");
        (v, lost)
    }

    fn assert_clean(&self) {
        let m = self.hw.borrow();
        assert!(
            m.misuse.is_empty(),
            "model saw driver errors: {:#?}",
            m.misuse
        );
        let s = &m.stats;
        assert_eq!(s.stale_hits, 0, "stale IOTLB hits");
        assert_eq!(s.stale_dc_hits, 0, "stale device-context hits");
        assert_eq!(s.cmd_errors, 0, "illegal commands: {:?}", m.cmd_error_log);
        assert_eq!(s.bypassed, 0, "untranslated DMA");
        assert_eq!(m.cqcsr() & regs::CQCSR_ERRORS, 0, "command queue in error");
    }

    fn counters(&self) -> iommu_hal::riscv::RiscvCounters {
        self.be.counters(0).unwrap()
    }
}

fn model() -> ModelCfg {
    ModelCfg::qemu()
}

/// (name, model, driver configuration, a second device id within the configuration).
fn configs() -> Vec<(&'static str, ModelCfg, RiscvConfig, u32)> {
    let d = RiscvConfig::default;
    vec![
        ("qemu", model(), d(), DEV2),
        (
            "base-format",
            ModelCfg {
                msi_flat: false,
                ..model()
            },
            d(),
            DEV2,
        ),
        (
            "sv39-only-pas40",
            ModelCfg {
                sv48: false,
                sv57: false,
                pas: 40,
                ..model()
            },
            d(),
            DEV2,
        ),
        (
            "sv57",
            model(),
            RiscvConfig {
                addr_width: 57,
                ..d()
            },
            DEV2,
        ),
        (
            "one-level-ddt",
            model(),
            RiscvConfig {
                device_id_bits: 6,
                ..d()
            },
            0x3f,
        ),
        (
            "two-level-ddt",
            model(),
            RiscvConfig {
                device_id_bits: 15,
                ..d()
            },
            0x7fff,
        ),
        (
            "24-bit-ids",
            model(),
            RiscvConfig {
                device_id_bits: 24,
                ..d()
            },
            0xab_cdef,
        ),
        (
            "slow-unit",
            ModelCfg {
                ddtp_busy_reads: 3,
                queue_on_delay_reads: 2,
                cq_delay_reads: 4,
                ..model()
            },
            d(),
            DEV2,
        ),
        (
            "immediate-invalidation",
            ModelCfg {
                complete_invalidation_at_fence: false,
                ..model()
            },
            d(),
            DEV2,
        ),
        (
            "small-queues",
            model(),
            RiscvConfig {
                cq_log2: 2,
                fq_log2: 2,
                ..d()
            },
            DEV2,
        ),
    ]
}

#[test]
fn bring_up_on_qemu_defaults() {
    let mut r = rig(model());
    let info = r.be.unit_info(0);
    assert_eq!(r.be.unit_count(), 1);
    assert_eq!((info.addr_width, info.phys_width), (48, 56));
    assert_eq!(info.leaf_sizes, LeafSizes::STANDARD);
    assert!(!info.caches_not_present && info.split_live_blocks && info.coherent_walk);
    assert_eq!(info.max_tag, u16::MAX);
    assert_eq!(r.be.unit_info(7), info, "out of range: unit 0's info");
    let u = r.be.unit(0).unwrap();
    let ddt = u.ddt();
    assert_eq!(
        ddt.levels, 3,
        "16-bit ids with 64-byte contexts need 3 levels"
    );
    assert!(!u.wired(), "QEMU's PCI unit signals by MSI only");
    {
        let m = r.hw.borrow();
        assert_eq!(m.ddtp() & regs::DDTP_MODE, 4, "3LVL");
        assert_eq!(((m.ddtp() & regs::DDTP_PPN) >> 10) << 12, ddt.root);
        assert_ne!(m.cqcsr() & regs::CQCSR_CQON, 0);
        assert_ne!(m.fqcsr() & regs::FQCSR_FQON, 0);
        assert_eq!(m.stats.fences, 1);
        assert_eq!(m.stats.iodir, 1);
        assert_eq!(m.stats.iotinval_wide, 1);
    }
    let c = r.counters();
    assert_eq!(
        (c.iodir_ddt, c.iotinval_all, c.fences, c.batches),
        (1, 1, 1, 1)
    );
    // Nothing attached: DMA faults ("DDT entry not valid": no DDT path yet), nothing passes.
    assert_eq!(r.read(DEV, 0x1000, 8).unwrap_err().cause, BLOCKED);
    let (recs, lost) = r.drain();
    assert!(!lost);
    assert_eq!(
        recs,
        [FaultRecord {
            unit: 0,
            device: DEV,
            iova: 0x1000,
            write: false,
            reason: FaultReason::Blocked
        }]
    );
    r.assert_clean();
}

/// Map, DMA, unmap one page and a 2 MiB leaf: DMA must fault (a stale IOTLB would be
/// caught), neighbours still readable; under every configuration.
#[test]
fn dma_and_unmap_under_every_config() {
    for (name, m, cfg, dev2) in configs() {
        let mut r = rig_with(m.clone(), cfg);
        let mut pt = r.table();
        r.attach(DEV, &pt, 1);
        r.attach(dev2, &pt, 1);
        r.fill(DATA + 0x21_0000, 0x1000, 0x5a);
        r.fill(DATA + 0x3000, 8, 0xa5);
        r.map(&mut pt, 0x10_0000, DATA, 0x8000, Perms::RW);
        r.map(&mut pt, 0x20_0000, DATA + 0x20_0000, 0x20_0000, Perms::R);
        for dev in [DEV, dev2] {
            assert_eq!(r.read(dev, 0x10_3000, 8).unwrap(), vec![0xa5; 8], "{name}");
            assert_eq!(r.read(dev, 0x21_0000, 4).unwrap(), vec![0x5a; 4], "{name}");
            r.hw.dma_write(dev, 0x10_0000, &[1, 2, 3, 4]).unwrap();
        }
        assert_eq!(
            r.read(DEV, 0x10_0000, 4).unwrap(),
            vec![1, 2, 3, 4],
            "{name}"
        );
        assert_eq!(
            r.hw.dma_write(DEV, 0x20_0000, &[0]).unwrap_err().cause,
            15,
            "{name}: read-only leaf: store page fault"
        );
        assert!(r.hw.borrow().tlb_len() > 0, "{name}: translations cached");

        r.unmap(&mut pt, 1, 0x10_3000, 0x1000);
        r.unmap(&mut pt, 1, 0x20_0000, 0x20_0000);
        for dev in [DEV, dev2] {
            assert!(r.read(dev, 0x10_3000, 8).is_err(), "{name}: unmapped page");
            assert!(r.read(dev, 0x20_0000, 8).is_err(), "{name}: unmapped leaf");
            assert!(
                r.read(dev, 0x3f_f000, 8).is_err(),
                "{name}: unmapped leaf end"
            );
            assert!(r.read(dev, 0x10_2000, 8).is_ok(), "{name}: neighbour");
            assert!(r.read(dev, 0x10_4000, 8).is_ok(), "{name}: neighbour");
        }
        assert!(r.counters().iotinval_addr > 0, "{name}: address-specific");
        let (recs, _) = r.drain();
        assert!(
            recs.iter().all(|f| f.reason == FaultReason::NotPresent),
            "{name}"
        );
        r.assert_clean();
    }
}

#[test]
fn first_stage_widths_follow_capabilities() {
    for (w, sv39, sv48, sv57) in [
        (39, true, false, false),
        (48, false, true, false),
        (57, false, false, true),
    ] {
        let mut r = rig(ModelCfg {
            sv39,
            sv48,
            sv57,
            ..model()
        });
        assert_eq!(r.be.unit_info(0).addr_width, w);
        let mut pt = r.table();
        r.attach(DEV, &pt, 3);
        r.fill(DATA, 8, 0x77);
        // The top of the lower half of the address space.
        let top = (1u64 << (w - 1)) - 0x1000;
        r.map(&mut pt, top, DATA, 0x1000, Perms::R);
        assert_eq!(r.read(DEV, top, 8).unwrap(), vec![0x77; 8]);
        // A domain of a width the unit lacks is refused.
        let other = if w == 48 { 39 } else { 48 };
        let pt2 = r.table_of(other);
        assert_eq!(
            r.be.attach(&mut r.alloc, 0, DEV2, rig::domain(&pt2, 4)),
            Err(RiscvError::BadDomain)
        );
        r.assert_clean();
    }
}

#[test]
fn split_of_a_live_leaf_keeps_the_rest_mapped() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.fill(DATA, 0x20_0000, 0x42);
    r.map(&mut pt, 0x20_0000, DATA, 0x20_0000, Perms::RW);
    assert!(r.read(DEV, 0x20_5000, 8).is_ok());
    r.unmap(&mut pt, 1, 0x20_5000, 0x1000);
    assert!(r.read(DEV, 0x20_5000, 8).is_err(), "the hole");
    assert_eq!(r.read(DEV, 0x20_4000, 8).unwrap(), vec![0x42; 8]);
    assert_eq!(r.read(DEV, 0x3f_f000, 8).unwrap(), vec![0x42; 8]);
    r.assert_clean();
}

/// Unmapping a whole table's range removes a non-leaf entry: only a whole-PSCID
/// invalidation reaches the cached non-leaf entry (address-specific ones reach leaves only).
#[test]
fn unlinked_tables_are_forgotten() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 0x40_0000, DATA, 0x3000, Perms::RW);
    assert!(r.read(DEV, 0x40_1000, 8).is_ok());
    assert!(r.hw.borrow().walk_cache_len() > 0);
    let before = r.counters().iotinval_pscid;
    // The whole 2 MiB its leaf table translates: the table goes (a smaller unmap keeps it,
    // empty, in the engine's reserve).
    r.unmap(&mut pt, 1, 0x40_0000, 0x20_0000);
    assert_eq!(r.counters().iotinval_pscid, before + 1, "whole PSCID");
    // The freed tables' frames are reused for a new mapping elsewhere; a stale non-leaf
    // entry would walk them.
    r.fill(DATA + 0x10_0000, 8, 0x99);
    r.map(&mut pt, 0x80_0000, DATA + 0x10_0000, 0x1000, Perms::RW);
    assert!(r.read(DEV, 0x40_1000, 8).is_err());
    assert_eq!(r.read(DEV, 0x80_0000, 8).unwrap(), vec![0x99; 8]);
    r.assert_clean();
}

#[test]
fn large_spans_fall_back_to_pscid_invalidation_and_one_batch_per_gather() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 0, DATA, 64 * 0x1000, Perms::RW);
    for i in 0..64 {
        assert!(r.read(DEV, i * 0x1000, 8).is_ok());
    }
    let c0 = r.counters();
    r.unmap(&mut pt, 1, 0, 40 * 0x1000);
    let c1 = r.counters();
    assert_eq!(c1.batches, c0.batches + 1, "one batch per gather");
    assert_eq!(c1.fences, c0.fences + 1);
    assert_eq!(c1.iotinval_pscid, c0.iotinval_pscid + 1);
    assert_eq!(c1.iotinval_addr, c0.iotinval_addr);
    for i in 0..64 {
        assert_eq!(r.read(DEV, i * 0x1000, 8).is_ok(), i >= 40, "page {i}");
    }
    // A few pages: address-specific, still one batch.
    r.unmap(&mut pt, 1, 45 * 0x1000, 3 * 0x1000);
    let c2 = r.counters();
    assert_eq!(
        (c2.batches, c2.iotinval_addr),
        (c1.batches + 1, c1.iotinval_addr + 3)
    );
    // An empty gather: nothing at all.
    r.be.invalidate(0, 1, &Gather::new()).unwrap();
    assert_eq!(r.counters().batches, c2.batches);
    r.assert_clean();
}

#[test]
fn block_is_idempotent_and_never_short_cut() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::RW);
    // A device that never had a context: still invalidated and waited for.
    let c0 = r.counters();
    r.be.block(0, DEV2).unwrap();
    let c1 = r.counters();
    assert_eq!(
        (c1.iodir_ddt, c1.batches),
        (c0.iodir_ddt + 1, c0.batches + 1)
    );
    r.attach(DEV, &pt, 1);
    assert!(r.read(DEV, 0x1000, 8).is_ok());
    assert!(r.hw.borrow().dc_cached(DEV));
    r.be.block(0, DEV).unwrap();
    let c2 = r.counters();
    assert_eq!(
        c2.iotinval_pscid,
        c1.iotinval_pscid + 2,
        "attach and block name PSCID 1"
    );
    assert!(!r.hw.borrow().dc_cached(DEV));
    assert_eq!(r.read(DEV, 0x1000, 8).unwrap_err().cause, BLOCKED);
    // Blocking again still invalidates and waits.
    r.be.block(0, DEV).unwrap();
    let c3 = r.counters();
    assert_eq!(
        (c3.iodir_ddt, c3.batches),
        (c2.iodir_ddt + 1, c2.batches + 1)
    );
    assert_eq!(r.read(DEV, 0x1000, 8).unwrap_err().cause, BLOCKED);
    // Reattach.
    r.attach(DEV, &pt, 1);
    assert!(r.read(DEV, 0x1000, 8).is_ok());
    let (recs, _) = r.drain();
    assert!(
        recs.iter()
            .all(|f| f.reason == FaultReason::Blocked && f.device == DEV)
    );
    assert_eq!(recs.len(), 2);
    r.assert_clean();
}

#[test]
fn moving_a_device_between_domains() {
    let mut r = rig(model());
    let mut a = r.table();
    let mut b = r.table();
    r.fill(DATA, 8, 0xaa);
    r.fill(DATA + 0x1000, 8, 0xbb);
    r.map(&mut a, 0x5000, DATA, 0x1000, Perms::RW);
    r.map(&mut b, 0x5000, DATA + 0x1000, 0x1000, Perms::RW);
    r.attach(DEV, &a, 1);
    r.attach(DEV2, &a, 1);
    assert_eq!(r.read(DEV, 0x5000, 8).unwrap(), vec![0xaa; 8]);
    assert_eq!(r.read(DEV2, 0x5000, 8).unwrap(), vec![0xaa; 8]);
    r.attach(DEV, &b, 2);
    assert_eq!(r.read(DEV, 0x5000, 8).unwrap(), vec![0xbb; 8]);
    assert_eq!(
        r.read(DEV2, 0x5000, 8).unwrap(),
        vec![0xaa; 8],
        "the other stays"
    );
    // Attaching again to the domain it is in rewrites nothing.
    let dc = r.be.unit(0).unwrap().ddt().dc_pa(&r.mem, DEV).unwrap();
    let words = |r: &Rig| {
        (0..8)
            .map(|i| r.mem.borrow().read(dc + 8 * i))
            .collect::<Vec<_>>()
    };
    let before = words(&r);
    let writes = r.mem.borrow().writes;
    let c = r.counters();
    r.attach(DEV, &b, 2);
    assert_eq!(words(&r), before);
    // Two command-queue entries (IODIR, IOFENCE.C) of two words each.
    assert_eq!(r.mem.borrow().writes, writes + 4);
    assert_eq!(r.counters().iotinval_pscid, c.iotinval_pscid);
    assert_eq!(r.counters().iodir_ddt, c.iodir_ddt + 1);
    r.assert_clean();
}

/// A PSCID reused for another table (a domain destroyed, its tag given to a new one) never
/// shows the old table's translations, even if nobody invalidated the tag in between: every
/// attach invalidates the PSCID it installs.
#[test]
fn tag_reused_with_another_table() {
    let mut r = rig(model());
    let mut a = r.table();
    let mut b = r.table();
    r.fill(DATA, 8, 0x11);
    r.fill(DATA + 0x1000, 8, 0x22);
    r.map(&mut a, 0x5000, DATA, 0x1000, Perms::RW);
    r.map(&mut b, 0x5000, DATA + 0x1000, 0x1000, Perms::RW);
    r.attach(DEV, &a, 7);
    assert_eq!(r.read(DEV, 0x5000, 8).unwrap(), vec![0x11; 8]);
    r.attach(DEV2, &b, 7);
    assert_eq!(r.read(DEV2, 0x5000, 8).unwrap(), vec![0x22; 8]);
    r.assert_clean();
}

#[test]
fn faults_are_drained_into_records() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::R);
    assert!(r.read(DEV, 0x9000, 4).is_err());
    assert!(r.hw.dma_write(DEV, 0x1008, &[1]).is_err());
    assert!(r.read(DEV2, 0x2000, 4).is_err());
    let (recs, lost) = r.drain();
    assert!(!lost);
    assert_eq!(
        recs,
        [
            FaultRecord {
                unit: 0,
                device: DEV,
                iova: 0x9000,
                write: false,
                reason: FaultReason::NotPresent
            },
            FaultRecord {
                unit: 0,
                device: DEV,
                iova: 0x1008,
                write: true,
                reason: FaultReason::NotPresent
            },
            FaultRecord {
                unit: 0,
                device: DEV2,
                iova: 0x2000,
                write: false,
                reason: FaultReason::Blocked
            },
        ]
    );
    assert_eq!(r.drain(), (vec![], false));
    assert_eq!(r.counters().faults, 3);
    r.assert_clean();
}

#[test]
fn fault_queue_overflow_is_reported_once() {
    let mut r = rig_with(
        model(),
        RiscvConfig {
            fq_log2: 2,
            ..RiscvConfig::default()
        },
    );
    // Four slots, three usable: the fourth and fifth faults are discarded with fqof set.
    for i in 0..5 {
        assert!(r.read(DEV, i * 0x1000, 4).is_err());
    }
    assert_ne!(r.hw.borrow().fqcsr() & regs::FQCSR_FQOF, 0);
    let (recs, lost) = r.drain();
    assert!(lost);
    assert_eq!(recs.len(), 3);
    assert_eq!(r.hw.borrow().fqcsr() & regs::FQCSR_FQOF, 0, "cleared");
    assert_eq!(r.drain(), (vec![], false), "lost is reported once");
    // Reporting resumed.
    assert!(r.read(DEV, 0x7000, 4).is_err());
    let (recs, lost) = r.drain();
    assert_eq!((recs.len(), lost), (1, false));
    assert_eq!(r.counters().overflows, 1);
    r.assert_clean();
}

#[test]
fn illegal_command_is_recovered() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.map(&mut pt, 0x1000, DATA, 0x2000, Perms::RW);
    assert!(r.read(DEV, 0x1000, 8).is_ok());
    // The unit refuses the address-specific IOTINVAL: the driver replaces it by a fence,
    // lets the queue go on, invalidates the whole PSCID and reports the error.
    r.hw.borrow_mut().refuse_next_opcode = Some(1);
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x1000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    let e = r.be.invalidate(0, 1, &g).unwrap_err();
    assert_eq!(
        e,
        RiscvError::CommandError {
            cqcsr: regs::CQCSR_CMD_ILL,
            opcode: 1
        }
    );
    assert_eq!(e.kind(), ErrorKind::Hardware);
    g.release(&mut r.mem, &mut r.alloc);
    assert!(r.read(DEV, 0x1000, 8).is_err(), "nothing stale after all");
    assert!(r.read(DEV, 0x2000, 8).is_ok());
    assert_eq!(r.counters().cmd_errors, 1);
    {
        let mut m = r.hw.borrow_mut();
        assert_eq!(m.stats.cmd_errors, 1);
        assert_eq!(m.cqcsr() & regs::CQCSR_ERRORS, 0, "cmd_ill cleared");
        m.stats.cmd_errors = 0;
    }
    // The queue works on.
    r.attach(DEV2, &pt, 1);
    assert!(r.read(DEV2, 0x2000, 8).is_ok());
    r.assert_clean();
}

#[test]
fn command_queue_memory_fault_is_recovered() {
    let mut r = rig(model());
    let pt = r.table();
    r.hw.borrow_mut().cqmf_next_fetch = true;
    let d = rig::domain(&pt, 1);
    let e = r.be.attach(&mut r.alloc, 0, DEV, d).unwrap_err();
    assert_eq!(
        e,
        RiscvError::CommandError {
            cqcsr: regs::CQCSR_CQMF,
            opcode: 0
        }
    );
    // Retried by the unit once cleared: the attach went through after all.
    r.attach(DEV, &pt, 1);
    r.assert_clean();
}

#[test]
fn bounded_wait_when_the_command_queue_hangs() {
    let mut r = rig(model());
    let pt = r.table();
    r.hw.borrow_mut().set_cq_hung(true);
    let t0 = r.delay.0.get();
    let d = rig::domain(&pt, 1);
    let e = r.be.attach(&mut r.alloc, 0, DEV, d).unwrap_err();
    assert_eq!(e, RiscvError::Timeout(WaitFor::CqFence));
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let waited = r.delay.0.get() - t0;
    let timing = Timing::default();
    assert!(waited >= u64::from(timing.timeout_ns));
    assert!(waited <= u64::from(timing.timeout_ns) + u64::from(timing.poll_ns));
    assert_eq!(r.counters().timeouts, 1);
    // The unit wakes up: the queued commands complete, the next operation works.
    r.hw.borrow_mut().set_cq_hung(false);
    r.attach(DEV, &pt, 1);
    r.assert_clean();
}

#[test]
fn bounded_wait_when_ddtp_stays_busy() {
    let (r, _, hw) = try_rig(
        ModelCfg {
            ddtp_busy_reads: u32::MAX,
            ..model()
        },
        RiscvConfig::default(),
    );
    assert_eq!(r.err(), Some(RiscvError::Timeout(WaitFor::DdtpBusy)));
    assert_eq!(hw.borrow().ddtp() & regs::DDTP_MODE, 0, "still Off");
}

#[test]
fn a_queue_found_off_is_restarted() {
    let mut r = rig(model());
    let pt = r.table();
    // Someone turns the queue off behind the driver's back.
    {
        use iommu_hal::RegisterAccess;
        let mut h = r.hw.clone();
        h.write32(regs::CQCSR, 0);
    }
    let d = rig::domain(&pt, 1);
    assert_eq!(
        r.be.attach(&mut r.alloc, 0, DEV, d),
        Err(RiscvError::QueueOff)
    );
    assert_ne!(r.hw.borrow().cqcsr() & regs::CQCSR_CQON, 0, "restarted");
    r.attach(DEV, &pt, 1);
    let mut pt = pt;
    r.map(&mut pt, 0, DATA, 0x1000, Perms::R);
    assert!(r.read(DEV, 0, 8).is_ok());
    r.assert_clean();
}

#[test]
fn unsupported_units_are_refused_untouched() {
    let cases: Vec<(&str, ModelCfg, RiscvConfig)> = vec![
        (
            "version 2.0",
            ModelCfg {
                version: 0x20,
                ..model()
            },
            RiscvConfig::default(),
        ),
        (
            "Sv32 only",
            ModelCfg {
                sv39: false,
                sv48: false,
                sv57: false,
                ..model()
            },
            RiscvConfig::default(),
        ),
        (
            "big-endian only",
            ModelCfg {
                big_endian_at_reset: true,
                ..model()
            },
            RiscvConfig::default(),
        ),
        (
            "IGS reserved",
            ModelCfg { igs: 3, ..model() },
            RiscvConfig::default(),
        ),
        (
            "25-bit ids",
            model(),
            RiscvConfig {
                device_id_bits: 25,
                ..RiscvConfig::default()
            },
        ),
    ];
    for (name, m, cfg) in cases {
        let (r, mem, hw) = try_rig(m, cfg);
        assert_eq!(r.err(), Some(RiscvError::Unsupported), "{name}");
        assert!(
            mem.borrow().snapshot().is_empty(),
            "{name}: no memory written"
        );
        let h = hw.borrow();
        assert_eq!(h.ddtp(), 0, "{name}");
        assert_eq!(h.cqcsr() & regs::CQCSR_CQEN, 0, "{name}");
    }
    // A unit without the DDT mode the ids need is refused after trying every mode.
    let (r, _, hw) = try_rig(
        ModelCfg {
            ddt_levels: [true, true, false],
            ..model()
        },
        RiscvConfig::default(),
    );
    assert_eq!(r.err(), Some(RiscvError::Unsupported));
    assert_eq!(hw.borrow().ddtp() & regs::DDTP_MODE, 0, "left Off");
    assert!(hw.borrow().misuse.is_empty());
}

#[test]
fn ddt_mode_falls_back_to_more_levels() {
    let mut r = rig_with(
        ModelCfg {
            ddt_levels: [false, false, true],
            ..model()
        },
        RiscvConfig {
            device_id_bits: 6,
            ..RiscvConfig::default()
        },
    );
    assert_eq!(r.be.unit(0).unwrap().ddt().levels, 3);
    let mut pt = r.table();
    r.attach(0x3f, &pt, 1);
    r.map(&mut pt, 0, DATA, 0x1000, Perms::R);
    assert!(r.read(0x3f, 0, 8).is_ok());
    r.assert_clean();
}

#[test]
fn interrupts_wired() {
    let mut r = rig(ModelCfg { igs: 2, ..model() });
    assert!(r.be.unit(0).unwrap().wired(), "BOTH: wires preferred");
    assert_eq!(r.hw.borrow().fctl() & regs::FCTL_WSI, regs::FCTL_WSI);
    // Msi is not what the unit was set up for: refused, nothing changes.
    assert_eq!(
        r.be.enable_fault_interrupt(
            0,
            FaultInterrupt::Msi {
                address: 0x2400_0000,
                data: 5
            }
        ),
        Err(RiscvError::Unsupported)
    );
    assert_eq!(r.hw.borrow().fqcsr() & regs::FQCSR_FIE, 0);
    // A record from before the interrupt was enabled raises nothing (fip is set for new
    // records only): the platform drains once after enabling.
    assert!(r.read(DEV, 0x9000, 4).is_err());
    r.be.enable_fault_interrupt(0, FaultInterrupt::Wired)
        .unwrap();
    assert!(!r.hw.borrow().wire(0));
    assert_eq!(r.drain().0.len(), 1);
    assert!(!r.hw.borrow().wire(0));
    assert!(r.read(DEV, 0x1000, 4).is_err());
    assert!(r.hw.borrow().wire(0), "vector 0 raised");
    assert_ne!(r.hw.borrow().ipsr() & regs::IPSR_FIP, 0);
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 1);
    assert!(!r.hw.borrow().wire(0), "acknowledged by the drain");
    assert!(r.read(DEV, 0x2000, 4).is_err());
    assert!(r.hw.borrow().wire(0), "the next record raises it again");
    assert_eq!(r.hw.stats().wired_asserts, 2);
    r.assert_clean();
}

#[test]
fn interrupts_by_msi() {
    let mut r = rig(model());
    assert_eq!(
        r.be.enable_fault_interrupt(0, FaultInterrupt::Wired),
        Err(RiscvError::Unsupported),
        "QEMU's PCI unit has no wires"
    );
    assert_eq!(
        r.be.enable_fault_interrupt(
            0,
            FaultInterrupt::Msi {
                address: 0x2400_0002,
                data: 1
            }
        ),
        Err(RiscvError::Unsupported),
        "unaligned"
    );
    let doorbell = 0x2400_0000u64;
    r.be.enable_fault_interrupt(
        0,
        FaultInterrupt::Msi {
            address: doorbell,
            data: 0x41,
        },
    )
    .unwrap();
    assert_eq!(r.hw.borrow().msi_entry(0).addr, doorbell);
    assert!(r.read(DEV, 0x1000, 4).is_err());
    assert_eq!(r.mem.borrow().read32(doorbell), 0x41);
    assert!(r.read(DEV, 0x2000, 4).is_err());
    assert_eq!(r.hw.stats().msis, 1, "fip still pending: no second MSI");
    let (recs, _) = r.drain();
    assert_eq!(recs.len(), 2);
    r.mem.borrow_mut().write32(doorbell, 0);
    assert!(r.read(DEV, 0x3000, 4).is_err());
    assert_eq!(
        r.mem.borrow().read32(doorbell),
        0x41,
        "a new MSI after the drain"
    );
    assert_eq!(r.hw.stats().msis, 2);
    r.assert_clean();
}

#[test]
fn bad_input_changes_nothing() {
    let mut r = rig(model());
    let pt = r.table();
    let good = rig::domain(&pt, 1);
    let snap = r.mem.borrow().snapshot();
    let free = r.alloc.free_list().to_vec();
    let bad: Vec<(u32, DomainConfig, RiscvError)> = vec![
        (1 << 24, good, RiscvError::BadDevice),
        (DEV, DomainConfig { tag: 0, ..good }, RiscvError::BadTag),
        (
            DEV,
            DomainConfig {
                addr_width: 40,
                ..good
            },
            RiscvError::BadDomain,
        ),
        (
            DEV,
            DomainConfig { levels: 3, ..good },
            RiscvError::BadDomain,
        ),
        (
            DEV,
            DomainConfig {
                root: good.root + 8,
                ..good
            },
            RiscvError::BadDomain,
        ),
        (
            DEV,
            DomainConfig {
                root: 1 << 56,
                ..good
            },
            RiscvError::BadDomain,
        ),
    ];
    for (dev, d, e) in bad {
        assert_eq!(r.be.attach(&mut r.alloc, 0, dev, d), Err(e), "{d:?}");
    }
    assert_eq!(
        r.be.attach(&mut r.alloc, 3, DEV, good),
        Err(RiscvError::BadUnit)
    );
    assert_eq!(r.be.block(0, 1 << 24), Err(RiscvError::BadDevice));
    assert_eq!(r.be.invalidate_all(0, 0), Err(RiscvError::BadTag));
    assert_eq!(r.be.block(5, DEV), Err(RiscvError::BadUnit));
    assert_eq!(r.mem.borrow().snapshot(), snap);
    assert_eq!(r.alloc.free_list(), &free[..]);
    r.assert_clean();
}

#[test]
fn out_of_frames_changes_nothing() {
    let mut r = rig(model());
    let pt = r.table();
    let d = rig::domain(&pt, 1);
    // A device in a new DDI[2]/DDI[1] range needs two tables: fail each allocation in turn.
    for n in 0..2 {
        let snap = r.mem.borrow().snapshot();
        let free = r.alloc.free_list().to_vec();
        r.alloc.fail_in(n);
        assert_eq!(
            r.be.attach(&mut r.alloc, 0, 0x8000, d),
            Err(RiscvError::NoFrame)
        );
        r.alloc.no_failures();
        assert_eq!(r.mem.borrow().snapshot(), snap, "fail at {n}");
        assert_eq!(r.alloc.free_list(), &free[..], "fail at {n}");
    }
    r.attach(0x8000, &pt, 1);
    // Bring-up: every allocation failing in turn leaves the unit untouched.
    for n in 0..3 {
        let mem = SharedMem::new();
        let hw = RiscvHandle::new(mem.clone(), model());
        let mut alloc = SimAlloc::new(mem.clone(), POOL, 16);
        alloc.fail_in(n);
        let mut be = Be::new(mem.clone(), FakeDelay::default());
        assert_eq!(
            be.add_unit(hw.clone(), &mut alloc, RiscvConfig::default()),
            Err(RiscvError::NoFrame)
        );
        assert_eq!(alloc.in_use, 0);
        assert_eq!(hw.borrow().ddtp(), 0);
        assert_eq!(hw.borrow().cqcsr(), 0);
    }
    r.assert_clean();
}

/// A missing invalidation is caught by the model: the IOTLB keeps serving the old
/// translation (the DMA still reaches the unmapped page) and the stale hit is counted.
#[test]
fn a_missing_invalidation_is_caught() {
    let mut r = rig(model());
    let mut pt = r.table();
    r.attach(DEV, &pt, 1);
    r.fill(DATA, 8, 0x5e);
    r.map(&mut pt, 0x1000, DATA, 0x1000, Perms::RW);
    assert!(r.read(DEV, 0x1000, 8).is_ok());
    let mut g = Gather::new();
    pt.unmap(
        &mut r.mem,
        &mut r.alloc,
        Unmap {
            iova: 0x1000,
            len: 0x1000,
        },
        &mut g,
    )
    .unwrap();
    // No invalidate: the device still reaches the memory.
    assert_eq!(r.read(DEV, 0x1000, 8).unwrap(), vec![0x5e; 8]);
    assert_eq!(r.hw.stats().stale_hits, 1);
    // The invalidation alone does nothing until its fence; the backend's batch has one.
    r.be.invalidate(0, 1, &g).unwrap();
    g.release(&mut r.mem, &mut r.alloc);
    assert!(r.read(DEV, 0x1000, 8).is_err());
}

/// Records every write and barrier, to check the publication order of DDT entries and
/// device contexts.
#[derive(Clone)]
struct Recording {
    inner: SharedMem,
    log: Rc<RefCell<Vec<(u64, u64, bool)>>>,
    barrier: Rc<RefCell<bool>>,
}

impl PhysMem for Recording {
    fn read_u64(&self, pa: u64) -> u64 {
        self.inner.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, value: u64) {
        let b = std::mem::take(&mut *self.barrier.borrow_mut());
        self.log.borrow_mut().push((pa, value, b));
        self.inner.write_u64(pa, value)
    }
    fn order_writes(&mut self) {
        *self.barrier.borrow_mut() = true;
    }
}

#[test]
fn contexts_and_tables_are_published_after_a_barrier() {
    let mem = SharedMem::new();
    let rec = Recording {
        inner: mem.clone(),
        log: Rc::default(),
        barrier: Rc::default(),
    };
    let hw = RiscvHandle::new(mem.clone(), model());
    let mut alloc = SimAlloc::new(mem.clone(), POOL, 64);
    let mut be: RiscvBackend<RiscvHandle, Recording, FakeDelay, 1> =
        RiscvBackend::new(rec.clone(), FakeDelay::default());
    be.add_unit(hw.clone(), &mut alloc, RiscvConfig::default())
        .unwrap();
    let info = be.unit_info(0);
    let pt: PageTable<RiscvSv> = rig::unit_table(&info, &mut alloc);
    let pt2: PageTable<RiscvSv> = rig::unit_table(&info, &mut alloc);
    rec.log.borrow_mut().clear();
    be.attach(&mut alloc, 0, DEV, rig::domain(&pt, 1)).unwrap();
    be.attach(&mut alloc, 0, DEV, rig::domain(&pt2, 2)).unwrap();
    be.block(0, DEV).unwrap();
    let ddt = be.unit(0).unwrap().ddt();
    let log = rec.log.borrow();
    // DDT links (non-leaf entries with V = 1) and device contexts with tc.V = 1 are stored
    // right after a barrier; a context's other doublewords come before its tc.
    let dc_pa = ddt.dc_pa(&mem, DEV).unwrap();
    let mut links = 0;
    let mut valid_tc = 0;
    for (i, &(pa, v, barrier)) in log.iter().enumerate() {
        if pa == dc_pa && v & 1 == 1 {
            valid_tc += 1;
            assert!(barrier, "tc.V = 1 published without a barrier");
            // Every earlier write to this context since the last invalidation precedes it.
            let fields_after = log[i + 1..]
                .iter()
                .take_while(|&&(p, v, _)| !(p == dc_pa && v & 1 == 0))
                .any(|&(p, _, _)| p > dc_pa && p < dc_pa + 64);
            assert!(!fields_after, "a context field written after tc.V = 1");
        }
        if v & 1 == 1 && pa >> 12 == ddt.root >> 12 {
            // The one link that makes the new tables reachable.
            links += 1;
            assert!(barrier, "DDT link at {pa:#x} without a barrier");
            let inner = log[..i]
                .iter()
                .any(|&(p, _, _)| log_is_ddt_link(&mem, &ddt, p));
            assert!(inner, "the link between the new tables comes first");
        }
        if pa == dc_pa && v & 1 == 0 {
            // The invalidating store is followed by a barrier before the next write.
            if let Some(&(_, _, b)) = log.get(i + 1) {
                assert!(b, "context invalidation not ordered before the rewrite");
            }
        }
    }
    assert_eq!(valid_tc, 2, "two attaches");
    assert_eq!(links, 1, "root -> level 1 (-> leaf, linked before)");
    assert!(hw.borrow().misuse.is_empty());
}

/// Whether `pa` is a non-leaf DDT entry (in the level-1 table below the root).
fn log_is_ddt_link(mem: &SharedMem, ddt: &iommu_hal::riscv::tables::Ddt, pa: u64) -> bool {
    let root_entry = mem.borrow().read(ddt.root + ddt.ddi(DEV, 2) * 8);
    let l1 = ((root_entry >> 10) & ((1 << 44) - 1)) << 12;
    pa == l1 + ddt.ddi(DEV, 1) * 8
}

#[test]
fn alloc_is_returned_on_release_paths() {
    // The DDT tables of a unit are never freed (shared by device ids); attach/block cycles
    // allocate nothing after the first.
    let mut r = rig(model());
    let pt = r.table();
    r.attach(DEV, &pt, 1);
    let used = r.alloc.in_use;
    for _ in 0..5 {
        r.be.block(0, DEV).unwrap();
        r.attach(DEV, &pt, 1);
    }
    assert_eq!(r.alloc.in_use, used);
    let _ = r.alloc.alloc_frame().map(|f| r.alloc.free_frame(f));
    r.assert_clean();
}

#[test]
fn prepare_takes_the_shared_tables_up_front() {
    let mut r = rig(model());
    let pt = r.table();
    let used = r.alloc.in_use;
    r.be.prepare(&mut r.alloc, 0, 0x8000).unwrap();
    assert_eq!(r.alloc.in_use, used + 2, "level-1 table and leaf table");
    r.be.prepare(&mut r.alloc, 0, 0x8001).unwrap();
    assert_eq!(
        r.alloc.in_use,
        used + 2,
        "idempotent, shared by the leaf's ids"
    );
    // Still blocked.
    assert_eq!(r.read(0x8000, 0, 8).unwrap_err().cause, BLOCKED);
    r.attach(0x8000, &pt, 1);
    assert_eq!(r.alloc.in_use, used + 2, "attach allocates nothing more");
    assert_eq!(
        r.be.prepare(&mut r.alloc, 0, 1 << 24),
        Err(RiscvError::BadDevice)
    );
    r.alloc.fail_in(0);
    assert_eq!(
        r.be.prepare(&mut r.alloc, 0, 0x1_0000),
        Err(RiscvError::NoFrame)
    );
    r.alloc.no_failures();
    let _ = r.drain();
    r.assert_clean();
}
