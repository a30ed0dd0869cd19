//! Interrupt masking (RFLAGS.IF, bit 9): the defmt logger's and [`crate::without_interrupts`]'s
//! critical sections, and taking interrupts while an image waits for them. Through the
//! `x86_64` crate (`pushfq`, `cli`, `sti`).

use x86_64::instructions::interrupts;
use x86_64::registers::rflags;

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// Disables interrupts and returns RFLAGS as it was.
pub fn save_and_mask() -> u64 {
    let flags = rflags::read_raw();
    interrupts::disable();
    flags
}

/// Re-enables interrupts if they were enabled in `flags` (from [`save_and_mask`]).
pub fn restore(flags: u64) {
    if flags & RFLAGS_IF != 0 {
        interrupts::enable();
    }
}

/// Lets the CPU take interrupts (`sti`). The IDT handles every vector (see `super::idt`).
pub fn enable() {
    interrupts::enable();
}

/// Stops the CPU from taking interrupts (`cli`).
pub fn disable() {
    interrupts::disable();
}
