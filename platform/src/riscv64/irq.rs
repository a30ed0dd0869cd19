//! Interrupt masking for the defmt logger's critical section and the fault-interrupt path:
//! `mstatus.MIE` and `mie.MEIE` (privileged spec 3.1.6.1, 3.1.9).

use core::arch::asm;

/// `mstatus.MIE`.
const MIE: u64 = 1 << 3;
/// `mie.MEIE`: machine external interrupts (the PLIC's machine-mode context).
const MEIE: u64 = 1 << 11;

/// Clears `mstatus.MIE` and returns `mstatus` as it was.
pub fn save_and_mask() -> u64 {
    let mstatus: u64;
    // SAFETY: reads mstatus and clears MIE; no memory is touched.
    unsafe { asm!("csrrci {}, mstatus, 8", out(reg) mstatus, options(nomem, nostack)) };
    mstatus
}

/// Sets `mstatus.MIE` again if `mstatus` (from [`save_and_mask`]) had it set.
pub fn restore(mstatus: u64) {
    if mstatus & MIE != 0 {
        // SAFETY: sets MIE, as it was before `save_and_mask`; no memory is touched.
        unsafe { asm!("csrsi mstatus, 8", options(nomem, nostack)) };
    }
}

/// Lets the hart take machine external interrupts (`mie.MEIE`, then `mstatus.MIE`).
pub fn enable() {
    // SAFETY: enables the PLIC's interrupt; the trap vector handles it (see `super::trap`).
    unsafe {
        asm!("csrs mie, {}", in(reg) MEIE, options(nomem, nostack));
        asm!("csrsi mstatus, 8", options(nomem, nostack));
    }
}

/// Stops the hart from taking interrupts (`mstatus.MIE`, then `mie.MEIE`).
pub fn disable() {
    // SAFETY: masks interrupts; no memory is touched.
    unsafe {
        asm!("csrci mstatus, 8", options(nomem, nostack));
        asm!("csrc mie, {}", in(reg) MEIE, options(nomem, nostack));
    }
}
