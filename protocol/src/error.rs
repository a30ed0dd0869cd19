//! Error codes returned by the server, and the client side's transport error.
//!
//! See the "Error codes" section of the protocol specification (`protocol/README.md`).

use core::fmt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why the server refused a request.
///
/// Every variant has a stable, explicit, nonzero `u16` code ([`Error::code`]); codes are never
/// renumbered and new variants are only appended. On the wire an `Error` is its code as a
/// postcard varint `u16`; an unknown code makes the whole message [`Error::BadMessage`].
///
/// Unless a variant says otherwise, a request that fails **changed nothing**: tables, handles,
/// quotas and attachments are exactly as before the request.
///
/// `#[non_exhaustive]`: codes are append-only, so a `match` outside this crate needs a
/// wildcard arm. Its `Display` says what was wrong and what to do about it.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
#[non_exhaustive]
pub enum Error {
    /// The message did not decode: unknown request tag, a field out of its wire range (e.g.
    /// unknown [`Perms`](crate::Perms) bits, too many segments), truncated, trailing bytes, or
    /// longer than [`MAX_MESSAGE`](crate::MAX_MESSAGE). Also returned by the encoders when the
    /// output buffer is too small. Nothing changed.
    BadMessage = 1,
    /// `Hello` asked for a version the server cannot speak (0, or older than the oldest version
    /// the server supports). Nothing changed; the session keeps its previous version.
    UnsupportedVersion = 2,
    /// The domain handle does not name a live domain of the calling client (never created,
    /// destroyed, or another client's). Nothing changed.
    NoSuchDomain = 3,
    /// The device handle does not name a device the calling client may use. Nothing changed.
    NoSuchDevice = 4,
    /// The client may not do this: a physical range outside the memory it was granted, or an
    /// operation its configuration does not allow. Nothing changed.
    NotPermitted = 5,
    /// `Map`, `MapSg`: at least one page of the IOVA range is already mapped. Nothing changed.
    Overlap = 6,
    /// An address or length is not a multiple of 4 KiB
    /// ([`PAGE_SIZE`](crate::PAGE_SIZE)). Nothing changed.
    Misaligned = 7,
    /// The IOVA range wraps around 2^64 or is not inside one usable range of the domain
    /// (see [`InfoReply`](crate::InfoReply)), or a physical range wraps or exceeds what the
    /// hardware can address. Nothing changed.
    OutOfRange = 8,
    /// The client's quota (domains, or page-table frames) would be exceeded. Nothing changed.
    QuotaExceeded = 9,
    /// The server's shared pool of page-table memory is exhausted (the client is within its
    /// quota). Nothing changed; retrying later may succeed.
    OutOfTableMemory = 10,
    /// `Attach`: the device is attached to another domain (detach it first). Nothing changed.
    DeviceBusy = 11,
    /// The server or the hardware does not support this request or these parameters (e.g. a
    /// permission combination the page-table format cannot express). Nothing changed.
    Unsupported = 12,
    /// The IOMMU did not complete an operation (e.g. an invalidation) in the bounded time.
    /// For `Map`, `MapSg`, `MapAnywhere`, `Attach` and `CreateDomain` the server restored its
    /// tables, so the mapping state is as before the request. For `Unmap`, `Detach` and
    /// `DestroyDomain` the removal cannot be undone (the device may still hold the old
    /// translations): the range stays unmapped, the domain's devices are blocked (the client
    /// re-attaches them once a later request on the domain succeeds: the server retries the
    /// invalidation first). No device gains access it did not have before the request.
    HardwareTimeout = 13,
    /// The IOMMU reported an error while executing the request. The state afterwards is as
    /// described for [`Error::HardwareTimeout`].
    HardwareError = 14,
    /// `Query`: no page is mapped at this IOVA. Nothing changed.
    NotMapped = 15,
    /// `MapAnywhere`: no free IOVA range of the requested length and alignment exists in the
    /// domain. Nothing changed.
    NoSpace = 16,
    /// A value is invalid regardless of state: zero length, empty [`Perms`](crate::Perms),
    /// an empty segment list or one longer than the client's `max_sg_segments`, an alignment
    /// that is not 0 or a power of two. Nothing changed.
    InvalidArgument = 17,
    /// `DestroyDomain`: devices are still attached to the domain (detach them first). Nothing
    /// changed.
    DomainBusy = 18,
}

