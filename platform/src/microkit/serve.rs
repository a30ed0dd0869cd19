//! The server side of the IOMMU protection domain, as plain Rust: which channel is which
//! client, requests handed to the server with the identity of the channel they arrived on, the
//! fault interrupts routed to the owners' channels.
//!
//! - A protected call on a channel the table lists is handled as that client; on any other
//!   channel as [`UNKNOWN_CLIENT`], which no configuration may name (the server answers it
//!   `NotPermitted`). The message never names the caller.
//! - A call whose registers are no message is handed to the server as an empty request, which
//!   it answers `BadMessage`.
//! - A notification on one of the fault interrupt channels drains the IOMMU's fault records
//!   into the owners' queues ([`RequestHandler::service_faults`]), signals each owner that
//!   received records on its channel, then acknowledges the interrupt (the kernel keeps it
//!   masked until then; an event that arrives meanwhile leaves the edge-triggered interrupt
//!   pending, so it is delivered again after the acknowledgement). There is no polling.

use core::cell::Cell;

use iommu_server::{ClientId, Notify};

use super::abi::{Channel, ChannelSet};
use super::event::{Handler, Kernel};
use super::message::FrameError;
use crate::local::RequestHandler;

/// The identity of a caller whose channel is in no client entry.
pub const UNKNOWN_CLIENT: ClientId = ClientId(u32::MAX);

/// One client of the server: the server's identifier of the channel the client's PD calls on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientChannel {
    /// The server-side channel identifier (the server's `<end>` of the client's channel).
    pub channel: Channel,
    /// The client identity the server's configuration grants.
    pub client: ClientId,
}

/// Why a channel table cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum TableError {
    /// Two entries name the same channel.
    DuplicateChannel,
    /// Two entries name the same client.
    DuplicateClient,
    /// An entry names [`UNKNOWN_CLIENT`].
    ReservedClient,
    /// A fault interrupt channel is also a client channel.
    IrqIsClient,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TableError::DuplicateChannel => "two channel-table entries name the same channel",
            TableError::DuplicateClient => "two channel-table entries name the same client",
            TableError::ReservedClient => {
                "a channel-table entry names UNKNOWN_CLIENT, which is reserved"
            }
            TableError::IrqIsClient => {
                "a fault-interrupt channel is also a client channel in the system description"
            }
        })
    }
}

impl core::error::Error for TableError {}

/// Checks a channel table: channels and clients distinct, [`UNKNOWN_CLIENT`] unused, no
/// fault-interrupt channel used by a client.
pub fn check_table(clients: &[ClientChannel], fault_irqs: ChannelSet) -> Result<(), TableError> {
    for (i, a) in clients.iter().enumerate() {
        if a.client == UNKNOWN_CLIENT {
            return Err(TableError::ReservedClient);
        }
        if fault_irqs.contains(a.channel) {
            return Err(TableError::IrqIsClient);
        }
        for b in &clients[i + 1..] {
            if a.channel == b.channel {
                return Err(TableError::DuplicateChannel);
            }
            if a.client == b.client {
                return Err(TableError::DuplicateClient);
            }
        }
    }
    Ok(())
}

/// The server's [`Notify`]: remembers which clients' channels to signal; the PD signals them
/// after the drain ([`ServerPd`]), where it can make system calls.
#[derive(Clone, Copy)]
pub struct ChannelNotify<'t> {
    clients: &'t [ClientChannel],
    pending: &'t Cell<ChannelSet>,
}

impl<'t> ChannelNotify<'t> {
    /// Notifies through `clients`' channels, collecting them in `pending`.
    pub fn new(clients: &'t [ClientChannel], pending: &'t Cell<ChannelSet>) -> Self {
        ChannelNotify { clients, pending }
    }
}

impl Notify for ChannelNotify<'_> {
    fn notify(&mut self, client: ClientId) {
        if let Some(c) = self.clients.iter().find(|c| c.client == client) {
            let set = self.pending.get();
            self.pending.set(ChannelSet(set.0 | c.channel.bit()));
        }
    }
}

/// Counters of the server PD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct ServeStats {
    /// Fault interrupts taken.
    pub fault_irqs: u64,
    /// Notifications sent to clients.
    pub client_signals: u64,
    /// Calls from channels no client entry names.
    pub unknown_callers: u64,
    /// Notifications on channels that are no fault interrupt (ignored).
    pub stray_notifications: u64,
}

/// The IOMMU server as a PD's [`Handler`].
pub struct ServerPd<'t, H> {
    server: H,
    clients: &'t [ClientChannel],
    fault_irqs: ChannelSet,
    pending: &'t Cell<ChannelSet>,
    stats: ServeStats,
}

impl<'t, H: RequestHandler> ServerPd<'t, H> {
    /// The PD over `server`, whose [`Notify`] is a [`ChannelNotify`] over the same `clients`
    /// and `pending`. `fault_irqs` are the channels of the IOMMU's fault interrupts.
    pub fn new(
        server: H,
        clients: &'t [ClientChannel],
        fault_irqs: ChannelSet,
        pending: &'t Cell<ChannelSet>,
    ) -> Result<Self, TableError> {
        check_table(clients, fault_irqs)?;
        Ok(ServerPd {
            server,
            clients,
            fault_irqs,
            pending,
            stats: ServeStats::default(),
        })
    }

    /// The client a call on `ch` is handled as.
    pub fn client_of(&self, ch: Channel) -> ClientId {
        self.clients
            .iter()
            .find(|c| c.channel == ch)
            .map_or(UNKNOWN_CLIENT, |c| c.client)
    }

