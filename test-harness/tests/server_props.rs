//! Randomized tests of the server on the mock backend: request streams of two clients against
//! a model (DMA view of every device checked after every step), and random bytes.

use iommu_test_harness::mock::MockFixture;
use iommu_test_harness::server_suite::{Op, garbage, run_stream};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let dom = 0usize..3;
    let iova = prop_oneof![0u64..1024, Just(0u64), Just(512u64)];
    let phys = prop_oneof![0u64..2048, Just(0u64), Just(512u64)];
    let pages = prop_oneof![1u64..20, Just(512u64), Just(0u64), 1u64..1100];
    prop_oneof![
        4 => Just(Op::Create),
        2 => dom.clone().prop_map(Op::Destroy),
        4 => (dom.clone(), 0u32..4).prop_map(|(d, v)| Op::Attach(d, v)),
        2 => (0u32..4).prop_map(Op::Detach),
        12 => (dom.clone(), iova.clone(), phys.clone(), pages.clone(), any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(dom, iova, phys, pages, ro, foreign)| Op::Map { dom, iova, phys, pages, ro, foreign }),
        4 => (dom.clone(), iova.clone(), (phys.clone(), 0u64..40), (phys, 0u64..40))
            .prop_map(|(dom, iova, a, b)| Op::MapSg { dom, iova, segs: [a, b] }),
        10 => (dom, iova, pages).prop_map(|(dom, iova, pages)| Op::Unmap { dom, iova, pages }),
        1 => Just(Op::Exit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn request_streams_match_the_model(ops in prop::collection::vec((0usize..2, op()), 1..40)) {
        run_stream::<MockFixture>(&ops);
    }

    #[test]
    fn random_bytes_never_change_state(
        inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..64)
    ) {
        garbage::<MockFixture>(&inputs);
    }
}
