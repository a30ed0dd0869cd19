//! Time: the TSC, calibrated once against the PIT, for bounded waits (`DelayNs`) and defmt
//! timestamps.
//!
//! Calibration uses PIT channel 2 (Intel 8254 datasheet; PC port 0x61 bit 0 = channel 2 gate,
//! bit 5 = channel 2 output): mode 0 counts down from N at 1.193182 MHz and raises its output
//! at zero. Waits only need to be long enough, so when calibration fails the frequency is
//! assumed high (waits then last longer than asked, never shorter).

use core::sync::atomic::{AtomicU64, Ordering};

use embedded_hal::delay::DelayNs;

use super::io::{inb, outb};

/// TSC ticks per microsecond; set by [`calibrate`].
static TICKS_PER_US: AtomicU64 = AtomicU64::new(FALLBACK_TICKS_PER_US);
/// TSC value at calibration: the zero of [`micros`].
static TSC_ZERO: AtomicU64 = AtomicU64::new(0);

/// Assumed ticks per microsecond when calibration fails: 10 GHz, above any real TSC.
const FALLBACK_TICKS_PER_US: u64 = 10_000;
/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration interval: 10 ms in PIT ticks.
const CAL_PIT_TICKS: u16 = 11_932;

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency against PIT channel 2. Returns ticks per microsecond, or `None`
/// when the PIT did not answer (the fallback stays in force).
pub fn calibrate() -> Option<u64> {
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT and the PC speaker gate, owned by this
    // runtime; the speaker output stays disabled (bit 1 cleared).
    let (t0, t1, done) = unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01); // gate channel 2 on, speaker off
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, CAL_PIT_TICKS as u8);
        outb(0x42, (CAL_PIT_TICKS >> 8) as u8);
        let t0 = rdtsc();
        let mut done = false;
        for _ in 0..50_000_000u32 {
            if inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
        }
        let t1 = rdtsc();
        outb(0x61, gate & !0x03);
        (t0, t1, done)
    };
    TSC_ZERO.store(t0, Ordering::Relaxed);
    let us = u64::from(CAL_PIT_TICKS) * 1_000_000 / PIT_HZ;
    let per_us = (t1 - t0) / us;
    if !done || per_us == 0 {
        return None;
    }
    TICKS_PER_US.store(per_us, Ordering::Relaxed);
    Some(per_us)
}

/// Microseconds since calibration.
pub fn micros() -> u64 {
    rdtsc().wrapping_sub(TSC_ZERO.load(Ordering::Relaxed)) / TICKS_PER_US.load(Ordering::Relaxed)
}

/// A busy-waiting delay on the calibrated TSC.
#[derive(Clone, Copy, Debug, Default)]
pub struct TscDelay;

impl DelayNs for TscDelay {
    fn delay_ns(&mut self, ns: u32) {
        let per_us = TICKS_PER_US.load(Ordering::Relaxed);
        let ticks = (u64::from(ns) * per_us).div_ceil(1000);
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}
