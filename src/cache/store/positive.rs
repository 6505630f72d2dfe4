//! The positive store: every merchant the edge knows, packed for memory and for the hit path.
//!
//! With warm start the edge holds the whole merchant table, so bytes per entry decide the process size.
//! A general cache (moka) spent about 540 bytes per merchant on its policy queues, timers and per-entry
//! `Arc`s; here an entry is one 48-byte slot plus one allocation holding the ID followed by the encoded
//! merchant, about 190 bytes in all. Each shard is a slab of slots indexed by a `HashTable` of slot
//! numbers, so the ID is stored once (inside the allocation) and a random slot can be sampled for eviction.
//!
//! Eviction is sampled LFU: a full shard evicts the least used of a few random slots, preferring
//! entries past their TTL. Use counts are small (saturating at `MAX_USES`) and halve after every
//! `AGING_ROUNDS` shard-fulls of evictions, so a scan of IDs seen once evicts other once-seen IDs while
//! hot merchants keep their counts. A hit on a hot merchant only reads its count, so the hit path writes
//! nothing but the reference count of the bytes it hands out.
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::cache::metrics::EvictionCause;
use crate::wire::EncodedMerchant;

/// Use counts saturate here: enough to tell hot from once-seen, and a saturated count is never written.
const MAX_USES: u8 = 15;
/// Random slots compared per eviction (Redis samples 5; 8 finds a once-seen entry more reliably).
const SAMPLES: usize = 8;
/// Use counts halve after this many shard capacities' worth of evictions, so yesterday's hot merchants
/// can eventually make room (TinyLFU resets its sketch after ten times the capacity).
const AGING_ROUNDS: u64 = 10;
/// Entries per shard below which one shard is enough (small stores stay exactly bounded).
const ENTRIES_PER_SHARD: u64 = 1024;
const MAX_SHARDS: u64 = 64;

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

struct Slot {
    /// The ID's bytes followed by the encoded merchant: one allocation for both. Hits copy the merchant
    /// out rather than share it: a shared reference count on a hot merchant is a cache line both cores
    /// write on every hit, which measured dearer than a small thread-local allocation and copy.
    data: Box<[u8]>,
    id_len: u32,
    uses: AtomicU8,
    /// The merchant's status (fits a byte; kept so answers need not decode the bytes).
    status: u8,
    as_of_sequence: u64,
    /// Nanoseconds after the store's epoch.
    learned_ns: u64,
    ttl_ns: u64,
}

impl Slot {
    fn id(&self) -> &[u8] {
        &self.data[..self.id_len as usize]
    }

    fn expired_at(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.learned_ns) >= self.ttl_ns
    }
}

struct Shard {
    /// Slot numbers, found by the hash of the slot's ID.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    evictions_since_aging: u64,
    /// Picks eviction samples. Seeded per shard so eviction is reproducible; no caller can observe the
    /// samples, so predictability gives nothing away.
    sampler: fastrand::Rng,
}

/// What happened to an entry that left the store, for the eviction metrics.
pub type EvictionSink = Box<dyn Fn(EvictionCause, u64) + Send + Sync>;

pub struct PositiveStore {
    shards: Box<[RwLock<Shard>]>,
    /// The bound is on the whole store, not per shard: hashing never fills shards evenly, and a
    /// per-shard bound would evict merchants from a full shard while others still had room.
    capacity: u64,
    len: AtomicU64,
    /// Evictions in a shard between agings.
    aging_period: u64,
    hasher: DefaultHashBuilder,
    /// Instants are kept as nanoseconds after this (8 bytes instead of 16).
    epoch: Instant,
    on_eviction: EvictionSink,
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().try_into().unwrap_or(u64::MAX)
}

