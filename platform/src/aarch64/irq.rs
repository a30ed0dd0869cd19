//! Interrupt masking for the defmt logger's critical section: all four exception classes
//! (PSTATE.DAIF), through `aarch64-cpu`'s DAIF register.

use aarch64_cpu::registers::{DAIF, ReadWriteable, Readable, Writeable};

/// Masks D, A, I and F and returns DAIF as it was.
pub fn save_and_mask() -> u64 {
    let daif = DAIF.get();
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    daif
}

/// Restores the mask bits `daif` (from [`save_and_mask`]).
pub fn restore(daif: u64) {
    DAIF.set(daif);
}

/// Lets the CPU take IRQs (clears PSTATE.I). The vector table handles them (see
/// `super::exceptions`).
pub fn enable() {
    DAIF.modify(DAIF::I::Unmasked);
}

/// Stops the CPU from taking IRQs (sets PSTATE.I).
pub fn disable() {
    DAIF.modify(DAIF::I::Masked);
}
