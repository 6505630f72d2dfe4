//! The two answer stores. Positive and negative answers live apart, each bounded and with its own TTL,
//! so a flood of unknown IDs can only evict other "not found" entries, never a known merchant.
//!
//! moka bounds each store (TinyLFU admission resists scans) and reclaims memory on its own wall clock.
//! Freshness is decided here, on tokio's clock, from when each answer was learned: so TTL changes apply
//! to entries already stored, and tests can move time with tokio's paused clock.
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::pb::Merchant;

/// A merchant the core said exists.
#[derive(Debug)]
pub struct PositiveEntry {
    pub merchant: Merchant,
    /// The core sequence the record reflects.
    pub as_of_sequence: u64,
    pub learned_at: Instant,
}

/// The core's "no such merchant", remembered for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegativeEntry {
    pub as_of_sequence: u64,
    pub learned_at: Instant,
    /// Shorter than the configured negative TTL while the change feed cannot be trusted.
    pub ttl: Duration,
}

/// Lets moka reclaim each negative entry after its own TTL.
struct NegativeExpiry;

impl moka::Expiry<Arc<str>, NegativeEntry> for NegativeExpiry {
    fn expire_after_create(&self, _: &Arc<str>, entry: &NegativeEntry, _: std::time::Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        entry: &NegativeEntry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

pub struct Stores {
    positive: Cache<Arc<str>, Arc<PositiveEntry>>,
    negative: Cache<Arc<str>, NegativeEntry>,
    positive_ttl: Duration,
}

impl Stores {
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            positive: Cache::builder()
                .name("positive")
                .max_capacity(config.positive_capacity.get())
                .time_to_live(config.positive_ttl)
                .support_invalidation_closures()
                .build(),
            negative: Cache::builder()
                .name("negative")
                .max_capacity(config.negative_capacity.get())
                .expire_after(NegativeExpiry)
                .build(),
            positive_ttl: config.positive_ttl,
        }
    }

    /// The stored merchant, if it is still within the positive TTL at `now`.
    pub fn fresh_positive(&self, id: &str, now: Instant) -> Option<Arc<PositiveEntry>> {
        self.positive.get(id).filter(|entry| now.saturating_duration_since(entry.learned_at) < self.positive_ttl)
    }

    /// The stored "not found", if it is still within its TTL at `now`.
    pub fn fresh_negative(&self, id: &str, now: Instant) -> Option<NegativeEntry> {
        self.negative.get(id).filter(|entry| now.saturating_duration_since(entry.learned_at) < entry.ttl)
    }

    /// Stores a merchant and forgets any "not found" for it.
    pub fn put_positive(&self, id: Arc<str>, entry: PositiveEntry) {
        self.negative.invalidate(&id);
        self.positive.insert(id, Arc::new(entry));
    }

    /// Stores a "not found" and forgets any merchant for that ID.
    pub fn put_negative(&self, id: Arc<str>, entry: NegativeEntry) {
        self.positive.invalidate(&id);
        self.negative.insert(id, entry);
    }

    /// Forgets everything about one ID.
    pub fn remove(&self, id: &str) {
        self.positive.invalidate(id);
        self.negative.invalidate(id);
    }

    /// The core sequence of whatever is stored for `id`, fresh or not: a change notice older than it
    /// must not overwrite it.
    pub fn stored_as_of(&self, id: &str) -> Option<u64> {
        let positive = self.positive.get(id).map(|entry| entry.as_of_sequence);
        let negative = self.negative.get(id).map(|entry| entry.as_of_sequence);
        positive.max(negative)
    }

    pub fn holds_positive(&self, id: &str) -> bool {
        self.positive.contains_key(id)
    }

    /// Forgets every "not found" (after the feed lost track of changes, none of them can be trusted).
    pub fn clear_negative(&self) {
        self.negative.invalidate_all();
    }

    /// Forgets everything (the core's history was replaced: sequences are no longer comparable).
    pub fn clear_all(&self) {
        self.positive.invalidate_all();
        self.negative.invalidate_all();
    }

    /// Forgets merchants stored before `sequence` that a snapshot taken at `sequence` did not refresh:
    /// they were deleted while the feed was out of step.
    pub fn drop_positives_older_than(&self, sequence: u64) {
        self.positive
            .invalidate_entries_if(move |_, entry| entry.as_of_sequence < sequence)
            .expect("invalidation closures are enabled on the positive store");
    }

    /// Entry counts (positive, negative), after running moka's pending maintenance (until it has run,
    /// moka's counts are estimates).
    pub fn entry_counts(&self) -> (u64, u64) {
        self.positive.run_pending_tasks();
        self.negative.run_pending_tasks();
        (self.positive.entry_count(), self.negative.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    fn stores(negative_capacity: u64) -> Stores {
        Stores::new(&CacheConfig {
            positive_capacity: NonZeroU64::new(1000).unwrap(),
            positive_ttl: Duration::from_secs(60),
            negative_capacity: NonZeroU64::new(negative_capacity).unwrap(),
            negative_ttl: Duration::from_secs(5),
        })
    }

    fn merchant(id: &str) -> PositiveEntry {
        PositiveEntry {
            merchant: Merchant { merchant_id: id.into(), ..Default::default() },
            as_of_sequence: 1,
            learned_at: Instant::now(),
        }
    }

    fn not_found(ttl: Duration) -> NegativeEntry {
        NegativeEntry { as_of_sequence: 1, learned_at: Instant::now(), ttl }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_on_their_own_ttl() {
        let stores = stores(100);
        stores.put_positive("a".into(), merchant("a"));
        stores.put_negative("b".into(), not_found(Duration::from_secs(5)));
        stores.put_negative("c".into(), not_found(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(stores.fresh_positive("a", now).is_some());
        assert!(stores.fresh_negative("b", now).is_some());
        assert!(stores.fresh_negative("c", now).is_none(), "the short feed-down TTL is honoured");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(stores.fresh_negative("b", Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(stores.fresh_positive("a", Instant::now()).is_none());
    }

    #[tokio::test]
    async fn positive_and_negative_exclude_each_other() {
        let stores = stores(100);
        stores.put_negative("a".into(), not_found(Duration::from_secs(5)));
        stores.put_positive("a".into(), merchant("a"));
        assert!(stores.fresh_negative("a", Instant::now()).is_none());
        stores.put_negative("a".into(), not_found(Duration::from_secs(5)));
        assert!(stores.fresh_positive("a", Instant::now()).is_none());
        stores.remove("a");
        assert!(stores.fresh_negative("a", Instant::now()).is_none());
    }

    #[tokio::test]
    async fn a_flood_of_unknown_ids_cannot_evict_merchants() {
        let stores = stores(50);
        for i in 0..100 {
            stores.put_positive(format!("known{i}").into(), merchant("k"));
        }
        for i in 0..10_000 {
            stores.put_negative(format!("unknown{i}").into(), not_found(Duration::from_secs(5)));
        }
        let (positive, negative) = stores.entry_counts();
        assert_eq!(positive, 100);
        assert!(negative <= 50, "negative store is bounded: {negative}");
        assert!((0..100).all(|i| stores.fresh_positive(&format!("known{i}"), Instant::now()).is_some()));
    }
}
