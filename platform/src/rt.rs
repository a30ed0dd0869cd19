//! What the bare-metal runtimes share, written once over [`crate::arch`]: the plain-text
//! console ([`console!`](crate::console)), the defmt global logger, the panic handler and
//! [`entry!`](crate::entry).
//!
//! Each architecture supplies only its hardware: a [`Serial`] UART type with a `CONSOLE` and a
//! `DEFMT` port (`arch::serial::Uart`), interrupt masking (`arch::irq`), the time source
//! (`arch::time::micros`), the exit device (`arch::exit_failure`) and its `BootInfo`.
//!
//! The logger writes rzCOBS-framed defmt frames on the defmt UART, decoded on the host by the
//! QEMU runner (test-harness `qemu` binary) with the image's ELF. Its critical section masks
//! interrupts (the previous mask saved and restored). A nested acquire (logging from an
//! exception handler while a frame is open) would corrupt the frame stream, so it panics, and
//! the panic goes to the console.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;
use crate::arch::serial::Uart;

/// Writes an optional address in hex (`0x2000` or `none`) into a defmt message.
pub fn hex_opt(f: defmt::Formatter<'_>, value: Option<u64>) {
    match value {
        Some(v) => defmt::write!(f, "{=u64:#x}", v),
        None => defmt::write!(f, "none"),
    }
}

/// A UART that sends bytes (boundedly waiting for room).
pub trait Serial: Copy {
    /// Sends one byte.
    fn write_byte(self, byte: u8);

    /// Sends bytes.
    fn write_bytes(self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// Marks the start of a defmt frame, on a port that shares its UART with the console
    /// (riscv64: see `riscv64::serial`). Ports of their own need nothing.
    fn begin_frame(self) {}
}

/// Formatted text on a [`Serial`] port.
pub struct Console<S>(pub S);

impl<S: Serial> fmt::Write for Console<S> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints a line of plain text on the console UART, stamped `[micros] ` with the clock defmt's
/// timestamps use, so that the runner can show console and defmt lines in the order they were
/// written.
#[macro_export]
macro_rules! console {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut console = $crate::rt::Console($crate::arch::serial::Uart::CONSOLE);
        let _ = write!(console, "[{}] ", $crate::arch::time::micros());
        let _ = writeln!(console, $($arg)*);
    }};
}

/// Names the image's main function: `entry!(main)` with `fn main(boot: BootInfo) -> !`
/// (`BootInfo` of the architecture's runtime).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(export_name = "__iommu_platform_main")]
        fn __iommu_platform_entry(boot: $crate::arch::BootInfo) -> ! {
            let main: fn($crate::arch::BootInfo) -> ! = $main;
            main(boot)
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::console!("PANIC: {}", info);
    arch::exit_failure()
}

#[defmt::global_logger]
struct Logger;

static TAKEN: AtomicBool = AtomicBool::new(false);
/// The interrupt mask `acquire` found, restored by `release`.
static mut SAVED_MASK: u64 = 0;
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn encoder() -> *mut defmt::Encoder {
    &raw mut ENCODER
}

fn emit(bytes: &[u8]) {
    Uart::DEFMT.write_bytes(bytes);
}

// SAFETY: acquire/release bracket every frame with interrupts masked on the only CPU, and
// TAKEN refuses nesting, so the encoder is never used concurrently.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let mask = arch::irq::save_and_mask();
        if TAKEN.swap(true, Ordering::Acquire) {
            panic!("defmt logger re-entered");
        }
        Uart::DEFMT.begin_frame();
        // SAFETY: TAKEN is ours and interrupts are masked: exclusive access.
        unsafe {
            SAVED_MASK = mask;
            (*encoder()).start_frame(emit);
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire` by defmt's contract: exclusive access.
        let mask = unsafe {
            (*encoder()).end_frame(emit);
            SAVED_MASK
        };
        TAKEN.store(false, Ordering::Release);
        arch::irq::restore(mask);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: inside acquire/release by defmt's contract: exclusive access.
        unsafe { (*encoder()).write(bytes, emit) };
    }
}

defmt::timestamp!("{=u64:us}", arch::time::micros());