impl PositiveStore {
    /// A store for at most `capacity` merchants. `epoch` must not be later than any `learned_at` stored.
    pub fn new(capacity: u64, epoch: Instant, on_eviction: EvictionSink) -> Self {
        let shards = (capacity / ENTRIES_PER_SHARD).clamp(1, MAX_SHARDS).next_power_of_two().min(MAX_SHARDS);
        Self {
            shards: (0..shards)
                .map(|seed| {
                    RwLock::new(Shard {
                        index: HashTable::new(),
                        slots: Vec::new(),
                        evictions_since_aging: 0,
                        sampler: fastrand::Rng::with_seed(seed),
                    })
                })
                .collect(),
            capacity,
            len: AtomicU64::new(0),
            aging_period: AGING_ROUNDS * capacity.div_ceil(shards),
            hasher: DefaultHashBuilder::default(),
            epoch,
            on_eviction,
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn locate(&self, id: &[u8]) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(id);
        // Middle bits: the table uses the low bits for the bucket and the top seven as a tag, so
        // choosing the shard from either would leave every entry of a shard alike in those bits.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (hash, &self.shards[shard])
    }

    fn since_epoch(&self, instant: Instant) -> u64 {
        nanos(instant.saturating_duration_since(self.epoch))
    }

    /// The stored merchant, if its age at `now` is below the shorter of its stamped TTL and `ttl`, plus
    /// `past_ttl` (zero for a fresh answer; `cache.serve_stale_for` when the core cannot answer).
    pub fn within(&self, id: &str, now: Instant, ttl: Duration, past_ttl: Duration) -> Option<PositiveEntry> {
        let (hash, shard) = self.locate(id.as_bytes());
        let shard = shard.read();
        let slot =
            &shard.slots[*shard.index.find(hash, |&at| shard.slots[at as usize].id() == id.as_bytes())? as usize];
        let age = self.since_epoch(now).saturating_sub(slot.learned_ns);
        if age >= slot.ttl_ns.min(nanos(ttl)).saturating_add(nanos(past_ttl)) {
            return None;
        }
        let uses = slot.uses.load(Ordering::Relaxed);
        if uses < MAX_USES {
            // Racing increments may lose one; the count is an estimate either way.
            slot.uses.store(uses + 1, Ordering::Relaxed);
        }
        Some(self.entry(slot))
    }

    fn entry(&self, slot: &Slot) -> PositiveEntry {
        PositiveEntry {
            merchant: EncodedMerchant::from_parts(
                Bytes::copy_from_slice(&slot.data[slot.id_len as usize..]),
                i32::from(slot.status),
            ),
            as_of_sequence: slot.as_of_sequence,
            learned_at: self.epoch + Duration::from_nanos(slot.learned_ns),
            ttl: Duration::from_nanos(slot.ttl_ns),
        }
    }

    /// The sequence the stored merchant reflects, fresh or not.
    pub fn as_of_sequence(&self, id: &str) -> Option<u64> {
        let (hash, shard) = self.locate(id.as_bytes());
        let shard = shard.read();
        let at = *shard.index.find(hash, |&at| shard.slots[at as usize].id() == id.as_bytes())?;
        Some(shard.slots[at as usize].as_of_sequence)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.as_of_sequence(id).is_some()
    }

    /// Stores or replaces the merchant for `id`, evicting another entry if the shard is full.
    pub fn insert(&self, id: &str, entry: &PositiveEntry) {
        let merchant = entry.merchant.bytes();
        let mut data = Vec::with_capacity(id.len() + merchant.len());
        data.extend_from_slice(id.as_bytes());
        data.extend_from_slice(&merchant);
        let slot = Slot {
            data: data.into_boxed_slice(),
            id_len: id.len().try_into().expect("IDs are far shorter than 4 GiB"),
            uses: AtomicU8::new(1),
            status: u8::try_from(entry.merchant.status()).unwrap_or(u8::MAX),
            as_of_sequence: entry.as_of_sequence,
            learned_ns: self.since_epoch(entry.learned_at),
            ttl_ns: nanos(entry.ttl),
        };
        let (hash, shard) = self.locate(id.as_bytes());
        let mut guard = shard.write();
        let shard = &mut *guard;
        if let Some(&at) = shard.index.find(hash, |&at| shard.slots[at as usize].id() == id.as_bytes()) {
            let replaced = &mut shard.slots[at as usize];
            // A merchant that changed is as hot as it was.
            slot.uses.store(replaced.uses.load(Ordering::Relaxed), Ordering::Relaxed);
            *replaced = slot;
            (self.on_eviction)(EvictionCause::Replaced, 1);
            return;
        }
        let room =
            self.len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| (len < self.capacity).then_some(len + 1));
        if room.is_err() {
            if shard.slots.is_empty() {
                // Full, but every entry hashed elsewhere (only possible with a tiny store spread over
                // shards): going one over beats taking another shard's lock while holding this one.
                self.len.fetch_add(1, Ordering::Relaxed);
            } else {
                // One out, one in: the count stays as it is, so no other insert can slip past the bound.
                let cause = self.evict_one(shard);
                (self.on_eviction)(cause, 1);
            }
        }
        let at = u32::try_from(shard.slots.len()).expect("a shard holds fewer than 4 billion entries");
        shard.slots.push(slot);
        let Shard { index, slots, .. } = shard;
        index.insert_unique(hash, at, |&at| self.hasher.hash_one(slots[at as usize].id()));
    }

