//! The server suite's fixtures over the register-level models: a real hal backend driving two
//! model units, behind the failure injection wrappers of [`crate::inject`]. One generic
//! fixture, [`ModelFixture`], over what differs per vendor ([`Vendor`]); the VT-d
//! ([`VtdFixture`]) and SMMUv3 ([`SmmuFixture`]) vendors live here, AMD-Vi's and RISC-V's in
//! their suites' test files. The mock's fixture is [`crate::mock::MockFixture`].
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

/// What one vendor brings to a [`ModelFixture`]: its backend over two injectable model units,
/// a device's DMA through a unit, and the checks of the units' own logs.
pub trait Vendor {
    /// The backend the fixture builds, driving the injectable units.
    type Backend: Backend;
    /// A model unit (a shared handle: the backend's register access holds a clone).
    type Unit;
    /// Builds the two units per `setup` (failures injected through `injectors`, one per unit)
    /// and the backend with both units added.
    fn build(
        setup: &Setup,
        mem: &SharedMem,
        alloc: &mut SimAlloc,
        injectors: &[Injector; 2],
    ) -> (Self::Backend, [Self::Unit; 2]);
    /// One access by device `rid` through `unit`'s caches and walks: the physical address, or
    /// `Err` if the unit faulted it.
    fn translate(unit: &Self::Unit, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted>;
    /// Panics if a unit's logs show misuse. `injectors` say which units had commands
    /// corrupted on purpose; `injected`: a failure was injected at some point, after which
    /// cached entries that disagree with memory are legitimate (the server was told the
    /// invalidation failed) and the suite's own invariant checks judge them.
    fn check(units: &[Self::Unit; 2], injectors: &[Injector; 2], injected: bool);
    /// [`Fixture::blocked_records_carry_iova`].
    fn blocked_records_carry_iova() -> bool {
        true
    }
}

/// How a [`ModelFixture`]'s server sees the vendor's backend `R`: as it is, or through a
/// test's wrapper (e.g. one that hides a capability, to show that the tests notice).
pub trait Wrap<R>: Backend + Sized {
    /// Wraps the backend the fixture built.
    fn wrap(raw: R) -> Self;
}

impl<R: Backend> Wrap<R> for R {
    fn wrap(raw: R) -> R {
        raw
    }
}

/// The real backend of vendor `V` driving two register-level models, failures injectable per
/// unit, the server seeing the backend as `B` ([`Wrap`]). After every DMA the units' logs are
/// checked ([`Vendor::check`]).
pub struct ModelFixture<V: Vendor, B: Backend = <V as Vendor>::Backend> {
    /// The server under test.
    pub server: SuiteServer<B>,
    /// The two model units.
    pub units: [V::Unit; 2],
    injectors: [Injector; 2],
    /// A failure was injected at some point.
    injected: bool,
}

impl<V: Vendor, B: Wrap<V::Backend>> Fixture for ModelFixture<V, B> {
    type Backend = B;

    fn build(setup: &Setup, notify: Recorder) -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, setup.pool_frames);
        let injectors = [Injector::default(), Injector::default()];
        let (be, units) = V::build(setup, &mem, &mut alloc, &injectors);
        let server = SuiteServer::new(B::wrap(be), mem, alloc, notify, config()).expect("server");
        V::check(&units, &injectors, false);
        ModelFixture {
            server,
            units,
            injectors,
            injected: false,
        }
    }
    fn server(&mut self) -> &mut SuiteServer<B> {
        &mut self.server
    }
    fn server_ref(&self) -> &SuiteServer<B> {
        &self.server
    }
    fn dma(&mut self, unit: usize, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        let r = V::translate(&self.units[unit], rid, iova, write);
        V::check(&self.units, &self.injectors, self.injected);
        r
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
    fn blocked_records_carry_iova(&self) -> bool {
        V::blocked_records_carry_iova()
    }
}

/// The VT-d backend over two injectable VT-d model units.
pub type VtdBe = VtdBackend<Faulty<VtdHandle>, SharedMem, FakeDelay, 2>;

/// VT-d: two register-level VT-d models (QEMU's capabilities, queued invalidation, strict
/// page-selective invalidation); `setup.caches_not_present` turns on caching mode per unit.
/// Failures are injected at the invalidation queue tail (IQT). The models' violation logs
/// must stay empty (but on a unit whose commands a test corrupted).
pub struct Vtd;

