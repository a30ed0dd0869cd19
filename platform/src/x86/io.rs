//! x86 port I/O, through the `x86_64` crate's `Port`.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device this runtime drives, and the write must not break memory
/// safety (e.g. by starting a DMA into memory Rust code uses).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller's contract.
    unsafe { Port::new(port).write(value) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`] (reads may have side effects).
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: the caller's contract.
    unsafe { Port::new(port).read() }
}

/// Writes 32 bits to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller's contract.
    unsafe { Port::new(port).write(value) }
}

/// Reads 32 bits from an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { Port::new(port).read() }
}