    /// The server.
    pub fn server(&self) -> &H {
        &self.server
    }

    /// The counters.
    pub fn stats(&self) -> ServeStats {
        self.stats
    }

    /// Drains the IOMMU's fault records into the owners' queues and signals each owner that
    /// received records. The fault interrupt's path; also called once after the interrupt is
    /// enabled, since records already pending then may raise no interrupt.
    pub fn drain<K: Kernel>(&mut self, kernel: &mut K) {
        self.server.service_faults();
        for c in self.pending.take().iter() {
            self.stats.client_signals += 1;
            kernel.notify(c);
        }
    }
}

impl<K: Kernel, H: RequestHandler> Handler<K> for ServerPd<'_, H> {
    fn notified(&mut self, kernel: &mut K, ch: Channel) {
        if !self.fault_irqs.contains(ch) {
            self.stats.stray_notifications += 1;
            return;
        }
        self.stats.fault_irqs += 1;
        self.drain(kernel);
        kernel.irq_ack(ch);
    }

    fn protected(
        &mut self,
        _kernel: &mut K,
        ch: Channel,
        request: Result<&[u8], FrameError>,
        reply: &mut [u8],
    ) -> usize {
        let client = self.client_of(ch);
        if client == UNKNOWN_CLIENT {
            self.stats.unknown_callers += 1;
        }
        self.server.handle(client, request.unwrap_or(&[]), reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::microkit::abi::{BADGE_PPC, MsgInfo};
    use crate::microkit::event::EventLoop;
    use crate::microkit::event::fake::{Did, FakeKernel};
    use std::vec::Vec;

    /// Answers with the client id; "faults" name the clients listed in `faulting`.
    struct Fake<'t> {
        seen: Vec<(u32, Vec<u8>)>,
        faulting: Vec<ClientId>,
        notify: ChannelNotify<'t>,
        drains: u32,
    }

    impl RequestHandler for Fake<'_> {
        fn handle(&mut self, client: ClientId, request: &[u8], reply: &mut [u8]) -> usize {
            self.seen.push((client.0, request.to_vec()));
            reply[..4].copy_from_slice(&client.0.to_le_bytes());
            4
        }
        fn service_faults(&mut self) {
            self.drains += 1;
            for c in self.faulting.clone() {
                self.notify.notify(c);
            }
        }
    }

    const TABLE: [ClientChannel; 2] = [
        ClientChannel {
            channel: Channel(0),
            client: ClientId(1),
        },
        ClientChannel {
            channel: Channel(4),
            client: ClientId(2),
        },
    ];

    #[test]
    fn identity_comes_from_the_channel_and_faults_wake_the_owner() {
        let pending = Cell::new(ChannelSet::default());
        let fake = Fake {
            seen: Vec::new(),
            faulting: std::vec![ClientId(2), ClientId(1), ClientId(7)],
            notify: ChannelNotify::new(&TABLE, &pending),
            drains: 0,
        };
        let irqs = ChannelSet(1 << 10 | 1 << 11);
        let mut pd = ServerPd::new(fake, &TABLE, irqs, &pending).unwrap();
        assert_eq!(pd.client_of(Channel(4)), ClientId(2));
        assert_eq!(pd.client_of(Channel(5)), UNKNOWN_CLIENT);

        let mut k = FakeKernel::new();
        k.call_with(BADGE_PPC | 4, &[9, 9]);
        k.call_with(BADGE_PPC | 5, &[1]);
        k.events
            .push_back((BADGE_PPC, MsgInfo::new(3, 5), std::vec![0; 5]));
        k.events
            .push_back((1 << 10 | 1 << 3, MsgInfo::new(0, 0), Vec::new()));
        k.call_with(BADGE_PPC, &[]);
        let mut l = EventLoop::new();
        for _ in 0..5 {
            l.step(&mut k, &mut pd);
        }
        let fake = pd.server();
        assert_eq!(
            fake.seen,
            [
                (2, std::vec![9, 9]),
                (u32::MAX, std::vec![1]),
                (1, Vec::new()),
                (1, Vec::new())
            ]
        );
        assert_eq!(fake.drains, 1);
        let signals: Vec<_> = k
            .did
            .iter()
            .filter(|d| matches!(d, Did::Notify(_) | Did::IrqAck(_)))
            .cloned()
            .collect();
        // Owners signalled on their own channels (the unknown client 7 on none), then the
        // interrupt acknowledged; channel 3 is no fault interrupt.
        assert_eq!(
            signals,
            [
                Did::Notify(Channel(0)),
                Did::Notify(Channel(4)),
                Did::IrqAck(Channel(10))
            ]
        );
        assert_eq!(
            pd.stats(),
            ServeStats {
                fault_irqs: 1,
                client_signals: 2,
                unknown_callers: 1,
                stray_notifications: 1
            }
        );
    }

    #[test]
    fn bad_tables_are_refused() {
        let irqs = ChannelSet(1 << 10);
        let c = |ch, id| ClientChannel {
            channel: Channel(ch),
            client: ClientId(id),
        };
        assert_eq!(check_table(&TABLE, irqs), Ok(()));
        assert_eq!(
            check_table(&[c(0, 1), c(0, 2)], irqs),
            Err(TableError::DuplicateChannel)
        );
        assert_eq!(
            check_table(&[c(0, 1), c(1, 1)], irqs),
            Err(TableError::DuplicateClient)
        );
        assert_eq!(
            check_table(&[c(0, u32::MAX)], irqs),
            Err(TableError::ReservedClient)
        );
        assert_eq!(check_table(&[c(10, 1)], irqs), Err(TableError::IrqIsClient));
    }
}
