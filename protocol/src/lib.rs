#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod client;
mod codec;
mod error;
mod message;
mod types;

pub use codec::{
    HotRequest, decode_hot_request, decode_reply, decode_request, encode_reply, encode_request,
    is_hot_request,
};
pub use error::{Error, TransportError};
pub use message::{InfoReply, Reply, Request};
pub use types::{
    Align, ByteLen, DeviceHandle, DomainHandle, DomainKind, FaultReason, FaultRecord, Iova,
    IovaRange, Limits, Perms, PhysAddr, Segment,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded request or reply, in bytes. Every message of this crate fits.
pub const MAX_MESSAGE: usize = 256;

/// The granule of every address and length in the protocol: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// Most segments in one `MapSg`: the largest count whose worst-case encoding (every integer at
/// its maximum) fits in [`MAX_MESSAGE`].
pub const MAX_SG_SEGMENTS: usize = 11;

/// Most fault records in one `Faults` reply: the largest count whose worst-case encoding fits
/// in [`MAX_MESSAGE`].
pub const MAX_FAULTS_PER_REPLY: usize = 14;

/// Most domain kinds in an `Info` reply.
pub const MAX_DOMAIN_KINDS: usize = 3;

/// Most usable IOVA ranges per domain kind in an `Info` reply.
pub const MAX_IOVA_RANGES: usize = 3;
