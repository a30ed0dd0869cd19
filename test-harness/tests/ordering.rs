//! Memory ordering toward the IOMMU: the VT-d, SMMUv3, AMD-Vi and RISC-V IOMMU backends
//! driving their models through
//! a [`ReorderMem`], which holds every CPU store back until a barrier (or a register write)
//! orders it, and after every store asks the model's side-effect-free walk what the unit
//! could see with any adversarial subset of the pending stores (the latest alone, each alone,
//! all but each). Fresh frames read as poison to the unit until their zeroing is ordered.
//!
//! Each scenario (attach on a new bus or stream-table group, a live move between domains, a
//! context descriptor rewritten under a live stream, block, queue use) runs once with every
//! barrier in place, which must pass, and then once per barrier it issues with that barrier
//! dropped ([`ReorderMem::skip_barrier`]), which shows which barriers the check depends on.

use iommu_hal::PhysMem;
use iommu_hal::amd::{AmdBackend, AmdConfig, AmdRegs};
use iommu_hal::backend::{Backend, DomainConfig};
use iommu_hal::pagetable::format::{AmdV1, ArmS1, RiscvSv, VtdSl};
use iommu_hal::pagetable::{Format, Gather, Map, PageTable, Perms};
use iommu_hal::riscv::{RiscvBackend, RiscvConfig};
use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig};
use iommu_hal::vtd::{VtdBackend, VtdConfig};
use iommu_test_harness::model::amd::{AmdFault, AmdHandle, AmdModelConfig as AmdModelCfg};
use iommu_test_harness::model::riscv::{RiscvConfig as RiscvModelCfg, RiscvHandle};
use iommu_test_harness::model::smmuv3::{
    Access, EventType, SmmuConfig as SmmuModelCfg, SmmuFault, SmmuHandle,
};
use iommu_test_harness::model::vtd::{FaultReason, VtdConfig as VtdModelCfg, VtdHandle};
use iommu_test_harness::reorder::{Ordered, ReorderAlloc, ReorderMem};
use iommu_test_harness::rig::{self, FakeDelay};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

const POOL: u64 = 0x100_0000;
const IOVA: u64 = 0x20_0000;
const PHYS_A: u64 = 0x4000_0000;
const PHYS_B: u64 = 0x5000_0000;

type Alloc = ReorderAlloc<SimAlloc>;

/// A fresh memory pair: the device view, the reordering CPU side, and an allocator of fresh
/// (poisoned until ordered) frames.
fn memory() -> (SharedMem, ReorderMem, Alloc) {
    let dev = SharedMem::new();
    let mem = ReorderMem::new(dev.clone());
    let alloc = ReorderAlloc::new(SimAlloc::new(dev.clone(), POOL, 1024), mem.clone());
    (dev, mem, alloc)
}

/// A table for the unit's `info` with `IOVA` mapped to `phys` (one 4 KiB page).
fn table<F: Format>(
    info: &iommu_hal::backend::UnitInfo,
    mem: &ReorderMem,
    alloc: &mut Alloc,
    phys: u64,
) -> PageTable<F> {
    let mut pt = PageTable::<F>::new(rig::unit_table_config(info), alloc).expect("table");
    let mut g = Gather::new();
    let mut m = mem.clone();
    pt.map(
        &mut m,
        alloc,
        Map {
            iova: IOVA,
            phys,
            len: 0x1000,
            perms: Perms::RW,
        },
        &mut g,
    )
    .expect("map");
    g.release(&mut m, alloc);
    pt
}

/// What one scenario run left: the memory (its first violation) and how many barriers the
/// operation under test issued.
struct Run {
    mem: ReorderMem,
    barriers: u64,
}

/// Runs `scenario` with every barrier, which must pass, then once per barrier the operation
/// issues with that one dropped. Returns, per barrier, whether the check caught its absence.
fn sweep(name: &str, scenario: impl Fn(Option<u64>) -> Run) -> Vec<bool> {
    let full = scenario(None);
    assert_eq!(
        full.mem.violation(),
        None,
        "{name}: with every barrier in place"
    );
    assert!(
        full.mem.stats().views_checked > 0,
        "{name}: nothing was checked"
    );
    (0..full.barriers)
        .map(|k| scenario(Some(k)).mem.violation().is_some())
        .collect()
}

/// Starts checking `mem` with `check`, dropping barrier `skip` (counted from now).
fn watch(
    mem: &ReorderMem,
    skip: Option<u64>,
    check: impl FnMut() -> Result<(), String> + 'static,
) -> u64 {
    mem.set_check(check);
    if let Some(k) = skip {
        mem.skip_barrier(k);
    }
    mem.barrier_calls()
}

// ------------------------------------------------------------------------------- VT-d

type VtdBe = VtdBackend<Ordered<VtdHandle>, ReorderMem, FakeDelay, 1>;

