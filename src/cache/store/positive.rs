//! The positive store: every merchant the edge knows, in the packed slot store ([`super::slots`]).
//!
//! The encoded merchant starts with its own `merchant_id` field; when that is the ID it is stored
//! under (always, for records the resolver stores), those bytes are left out and written back when the
//! record is read, so the ID is held once, packed in the slot. The merchant's status rides in the
//! slot, so answers need not decode the bytes. A synthetic merchant costs about 104 bytes in all.
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::packed::{stored_form, Key, FORM_WHOLE, ID_FIELD_KEY, MAX_PACKED_DIGITS};
use super::slots::{Record, Slot, SlotStore, Stamp};
use crate::wire::EncodedMerchant;

/// A merchant as stored and as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct PositiveEntry {
    /// Encoded once, answered as is.
    pub merchant: EncodedMerchant,
    /// The core sequence the record reflects.
    pub as_of_sequence: u64,
    /// When the edge learned it from the core.
    pub learned_at: Instant,
    /// The positive TTL when it was stored.
    pub ttl: Duration,
}

/// What a merchant's slot keeps besides its stamp.
#[derive(Clone, Copy)]
pub(super) struct Kept {
    /// `FORM_WHOLE` or `FORM_ID_ELIDED`.
    form: u8,
    /// The merchant's status (fits a byte).
    status: u8,
}

// The slot is most of an entry's fixed cost: keep it at 40 bytes.
const _: () = assert!(std::mem::size_of::<Slot<Kept>>() == 40);

pub(super) type PositiveStore = SlotStore<PositiveEntry>;

impl Record for PositiveEntry {
    type Extra = Kept;

    fn stamp(&self) -> Stamp {
        self.record().stamp()
    }

    fn stored<'a>(&'a self, id: &str) -> (&'a [u8], Kept) {
        self.record().kept(id)
    }

    fn read_back(id: Key<'_>, kept: &[u8], extra: Kept, stamp: Stamp) -> Self {
        PositiveEntry {
            merchant: EncodedMerchant::from_parts(merchant(id, kept, extra.form), i32::from(extra.status)),
            as_of_sequence: stamp.as_of_sequence,
            learned_at: stamp.learned_at,
            ttl: stamp.ttl,
        }
    }
}

/// A merchant to store, borrowed from wherever its writer holds it (a snapshot page holds many).
#[derive(Debug, Clone, Copy)]
pub struct PositiveRecord<'m> {
    /// The encoded `merchant.v1.Merchant`.
    pub merchant: &'m [u8],
    /// Its status field.
    pub status: i32,
    /// The core sequence the record reflects.
    pub as_of_sequence: u64,
    /// When the edge learned it from the core.
    pub learned_at: Instant,
    /// The positive TTL when it is stored.
    pub ttl: Duration,
}

impl PositiveEntry {
    /// The entry as a record to store.
    pub fn record(&self) -> PositiveRecord<'_> {
        PositiveRecord {
            merchant: self.merchant.as_slice(),
            status: self.merchant.status(),
            as_of_sequence: self.as_of_sequence,
            learned_at: self.learned_at,
            ttl: self.ttl,
        }
    }
}

impl<'m> PositiveRecord<'m> {
    fn stamp(self) -> Stamp {
        Stamp { as_of_sequence: self.as_of_sequence, learned_at: self.learned_at, ttl: self.ttl }
    }

    /// What the slot and the arena keep of the merchant stored under `id`.
    fn kept(self, id: &str) -> (&'m [u8], Kept) {
        let (record, form) = stored_form(id.as_bytes(), self.merchant);
        (record, Kept { form, status: u8::try_from(self.status).unwrap_or(u8::MAX) })
    }
}

impl PositiveStore {
    /// Stores a borrowed merchant record under `id`.
    pub(super) fn insert_record(&self, id: &str, entry: PositiveRecord<'_>) {
        let (record, extra) = entry.kept(id);
        self.insert_parts(id, record, extra, entry.stamp());
    }
}

