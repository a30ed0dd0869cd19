//! The NS16550A UART of QEMU virt at 0x1000_0000 (byte registers; National Semiconductor
//! PC16550D data sheet): THR 0 (transmit), IER 1, FCR 2, LCR 3, LSR 5 (bit 5 THRE: the
//! transmit holding register is empty). QEMU ignores the divisor, so it is not programmed.
//!
//! The machine has one UART, so it carries both of the runtime's channels ([`crate::rt`]):
//! plain console text and the defmt stream. They are told apart by bytes text never
//! contains: a defmt frame is sent as [`FRAME_START`] (0xFF, never in UTF-8), the frame's
//! rzCOBS bytes (never 0) and its 0x00 terminator. Zeros before the frame's first data byte
//! (the encoder's separator at the very start of the stream) belong to the frame too.
//! Console text between frames is passed through. The QEMU runner splits the stream the same
//! way. Console text that interrupts an open frame (a panic or trap while a frame is
//! written) first closes the frame with 0x00, so the text still reads as text (the cut frame
//! is reported as malformed).

use core::sync::atomic::{AtomicU8, Ordering};

use crate::rt::Serial;

/// The byte that opens a defmt frame on the shared UART.
pub const FRAME_START: u8 = 0xff;

const THR: usize = 0;
const IER: usize = 1;
const FCR: usize = 2;
const LCR: usize = 3;
const LSR: usize = 5;
/// LSR.THRE: room in the transmitter.
const LSR_THRE: u8 = 1 << 5;

/// No defmt frame is open.
const CLOSED: u8 = 0;
/// A frame is open, no data byte sent yet (a zero does not close it).
const OPENED: u8 = 1;
/// A frame is open and has data (the next zero closes it).
const IN_DATA: u8 = 2;
/// The state of the defmt frame on the UART.
static FRAME: AtomicU8 = AtomicU8::new(CLOSED);

/// Which channel of the one UART a handle writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Console,
    Defmt,
}

/// One channel of the 16550.
#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: usize,
    channel: Channel,
}

impl Uart {
    /// The console (plain text: boot messages, panics, traps).
    pub const CONSOLE: Uart = Uart {
        base: 0x1000_0000,
        channel: Channel::Console,
    };
    /// The defmt channel (framed as the module documentation says).
    pub const DEFMT: Uart = Uart {
        base: 0x1000_0000,
        channel: Channel::Defmt,
    };

    fn write_reg(self, offset: usize, value: u8) {
        // SAFETY: the 16550 register block of QEMU virt, owned by this runtime; M-mode
        // accesses physical addresses directly.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) }
    }

    fn read_reg(self, offset: usize) -> u8 {
        // SAFETY: as in `write_reg`.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) }
    }

    /// Programs 8N1 with FIFOs on and interrupts off.
    pub fn init(self) {
        self.write_reg(IER, 0);
        self.write_reg(LCR, 0b11);
        self.write_reg(FCR, 0b111);
    }

    fn put(self, byte: u8) {
        for _ in 0..100_000 {
            if self.read_reg(LSR) & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.write_reg(THR, byte);
    }
}

impl Serial for Uart {
    /// Sends one byte, waiting (boundedly) for room in the transmitter.
    fn write_byte(self, byte: u8) {
        match self.channel {
            Channel::Console => {
                if FRAME.swap(CLOSED, Ordering::Relaxed) == IN_DATA {
                    self.put(0);
                }
                self.put(byte);
            }
            Channel::Defmt => {
                self.put(byte);
                let state = FRAME.load(Ordering::Relaxed);
                if byte != 0 {
                    FRAME.store(IN_DATA, Ordering::Relaxed);
                } else if state == IN_DATA {
                    FRAME.store(CLOSED, Ordering::Relaxed);
                }
            }
        }
    }

    /// Opens a defmt frame: [`FRAME_START`].
    fn begin_frame(self) {
        if self.channel == Channel::Defmt {
            self.put(FRAME_START);
            FRAME.store(OPENED, Ordering::Relaxed);
        }
    }
}
