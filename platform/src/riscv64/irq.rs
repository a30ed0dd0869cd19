//! Interrupt masking for the defmt logger's critical section: `mstatus.MIE` (privileged spec
//! 3.1.6.1).

use core::arch::asm;

/// `mstatus.MIE`.
const MIE: u64 = 1 << 3;

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
