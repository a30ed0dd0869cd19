//! Encoding and decoding of messages (postcard, no allocation).
//!
//! The messages of the map/unmap hot path (`Map` and `Unmap` requests; `Done`, `Mapped`,
//! `Unmapped` and `Error` replies) are written and read by the small hand-coded functions of
//! [`hot`], which produce and accept exactly the bytes postcard does (the property tests
//! compare both on random values and random byte strings); everything else goes through
//! postcard. Measured with the server bench (averages over a `Map` and an `Unmap` and their
//! replies): postcard's generic serde path took about 260 instructions to encode a request,
//! 300 to decode it, 80 to encode a reply and 160 to decode it; these functions about 130,
//! 195, 28 and 47.

use serde::{Serialize, de::DeserializeOwned};

use crate::{DomainHandle, Error, MAX_MESSAGE, Perms, Reply, Request};

fn encode<T: Serialize>(message: &T, buf: &mut [u8]) -> Result<usize, Error> {
    let len = buf.len().min(MAX_MESSAGE);
    postcard::to_slice(message, &mut buf[..len])
        .map(|used| used.len())
        .map_err(|_| Error::BadMessage)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Error::BadMessage);
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((message, [])) => Ok(message),
        _ => Err(Error::BadMessage),
    }
}

/// Encodes `request` into `buf`, returning the number of bytes written.
///
/// Every request fits in [`MAX_MESSAGE`] bytes. Fails with [`Error::BadMessage`] only if `buf`
/// is too small; at most the first [`MAX_MESSAGE`] bytes of `buf` are used.
pub fn encode_request(request: &Request, buf: &mut [u8]) -> Result<usize, Error> {
    match *request {
        Request::Map {
            domain,
            iova,
            phys,
            len,
            perms,
        } => hot::encode(buf, |w| {
            w.byte(hot::REQUEST_MAP)?;
            w.varint(domain.0.into())?;
            w.varint(iova)?;
            w.varint(phys)?;
            w.varint(len)?;
            w.byte(perms.bits())
        }),
        Request::Unmap { domain, iova, len } => hot::encode(buf, |w| {
            w.byte(hot::REQUEST_UNMAP)?;
            w.varint(domain.0.into())?;
            w.varint(iova)?;
            w.varint(len)
        }),
        _ => encode(request, buf),
    }
}

/// A request of the map/unmap hot path, decoded without building a [`Request`] (which is
/// sized for its largest variant, `MapSg`): what a server's fast path matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotRequest {
    /// [`Request::Map`], field for field.
    Map {
        /// See [`Request::Map`].
        domain: DomainHandle,
        /// See [`Request::Map`].
        iova: u64,
        /// See [`Request::Map`].
        phys: u64,
        /// See [`Request::Map`].
        len: u64,
        /// See [`Request::Map`].
        perms: Perms,
    },
    /// [`Request::Unmap`], field for field.
    Unmap {
        /// See [`Request::Unmap`].
        domain: DomainHandle,
        /// See [`Request::Unmap`].
        iova: u64,
        /// See [`Request::Unmap`].
        len: u64,
    },
}

impl From<HotRequest> for Request {
    fn from(hot: HotRequest) -> Request {
        match hot {
            HotRequest::Map {
                domain,
                iova,
                phys,
                len,
                perms,
            } => Request::Map {
                domain,
                iova,
                phys,
                len,
                perms,
            },
            HotRequest::Unmap { domain, iova, len } => Request::Unmap { domain, iova, len },
        }
    }
}

/// Whether `bytes` start as a [`HotRequest`] does: then [`decode_hot_request`] decodes them
/// (or finds them malformed) exactly as [`decode_request`] would.
pub fn is_hot_request(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&hot::REQUEST_MAP | &hot::REQUEST_UNMAP))
}

