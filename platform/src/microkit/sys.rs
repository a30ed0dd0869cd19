//! seL4 system calls on AArch64 and the [`Kernel`] of a running PD.
//!
//! Register convention (libsel4's `arch_include/arm/sel4/arch/syscalls.h`, AArch64, MCS
//! kernel): `svc #0` with x7 = the system-call number ([`syscall`]); x0 = the capability
//! (in) / the badge (out); x1 = the message info (in / out); x2-x5 = message registers 0-3 (in
//! / out); x6 = the reply object for `Recv` and `ReplyRecv`. Every other register is preserved
//! by the kernel. Message registers 4 and up are in the IPC buffer's `msg` array.
//!
//! The IPC buffer is the page above the guard page that sits above the initial stack: the
//! Microkit tool maps the IPC buffer in the highest user page and sets the initial stack
//! pointer one (guard) page below it, for every PD (the tool's `pd_ipc_buffer` /
//! `pd_stack_top`; libmicrokit's `__sel4_ipc_buffer` is the same page, computed from
//! `seL4_UserVSpaceTop`). The entry code records it ([`set_ipc_buffer`]).

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::abi::{
    BASE_ENDPOINT_CAP, BASE_IRQ_CAP, BASE_OUTPUT_NOTIFICATION_CAP, Channel, ChannelSet, INPUT_CAP,
    IPC_BUFFER_MSG_OFFSET, IRQ_ACK_IRQ_LABEL, MSG_MAX_LENGTH, MSG_REGISTERS_IN_CPU, MsgInfo,
    REPLY_CAP, syscall,
};
use super::event::Kernel;

/// Virtual address of the IPC buffer (0 until the entry code sets it).
static IPC_BUFFER: AtomicUsize = AtomicUsize::new(0);

/// Records the IPC buffer's address (the entry code, from the initial stack pointer).
pub fn set_ipc_buffer(addr: usize) {
    IPC_BUFFER.store(addr, Ordering::Relaxed);
}

/// Address of IPC buffer message register `i` (`i >= 4`, `i < 120`).
fn ipc_mr(i: usize) -> *mut u64 {
    (IPC_BUFFER.load(Ordering::Relaxed) + IPC_BUFFER_MSG_OFFSET + 8 * i) as *mut u64
}

/// One `svc #0` with the full register set: returns (x0, x1, [x2..x5]).
///
/// # Safety
/// `number` must be a system call whose effect on this PD's memory is limited to the IPC
/// buffer (all of the ones used here).
#[inline(always)]
unsafe fn svc(number: i64, x0: u64, x1: u64, mrs: [u64; 4], x6: u64) -> (u64, u64, [u64; 4]) {
    let (mut r0, mut r1) = (x0, x1);
    let [mut r2, mut r3, mut r4, mut r5] = mrs;
    // SAFETY: the caller's contract; the kernel preserves every register not named here and
    // may write the IPC buffer (no `nomem`).
    unsafe {
        asm!(
            "svc #0",
            inout("x0") r0,
            inout("x1") r1,
            inout("x2") r2,
            inout("x3") r3,
            inout("x4") r4,
            inout("x5") r5,
            in("x6") x6,
            in("x7") number,
            options(nostack),
        );
    }
    (r0, r1, [r2, r3, r4, r5])
}

/// Writes one byte on the kernel's debug console (`seL4_DebugPutChar`; a debug kernel).
pub fn debug_put_char(c: u8) {
    // SAFETY: DebugPutChar reads x0 only and touches no user memory.
    unsafe {
        svc(syscall::DEBUG_PUT_CHAR, u64::from(c), 0, [0; 4], 0);
    }
}

/// Writes bytes on the kernel's debug console.
pub fn debug_put(bytes: &[u8]) {
    for &b in bytes {
        debug_put_char(b);
    }
}

/// The channel masks the Microkit tool patched into this PD (see [`super::pd`]): a system
/// call on a channel outside them is refused here, as libmicrokit does, instead of invoking an
/// empty capability slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Masks {
    /// Channels with an interrupt (`microkit_irqs`).
    pub irqs: ChannelSet,
    /// Channels this PD may notify (`microkit_notifications`).
    pub notifications: ChannelSet,
    /// Channels this PD may call (`microkit_pps`).
    pub pps: ChannelSet,
}

/// The kernel, as a running PD sees it: message registers 0-3 held here between system calls,
/// 4 and up in the IPC buffer.
pub struct Sel4 {
    mrs: [u64; MSG_REGISTERS_IN_CPU],
    masks: Masks,
    refused: u64,
}

