//! The defmt global logger: rzCOBS-framed defmt frames on UART1, decoded on the host by the
//! QEMU runner (test-harness `qemu` binary) with the image's ELF. Same design as the x86_64
//! runtime's logger, with DAIF in place of RFLAGS.IF.
//!
//! The critical section masks all four exception classes (DAIF, saved and restored). A nested
//! acquire (logging from an exception handler while a frame is open) would corrupt the frame
//! stream, so it panics, and the panic goes to the console.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use super::serial::Uart;

#[defmt::global_logger]
struct Logger;

static TAKEN: AtomicBool = AtomicBool::new(false);
static mut SAVED_DAIF: u64 = 0;
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn encoder() -> *mut defmt::Encoder {
    &raw mut ENCODER
}

fn emit(bytes: &[u8]) {
    Uart::DEFMT.write_bytes(bytes);
}

// SAFETY: acquire/release bracket every frame with DAIF masked on the only CPU, and TAKEN
// refuses nesting, so the encoder is never used concurrently.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let daif: u64;
        // SAFETY: reads DAIF and masks D, A, I and F; no memory is touched.
        unsafe {
            asm!("mrs {}, daif", "msr daifset, #0xf", out(reg) daif, options(nomem, nostack))
        };
        if TAKEN.swap(true, Ordering::Acquire) {
            panic!("defmt logger re-entered");
        }
        // SAFETY: TAKEN is ours and exceptions are masked: exclusive access.
        unsafe {
            SAVED_DAIF = daif;
            (*encoder()).start_frame(emit);
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire` by defmt's contract: exclusive access.
        let daif = unsafe {
            (*encoder()).end_frame(emit);
            SAVED_DAIF
        };
        TAKEN.store(false, Ordering::Release);
        // SAFETY: restores the mask bits saved by `acquire`.
        unsafe { asm!("msr daif, {}", in(reg) daif, options(nomem, nostack)) };
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: inside acquire/release by defmt's contract: exclusive access.
        unsafe { (*encoder()).write(bytes, emit) };
    }
}

defmt::timestamp!("{=u64:us}", super::time::micros());
