//! What the edge knows about its change feed, shared lock-free with the lookup path: the applied
//! sequence (for the fence), whether the stream can be trusted (for negative answers), and the lag;
//! and a wake-up for lookups waiting until a sequence is applied (consistency tokens).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ResyncReason;
use crate::relay::NatsLink;

/// Marks an instant slot as empty.
const NEVER: u64 = u64::MAX;

/// The feed's state, read by the lookup path and the operators' views.
pub struct FeedState {
    /// Instants are kept as nanoseconds since this, so they fit in atomics.
    origin: Instant,
    applied: AtomicU64,
    /// The applied sequence again, for lookups that wait for one ([`FeedState::wait_applied`]): the
    /// atomic stays the hit path's one load, this wakes waiters when a notice is applied (no polling).
    applied_watch: watch::Sender<u64>,
    /// The highest sequence the core has shown (notices, reads, snapshots).
    head: AtomicU64,
    /// When the stream went down (`NEVER` while it is connected and trusted).
    down_since: AtomicU64,
    /// Since when the core has been ahead of the applied notices (`NEVER` while caught up).
    behind_since: AtomicU64,
    /// The last resync after the first sync, for explaining answers.
    last_resync: parking_lot::Mutex<Option<(Instant, ResyncReason)>>,
    /// The core history `applied` belongs to; `None` until known and while a sync replaces the stores
    /// (for the local snapshot, which may only claim a position the stores are at).
    incarnation: parking_lot::Mutex<Option<std::sync::Arc<str>>>,
    /// The NATS connection, when notices come from the relays' stream (for `/readyz` and metrics).
    nats: std::sync::OnceLock<std::sync::Arc<NatsLink>>,
}

/// How far the edge trails the core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Changes the core has shown that are not applied yet.
    pub notices: u64,
    /// How long the edge has been behind (or the feed down, whichever is longer); zero when caught up.
    pub duration: Duration,
}

impl Default for FeedState {
    fn default() -> Self {
        Self::new()
    }
}

