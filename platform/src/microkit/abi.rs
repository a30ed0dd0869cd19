//! The Microkit ABI this runtime is written against, as plain values: capability slots, badge
//! encoding, message info, system-call numbers. Host-tested; nothing here touches the kernel.
//!
//! Every fact is written down with where it comes from. "Manual" is the Microkit manual
//! (`doc/` of an SDK; Microkit 2.x, section names given); "seL4" is the seL4 reference manual
//! and libsel4's published interface (seL4 16.0.0). Facts the manual leaves implicit are the
//! ones every Microkit SDK's `libmicrokit` relies on (its `microkit.h` names the slots) and
//! are repeated in the Microkit tool that builds the capability spaces; they are stated here
//! so that a reader can check them against the SDK they deploy with.

/// A channel identifier, as the system description gives it to this PD (an `<irq>` `id` is a
/// channel identifier too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(pub u8);

/// Channel identifiers this runtime accepts: 0 to 61. The manual ("Channels") allows ids
/// below 63, but bit 62 of a badge is the fault bit, so libmicrokit (`MICROKIT_MAX_CHANNELS`
/// = 62) and this runtime use 0 to 61.
pub const MAX_CHANNELS: u8 = 62;

impl Channel {
    /// The channel `id`, or `None` when it is not a valid identifier (62 or more).
    pub const fn new(id: u8) -> Option<Channel> {
        if id < MAX_CHANNELS {
            Some(Channel(id))
        } else {
            None
        }
    }

    /// The channel's bit in a notification badge or a channel mask.
    pub const fn bit(self) -> u64 {
        1 << self.0
    }
}

// --- The PD's capability space (libmicrokit's `microkit.h`; the tool's capDL builder) ---
//
// A PD's CSpace is a 64-slot root CNode whose slot 0 holds the Microkit CNode (512 slots)
// with a guard covering the remaining address bits, so slot `i` of the Microkit CNode is the
// capability address `i`.

/// The PD's input capability: its endpoint when it can receive protected procedure calls (or
/// has children), else its notification. The event loop receives on it.
pub const INPUT_CAP: u64 = 1;
/// The PD's reply object (MCS kernels: `seL4_Recv` takes a reply capability).
pub const REPLY_CAP: u64 = 4;
/// Notification capability to signal channel `ch` is `BASE_OUTPUT_NOTIFICATION_CAP + ch`.
pub const BASE_OUTPUT_NOTIFICATION_CAP: u64 = 10;
/// Endpoint capability to call channel `ch` (a PPC) is `BASE_ENDPOINT_CAP + ch`.
pub const BASE_ENDPOINT_CAP: u64 = 74;
/// IRQ handler capability of the interrupt with channel `ch` is `BASE_IRQ_CAP + ch`.
pub const BASE_IRQ_CAP: u64 = 138;

// --- Badges (libmicrokit's event loop; the tool's capDL builder) ---

/// Badge bit 63: the message came through an endpoint capability of a PPC channel; bits 5:0
/// are the receiving PD's identifier of that channel (manual, "libmicrokit", `protected`: the
/// channel argument "is passed by the system and is unforgeable").
pub const BADGE_PPC: u64 = 1 << 63;
/// Badge bit 62: a fault of a child PD; bits 7:0 are the child's identifier.
pub const BADGE_FAULT: u64 = 1 << 62;
/// Channel bits of a PPC badge.
const PPC_CHANNEL_MASK: u64 = 0x3f;
/// Child bits of a fault badge.
const FAULT_CHILD_MASK: u64 = 0xff;

/// What one receive on the input capability delivered, from its badge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// One or more notifications (from channels or interrupts): bit `i` set means channel `i`
    /// was signalled. A signal that arrives several times before the PD runs is seen once
    /// (manual, "Notifications").
    Notified(ChannelSet),
    /// A protected procedure call on this channel; the caller waits for the reply.
    Protected(Channel),
    /// A fault of child PD `child` (this runtime's PDs have no children).
    Fault(u8),
}

impl Event {
    /// Decodes a badge in the order libmicrokit's event loop does: the fault bit, then the PPC
    /// bit, else a notification word.
    pub const fn from_badge(badge: u64) -> Event {
        if badge & BADGE_FAULT != 0 {
            Event::Fault((badge & FAULT_CHILD_MASK) as u8)
        } else if badge & BADGE_PPC != 0 {
            Event::Protected(Channel((badge & PPC_CHANNEL_MASK) as u8))
        } else {
            Event::Notified(ChannelSet(badge & ((1 << MAX_CHANNELS) - 1)))
        }
    }
}

/// A set of channels (a notification word, or the channel masks the tool patches in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelSet(pub u64);

impl ChannelSet {
    /// Whether `ch` is in the set.
    pub const fn contains(self, ch: Channel) -> bool {
        self.0 & ch.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The channels in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        (0..MAX_CHANNELS)
            .filter(move |&i| self.0 & (1 << i) != 0)
            .map(Channel)
    }
}

// --- Message info (seL4 reference manual, "Message Registers"; libsel4's `seL4_MessageInfo`
// bitfield) ---