struct VtdRig {
    mem: ReorderMem,
    hw: VtdHandle,
    be: VtdBe,
    alloc: Alloc,
}

fn vtd_rig(model: VtdModelCfg) -> VtdRig {
    let (dev, mem, mut alloc) = memory();
    let hw = VtdHandle::new(dev, model);
    let mut be = VtdBe::new(mem.clone(), FakeDelay::default());
    be.add_unit(
        Ordered::new(hw.clone(), mem.clone()),
        &mut alloc,
        VtdConfig::default(),
    )
    .expect("bring-up");
    VtdRig { mem, hw, be, alloc }
}

impl VtdRig {
    fn table(&mut self, phys: u64) -> PageTable<VtdSl> {
        let info = self.be.unit_info(0);
        table::<VtdSl>(&info, &self.mem, &mut self.alloc, phys)
    }
}

/// A check that every `(sid, iova, write)` access translates to one of its allowed results in
/// a fresh walk of the device view.
type VtdWatch = (u16, u64, bool, Vec<Result<u64, FaultReason>>);

fn vtd_check(hw: &VtdHandle, watches: Vec<VtdWatch>) -> impl FnMut() -> Result<(), String> + use<> {
    let hw = hw.clone();
    move || {
        for (sid, iova, write, allowed) in &watches {
            let got = hw.probe(*sid, *iova, *write);
            if !allowed.contains(&got) {
                return Err(format!(
                    "sid {sid:#06x} iova {iova:#x} translates to {got:x?}; allowed {allowed:x?}"
                ));
            }
        }
        Ok(())
    }
}

fn dom(pt: &PageTable<impl Format>, tag: u16) -> DomainConfig {
    rig::domain(pt, tag)
}

const VSID: u16 = 0x0310; // 03:02.0: bus 3 has no context table until the first attach
const VSID2: u16 = 0x0318; // 03:03.0

#[test]
fn vtd_attach_on_a_new_bus() {
    let caught = sweep("vtd attach", |skip| {
        let mut r = vtd_rig(VtdModelCfg::qemu());
        let pt = r.table(PHYS_A);
        let blocked = [
            Err(FaultReason::RootNotPresent),
            Err(FaultReason::ContextNotPresent),
        ];
        let allowed = [&blocked[..], &[Ok(PHYS_A)]].concat();
        let b0 = watch(
            &r.mem,
            skip,
            vtd_check(&r.hw, vec![(VSID, IOVA, true, allowed)]),
        );
        r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&pt, 1))
            .expect("attach");
        // The last store may still be on its way; it gets there.
        r.mem.commit();
        assert_eq!(r.hw.probe(VSID, IOVA, true), Ok(PHYS_A));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // The root entry (the zeroed context table and, through it, the poison the unit would
    // otherwise see) and the context entry (its upper half and the domain's tables).
    assert_eq!(caught, [true, true], "barriers of a first attach on a bus");
}

#[test]
fn vtd_attach_on_a_known_bus_orders_the_domain_tables() {
    let caught = sweep("vtd second attach", |skip| {
        let mut r = vtd_rig(VtdModelCfg::qemu());
        let pt = r.table(PHYS_A);
        r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&pt, 1))
            .expect("attach");
        // A new domain whose tables (fresh frames) are still pending when it is attached.
        let pt2 = r.table(PHYS_B);
        let allowed = vec![Err(FaultReason::ContextNotPresent), Ok(PHYS_B)];
        let b0 = watch(
            &r.mem,
            skip,
            vtd_check(&r.hw, vec![(VSID2, IOVA, false, allowed)]),
        );
        r.be.attach(&mut r.alloc, 0, VSID2 as u32, dom(&pt2, 2))
            .expect("attach");
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    assert_eq!(caught, [true]);
}

#[test]
fn vtd_live_move_between_domains() {
    let caught = sweep("vtd move", |skip| {
        let mut r = vtd_rig(VtdModelCfg::qemu());
        let a = r.table(PHYS_A);
        let b = r.table(PHYS_B);
        r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&a, 1))
            .expect("attach");
        let allowed = vec![Ok(PHYS_A), Err(FaultReason::ContextNotPresent), Ok(PHYS_B)];
        let b0 = watch(
            &r.mem,
            skip,
            vtd_check(&r.hw, vec![(VSID, IOVA, false, allowed)]),
        );
        r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&b, 2))
            .expect("move");
        r.mem.commit();
        assert_eq!(r.hw.probe(VSID, IOVA, false), Ok(PHYS_B));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // Clearing (P = 0 before the upper half changes) and installing.
    assert_eq!(caught, [true, true]);
}

