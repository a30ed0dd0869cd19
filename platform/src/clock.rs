//! Choosing a counter's frequency from what the machine reports and what was measured, for
//! the bounded waits of the backends (`DelayNs`) and log timestamps.
//!
//! A wait that lasts longer than asked is harmless; one that is shorter turns a healthy unit
//! into a timeout. So every choice here errs on the long side: a frequency taken too high makes
//! waits longer. The functions are plain arithmetic over values the runtimes read or measured
//! (`x86::time`, `aarch64::time`), so the selection is tested on the host.
//!
//! x86 TSC, in order:
//! 1. CPUID leaf 0x15 (TSC / crystal ratio and crystal frequency, the crystal taken from leaf
//!    0x16's base frequency when leaf 0x15 leaves it 0, as Linux's `native_calibrate_tsc`
//!    does), when present and within [`TSC_MIN_PER_US`, `TSC_MAX_PER_US`];
//! 2. PIT channel 2 rounds, each with the TSC read *before* the count is armed (a vCPU
//!    descheduled anywhere in a round can only lengthen it): the lowest pair of plausible
//!    rounds that agree within [`AGREEMENT_PERCENT`] (see [`pit_rate`]); more attempts while
//!    the two lowest rounds disagree;
//! 3. when CPUID and the PIT disagree by more than [`CROSS_CHECK_PERCENT`], the higher;
//! 4. when nothing is usable: the highest plausible round seen, else [`TSC_FALLBACK_PER_US`].
//!
//! RISC-V `mtime`: the device tree's `/cpus/timebase-frequency` (RISC-V binding
//! `riscv/cpus.yaml`; there is no architectural register), used only within
//! [`TIMEBASE_MIN_HZ`, `COUNTER_MAX_HZ`], else [`COUNTER_FALLBACK_HZ`].
//!
//! Arm generic timer: CNTFRQ_EL0 is what firmware programmed; a device tree `clock-frequency`
//! on the `arm,armv8-timer` node overrides it (for firmware that leaves CNTFRQ_EL0 unset or
//! wrong, as Linux's arch timer driver honours it); either is used only within
//! [`COUNTER_MIN_HZ`, `COUNTER_MAX_HZ`], else [`COUNTER_FALLBACK_HZ`].

/// Lowest plausible TSC rate: 100 MHz.
pub const TSC_MIN_PER_US: u64 = 100;
/// Highest plausible TSC rate: 10 GHz.
pub const TSC_MAX_PER_US: u64 = 10_000;
/// The rate assumed when nothing usable was found: the highest plausible (waits last longer
/// than asked, never shorter).
pub const TSC_FALLBACK_PER_US: u64 = TSC_MAX_PER_US;
/// Two PIT rounds agree when within this many per cent of the lower.
pub const AGREEMENT_PERCENT: u64 = 2;
/// CPUID and the PIT are taken to agree within this many per cent.
pub const CROSS_CHECK_PERCENT: u64 = 10;

/// Lowest plausible generic-timer frequency: 1 MHz (Arm ARM D11.1.2 recommends 1 GHz from
/// Armv8.6, earlier systems commonly use 1 to 100 MHz).
pub const COUNTER_MIN_HZ: u64 = 1_000_000;
/// Highest plausible generic-timer frequency: 10 GHz.
pub const COUNTER_MAX_HZ: u64 = 10_000_000_000;
/// The frequency assumed when neither source is plausible (waits last longer, never shorter).
pub const COUNTER_FALLBACK_HZ: u64 = COUNTER_MAX_HZ;

/// Where a frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub enum Source {
    /// CPUID leaves 0x15/0x16.
    Cpuid,
    /// The lowest agreeing PIT rounds.
    Pit,
    /// CPUID and the PIT disagreed; the higher was taken.
    Higher,
    /// No agreement: the highest plausible PIT round.
    HighestRound,
    /// The architectural counter-frequency register (CNTFRQ_EL0).
    Register,
    /// The device tree's `clock-frequency`.
    DeviceTree,
    /// Nothing plausible: the long-side fallback.
    Fallback,
}

/// A chosen rate and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct Rate {
    /// TSC ticks per microsecond (x86) or counter ticks per second (Arm, RISC-V).
    pub value: u64,
    /// Its source.
    pub source: Source,
}

/// Whether `per_us` TSC ticks per microsecond is a plausible rate.
pub const fn tsc_plausible(per_us: u64) -> bool {
    per_us >= TSC_MIN_PER_US && per_us <= TSC_MAX_PER_US
}

