//! Arm PL011 UARTs (PrimeCell UART, ARM DDI 0183): on QEMU virt, UART0 at 0x0900_0000 is the
//! plain-text console and UART1 at 0x0904_0000 (created by QEMU when a second `-serial` is
//! given and the machine has no secure world) carries the defmt byte stream (see [`crate::rt`]).
//!
//! Registers used: UARTDR 0x000 (data), UARTFR 0x018 (flags; bit 5 TXFF = transmit FIFO full),
//! UARTLCR_H 0x02c (bits 6:5 WLEN, bit 4 FEN), UARTCR 0x030 (bit 0 UARTEN, bit 8 TXE). QEMU
//! ignores the baud-rate divisors, so they are not programmed.

use crate::rt::Serial;

const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;
const UARTLCR_H: usize = 0x02c;
const UARTCR: usize = 0x030;
const UARTIMSC: usize = 0x038;
/// UARTFR.TXFF: the transmit FIFO is full.
const FR_TXFF: u32 = 1 << 5;

/// One PL011.
#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: usize,
}

impl Uart {
    /// UART0: the console (plain text: boot messages, panics, exceptions).
    pub const CONSOLE: Uart = Uart { base: 0x0900_0000 };
    /// UART1: the defmt channel (binary rzCOBS frames, nothing else).
    pub const DEFMT: Uart = Uart { base: 0x0904_0000 };

    fn write_reg(self, offset: usize, value: u32) {
        // SAFETY: the PL011 register blocks of QEMU virt, identity mapped as device memory by
        // the boot code and owned by this runtime.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn read_reg(self, offset: usize) -> u32 {
        // SAFETY: as in `write_reg`.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    /// Programs 8N1 with FIFOs on, interrupts off, transmitter and receiver enabled.
    pub fn init(self) {
        self.write_reg(UARTCR, 0);
        self.write_reg(UARTIMSC, 0);
        self.write_reg(UARTLCR_H, 0b11 << 5 | 1 << 4);
        self.write_reg(UARTCR, 1 | 1 << 8 | 1 << 9);
    }
}

impl Serial for Uart {
    /// Sends one byte, waiting (boundedly) for room in the transmit FIFO.
    fn write_byte(self, byte: u8) {
        for _ in 0..100_000 {
            if self.read_reg(UARTFR) & FR_TXFF == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.write_reg(UARTDR, u32::from(byte));
    }
}