impl Sel4 {
    /// The kernel interface of this PD, checking channels against `masks`.
    pub const fn new(masks: Masks) -> Self {
        Sel4 {
            mrs: [0; MSG_REGISTERS_IN_CPU],
            masks,
            refused: 0,
        }
    }

    /// System calls refused because their channel is not in the PD's masks.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn refuse(&mut self, what: &str, ch: Channel) {
        self.refused += 1;
        defmt::error!(
            "{=str} on channel {=u8}: not in this PD's system description",
            what,
            ch.0
        );
    }

    /// Polls the PD's notification (`seL4_NBWait` on the input capability): the channels
    /// signalled since the last poll or receive, cleared by the poll. Only for PDs whose
    /// input capability is their notification (no protected procedure, no children).
    pub fn poll_notifications(&mut self) -> ChannelSet {
        // SAFETY: NBWait on our own notification writes nothing but registers.
        let (badge, _, _) = unsafe { svc(syscall::NB_WAIT, INPUT_CAP, 0, [0; 4], 0) };
        ChannelSet(badge & ((1 << super::abi::MAX_CHANNELS) - 1))
    }
}

impl Kernel for Sel4 {
    fn receive(&mut self, reply: Option<MsgInfo>) -> (u64, MsgInfo) {
        let (badge, info, mrs) = match reply {
            // SAFETY: ReplyRecv replies through our reply object and receives on our input
            // capability; the kernel writes message registers 4+ into our IPC buffer.
            Some(r) => unsafe { svc(syscall::REPLY_RECV, INPUT_CAP, r.0, self.mrs, REPLY_CAP) },
            // SAFETY: as above, receive only.
            None => unsafe { svc(syscall::RECV, INPUT_CAP, 0, [0; 4], REPLY_CAP) },
        };
        self.mrs = mrs;
        (badge, MsgInfo(info))
    }

    fn mr(&self, i: usize) -> u64 {
        match i {
            0..MSG_REGISTERS_IN_CPU => self.mrs[i],
            // SAFETY: the IPC buffer page is mapped for this PD's lifetime and only this
            // thread and the kernel (during our system calls) use it.
            MSG_REGISTERS_IN_CPU..MSG_MAX_LENGTH => unsafe { ipc_mr(i).read_volatile() },
            _ => 0,
        }
    }

    fn set_mr(&mut self, i: usize, value: u64) {
        match i {
            0..MSG_REGISTERS_IN_CPU => self.mrs[i] = value,
            // SAFETY: as in `mr`.
            MSG_REGISTERS_IN_CPU..MSG_MAX_LENGTH => unsafe { ipc_mr(i).write_volatile(value) },
            _ => {}
        }
    }

    fn notify(&mut self, ch: Channel) {
        if !self.masks.notifications.contains(ch) {
            return self.refuse("notify", ch);
        }
        // SAFETY: Send with an empty message on a notification capability (seL4_Signal).
        unsafe {
            svc(
                syscall::SEND,
                BASE_OUTPUT_NOTIFICATION_CAP + u64::from(ch.0),
                0,
                [0; 4],
                0,
            );
        }
    }

    fn irq_ack(&mut self, ch: Channel) {
        if !self.masks.irqs.contains(ch) {
            return self.refuse("irq_ack", ch);
        }
        // SAFETY: Call of the IRQ handler capability with the IRQAckIRQ invocation and no
        // arguments (seL4_IRQHandler_Ack); the reply is registers only.
        let (_, info, _) = unsafe {
            svc(
                syscall::CALL,
                BASE_IRQ_CAP + u64::from(ch.0),
                MsgInfo::new(IRQ_ACK_IRQ_LABEL, 0).0,
                [0; 4],
                0,
            )
        };
        let error = MsgInfo(info).label();
        if error != 0 {
            defmt::error!(
                "IRQ acknowledge on channel {=u8} failed: seL4 error {=u64}",
                ch.0,
                error
            );
        }
    }

    fn ppcall(&mut self, ch: Channel, info: MsgInfo) -> MsgInfo {
        if !self.masks.pps.contains(ch) {
            self.refuse("ppcall", ch);
            return MsgInfo::new(0, 0);
        }
        // SAFETY: Call on the channel's endpoint capability; the kernel copies registers 4+
        // from and into our IPC buffer.
        let (_, reply, mrs) = unsafe {
            svc(
                syscall::CALL,
                BASE_ENDPOINT_CAP + u64::from(ch.0),
                info.0,
                self.mrs,
                0,
            )
        };
        self.mrs = mrs;
        MsgInfo(reply)
    }
}
