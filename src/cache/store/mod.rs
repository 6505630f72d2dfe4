//! The two answer stores. Positive and negative answers live apart, each bounded and with its own TTL,
//! so a flood of unknown IDs can only evict other "not found" entries, never a known merchant.
//!
//! Both are the packed, sharded slot store of [`slots`]: merchants in [`positive`] (the edge may hold
//! the whole merchant table), "not found" answers in [`negative`]. Freshness is decided on tokio's
//! clock, against the shorter of the TTL stamped on each entry and the TTL configured now: a shortened
//! TTL applies at once to entries already stored, a lengthened one to entries stored from then on (so
//! reloads never need to touch entries), and tests can move time with tokio's paused clock. Expired
//! entries are reclaimed when a full store evicts (expired ones first) and, for "not found" answers,
//! whenever entries are counted. Capacities change by building new stores from the old ones
//! ([`Stores::migrated`]).
//!
//! Only the cache room writes: every write method is visible to [`crate::cache`] alone, which calls
//! them under the fence.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::metrics::{CacheMetrics, EvictionCause, StoreLabel};

mod blocks;
mod negative;
mod packed;
mod positive;
mod slots;

use negative::NegativeStore;
pub use negative::{NegativeEntry, Origin};
use positive::PositiveStore;
pub use positive::{PositiveEntry, PositiveRecord};
use slots::{Record, SlotStore};

/// What a store holds for an ID, with the core sequence it reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A merchant, as of this sequence.
    Positive(u64),
    /// A "not found", as of this sequence.
    Negative(u64),
}

impl Stored {
    /// The core sequence the stored entry reflects.
    pub fn as_of_sequence(self) -> u64 {
        match self {
            Self::Positive(sequence) | Self::Negative(sequence) => sequence,
        }
    }
}

/// Most entries each store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    /// Most merchants.
    pub positive: u64,
    /// Most "not found" answers.
    pub negative: u64,
}

/// The positive and negative stores, read by lookups and written by the cache room only.
pub struct Stores {
    positive: PositiveStore,
    negative: NegativeStore,
    capacities: Capacities,
}

fn store<R: Record>(store: StoreLabel, capacity: u64, epoch: Instant, metrics: &CacheMetrics) -> SlotStore<R> {
    let metrics = metrics.clone();
    SlotStore::new(capacity, epoch, Box::new(move |cause, count| metrics.count_evictions(store, cause, count)))
}

impl Stores {
    pub(super) fn new(capacities: Capacities, metrics: &CacheMetrics) -> Self {
        Self::with_epoch(capacities, Instant::now(), metrics)
    }

    /// Empty stores that can hold entries learned as early as `epoch` (a restore from a local snapshot
    /// holds merchants learned before the process started).
    pub(super) fn with_epoch(capacities: Capacities, epoch: Instant, metrics: &CacheMetrics) -> Self {
        Self {
            positive: store(StoreLabel::Positive, capacities.positive, epoch, metrics),
            negative: store(StoreLabel::Negative, capacities.negative, epoch, metrics),
            capacities,
        }
    }

    /// New stores holding every entry of `old` that fits (the caller keeps writers out meanwhile). When
    /// shrinking, each store's eviction policy decides which entries stay.
    pub(super) fn migrated(capacities: Capacities, metrics: &CacheMetrics, old: &Stores) -> Self {
        // The old epoch, so that every entry's learned_at still fits.
        let stores = Self::with_epoch(capacities, old.positive.epoch(), metrics);
        old.positive.for_each(|id, entry| stores.positive.insert(id, &entry));
        old.negative.for_each(|id, entry| stores.negative.insert(id, &entry));
        stores
    }

    /// The capacities the stores were built with.
    pub fn capacities(&self) -> Capacities {
        self.capacities
    }

    /// The stored merchant, if it is still within its TTL at `now`.
    pub fn fresh_positive(&self, id: &str, now: Instant, ttl: Duration) -> Option<PositiveEntry> {
        self.positive.within(id, now, ttl, Duration::ZERO)
    }