impl FeedState {
    /// Starts down: nothing is trusted until the feed has synced and connected.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            applied: AtomicU64::new(0),
            applied_watch: watch::Sender::new(0),
            head: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
            behind_since: AtomicU64::new(NEVER),
            last_resync: parking_lot::Mutex::new(None),
            incarnation: parking_lot::Mutex::new(None),
            nats: std::sync::OnceLock::new(),
        }
    }

    /// The NATS connection's state, made on the first call (the NATS source's connection updates it).
    pub fn follow_nats(&self) -> std::sync::Arc<NatsLink> {
        self.nats.get_or_init(Default::default).clone()
    }

    /// The NATS connection, if the feed follows the relays' stream.
    pub fn nats(&self) -> Option<&NatsLink> {
        self.nats.get().map(|link| &**link)
    }

    fn encode(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() as u64).min(NEVER - 1)
    }

    fn decode(&self, nanos: u64) -> Option<Instant> {
        (nanos != NEVER).then(|| self.origin + Duration::from_nanos(nanos))
    }

    /// The last sequence applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The highest sequence the core has shown.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Records that `sequence` (the next in order) is applied.
    pub fn set_applied(&self, sequence: u64) {
        self.applied.store(sequence, Ordering::Release);
        self.observe_head(sequence);
        if self.head() <= sequence {
            self.behind_since.store(NEVER, Ordering::Release);
        }
        self.applied_watch.send_replace(sequence);
    }

    /// Waits until the applied sequence reaches `sequence` or `deadline` passes; returns whether it
    /// did. Woken by [`FeedState::set_applied`] and [`FeedState::restart_at`] themselves, which run
    /// after the change is in the stores, so a waiter that wakes reads them with the change in.
    pub async fn wait_applied(&self, sequence: u64, deadline: Instant) -> bool {
        let mut applied = self.applied_watch.subscribe();
        tokio::time::timeout_at(deadline, applied.wait_for(|applied| *applied >= sequence))
            .await
            .is_ok_and(|reached| reached.is_ok())
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
        self.applied_watch.send_replace(sequence);
    }

    /// The stream is open. If reads already showed the core ahead, the edge stays "behind" from when
    /// it went down, so a reconnect does not renew the trust of old "not found" entries.
    pub fn mark_connected(&self) {
        let went_down = self.down_since.swap(NEVER, Ordering::AcqRel);
        if self.is_behind() {
            self.behind_since.fetch_min(went_down, Ordering::AcqRel);
        }
    }

    /// The stream is down (from now, unless it already was).
    pub fn mark_down(&self) {
        let now = self.encode(Instant::now());
        let _ = self.down_since.compare_exchange(NEVER, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether the stream is open.
    pub fn is_connected(&self) -> bool {
        self.down_since.load(Ordering::Acquire) == NEVER
    }

    /// Whether the core has shown changes the edge has not applied.
    pub fn is_behind(&self) -> bool {
        self.head() > self.applied()
    }

    /// Since when the change feed cannot vouch for the stores: down, or behind the core.
    fn untrusted_since(&self) -> Option<Instant> {
        let behind = if self.is_behind() { self.behind_since.load(Ordering::Acquire) } else { NEVER };
        self.decode(behind.min(self.down_since.load(Ordering::Acquire)))
    }

    /// Whether a "not found" learned at `learned_at` may still be served at `now`. While the feed is
    /// down or behind, a notice that would have removed it may not have been applied, so it is trusted
    /// only for `when_down` (`feed.negative_ttl_when_down`) past the later of when it was learned and
    /// when trust was lost.
    pub fn trusts_negative(&self, learned_at: Instant, now: Instant, when_down: Duration) -> bool {
        match self.untrusted_since() {
            None => true,
            Some(since) => now.saturating_duration_since(learned_at.max(since)) < when_down,
        }
    }

    /// The TTL for a "not found" learned now.
    pub fn negative_ttl(&self, configured: Duration, when_down: Duration) -> Duration {
        match self.untrusted_since() {
            None => configured,
            Some(_) => configured.min(when_down),
        }
    }

    /// Whether the edge has been behind the core for at least `patience`.
    pub fn behind_for(&self, patience: Duration, now: Instant) -> bool {
        self.is_behind()
            && self
                .decode(self.behind_since.load(Ordering::Acquire))
                .is_some_and(|since| now.saturating_duration_since(since) >= patience)
    }

    /// Records which core history the applied sequence belongs to (`None`: unknown, or being replaced).
    pub fn set_incarnation(&self, incarnation: Option<&str>) {
        *self.incarnation.lock() = incarnation.map(std::sync::Arc::from);
    }

    /// The core history the applied sequence belongs to, when the stores are in step with one.
    pub fn incarnation(&self) -> Option<std::sync::Arc<str>> {
        self.incarnation.lock().clone()
    }

    /// Remembers a resync, for explaining answers.
    pub fn record_resync(&self, reason: ResyncReason) {
        *self.last_resync.lock() = Some((Instant::now(), reason));
    }

    /// The last resync after the first sync: when, and why.
    pub fn last_resync(&self) -> Option<(Instant, ResyncReason)> {
        *self.last_resync.lock()
    }

    /// How far the edge trails the core at `now`.
    pub fn lag(&self, now: Instant) -> Lag {
        let notices = self.head().saturating_sub(self.applied());
        let duration = self.untrusted_since().map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        Lag { notices, duration }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHEN_DOWN: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn negatives_are_trusted_briefly_while_the_feed_is_down() {
        let status = FeedState::new();
        status.mark_connected();
        let learned = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(status.trusts_negative(learned, Instant::now(), WHEN_DOWN), "connected: the store's own TTL decides");
        status.mark_down();
        assert!(status.trusts_negative(learned, Instant::now(), WHEN_DOWN));
        tokio::time::advance(WHEN_DOWN).await;
        assert!(
            !status.trusts_negative(learned, Instant::now(), WHEN_DOWN),
            "learned before the outage, trusted 1s into it"
        );
        assert_eq!(status.negative_ttl(Duration::from_secs(30), WHEN_DOWN), WHEN_DOWN);
        let learned_while_down = Instant::now();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(status.trusts_negative(learned_while_down, Instant::now(), WHEN_DOWN));
        status.mark_connected();
        assert_eq!(status.negative_ttl(Duration::from_secs(30), WHEN_DOWN), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_the_apply_itself_or_gives_up_at_its_deadline() {
        let state = std::sync::Arc::new(FeedState::new());
        state.restart_at(10);
        let deadline = Instant::now() + Duration::from_millis(200);
        assert!(state.wait_applied(10, deadline).await, "already applied: no wait");
        let waiter = tokio::spawn({
            let state = state.clone();
            async move { (state.wait_applied(12, deadline).await, Instant::now()) }
        });
        tokio::time::advance(Duration::from_millis(50)).await;
        state.set_applied(11);
        tokio::time::advance(Duration::from_millis(50)).await;
        let applied_at = Instant::now();
        state.set_applied(12);
        let (reached, woke_at) = waiter.await.unwrap();
        assert!(reached);
        assert_eq!(woke_at, applied_at, "woken by the apply, not by a timer");
        let started = Instant::now();
        assert!(!state.wait_applied(13, started + Duration::from_millis(200)).await);
        assert_eq!(Instant::now() - started, Duration::from_millis(200), "gave up at its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn lag_counts_notices_and_time_behind() {
        let status = FeedState::new();
        status.restart_at(10);
        status.mark_connected();
        assert_eq!(status.lag(Instant::now()), Lag { notices: 0, duration: Duration::ZERO });
        status.observe_head(14);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(status.lag(Instant::now()), Lag { notices: 4, duration: Duration::from_secs(3) });
        status.set_applied(12);
        assert_eq!(status.lag(Instant::now()).notices, 2, "progress alone does not end being behind");
        status.set_applied(14);
        assert_eq!(status.lag(Instant::now()), Lag { notices: 0, duration: Duration::ZERO });
        status.mark_down();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(status.lag(Instant::now()).duration, Duration::from_secs(2), "down counts as behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_behind_the_core_does_not_renew_trust() {
        let status = FeedState::new();
        status.mark_connected();
        let learned = Instant::now();
        status.mark_down();
        status.observe_head(3);
        tokio::time::advance(Duration::from_secs(5)).await;
        status.mark_connected();
        assert!(!status.trusts_negative(learned, Instant::now(), WHEN_DOWN), "the backlog is not applied yet");
        assert_eq!(status.lag(Instant::now()).duration, Duration::from_secs(5));
        status.set_applied(3);
        assert!(
            status.trusts_negative(learned, Instant::now(), WHEN_DOWN),
            "caught up: the notices would have removed it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_seen_before_its_notice_briefly_narrows_trust() {
        let status = FeedState::new();
        status.mark_connected();
        let learned = Instant::now();
        tokio::time::advance(Duration::from_secs(60)).await;
        status.observe_head(1);
        assert!(status.trusts_negative(learned, Instant::now(), WHEN_DOWN), "within the window after falling behind");
        tokio::time::advance(WHEN_DOWN).await;
        assert!(!status.trusts_negative(learned, Instant::now(), WHEN_DOWN));
        status.set_applied(1);
        assert!(status.trusts_negative(learned, Instant::now(), WHEN_DOWN));
    }
}
