//! A seL4 Microkit runtime for protection domains (PDs), written in Rust from Microkit's
//! documented ABI: no libmicrokit, no rust-sel4, no SDK needed to build a PD.
//!
//! What a PD built on it gets:
//! - entry (`_start` on the stack the system gives it) and the symbols the Microkit tool
//!   patches (`microkit_name`, the channel masks; the `pd` module, built for the target only);
//! - the event loop ([`event::EventLoop`]): `seL4_Recv` / `seL4_ReplyRecv` on the PD's input
//!   capability, badges decoded into notifications and protected procedure calls
//!   ([`abi::Event`]), a [`event::Handler`] with `notified` and `protected`;
//! - protected procedure calls with protocol bytes in message registers ([`message`],
//!   [`transport::PpcTransport`]), notify, IRQ acknowledge, notification polling;
//! - the debug console (`seL4_DebugPutChar`, debug kernels), a defmt logger whose frames go out
//!   on it as text lines the QEMU runner decodes, and a panic handler.
//!
//! Split: [`abi`], [`message`], [`event`], [`transport`], [`serve`], [`memory`] and [`system`]
//! are plain Rust, built and tested on the host (the dispatch logic: badge to handler, registers to request bytes).
//! Only `sys` (the system calls: inline `svc #0`) and `pd` (entry, patched symbols, console,
//! logger, panic) touch the kernel, on `aarch64-unknown-none` with the `microkit` feature.
//!
//! The ABI facts relied on are written in [`abi`], each with its source.

pub mod abi;
pub mod event;
pub mod memory;
pub mod message;
pub mod serve;
pub mod system;
pub mod transport;

#[cfg(all(target_os = "none", target_arch = "aarch64", feature = "microkit"))]
pub mod pd;
#[cfg(all(target_os = "none", target_arch = "aarch64", feature = "microkit"))]
pub mod sys;
/// The generic timer's physical counter as a clock and a `DelayNs` (the bare-metal aarch64
/// runtime's module, shared). A PD runs at EL0: it may read `CNTPCT_EL0` and `CNTFRQ_EL0`
/// because Microkit builds its AArch64 kernels with the physical counter exported to user
/// level (`KernelArmExportPCNTUser` in the SDK's kernel options).
#[cfg(all(target_os = "none", target_arch = "aarch64", feature = "microkit"))]
#[path = "../aarch64/time.rs"]
pub mod time;

pub use abi::{Channel, ChannelSet, MsgInfo};
pub use event::{EventLoop, Handler, Kernel};
pub use transport::PpcTransport;
