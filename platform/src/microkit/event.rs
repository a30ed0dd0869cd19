//! The event loop of a protection domain, as plain Rust over a [`Kernel`]: receive, decode the
//! badge, call the [`Handler`], reply. The target implementation of [`Kernel`] is
//! `microkit::sys::Sel4` (seL4 system calls); host tests drive the same loop with a scripted
//! kernel.
//!
//! The loop follows the Microkit manual's computational model ("Protection Domains", "Entry
//! points"): after `init` the PD only reacts to events; one entry point runs at a time; a
//! `protected` call returns its reply, which is sent with the next receive (`seL4_ReplyRecv`,
//! as libmicrokit does), so a PPC costs one system call on each side.

use super::abi::{Channel, ChannelSet, Event, MsgInfo};
use super::message::{self, FrameError, MAX_BYTES};

/// What a PD needs from the kernel. Message registers are those of the current (last
/// received, or next sent) message: indices below `abi::MSG_MAX_LENGTH`.
pub trait Kernel {
    /// Sends `reply` to the caller of the last protected procedure call (when given), then
    /// waits for the next event on the input capability. Returns its badge and message info;
    /// its message registers are then readable with [`Kernel::mr`].
    fn receive(&mut self, reply: Option<MsgInfo>) -> (u64, MsgInfo);
    /// Message register `i` of the message just received (0 beyond the message).
    fn mr(&self, i: usize) -> u64;
    /// Sets message register `i` of the next message sent.
    fn set_mr(&mut self, i: usize, value: u64);
    /// Signals the PD at the other end of channel `ch` (`microkit_notify`).
    fn notify(&mut self, ch: Channel);
    /// Acknowledges the interrupt of channel `ch`, so it can be delivered again
    /// (`microkit_irq_ack`; manual, "Interrupts": until then the kernel keeps it masked).
    fn irq_ack(&mut self, ch: Channel);
    /// Calls the protected procedure at the other end of channel `ch` with the message
    /// registers set so far; returns the reply's message info, its registers readable with
    /// [`Kernel::mr`] (`microkit_ppcall`).
    fn ppcall(&mut self, ch: Channel, info: MsgInfo) -> MsgInfo;
}

impl<K: Kernel + ?Sized> Kernel for &mut K {
    fn receive(&mut self, reply: Option<MsgInfo>) -> (u64, MsgInfo) {
        (**self).receive(reply)
    }
    fn mr(&self, i: usize) -> u64 {
        (**self).mr(i)
    }
    fn set_mr(&mut self, i: usize, value: u64) {
        (**self).set_mr(i, value)
    }
    fn notify(&mut self, ch: Channel) {
        (**self).notify(ch)
    }
    fn irq_ack(&mut self, ch: Channel) {
        (**self).irq_ack(ch)
    }
    fn ppcall(&mut self, ch: Channel, info: MsgInfo) -> MsgInfo {
        (**self).ppcall(ch, info)
    }
}

/// A PD's entry points after `init` (manual, "Entry points"). The runtime owns the receive
/// loop; the PD is a value with these two methods. No default for `notified`: a PD that
/// ignores notifications says so.
pub trait Handler<K: Kernel> {
    /// Channel `ch` (another PD, or an interrupt) was signalled.
    fn notified(&mut self, kernel: &mut K, ch: Channel);
    /// A protected procedure call arrived on channel `ch` with the encoded `request`; writes
    /// the encoded reply into `reply` and returns its length. A request whose registers are no
    /// message (see [`message::unpack`]) arrives as `Err`; the reply is still sent.
    fn protected(
        &mut self,
        kernel: &mut K,
        ch: Channel,
        request: Result<&[u8], FrameError>,
        reply: &mut [u8],
    ) -> usize;
}

/// Counters of the loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct LoopStats {
    /// Protected procedure calls handled.
    pub calls: u64,
    /// Calls whose registers were no message.
    pub bad_frames: u64,
    /// Receives that delivered notifications.
    pub wakeups: u64,
    /// Fault messages (this runtime's PDs have no children: counted and not answered).
    pub faults: u64,
}

