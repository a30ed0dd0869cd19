//! Time: the CLINT's `mtime` counter (SiFive CLINT / RISC-V ACLINT MTIMER: a 64-bit counter
//! at offset 0xbff8 of the CLINT) at the device tree's `/cpus/timebase-frequency` (when
//! plausible: [`crate::clock::choose_timebase`]), for bounded waits (`DelayNs`) and defmt
//! timestamps. The CLINT's address comes from the device tree too; QEMU virt's (0x0200_0000)
//! is used until then.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use embedded_hal::delay::DelayNs;

use crate::clock::{self, Rate};

/// Offset of `mtime` in the CLINT.
const MTIME: usize = 0xbff8;
/// The CLINT of QEMU virt, used when the device tree names none.
const DEFAULT_CLINT: usize = 0x0200_0000;

static CLINT: AtomicUsize = AtomicUsize::new(DEFAULT_CLINT);
static FREQ: AtomicU64 = AtomicU64::new(clock::COUNTER_FALLBACK_HZ);
/// Counter value at [`init`]: the zero of [`micros`].
static ZERO: AtomicU64 = AtomicU64::new(0);

/// Reads `mtime`.
pub fn counter() -> u64 {
    let base = CLINT.load(Ordering::Relaxed);
    // SAFETY: the CLINT's mtime register (from the device tree or QEMU virt's fixed address);
    // an aligned 64-bit read of a read-only counter.
    unsafe { core::ptr::read_volatile((base + MTIME) as *const u64) }
}

/// Takes the CLINT's base and the timebase from the device tree (either may be missing; an
/// implausible or missing timebase gives the long-side fallback) and sets the zero of
/// [`micros`]. Returns the rate and where it came from.
pub fn init(clint: Option<u64>, timebase_hz: Option<u64>) -> Rate {
    if let Some(base) = clint {
        CLINT.store(base as usize, Ordering::Relaxed);
    }
    let rate = clock::choose_timebase(timebase_hz);
    FREQ.store(rate.value, Ordering::Relaxed);
    ZERO.store(counter(), Ordering::Relaxed);
    rate
}

/// Microseconds since [`init`].
pub fn micros() -> u64 {
    let ticks = counter().wrapping_sub(ZERO.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(FREQ.load(Ordering::Relaxed))) as u64
}

/// A busy-waiting delay on `mtime`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MtimeDelay;

impl DelayNs for MtimeDelay {
    fn delay_ns(&mut self, ns: u32) {
        let hz = FREQ.load(Ordering::Relaxed);
        let ticks = (u128::from(ns) * u128::from(hz)).div_ceil(1_000_000_000) as u64;
        let start = counter();
        while counter().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}
