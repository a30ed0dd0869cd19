//! The server suite's fixtures over the register-level models: the real hal backends
//! (`iommu_hal::vtd`, `iommu_hal::smmuv3`) driving two model units each, behind the failure
//! injection wrappers of [`crate::inject`]. The mock's fixture is [`crate::mock::MockFixture`].
//!
//! Public so that the suite's test files and the fuzz targets (`fuzz/`) drive the very same
//! hardware: DMA goes through the models' own walks and stale-keeping caches, and every access
//! checks the models' misuse logs.

use std::marker::PhantomData;

use iommu_hal::backend::Backend;
use iommu_hal::smmuv3::{SmmuBackend, SmmuConfig};
use iommu_hal::vtd::{VtdBackend, VtdConfig};

use crate::inject::{Doorbell, Faulty, Injector, UnitFault};
use crate::model::smmuv3::{Access, SmmuConfig as SmmuModelCfg, SmmuHandle};
use crate::model::vtd::{VtdConfig as VtdModelCfg, VtdHandle};
use crate::rig::FakeDelay;
use crate::server_suite::{Faulted, Fixture, POOL_BASE, Recorder, Setup, SuiteServer, config};
use crate::sim::{SharedMem, SimAlloc};

/// The VT-d backend over two injectable VT-d model units.
pub type VtdBe = VtdBackend<Faulty<VtdHandle>, SharedMem, FakeDelay, 2>;

/// How a [`VtdFixture`]'s server sees the VT-d backend: as it is ([`VtdBe`]), or through a
/// test's wrapper (e.g. one that hides a capability, to show that the tests notice).
pub trait MakeVtdBackend: Backend + Sized {
    /// Wraps the backend the fixture built.
    fn make(be: VtdBe) -> Self;
}

impl MakeVtdBackend for VtdBe {
    fn make(be: VtdBe) -> VtdBe {
        be
    }
}

/// The real VT-d backend driving two register-level VT-d models (QEMU's capabilities, queued
/// invalidation, strict page-selective invalidation); `setup.caches_not_present` turns on
/// caching mode per unit. Failures are injected at the invalidation queue tail (IQT). The
/// server sees the backend as `B` ([`MakeVtdBackend`]).
pub struct VtdFixture<B: Backend = VtdBe> {
    /// The server under test.
    pub server: SuiteServer<B>,
    units: [VtdHandle; 2],
    injectors: [Injector; 2],
}

impl<B: MakeVtdBackend> Fixture for VtdFixture<B> {
    type Backend = B;

    fn build(setup: &Setup, notify: Recorder) -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, setup.pool_frames);
        let mut be = VtdBe::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|u| {
            let cm = setup.caches_not_present & (1 << u) != 0;
            VtdHandle::new(mem.clone(), VtdModelCfg::qemu().with_caching_mode(cm))
        });
        let injectors = [Injector::default(), Injector::default()];
        for (hw, inj) in units.iter().zip(&injectors) {
            let regs = Faulty::new(hw.clone(), Doorbell::VtdIqt, mem.clone(), inj.clone());
            be.add_unit(regs, &mut alloc, VtdConfig::default())
                .expect("unit bring-up");
        }
        let server = SuiteServer::new(B::make(be), mem, alloc, notify, config()).expect("server");
        VtdFixture {
            server,
            units,
            injectors,
        }
    }
    fn server(&mut self) -> &mut SuiteServer<B> {
        &mut self.server
    }
    fn server_ref(&self) -> &SuiteServer<B> {
        &self.server
    }
    fn dma(&mut self, unit: usize, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        let hw = &self.units[unit];
        let r = hw.borrow_mut().translate(rid as u16, iova, write);
        let violations = hw.borrow().violations().to_vec();
        // A corrupted descriptor is a violation the test put there itself.
        if self.injectors[unit].plan().corrupted == 0 {
            assert!(violations.is_empty(), "model violations: {violations:?}");
        }
        r.map_err(|_| Faulted)
    }
    fn inject(&mut self, unit: usize, fault: UnitFault) -> bool {
        self.injectors[unit].inject(fault);
        true
    }
    fn heal(&mut self) {
        for i in &self.injectors {
            i.heal();
        }
    }
}

/// The SMMUv3 backend over two injectable SMMUv3 model units.
pub type SmmuBe = SmmuBackend<Faulty<SmmuHandle>, SharedMem, FakeDelay, 2>;

