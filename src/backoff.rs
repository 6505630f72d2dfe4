//! Reconnect pauses: exponential with full jitter, so a fleet of edges (or a relay pair) that lost the
//! same core or NATS server does not retry in lockstep. One curve for every reconnecting loop in the
//! crate: the edge's change feed, the relay's loop, and the NATS client's own reconnects.
//!
//! A leaf module (it names nothing else in the crate), so any subsystem may use it without the import
//! graph growing a cycle.
use std::time::Duration;

/// Jittered exponential backoff that a loop keeps between attempts.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max` (a `max` below `initial` is raised to it).
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), next: initial }
    }

    /// Takes new bounds (from a config reload) for the delays still to come.
    pub(crate) fn reconfigure(&mut self, initial: Duration, max: Duration) {
        self.initial = initial;
        self.max = max.max(initial);
        self.next = self.next.clamp(self.initial, self.max);
    }

    /// Back to the shortest pause, after progress.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next pause: uniform in [ceiling/2, ceiling], the ceiling doubling up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(ceiling)
    }

    /// Sleeps for the next pause.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// The pause after `attempts` failed attempts, on the same curve as [`Backoff`], for callers that are
/// given a count instead of keeping state (the NATS client's reconnect callback).
pub(crate) fn delay_after(attempts: usize, initial: Duration, max: Duration) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    jitter(initial.saturating_mul(1 << doublings).min(max.max(initial)))
}

/// Uniform in [ceiling/2, ceiling]: spread out, yet never much shorter than the curve asks.
fn jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(delay: Duration, ceiling_ms: u64) -> bool {
        let ceiling = Duration::from_millis(ceiling_ms);
        delay >= ceiling / 2 && delay <= ceiling
    }

    #[test]
    fn pauses_double_with_jitter_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for ceiling in [100, 200, 400, 400] {
            let delay = backoff.next_delay();
            assert!(within(delay, ceiling), "{delay:?} not within [{}ms/2, {ceiling}ms]", ceiling);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn new_bounds_apply_to_the_pauses_still_to_come() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        backoff.next_delay();
        backoff.next_delay();
        backoff.reconfigure(Duration::from_millis(10), Duration::from_millis(50));
        assert!(within(backoff.next_delay(), 50), "clamped to the new cap");
        backoff.reset();
        assert!(within(backoff.next_delay(), 10));
    }

    #[test]
    fn counted_pauses_follow_the_same_curve() {
        let (initial, max) = (Duration::from_millis(50), Duration::from_millis(400));
        assert_eq!(delay_after(0, initial, max), Duration::ZERO);
        for (attempts, ceiling) in [(1, 50), (2, 100), (3, 200), (4, 400), (60, 400)] {
            let delay = delay_after(attempts, initial, max);
            assert!(within(delay, ceiling), "attempt {attempts}: {delay:?}");
        }
    }
}