/// Decodes a message [`is_hot_request`] accepted; the same answer as [`decode_request`]
/// (`decode_request(bytes) == decode_hot_request(bytes).map(Request::from)`, tested), and
/// `BadMessage` for anything else.
#[inline]
pub fn decode_hot_request(bytes: &[u8]) -> Result<HotRequest, Error> {
    match bytes.first() {
        Some(&hot::REQUEST_MAP) => hot::decode(bytes, |r| {
            Some(HotRequest::Map {
                domain: DomainHandle(r.u32()?),
                iova: r.u64()?,
                phys: r.u64()?,
                len: r.u64()?,
                perms: Perms::from_bits(r.byte()?)?,
            })
        }),
        Some(&hot::REQUEST_UNMAP) => hot::decode(bytes, |r| {
            Some(HotRequest::Unmap {
                domain: DomainHandle(r.u32()?),
                iova: r.u64()?,
                len: r.u64()?,
            })
        }),
        _ => Err(Error::BadMessage),
    }
}

/// Decodes exactly one request filling all of `bytes`.
///
/// Any malformed input (truncated, trailing bytes, unknown tag, out-of-range field, longer
/// than [`MAX_MESSAGE`]) is [`Error::BadMessage`]; never panics.
pub fn decode_request(bytes: &[u8]) -> Result<Request, Error> {
    if is_hot_request(bytes) {
        decode_hot_request(bytes).map(Request::from)
    } else {
        decode(bytes)
    }
}

/// Encodes `reply` into `buf`, returning the number of bytes written.
///
/// Every reply fits in [`MAX_MESSAGE`] bytes. Fails with [`Error::BadMessage`] only if `buf`
/// is too small; at most the first [`MAX_MESSAGE`] bytes of `buf` are used.
pub fn encode_reply(reply: &Reply, buf: &mut [u8]) -> Result<usize, Error> {
    match *reply {
        Reply::Done => hot::encode(buf, |w| w.byte(hot::REPLY_DONE)),
        Reply::Mapped { iova } => hot::encode(buf, |w| {
            w.byte(hot::REPLY_MAPPED)?;
            w.varint(iova)
        }),
        Reply::Unmapped { bytes } => hot::encode(buf, |w| {
            w.byte(hot::REPLY_UNMAPPED)?;
            w.varint(bytes)
        }),
        Reply::Error(e) => hot::encode(buf, |w| {
            w.byte(hot::REPLY_ERROR)?;
            w.varint(e.code().into())
        }),
        _ => encode(reply, buf),
    }
}

/// Decodes exactly one reply filling all of `bytes`.
///
/// Any malformed input (truncated, trailing bytes, unknown tag or error code, out-of-range
/// field, longer than [`MAX_MESSAGE`]) is [`Error::BadMessage`]; never panics.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, Error> {
    match bytes.first() {
        Some(&hot::REPLY_DONE) => hot::decode(bytes, |_| Some(Reply::Done)),
        Some(&hot::REPLY_MAPPED) => hot::decode(bytes, |r| Some(Reply::Mapped { iova: r.u64()? })),
        Some(&hot::REPLY_UNMAPPED) => {
            hot::decode(bytes, |r| Some(Reply::Unmapped { bytes: r.u64()? }))
        }
        Some(&hot::REPLY_ERROR) => {
            hot::decode(bytes, |r| Some(Reply::Error(Error::from_code(r.u16()?)?)))
        }
        _ => decode(bytes),
    }
}

/// Hand-coded postcard for the hot messages.
///
/// Postcard's wire rules, as these functions follow them: an enum is its variant index as a
/// varint `u32` and then its fields in order; `u16`/`u32`/`u64` are LEB128 varints (7 bits per
/// byte, low group first, bit 7 set on every byte but the last) of at most 3/5/10 bytes whose
/// last byte may not carry bits beyond the type's width; non-minimal encodings (e.g. `80 00`
/// for 0) are accepted; a `u8` is one raw byte. Only messages whose first byte is the
/// variant index as one byte are decoded here (every index below 128 is one byte; a
/// non-minimal index such as `86 00` goes to postcard, which reads it as the same variant).
mod hot {
    use crate::{Error, MAX_MESSAGE};

