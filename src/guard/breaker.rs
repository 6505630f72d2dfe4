//! The circuit breaker in front of the core: after `failures` consecutive failed calls it opens and
//! refuses core calls for `open_for`; then one probe call is let through (half-open) and its outcome
//! closes the breaker or opens it again.
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The circuit breaker's state.
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One probe call is in flight; the others are refused.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; everything else is refused until it reports.
    HalfOpen,
}

pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { state: Mutex::new(State::Closed { failures: 0 }) }
    }
}

impl Breaker {
    /// Whether a core call may go now (the returned admission must be settled with its outcome);
    /// when not, how long until the next probe may.
    pub fn admit(&self, now: Instant) -> Result<Admitted<'_>, Duration> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Ok(Admitted { breaker: self, probe: false }),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen;
                Ok(Admitted { breaker: self, probe: true })
            }
            State::HalfOpen => Err(Duration::ZERO),
        }
    }

    /// Reports how an admitted call ended.
    fn record(&self, succeeded: bool, now: Instant, failures_to_open: u32, open_for: Duration) {
        let mut state = self.state.lock();
        *state = match (*state, succeeded) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < failures_to_open => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open { until: now + open_for },
        };
    }

    /// A probe that told nothing about the core (cut short by the caller, or it panicked): the next
    /// call probes again.
    fn release_probe(&self, now: Instant) {
        let mut state = self.state.lock();
        if matches!(*state, State::HalfOpen) {
            *state = State::Open { until: now };
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// A call the breaker let through. Settling it records its outcome; dropping it unsettled (a panic,
/// a cancellation) frees the probe place so the breaker cannot stay half-open forever.
pub struct Admitted<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Admitted<'_> {
    /// `Some(succeeded)` when the call says something about the core's health; `None` when it does not
    /// (the caller's deadline ended it).
    pub fn settle(mut self, verdict: Option<bool>, now: Instant, failures_to_open: u32, open_for: Duration) {
        match verdict {
            Some(succeeded) => self.breaker.record(succeeded, now, failures_to_open, open_for),
            None if self.probe => self.breaker.release_probe(now),
            None => {}
        }
        self.probe = false;
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_then_probes_once() {
        let breaker = Breaker::default();
        let now = Instant::now();
        let call = |succeeded: bool, at: Instant| breaker.admit(at).unwrap().settle(Some(succeeded), at, 3, OPEN_FOR);
        call(false, now);
        call(true, now);
        call(false, now);
        call(false, now);
        assert_eq!(breaker.state(), BreakerState::Closed, "a success in between resets the count");
        call(false, now);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(now + Duration::from_secs(1)).err(), Some(Duration::from_secs(4)));
        let later = now + OPEN_FOR;
        let probe = breaker.admit(later).expect("the probe");
        assert!(breaker.admit(later).is_err(), "only one probe at a time");
        probe.settle(Some(false), later, 3, OPEN_FOR);
        assert_eq!(breaker.state(), BreakerState::Open, "a failed probe opens it again");
        let again = later + OPEN_FOR;
        call(true, again);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit(again).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_tells_nothing_lets_the_next_call_probe() {
        let breaker = Breaker::default();
        let now = Instant::now();
        breaker.admit(now).unwrap().settle(Some(false), now, 1, OPEN_FOR);
        let later = now + OPEN_FOR;
        drop(breaker.admit(later).expect("the probe"));
        assert_eq!(breaker.state(), BreakerState::Open, "a dropped probe (panic, cancellation) is not stuck half-open");
        breaker.admit(later).expect("probe again").settle(None, later, 1, OPEN_FOR);
        assert!(breaker.admit(later).is_ok(), "a probe cut short by its caller's deadline frees the place too");
    }
}