#[test]
fn vtd_block() {
    let caught = sweep("vtd block", |skip| {
        let mut r = vtd_rig(VtdModelCfg::qemu().with_caching_mode(true));
        let a = r.table(PHYS_A);
        r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&a, 1))
            .expect("attach");
        let allowed = vec![Ok(PHYS_A), Err(FaultReason::ContextNotPresent)];
        let b0 = watch(
            &r.mem,
            skip,
            vtd_check(&r.hw, vec![(VSID, IOVA, false, allowed)]),
        );
        r.be.block(0, VSID as u32).expect("block");
        assert_eq!(
            r.hw.probe(VSID, IOVA, false),
            Err(FaultReason::ContextNotPresent)
        );
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    assert_eq!(caught, [true]);
}

#[test]
fn vtd_queue_descriptors_are_ordered_by_the_doorbell() {
    // With the register half of the contract, invalidations through the queue complete.
    let mut r = vtd_rig(VtdModelCfg::qemu());
    assert!(r.be.unit_info(0).max_tag > 0);
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&a, 1))
        .expect("attach");
    r.be.invalidate_all(0, 1).expect("invalidate");
    assert!(r.mem.stats().register_commits > 0);
    assert!(r.hw.violations().is_empty(), "{:?}", r.hw.violations());

    // A platform whose doorbell overtakes the descriptors: the unit fetches what memory held
    // before (here the poison of the queue frame, or stale descriptors) and the wait fails.
    let mut r = vtd_rig(VtdModelCfg::qemu());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&a, 1))
        .expect("attach");
    let regs = r.be.unit_mut(0).expect("unit").regs_mut();
    regs.commits = false;
    let got = r.be.invalidate_all(0, 1);
    assert!(
        got.is_err(),
        "descriptors the unit could not yet see were taken as written: {got:?}"
    );
}

// ------------------------------------------------------------------------------ SMMUv3

type SmmuBe = SmmuBackend<Ordered<SmmuHandle>, ReorderMem, FakeDelay, 1>;

struct SmmuRig {
    mem: ReorderMem,
    hw: SmmuHandle,
    be: SmmuBe,
    alloc: Alloc,
}

fn smmu_rig(cfg: SmmuConfig) -> SmmuRig {
    let (dev, mem, mut alloc) = memory();
    let hw = SmmuHandle::new(dev, SmmuModelCfg::default());
    let mut be = SmmuBe::new(mem.clone(), FakeDelay::default());
    be.add_unit(Ordered::new(hw.clone(), mem.clone()), &mut alloc, cfg)
        .expect("bring-up");
    SmmuRig { mem, hw, be, alloc }
}

impl SmmuRig {
    fn table(&mut self, phys: u64) -> PageTable<ArmS1> {
        let info = self.be.unit_info(0);
        table::<ArmS1>(&info, &self.mem, &mut self.alloc, phys)
    }
}

/// A simplified outcome of a probe: blocked (C_BAD_STREAMID or C_BAD_STE), a translation, or
/// anything else (shown in the failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Blocked,
    BadCd,
    Maps(u64),
}

fn seen(r: Result<u64, SmmuFault>) -> Result<Seen, Result<u64, SmmuFault>> {
    match r {
        Ok(p) => Ok(Seen::Maps(p)),
        Err(SmmuFault::Terminated {
            event: EventType::CBadStreamId | EventType::CBadSte,
            ..
        }) => Ok(Seen::Blocked),
        Err(SmmuFault::Terminated {
            event: EventType::CBadCd,
            ..
        }) => Ok(Seen::BadCd),
        e => Err(e),
    }
}

fn smmu_check(
    hw: &SmmuHandle,
    watches: Vec<(u32, u64, Vec<Seen>)>,
) -> impl FnMut() -> Result<(), String> + use<> {
    let hw = hw.clone();
    move || {
        for (sid, iova, allowed) in &watches {
            let raw = hw.probe(*sid, *iova, Access::Write);
            let ok = seen(raw).is_ok_and(|s| allowed.contains(&s));
            if !ok {
                return Err(format!(
                    "StreamID {sid:#x} iova {iova:#x} gives {raw:x?}; allowed {allowed:x?}"
                ));
            }
        }
        Ok(())
    }
}

const SSID: u32 = 0x0310; // a level-2 table of its own (StreamIDs 0x300..0x33f)
const SSID2: u32 = 0x0311;