/// The message info word of an IPC: label (bits 63:12), capsUnwrapped (11:9), extraCaps (8:7),
/// length in message registers (6:0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgInfo(pub u64);

impl MsgInfo {
    /// A message with `label` and `length` message registers, no capabilities (label is
    /// truncated to 52 bits, length to 7).
    pub const fn new(label: u64, length: u8) -> MsgInfo {
        MsgInfo((label & ((1 << 52) - 1)) << 12 | (length as u64 & 0x7f))
    }

    /// The label (52 bits).
    pub const fn label(self) -> u64 {
        self.0 >> 12
    }

    /// Message registers the message carries (0 to 127 as encoded; the kernel transfers at
    /// most [`MSG_MAX_LENGTH`]).
    pub const fn length(self) -> u8 {
        (self.0 & 0x7f) as u8
    }

    /// Capabilities the message carries.
    pub const fn extra_caps(self) -> u8 {
        ((self.0 >> 7) & 0x3) as u8
    }
}

/// Message registers an IPC can carry (seL4 `seL4_MsgMaxLength`). The first
/// [`MSG_REGISTERS_IN_CPU`] travel in CPU registers, the rest in the IPC buffer's `msg` array.
pub const MSG_MAX_LENGTH: usize = 120;
/// Message registers passed in CPU registers on AArch64 (`seL4_FastMessageRegisters`: x2-x5).
pub const MSG_REGISTERS_IN_CPU: usize = 4;
/// Byte offset of `msg[0]` in the IPC buffer (`seL4_IPCBuffer`: the tag word, then `msg`).
pub const IPC_BUFFER_MSG_OFFSET: usize = 8;

// --- System calls (libsel4's generated `syscall.h` for MCS kernels with printing) ---

/// AArch64 system-call numbers (x7 at `svc #0`) of an MCS kernel.
pub mod syscall {
    /// `seL4_Call`: send, then wait for the reply on the same capability.
    pub const CALL: i64 = -1;
    /// `seL4_ReplyRecv`: reply through the reply object, then receive.
    pub const REPLY_RECV: i64 = -2;
    /// `seL4_Send`: (blocking) send; on a notification capability, `seL4_Signal`.
    pub const SEND: i64 = -5;
    /// `seL4_Recv`: receive on an endpoint or notification (with a reply object).
    pub const RECV: i64 = -7;
    /// `seL4_NBWait`: poll a notification (MCS), no reply object.
    pub const NB_WAIT: i64 = -10;
    /// `seL4_DebugPutChar`: one byte on the kernel's debug console (debug and printing
    /// kernels only; Microkit's `debug` configuration).
    pub const DEBUG_PUT_CHAR: i64 = -12;
}

/// The invocation label of `seL4_IRQHandler_Ack` (`IRQAckIRQ`) in the AArch64 MCS kernel's
/// invocation list (an SDK lists it in `board/<board>/<config>/invocations_all.json`). The
/// kernel answers a wrong label with an error, which [`crate::microkit`]'s `irq_ack` reports.
pub const IRQ_ACK_IRQ_LABEL: u64 = 31;

/// Names the tool patches into every PD ELF (manual, "Microkit Tool"; the tool's symbol
/// patcher): a PD image must define each, or the tool refuses it.
pub mod symbols {
    /// `char microkit_name[64]`: the PD's name from the system description.
    pub const NAME: &str = "microkit_name";
    /// The PD's name buffer length.
    pub const NAME_LEN: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn badges_decode_as_libmicrokit_does() {
        assert_eq!(
            Event::from_badge(BADGE_PPC | 5),
            Event::Protected(Channel(5))
        );
        // Only bits 5:0 name the channel of a PPC.
        assert_eq!(
            Event::from_badge(BADGE_PPC | 0x7c5),
            Event::Protected(Channel(5))
        );
        assert_eq!(Event::from_badge(BADGE_FAULT | 0x103), Event::Fault(3));
        assert_eq!(
            Event::from_badge(1 << 3 | 1 << 61),
            Event::Notified(ChannelSet(1 << 3 | 1 << 61))
        );
        let Event::Notified(set) = Event::from_badge(0b1010_0001) else {
            panic!("not a notification");
        };
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Channel(0), Channel(5), Channel(7)]
        );
        assert!(set.contains(Channel(5)) && !set.contains(Channel(6)));
        assert_eq!(Event::from_badge(0), Event::Notified(ChannelSet(0)));
    }

    #[test]
    fn message_info_fields() {
        let m = MsgInfo::new(0x1234, 9);
        assert_eq!(m.0, 0x1234 << 12 | 9);
        assert_eq!((m.label(), m.length(), m.extra_caps()), (0x1234, 9, 0));
        assert_eq!(MsgInfo::new(u64::MAX, 200).label(), (1 << 52) - 1);
        assert_eq!(MsgInfo::new(0, 200).length(), 200 & 0x7f);
        assert_eq!(MsgInfo(0b11 << 7).extra_caps(), 3);
    }

    #[test]
    fn channels_are_below_62() {
        assert_eq!(Channel::new(61), Some(Channel(61)));
        assert_eq!(Channel::new(62), None);
        assert_eq!(Channel(4).bit(), 16);
    }
}
