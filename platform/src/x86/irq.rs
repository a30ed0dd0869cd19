//! Interrupt masking for the defmt logger's critical section (RFLAGS.IF, bit 9).

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