impl Vendor for Vtd {
    type Backend = VtdBe;
    type Unit = VtdHandle;

    fn build(
        setup: &Setup,
        mem: &SharedMem,
        alloc: &mut SimAlloc,
        injectors: &[Injector; 2],
    ) -> (VtdBe, [VtdHandle; 2]) {
        let mut be = VtdBe::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|u| {
            let cm = setup.caches_not_present & (1 << u) != 0;
            VtdHandle::new(mem.clone(), VtdModelCfg::qemu().with_caching_mode(cm))
        });
        for (hw, inj) in units.iter().zip(injectors) {
            let regs = Faulty::new(hw.clone(), Doorbell::VtdIqt, mem.clone(), inj.clone());
            be.add_unit(regs, alloc, VtdConfig::default())
                .expect("unit bring-up");
        }
        (be, units)
    }
    fn translate(unit: &VtdHandle, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        unit.borrow_mut()
            .translate(rid as u16, iova, write)
            .map_err(|_| Faulted)
    }
    fn check(units: &[VtdHandle; 2], injectors: &[Injector; 2], _injected: bool) {
        for (u, hw) in units.iter().enumerate() {
            // A corrupted descriptor is a violation the test put there itself.
            if injectors[u].plan().corrupted == 0 {
                let violations = hw.borrow().violations().to_vec();
                assert!(violations.is_empty(), "unit {u} violations: {violations:?}");
            }
        }
    }
}

/// The VT-d fixture; the server sees the backend as `B` (a test's [`Wrap`]per, or as it is).
pub type VtdFixture<B = VtdBe> = ModelFixture<Vtd, B>;

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

/// SMMUv3 (stage 1, `ArmS1` tables): two register-level SMMUv3 models configured by `V`.
/// Device ids are StreamIDs. The models' misuse logs must stay empty and, until a failure was
/// injected, no cached translation or configuration may disagree with memory (`stale_hits`,
/// `stale_cfg_hits`). Failures are injected at the Command queue producer index (CMDQ_PROD).
///
/// SMMUv3 never caches invalid translations, so `setup.caches_not_present` cannot be
/// expressed (the units say so in their info).
pub struct Smmu<V>(PhantomData<V>);

impl<V: SmmuVariant> Vendor for Smmu<V> {
    type Backend = SmmuBe;
    type Unit = SmmuHandle;

    fn build(
        _setup: &Setup,
        mem: &SharedMem,
        alloc: &mut SimAlloc,
        injectors: &[Injector; 2],
    ) -> (SmmuBe, [SmmuHandle; 2]) {
        let mut be = SmmuBe::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|_| SmmuHandle::new(mem.clone(), V::model()));
        for (hw, inj) in units.iter().zip(injectors) {
            let regs = Faulty::new(hw.clone(), Doorbell::SmmuCmdqProd, mem.clone(), inj.clone());
            be.add_unit(regs, alloc, SmmuConfig::default())
                .expect("unit bring-up");
        }
        (be, units)
    }
    fn translate(unit: &SmmuHandle, rid: u32, iova: u64, write: bool) -> Result<u64, Faulted> {
        let access = if write { Access::Write } else { Access::Read };
        unit.translate(rid, iova, access).map_err(|_| Faulted)
    }
    fn check(units: &[SmmuHandle; 2], injectors: &[Injector; 2], injected: bool) {
        for (u, hw) in units.iter().enumerate() {
            let m = hw.borrow();
            if injectors[u].plan().corrupted == 0 {
                assert!(m.misuse.is_empty(), "unit {u} misuse: {:?}", m.misuse);
            }
            if injected {
                continue;
            }
            assert_eq!(m.stats.stale_hits, 0, "unit {u}: stale TLB hits");
            assert_eq!(m.stats.stale_cfg_hits, 0, "unit {u}: stale STE/CD hits");
        }
    }
    /// Blocked StreamIDs have an invalid STE: C_BAD_STE carries no address (Arm IHI 0070,
    /// 7.3.4).
    fn blocked_records_carry_iova() -> bool {
        false
    }
}

/// The SMMUv3 fixture, its models configured by `V`.
pub type SmmuFixture<V> = ModelFixture<Smmu<V>>;
