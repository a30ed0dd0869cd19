//! Time: the TSC, its rate taken from CPUID or calibrated against the PIT, for bounded waits
//! (`DelayNs`) and defmt timestamps.
//!
//! The rate is chosen by [`crate::clock`] (host-tested): CPUID leaves 0x15/0x16 where they
//! give a plausible rate, cross-checked against the PIT; otherwise the lowest pair of short PIT
//! rounds that agree; otherwise the long side. A PIT round reads the TSC *before* arming the
//! count, so a vCPU descheduled anywhere in the round makes it longer (a rate too high: waits
//! too long), never shorter, and the lowest agreeing rounds are the truest. The single 10 ms round this replaced read the start after arming
//! and once measured 19 ticks/us instead of ~2600 under host load, which made every timeout
//! about 130 times too short.
//!
//! PIT channel 2 (Intel 8254 datasheet; PC port 0x61 bit 0 = channel 2 gate, bit 5 = channel 2
//! output): mode 0 counts down from N at 1.193182 MHz and raises its output at zero.

use core::sync::atomic::{AtomicU64, Ordering};

use embedded_hal::delay::DelayNs;

use super::io::{inb, outb};
use crate::clock::{self, Rate};

/// TSC ticks per microsecond; set by [`calibrate`].
static TICKS_PER_US: AtomicU64 = AtomicU64::new(clock::TSC_FALLBACK_PER_US);
/// TSC value at calibration: the zero of [`micros`].
static TSC_ZERO: AtomicU64 = AtomicU64::new(0);

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// One round: 2 ms in PIT ticks (short, so that fewer rounds meet a descheduling; the arming
/// writes, inside the round, add well under 1 % even under TCG).
const ROUND_PIT_TICKS: u16 = 2_386;
/// Rounds per attempt.
const ROUNDS: usize = 9;
/// Attempts at most: another is made while the two lowest rounds disagree.
const ATTEMPTS: usize = 4;
/// Polls of the PIT output before a round is abandoned (far beyond 5 ms even under TCG).
const MAX_POLLS: u32 = 20_000_000;

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf `leaf` (subleaf 0) as (EAX, EBX, ECX), or `None` beyond the maximum basic leaf.
fn cpuid(leaf: u32) -> Option<(u32, u32, u32)> {
    if leaf > super::cpuid(0, 0).eax {
        return None;
    }
    let r = super::cpuid(leaf, 0);
    Some((r.eax, r.ebx, r.ecx))
}

/// One PIT round: TSC ticks per microsecond (rounded up), or 0 when the PIT did not answer.
fn pit_round() -> u64 {
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT and the PC speaker gate, owned by this
    // runtime; the speaker output stays disabled (bit 1 cleared).
    let (t0, t1, done) = unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01); // gate channel 2 on, speaker off
        // The start is read before the count is armed: any delay from here on lengthens the
        // round, so the rate can only come out high.
        let t0 = rdtsc();
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, ROUND_PIT_TICKS as u8);
        outb(0x42, (ROUND_PIT_TICKS >> 8) as u8);
        let mut done = false;
        for _ in 0..MAX_POLLS {
            if inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
        }
        let t1 = rdtsc();
        outb(0x61, gate & !0x03);
        (t0, t1, done)
    };
    if !done {
        return 0;
    }
    clock::round_rate(t1.wrapping_sub(t0), u64::from(ROUND_PIT_TICKS), PIT_HZ).unwrap_or(0)
}

/// Chooses the TSC rate (see the module documentation) and sets the zero of [`micros`].
/// Returns the rate and where it came from.
pub fn calibrate() -> Rate {
    let from_cpuid = clock::tsc_from_cpuid(cpuid(0x15), cpuid(0x16).map(|r| r.0));
    let mut rounds = [0u64; ROUNDS * ATTEMPTS];
    let mut n = 0;
    for _ in 0..ATTEMPTS {
        for r in rounds[n..n + ROUNDS].iter_mut() {
            *r = pit_round();
        }
        n += ROUNDS;
        defmt::debug!(
            "TSC calibration: PIT rounds {} ticks/us",
            rounds[n - ROUNDS..n]
        );
        if clock::pit_settled(&mut rounds[..n]) {
            break;
        }
    }
    let pit = clock::pit_rate(&mut rounds[..n]);
    let rate = clock::choose_tsc(from_cpuid, pit, clock::highest_plausible(&rounds[..n]));
    TSC_ZERO.store(rdtsc(), Ordering::Relaxed);
    TICKS_PER_US.store(rate.value, Ordering::Relaxed);
    rate
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
