//! Golden vectors: the exact bytes of every request and reply variant. A failure here means the
//! wire format changed; that must be deliberate (a new protocol version), never accidental.

use iommu_protocol::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord, InfoReply, IovaRange,
    Limits, MAX_MESSAGE, Perms, Reply, Request, Segment, decode_reply, decode_request,
    encode_reply, encode_request,
};

const D: DomainHandle = DomainHandle(3);

fn info() -> InfoReply {
    let kind = |address_width, last| DomainKind {
        address_width,
        ranges: heapless::Vec::from_slice(&[
            IovaRange {
                first: 0,
                last: 0xfedf_ffff,
            },
            IovaRange {
                first: 0xfef0_0000,
                last,
            },
        ])
        .unwrap(),
    };
    InfoReply {
        units: 2,
        page_sizes: (1 << 12) | (1 << 21) | (1 << 30),
        domain_kinds: heapless::Vec::from_slice(&[
            kind(39, (1 << 39) - 1),
            kind(48, (1 << 48) - 1),
        ])
        .unwrap(),
        limits: Limits {
            max_domains: 16,
            max_table_frames: 1024,
            max_sg_segments: 11,
            max_faults_per_reply: 14,
        },
    }
}

fn faults() -> heapless::Vec<FaultRecord, { iommu_protocol::MAX_FAULTS_PER_REPLY }> {
    [
        (FaultReason::NotPresent, false),
        (FaultReason::Permission, true),
        (FaultReason::AddressSize, false),
        (FaultReason::Blocked, true),
        (FaultReason::Other, false),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (reason, write))| FaultRecord {
        device: DeviceHandle(i as u32),
        iova: 0x1000 << i,
        write,
        reason,
    })
    .collect()
}

fn requests() -> Vec<(Request, &'static str)> {
    vec![
        (Request::Hello { version: 1 }, "0001"),
        (Request::Hello { version: 300 }, "00ac02"),
        (Request::Info, "01"),
        (Request::CreateDomain, "02"),
        (Request::DestroyDomain { domain: D }, "0303"),
        (
            Request::Attach {
                domain: D,
                device: DeviceHandle(7),
            },
            "040307",
        ),
        (
            Request::Detach {
                device: DeviceHandle(7),
            },
            "0507",
        ),
        (
            Request::Map {
                domain: D,
                iova: 0x1000,
                phys: 0x8000_0000,
                len: 0x20_0000,
                perms: Perms::RW,
            },
            "0603802080808080088080800103",
        ),
        (
            Request::Map {
                domain: DomainHandle(u32::MAX),
                iova: (1 << 48) - 0x1000,
                phys: 0x7f_ffff_f000,
                len: 0x1000,
                perms: Perms::READ,
            },
            "06ffffffff0f80e0ffffffff3f80e0ffffff0f802001",
        ),
        (
            Request::MapSg {
                domain: D,
                iova: 0x10_0000,
                perms: Perms::WRITE,
                segments: heapless::Vec::from_slice(&[
                    Segment {
                        phys: 0x4000_0000,
                        len: 0x1000,
                    },
                    Segment {
                        phys: 0x4020_0000,
                        len: 0x20_0000,
                    },
                ])
                .unwrap(),
            },
            "0703808040020280808080048020808080810480808001",
        ),
        (
            Request::MapSg {
                domain: D,
                iova: 0,
                perms: Perms::NONE,
                segments: heapless::Vec::new(),
            },
            "0703000000",
        ),
        (
            Request::MapAnywhere {
                domain: D,
                phys: 0x9000_0000,
                len: 0x4000,
                perms: Perms::RW,
                align: 0,
            },
            "080380808080098080010300",
        ),
        (
            Request::MapAnywhere {
                domain: D,
                phys: 0x9000_0000,
                len: 0x20_0000,
                perms: Perms::READ,
                align: 0x20_0000,
            },
            "08038080808009808080010180808001",
        ),
        (
            Request::Unmap {
                domain: D,
                iova: 0x1000,
                len: 0x20_0000,
            },
            "0903802080808001",
        ),
        (
            Request::Query {
                domain: D,
                iova: 0x1234,
            },
            "0a03b424",
        ),
        (Request::Faults, "0b"),
    ]
}

fn replies() -> Vec<(Reply, &'static str)> {
    vec![
        (Reply::Hello { version: 1 }, "0001"),
        (
            Reply::Info(info()),
            "010280a080810402270200fffffff60f8080c0f70fffffffffff0f300200fffffff60f8080c0f70fffffffffffff3f1080080b0e",
        ),
        (Reply::DomainCreated { domain: D }, "0203"),
        (Reply::Done, "03"),
        (Reply::Mapped { iova: 0xffff_f000 }, "0480e0ffff0f"),
        (Reply::Unmapped { bytes: 0 }, "0500"),
        (Reply::Unmapped { bytes: 0x20_0000 }, "0580808001"),
        (
            Reply::Translation {
                phys: 0x8000_0234,
                perms: Perms::RW,
            },
            "06b48480800803",
        ),
        (
            Reply::Faults {
                records: heapless::Vec::new(),
                lost: 0,
            },
            "070000",
        ),
        (
            Reply::Faults {
                records: faults(),
                lost: 200,
            },
            "070500802000000180400101028080010002038080020103048080040004c801",
        ),
        (Reply::Error(Error::BadMessage), "0801"),
        (Reply::Error(Error::UnsupportedVersion), "0802"),
        (Reply::Error(Error::NoSuchDomain), "0803"),
        (Reply::Error(Error::NoSuchDevice), "0804"),
        (Reply::Error(Error::NotPermitted), "0805"),
        (Reply::Error(Error::Overlap), "0806"),
        (Reply::Error(Error::Misaligned), "0807"),
        (Reply::Error(Error::OutOfRange), "0808"),
        (Reply::Error(Error::QuotaExceeded), "0809"),
        (Reply::Error(Error::OutOfTableMemory), "080a"),
        (Reply::Error(Error::DeviceBusy), "080b"),
        (Reply::Error(Error::Unsupported), "080c"),
        (Reply::Error(Error::HardwareTimeout), "080d"),
        (Reply::Error(Error::HardwareError), "080e"),
        (Reply::Error(Error::NotMapped), "080f"),
        (Reply::Error(Error::NoSpace), "0810"),
        (Reply::Error(Error::InvalidArgument), "0811"),
        (Reply::Error(Error::DomainBusy), "0812"),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn requests_match_golden_bytes() {
    for (request, expected) in requests() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_request(&request, &mut buf).unwrap();
        assert_eq!(hex(&buf[..n]), expected, "{request:?}");
        assert_eq!(decode_request(&buf[..n]), Ok(request));
    }
}

#[test]
fn replies_match_golden_bytes() {
    for (reply, expected) in replies() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_reply(&reply, &mut buf).unwrap();
        assert_eq!(hex(&buf[..n]), expected, "{reply:?}");
        assert_eq!(decode_reply(&buf[..n]), Ok(reply));
    }
}

