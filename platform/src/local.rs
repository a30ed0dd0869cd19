//! A client and the server in one image: a [`Transport`] that hands each encoded request to
//! the server and copies the encoded reply back, as an IPC call would.
//!
//! The client sees only bytes: it encodes with `iommu_protocol`, the server decodes, checks the
//! caller's identity (fixed per transport, never read from the message) and encodes its reply.

use core::cell::RefCell;

use iommu_hal::backend::Backend;
use iommu_hal::{FrameAlloc, PhysMem};
use iommu_protocol::client::Transport;
use iommu_protocol::{MAX_MESSAGE, TransportError};
use iommu_server::{ClientId, Notify, Server};

/// What the platform's receive loop needs from a server.
pub trait RequestHandler {
    /// Handles one encoded request of `client`, writing the encoded reply; returns its length.
    fn handle(&mut self, client: ClientId, request: &[u8], reply: &mut [u8]) -> usize;
    /// Drains the IOMMU's fault records into the clients' queues (the platform's reaction to
    /// a fault interrupt).
    fn service_faults(&mut self);
}

impl<B, M, A, N, const C: usize, const D: usize, const V: usize, const F: usize> RequestHandler
    for Server<'_, B, M, A, N, C, D, V, F>
where
    B: Backend,
    M: PhysMem,
    A: FrameAlloc,
    N: Notify,
{
    fn handle(&mut self, client: ClientId, request: &[u8], reply: &mut [u8]) -> usize {
        Server::handle(self, client, request, reply)
    }
    fn service_faults(&mut self) {
        Server::service_faults(self)
    }
}

/// The transport of one client identity to a server in the same image.
///
/// Each request is handled with interrupts masked ([`crate::without_interrupts`]): the fault
/// interrupt's handler ([`crate::fault_irq`]) services the server's faults whenever the server
/// is not in use, and a fault interrupt that found it in use is serviced here, before the
/// request. The transport does not drain faults otherwise: they reach the client through the
/// server's notification and the `Faults` request.
pub struct LocalTransport<'s, H> {
    server: &'s RefCell<H>,
    id: ClientId,
    calls: u64,
}

impl<'s, H: RequestHandler> LocalTransport<'s, H> {
    /// The transport of client `id`.
    pub fn new(server: &'s RefCell<H>, id: ClientId) -> Self {
        LocalTransport {
            server,
            id,
            calls: 0,
        }
    }

    /// Requests sent so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

impl<H: RequestHandler> Transport for LocalTransport<'_, H> {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> Result<usize, TransportError> {
        if request.len() > MAX_MESSAGE {
            return Err(TransportError::RequestTooLarge);
        }
        // The server writes into its own receive buffer, as it would in another address space.
        let mut buf = [0u8; MAX_MESSAGE];
        let n = crate::without_interrupts(|| {
            let mut server = self
                .server
                .try_borrow_mut()
                .map_err(|_| TransportError::Other)?;
            if crate::fault_irq::take_deferred() {
                server.service_faults();
            }
            Ok(server.handle(self.id, request, &mut buf))
        })?;
        self.calls += 1;
        let out = reply.get_mut(..n).ok_or(TransportError::ReplyTooLarge)?;
        out.copy_from_slice(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Echoes the request with the client id prepended; counts fault services.
    #[derive(Default)]
    struct Echo {
        serviced: u32,
        seen: Vec<u32>,
    }

    impl RequestHandler for Echo {
        fn handle(&mut self, client: ClientId, request: &[u8], reply: &mut [u8]) -> usize {
            self.seen.push(client.0);
            reply[0] = client.0 as u8;
            reply[1..=request.len()].copy_from_slice(request);
            request.len() + 1
        }
        fn service_faults(&mut self) {
            self.serviced += 1;
        }
    }

    #[test]
    fn carries_bytes_and_the_fixed_identity() {
        let _lock = crate::fault_irq::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        crate::fault_irq::take_deferred();
        let server = RefCell::new(Echo::default());
        let mut a = LocalTransport::new(&server, ClientId(7));
        let mut b = LocalTransport::new(&server, ClientId(9));
        let mut reply = [0u8; MAX_MESSAGE];
        assert_eq!(a.call(&[1, 2, 3], &mut reply), Ok(4));
        assert_eq!(&reply[..4], &[7, 1, 2, 3]);
        assert_eq!(b.call(&[5], &mut reply), Ok(2));
        assert_eq!(&reply[..2], &[9, 5]);
        assert_eq!(server.borrow().seen, [7, 9]);
        assert_eq!(
            server.borrow().serviced,
            0,
            "faults come by interrupt, not per request"
        );
        // An interrupt that found the server in use is serviced before the next request.
        crate::fault_irq::on_interrupt();
        assert_eq!(b.call(&[5], &mut reply), Ok(2));
        assert_eq!(server.borrow().serviced, 1);
        assert_eq!(a.calls(), 1);
        // A reply that does not fit the caller's buffer, and an oversized request.
        let mut small = [0u8; 2];
        assert_eq!(
            a.call(&[1, 2, 3], &mut small),
            Err(TransportError::ReplyTooLarge)
        );
        let big = [0u8; MAX_MESSAGE + 1];
        assert_eq!(
            a.call(&big, &mut reply),
            Err(TransportError::RequestTooLarge)
        );
    }
}
