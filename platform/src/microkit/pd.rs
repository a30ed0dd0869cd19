//! Entry of a protection domain, the symbols the Microkit tool patches, the debug console,
//! the defmt logger over it, and the panic handler.
//!
//! Entry (manual, "Protection Domains"; the tool's capDL builder): the PD's thread starts at
//! the ELF entry point `_start` with the stack pointer at the top of the PD's stack
//! (`stack_size` in the system description) and the IPC buffer one guard page above it, with
//! FP/SIMD available (`fpu`, default true). The ELF's loadable segments
//! are mapped with their permissions; `.bss` is zero. `_start` records the IPC buffer, starts
//! the counter clock and calls the PD's main function, named with [`crate::pd_main!`].
//!
//! Patched symbols (the tool writes them into the ELF image before building the system; it
//! refuses an image that lacks one): `microkit_name` (64 bytes, the PD's name),
//! `microkit_passive` (1 byte), and the 64-bit channel masks `microkit_irqs`,
//! `microkit_notifications`, `microkit_pps`, `microkit_ioports`. A `<setvar>` or
//! `setvar_vaddr` symbol is an 8-byte word the PD defines with [`crate::microkit_setvar!`].
//! All are read with volatile loads: the compiler must not fold their link-time zeros.
//!
//! Console: `seL4_DebugPutChar` (kernels built with printing: Microkit's `debug`
//! configuration). Plain text lines, and defmt frames as lines `~<pd name>:<hex bytes>`, one
//! frame per line (defmt's rzCOBS encoding, its zero terminator included), which the QEMU
//! runner decodes with the PD's ELF. One line is written without interruption by this PD;
//! a higher-priority PD (or the kernel) may still print in the middle of it, so PDs log
//! from one thread of control at a time (the server logs from its calls, not its interrupt
//! path).

use core::sync::atomic::{AtomicBool, Ordering};

use super::abi::{ChannelSet, symbols};
use super::sys::{self, Masks};

/// Declares a word the Microkit tool patches (`setvar_vaddr`, `<setvar region_paddr>`, ...):
/// `microkit_setvar!(symbol => getter)` defines `#[no_mangle] static mut symbol: u64` and a
/// function `getter()` that reads it.
#[macro_export]
macro_rules! microkit_setvar {
    ($symbol:ident => $getter:ident) => {
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        static mut $symbol: u64 = 0;

        fn $getter() -> u64 {
            // SAFETY: the tool wrote the word into the image; nothing writes it at run time.
            unsafe { (&raw const $symbol).read_volatile() }
        }
    };
}

/// Names the PD's main function: `pd_main!(main)` with `fn main(pd: Pd) -> !`.
#[macro_export]
macro_rules! pd_main {
    ($main:path) => {
        #[unsafe(export_name = "__iommu_microkit_main")]
        fn __iommu_microkit_entry(pd: $crate::microkit::pd::Pd) -> ! {
            let main: fn($crate::microkit::pd::Pd) -> ! = $main;
            main(pd)
        }
    };
}

/// Prints a line of plain text on the debug console.
#[macro_export]
macro_rules! pd_println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::microkit::pd::Console, $($arg)*);
    }};
}

#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_name: [u8; symbols::NAME_LEN] = [0; symbols::NAME_LEN];
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_passive: u8 = 0;
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_irqs: u64 = 0;
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_notifications: u64 = 0;
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_pps: u64 = 0;
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
static mut microkit_ioports: u64 = 0;

/// What the system description gave this PD, as the tool patched it.
#[derive(Clone, Copy, Debug)]
pub struct Pd {
    /// The channel masks.
    pub masks: Masks,
    /// Whether the PD is passive (this runtime does not support passive PDs: it reports it).
    pub passive: bool,
    /// The counter's frequency (Hz) and its source: `CNTFRQ_EL0`, readable at EL0 on
    /// Microkit's AArch64 kernels, which export the physical counter to user level (a PD has
    /// no device tree; an implausible register value falls back to waits that err long).
    pub counter: crate::clock::Rate,
}

impl Pd {
    /// The PD's name from the system description.
    pub fn name(&self) -> &'static str {
        name()
    }

    /// The kernel interface, checking channels against this PD's masks.
    pub fn kernel(&self) -> sys::Sel4 {
        sys::Sel4::new(self.masks)
    }
}