    /// The stored merchant, if no more than `past_ttl` beyond its TTL at `now` (serve-stale).
    pub fn positive_within(&self, id: &str, now: Instant, ttl: Duration, past_ttl: Duration) -> Option<PositiveEntry> {
        self.positive.within(id, now, ttl, past_ttl)
    }

    /// The stored "not found", if it is still within its TTL at `now`.
    pub fn fresh_negative(&self, id: &str, now: Instant, ttl: Duration) -> Option<NegativeEntry> {
        self.negative.within(id, now, ttl, Duration::ZERO)
    }

    /// Stores a merchant and forgets any "not found" for it (`held` is what [`Self::stored`] said).
    pub(super) fn put_positive(&self, id: &str, entry: PositiveRecord<'_>, held: Option<Stored>) {
        // `held` was read under the ID's slot, which every write for the ID holds, so it is exact.
        if matches!(held, Some(Stored::Negative(_))) {
            self.negative.remove(id);
        }
        self.positive.insert_record(id, entry);
    }

    /// Stores a merchant in stores being restored, which hold no "not found" to forget.
    pub(super) fn restore_positive(&self, id: &str, entry: &PositiveEntry) {
        self.positive.insert(id, entry);
    }

    /// Stores a "not found" and forgets any merchant for that ID (`held` is what [`Self::stored`] said).
    pub(super) fn put_negative(&self, id: Arc<str>, entry: NegativeEntry, held: Option<Stored>) {
        if matches!(held, Some(Stored::Positive(_))) {
            self.positive.remove(&id);
        }
        self.negative.insert(&id, &entry);
    }

    /// Forgets everything about one ID.
    pub(super) fn remove(&self, id: &str) {
        self.positive.remove(id);
        self.negative.remove(id);
    }

    /// Which store holds `id`, fresh or not, and as of which core sequence: a change notice older than
    /// it must not overwrite it. The two stores never both hold an ID (every write for an ID happens
    /// under its fill slot's lock and clears the other store), so one read usually answers.
    pub fn stored(&self, id: &str) -> Option<Stored> {
        match self.positive.as_of_sequence(id) {
            Some(sequence) => Some(Stored::Positive(sequence)),
            // An empty negative store (every warm start) needs no probe: its count is exact, and a
            // "not found" for this ID could only be added under the slot the caller holds.
            None if self.negative.len() == 0 => None,
            None => self.negative.as_of_sequence(id).map(Stored::Negative),
        }
    }

    /// Whether a merchant is stored for `id`, fresh or not.
    pub fn holds_positive(&self, id: &str) -> bool {
        self.positive.contains(id)
    }

    /// Forgets every "not found" (after the feed lost track of changes, none of them can be trusted).
    pub(super) fn clear_negative(&self) {
        self.negative.remove_where(EvictionCause::Explicit, |_| true);
    }

    /// Forgets everything (the core's history was replaced: sequences are no longer comparable).
    pub(super) fn clear_all(&self) {
        self.positive.remove_where(EvictionCause::Explicit, |_| true);
        self.negative.remove_where(EvictionCause::Explicit, |_| true);
    }

    /// Forgets merchants stored before `sequence` that a snapshot taken at `sequence` did not refresh:
    /// they were deleted while the feed was out of step.
    pub(super) fn drop_positives_older_than(&self, sequence: u64) {
        self.positive.remove_where(EvictionCause::Explicit, |stamp| stamp.as_of_sequence < sequence);
    }

    /// How many parts [`Self::for_each_positive_in_shard`] splits the merchants into.
    pub fn positive_shards(&self) -> usize {
        self.positive.shard_count()
    }

    /// Every merchant of one part (of [`Self::positive_shards`]), read under that part's lock only:
    /// lookups keep reading meanwhile, and nothing is held between parts.
    pub fn for_each_positive_in_shard(&self, shard: usize, visit: impl FnMut(&str, PositiveEntry)) {
        self.positive.for_each_in_shard(shard, visit);
    }