/// The TSC rate CPUID reports, in ticks per microsecond rounded up, if it reports one that is
/// plausible. `leaf15` is `(EAX, EBX, ECX)` of leaf 0x15 (denominator, numerator, crystal Hz)
/// and `leaf16_base_mhz` EAX of leaf 0x16, each `None` when the leaf is beyond the maximum
/// leaf. Intel SDM vol. 2A, CPUID leaves 15H and 16H.
pub fn tsc_from_cpuid(
    leaf15: Option<(u32, u32, u32)>,
    leaf16_base_mhz: Option<u32>,
) -> Option<u64> {
    let (den, num, crystal_hz) = leaf15?;
    if den == 0 || num == 0 {
        return None;
    }
    let hz = if crystal_hz != 0 {
        u64::from(crystal_hz) * u64::from(num) / u64::from(den)
    } else {
        // No crystal frequency: the base frequency is the TSC's nominal frequency.
        u64::from(leaf16_base_mhz.filter(|&m| m != 0)?) * 1_000_000
    };
    let per_us = hz.div_ceil(1_000_000);
    tsc_plausible(per_us).then_some(per_us)
}

/// TSC ticks per microsecond of one PIT round: `ticks` TSC ticks while the PIT counted
/// `pit_ticks` at `pit_hz`. Rounded up; `None` for an empty round.
pub fn round_rate(ticks: u64, pit_ticks: u64, pit_hz: u64) -> Option<u64> {
    let us_times_hz = pit_ticks.checked_mul(1_000_000)?;
    if us_times_hz == 0 {
        return None;
    }
    // ticks / (pit_ticks / pit_hz seconds) / 1e6 = ticks * pit_hz / (pit_ticks * 1e6).
    let num = u128::from(ticks) * u128::from(pit_hz);
    u64::try_from(num.div_ceil(u128::from(us_times_hz))).ok()
}

/// The plausible rounds of `rounds`, sorted (sorts `rounds` in place).
fn plausible_sorted(rounds: &mut [u64]) -> &[u64] {
    rounds.sort_unstable();
    let lo = rounds.partition_point(|&r| r < TSC_MIN_PER_US);
    let hi = rounds.partition_point(|&r| r <= TSC_MAX_PER_US);
    &rounds[lo..hi]
}

/// Whether `a <= b` agree within [`AGREEMENT_PERCENT`] of `a`.
const fn agree(a: u64, b: u64) -> bool {
    (b - a) * 100 <= a * AGREEMENT_PERCENT
}

/// The TSC rate the PIT rounds in `rounds` (0 = a round that did not complete) give: the
/// lowest pair of plausible rounds that agree within [`AGREEMENT_PERCENT`], its higher
/// value. Sorts `rounds` in place.
///
/// A round can only come out too long (the start is read before the count is armed, and any
/// delay from descheduling to a slow poll adds to it), never too short, so the lowest rounds
/// are the truest; requiring a second round to agree guards against a single odd one. Under
/// host load most rounds are lengthened, and differently: measured on a 2-core host at load
/// 13, one attempt gave `[11604, 5751, 7891, 3833, 7825, 11732, 2446]` ticks/us for a TSC of
/// 2445 MHz, and another had five rounds agreeing near 5850. A median would take those.
pub fn pit_rate(rounds: &mut [u64]) -> Option<u64> {
    plausible_sorted(rounds)
        .windows(2)
        .find(|w| agree(w[0], w[1]))
        .map(|w| w[1])
}

/// Whether the two lowest plausible rounds agree (see [`pit_rate`]): no further round could
/// give a lower pair but by coming out lower than both. Sorts `rounds` in place.
pub fn pit_settled(rounds: &mut [u64]) -> bool {
    matches!(plausible_sorted(rounds), [a, b, ..] if agree(*a, *b))
}

/// The highest plausible round, if any.
pub fn highest_plausible(rounds: &[u64]) -> Option<u64> {
    rounds.iter().copied().filter(|&r| tsc_plausible(r)).max()
}

/// Picks the TSC rate from CPUID's answer (see [`tsc_from_cpuid`]), the PIT's (see
/// [`pit_rate`]) and the highest plausible PIT round seen (see [`highest_plausible`]).
pub fn choose_tsc(cpuid: Option<u64>, pit: Option<u64>, highest_round: Option<u64>) -> Rate {
    let rate = |value, source| Rate { value, source };
    match (
        cpuid.filter(|&c| tsc_plausible(c)),
        pit.filter(|&p| tsc_plausible(p)),
    ) {
        (Some(c), Some(p)) => {
            let hi = c.max(p);
            if c.abs_diff(p) * 100 > hi * CROSS_CHECK_PERCENT {
                rate(hi, Source::Higher)
            } else {
                rate(c, Source::Cpuid)
            }
        }
        (Some(c), None) => rate(c, Source::Cpuid),
        (None, Some(p)) => rate(p, Source::Pit),
        (None, None) => match highest_round.filter(|&r| tsc_plausible(r)) {
            Some(r) => rate(r, Source::HighestRound),
            None => rate(TSC_FALLBACK_PER_US, Source::Fallback),
        },
    }
}