impl Error {
    /// Every error, in code order.
    pub const ALL: [Error; 18] = [
        Error::BadMessage,
        Error::UnsupportedVersion,
        Error::NoSuchDomain,
        Error::NoSuchDevice,
        Error::NotPermitted,
        Error::Overlap,
        Error::Misaligned,
        Error::OutOfRange,
        Error::QuotaExceeded,
        Error::OutOfTableMemory,
        Error::DeviceBusy,
        Error::Unsupported,
        Error::HardwareTimeout,
        Error::HardwareError,
        Error::NotMapped,
        Error::NoSpace,
        Error::InvalidArgument,
        Error::DomainBusy,
    ];

    /// The stable wire code of this error (never 0).
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The error with this wire code, or `None` for 0 and unknown codes.
    pub const fn from_code(code: u16) -> Option<Error> {
        if code == 0 || code as usize > Self::ALL.len() {
            return None;
        }
        Some(Self::ALL[code as usize - 1])
    }

    /// A short name, as in logs (`NotMapped` is "not mapped").
    pub const fn as_str(self) -> &'static str {
        match self {
            Error::BadMessage => "malformed message",
            Error::UnsupportedVersion => "unsupported protocol version",
            Error::NoSuchDomain => "no such domain",
            Error::NoSuchDevice => "no such device",
            Error::NotPermitted => "not permitted",
            Error::Overlap => "range overlaps an existing mapping",
            Error::Misaligned => "address or length not 4 KiB aligned",
            Error::OutOfRange => "address range out of range",
            Error::QuotaExceeded => "quota exceeded",
            Error::OutOfTableMemory => "out of page-table memory",
            Error::DeviceBusy => "device attached to another domain",
            Error::Unsupported => "unsupported",
            Error::HardwareTimeout => "IOMMU timed out",
            Error::HardwareError => "IOMMU reported an error",
            Error::NotMapped => "not mapped",
            Error::NoSpace => "no free IOVA range",
            Error::InvalidArgument => "invalid argument",
            Error::DomainBusy => "domain has attached devices",
        }
    }

    /// What the caller can do about it: the second half of the `Display` message.
    pub const fn remedy(self) -> &'static str {
        match self {
            Error::BadMessage => {
                "the request did not decode (truncated, trailing bytes, unknown tag or field \
                 value); encode it with this crate's encode_request"
            }
            Error::UnsupportedVersion => {
                "Hello offered version 0 or one older than the server speaks; offer \
                 PROTOCOL_VERSION"
            }
            Error::NoSuchDomain => {
                "the handle names no live domain of this client; use one from CreateDomain"
            }
            Error::NoSuchDevice => {
                "the handle names no device of this client; the system configuration lists \
                 its device handles"
            }
            Error::NotPermitted => {
                "the physical range is outside the memory granted to this client (or the \
                 client is not configured); map only granted memory"
            }
            Error::Overlap => "part of the IOVA range is already mapped; unmap it first",
            Error::Misaligned => "use multiples of 4096 for addresses and lengths",
            Error::OutOfRange => {
                "the range wraps, leaves the domain's usable IOVA ranges (see Info) or \
                 exceeds the physical address width"
            }
            Error::QuotaExceeded => {
                "this client's domain or page-table frame quota is used up; destroy domains \
                 or unmap first"
            }
            Error::OutOfTableMemory => "the server's table memory is exhausted; retry later",
            Error::DeviceBusy => "detach the device from its domain first",
            Error::Unsupported => "the server or the IOMMU cannot do this (e.g. these permissions)",
            Error::HardwareTimeout => {
                "the IOMMU did not complete in bounded time; the domain's devices may be \
                 blocked: re-attach them once a later request on the domain succeeds"
            }
            Error::HardwareError => {
                "the IOMMU reported an error; the domain's devices may be blocked: \
                 re-attach them once a later request on the domain succeeds"
            }
            Error::NotMapped => "nothing is mapped at this IOVA",
            Error::NoSpace => {
                "no free IOVA range of that length and alignment; unmap or ask for less"
            }
            Error::InvalidArgument => {
                "zero length, empty permissions, an empty or too long segment list, or an \
                 alignment that is not 0 or a power of two"
            }
            Error::DomainBusy => "detach the domain's devices before destroying it",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}): {}",
            self.as_str(),
            self.code(),
            self.remedy()
        )
    }
}