    /// Entry counts (positive, negative), after reclaiming the "not found" answers past their stamped
    /// TTL (a flood leaves many, and they are what the count would otherwise overstate).
    pub fn entry_counts(&self) -> (u64, u64) {
        self.negative.remove_expired(Instant::now());
        (self.positive.len(), self.negative.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EncodedMerchant;

    const LONG: Duration = Duration::from_secs(60);

    fn stores(negative: u64) -> Stores {
        Stores::new(Capacities { positive: 1000, negative }, &CacheMetrics::default())
    }

    fn merchant(id: &str) -> PositiveEntry {
        PositiveEntry {
            merchant: EncodedMerchant::encode(&crate::pb::Merchant { merchant_id: id.into(), ..Default::default() }),
            as_of_sequence: 1,
            learned_at: Instant::now(),
            ttl: LONG,
        }
    }

    fn not_found(ttl: Duration) -> NegativeEntry {
        NegativeEntry { as_of_sequence: 1, learned_at: Instant::now(), ttl, origin: Origin::CoreRead }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_on_the_shorter_of_their_stamp_and_the_current_ttl() {
        let stores = stores(100);
        stores.put_positive("a", merchant("a").record(), None);
        stores.put_negative("b".into(), not_found(Duration::from_secs(5)), None);
        stores.put_negative("c".into(), not_found(Duration::from_millis(500)), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(stores.fresh_positive("a", now, LONG).is_some());
        assert!(stores.fresh_negative("b", now, LONG).is_some());
        assert!(stores.fresh_negative("c", now, LONG).is_none(), "its own short stamp is honoured");
        assert!(stores.fresh_negative("b", now, Duration::from_secs(1)).is_none(), "a shortened TTL applies at once");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(stores.fresh_negative("b", Instant::now(), Duration::from_secs(3600)).is_none(), "not lengthened");
        tokio::time::advance(LONG).await;
        assert!(stores.fresh_positive("a", Instant::now(), LONG).is_none());
    }

    #[tokio::test]
    async fn positive_and_negative_exclude_each_other() {
        let stores = stores(100);
        // Writers pass what `stored` said (the cache room reads it under the ID's slot).
        stores.put_negative("a".into(), not_found(LONG), stores.stored("a"));
        stores.put_positive("a", merchant("a").record(), stores.stored("a"));
        assert!(stores.fresh_negative("a", Instant::now(), LONG).is_none());
        assert_eq!(stores.entry_counts(), (1, 0));
        stores.put_negative("a".into(), not_found(LONG), stores.stored("a"));
        assert!(stores.fresh_positive("a", Instant::now(), LONG).is_none());
        assert_eq!(stores.entry_counts(), (0, 1));
        stores.remove("a");
        assert!(stores.fresh_negative("a", Instant::now(), LONG).is_none());
    }

    #[tokio::test]
    async fn a_flood_of_unknown_ids_cannot_evict_merchants() {
        let stores = stores(50);
        for i in 0..100 {
            stores.put_positive(&format!("known{i}"), merchant("k").record(), None);
        }
        for i in 0..10_000 {
            stores.put_negative(format!("unknown{i}").into(), not_found(LONG), None);
        }
        let (positive, negative) = stores.entry_counts();
        assert_eq!(positive, 100);
        assert!(negative <= 50, "negative store is bounded: {negative}");
        assert!((0..100).all(|i| stores.fresh_positive(&format!("known{i}"), Instant::now(), LONG).is_some()));
    }

    #[tokio::test]
    async fn migration_keeps_every_entry_that_fits() {
        let old = stores(100);
        for i in 0..20 {
            old.put_positive(&format!("known{i}"), merchant("k").record(), None);
            old.put_negative(format!("unknown{i}").into(), not_found(LONG), None);
        }
        let grown = Stores::migrated(Capacities { positive: 2000, negative: 200 }, &CacheMetrics::default(), &old);
        assert_eq!(grown.entry_counts(), (20, 20));
        let entry = grown.fresh_positive("known3", Instant::now(), LONG).unwrap();
        assert_eq!(entry.as_of_sequence, 1, "entries move with their stamps");
        let shrunk = Stores::migrated(Capacities { positive: 5, negative: 5 }, &CacheMetrics::default(), &old);
        let (positive, negative) = shrunk.entry_counts();
        assert!(positive <= 5 && negative <= 5, "{positive} {negative}");
    }
}