    /// `Request::Map`'s variant index.
    pub(super) const REQUEST_MAP: u8 = 6;
    /// `Request::Unmap`'s variant index.
    pub(super) const REQUEST_UNMAP: u8 = 9;
    /// `Reply::Done`'s variant index.
    pub(super) const REPLY_DONE: u8 = 3;
    /// `Reply::Mapped`'s variant index.
    pub(super) const REPLY_MAPPED: u8 = 4;
    /// `Reply::Unmapped`'s variant index.
    pub(super) const REPLY_UNMAPPED: u8 = 5;
    /// `Reply::Error`'s variant index.
    pub(super) const REPLY_ERROR: u8 = 8;

    /// Writes into the first `MAX_MESSAGE` bytes of a buffer; `None` when they are full.
    pub(super) struct Writer<'a> {
        buf: &'a mut [u8],
        at: usize,
    }

    impl Writer<'_> {
        #[inline(always)]
        pub(super) fn byte(&mut self, b: u8) -> Option<()> {
            *self.buf.get_mut(self.at)? = b;
            self.at += 1;
            Some(())
        }
        #[inline(always)]
        pub(super) fn varint(&mut self, mut v: u64) -> Option<()> {
            while v >= 0x80 {
                self.byte(v as u8 | 0x80)?;
                v >>= 7;
            }
            self.byte(v as u8)
        }
    }

    /// Runs `write` on a [`Writer`] over `buf`; the bytes written, or `BadMessage` if `buf`
    /// (at most `MAX_MESSAGE` of it) is too small, as postcard's `to_slice` answers.
    #[inline(always)]
    pub(super) fn encode(
        buf: &mut [u8],
        write: impl FnOnce(&mut Writer<'_>) -> Option<()>,
    ) -> Result<usize, Error> {
        let len = buf.len().min(MAX_MESSAGE);
        let mut w = Writer {
            buf: &mut buf[..len],
            at: 0,
        };
        match write(&mut w) {
            Some(()) => Ok(w.at),
            None => Err(Error::BadMessage),
        }
    }

    /// Reads a message after its one-byte variant index; `None` for anything malformed.
    pub(super) struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        #[inline(always)]
        pub(super) fn byte(&mut self) -> Option<u8> {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            Some(b)
        }
        /// A varint of at most `max` bytes whose last byte is at most `last_max`.
        #[inline(always)]
        fn varint(&mut self, max: u32, last_max: u8) -> Option<u64> {
            // With 8 bytes ahead and the varint ending in fewer than `max` of them (so no
            // last-byte limit applies): one 8-byte load, the end found from the clear high
            // bits, the 7-bit groups packed by three shift-and-mask steps.
            if let Some(&ahead) = self.bytes.get(self.at..).and_then(|b| b.first_chunk::<8>()) {
                let word = u64::from_le_bytes(ahead);
                let ends = !word & 0x8080_8080_8080_8080;
                let n = (ends.trailing_zeros() + 1) / 8;
                if ends != 0 && n < max {
                    let mut x = word & (u64::MAX >> (64 - 8 * n)) & 0x7f7f_7f7f_7f7f_7f7f;
                    x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
                    x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
                    x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
                    self.at += n as usize;
                    return Some(x);
                }
            }
            let mut out = 0u64;
            for i in 0..max {
                let b = self.byte()?;
                out |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    return (i + 1 < max || b <= last_max).then_some(out);
                }
            }
            None
        }
        #[inline(always)]
        pub(super) fn u16(&mut self) -> Option<u16> {
            self.varint(3, 0b11).map(|v| v as u16)
        }
        #[inline(always)]
        pub(super) fn u32(&mut self) -> Option<u32> {
            self.varint(5, 0b1111).map(|v| v as u32)
        }
        #[inline(always)]
        pub(super) fn u64(&mut self) -> Option<u64> {
            self.varint(10, 0b1)
        }
    }

    /// Runs `read` on the bytes after the variant index; the message if it read all of them
    /// and they were at most `MAX_MESSAGE`, else `BadMessage`.
    #[inline(always)]
    pub(super) fn decode<T>(
        bytes: &[u8],
        read: impl FnOnce(&mut Reader<'_>) -> Option<T>,
    ) -> Result<T, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::BadMessage);
        }
        let mut r = Reader { bytes, at: 1 };
        match read(&mut r) {
            Some(m) if r.at == bytes.len() => Ok(m),
            _ => Err(Error::BadMessage),
        }
    }
}