    fn evict_one(&self, shard: &mut Shard) -> EvictionCause {
        let now = self.since_epoch(Instant::now());
        let len = shard.slots.len();
        let samples: [usize; SAMPLES] = std::array::from_fn(|_| shard.sampler.usize(..len));
        let victim = samples
            .into_iter()
            .min_by_key(|&at| {
                let slot = &shard.slots[at];
                (!slot.expired_at(now), slot.uses.load(Ordering::Relaxed))
            })
            .expect("a full shard is not empty");
        let cause = if shard.slots[victim].expired_at(now) { EvictionCause::Expired } else { EvictionCause::Size };
        self.remove_at(shard, victim);
        shard.evictions_since_aging += 1;
        if shard.evictions_since_aging >= self.aging_period {
            shard.evictions_since_aging = 0;
            for slot in &shard.slots {
                slot.uses.store(slot.uses.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
        cause
    }

    /// Takes slot `at` out, moving the last slot into its place (the caller keeps `len`).
    fn remove_at(&self, shard: &mut Shard, at: usize) {
        let hash = self.hasher.hash_one(shard.slots[at].id());
        let Ok(found) = shard.index.find_entry(hash, |&other| other as usize == at) else {
            unreachable!("every slot is indexed");
        };
        found.remove();
        let last = shard.slots.len() - 1;
        shard.slots.swap_remove(at);
        if at != last {
            let moved = self.hasher.hash_one(shard.slots[at].id());
            let position = shard.index.find_mut(moved, |&other| other as usize == last).expect("every slot is indexed");
            *position = at as u32;
        }
    }

    /// Forgets `id`; returns whether it was stored.
    pub fn remove(&self, id: &str) -> bool {
        let (hash, shard) = self.locate(id.as_bytes());
        let mut guard = shard.write();
        let shard = &mut *guard;
        let Some(&at) = shard.index.find(hash, |&at| shard.slots[at as usize].id() == id.as_bytes()) else {
            return false;
        };
        self.remove_at(shard, at as usize);
        self.len.fetch_sub(1, Ordering::Relaxed);
        (self.on_eviction)(EvictionCause::Explicit, 1);
        true
    }

    /// Forgets every entry `doomed` picks.
    pub fn remove_where(&self, mut doomed: impl FnMut(&PositiveEntry) -> bool) {
        for shard in self.shards.iter() {
            let mut guard = shard.write();
            let shard = &mut *guard;
            let mut at = 0;
            let mut removed = 0;
            while at < shard.slots.len() {
                if doomed(&self.entry(&shard.slots[at])) {
                    self.remove_at(shard, at);
                    removed += 1;
                } else {
                    at += 1;
                }
            }
            if removed > 0 {
                self.len.fetch_sub(removed, Ordering::Relaxed);
                (self.on_eviction)(EvictionCause::Explicit, removed);
            }
        }
    }

    /// Every entry, shard by shard (each shard read under its lock).
    pub fn for_each(&self, mut visit: impl FnMut(&str, PositiveEntry)) {
        for shard in 0..self.shard_count() {
            self.for_each_in_shard(shard, &mut visit);
        }
    }

    /// How many shards [`Self::for_each_in_shard`] walks.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every entry of one shard, read under that shard's lock only (so a caller doing slow work between
    /// shards, such as writing a snapshot, holds no lock meanwhile).
    pub fn for_each_in_shard(&self, shard: usize, mut visit: impl FnMut(&str, PositiveEntry)) {
        let shard = self.shards[shard].read();
        for slot in &shard.slots {
            let id = std::str::from_utf8(slot.id()).expect("IDs are stored from &str");
            visit(id, self.entry(slot));
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        store.remove_where(|entry| entry.as_of_sequence < 4000);
        assert_eq!(store.len(), (4000..5000).filter(|sequence| sequence % 3 != 0).count() as u64);
        let mut seen = 0;
        store.for_each(|id, entry| {
            assert_eq!(entry.merchant.decode().merchant_id, id);
            seen += 1;
        });
        assert_eq!(seen, store.len());
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
}
