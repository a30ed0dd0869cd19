//! Time: the generic timer's physical counter (CNTPCT_EL0) at the frequency in CNTFRQ_EL0
//! (Arm ARM D11.1), for bounded waits (`DelayNs`) and defmt timestamps. No calibration is
//! needed: firmware (here QEMU) programs CNTFRQ_EL0.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use embedded_hal::delay::DelayNs;

/// Counter ticks per second, read from CNTFRQ_EL0 by [`init`].
static FREQ: AtomicU64 = AtomicU64::new(FALLBACK_HZ);
/// Counter value at [`init`]: the zero of [`micros`].
static ZERO: AtomicU64 = AtomicU64::new(0);
/// Assumed frequency when CNTFRQ_EL0 reads 0: 10 GHz, above any real counter, so waits last
/// longer than asked, never shorter.
const FALLBACK_HZ: u64 = 10_000_000_000;

/// Reads the physical counter (after an ISB, so it is not read early).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reads a system register that EL1 may read; no memory is touched.
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// The counter frequency CNTFRQ_EL0 says.
pub fn frequency_register() -> u64 {
    let v: u64;
    // SAFETY: reads a system register; no memory is touched.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Reads the frequency and sets the zero of [`micros`]. Returns the frequency in Hz (`None`
/// when CNTFRQ_EL0 is 0 and the fallback is in force).
pub fn init() -> Option<u64> {
    let hz = frequency_register() & 0xffff_ffff;
    ZERO.store(counter(), Ordering::Relaxed);
    if hz == 0 {
        return None;
    }
    FREQ.store(hz, Ordering::Relaxed);
    Some(hz)
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
