//! What the fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer) run, kept here so that the
//! targets are one line each and stable `cargo test` replays their seed corpus and any crash
//! file (`tests/fuzz_seeds.rs`) without the fuzzing toolchain.
//!
//! - [`codec`]: bytes as a request and as a reply: decoding never panics, and whatever decodes
//!   re-encodes canonically (see [`codec`]).
//! - [`fault_ops`] turns bytes into a stream of requests of two clients, unit failures and
//!   heals; [`server_stream`] runs it through [`run_fault_stream`], which checks the
//!   isolation invariant of issue 10 through the hardware's own walks after every step.
//! - [`requests`]: bytes cut into raw request messages for the server: never a panic, always a
//!   valid reply, and nothing changes ([`garbage`]).

use std::vec::Vec;

use iommu_protocol::{MAX_MESSAGE, decode_reply, decode_request, encode_reply, encode_request};

use crate::inject::UnitFault;
use crate::server_suite::{FaultOp, Fixture, Op, garbage, run_fault_stream};

/// Most steps one input turns into (a stream's cost grows with its length).
pub const MAX_STEPS: usize = 64;

/// Reads bytes one at a time; zeros once exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

/// Checks the wire format on `data` taken as a request and as a reply: decoding never panics;
/// a message that decodes re-encodes (into at most [`MAX_MESSAGE`] bytes) to bytes that decode
/// to the same message, and those bytes are canonical: identical to `data`, or shorter when
/// `data` spelt a varint with redundant high zero groups (which the decoder accepts within the
/// 3 / 5 / 10-byte limit and the encoder never writes). Encoding into any buffer too small
/// fails cleanly.
pub fn codec(data: &[u8]) {
    let mut buf = [0u8; MAX_MESSAGE];
    if let Ok(req) = decode_request(data) {
        let n = encode_request(&req, &mut buf).expect("a decoded request re-encodes");
        assert_eq!(decode_request(&buf[..n]).as_ref(), Ok(&req), "round trip");
        assert!(
            &buf[..n] == data || n < data.len(),
            "{req:?}: {data:02x?} re-encodes as {:02x?}",
            &buf[..n]
        );
        let again = buf;
        for short in 0..n {
            assert!(encode_request(&req, &mut buf[..short]).is_err());
        }
        assert_eq!(encode_request(&req, &mut buf), Ok(n));
        assert_eq!(buf[..n], again[..n], "encoding is deterministic");
    }
    if let Ok(rep) = decode_reply(data) {
        let n = encode_reply(&rep, &mut buf).expect("a decoded reply re-encodes");
        assert_eq!(decode_reply(&buf[..n]).as_ref(), Ok(&rep), "round trip");
        assert!(
            &buf[..n] == data || n < data.len(),
            "{rep:?}: {data:02x?} re-encodes as {:02x?}",
            &buf[..n]
        );
        for short in 0..n {
            assert!(encode_reply(&rep, &mut buf[..short]).is_err());
        }
    }
}

/// Turns bytes into at most [`MAX_STEPS`] steps for [`run_fault_stream`]. Each step starts
/// with one byte: bits 3:0 the kind, bit 4 the client (A or B; the unit for a failure), bits
/// 7:5 a small parameter; the kind's arguments follow.
///
/// | kind | step | arguments |
/// |---|---|---|
/// | 0 | `CreateDomain` | |
/// | 1 | `DestroyDomain` of the client's `n`th domain | n |
/// | 2, 3 | `Attach` device `v` to the `n`th domain | n, v |
/// | 4 | `Detach` device `v` | v |
/// | 5..=8 | `Map` (read-only if bit 5) | n, iova page (u16 LE), phys page (u16 LE), pages |
/// | 9 | `MapSg` of two segments | n, iova page (u16), 2 x (phys page (u16), pages) |
/// | 10..=12 | `Unmap` | n, iova page (u16 LE), pages (u16 LE) |
/// | 13 | the client exits | |
/// | 14 | unit fails: bits 6:5 pick hang, lost, queue error, lost completion | after |
/// | 15 | every unit heals | |
///
/// Arguments are reduced into the ranges that meet live state (4 domains, 4 devices, the
/// stream's 512-page window, physical pages a little past the client's 64 MiB region so the
/// grant check is met too).
pub fn fault_ops(data: &[u8]) -> Vec<FaultOp> {
    let mut b = Bytes(data);
    let mut ops = Vec::new();
    while !b.0.is_empty() && ops.len() < MAX_STEPS {
        let head = b.u8();
        let kind = head & 0xf;
        let client = usize::from((head >> 4) & 1);
        let param = head >> 5;
        let dom = |b: &mut Bytes| usize::from(b.u8() % 4);
        let phys = |b: &mut Bytes| u64::from(b.u16() % 0x4200);
        let op = match kind {
            0 => Op::Create,
            1 => Op::Destroy(dom(&mut b)),
            2 | 3 => Op::Attach(dom(&mut b), u32::from(b.u8() % 4)),
            4 => Op::Detach(u32::from(b.u8() % 4)),
            5..=8 => Op::Map {
                dom: dom(&mut b),
                iova: u64::from(b.u16() % 1024),
                phys: phys(&mut b),
                pages: u64::from(b.u8() % 80),
                ro: param & 1 != 0,
                foreign: false,
            },
            9 => Op::MapSg {
                dom: dom(&mut b),
                iova: u64::from(b.u16() % 1024),
                segs: [
                    (phys(&mut b), u64::from(b.u8() % 40)),
                    (phys(&mut b), u64::from(b.u8() % 40)),
                ],
            },
            10..=12 => Op::Unmap {
                dom: dom(&mut b),
                iova: u64::from(b.u16() % 1024),
                pages: u64::from(b.u16() % 1100),
            },
            13 => Op::Exit,
            14 => {
                let after = u32::from(b.u8() % 3);
                let fault = match param & 3 {
                    0 => UnitFault::Hang,
                    1 => UnitFault::Lose { after },
                    2 => UnitFault::QueueError { after },
                    _ => UnitFault::LoseCompletion { after },
                };
                ops.push(FaultOp::Inject(client, fault));
                continue;
            }
            _ => {
                ops.push(FaultOp::Heal);
                continue;
            }
        };
        ops.push(FaultOp::Req(client, op));
    }
    ops
}

/// Runs the steps `data` spells ([`fault_ops`]) on a fresh fixture `F`, checking the isolation
/// invariant after every step and full recovery at the end ([`run_fault_stream`]).
pub fn server_stream<F: Fixture>(data: &[u8]) {
    run_fault_stream::<F>(&fault_ops(data));
}

/// Cuts `data` into raw request messages (each a length byte, then that many bytes) and sends
/// them as client A's to a fresh fixture `F`: never a panic, always a decodable reply, and the state afterwards equals the
/// state before ([`garbage`]: requests that happen to succeed are undone).
pub fn requests<F: Fixture>(data: &[u8]) {
    let mut b = Bytes(data);
    let mut inputs = Vec::new();
    while !b.0.is_empty() && inputs.len() < MAX_STEPS {
        let len = usize::from(b.u8()).min(b.0.len());
        let (msg, rest) = b.0.split_at(len);
        inputs.push(msg.to_vec());
        b.0 = rest;
    }
    garbage::<F>(&inputs);
}
