//! The server's message-level suite on the real VT-d backend (`iommu_hal::vtd`) driving two
//! register-level VT-d models (`iommu_test_harness::model::vtd`, QEMU's capabilities, queued
//! invalidation, strict page-selective invalidation). DMA goes through the models' own walks
//! and stale-keeping caches.
//!
//! Failures are injected behind the models' registers (`iommu_test_harness::inject`): a hung
//! invalidation queue, a lost submission, a queue error.

use iommu_hal::vtd::{VtdBackend, VtdConfig};
use iommu_test_harness::inject::{Doorbell, Faulty, Injector, UnitFault};
use iommu_test_harness::model::vtd::{VtdConfig as ModelCfg, VtdHandle};
use iommu_test_harness::rig::FakeDelay;
use iommu_test_harness::server_suite::{
    Faulted, Fixture, POOL_BASE, Recorder, Setup, SuiteServer, config,
};
use iommu_test_harness::sim::{SharedMem, SimAlloc};

type Be = VtdBackend<Faulty<VtdHandle>, SharedMem, FakeDelay, 2>;

struct VtdFixture {
    server: SuiteServer<Be>,
    units: [VtdHandle; 2],
    injectors: [Injector; 2],
}

impl Fixture for VtdFixture {
    type Backend = Be;

    fn build(setup: &Setup, notify: Recorder) -> Self {
        let mem = SharedMem::new();
        let mut alloc = SimAlloc::new(mem.clone(), POOL_BASE, setup.pool_frames);
        let mut be = Be::new(mem.clone(), FakeDelay::default());
        let units = [0, 1].map(|u| {
            let cm = setup.caches_not_present & (1 << u) != 0;
            VtdHandle::new(mem.clone(), ModelCfg::qemu().with_caching_mode(cm))
        });
        let injectors = [Injector::default(), Injector::default()];
        for (hw, inj) in units.iter().zip(&injectors) {
            let regs = Faulty::new(hw.clone(), Doorbell::VtdIqt, mem.clone(), inj.clone());
            be.add_unit(regs, &mut alloc, VtdConfig::default())
                .expect("unit bring-up");
        }
        let server = SuiteServer::new(be, mem, alloc, notify, config()).expect("server");
        VtdFixture {
            server,
            units,
            injectors,
        }
    }
    fn server(&mut self) -> &mut SuiteServer<Be> {
        &mut self.server
    }
    fn server_ref(&self) -> &SuiteServer<Be> {
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

iommu_test_harness::server_suite_tests!(VtdFixture);

mod random {
    use super::VtdFixture;
    use iommu_test_harness::server_suite::{op_strategy, run_stream};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn request_streams_match_the_model(
            ops in prop::collection::vec((0usize..2, op_strategy()), 1..30)
        ) {
            run_stream::<VtdFixture>(&ops);
        }
    }
}

/// Random request streams with unit failures injected (issue 10): the isolation invariant
/// holds after every step, and everything recovers once the units do.
mod random_faults {
    use iommu_test_harness::server_suite::{fault_op_strategy, run_fault_stream};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn isolation_survives_unit_failures(
            ops in prop::collection::vec(fault_op_strategy(), 1..40)
        ) {
            run_fault_stream::<super::VtdFixture>(&ops);
        }
    }
}