/// A model configuration for both SMMUv3 units of an [`SmmuFixture`].
pub trait SmmuVariant {
    /// The units' configuration.
    fn model() -> SmmuModelCfg;
}

/// The SMMUv3 model's defaults, as QEMU's `virt` SMMU (range invalidation, BBML2 so live
/// blocks can be split, coherent walks, 16-bit ASIDs).
pub struct Qemu;
impl SmmuVariant for Qemu {
    fn model() -> SmmuModelCfg {
        SmmuModelCfg::default()
    }
}

/// No range invalidation, BBML0 (the server builds tables with `split_live_blocks = false`),
/// non-coherent table walks (every structure write needs cache maintenance), 8-bit ASIDs.
pub struct Minimal;
impl SmmuVariant for Minimal {
    fn model() -> SmmuModelCfg {
        SmmuModelCfg {
            ril: false,
            bbml: 0,
            cohacc: false,
            asid16: false,
            ..SmmuModelCfg::default()
        }
    }
}

/// The real SMMUv3 backend (stage 1, `ArmS1` tables) driving two register-level SMMUv3 models
/// configured by `V`. Device ids are StreamIDs. After every access the models' misuse logs must
/// be empty and, until a failure was injected, no cached translation or configuration may
/// disagree with memory (`stale_hits`, `stale_cfg_hits`); once one was injected, stale entries
/// are legitimate (the server was told the invalidation failed) and the suite's own invariant
/// checks take over. Failures are injected at the Command queue producer index (CMDQ_PROD).
///
/// SMMUv3 never caches invalid translations, so `setup.caches_not_present` cannot be
/// expressed (the units say so in their info).
pub struct SmmuFixture<V> {
    /// The server under test.
    pub server: SuiteServer<SmmuBe>,
    units: [SmmuHandle; 2],
    injectors: [Injector; 2],
    /// A fault was injected at some point.
    injected: bool,
    _v: PhantomData<V>,
}

impl<V> SmmuFixture<V> {
    /// The models' misuse logs are empty and no cached entry disagreed with memory.
    fn check_models(&self) {
        for (u, hw) in self.units.iter().enumerate() {
            let m = hw.borrow();
            if self.injectors[u].plan().corrupted == 0 {
                assert!(m.misuse.is_empty(), "unit {u} misuse: {:?}", m.misuse);
            }
            if self.injected {
                continue;
            }
            assert_eq!(m.stats.stale_hits, 0, "unit {u}: stale TLB hits");
            assert_eq!(m.stats.stale_cfg_hits, 0, "unit {u}: stale STE/CD hits");
        }
    }
}

impl<V: SmmuVariant> Fixture for SmmuFixture<V> {
    type Backend = SmmuBe;

    fn build(setup: &Setup, notify: Recorder) -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, setup.pool_frames);
        let mut be = SmmuBe::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|_| SmmuHandle::new(mem.clone(), V::model()));
        let injectors = [Injector::default(), Injector::default()];
        for (hw, inj) in units.iter().zip(&injectors) {
            let regs = Faulty::new(hw.clone(), Doorbell::SmmuCmdqProd, mem.clone(), inj.clone());
            be.add_unit(regs, &mut alloc, SmmuConfig::default())
                .expect("unit bring-up");
        }
        let server = SuiteServer::new(be, mem, alloc, notify, config()).expect("server");
        let f = SmmuFixture {
            server,
            units,
            injectors,
            injected: false,
            _v: PhantomData,
        };
        f.check_models();
        f
    }
    fn server(&mut self) -> &mut SuiteServer<SmmuBe> {
        &mut self.server
    }
    fn server_ref(&self) -> &SuiteServer<SmmuBe> {
        &self.server
    }
    fn dma(&mut self, unit: usize, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        let access = if write { Access::Write } else { Access::Read };
        let r = self.units[unit].translate(rid, iova, access);
        self.check_models();
        r.map_err(|_| Faulted)
    }
    fn inject(&mut self, unit: usize, fault: UnitFault) -> bool {
        self.injected = true;
        self.injectors[unit].inject(fault);
        true
    }
    fn heal(&mut self) {
        for i in &self.injectors {
            i.heal();
        }
    }
    /// Blocked StreamIDs have an invalid STE: C_BAD_STE carries no address (Arm IHI 0070,
    /// 7.3.4).
    fn blocked_records_carry_iova(&self) -> bool {
        false
    }
}
