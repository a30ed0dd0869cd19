//! Property tests of the codec: round trips of every variant, and rejection of malformed input
//! (random bytes, trailing bytes, truncation) with `BadMessage`, never a panic.

use iommu_protocol::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord, InfoReply, IovaRange,
    Limits, MAX_DOMAIN_KINDS, MAX_FAULTS_PER_REPLY, MAX_IOVA_RANGES, MAX_MESSAGE, MAX_SG_SEGMENTS,
    Perms, Reply, Request, Segment, decode_reply, decode_request, encode_reply, encode_request,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Integers skewed towards varint boundaries as well as uniformly random.
fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u32..64).prop_map(|b| 1u64 << b),
        (1u32..=64).prop_map(|b| u64::MAX >> (64 - b)),
        Just(0u64),
    ]
}

fn domain() -> impl Strategy<Value = DomainHandle> {
    any::<u32>().prop_map(DomainHandle)
}

fn device() -> impl Strategy<Value = DeviceHandle> {
    any::<u32>().prop_map(DeviceHandle)
}

fn perms() -> impl Strategy<Value = Perms> {
    (0u8..4).prop_map(|b| Perms::from_bits(b).unwrap())
}

fn segment() -> impl Strategy<Value = Segment> {
    (any_u64(), any_u64()).prop_map(|(phys, len)| Segment { phys, len })
}

fn reason() -> impl Strategy<Value = FaultReason> {
    prop_oneof![
        Just(FaultReason::NotPresent),
        Just(FaultReason::Permission),
        Just(FaultReason::AddressSize),
        Just(FaultReason::Blocked),
        Just(FaultReason::Other),
    ]
}

fn fault() -> impl Strategy<Value = FaultRecord> {
    (device(), any_u64(), any::<bool>(), reason()).prop_map(|(device, iova, write, reason)| {
        FaultRecord {
            device,
            iova,
            write,
            reason,
        }
    })
}

fn error() -> impl Strategy<Value = Error> {
    proptest::sample::select(Error::ALL.to_vec())
}

fn info() -> impl Strategy<Value = InfoReply> {
    let range = (any_u64(), any_u64()).prop_map(|(first, last)| IovaRange { first, last });
    let kind =
        (any::<u8>(), vec(range, 0..=MAX_IOVA_RANGES)).prop_map(|(address_width, r)| DomainKind {
            address_width,
            ranges: r.into_iter().collect(),
        });
    let limits = (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
        |(max_domains, max_table_frames, max_sg_segments, max_faults_per_reply)| Limits {
            max_domains,
            max_table_frames,
            max_sg_segments,
            max_faults_per_reply,
        },
    );
    (
        any::<u32>(),
        any_u64(),
        vec(kind, 0..=MAX_DOMAIN_KINDS),
        limits,
    )
        .prop_map(|(units, page_sizes, kinds, limits)| InfoReply {
            units,
            page_sizes,
            domain_kinds: kinds.into_iter().collect(),
            limits,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<u16>().prop_map(|version| Request::Hello { version }),
        Just(Request::Info),
        Just(Request::CreateDomain),
        domain().prop_map(|domain| Request::DestroyDomain { domain }),
        (domain(), device()).prop_map(|(domain, device)| Request::Attach { domain, device }),
        device().prop_map(|device| Request::Detach { device }),
        (domain(), any_u64(), any_u64(), any_u64(), perms()).prop_map(
            |(domain, iova, phys, len, perms)| Request::Map {
                domain,
                iova,
                phys,
                len,
                perms,
            }
        ),
        (
            domain(),
            any_u64(),
            perms(),
            vec(segment(), 0..=MAX_SG_SEGMENTS)
        )
            .prop_map(|(domain, iova, perms, s)| Request::MapSg {
                domain,
                iova,
                perms,
                segments: s.into_iter().collect(),
            }),
        (domain(), any_u64(), any_u64(), perms(), any_u64()).prop_map(
            |(domain, phys, len, perms, align)| Request::MapAnywhere {
                domain,
                phys,
                len,
                perms,
                align,
            }
        ),
        (domain(), any_u64(), any_u64()).prop_map(|(domain, iova, len)| Request::Unmap {
            domain,
            iova,
            len
        }),
        (domain(), any_u64()).prop_map(|(domain, iova)| Request::Query { domain, iova }),
        Just(Request::Faults),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        any::<u16>().prop_map(|version| Reply::Hello { version }),
        info().prop_map(Reply::Info),
        domain().prop_map(|domain| Reply::DomainCreated { domain }),
        Just(Reply::Done),
        any_u64().prop_map(|iova| Reply::Mapped { iova }),
        any_u64().prop_map(|bytes| Reply::Unmapped { bytes }),
        (any_u64(), perms()).prop_map(|(phys, perms)| Reply::Translation { phys, perms }),
        (vec(fault(), 0..=MAX_FAULTS_PER_REPLY), any::<u32>()).prop_map(|(r, lost)| {
            Reply::Faults {
                records: r.into_iter().collect(),
                lost,
            }
        }),
        error().prop_map(Reply::Error),
    ]
}

fn encode_req(r: &Request) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_request(r, &mut buf).expect("every request fits in MAX_MESSAGE");
    buf[..n].to_vec()
}