#[test]
fn smmuv3_first_attach_installs_level2_table_cd_and_ste() {
    let caught = sweep("smmuv3 attach", |skip| {
        let mut r = smmu_rig(SmmuConfig::default());
        assert!(r.be.unit(0).expect("unit").stream_table().two_level);
        let pt = r.table(PHYS_A);
        let b0 = watch(
            &r.mem,
            skip,
            smmu_check(
                &r.hw,
                vec![
                    (SSID, IOVA, vec![Seen::Blocked, Seen::Maps(PHYS_A)]),
                    // A neighbour in the same new level-2 table stays blocked throughout.
                    (SSID2, IOVA, vec![Seen::Blocked]),
                ],
            ),
        );
        r.be.attach(&mut r.alloc, 0, SSID, dom(&pt, 1))
            .expect("attach");
        assert_eq!(
            seen(r.hw.probe(SSID, IOVA, Access::Write)),
            Ok(Seen::Maps(PHYS_A))
        );
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // The level-1 descriptor (the level-2 table's blocked STEs, poison otherwise) is caught.
    // The CD's and the STE's barriers are not observable here: the STE goes from invalid to
    // valid, so its other dwords are made observed with CFGI_STE + CMD_SYNC before V is set
    // (SMMUv3 3.21.3.1), and that doorbell orders everything written before it (the new CD,
    // which no valid STE reached yet, and the domain's tables) as well.
    assert_eq!(caught, [true, false, false], "L1 descriptor, CD, STE");
}

#[test]
fn smmuv3_live_move_between_domains() {
    let caught = sweep("smmuv3 move", |skip| {
        let mut r = smmu_rig(SmmuConfig::default());
        let a = r.table(PHYS_A);
        let b = r.table(PHYS_B);
        r.be.attach(&mut r.alloc, 0, SSID, dom(&a, 1))
            .expect("attach");
        let b0 = watch(
            &r.mem,
            skip,
            smmu_check(
                &r.hw,
                vec![(SSID, IOVA, vec![Seen::Maps(PHYS_A), Seen::Maps(PHYS_B)])],
            ),
        );
        r.be.attach(&mut r.alloc, 0, SSID, dom(&b, 2))
            .expect("move");
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // A new CD (not observable, as above), then the STE switching to it in one store.
    assert_eq!(caught, [false, true], "CD, STE");
}

#[test]
fn smmuv3_cd_rewritten_under_a_live_stream() {
    let caught = sweep("smmuv3 CD rewrite", |skip| {
        let mut r = smmu_rig(SmmuConfig::default());
        let a = r.table(PHYS_A);
        // Another width (39 bits, 3 levels): a CD mixing old and new fields walks one table
        // with the other's geometry.
        let mut b = PageTable::<ArmS1>::new(
            iommu_hal::pagetable::TableConfig {
                addr_width: 39,
                phys_width: 52,
                ..rig::unit_table_config(&r.be.unit_info(0))
            },
            &mut r.alloc,
        )
        .expect("table");
        let mut g = Gather::new();
        let mut m = r.mem.clone();
        b.map(
            &mut m,
            &mut r.alloc,
            Map {
                iova: IOVA,
                phys: PHYS_B,
                len: 0x1000,
                perms: Perms::RW,
            },
            &mut g,
        )
        .expect("map");
        r.be.attach(&mut r.alloc, 0, SSID2, dom(&a, 7))
            .expect("attach");
        // The tag now names table `b`: its CD is rewritten while SSID2's STE points at it.
        let b0 = watch(
            &r.mem,
            skip,
            smmu_check(
                &r.hw,
                vec![(
                    SSID2,
                    IOVA,
                    vec![Seen::Maps(PHYS_A), Seen::BadCd, Seen::Maps(PHYS_B)],
                )],
            ),
        );
        r.be.attach(&mut r.alloc, 0, SSID, dom(&b, 7))
            .expect("attach");
        r.mem.commit();
        assert_eq!(
            seen(r.hw.probe(SSID2, IOVA, Access::Write)),
            Ok(Seen::Maps(PHYS_B))
        );
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // The CD is retargeted by the update procedure of SMMUv3 3.21.3.1: V = 0, CFGI + CMD_SYNC,
    // the other dwords, CFGI + CMD_SYNC, V = 1. Each step is ordered by a doorbell, so the
    // barriers before the new dword 0 and before the other device's STE add nothing
    // observable; the sweep shows the procedure holds with each of them dropped.
    assert_eq!(caught, [false, false], "CD dword 0, STE");
}

#[test]
fn smmuv3_block() {
    let caught = sweep("smmuv3 block", |skip| {
        let mut r = smmu_rig(SmmuConfig::default());
        let a = r.table(PHYS_A);
        r.be.attach(&mut r.alloc, 0, SSID, dom(&a, 1))
            .expect("attach");
        let b0 = watch(
            &r.mem,
            skip,
            smmu_check(
                &r.hw,
                vec![(SSID, IOVA, vec![Seen::Maps(PHYS_A), Seen::Blocked])],
            ),
        );
        r.be.block(0, SSID).expect("block");
        assert_eq!(
            seen(r.hw.probe(SSID, IOVA, Access::Write)),
            Ok(Seen::Blocked)
        );
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // One store of V = 0, which makes nothing reachable: no barrier is needed, none is made.
    assert!(caught.is_empty(), "block's single store: {caught:?}");
}

#[test]
fn smmuv3_linear_stream_table() {
    let caught = sweep("smmuv3 linear attach", |skip| {
        let mut r = smmu_rig(SmmuConfig {
            force_linear: true,
            max_sid_bits: 8,
            ..SmmuConfig::default()
        });
        let pt = r.table(PHYS_A);
        let b0 = watch(
            &r.mem,
            skip,
            smmu_check(
                &r.hw,
                vec![(0x31, IOVA, vec![Seen::Blocked, Seen::Maps(PHYS_A)])],
            ),
        );
        r.be.attach(&mut r.alloc, 0, 0x31, dom(&pt, 1))
            .expect("attach");
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // As on a 2-level table: the STE goes from invalid to valid through CFGI_STE + CMD_SYNC.
    assert_eq!(caught, [false, false], "CD, STE");
}

/// SMMUv3 3.21.3.1: the SMMU may read a structure's dwords in any order and cache it even
/// while invalid, so a structure the SMMU can reach goes from invalid to valid only after its
/// other dwords were made observed by a CFGI and a completed CMD_SYNC, and a valid one is
/// changed in more than dword 0 only after it was made invalid the same way. Every store is
/// recorded with the number of CMD_SYNCs the model had completed by then.
#[test]
fn smmuv3_structures_follow_the_update_procedure() {
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct Recording {
        mem: SharedMem,
        hw: SmmuHandle,
        log: Rc<RefCell<Vec<(u64, u64, u64)>>>,
    }
    impl PhysMem for Recording {
        fn read_u64(&self, pa: u64) -> u64 {
            self.mem.read_u64(pa)
        }
        fn write_u64(&mut self, pa: u64, value: u64) {
            let syncs = self.hw.stats().syncs;
            self.log.borrow_mut().push((pa, value, syncs));
            self.mem.write_u64(pa, value)
        }
        fn order_writes(&mut self) {}
    }
    type Be = SmmuBackend<SmmuHandle, Recording, FakeDelay, 1>;

    let dev = SharedMem::new();
    let hw = SmmuHandle::new(dev.clone(), SmmuModelCfg::default());
    let rec = Recording {
        mem: dev.clone(),
        hw: hw.clone(),
        log: Default::default(),
    };
    let mut alloc = SimAlloc::new(dev.clone(), POOL, 1024);
    let mut be = Be::new(rec.clone(), FakeDelay::default());
    be.add_unit(hw.clone(), &mut alloc, SmmuConfig::default())
        .expect("bring-up");
    let info = be.unit_info(0);
    let mut m = rec.clone();
    let mut table = |width: u32, phys: u64| {
        let mut pt = PageTable::<ArmS1>::new(
            iommu_hal::pagetable::TableConfig {
                addr_width: width,
                phys_width: 52,
                ..rig::unit_table_config(&info)
            },
            &mut alloc,
        )
        .expect("table");
        let mut g = Gather::new();
        pt.map(
            &mut m,
            &mut alloc,
            Map {
                iova: IOVA,
                phys,
                len: 0x1000,
                perms: Perms::RW,
            },
            &mut g,
        )
        .expect("map");
        pt
    };
    let a = table(48, PHYS_A);
    let b = table(39, PHYS_B);
    let stores = |pa: u64, len: u64| -> Vec<(u64, u64, u64)> {
        rec.log
            .borrow()
            .iter()
            .copied()
            .filter(|&(p, _, _)| (pa..pa + len).contains(&p))
            .collect()
    };

    // An STE going from invalid to valid.
    rec.log.borrow_mut().clear();
    be.attach(&mut alloc, 0, SSID2, dom(&a, 7)).expect("attach");
    let ste = be
        .unit(0)
        .unwrap()
        .stream_table()
        .ste_pa(&dev, SSID2)
        .unwrap();
    let fields = stores(ste + 8, 56);
    // (The level-2 table is new: its blocked dword 0 is stored first.)
    let v: Vec<_> = stores(ste, 8)
        .into_iter()
        .filter(|s| s.1 & 1 != 0)
        .collect();
    assert!(!fields.is_empty() && v.len() == 1, "{fields:x?} {v:x?}");
    assert!(
        v[0].2 > fields.iter().map(|f| f.2).max().unwrap(),
        "STE V set before a CMD_SYNC completed after its other dwords: {fields:x?} {v:x?}"
    );

    // A CD reachable through SSID2's valid STE, retargeted to another table (39 bits).
    rec.log.borrow_mut().clear();
    be.attach(&mut alloc, 0, SSID, dom(&b, 7)).expect("attach");
    let cd = be.unit(0).unwrap().context_descriptors()[0].frame;
    let dw0 = stores(cd, 8);
    let fields = stores(cd + 8, 56);
    assert_eq!(dw0.len(), 2, "V = 0, then the new dword 0: {dw0:x?}");
    assert_eq!(dw0[0].1 & (1 << 31), 0);
    assert_ne!(dw0[1].1 & (1 << 31), 0);
    assert!(!fields.is_empty());
    let first = fields.iter().map(|f| f.2).min().unwrap();
    let last = fields.iter().map(|f| f.2).max().unwrap();
    assert!(
        first > dw0[0].2,
        "CD fields changed before V = 0 was observed: {dw0:x?} {fields:x?}"
    );
    assert!(
        dw0[1].2 > last,
        "CD V set before its other dwords were observed: {dw0:x?} {fields:x?}"
    );
    assert_eq!(hw.probe(SSID2, IOVA, Access::Read), Ok(PHYS_B));
    assert_eq!(hw.probe(SSID, IOVA, Access::Read), Ok(PHYS_B));
}

#[test]
fn smmuv3_commands_are_ordered_by_the_doorbell() {
    let mut r = smmu_rig(SmmuConfig::default());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, SSID, dom(&a, 1))
        .expect("attach");
    r.be.invalidate_all(0, 1).expect("invalidate");
    assert!(
        r.hw.borrow().misuse.is_empty(),
        "{:?}",
        r.hw.borrow().misuse
    );

    // A doorbell that overtakes the commands: the SMMU consumes what the queue held before
    // (the frame's poison or stale commands) and the batch fails.
    let mut r = smmu_rig(SmmuConfig::default());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, SSID, dom(&a, 1))
        .expect("attach");
    let regs = r.be.unit_mut(0).expect("unit").regs_mut();
    regs.commits = false;
    let got = r.be.invalidate_all(0, 1);
    assert!(
        got.is_err(),
        "commands the SMMU could not yet see were taken as written: {got:?}"
    );
}

/// The test memory itself, on a deliberately wrong sequence: a context entry's lower half (P)
/// stored before its upper half is ordered is caught.
#[test]
fn a_context_entry_published_without_a_barrier_is_caught() {
    let mut r = vtd_rig(VtdModelCfg::qemu());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, VSID as u32, dom(&a, 1))
        .expect("attach");
    // Find the context table of bus 3 and write a second device's entry by hand, P last but
    // with no barrier.
    let root = r.be.unit(0).expect("unit").root_table();
    let mut m = r.mem.clone();
    let ct = m.read_u64(root + 3 * 16) & !0xfff;
    let pa = ct + u64::from(VSID2 & 0xff) * 16;
    r.mem.set_check(vtd_check(
        &r.hw,
        vec![(
            VSID2,
            IOVA,
            false,
            vec![Err(FaultReason::ContextNotPresent), Ok(PHYS_A)],
        )],
    ));
    m.write_u64(pa + 8, 2 | (5 << 8)); // AW = 48-bit, DID 5
    m.write_u64(pa, a.root() | 1);
    let v = r.mem.violation().expect("caught");
    assert!(v.contains("the latest alone"), "{v}");
}

// ------------------------------------------------------------------------------ AMD-Vi

type AmdBe = AmdBackend<Ordered<AmdHandle>, AmdHandle, ReorderMem, FakeDelay, 1>;

struct AmdRig {
    mem: ReorderMem,
    hw: AmdHandle,
    be: AmdBe,
    alloc: Alloc,
}

fn amd_rig() -> AmdRig {
    let (dev, mem, mut alloc) = memory();
    let hw = AmdHandle::new(dev, AmdModelCfg::qemu());
    let mut be = AmdBe::new(mem.clone(), FakeDelay::default());
    let regs = AmdRegs {
        mmio: Ordered::new(hw.clone(), mem.clone()),
        config: hw.clone(),
    };
    let cfg = AmdConfig {
        max_device_id: 0xff,
        cap_offset: Some(0x40),
        ..AmdConfig::default()
    };
    be.add_unit(regs, &mut alloc, cfg).expect("bring-up");
    AmdRig { mem, hw, be, alloc }
}

impl AmdRig {
    fn table(&mut self, phys: u64) -> PageTable<AmdV1> {
        let info = self.be.unit_info(0);
        table::<AmdV1>(&info, &self.mem, &mut self.alloc, phys)
    }
}

/// A check that `dev`'s access at `IOVA` gives one of `allowed` (physical address and the
/// DomainID of the DTE used) in a fresh walk of the device view.
fn amd_check(
    hw: &AmdHandle,
    dev: u16,
    allowed: Vec<Result<(u64, u16), AmdFault>>,
) -> impl FnMut() -> Result<(), String> + use<> {
    let hw = hw.clone();
    move || {
        let got = hw.probe(dev, IOVA, true);
        if allowed.contains(&got) {
            Ok(())
        } else {
            Err(format!(
                "device {dev:#06x} iova {IOVA:#x} translates to {got:x?}; allowed {allowed:x?}"
            ))
        }
    }
}

const ADEV: u16 = 0x0010; // 00:02.0
const BLOCKED: Result<(u64, u16), AmdFault> = Err(AmdFault::PageFault { present: true });

#[test]
fn amd_attach_publishes_word_0_last() {
    let caught = sweep("amd attach", |skip| {
        let mut r = amd_rig();
        // The domain's tables (fresh frames) are still pending when it is attached.
        let pt = r.table(PHYS_A);
        let b0 = watch(
            &r.mem,
            skip,
            amd_check(&r.hw, ADEV, vec![BLOCKED, Ok((PHYS_A, 1))]),
        );
        r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&pt, 1))
            .expect("attach");
        r.mem.commit();
        assert_eq!(r.hw.probe(ADEV, IOVA, true), Ok((PHYS_A, 1)));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // Word 0 after words 3..1 and the domain's tables.
    assert_eq!(caught, [true]);
}

#[test]
fn amd_live_move_blocks_then_publishes_the_new_entry() {
    let caught = sweep("amd move", |skip| {
        let mut r = amd_rig();
        let a = r.table(PHYS_A);
        let b = r.table(PHYS_B);
        r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&a, 1))
            .expect("attach");
        // Never the new root with the old DomainID (or the reverse).
        let allowed = vec![Ok((PHYS_A, 1)), BLOCKED, Ok((PHYS_B, 2))];
        let b0 = watch(&r.mem, skip, amd_check(&r.hw, ADEV, allowed));
        r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&b, 2))
            .expect("move");
        r.mem.commit();
        assert_eq!(r.hw.probe(ADEV, IOVA, true), Ok((PHYS_B, 2)));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    assert_eq!(caught, [true]);
}

#[test]
fn amd_block_needs_no_barrier() {
    let caught = sweep("amd block", |skip| {
        let mut r = amd_rig();
        let a = r.table(PHYS_A);
        r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&a, 1))
            .expect("attach");
        let b0 = watch(
            &r.mem,
            skip,
            amd_check(&r.hw, ADEV, vec![Ok((PHYS_A, 1)), BLOCKED]),
        );
        r.be.block(0, u32::from(ADEV)).expect("block");
        assert_eq!(r.hw.probe(ADEV, IOVA, true), BLOCKED);
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // One store that makes nothing reachable; the tail write orders it before the command.
    assert!(caught.is_empty(), "{caught:?}");
}

#[test]
fn amd_commands_are_ordered_by_the_doorbell() {
    let mut r = amd_rig();
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&a, 1))
        .expect("attach");
    r.be.invalidate_all(0, 1).expect("invalidate");
    assert!(r.hw.violations().is_empty(), "{:?}", r.hw.violations());

    // A tail write that overtakes the commands: the IOMMU fetches what the buffer held before
    // (the frame's poison or stale commands) and the batch fails.
    let mut r = amd_rig();
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, u32::from(ADEV), dom(&a, 1))
        .expect("attach");
    let regs = r.be.unit_mut(0).expect("unit").regs_mut();
    regs.commits = false;
    let got = r.be.invalidate_all(0, 1);
    assert!(
        got.is_err(),
        "commands the IOMMU could not yet see were taken as written: {got:?}"
    );
}

// ----------------------------------------------------------------------- RISC-V IOMMU

type RiscvBe = RiscvBackend<Ordered<RiscvHandle>, ReorderMem, FakeDelay, 1>;

struct RiscvRig {
    mem: ReorderMem,
    hw: RiscvHandle,
    be: RiscvBe,
    alloc: Alloc,
}

fn riscv_rig(model: RiscvModelCfg) -> RiscvRig {
    let (dev, mem, mut alloc) = memory();
    let hw = RiscvHandle::new(dev, model);
    let mut be = RiscvBe::new(mem.clone(), FakeDelay::default());
    be.add_unit(
        Ordered::new(hw.clone(), mem.clone()),
        &mut alloc,
        RiscvConfig::default(),
    )
    .expect("bring-up");
    RiscvRig { mem, hw, be, alloc }
}

impl RiscvRig {
    fn table(&mut self, phys: u64) -> PageTable<RiscvSv> {
        let info = self.be.unit_info(0);
        table::<RiscvSv>(&info, &self.mem, &mut self.alloc, phys)
    }
}

/// "DDT entry not valid": the device is blocked.
const RV_BLOCKED: Result<u64, u16> = Err(258);

/// A check that every `(device, iova)` write translates to one of its allowed results in a
/// fresh walk of the device view.
/// `(device, iova, allowed results of a write)`.
type RiscvWatch = (u32, u64, Vec<Result<u64, u16>>);

fn riscv_check(
    hw: &RiscvHandle,
    watches: Vec<RiscvWatch>,
) -> impl FnMut() -> Result<(), String> + use<> {
    let hw = hw.clone();
    move || {
        for (did, iova, allowed) in &watches {
            let got = hw.probe(*did, *iova, true);
            if !allowed.contains(&got) {
                return Err(format!(
                    "device {did:#x} iova {iova:#x} gives {got:x?}; allowed {allowed:x?}"
                ));
            }
        }
        Ok(())
    }
}

const RDEV: u32 = 0x0310; // a DDT range (level-1 and leaf tables) of its own
const RDEV2: u32 = 0x0311; // in the same leaf table

#[test]
fn riscv_first_attach_links_ddt_tables_and_publishes_the_context() {
    let caught = sweep("riscv attach", |skip| {
        let mut r = riscv_rig(RiscvModelCfg::qemu());
        assert_eq!(r.be.unit(0).expect("unit").ddt().levels, 3);
        let pt = r.table(PHYS_A);
        let b0 = watch(
            &r.mem,
            skip,
            riscv_check(
                &r.hw,
                vec![
                    (RDEV, IOVA, vec![RV_BLOCKED, Ok(PHYS_A)]),
                    // A neighbour in the same new leaf table stays blocked throughout.
                    (RDEV2, IOVA, vec![RV_BLOCKED]),
                ],
            ),
        );
        r.be.attach(&mut r.alloc, 0, RDEV, dom(&pt, 1))
            .expect("attach");
        assert_eq!(r.hw.probe(RDEV, IOVA, true), Ok(PHYS_A));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // The new tables (zeroed, the leaf linked into the level-1 table while neither is
    // reachable) become reachable with one published link into the root; the context's tc
    // (V = 1) must not overtake its fsc and ta (else: first stage Bare, untranslated DMA).
    assert_eq!(caught, [true, true], "root link, tc");
}

#[test]
fn riscv_live_move_between_domains() {
    let caught = sweep("riscv move", |skip| {
        let mut r = riscv_rig(RiscvModelCfg::qemu());
        let a = r.table(PHYS_A);
        let b = r.table(PHYS_B);
        r.be.attach(&mut r.alloc, 0, RDEV, dom(&a, 1))
            .expect("attach");
        // What the device reaches, and that a context it could use never pairs one domain's
        // PSCID with the other's tables (which would put one domain's translations in the
        // other's IOTLB entries; a fresh walk alone does not show it).
        let mut reach = riscv_check(
            &r.hw,
            vec![(RDEV, IOVA, vec![Ok(PHYS_A), RV_BLOCKED, Ok(PHYS_B)])],
        );
        let hw = r.hw.clone();
        let allowed = [Err(258), Ok((1, 9, a.root())), Ok((2, 9, b.root()))];
        let b0 = watch(&r.mem, skip, move || {
            reach()?;
            let got = hw.probe_context(RDEV);
            if allowed.contains(&got) {
                Ok(())
            } else {
                Err(format!(
                    "device {RDEV:#x} context {got:x?}; allowed {allowed:x?}"
                ))
            }
        });
        r.be.attach(&mut r.alloc, 0, RDEV, dom(&b, 2))
            .expect("move");
        assert_eq!(r.hw.probe(RDEV, IOVA, true), Ok(PHYS_B));
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // Break before make: the context made invalid (its barrier orders it before the new
    // fields; the doorbell of the invalidation that follows orders it too, so its absence is
    // not observable), then the new fields, and tc published last (without its barrier a
    // context pairing PSCID and tables of different domains becomes visible).
    assert_eq!(caught, [false, true], "invalidation, tc");
}

#[test]
fn riscv_block() {
    let caught = sweep("riscv block", |skip| {
        let mut r = riscv_rig(RiscvModelCfg::qemu());
        let a = r.table(PHYS_A);
        r.be.attach(&mut r.alloc, 0, RDEV, dom(&a, 1))
            .expect("attach");
        let b0 = watch(
            &r.mem,
            skip,
            riscv_check(&r.hw, vec![(RDEV, IOVA, vec![Ok(PHYS_A), RV_BLOCKED])]),
        );
        r.be.block(0, RDEV).expect("block");
        assert_eq!(r.hw.probe(RDEV, IOVA, true), RV_BLOCKED);
        Run {
            barriers: r.mem.barrier_calls() - b0,
            mem: r.mem,
        }
    });
    // One store of tc (V = 0) and its barrier before whatever follows: nothing to observe.
    assert_eq!(caught, [false], "block's single store");
}

#[test]
fn riscv_commands_are_ordered_by_the_doorbell() {
    let mut r = riscv_rig(RiscvModelCfg::qemu());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, RDEV, dom(&a, 1))
        .expect("attach");
    r.be.invalidate_all(0, 1).expect("invalidate");
    assert!(
        r.hw.borrow().misuse.is_empty(),
        "{:?}",
        r.hw.borrow().misuse
    );

    // A doorbell that overtakes the commands: the unit fetches what the queue held before
    // (the frame's poison), refuses it as illegal, and the batch fails.
    let mut r = riscv_rig(RiscvModelCfg::qemu());
    let a = r.table(PHYS_A);
    r.be.attach(&mut r.alloc, 0, RDEV, dom(&a, 1))
        .expect("attach");
    let regs = r.be.unit_mut(0).expect("unit").regs_mut();
    regs.commits = false;
    let got = r.be.invalidate_all(0, 1);
    assert!(
        got.is_err(),
        "commands the unit could not yet see were taken as written: {got:?}"
    );
}
