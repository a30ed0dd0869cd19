//! The defmt global logger: rzCOBS-framed defmt frames on COM2, decoded on the host by the
//! QEMU runner (test-harness `qemu` binary) with the image's ELF.
//!
//! The critical section disables interrupts (saved and restored RFLAGS.IF). A nested acquire
//! (logging from an exception while a frame is open) cannot happen with interrupts off; if it
//! did, the frame stream would be corrupt, so it panics, and the panic goes to the console.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use super::serial::Uart;

#[defmt::global_logger]
struct Logger;

static TAKEN: AtomicBool = AtomicBool::new(false);
static mut SAVED_FLAGS: u64 = 0;
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn encoder() -> *mut defmt::Encoder {
    &raw mut ENCODER
}

fn emit(bytes: &[u8]) {
    Uart::COM2.write_bytes(bytes);
}

// SAFETY: acquire/release bracket every frame with interrupts disabled on the only CPU, and
// TAKEN refuses nesting, so the encoder is never used concurrently.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let flags: u64;
        // SAFETY: reads RFLAGS and disables interrupts; no memory is touched besides the stack.
        unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
        if TAKEN.swap(true, Ordering::Acquire) {
            panic!("defmt logger re-entered");
        }
        // SAFETY: TAKEN is ours and interrupts are off: exclusive access.
        unsafe {
            SAVED_FLAGS = flags;
            (*encoder()).start_frame(emit);
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire` by defmt's contract: exclusive access.
        let flags = unsafe {
            (*encoder()).end_frame(emit);
            SAVED_FLAGS
        };
        TAKEN.store(false, Ordering::Release);
        if flags & (1 << 9) != 0 {
            // SAFETY: re-enables interrupts that were enabled before `acquire`.
            unsafe { asm!("sti", options(nomem, nostack)) };
        }
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: inside acquire/release by defmt's contract: exclusive access.
        unsafe { (*encoder()).write(bytes, emit) };
    }
}

defmt::timestamp!("{=u64:us}", super::time::micros());
