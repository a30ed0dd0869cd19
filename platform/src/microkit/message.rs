//! Protocol bytes in message registers, and back: how this runtime carries an encoded request
//! or reply through a protected procedure call.
//!
//! A message of `n` bytes travels as `ceil(n / 8)` message registers, little-endian, 8 bytes a
//! register, the last one zero-padded; the message info's label is `n`. The label is free for
//! the PDs to use (manual, "libmicrokit": `microkit_msginfo_new(label, count)`; the message
//! contents are "a pre-arranged protocol between the PDs"), and it makes the byte length exact
//! without spending a register. The first four registers travel in CPU registers (the seL4
//! fastpath band: a Map or Unmap request fits 32 bytes), the rest in the IPC buffer.
//!
//! A received message is accepted only when its framing is exact: the label is a byte count
//! that fits the receiver's buffer, the length is exactly the registers that count needs, and
//! no capability is attached. Anything else is [`FrameError`], never a panic.

use super::abi::{MSG_MAX_LENGTH, MsgInfo};

/// The most bytes one message carries (120 registers of 8 bytes).
pub const MAX_BYTES: usize = MSG_MAX_LENGTH * 8;

/// Why received message registers are not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum FrameError {
    /// The label (byte count) exceeds the receiver's buffer or [`MAX_BYTES`].
    TooLong,
    /// The length is not the number of registers the byte count needs.
    BadLength,
    /// The message carries capabilities.
    Capabilities,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::TooLong => write!(
                f,
                "the message's label (byte count) exceeds the buffer or {MAX_BYTES} bytes"
            ),
            FrameError::BadLength => f.write_str(
                "the message's length is not the number of registers its byte count needs",
            ),
            FrameError::Capabilities => {
                f.write_str("the message carries capabilities; the protocol sends none")
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// Message registers needed for `n` bytes.
pub const fn words_for(n: usize) -> usize {
    n.div_ceil(8)
}

/// Writes `bytes` into message registers through `set` (register index, value) and returns the
/// message info to send, or `None` when `bytes` is longer than [`MAX_BYTES`].
pub fn pack(bytes: &[u8], mut set: impl FnMut(usize, u64)) -> Option<MsgInfo> {
    if bytes.len() > MAX_BYTES {
        return None;
    }
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        set(i, u64::from_le_bytes(word));
    }
    Some(MsgInfo::new(
        bytes.len() as u64,
        words_for(bytes.len()) as u8,
    ))
}

/// Reads the message `info` describes from message registers through `get` into `out`, and
/// returns its bytes.
pub fn unpack(
    info: MsgInfo,
    get: impl Fn(usize) -> u64,
    out: &mut [u8],
) -> Result<&[u8], FrameError> {
    if info.extra_caps() != 0 {
        return Err(FrameError::Capabilities);
    }
    let n = info.label();
    if n > MAX_BYTES as u64 || n > out.len() as u64 {
        return Err(FrameError::TooLong);
    }
    let n = n as usize;
    if usize::from(info.length()) != words_for(n) {
        return Err(FrameError::BadLength);
    }
    for (i, chunk) in out[..n].chunks_mut(8).enumerate() {
        let word = get(i).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Ok(&out[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn round_trip(bytes: &[u8]) -> (MsgInfo, Vec<u64>, Vec<u8>) {
        let mut mrs = std::vec![0u64; MSG_MAX_LENGTH];
        let info = pack(bytes, |i, v| mrs[i] = v).unwrap();
        let mut out = [0u8; MAX_BYTES];
        let got = unpack(info, |i| mrs[i], &mut out).unwrap().to_vec();
        (info, mrs, got)
    }

    #[test]
    fn bytes_travel_little_endian_with_the_byte_count_as_label() {
        let (info, mrs, got) = round_trip(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!((info.label(), info.length()), (9, 2));
        assert_eq!(mrs[0], 0x0807_0605_0403_0201);
        assert_eq!(mrs[1], 9, "the last register is zero-padded");
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Empty, exactly four registers (the fastpath band), the protocol's largest (256 bytes)
        // and the transport's largest.
        for n in [0, 32, 33, 256, MAX_BYTES] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let (info, _, got) = round_trip(&bytes);
            assert_eq!(usize::from(info.length()), n.div_ceil(8));
            assert_eq!(got, bytes);
        }
    }

    #[test]
    fn oversized_messages_are_not_packed() {
        let big = std::vec![0u8; MAX_BYTES + 1];
        assert_eq!(pack(&big, |_, _| panic!("nothing is written")), None);
    }

    #[test]
    fn bad_framing_is_an_error_not_a_panic() {
        let get = |_| u64::MAX;
        let mut out = [0u8; 256];
        // The label claims more bytes than the buffer, or than a message can hold.
        assert_eq!(
            unpack(MsgInfo::new(257, 33), get, &mut out),
            Err(FrameError::TooLong)
        );
        assert_eq!(
            unpack(MsgInfo::new(u64::MAX, 127), get, &mut [0u8; MAX_BYTES + 8]),
            Err(FrameError::TooLong)
        );
        // Registers that do not match the byte count.
        assert_eq!(
            unpack(MsgInfo::new(9, 1), get, &mut out),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            unpack(MsgInfo::new(8, 2), get, &mut out),
            Err(FrameError::BadLength)
        );
        // Capabilities attached.
        assert_eq!(
            unpack(MsgInfo(MsgInfo::new(0, 0).0 | 1 << 7), get, &mut out),
            Err(FrameError::Capabilities)
        );
        // Every info word either decodes within bounds or is refused.
        for raw in (0..4096u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            if let Ok(b) = unpack(MsgInfo(raw), get, &mut out) {
                assert!(b.len() <= 256);
            }
        }
    }
}
