//! x86 port I/O.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device this runtime drives, and the write must not break memory
/// safety (e.g. by starting a DMA into memory Rust code uses).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`] (reads may have side effects).
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller's contract.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes 32 bits to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads 32 bits from an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller's contract.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}
