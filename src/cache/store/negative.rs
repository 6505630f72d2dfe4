//! The negative store: "not found" answers, in the same packed slot store as merchants
//! ([`super::slots`]). A digit ID and its answer fit the slot, so nothing goes to the arena.
//!
//! It replaced moka, whose `get` recorded each read in a buffer every core writes and stamped the
//! entry's access time: a cached "not found" asked from two cores moved those lines between them on
//! every lookup. Here a read of a hot "not found" writes nothing. Scan resistance comes from sampled
//! LFU instead of TinyLFU admission: a flood of random IDs, each asked once, evicts other once-seen
//! IDs, never one asked often enough to saturate its use count.
use std::time::Duration;

use tokio::time::Instant;

use super::packed::Key;
use super::slots::{Record, Slot, SlotStore, Stamp};

/// The core's "no such merchant".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegativeEntry {
    /// The core sequence the "not found" reflects.
    pub as_of_sequence: u64,
    /// When the edge learned it.
    pub learned_at: Instant,
    /// The negative TTL when it was stored (shorter while the change feed cannot be trusted).
    pub ttl: Duration,
    /// How the edge learned it.
    pub origin: Origin,
}

/// Where the edge learned an answer, for explaining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A GetMerchant answer.
    CoreRead,
    /// A change notice or a snapshot.
    Notice,
}

const _: () = assert!(std::mem::size_of::<Slot<Origin>>() == 40);

pub(super) type NegativeStore = SlotStore<NegativeEntry>;

impl Record for NegativeEntry {
    type Extra = Origin;

    fn stamp(&self) -> Stamp {
        Stamp { as_of_sequence: self.as_of_sequence, learned_at: self.learned_at, ttl: self.ttl }
    }

    fn stored(&self, _: &str) -> (&[u8], Origin) {
        (&[], self.origin)
    }

    fn read_back(_: Key<'_>, _: &[u8], origin: Origin, stamp: Stamp) -> Self {
        Self { as_of_sequence: stamp.as_of_sequence, learned_at: stamp.learned_at, ttl: stamp.ttl, origin }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::cache::metrics::EvictionCause;
    use crate::cache::store::slots::MAX_USES;

    const LONG: Duration = Duration::from_secs(60);

    type Evictions = Arc<Mutex<Vec<(EvictionCause, u64)>>>;

    fn store(capacity: u64) -> (NegativeStore, Evictions) {
        let evictions = Evictions::default();
        let sink = evictions.clone();
        let store = NegativeStore::new(
            capacity,
            Instant::now(),
            Box::new(move |cause, count| sink.lock().unwrap().push((cause, count))),
        );
        (store, evictions)
    }

    fn not_found(sequence: u64, ttl: Duration) -> NegativeEntry {
        NegativeEntry { as_of_sequence: sequence, learned_at: Instant::now(), ttl, origin: Origin::CoreRead }
    }

    fn counted(evictions: &Evictions, cause: EvictionCause) -> u64 {
        evictions.lock().unwrap().iter().filter(|(counted, _)| *counted == cause).map(|(_, count)| count).sum()
    }

    fn fresh(store: &NegativeStore, id: &str) -> Option<NegativeEntry> {
        store.within(id, Instant::now(), LONG, Duration::ZERO)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_read_back_as_stored_under_ids_of_every_shape() {
        let (store, _) = store(1000);
        let ids = ["897000000000042", "0042", "42", "99999999999999999999", "shop-7", "", "商户42"];
        for (sequence, id) in ids.iter().enumerate() {
            let origin = if sequence % 2 == 0 { Origin::CoreRead } else { Origin::Notice };
            store.insert(id, &NegativeEntry { origin, ..not_found(sequence as u64, LONG) });
        }
        for (sequence, id) in ids.iter().enumerate() {
            let found = fresh(&store, id).unwrap();
            assert_eq!(found.as_of_sequence, sequence as u64, "{id:?}");
            assert_eq!(found.origin == Origin::Notice, sequence % 2 == 1, "{id:?}");
            assert_eq!(store.as_of_sequence(id), Some(sequence as u64));
        }
        let mut seen = Vec::new();
        store.for_each(|id, _| seen.push(id.to_owned()));
        seen.sort();
        let mut expected: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_is_the_shorter_of_the_stamp_and_the_configured_ttl() {
        let (store, _) = store(100);
        store.insert("short", &not_found(1, Duration::from_millis(500)));
        store.insert("long", &not_found(1, Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert!(store.within("short", now, LONG, Duration::ZERO).is_none(), "its own stamp is honoured");
        assert!(store.within("long", now, LONG, Duration::ZERO).is_some());
        assert!(store.within("long", now, Duration::from_secs(1), Duration::ZERO).is_none(), "a shortened TTL applies");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(store.within("long", Instant::now(), Duration::MAX, Duration::ZERO).is_none(), "never lengthened");
        assert_eq!(store.as_of_sequence("long"), Some(1), "held, expired, until reclaimed");
    }

    #[tokio::test]
    async fn the_capacity_bounds_the_whole_store() {
        let (store, evictions) = store(5000);
        for i in 0..20_000 {
            store.insert(&format!("897{i:012}"), &not_found(1, LONG));
        }
        assert_eq!(store.len(), 5000);
        let mut counted_entries = 0;
        store.for_each(|_, _| counted_entries += 1);
        assert_eq!(counted_entries, 5000);
        assert_eq!(counted(&evictions, EvictionCause::Size), 15_000, "one out for every one in beyond the bound");
    }

    #[tokio::test]
    async fn a_flood_of_once_seen_ids_evicts_only_other_once_seen_ids() {
        let (store, _) = store(1000);
        let asked: Vec<String> = (0..100).map(|i| format!("897{i:012}")).collect();
        for id in &asked {
            store.insert(id, &not_found(1, LONG));
            for _ in 0..MAX_USES {
                fresh(&store, id).unwrap();
            }
        }
        for i in 0..10_000 {
            store.insert(&format!("896{i:012}"), &not_found(1, LONG));
        }
        assert_eq!(store.len(), 1000, "bounded");
        let kept = asked.iter().filter(|id| store.contains(id)).count();
        assert_eq!(kept, 100, "a flood ten times the capacity evicted a not-found terminals keep asking for");
    }

    #[tokio::test(start_paused = true)]
    async fn every_way_out_is_counted_with_its_cause() {
        let (store, evictions) = store(10);
        for i in 0..10 {
            store.insert(&i.to_string(), &not_found(1, Duration::from_secs(1)));
        }
        store.insert("3", &not_found(2, Duration::from_secs(1)));
        assert_eq!(counted(&evictions, EvictionCause::Replaced), 1);
        assert!(store.remove("4"));
        assert!(!store.remove("4"), "only what was there is counted");
        assert_eq!(counted(&evictions, EvictionCause::Explicit), 1);
        store.insert("new", &not_found(1, LONG));
        tokio::time::advance(Duration::from_secs(2)).await;
        store.insert("newer", &not_found(1, LONG));
        assert_eq!(counted(&evictions, EvictionCause::Expired), 1, "a full store evicts an expired entry first");
        assert_eq!(counted(&evictions, EvictionCause::Size), 0);
        store.remove_expired(Instant::now());
        assert_eq!(store.len(), 2, "only the two long-lived entries stay");
        assert_eq!(counted(&evictions, EvictionCause::Expired), 9);
        store.remove_where(EvictionCause::Explicit, |_| true);
        assert_eq!((store.len(), counted(&evictions, EvictionCause::Explicit)), (0, 3));
    }
}