fn encode_rep(r: &Reply) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_reply(r, &mut buf).expect("every reply fits in MAX_MESSAGE");
    buf[..n].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn requests_round_trip(r in request()) {
        prop_assert_eq!(decode_request(&encode_req(&r)), Ok(r));
    }

    #[test]
    fn replies_round_trip(r in reply()) {
        prop_assert_eq!(decode_reply(&encode_rep(&r)), Ok(r));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..=300)) {
        // Whatever decodes must re-encode to something that decodes to the same value.
        if let Ok(r) = decode_request(&bytes) {
            prop_assert_eq!(decode_request(&encode_req(&r)), Ok(r));
        }
        if let Ok(r) = decode_reply(&bytes) {
            prop_assert_eq!(decode_reply(&encode_rep(&r)), Ok(r));
        }
    }

    #[test]
    fn trailing_byte_is_bad_message(r in request(), p in reply(), extra in any::<u8>()) {
        let mut bytes = encode_req(&r);
        bytes.push(extra);
        prop_assert_eq!(decode_request(&bytes), Err(Error::BadMessage));
        let mut bytes = encode_rep(&p);
        bytes.push(extra);
        prop_assert_eq!(decode_reply(&bytes), Err(Error::BadMessage));
    }

    #[test]
    fn truncation_is_bad_message(r in request(), p in reply(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_req(&r);
        let n = cut.index(bytes.len());
        prop_assert_eq!(decode_request(&bytes[..n]), Err(Error::BadMessage));
        let bytes = encode_rep(&p);
        let n = cut.index(bytes.len());
        prop_assert_eq!(decode_reply(&bytes[..n]), Err(Error::BadMessage));
    }

    #[test]
    fn perms_byte_decodes_only_with_known_bits(bits in any::<u8>()) {
        let bytes = [6, 0, 0, 0, 0, bits]; // Map { domain 0, iova 0, phys 0, len 0, perms: bits }
        let decoded = decode_request(&bytes);
        if bits & !3 == 0 {
            prop_assert!(decoded.is_ok());
        } else {
            prop_assert_eq!(decoded, Err(Error::BadMessage));
        }
    }
}

#[test]
fn every_truncation_of_the_largest_messages_is_bad_message() {
    let seg = Segment {
        phys: u64::MAX,
        len: u64::MAX,
    };
    let r = Request::MapSg {
        domain: DomainHandle(u32::MAX),
        iova: u64::MAX,
        perms: Perms::RW,
        segments: std::iter::repeat_n(seg, MAX_SG_SEGMENTS).collect(),
    };
    let bytes = encode_req(&r);
    for n in 0..bytes.len() {
        assert_eq!(decode_request(&bytes[..n]), Err(Error::BadMessage), "{n}");
    }
}
