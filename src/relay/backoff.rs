//! Reconnect pauses: exponential with jitter, so two relays (and their restarts) that lost the same
//! core or NATS server do not retry in lockstep. The relay's own copy: the edge's is private to its
//! feed, which is being moved.
use std::time::Duration;

pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), next: initial }
    }

    /// Back to the shortest pause, after progress.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next pause: uniform in [ceiling/2, ceiling], the ceiling doubling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// The NATS client's own reconnect pause after `attempts` failed attempts (same shape as above; the
/// client asks with a count instead of keeping state).
pub fn reconnect_delay(attempts: usize, initial: Duration, max: Duration) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    let ceiling = initial.saturating_mul(1 << doublings).min(max.max(initial));
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for ceiling in [100, 200, 400, 400] {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} not within [{:?}, {ceiling:?}]", ceiling / 2);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn nats_reconnect_pauses_follow_the_same_curve() {
        let (initial, max) = (Duration::from_millis(50), Duration::from_millis(400));
        assert_eq!(reconnect_delay(0, initial, max), Duration::ZERO);
        for (attempts, ceiling) in [(1, 50), (2, 100), (3, 200), (4, 400), (60, 400)] {
            let delay = reconnect_delay(attempts, initial, max);
            let ceiling = Duration::from_millis(ceiling);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "attempt {attempts}: {delay:?}");
        }
    }
}
