//! The client side: a protocol [`Transport`] that performs a protected procedure call with the
//! encoded request in message registers (see [`super::message`]) and decodes the reply.
//!
//! The caller's identity is the channel: the server learns who called from the badge of the
//! endpoint capability the call came through, which the system description fixes (manual,
//! "Protected procedures"). Nothing in the message says who the caller is.

use iommu_protocol::TransportError;
use iommu_protocol::client::Transport;

use super::abi::Channel;
use super::event::Kernel;
use super::message::{self, MAX_BYTES};

/// A [`Transport`] over PPCs on one channel.
pub struct PpcTransport<K> {
    kernel: K,
    channel: Channel,
    calls: u64,
}

impl<K: Kernel> PpcTransport<K> {
    /// Calls the server at the other end of `channel` (a channel with `pp="true"` on this
    /// PD's end).
    pub fn new(kernel: K, channel: Channel) -> Self {
        PpcTransport {
            kernel,
            channel,
            calls: 0,
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The kernel handle (e.g. to wait for notifications between calls).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }
}

impl<K: Kernel> Transport for PpcTransport<K> {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
        let kernel = &mut self.kernel;
        let info = message::pack(request, |i, v| kernel.set_mr(i, v))
            .ok_or(TransportError::RequestTooLarge)?;
        let answer = kernel.ppcall(self.channel, info);
        self.calls += 1;
        let mut buf = [0u8; MAX_BYTES];
        let bytes = message::unpack(answer, |i| kernel.mr(i), &mut buf).map_err(|e| match e {
            message::FrameError::TooLong => TransportError::ReplyTooLarge,
            _ => TransportError::Other,
        })?;
        let out = reply
            .get_mut(..bytes.len())
            .ok_or(TransportError::ReplyTooLarge)?;
        out.copy_from_slice(bytes);
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::microkit::abi::MsgInfo;
    use crate::microkit::event::fake::{Did, FakeKernel};
    use iommu_protocol::client::Client;
    use std::vec::Vec;

    #[test]
    fn a_request_goes_out_in_registers_and_the_reply_comes_back() {
        let mut k = FakeKernel::new();
        // The "server" echoes the request reversed.
        k.answer = |_, info, regs| {
            let mut buf = [0u8; MAX_BYTES];
            let mut bytes = message::unpack(info, |i| regs[i], &mut buf)
                .unwrap()
                .to_vec();
            bytes.reverse();
            let mut out = std::vec![0u64; 120];
            let reply = message::pack(&bytes, |i, v| out[i] = v).unwrap();
            (reply, out)
        };
        let mut t = PpcTransport::new(k, Channel(2));
        let mut reply = [0u8; 16];
        assert_eq!(t.call(&[1, 2, 3], &mut reply), Ok(3));
        assert_eq!(reply[..3], [3, 2, 1]);
        assert_eq!(t.calls(), 1);
        assert_eq!(
            t.kernel_mut().did,
            [Did::Call(
                Channel(2),
                MsgInfo::new(3, 1),
                std::vec![0x03_0201]
            )]
        );
        // A reply larger than the caller's buffer; a request larger than a message.
        let long: Vec<u8> = (0..40).collect();
        assert_eq!(
            t.call(&long, &mut reply),
            Err(TransportError::ReplyTooLarge)
        );
        let huge = std::vec![0u8; MAX_BYTES + 1];
        assert_eq!(
            t.call(&huge, &mut reply),
            Err(TransportError::RequestTooLarge)
        );
    }

    #[test]
    fn a_reply_that_is_no_message_is_a_transport_error() {
        let mut k = FakeKernel::new();
        k.answer = |_, _, _| (MsgInfo::new(17, 1), std::vec![0]);
        let mut c = Client::new(PpcTransport::new(k, Channel(0)));
        assert!(matches!(
            c.hello(),
            Err(iommu_protocol::client::ClientError::Transport(
                TransportError::Other
            ))
        ));
    }
}
