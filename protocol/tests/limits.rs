//! Size limits: the worst case of every message fits in `MAX_MESSAGE`, `MAX_SG_SEGMENTS` and
//! `MAX_FAULTS_PER_REPLY` are the largest counts that fit, and the seL4 fastpath band of
//! `Map`/`Unmap` encodes in at most 32 bytes.

use iommu_protocol::{
    DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord, InfoReply, IovaRange,
    Limits, MAX_DOMAIN_KINDS, MAX_FAULTS_PER_REPLY, MAX_IOVA_RANGES, MAX_MESSAGE, MAX_SG_SEGMENTS,
    Perms, Reply, Request, Segment, encode_reply, encode_request,
};
use serde::Serialize;

const D: DomainHandle = DomainHandle(u32::MAX);
const DEV: DeviceHandle = DeviceHandle(u32::MAX);
const SEG: Segment = Segment {
    phys: u64::MAX,
    len: u64::MAX,
};
const FAULT: FaultRecord = FaultRecord {
    device: DEV,
    iova: u64::MAX,
    write: true,
    reason: FaultReason::Other,
};

fn req_len(r: &Request) -> usize {
    let mut buf = [0u8; MAX_MESSAGE];
    encode_request(r, &mut buf).expect("request fits in MAX_MESSAGE")
}

fn rep_len(r: &Reply) -> usize {
    let mut buf = [0u8; MAX_MESSAGE];
    encode_reply(r, &mut buf).expect("reply fits in MAX_MESSAGE")
}

/// Encoded length of any serde value, with a generous buffer (for mirror messages that are
/// deliberately larger than the protocol allows).
fn raw<T: Serialize>(v: &T) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    postcard::to_slice(v, &mut buf).unwrap().to_vec()
}

fn worst_map_sg() -> Request {
    Request::MapSg {
        domain: D,
        iova: u64::MAX,
        perms: Perms::RW,
        segments: heapless::Vec::from_slice(&[SEG; MAX_SG_SEGMENTS]).unwrap(),
    }
}

fn worst_faults() -> Reply {
    Reply::Faults {
        records: heapless::Vec::from_slice(&[FAULT; MAX_FAULTS_PER_REPLY]).unwrap(),
        lost: u32::MAX,
    }
}

fn worst_info() -> InfoReply {
    let range = IovaRange {
        first: u64::MAX,
        last: u64::MAX,
    };
    let kind = DomainKind {
        address_width: u8::MAX,
        ranges: heapless::Vec::from_slice(&[range; MAX_IOVA_RANGES]).unwrap(),
    };
    InfoReply {
        units: u32::MAX,
        page_sizes: u64::MAX,
        domain_kinds: core::iter::repeat_n(kind, MAX_DOMAIN_KINDS).collect(),
        limits: Limits {
            max_domains: u32::MAX,
            max_table_frames: u32::MAX,
            max_sg_segments: u16::MAX,
            max_faults_per_reply: u16::MAX,
        },
    }
}

#[test]
fn worst_map_sg_fits_and_one_more_segment_does_not() {
    let worst = worst_map_sg();
    let n = req_len(&worst);
    assert!(n <= MAX_MESSAGE, "{n}");
    assert_eq!(n, 238, "documented in README.md");

    // A mirror of the MapSg wire layout (tag, domain, iova, perms, segments) with room for one
    // more segment. Check it reproduces the real encoding, then grow it by one.
    let mirror = |count: usize| {
        let segs: heapless::Vec<Segment, { MAX_SG_SEGMENTS + 1 }> =
            core::iter::repeat_n(SEG, count).collect();
        raw(&(7u32, u32::MAX, u64::MAX, Perms::RW, segs))
    };
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_request(&worst, &mut buf).unwrap();
    assert_eq!(mirror(MAX_SG_SEGMENTS), &buf[..n]);
    let bigger = mirror(MAX_SG_SEGMENTS + 1);
    assert!(
        bigger.len() > MAX_MESSAGE,
        "{} segments would fit",
        MAX_SG_SEGMENTS + 1
    );
}