/// Request tags this version knows (0..12) and reply tags (0..9). Appending a variant makes
/// `tags_past_the_last_never_decode` fail until these grow and the new variant has a golden
/// vector.
const REQUEST_TAGS: usize = 12;
const REPLY_TAGS: usize = 9;
/// Fault reasons this version knows (0..5).
const FAULT_REASONS: u8 = 5;

/// The tables cover every variant, every error code and every fault reason; the first byte of
/// each vector is its variant's tag.
#[test]
fn golden_tables_cover_every_variant() {
    let mut seen = [false; REQUEST_TAGS];
    for (_, bytes) in requests() {
        seen[usize::from_str_radix(&bytes[..2], 16).unwrap()] = true;
    }
    assert!(seen.iter().all(|s| *s), "{seen:?}");

    let mut seen = [false; REPLY_TAGS];
    let mut errors = Vec::new();
    for (r, bytes) in replies() {
        seen[usize::from_str_radix(&bytes[..2], 16).unwrap()] = true;
        if let Reply::Error(e) = r {
            errors.push(e);
        }
    }
    assert!(seen.iter().all(|s| *s), "{seen:?}");
    assert_eq!(errors, Error::ALL);

    let reasons: Vec<_> = faults().iter().map(|f| f.reason).collect();
    for reason in [
        FaultReason::NotPresent,
        FaultReason::Permission,
        FaultReason::AddressSize,
        FaultReason::Blocked,
        FaultReason::Other,
    ] {
        assert!(reasons.contains(&reason));
    }
}

/// The wire enums are `#[non_exhaustive]`, so no `match` here can prove that the tables above
/// know every variant. This does: the first tag past the known ones does not decode, followed
/// by any number of zero bytes (zero is a valid value of every field type but an error code,
/// so a variant appended with that tag would decode from one of these).
#[test]
fn tags_past_the_last_never_decode() {
    for zeros in 0..=64 {
        let mut bytes = vec![REQUEST_TAGS as u8];
        bytes.resize(1 + zeros, 0);
        assert_eq!(
            decode_request(&bytes),
            Err(Error::BadMessage),
            "{bytes:02x?}"
        );
        bytes[0] = REPLY_TAGS as u8;
        assert_eq!(decode_reply(&bytes), Err(Error::BadMessage), "{bytes:02x?}");
    }
    // A Faults reply with one record: device 0, iova 0, read, then the reason.
    for reason in 0..=FAULT_REASONS {
        let bytes = [0x07, 0x01, 0x00, 0x00, 0x00, reason, 0x00];
        assert_eq!(
            decode_reply(&bytes).is_ok(),
            reason < FAULT_REASONS,
            "{reason}"
        );
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Malformed inputs, each rejected with `BadMessage`.
#[test]
fn malformed_vectors_are_bad_messages() {
    let requests = [
        "",                             // empty
        "0c",                           // unknown request tag 12
        "ff",                           // unterminated varint tag
        "000100",                       // Hello with a trailing byte
        "0603802080",                   // Map cut short
        "0603802080808080088080800104", // Map with perms bit 2
        "0603802080808080088080800180", // Map with perms bit 7
        "0303ffffffff1f",               // DestroyDomain with a handle above u32::MAX
        "0703000001",                   // MapSg: one segment announced, none present
    ];
    for h in requests {
        assert_eq!(decode_request(&unhex(h)), Err(Error::BadMessage), "{h}");
    }
    let mut too_many = unhex("0703000000");
    *too_many.last_mut().unwrap() = 12;
    too_many.extend(std::iter::repeat_n([0u8, 0x80, 0x20], 12).flatten());
    assert_eq!(decode_request(&too_many), Err(Error::BadMessage));
    assert_eq!(
        decode_request(&[0; MAX_MESSAGE + 1]),
        Err(Error::BadMessage)
    );

    let replies = [
        "",
        "09",               // unknown reply tag 9
        "0800",             // error code 0
        "0813",             // error code 19 (unknown)
        "0880ff03",         // error code above u16::MAX
        "0701008020020000", // fault record with write = 2
        "0701008020000500", // fault reason 5 (unknown)
        "0300",             // Done with a trailing byte
        "06b484808008",     // Translation without perms
    ];
    for h in replies {
        assert_eq!(decode_reply(&unhex(h)), Err(Error::BadMessage), "{h}");
    }
    // Controls: the same fault record with valid fields decodes.
    assert!(decode_reply(&unhex("0701008020010400")).is_ok());
}
