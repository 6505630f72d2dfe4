//! What the edge knows about its change feed, shared lock-free with the lookup path: the applied
//! sequence (for the fence), whether the stream can be trusted (for negative answers), and the lag.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Marks an instant slot as empty.
const NEVER: u64 = u64::MAX;

pub struct FeedStatus {
    /// Instants are kept as nanoseconds since this, so they fit in atomics.
    origin: Instant,
    applied: AtomicU64,
    /// The highest sequence the core has shown (notices, reads, snapshots).
    head: AtomicU64,
    /// When the stream went down (`NEVER` while it is connected and trusted).
    down_since: AtomicU64,
    /// Since when the core has been ahead of the applied notices (`NEVER` while caught up).
    behind_since: AtomicU64,
    negative_ttl_when_down: Duration,
}

/// How far the edge trails the core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub notices: u64,
    /// How long the edge has been behind (or the feed down, whichever is longer); zero when caught up.
    pub duration: Duration,
}

impl FeedStatus {
    /// Starts down: nothing is trusted until the feed has synced and connected.
    pub fn new(negative_ttl_when_down: Duration) -> Self {
        Self {
            origin: Instant::now(),
            applied: AtomicU64::new(0),
            head: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
            behind_since: AtomicU64::new(NEVER),
            negative_ttl_when_down,
        }
    }

    fn encode(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() as u64).min(NEVER - 1)
    }

    fn decode(&self, nanos: u64) -> Option<Instant> {
        (nanos != NEVER).then(|| self.origin + Duration::from_nanos(nanos))
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, sequence: u64) {
        self.applied.store(sequence, Ordering::Release);
        self.observe_head(sequence);
        if self.head() <= sequence {
            self.behind_since.store(NEVER, Ordering::Release);
        }
    }

    /// Records a sequence the core has reached.
    pub fn observe_head(&self, sequence: u64) {
        self.head.fetch_max(sequence, Ordering::AcqRel);
        if sequence > self.applied() {
            let now = self.encode(Instant::now());
            let _ = self.behind_since.compare_exchange(NEVER, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Starts over from a snapshot (after a resync the core's history may even be a new one).
    pub fn restart_at(&self, sequence: u64) {
        self.head.store(sequence, Ordering::Release);
        self.behind_since.store(NEVER, Ordering::Release);
        self.applied.store(sequence, Ordering::Release);
    }

    pub fn mark_connected(&self) {
        self.down_since.store(NEVER, Ordering::Release);
    }

    pub fn mark_down(&self) {
        let now = self.encode(Instant::now());
        let _ = self.down_since.compare_exchange(NEVER, now, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn down_since(&self) -> Option<Instant> {
        self.decode(self.down_since.load(Ordering::Acquire))
    }

    pub fn is_connected(&self) -> bool {
        self.down_since().is_none()
    }

    /// Whether a "not found" learned at `learned_at` may still be served at `now`. While the feed is
    /// down, a notice that would have removed it may have been missed, so it is trusted only for
    /// `negative_ttl_when_down` past the later of when it was learned and when the feed went down.
    pub fn trusts_negative(&self, learned_at: Instant, now: Instant) -> bool {
        match self.down_since() {
            None => true,
            Some(down_since) => now.saturating_duration_since(learned_at.max(down_since)) < self.negative_ttl_when_down,
        }
    }

    /// The TTL for a "not found" learned now.
    pub fn negative_ttl(&self, configured: Duration) -> Duration {
        if self.is_connected() {
            configured
        } else {
            configured.min(self.negative_ttl_when_down)
        }
    }

    /// Whether the core has been ahead of the applied notices for at least `patience`.
    pub fn behind_for(&self, patience: Duration, now: Instant) -> bool {
        self.decode(self.behind_since.load(Ordering::Acquire))
            .is_some_and(|since| now.saturating_duration_since(since) >= patience)
    }

    pub fn lag(&self, now: Instant) -> Lag {
        let notices = self.head().saturating_sub(self.applied());
        let since = [self.behind_since.load(Ordering::Acquire), self.down_since.load(Ordering::Acquire)]
            .into_iter()
            .filter_map(|nanos| self.decode(nanos))
            .min();
        Lag { notices, duration: since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHEN_DOWN: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn negatives_are_trusted_briefly_while_the_feed_is_down() {
        let status = FeedStatus::new(WHEN_DOWN);
        status.mark_connected();
        let learned = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(status.trusts_negative(learned, Instant::now()), "connected: the store's own TTL decides");
        status.mark_down();
        assert!(status.trusts_negative(learned, Instant::now()));
        tokio::time::advance(WHEN_DOWN).await;
        assert!(!status.trusts_negative(learned, Instant::now()), "learned before the outage, trusted 1s into it");
        assert_eq!(status.negative_ttl(Duration::from_secs(30)), WHEN_DOWN);
        let learned_while_down = Instant::now();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(status.trusts_negative(learned_while_down, Instant::now()));
        status.mark_connected();
        assert_eq!(status.negative_ttl(Duration::from_secs(30)), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn lag_counts_notices_and_time_behind() {
        let status = FeedStatus::new(WHEN_DOWN);
        status.restart_at(10);
        status.mark_connected();
        assert_eq!(status.lag(Instant::now()), Lag { notices: 0, duration: Duration::ZERO });
        status.observe_head(14);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(status.lag(Instant::now()), Lag { notices: 4, duration: Duration::from_secs(3) });
        assert!(status.behind_for(Duration::from_secs(3), Instant::now()));
        status.set_applied(14);
        assert_eq!(status.lag(Instant::now()).notices, 0);
        assert!(!status.behind_for(Duration::ZERO, Instant::now()));
        status.mark_down();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(status.lag(Instant::now()).duration, Duration::from_secs(2), "down counts as behind");
    }
}
