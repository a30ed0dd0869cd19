//! Fault routing: per-client bounded queues and the platform's notification hook.

use heapless::Deque;
use iommu_hal::backend::FaultReason;

use crate::config::ClientId;

/// The platform's way of telling a client that faults are waiting for it (e.g. signalling an
/// seL4 notification, posting a Hubris notification bit). Called from
/// [`crate::Server::service_faults`] once per client that received records in that call.
///
/// Deliberately without a default, as in Hubris: a platform that does not notify says so by
/// passing [`NoNotify`].
pub trait Notify {
    /// Faults are waiting in `client`'s queue.
    fn notify(&mut self, client: ClientId);
}

impl<F: FnMut(ClientId)> Notify for F {
    fn notify(&mut self, client: ClientId) {
        self(client)
    }
}

/// A [`Notify`] that does nothing: clients poll with the `Faults` request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoNotify;

impl Notify for NoNotify {
    fn notify(&mut self, _client: ClientId) {}
}

/// One fault as queued for its client: the device already translated to the client's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueuedFault {
    pub(crate) device: u32,
    pub(crate) iova: u64,
    pub(crate) write: bool,
    pub(crate) reason: FaultReason,
}

/// A client's fault queue: bounded, with a count of records that did not fit.
#[derive(Debug)]
pub(crate) struct FaultQueue<const Q: usize> {
    pub(crate) queue: Deque<QueuedFault, Q>,
    /// Records dropped because the queue was full, since the last `Faults` reply.
    pub(crate) lost: u32,
}

impl<const Q: usize> FaultQueue<Q> {
    pub(crate) const fn new() -> Self {
        FaultQueue {
            queue: Deque::new(),
            lost: 0,
        }
    }

    /// Queues `f`, or counts it as lost when full. Returns whether it was queued.
    pub(crate) fn push(&mut self, f: QueuedFault) -> bool {
        match self.queue.push_back(f) {
            Ok(()) => true,
            Err(_) => {
                self.lost = self.lost.saturating_add(1);
                false
            }
        }
    }
}
