//! The server's message-level suite on the real VT-d backend (`iommu_hal::vtd`) driving two
//! register-level VT-d models (`iommu_test_harness::model::vtd`, QEMU's capabilities, queued
//! invalidation, strict page-selective invalidation). DMA goes through the models' own walks
//! and stale-keeping caches.
//!
//! Failures are injected behind the models' registers (`iommu_test_harness::inject`): a hung
//! invalidation queue, a lost submission, a queue error.

use iommu_test_harness::fixtures::VtdFixture;

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
