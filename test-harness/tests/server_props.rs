//! Randomized tests of the server on the mock backend: request streams of two clients against
//! a model (DMA view of every device checked after every step), and random bytes.

use iommu_protocol::{DomainHandle, Perms, Request, encode_request};
use iommu_server::ClientId;
use iommu_test_harness::mock::MockFixture;
use iommu_test_harness::server_suite::{A, B, garbage, hot_path_agrees, op_strategy, run_stream};
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

    #[test]
    fn the_hot_path_answers_as_the_general_path(
        requests in prop::collection::vec(hot_request(), 1..24)
    ) {
        hot_path_agrees::<MockFixture>(&requests);
    }
}

/// A `Map` or `Unmap` of a client (A, B or unknown) on fields near what is valid (A's and
/// B's first domains, a granted region, aligned or not, zero or odd lengths, every
/// permission byte), encoded, sometimes cut short, extended or with one byte changed.
fn hot_request() -> impl Strategy<Value = (ClientId, Vec<u8>)> {
    let client = prop_oneof![Just(A), Just(B), Just(ClientId(99))];
    let addr = prop_oneof![
        (0u64..64).prop_map(|p| p * 0x1000),
        (0u64..4).prop_map(|p| 0x1000_0000 + p * 0x1000),
        Just(0x1000_0000 + 0x800),
        any::<u64>(),
    ];
    let len = prop_oneof![
        (0u64..4).prop_map(|p| p * 0x1000),
        Just(0x20_0000),
        Just(0x10),
        any::<u64>(),
    ];
    let domain = (0u32..3).prop_map(DomainHandle);
    let request = prop_oneof![
        (
            domain.clone(),
            addr.clone(),
            addr.clone(),
            len.clone(),
            0u8..4
        )
            .prop_map(|(domain, iova, phys, len, p)| Request::Map {
                domain,
                iova,
                phys,
                len,
                perms: Perms::from_bits(p).unwrap_or(Perms::RW),
            }),
        (domain, addr, len).prop_map(|(domain, iova, len)| Request::Unmap { domain, iova, len }),
    ];
    let edit = prop_oneof![
        3 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>(), 0usize..3).prop_map(Some),
    ];
    (client, request, edit).prop_map(|(client, req, edit)| {
        let mut buf = [0u8; 64];
        let n = encode_request(&req, &mut buf).expect("fits");
        let mut bytes = buf[..n].to_vec();
        if let Some((at, b, how)) = edit {
            let i = at.index(n);
            match how {
                0 => bytes.truncate(i.max(1)),
                1 => bytes.push(b),
                _ if i > 0 => bytes[i] = b,
                _ => {}
            }
        }
        (client, bytes)
    })
}
