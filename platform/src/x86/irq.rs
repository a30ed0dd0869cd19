//! Interrupt masking (RFLAGS.IF, bit 9): the defmt logger's and [`crate::without_interrupts`]'s
//! critical sections, and taking interrupts while an image waits for them.

use core::arch::asm;

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// Disables interrupts and returns RFLAGS as it was.
pub fn save_and_mask() -> u64 {
    let flags: u64;
    // SAFETY: reads RFLAGS and disables interrupts; no memory is touched besides the stack.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    flags
}

/// Re-enables interrupts if they were enabled in `flags` (from [`save_and_mask`]).
pub fn restore(flags: u64) {
    if flags & RFLAGS_IF != 0 {
        // SAFETY: re-enables interrupts that were enabled before `save_and_mask`.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// Lets the CPU take interrupts (`sti`).
pub fn enable() {
    // SAFETY: sets RFLAGS.IF; the IDT handles every vector (see `super::idt`).
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Stops the CPU from taking interrupts (`cli`).
pub fn disable() {
    // SAFETY: clears RFLAGS.IF; no memory is touched.
    unsafe { asm!("cli", options(nomem, nostack)) };
}