#[test]
fn worst_faults_reply_fits_and_one_more_record_does_not() {
    let worst = worst_faults();
    let n = rep_len(&worst);
    assert!(n <= MAX_MESSAGE, "{n}");
    assert_eq!(n, 245, "documented in README.md");

    let mirror = |count: usize| {
        let recs: heapless::Vec<FaultRecord, { MAX_FAULTS_PER_REPLY + 1 }> =
            core::iter::repeat_n(FAULT, count).collect();
        raw(&(7u32, recs, u32::MAX))
    };
    let mut buf = [0u8; MAX_MESSAGE];
    let n = encode_reply(&worst, &mut buf).unwrap();
    assert_eq!(mirror(MAX_FAULTS_PER_REPLY), &buf[..n]);
    let bigger = mirror(MAX_FAULTS_PER_REPLY + 1);
    assert!(
        bigger.len() > MAX_MESSAGE,
        "{} records would fit",
        MAX_FAULTS_PER_REPLY + 1
    );
}

#[test]
fn worst_info_reply_fits() {
    let info = worst_info();
    assert_eq!(info.domain_kinds.len(), MAX_DOMAIN_KINDS);
    let n = rep_len(&Reply::Info(info));
    assert!(n <= MAX_MESSAGE, "{n}");
    assert_eq!(n, 219, "documented in README.md");
}

#[test]
fn every_other_worst_case_fits() {
    let requests = [
        Request::Hello { version: u16::MAX },
        Request::Info,
        Request::CreateDomain,
        Request::DestroyDomain { domain: D },
        Request::Attach {
            domain: D,
            device: DEV,
        },
        Request::Detach { device: DEV },
        Request::Map {
            domain: D,
            iova: u64::MAX,
            phys: u64::MAX,
            len: u64::MAX,
            perms: Perms::RW,
        },
        Request::MapAnywhere {
            domain: D,
            phys: u64::MAX,
            len: u64::MAX,
            perms: Perms::RW,
            align: u64::MAX,
        },
        Request::Unmap {
            domain: D,
            iova: u64::MAX,
            len: u64::MAX,
        },
        Request::Query {
            domain: D,
            iova: u64::MAX,
        },
        Request::Faults,
    ];
    for r in &requests {
        assert!(req_len(r) <= MAX_MESSAGE, "{r:?}");
    }
    let replies = [
        Reply::Hello { version: u16::MAX },
        Reply::DomainCreated { domain: D },
        Reply::Done,
        Reply::Mapped { iova: u64::MAX },
        Reply::Unmapped { bytes: u64::MAX },
        Reply::Translation {
            phys: u64::MAX,
            perms: Perms::RW,
        },
    ];
    for r in replies.iter().chain(Error::ALL.map(Reply::Error).iter()) {
        assert!(rep_len(r) <= MAX_MESSAGE, "{r:?}");
    }
}

/// seL4's IPC fastpath carries 4 message registers (32 bytes on 64-bit): a Map or Unmap with
/// addresses below 2^48, a length below 2^40 and any domain handle must fit.
#[test]
fn map_and_unmap_fit_the_fastpath() {
    const ADDR: u64 = (1 << 48) - 1;
    const LEN: u64 = (1 << 40) - 1;
    let map = Request::Map {
        domain: D,
        iova: ADDR,
        phys: ADDR,
        len: LEN,
        perms: Perms::RW,
    };
    let unmap = Request::Unmap {
        domain: D,
        iova: ADDR,
        len: LEN,
    };
    let (m, u) = (req_len(&map), req_len(&unmap));
    assert!(m <= 32, "Map: {m} bytes");
    assert!(u <= 32, "Unmap: {u} bytes");
    assert_eq!((m, u), (27, 19), "documented in README.md");
    // Varints grow with the value: past the band (2^49 needs 50 bits) the message grows.
    let wider = Request::Map {
        domain: D,
        iova: 1 << 49,
        phys: ADDR,
        len: LEN,
        perms: Perms::RW,
    };
    assert!(req_len(&wider) > m);
}

#[test]
fn encoders_report_a_short_buffer() {
    let mut small = [0u8; 8];
    assert_eq!(
        encode_request(&worst_map_sg(), &mut small),
        Err(Error::BadMessage)
    );
    assert_eq!(
        encode_reply(&worst_faults(), &mut small),
        Err(Error::BadMessage)
    );
}
