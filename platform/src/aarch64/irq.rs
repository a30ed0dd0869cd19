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