/// The PD's name (up to the first NUL of `microkit_name`).
pub fn name() -> &'static str {
    let name: *const [u8; symbols::NAME_LEN] = &raw const microkit_name;
    // SAFETY: the tool wrote the name before boot; nothing writes it at run time, so a shared
    // reference for the program's lifetime is sound.
    let bytes: &'static [u8; symbols::NAME_LEN] = unsafe { &*name };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..len]).unwrap_or("?")
}

fn read_word(p: *const u64) -> u64 {
    // SAFETY: `p` points at one of the patched words above; nothing writes them at run time.
    unsafe { p.read_volatile() }
}

fn patched() -> Pd {
    let masks = Masks {
        irqs: ChannelSet(read_word(&raw const microkit_irqs)),
        notifications: ChannelSet(read_word(&raw const microkit_notifications)),
        pps: ChannelSet(read_word(&raw const microkit_pps)),
    };
    // microkit_ioports is x86-only; it is read so the symbol stays in the image.
    let _ = read_word(&raw const microkit_ioports);
    // SAFETY: as in `read_word`, one byte.
    let passive = unsafe { (&raw const microkit_passive).read_volatile() } != 0;
    Pd {
        masks,
        passive,
        counter: crate::clock::Rate {
            value: crate::clock::COUNTER_FALLBACK_HZ,
            source: crate::clock::Source::Fallback,
        },
    }
}

core::arch::global_asm!(
    r#"
    .pushsection .text.start, "ax"
    .global _start
_start:
    mov x29, #0
    mov x30, #0
    mov x0, sp
    bl {entry}
1:  b 1b
    .popsection
    "#,
    entry = sym rust_start,
);

unsafe extern "Rust" {
    /// The PD's main function, defined by [`crate::pd_main!`].
    fn __iommu_microkit_main(pd: Pd) -> !;
}

/// Page size of the IPC buffer and the guard page below it.
const PAGE: usize = 4096;

extern "C" fn rust_start(initial_sp: usize) -> ! {
    sys::set_ipc_buffer(initial_sp + PAGE);
    let mut pd = patched();
    pd.counter = super::time::init(None);
    if pd.passive {
        crate::pd_println!(
            "{}: passive PDs are not supported by this runtime (remove passive=\"true\")",
            pd.name()
        );
    }
    // SAFETY: `pd_main!` defines the function with exactly this signature.
    unsafe { __iommu_microkit_main(pd) }
}

/// The debug console as a `core::fmt::Write`.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        sys::debug_put(s.as_bytes());
        Ok(())
    }
}

/// Whether a panic is being reported (a panic while reporting stops at once).
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if !PANICKING.swap(true, Ordering::Relaxed) {
        crate::pd_println!("PANIC in PD '{}': {}", name(), info);
    }
    // Stop with a fault the Microkit monitor reports for this PD: a read of address 0, which
    // no PD maps (libmicrokit's `microkit_internal_crash` does the same).
    // SAFETY: the read faults; the thread never continues past it.
    unsafe { core::ptr::null::<u64>().read_volatile() };
    loop {
        core::hint::spin_loop();
    }
}

// --- defmt over the debug console ---

#[defmt::global_logger]
struct Logger;

/// Set while a frame is being written (a PD is one thread: only a panic inside the logger
/// could nest, and it is refused).
static TAKEN: AtomicBool = AtomicBool::new(false);
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn encoder() -> *mut defmt::Encoder {
    &raw mut ENCODER
}

/// Writes encoded frame bytes as hex digits.
fn emit(bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        sys::debug_put_char(HEX[usize::from(b >> 4)]);
        sys::debug_put_char(HEX[usize::from(b & 0xf)]);
    }
}

// SAFETY: a PD is single-threaded and TAKEN refuses nesting, so the encoder is never used
// concurrently.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        if TAKEN.swap(true, Ordering::Acquire) {
            panic!("defmt logger re-entered");
        }
        sys::debug_put_char(b'~');
        sys::debug_put(name().as_bytes());
        sys::debug_put_char(b':');
        // SAFETY: TAKEN is ours: exclusive access.
        unsafe { (*encoder()).start_frame(emit) };
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: after `acquire` by defmt's contract: exclusive access.
        unsafe { (*encoder()).end_frame(emit) };
        sys::debug_put_char(b'\n');
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: inside acquire/release by defmt's contract: exclusive access.
        unsafe { (*encoder()).write(bytes, emit) };
    }
}

defmt::timestamp!("{=u64:us}", super::time::micros());