/// The receive loop's state: the reply owed to the last caller.
#[derive(Debug, Default)]
pub struct EventLoop {
    reply: Option<MsgInfo>,
    stats: LoopStats,
}

impl EventLoop {
    /// A loop that owes no reply yet.
    pub const fn new() -> Self {
        EventLoop {
            reply: None,
            stats: LoopStats {
                calls: 0,
                bad_frames: 0,
                wakeups: 0,
                faults: 0,
            },
        }
    }

    /// The counters so far.
    pub const fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Receives one event (sending the reply owed, if any) and hands it to `handler`.
    pub fn step<K: Kernel, H: Handler<K>>(&mut self, kernel: &mut K, handler: &mut H) {
        let (badge, info) = kernel.receive(self.reply.take());
        match Event::from_badge(badge) {
            Event::Protected(ch) => {
                self.stats.calls += 1;
                let mut request = [0u8; MAX_BYTES];
                let decoded = message::unpack(info, |i| kernel.mr(i), &mut request);
                if decoded.is_err() {
                    self.stats.bad_frames += 1;
                }
                let mut reply = [0u8; MAX_BYTES];
                let n = handler
                    .protected(kernel, ch, decoded, &mut reply)
                    .min(MAX_BYTES);
                // `n <= MAX_BYTES`, so packing cannot fail; an empty reply if it ever did.
                let info = message::pack(&reply[..n], |i, v| kernel.set_mr(i, v))
                    .unwrap_or(MsgInfo::new(0, 0));
                self.reply = Some(info);
            }
            Event::Notified(set) => {
                self.stats.wakeups += 1;
                for ch in set.iter() {
                    handler.notified(kernel, ch);
                }
            }
            Event::Fault(_) => self.stats.faults += 1,
        }
    }

