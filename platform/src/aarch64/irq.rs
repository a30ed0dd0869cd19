//! Interrupt masking for the defmt logger's critical section: all four exception classes
//! (PSTATE.DAIF).

use core::arch::asm;

/// Masks D, A, I and F and returns DAIF as it was.
pub fn save_and_mask() -> u64 {
    let daif: u64;
    // SAFETY: reads DAIF and masks D, A, I and F; no memory is touched.
    unsafe { asm!("mrs {}, daif", "msr daifset, #0xf", out(reg) daif, options(nomem, nostack)) };
    daif
}

/// Restores the mask bits `daif` (from [`save_and_mask`]).
pub fn restore(daif: u64) {
    // SAFETY: restores the mask bits saved by `save_and_mask`.
    unsafe { asm!("msr daif, {}", in(reg) daif, options(nomem, nostack)) };
}

/// Lets the CPU take IRQs (clears PSTATE.I).
pub fn enable() {
    // SAFETY: unmasks IRQs; the vector table handles them (see `super::exceptions`).
    unsafe { asm!("msr daifclr, #2", options(nomem, nostack)) };
}

/// Stops the CPU from taking IRQs (sets PSTATE.I).
pub fn disable() {
    // SAFETY: masks IRQs; no memory is touched.
    unsafe { asm!("msr daifset, #2", options(nomem, nostack)) };
}