impl core::error::Error for Error {}

impl Serialize for Error {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for Error {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        Error::from_code(code).ok_or_else(|| {
            serde::de::Error::invalid_value(
                serde::de::Unexpected::Unsigned(code.into()),
                &"an iommu-protocol error code",
            )
        })
    }
}

/// A failure of the IPC mechanism underneath a [`Client`](crate::client::Client), reported by
/// a [`Transport`](crate::client::Transport). Never on the wire.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TransportError {
    /// The server is gone (exited, restarted, or the endpoint was revoked). Whether the request
    /// was executed is unknown.
    Disconnected,
    /// The request was larger than the transport can carry; it was not sent.
    RequestTooLarge,
    /// The reply did not fit in the reply buffer.
    ReplyTooLarge,
    /// No reply arrived in time. Whether the request was executed is unknown.
    Timeout,
    /// Any other failure of the transport.
    Other,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportError::Disconnected => {
                "the server is gone (exited, restarted or its endpoint revoked); whether the \
                 request ran is unknown"
            }
            TransportError::RequestTooLarge => {
                "the request is larger than the transport carries (MAX_MESSAGE is 256 bytes); \
                 it was not sent"
            }
            TransportError::ReplyTooLarge => {
                "the reply did not fit the reply buffer; give the transport MAX_MESSAGE bytes"
            }
            TransportError::Timeout => {
                "no reply arrived in time; whether the request ran is unknown"
            }
            TransportError::Other => "the transport failed",
        })
    }
}

impl core::error::Error for TransportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        // The table of record: never renumber, only append.
        let expected: [(Error, u16); 18] = [
            (Error::BadMessage, 1),
            (Error::UnsupportedVersion, 2),
            (Error::NoSuchDomain, 3),
            (Error::NoSuchDevice, 4),
            (Error::NotPermitted, 5),
            (Error::Overlap, 6),
            (Error::Misaligned, 7),
            (Error::OutOfRange, 8),
            (Error::QuotaExceeded, 9),
            (Error::OutOfTableMemory, 10),
            (Error::DeviceBusy, 11),
            (Error::Unsupported, 12),
            (Error::HardwareTimeout, 13),
            (Error::HardwareError, 14),
            (Error::NotMapped, 15),
            (Error::NoSpace, 16),
            (Error::InvalidArgument, 17),
            (Error::DomainBusy, 18),
        ];
        for (error, code) in expected {
            assert_eq!(error.code(), code);
            assert_eq!(Error::from_code(code), Some(error));
        }
        assert_eq!(Error::ALL.map(|e| e.code()), expected.map(|(_, c)| c));
    }

    #[test]
    fn unknown_codes_are_none() {
        assert_eq!(Error::from_code(0), None);
        for code in 19..=u16::MAX {
            assert_eq!(Error::from_code(code), None);
        }
    }

    #[test]
    fn display_is_nonempty() {
        use std::string::ToString;
        for e in Error::ALL {
            assert!(!e.to_string().is_empty());
        }
    }
}
