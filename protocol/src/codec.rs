//! Encoding and decoding of messages (postcard, no allocation).

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, MAX_MESSAGE, Reply, Request};

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
    encode(request, buf)
}

/// Decodes exactly one request filling all of `bytes`.
///
/// Any malformed input (truncated, trailing bytes, unknown tag, out-of-range field, longer
/// than [`MAX_MESSAGE`]) is [`Error::BadMessage`]; never panics.
pub fn decode_request(bytes: &[u8]) -> Result<Request, Error> {
    decode(bytes)
}

/// Encodes `reply` into `buf`, returning the number of bytes written.
///
/// Every reply fits in [`MAX_MESSAGE`] bytes. Fails with [`Error::BadMessage`] only if `buf`
/// is too small; at most the first [`MAX_MESSAGE`] bytes of `buf` are used.
pub fn encode_reply(reply: &Reply, buf: &mut [u8]) -> Result<usize, Error> {
    encode(reply, buf)
}

/// Decodes exactly one reply filling all of `bytes`.
///
/// Any malformed input (truncated, trailing bytes, unknown tag or error code, out-of-range
/// field, longer than [`MAX_MESSAGE`]) is [`Error::BadMessage`]; never panics.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, Error> {
    decode(bytes)
}
