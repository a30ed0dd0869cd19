//! The typed client over a loopback transport that decodes each request and answers with a
//! canned reply.

use iommu_protocol::client::{Client, ClientError, Faults, Translation, Transport};
use iommu_protocol::{
    Align, ByteLen, DeviceHandle, DomainHandle, DomainKind, Error, FaultReason, FaultRecord,
    InfoReply, Iova, IovaRange, Limits, MAX_MESSAGE, MAX_SG_SEGMENTS, PROTOCOL_VERSION, Perms,
    PhysAddr, Reply, Request, Segment, TransportError, decode_request, encode_reply,
};

/// What the loopback answers with.
#[allow(clippy::large_enum_variant)] // test-only, a few values
enum Canned {
    Reply(Reply),
    Bytes(Vec<u8>),
    Length(usize),
    Fail(TransportError),
}

/// Records every request (decoded) and answers with the next canned response.
struct Loopback {
    sent: Vec<Request>,
    answers: Vec<Canned>,
}

impl Loopback {
    fn new() -> Self {
        Loopback {
            sent: Vec::new(),
            answers: Vec::new(),
        }
    }
}

impl Transport for Loopback {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
        assert!(request.len() <= MAX_MESSAGE);
        assert_eq!(reply.len(), MAX_MESSAGE);
        self.sent
            .push(decode_request(request).expect("client sent a valid request"));
        match self.answers.remove(0) {
            Canned::Reply(r) => Ok(encode_reply(&r, reply).unwrap()),
            Canned::Bytes(b) => {
                reply[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            Canned::Length(n) => Ok(n),
            Canned::Fail(e) => Err(e),
        }
    }
}

fn client_answering(answers: Vec<Canned>) -> Client<Loopback> {
    let mut t = Loopback::new();
    t.answers = answers;
    Client::new(t)
}

fn answering(reply: Reply) -> Client<Loopback> {
    client_answering(vec![Canned::Reply(reply)])
}

fn last_sent(c: &mut Client<Loopback>) -> Request {
    c.transport_mut().sent.last().cloned().unwrap()
}

const D: DomainHandle = DomainHandle(5);
const DEV: DeviceHandle = DeviceHandle(9);

#[test]
fn hello_offers_our_version_and_checks_the_answer() {
    let mut c = answering(Reply::Hello { version: 1 });
    assert_eq!(c.version(), None);
    assert_eq!(c.hello(), Ok(1));
    assert_eq!(c.version(), Some(1));
    assert_eq!(
        last_sent(&mut c),
        Request::Hello {
            version: PROTOCOL_VERSION
        }
    );
    for bad in [0, PROTOCOL_VERSION + 1] {
        let mut c = answering(Reply::Hello { version: bad });
        assert_eq!(c.hello(), Err(ClientError::UnexpectedReply));
        assert_eq!(c.version(), None);
    }
    // A failed Hello keeps the version negotiated before.
    let mut c = client_answering(vec![
        Canned::Reply(Reply::Hello { version: 1 }),
        Canned::Reply(Reply::Error(Error::UnsupportedVersion)),
    ]);
    assert_eq!(c.hello(), Ok(1));
    assert_eq!(
        c.hello(),
        Err(ClientError::Server(Error::UnsupportedVersion))
    );
    assert_eq!(c.version(), Some(1));
}

#[test]
fn info_returns_the_reply() {
    let info = InfoReply {
        units: 1,
        page_sizes: 1 << 12,
        domain_kinds: heapless::Vec::from_slice(&[DomainKind {
            address_width: 48,
            ranges: heapless::Vec::from_slice(&[IovaRange {
                first: 0x1000,
                last: (1 << 48) - 1,
            }])
            .unwrap(),
        }])
        .unwrap(),
        limits: Limits {
            max_domains: 4,
            max_table_frames: 64,
            max_sg_segments: 11,
            max_faults_per_reply: 14,
        },
    };
    let mut c = answering(Reply::Info(info.clone()));
    assert_eq!(c.info(), Ok(info));
    assert_eq!(last_sent(&mut c), Request::Info);
}

#[test]
fn domain_and_device_calls_send_the_right_requests() {
    let mut c = answering(Reply::DomainCreated { domain: D });
    assert_eq!(c.create_domain(), Ok(D));
    assert_eq!(last_sent(&mut c), Request::CreateDomain);

    let mut c = client_answering(vec![
        Canned::Reply(Reply::Done),
        Canned::Reply(Reply::Done),
        Canned::Reply(Reply::Done),
    ]);
    assert_eq!(c.attach(D, DEV), Ok(()));
    assert_eq!(c.detach(DEV), Ok(()));
    assert_eq!(c.destroy_domain(D), Ok(()));
    assert_eq!(
        c.transport_mut().sent,
        [
            Request::Attach {
                domain: D,
                device: DEV
            },
            Request::Detach { device: DEV },
            Request::DestroyDomain { domain: D },
        ]
    );
}

#[test]
fn map_calls_send_the_right_requests() {
    let mut c = answering(Reply::Done);
    assert_eq!(
        c.map(
            D,
            Iova(0x1000),
            PhysAddr(0x8000_0000),
            ByteLen(0x2000),
            Perms::RW
        ),
        Ok(())
    );
    assert_eq!(
        last_sent(&mut c),
        Request::Map {
            domain: D,
            iova: 0x1000,
            phys: 0x8000_0000,
            len: 0x2000,
            perms: Perms::RW
        }
    );

    let segs = [
        Segment {
            phys: 0x4000_0000,
            len: 0x1000,
        },
        Segment {
            phys: 0x5000_0000,
            len: 0x3000,
        },
    ];
    let mut c = answering(Reply::Done);
    assert_eq!(c.map_sg(D, Iova(0x10_0000), Perms::READ, &segs), Ok(()));
    assert_eq!(
        last_sent(&mut c),
        Request::MapSg {
            domain: D,
            iova: 0x10_0000,
            perms: Perms::READ,
            segments: heapless::Vec::from_slice(&segs).unwrap()
        }
    );

    let mut c = answering(Reply::Mapped { iova: 0x20_0000 });
    assert_eq!(
        c.map_anywhere(
            D,
            PhysAddr(0x9000_0000),
            ByteLen(0x4000),
            Perms::WRITE,
            Align(0x20_0000)
        ),
        Ok(Iova(0x20_0000))
    );
    assert_eq!(
        last_sent(&mut c),
        Request::MapAnywhere {
            domain: D,
            phys: 0x9000_0000,
            len: 0x4000,
            perms: Perms::WRITE,
            align: 0x20_0000
        }
    );
}

#[test]
fn too_many_segments_are_refused_before_sending() {
    let segs = [Segment {
        phys: 0,
        len: 0x1000,
    }; MAX_SG_SEGMENTS + 1];
    let mut c = client_answering(vec![]);
    assert_eq!(
        c.map_sg(D, Iova(0), Perms::RW, &segs),
        Err(ClientError::TooManySegments)
    );
    assert!(c.transport_mut().sent.is_empty());
}

#[test]
fn unmap_query_and_faults_return_their_values() {
    let mut c = answering(Reply::Unmapped { bytes: 0x3000 });
    assert_eq!(
        c.unmap(D, Iova(0x1000), ByteLen(0x10_0000)),
        Ok(ByteLen(0x3000))
    );
    assert_eq!(
        last_sent(&mut c),
        Request::Unmap {
            domain: D,
            iova: 0x1000,
            len: 0x10_0000
        }
    );

    let mut c = answering(Reply::Translation {
        phys: 0x8000_0234,
        perms: Perms::READ,
    });
    assert_eq!(
        c.query(D, Iova(0x1234)),
        Ok(Translation {
            phys: PhysAddr(0x8000_0234),
            perms: Perms::READ
        })
    );
    assert_eq!(
        last_sent(&mut c),
        Request::Query {
            domain: D,
            iova: 0x1234
        }
    );

    let records: heapless::Vec<_, 14> = heapless::Vec::from_slice(&[FaultRecord {
        device: DEV,
        iova: 0x7000,
        write: true,
        reason: FaultReason::Permission,
    }])
    .unwrap();
    let mut c = answering(Reply::Faults {
        records: records.clone(),
        lost: 3,
    });
    assert_eq!(c.faults(), Ok(Faults { records, lost: 3 }));
    assert_eq!(last_sent(&mut c), Request::Faults);
}

#[test]
fn server_errors_are_kept_apart_from_transport_errors() {
    let mut c = answering(Reply::Error(Error::NotMapped));
    assert_eq!(
        c.query(D, Iova(0)),
        Err(ClientError::Server(Error::NotMapped))
    );

    let mut c = answering(Reply::Error(Error::Overlap));
    assert_eq!(
        c.map(D, Iova(0), PhysAddr(0), ByteLen(0x1000), Perms::RW),
        Err(ClientError::Server(Error::Overlap))
    );

    let mut c = client_answering(vec![Canned::Fail(TransportError::Disconnected)]);
    assert_eq!(
        c.create_domain(),
        Err(ClientError::Transport(TransportError::Disconnected))
    );
}

#[test]
fn wrong_or_malformed_replies_are_unexpected() {
    // A well-formed reply that answers another request.
    let mut c = answering(Reply::Done);
    assert_eq!(c.create_domain(), Err(ClientError::UnexpectedReply));
    let mut c = answering(Reply::Unmapped { bytes: 0 });
    assert_eq!(c.detach(DEV), Err(ClientError::UnexpectedReply));
    // Bytes that do not decode.
    let mut c = client_answering(vec![Canned::Bytes(vec![0x03, 0x00])]);
    assert_eq!(c.detach(DEV), Err(ClientError::UnexpectedReply));
    let mut c = client_answering(vec![Canned::Bytes(vec![])]);
    assert_eq!(c.faults(), Err(ClientError::UnexpectedReply));
    // A transport claiming a reply longer than the buffer.
    let mut c = client_answering(vec![Canned::Length(MAX_MESSAGE + 1)]);
    assert_eq!(
        c.faults(),
        Err(ClientError::Transport(TransportError::ReplyTooLarge))
    );
}

#[test]
fn client_works_through_a_mutable_reference() {
    let mut t = Loopback::new();
    t.answers.push(Canned::Reply(Reply::Done));
    let mut c = Client::new(&mut t);
    assert_eq!(c.detach(DEV), Ok(()));
    assert_eq!(t.sent, [Request::Detach { device: DEV }]);
}

#[test]
fn errors_say_what_to_do() {
    use std::error::Error as _;
    for e in Error::ALL {
        let text = e.to_string();
        assert!(
            text.contains(e.as_str()) && text.contains(e.remedy()),
            "{text}"
        );
        assert!(text.contains(&format!("code {}", e.code())), "{text}");
    }
    let e = ClientError::Server(Error::Overlap);
    assert!(e.to_string().contains("already mapped"), "{e}");
    assert_eq!(
        e.source().map(|s| s.to_string()),
        Some(Error::Overlap.to_string())
    );
    let e = ClientError::Transport(TransportError::Disconnected);
    assert!(e.source().is_some());
    assert!(ClientError::TooManySegments.to_string().contains("11"));
}

#[test]
fn addresses_debug_in_hex_and_add_lengths() {
    assert_eq!(format!("{:?}", Iova(0x1000)), "Iova(0x1000)");
    assert_eq!(
        format!("{:?}", PhysAddr(0x8000_0000)),
        "PhysAddr(0x80000000)"
    );
    assert_eq!(format!("{:#x}", ByteLen(0x2000)), "0x2000");
    assert_eq!(Iova(0x1000) + ByteLen(0x2000), Iova(0x3000));
    assert_eq!(PhysAddr(0x1000) + ByteLen(0x1000), PhysAddr(0x2000));
    assert_eq!(ByteLen(1) + ByteLen(2), ByteLen(3));
    assert_eq!(Align::PAGE, Align(4096));
}

#[test]
fn perms_debug_by_name() {
    assert_eq!(format!("{:?}", Perms::RW), "Perms(RW)");
    assert_eq!(format!("{:?}", Perms::READ), "Perms(R)");
    assert_eq!(format!("{:?}", Perms::WRITE), "Perms(W)");
    assert_eq!(format!("{:?}", Perms::NONE), "Perms(NONE)");
}