/// Lowest plausible RISC-V timebase: 32.768 kHz (a real-time-clock crystal; SiFive boards use
/// 1 MHz, QEMU virt 10 MHz).
pub const TIMEBASE_MIN_HZ: u64 = 32_768;

/// Picks the RISC-V `mtime` rate from the device tree's `timebase-frequency`.
pub fn choose_timebase(device_tree: Option<u64>) -> Rate {
    match device_tree.filter(|&f| (TIMEBASE_MIN_HZ..=COUNTER_MAX_HZ).contains(&f)) {
        Some(f) => Rate {
            value: f,
            source: Source::DeviceTree,
        },
        None => Rate {
            value: COUNTER_FALLBACK_HZ,
            source: Source::Fallback,
        },
    }
}

/// Whether `hz` is a plausible generic-timer frequency.
pub const fn counter_plausible(hz: u64) -> bool {
    hz >= COUNTER_MIN_HZ && hz <= COUNTER_MAX_HZ
}

/// Picks the generic timer's frequency from CNTFRQ_EL0 (its low 32 bits are the frequency;
/// Arm ARM D23.8 CNTFRQ_EL0) and the device tree's `clock-frequency` of the timer node.
pub fn choose_counter(cntfrq: u64, device_tree: Option<u64>) -> Rate {
    let rate = |value, source| Rate { value, source };
    let register = cntfrq & 0xffff_ffff;
    if let Some(dt) = device_tree.filter(|&f| counter_plausible(f)) {
        return rate(dt, Source::DeviceTree);
    }
    if counter_plausible(register) {
        return rate(register, Source::Register);
    }
    rate(COUNTER_FALLBACK_HZ, Source::Fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riscv_timebase() {
        assert_eq!(
            choose_timebase(Some(10_000_000)),
            Rate {
                value: 10_000_000,
                source: Source::DeviceTree
            }
        );
        for bad in [None, Some(0), Some(1000), Some(20_000_000_000)] {
            assert_eq!(
                choose_timebase(bad),
                Rate {
                    value: COUNTER_FALLBACK_HZ,
                    source: Source::Fallback
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cpuid_leaves() {
        // A 24 MHz crystal, ratio 176/2: 2112 MHz.
        assert_eq!(tsc_from_cpuid(Some((2, 176, 24_000_000)), None), Some(2112));
        // 38.4 MHz crystal, 125/2: 2400 MHz.
        assert_eq!(
            tsc_from_cpuid(Some((2, 125, 38_400_000)), Some(2400)),
            Some(2400)
        );
        // No crystal frequency: the base frequency of leaf 0x16.
        assert_eq!(tsc_from_cpuid(Some((2, 200, 0)), Some(2600)), Some(2600));
        assert_eq!(tsc_from_cpuid(Some((2, 200, 0)), None), None);
        assert_eq!(tsc_from_cpuid(Some((2, 200, 0)), Some(0)), None);
        // Not enumerated (QEMU under TCG, AMD): zeros, or the leaf beyond the maximum.
        assert_eq!(tsc_from_cpuid(Some((0, 0, 0)), Some(0)), None);
        assert_eq!(tsc_from_cpuid(Some((1, 0, 25_000_000)), None), None);
        assert_eq!(tsc_from_cpuid(None, Some(3000)), None);
        // Implausible answers are ignored.
        assert_eq!(tsc_from_cpuid(Some((1000, 1, 24_000_000)), None), None);
        assert_eq!(tsc_from_cpuid(Some((1, 1000, 24_000_000)), None), None);
        // Rounded up: 1 Hz above 2 GHz counts as 2001 ticks/us.
        assert_eq!(
            tsc_from_cpuid(Some((1, 1, 2_000_000_001)), None),
            Some(2001)
        );
    }

    #[test]
    fn one_round() {
        // 5 ms of PIT (5966 ticks) during 13 M TSC ticks: ~2600 ticks/us, rounded up.
        let r = round_rate(13_000_000, 5966, 1_193_182).unwrap();
        assert!((2599..=2601).contains(&r), "{r}");
        assert_eq!(round_rate(1, 0, 1_193_182), None);
        assert_eq!(round_rate(0, 5966, 1_193_182), Some(0));
    }

    #[test]
    fn lowest_agreeing_rounds() {
        // Rounds measured on a loaded 2-core host (load average 13) whose TSC runs at
        // 2445 MHz, 5 ms each, three attempts of one calibration.
        let mut a1 = [11604, 5751, 7891, 3833, 7825, 11732, 2446];
        let a2 = [8806, 9574, 2447, 7484, 13532, 4171, 7611];
        let a3 = [8631, 5851, 2803, 7855, 9759, 7819, 9800];
        // One attempt alone: the lowest agreeing pair is a lengthened one (on the long side),
        // and the lowest two do not agree, so another attempt is made.
        assert!(!pit_settled(&mut a1));
        assert_eq!(pit_rate(&mut a1), Some(7825 + 66));
        let mut two: std::vec::Vec<u64> = a1.iter().chain(&a2).copied().collect();
        assert!(pit_settled(&mut two));
        assert_eq!(pit_rate(&mut two), Some(2447));
        let mut all: std::vec::Vec<u64> = two.iter().chain(&a3).copied().collect();
        assert_eq!(pit_rate(&mut all), Some(2447));
        // Five rounds agreeing near 5850 (the median too), two low ones apart: another
        // attempt is made; were it the last, the lengthened pair errs on the long side.
        let mut r = [3191, 5734, 5903, 5823, 5854, 5874, 3944];
        assert!(!pit_settled(&mut r));
        assert_eq!(pit_rate(&mut r), Some(5823));
        // The failure seen with the old method (19 ticks/us) is implausible and ignored; rounds
        // that never completed (0) too.
        let mut r = [19, 0, 2447, 2446, 9000];
        assert!(pit_settled(&mut r));
        assert_eq!(pit_rate(&mut r), Some(2447));
        // A single odd low round is passed over.
        let mut r = [1200, 2445, 2447, 4000];
        assert!(!pit_settled(&mut r));
        assert_eq!(pit_rate(&mut r), Some(2447));
        // Nothing agrees, or too few rounds.
        let mut r = [2305, 2600, 3000, 3471];
        assert_eq!(pit_rate(&mut r), None);
        let mut r = [2445];
        assert_eq!(pit_rate(&mut r), None);
        assert!(!pit_settled(&mut r));
        // Within 2 % of the lower: 2400 and 2448 agree, 2400 and 2449 do not.
        assert_eq!(pit_rate(&mut [2448, 2400]), Some(2448));
        assert_eq!(pit_rate(&mut [2449, 2400]), None);
    }

    #[test]
    fn choice_errs_long() {
        // CPUID and the PIT agree: CPUID's exact value.
        assert_eq!(
            choose_tsc(Some(2112), Some(2150), Some(2300)),
            Rate {
                value: 2112,
                source: Source::Cpuid
            }
        );
        // They disagree: the higher (waits too long rather than too short).
        assert_eq!(
            choose_tsc(Some(2000), Some(2600), None),
            Rate {
                value: 2600,
                source: Source::Higher
            }
        );
        assert_eq!(
            choose_tsc(Some(3000), Some(2600), None),
            Rate {
                value: 3000,
                source: Source::Higher
            }
        );
        assert_eq!(choose_tsc(None, Some(2600), None).source, Source::Pit);
        assert_eq!(choose_tsc(Some(2600), None, None).source, Source::Cpuid);
        // No agreement: the highest plausible round, else the fallback.
        assert_eq!(
            choose_tsc(None, None, Some(3471)),
            Rate {
                value: 3471,
                source: Source::HighestRound
            }
        );
        assert_eq!(
            choose_tsc(None, None, highest_plausible(&[19, 0, 50_000])),
            Rate {
                value: TSC_FALLBACK_PER_US,
                source: Source::Fallback
            }
        );
        // Implausible inputs never win.
        assert_eq!(
            choose_tsc(Some(19), Some(20_000), None).source,
            Source::Fallback
        );
        assert_eq!(highest_plausible(&[2305, 3471, 19, 40_000]), Some(3471));
    }

    #[test]
    fn generic_timer_frequency() {
        // QEMU virt: 62.5 MHz (older CPU models) or 1 GHz.
        assert_eq!(
            choose_counter(62_500_000, None),
            Rate {
                value: 62_500_000,
                source: Source::Register
            }
        );
        // Bits 63:32 of CNTFRQ_EL0 are RES0.
        assert_eq!(
            choose_counter((7 << 32) | 1_000_000_000, None).value,
            1_000_000_000
        );
        // The device tree overrides the register (firmware that left it wrong).
        assert_eq!(
            choose_counter(62_500_000, Some(24_000_000)),
            Rate {
                value: 24_000_000,
                source: Source::DeviceTree
            }
        );
        // Unset or implausible: the other source, else the long-side fallback.
        assert_eq!(
            choose_counter(0, Some(19_200_000)).source,
            Source::DeviceTree
        );
        assert_eq!(choose_counter(19_200_000, Some(5)).source, Source::Register);
        assert_eq!(
            choose_counter(0, None),
            Rate {
                value: COUNTER_FALLBACK_HZ,
                source: Source::Fallback
            }
        );
        assert_eq!(choose_counter(999_999, None).source, Source::Fallback);
    }
}
