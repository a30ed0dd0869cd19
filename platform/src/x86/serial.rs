//! 16550 UARTs on the legacy ports: COM1 (0x3f8) is the plain-text console, COM2 (0x2f8)
//! carries the defmt byte stream (see [`crate::rt`]).
//!
//! Register offsets from the PC16550D datasheet: 0 THR/DLL, 1 IER/DLM, 2 FCR, 3 LCR, 4 MCR,
//! 5 LSR (bit 5 = transmit holding register empty).

use super::io::{inb, outb};
use crate::rt::Serial;

/// One UART.
#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// COM1: the console (plain text: boot messages, panics, exceptions).
    pub const CONSOLE: Uart = Uart { base: 0x3f8 };
    /// COM2: the defmt channel (binary rzCOBS frames, nothing else).
    pub const DEFMT: Uart = Uart { base: 0x2f8 };

    /// Programs 115200 8N1 with FIFOs on and interrupts off.
    pub fn init(self) {
        let b = self.base;
        // SAFETY: the COM ports are owned by this runtime; programming them touches no memory.
        unsafe {
            outb(b + 1, 0x00); // IER: no interrupts
            outb(b + 3, 0x80); // LCR: DLAB on
            outb(b, 0x01); // DLL: divisor 1 = 115200 baud
            outb(b + 1, 0x00); // DLM
            outb(b + 3, 0x03); // LCR: 8 bits, no parity, 1 stop bit, DLAB off
            outb(b + 2, 0xc7); // FCR: enable and clear FIFOs
            outb(b + 4, 0x03); // MCR: DTR, RTS
        }
    }
}

impl Serial for Uart {
    /// Sends one byte, waiting (boundedly) for room in the transmitter.
    fn write_byte(self, byte: u8) {
        // SAFETY: as in `init`.
        unsafe {
            for _ in 0..100_000 {
                if inb(self.base + 5) & 0x20 != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            outb(self.base, byte);
        }
    }
}
