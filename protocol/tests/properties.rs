//! Property tests of the codec: round trips of every variant, and rejection of malformed input
//! (random bytes, trailing bytes, truncation) with `BadMessage`, never a panic.

use iommu_protocol::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord, InfoReply, IovaRange,
    Limits, MAX_DOMAIN_KINDS, MAX_FAULTS_PER_REPLY, MAX_IOVA_RANGES, MAX_MESSAGE, MAX_SG_SEGMENTS,
    Perms, Reply, Request, Segment, decode_hot_request, decode_reply, decode_request, encode_reply,
    encode_request, is_hot_request,
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

// The hot messages (`Map`, `Unmap`; `Done`, `Mapped`, `Unmapped`, `Error`) are coded by hand
// (codec.rs, `hot`); these compare them with postcard itself, byte for byte and verdict for
// verdict.

fn postcard_encode<T: serde::Serialize>(m: &T, cap: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; cap];
    postcard::to_slice(m, &mut buf)
        .map(|b| b.to_vec())
        .map_err(|_| Error::BadMessage)
}

fn postcard_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Error::BadMessage);
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((m, [])) => Ok(m),
        _ => Err(Error::BadMessage),
    }
}

fn hot_request() -> impl Strategy<Value = Request> {
    request().prop_filter("hot", |r| {
        matches!(r, Request::Map { .. } | Request::Unmap { .. })
    })
}

fn hot_reply() -> impl Strategy<Value = Reply> {
    reply().prop_filter("hot", |r| {
        matches!(
            r,
            Reply::Done | Reply::Mapped { .. } | Reply::Unmapped { .. } | Reply::Error(_)
        )
    })
}

/// Bytes after a hot tag: random, or a valid message's with one byte changed, cut or extended.
fn tail() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..=40),
        vec(
            prop_oneof![
                Just(0x80u8),
                Just(0xff),
                Just(0x01),
                Just(0x7f),
                Just(0x00),
                Just(0x0f),
                Just(0x10),
                Just(0x03),
                Just(0x04)
            ],
            0..=40
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hot_messages_encode_as_postcard(r in hot_request(), p in hot_reply(), cap in 0usize..=60) {
        let mut buf = vec![0u8; cap];
        let ours = encode_request(&r, &mut buf).map(|n| buf[..n].to_vec());
        prop_assert_eq!(ours, postcard_encode(&r, cap));
        let mut buf = vec![0u8; cap];
        let ours = encode_reply(&p, &mut buf).map(|n| buf[..n].to_vec());
        prop_assert_eq!(ours, postcard_encode(&p, cap));
    }

    #[test]
    fn hot_messages_decode_as_postcard(
        rtag in proptest::sample::select(vec![6u8, 9]),
        ptag in proptest::sample::select(vec![3u8, 4, 5, 8]),
        t in tail(),
    ) {
        let mut bytes = vec![rtag];
        bytes.extend(&t);
        prop_assert_eq!(decode_request(&bytes), postcard_decode::<Request>(&bytes));
        let mut bytes = vec![ptag];
        bytes.extend(&t);
        prop_assert_eq!(decode_reply(&bytes), postcard_decode::<Reply>(&bytes));
    }

    /// The server's fast path (`is_hot_request`, then `decode_hot_request`) answers what
    /// `decode_request` answers, on hot tags followed by anything and on any bytes at all.
    #[test]
    fn the_hot_request_decoder_agrees_with_decode_request(
        tag in proptest::sample::select(vec![6u8, 9, 0, 7, 10, 0x86]),
        t in tail(),
        raw in vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(&t);
        for b in [&bytes, &raw] {
            if is_hot_request(b) {
                prop_assert_eq!(decode_hot_request(b).map(Request::from), decode_request(b));
            } else {
                // Only a non-minimal variant index (first byte 0x80 or above) decodes to a
                // Map or Unmap without passing `is_hot_request`.
                let hot = matches!(decode_request(b), Ok(Request::Map { .. } | Request::Unmap { .. }));
                prop_assert!(!hot || b[0] >= 0x80);
                prop_assert_eq!(decode_hot_request(b), Err(Error::BadMessage));
            }
        }
    }

    #[test]
    fn hot_messages_mutated_decode_as_postcard(
        r in hot_request(),
        p in hot_reply(),
        at in any::<prop::sample::Index>(),
        b in any::<u8>(),
        extra in vec(any::<u8>(), 0..3),
    ) {
        for mut bytes in [encode_req(&r), encode_rep(&p)] {
            let i = at.index(bytes.len());
            if i > 0 {
                bytes[i] = b;
            }
            bytes.extend(&extra);
            prop_assert_eq!(decode_request(&bytes), postcard_decode::<Request>(&bytes));
            prop_assert_eq!(decode_reply(&bytes), postcard_decode::<Reply>(&bytes));
        }
    }
}

#[test]
fn hot_messages_at_the_limits_decode_as_postcard() {
    let cases: &[&[u8]] = &[
        &[6, 0x8f, 0x80, 0x80, 0x80, 0x0f, 0, 0, 0, 3], // domain u32::MAX, 5 bytes
        &[6, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0, 3], // domain: last byte too large
        &[6, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 0, 0, 3], // domain: 6 bytes
        &[
            9, 0x80, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
        ], // iova u64::MAX, non-minimal domain
        &[
            9, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0,
        ], // iova: last byte too large
        &[
            5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[8, 0xff, 0xff, 0x03],       // error code 65535 (unknown)
        &[8, 0xff, 0xff, 0x04],       // error code above u16::MAX
        &[8, 0x81, 0x00],             // BadMessage, non-minimal
        &[8, 0x80, 0x80, 0x80, 0x00], // 4 bytes for a u16
        &[3],
        &[3, 0],
        &[6],
        &[9],
    ];
    for bytes in cases {
        assert_eq!(
            decode_request(bytes),
            postcard_decode::<Request>(bytes),
            "{bytes:02x?}"
        );
        assert_eq!(
            decode_reply(bytes),
            postcard_decode::<Reply>(bytes),
            "{bytes:02x?}"
        );
    }
    let mut long = vec![9u8, 0, 0];
    long.resize(MAX_MESSAGE + 1, 0x80);
    *long.last_mut().unwrap() = 0;
    assert_eq!(decode_request(&long), Err(Error::BadMessage));
}