    /// Acknowledges every interrupt in `irqs` once, then runs forever. (seL4 can deliver an
    /// interrupt that fired before its handler was bound only after an acknowledgement;
    /// libmicrokit does the same at start.)
    pub fn run<K: Kernel, H: Handler<K>>(
        &mut self,
        kernel: &mut K,
        handler: &mut H,
        irqs: ChannelSet,
    ) -> ! {
        for ch in irqs.iter() {
            kernel.irq_ack(ch);
        }
        loop {
            self.step(kernel, handler);
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted kernel for host tests: events to deliver, and a record of what the PD did.
    use super::*;
    use crate::microkit::abi::MSG_MAX_LENGTH;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// What the PD asked of the kernel.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Did {
        Reply(MsgInfo, Vec<u64>),
        Notify(Channel),
        IrqAck(Channel),
        Call(Channel, MsgInfo, Vec<u64>),
    }

    /// How the fake answers a PPC: (channel, message info, registers) to (reply, registers).
    pub type Answer = fn(Channel, MsgInfo, &[u64]) -> (MsgInfo, Vec<u64>);

    /// Delivers `events` (badge, info, registers) in order; answers PPCs with `answer`.
    pub struct FakeKernel {
        pub events: VecDeque<(u64, MsgInfo, Vec<u64>)>,
        pub mrs: Vec<u64>,
        pub did: Vec<Did>,
        pub answer: Answer,
    }

    impl FakeKernel {
        pub fn new() -> Self {
            FakeKernel {
                events: VecDeque::new(),
                mrs: std::vec![0; MSG_MAX_LENGTH],
                did: Vec::new(),
                answer: |_, _, _| (MsgInfo::new(0, 0), Vec::new()),
            }
        }

        /// Queues a PPC on `badge` carrying `bytes`.
        pub fn call_with(&mut self, badge: u64, bytes: &[u8]) {
            let mut regs = std::vec![0; MSG_MAX_LENGTH];
            let info = message::pack(bytes, |i, v| regs[i] = v).unwrap();
            self.events.push_back((badge, info, regs));
        }
    }

    /// Message register indices stay in range.
    const fn mr_in_range(i: usize) -> bool {
        i < MSG_MAX_LENGTH
    }

    impl Kernel for FakeKernel {
        fn receive(&mut self, reply: Option<MsgInfo>) -> (u64, MsgInfo) {
            if let Some(r) = reply {
                let n = usize::from(r.length());
                self.did.push(Did::Reply(r, self.mrs[..n].to_vec()));
            }
            let (badge, info, regs) = self.events.pop_front().expect("script ran out");
            self.mrs = regs;
            self.mrs.resize(MSG_MAX_LENGTH, 0);
            (badge, info)
        }
        fn mr(&self, i: usize) -> u64 {
            assert!(mr_in_range(i));
            self.mrs[i]
        }
        fn set_mr(&mut self, i: usize, value: u64) {
            assert!(mr_in_range(i));
            self.mrs[i] = value;
        }
        fn notify(&mut self, ch: Channel) {
            self.did.push(Did::Notify(ch));
        }
        fn irq_ack(&mut self, ch: Channel) {
            self.did.push(Did::IrqAck(ch));
        }
        fn ppcall(&mut self, ch: Channel, info: MsgInfo) -> MsgInfo {
            let n = usize::from(info.length());
            self.did.push(Did::Call(ch, info, self.mrs[..n].to_vec()));
            let (reply, regs) = (self.answer)(ch, info, &self.mrs[..n]);
            self.mrs = regs;
            self.mrs.resize(MSG_MAX_LENGTH, 0);
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Did, FakeKernel};
    use super::*;
    use crate::microkit::abi::{BADGE_FAULT, BADGE_PPC};
    use std::vec::Vec;

    /// Records events; answers a call with the channel number followed by the request.
    #[derive(Default)]
    struct Recorder {
        notified: Vec<u8>,
        calls: Vec<(u8, Result<Vec<u8>, FrameError>)>,
    }

    impl Handler<FakeKernel> for Recorder {
        fn notified(&mut self, k: &mut FakeKernel, ch: Channel) {
            self.notified.push(ch.0);
            if ch.0 == 9 {
                k.irq_ack(ch);
            }
        }
        fn protected(
            &mut self,
            k: &mut FakeKernel,
            ch: Channel,
            request: Result<&[u8], FrameError>,
            reply: &mut [u8],
        ) -> usize {
            self.calls.push((ch.0, request.map(<[u8]>::to_vec)));
            k.notify(Channel(1));
            let req = request.unwrap_or(&[]);
            reply[0] = ch.0;
            reply[1..=req.len()].copy_from_slice(req);
            req.len() + 1
        }
    }

    #[test]
    fn calls_are_decoded_handled_and_replied_with_the_next_receive() {
        let mut k = FakeKernel::new();
        k.call_with(BADGE_PPC | 3, &[10, 20, 30]);
        k.events
            .push_back((1 << 9 | 1 << 2, MsgInfo::new(0, 0), Vec::new()));
        k.events
            .push_back((BADGE_FAULT | 4, MsgInfo::new(0, 0), Vec::new()));
        // A call whose label claims 40 bytes in one register.
        k.events
            .push_back((BADGE_PPC | 7, MsgInfo::new(40, 1), std::vec![0xff]));
        k.call_with(BADGE_PPC | 3, &[]);
        let mut h = Recorder::default();
        let mut l = EventLoop::new();
        for _ in 0..5 {
            l.step(&mut k, &mut h);
        }
        assert_eq!(h.notified, [2, 9]);
        assert_eq!(
            h.calls,
            [
                (3, Ok(std::vec![10, 20, 30])),
                (7, Err(FrameError::BadLength)),
                (3, Ok(Vec::new()))
            ]
        );
        // The first reply is sent with the receive that delivered the notification; a
        // notification or a fault owes no reply; the malformed call still gets its answer.
        assert_eq!(
            k.did,
            [
                Did::Notify(Channel(1)),
                Did::Reply(MsgInfo::new(4, 1), std::vec![0x1e14_0a03]),
                Did::IrqAck(Channel(9)),
                Did::Notify(Channel(1)),
                Did::Reply(MsgInfo::new(1, 1), std::vec![7]),
                Did::Notify(Channel(1)),
            ]
        );
        assert_eq!(
            l.stats(),
            LoopStats {
                calls: 3,
                bad_frames: 1,
                wakeups: 1,
                faults: 1
            }
        );
    }
}
