//! The circuit breaker in front of the core: after `failures` consecutive failed calls it opens and
//! refuses core calls for `open_for`; then one probe call is let through (half-open) and its outcome
//! closes the breaker or opens it again.
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
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
    /// Whether a core call may go now; when not, how long until the next probe may.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen;
                Ok(())
            }
            State::HalfOpen => Err(Duration::ZERO),
        }
    }

    /// Reports how an admitted call ended.
    pub fn record(&self, succeeded: bool, now: Instant, failures_to_open: u32, open_for: Duration) {
        let mut state = self.state.lock();
        *state = match (*state, succeeded) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < failures_to_open => {
                State::Closed { failures: failures + 1 }
            }
            (_, false) => State::Open { until: now + open_for },
        };
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
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
        breaker.record(false, now, 3, OPEN_FOR);
        breaker.record(true, now, 3, OPEN_FOR);
        breaker.record(false, now, 3, OPEN_FOR);
        breaker.record(false, now, 3, OPEN_FOR);
        assert_eq!(breaker.state(), BreakerState::Closed, "a success in between resets the count");
        breaker.record(false, now, 3, OPEN_FOR);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(now + Duration::from_secs(1)), Err(Duration::from_secs(4)));
        let later = now + OPEN_FOR;
        assert_eq!(breaker.admit(later), Ok(()), "the probe");
        assert!(breaker.admit(later).is_err(), "only one probe at a time");
        breaker.record(false, later, 3, OPEN_FOR);
        assert_eq!(breaker.state(), BreakerState::Open, "a failed probe opens it again");
        let again = later + OPEN_FOR;
        assert_eq!(breaker.admit(again), Ok(()));
        breaker.record(true, again, 3, OPEN_FOR);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(again), Ok(()));
    }
}
