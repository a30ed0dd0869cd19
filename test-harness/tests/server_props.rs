//! Randomized tests of the server on the mock backend: request streams of two clients against
//! a model (DMA view of every device checked after every step), and random bytes.

use iommu_test_harness::mock::MockFixture;
use iommu_test_harness::server_suite::{garbage, op_strategy, run_stream};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn request_streams_match_the_model(ops in prop::collection::vec((0usize..2, op_strategy()), 1..40)) {
        run_stream::<MockFixture>(&ops);
    }

    #[test]
    fn random_bytes_never_change_state(
        inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..64)
    ) {
        garbage::<MockFixture>(&inputs);
    }
}
