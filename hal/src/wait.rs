//! Bounded waits, shared by every vendor: every poll of hardware gives up after a fixed
//! amount of delay with the vendor's timeout error, so no register value makes a wait hang.

use embedded_hal::delay::DelayNs;

/// Bounds of every wait: give up after `timeout_ns`, polling every `poll_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Timing {
    /// Total time a wait may take.
    pub timeout_ns: u32,
    /// Delay between two polls.
    pub poll_ns: u32,
}

impl Default for Timing {
    /// 10 ms in steps of 10 µs.
    fn default() -> Self {
        Timing {
            timeout_ns: 10_000_000,
            poll_ns: 10_000,
        }
    }
}

/// What a wait waits for, as a vendor names it: it also names the vendor's error, and the
/// timeout error carrying it.
pub trait WaitFor: Copy {
    /// The vendor's error.
    type Error;
    /// The error of a wait for `self` that expired.
    fn timed_out(self) -> Self::Error;
}

/// Polls `done` until it returns true, at most `timing.timeout_ns` of delay; then fails with
/// `what`'s timeout error. An error from `done` ends the wait with that error.
pub fn poll<D, W>(
    delay: &mut D,
    timing: Timing,
    what: W,
    mut done: impl FnMut() -> Result<bool, W::Error>,
) -> Result<(), W::Error>
where
    D: DelayNs + ?Sized,
    W: WaitFor,
{
    let step = timing.poll_ns.max(1);
    let mut waited: u32 = 0;
    loop {
        if done()? {
            return Ok(());
        }
        if waited >= timing.timeout_ns {
            return Err(what.timed_out());
        }
        delay.delay_ns(step);
        waited = waited.saturating_add(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the delay it was asked for.
    #[derive(Default)]
    struct Count(u64);
    impl DelayNs for Count {
        fn delay_ns(&mut self, ns: u32) {
            self.0 += u64::from(ns);
        }
    }

    #[derive(Debug, PartialEq)]
    enum Err {
        Timeout(&'static str),
        Hw,
    }
    #[derive(Clone, Copy)]
    struct Bit;
    impl WaitFor for Bit {
        type Error = Err;
        fn timed_out(self) -> Err {
            Err::Timeout("bit")
        }
    }

    const T: Timing = Timing {
        timeout_ns: 100,
        poll_ns: 30,
    };

    #[test]
    fn gives_up_after_the_timeout_with_what_was_waited_for() {
        let mut d = Count::default();
        let mut polls = 0;
        let r = poll(&mut d, T, Bit, || {
            polls += 1;
            Ok(false)
        });
        assert_eq!(r, Err(Err::Timeout("bit")));
        assert_eq!(d.0, 120);
        assert_eq!(polls, 5);
    }

    #[test]
    fn stops_when_done_or_on_an_error() {
        let mut d = Count::default();
        let mut polls = 0;
        let r = poll(&mut d, T, Bit, || {
            polls += 1;
            Ok(polls == 2)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(d.0, 30);
        let r = poll(&mut d, T, Bit, || Err(Err::Hw));
        assert_eq!(r, Err(Err::Hw));
    }

    #[test]
    fn a_zero_poll_step_still_ends() {
        let mut d = Count::default();
        let t = Timing {
            timeout_ns: 3,
            poll_ns: 0,
        };
        assert_eq!(poll(&mut d, t, Bit, || Ok(false)), Err(Err::Timeout("bit")));
        assert_eq!(d.0, 3);
    }
}