/// The encoded merchant stored under `id`, rebuilt as it was given to [`SlotStore::insert`].
fn merchant(id: Key<'_>, kept: &[u8], form: u8) -> Bytes {
    if form == FORM_WHOLE {
        return Bytes::copy_from_slice(kept);
    }
    let mut buffer = [0; MAX_PACKED_DIGITS];
    let id = id.text(&mut buffer);
    let mut bytes = Vec::with_capacity(2 + id.len() + kept.len());
    // Elided only when the ID's length fits one varint byte, so this is the field as it was.
    bytes.extend_from_slice(&[ID_FIELD_KEY, id.len() as u8]);
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(kept);
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::metrics::EvictionCause;
    use crate::cache::store::blocks::CHUNK_BYTES;
    use crate::cache::store::slots::{MAX_USES, TTL_KINDS};

    const LONG: Duration = Duration::from_secs(60);

    fn store(capacity: u64) -> PositiveStore {
        PositiveStore::new(capacity, Instant::now(), Box::new(|_, _| {}))
    }

    fn entry(id: &str, sequence: u64) -> PositiveEntry {
        PositiveEntry {
            merchant: EncodedMerchant::encode(&crate::pb::Merchant { merchant_id: id.into(), ..Default::default() }),
            as_of_sequence: sequence,
            learned_at: Instant::now(),
            ttl: LONG,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_read_back_as_stored_and_removal_keeps_the_rest_findable() {
        let store = store(100_000);
        let ids: Vec<String> = (0..5000).map(|i| format!("898{i:012}")).collect();
        for (sequence, id) in ids.iter().enumerate() {
            store.insert(id, &entry(id, sequence as u64));
        }
        assert_eq!(store.len(), 5000);
        for (sequence, id) in ids.iter().enumerate().step_by(3) {
            assert!(store.remove(id));
            assert!(!store.remove(id));
            assert_eq!(store.as_of_sequence(id), None, "{sequence}");
        }
        for (sequence, id) in ids.iter().enumerate().filter(|(sequence, _)| sequence % 3 != 0) {
            let found = store.within(id, Instant::now(), LONG, Duration::ZERO).unwrap();
            assert_eq!(found, entry(id, sequence as u64), "swap-removal kept {id} findable");
        }
        store.remove_where(EvictionCause::Explicit, |stamp| stamp.as_of_sequence < 4000);
        assert_eq!(store.len(), (4000..5000).filter(|sequence| sequence % 3 != 0).count() as u64);
        let mut seen = 0;
        store.for_each(|id, entry| {
            assert_eq!(entry.merchant.decode().merchant_id, id);
            seen += 1;
        });
        assert_eq!(seen, store.len());
    }

    #[tokio::test]
    async fn walking_shard_by_shard_visits_every_entry_once() {
        let store = store(100_000);
        let mut ids: Vec<String> = (0..3000).map(|i| format!("898{i:012}")).collect();
        ids.extend((0..100).map(|i| format!("shop-{i}")));
        for id in &ids {
            store.insert(id, &entry(id, 7));
        }
        let mut seen = Vec::new();
        for shard in 0..store.shard_count() {
            store.for_each_in_shard(shard, |id, entry| {
                assert_eq!(entry.merchant.decode().merchant_id, id);
                assert_eq!(entry.as_of_sequence, 7);
                seen.push(id.to_owned());
            });
        }
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);
    }

    #[tokio::test]
    async fn the_capacity_bounds_the_whole_store_however_ids_hash() {
        let store = store(100_000);
        for i in 0..100_000 {
            let id = format!("898{i:012}");
            store.insert(&id, &entry(&id, 1));
        }
        assert_eq!(store.len(), 100_000);
        assert!((0..100_000).all(|i| store.contains(&format!("898{i:012}"))), "nothing evicted below capacity");
        for i in 0..1000 {
            let id = format!("899{i:012}");
            store.insert(&id, &entry(&id, 1));
        }
        assert_eq!(store.len(), 100_000);
        let mut counted = 0;
        store.for_each(|_, _| counted += 1);
        assert_eq!(counted, 100_000);
    }

    #[tokio::test]
    async fn replacing_keeps_one_entry_per_id() {
        let store = store(10);
        store.insert("a", &entry("a", 1));
        store.insert("a", &entry("a", 2));
        assert_eq!(store.len(), 1);
        assert_eq!(store.as_of_sequence("a"), Some(2));
    }

    #[tokio::test]
    async fn a_scan_of_once_seen_ids_does_not_evict_hot_merchants() {
        let store = store(1000);
        let hot: Vec<String> = (0..100).map(|i| format!("hot{i}")).collect();
        for id in &hot {
            store.insert(id, &entry(id, 1));
            for _ in 0..MAX_USES {
                store.within(id, Instant::now(), LONG, Duration::ZERO).unwrap();
            }
        }
        for i in 0..10_000 {
            let id = format!("scan{i}");
            store.insert(&id, &entry(&id, 1));
        }
        assert_eq!(store.len(), 1000, "bounded");
        let kept = hot.iter().filter(|id| store.contains(id)).count();
        assert_eq!(kept, 100, "a scan ten times the capacity evicted hot merchants");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_evicts_expired_entries_first() {
        let store = store(50);
        for i in 0..50 {
            let id = format!("m{i}");
            let ttl = if i < 45 { Duration::from_secs(1) } else { LONG };
            store.insert(&id, &PositiveEntry { ttl, ..entry(&id, 1) });
            store.within(&id, Instant::now(), LONG, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..10 {
            let id = format!("new{i}");
            store.insert(&id, &entry(&id, 1));
        }
        let long_lived = (45..50).filter(|i| store.contains(&format!("m{i}"))).count();
        assert_eq!(long_lived, 5, "fresh entries stay while expired ones can go");
    }

    fn merchant(id: &str, name: &str) -> EncodedMerchant {
        EncodedMerchant::encode(&crate::pb::Merchant {
            merchant_id: id.into(),
            name: name.into(),
            status: 3,
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ids_of_every_shape_read_back_exactly() {
        let store = store(10_000);
        let ids = [
            "898000000000042",
            "000000000000042",
            "0042",
            "42",
            "0",
            "9999999999999999999",
            "18446744073709551615",
            "99999999999999999999",
            "hot0",
            "12a4",
            "",
            "商户42",
            &"7".repeat(200),
        ];
        for (sequence, id) in ids.iter().enumerate() {
            // Records carrying their own ID (the ID is kept once), another ID, or none at all.
            let records = [merchant(id, "Jade Garden"), merchant("898000000000001", "Other"), merchant("", "None")];
            for record in records {
                let stored = PositiveEntry { merchant: record, ..entry(id, sequence as u64) };
                store.insert(id, &stored);
                assert_eq!(store.within(id, Instant::now(), LONG, Duration::ZERO), Some(stored), "{id:?}");
            }
        }
        assert_eq!(store.len(), ids.len() as u64);
        let mut seen = Vec::new();
        store.for_each(|id, entry| {
            assert_eq!(entry.merchant, merchant("", "None"));
            seen.push((id.to_owned(), entry.as_of_sequence));
        });
        seen.sort_by_key(|&(_, sequence)| sequence);
        let expected: Vec<_> = ids.iter().enumerate().map(|(sequence, id)| (id.to_string(), sequence as u64)).collect();
        assert_eq!(seen, expected);
        for id in ids {
            assert!(store.remove(id), "{id:?}");
        }
        assert_eq!(store.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn records_changing_size_read_back_and_their_old_bytes_are_reclaimed() {
        let store = store(1000);
        let ids: Vec<String> = (0..1000).map(|i| format!("898{i:012}")).collect();
        for round in 0..40 {
            for (i, id) in ids.iter().enumerate() {
                // Longer, shorter and equal in turn, so records move, shrink in place and stay.
                let name = "x".repeat((i + round * 37) % 300);
                store.insert(id, &PositiveEntry { merchant: merchant(id, &name), ..entry(id, round as u64) });
            }
            if round % 7 == 6 {
                for id in ids.iter().step_by(5) {
                    store.remove(id);
                }
            }
            let (used, live) = store.arena_bytes();
            assert!(used <= live + live / 7 + CHUNK_BYTES, "round {round}: {used} bytes kept for {live}");
        }
        for (i, id) in ids.iter().enumerate() {
            let name = "x".repeat((i + 39 * 37) % 300);
            let found = store.within(id, Instant::now(), LONG, Duration::ZERO).unwrap();
            assert_eq!(found.merchant, merchant(id, &name), "{id}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_entry_keeps_its_own_ttl_through_more_ttls_than_a_shard_names() {
        let store = store(100);
        let ttl = |i: u64| Duration::from_millis(1000 + i);
        for i in 0..(3 * TTL_KINDS as u64) {
            let id = format!("m{}", i % 50);
            store.insert(&id, &PositiveEntry { ttl: ttl(i), ..entry(&id, i) });
        }
        for i in (3 * TTL_KINDS as u64 - 50)..(3 * TTL_KINDS as u64) {
            let id = format!("m{}", i % 50);
            let found = store.within(&id, Instant::now(), LONG, Duration::ZERO).unwrap();
            assert_eq!((found.ttl, found.as_of_sequence), (ttl(i), i));
        }
        assert!(store.ttl_kinds() <= TTL_KINDS);
    }
}
