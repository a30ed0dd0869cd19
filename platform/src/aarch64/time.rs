//! Time: the generic timer's physical counter (CNTPCT_EL0) for bounded waits (`DelayNs`) and
//! defmt timestamps (Arm ARM D11.1). Its frequency is what firmware programmed into
//! CNTFRQ_EL0, unless the device tree's timer node says otherwise with `clock-frequency`;
//! either is used only when plausible, else waits err on the long side (see
//! [`crate::clock::choose_counter`]).

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, Readable};

use embedded_hal::delay::DelayNs;

use crate::clock::{self, Rate};

/// Counter ticks per second, chosen by [`init`].
static FREQ: AtomicU64 = AtomicU64::new(clock::COUNTER_FALLBACK_HZ);
/// Counter value at [`init`]: the zero of [`micros`].
static ZERO: AtomicU64 = AtomicU64::new(0);

/// Reads the physical counter (after an ISB, so it is not read early).
pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTPCT_EL0.get()
}

/// The counter frequency CNTFRQ_EL0 says.
pub fn frequency_register() -> u64 {
    CNTFRQ_EL0.get()
}

/// Chooses the frequency from CNTFRQ_EL0 and the device tree's `clock-frequency` of the timer
/// (`device_tree`, when there is one) and sets the zero of [`micros`]. Returns the frequency
/// in Hz and where it came from.
pub fn init(device_tree: Option<u64>) -> Rate {
    let rate = clock::choose_counter(frequency_register(), device_tree);
    ZERO.store(counter(), Ordering::Relaxed);
    FREQ.store(rate.value, Ordering::Relaxed);
    rate
}

/// Microseconds since [`init`].
pub fn micros() -> u64 {
    let ticks = counter().wrapping_sub(ZERO.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(FREQ.load(Ordering::Relaxed))) as u64
}

/// A busy-waiting delay on the generic timer's physical counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterDelay;

impl DelayNs for CounterDelay {
    fn delay_ns(&mut self, ns: u32) {
        let hz = FREQ.load(Ordering::Relaxed);
        let ticks = (u128::from(ns) * u128::from(hz)).div_ceil(1_000_000_000) as u64;
        let start = counter();
        while counter().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}
