//! The positive store: every merchant the edge knows, packed for memory and for the hit path.
//!
//! With warm start the edge holds the whole merchant table, so bytes per entry decide the process size.
//! A general cache (moka) spent about 540 bytes per merchant on its policy queues, timers and per-entry
//! `Arc`s. Here an entry is a 40-byte slot, a 4-byte slot number in a hash index, and its record's
//! bytes in an arena of its shard, about 104 bytes in all for a synthetic merchant:
//! - IDs of up to 19 digits (every ID the default rule admits) are packed into the slot as a number
//!   and their digit count, so leading zeros survive; any other ID is kept as text at the head of its
//!   record.
//! - The encoded merchant starts with its own `merchant_id` field; when that is the ID it is stored
//!   under (always, for records the resolver stores), those bytes are left out and written back when
//!   the record is read, so the ID is held once, packed.
//! - Records live back to back in fixed-size chunks per shard, found by a 32-bit offset, instead of
//!   one allocation each: no allocator size-class rounding or per-allocation header, no pointer. A
//!   replaced record that fits is overwritten in place; bytes no slot refers to are reclaimed by
//!   compacting the shard once they pass an eighth of its arena.
//! - TTLs are kept once per shard in a small table (they are the configured TTL when stored, so a
//!   shard sees a handful), and the slot holds an index.
//!
//! Each shard is a slab of slots indexed by a `HashTable` of slot numbers, so a random slot can be
//! sampled for eviction. Eviction is sampled LFU: a full shard evicts the least used of a few random
//! slots, preferring entries past their TTL. Use counts are small (saturating at `MAX_USES`) and halve
//! after every `AGING_ROUNDS` shard-fulls of evictions, so a scan of IDs seen once evicts other
//! once-seen IDs while hot merchants keep their counts. A hit on a hot merchant only reads its count.
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;
use tokio::time::Instant;

use super::blocks::{Arena, Slab};
use super::packed::{stored_form, Key, FORM_WHOLE, ID_FIELD_KEY, MAX_PACKED_DIGITS};
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
/// Compaction copies a whole shard under its write lock; with 256 shards a shard of a 10M store holds
/// about 4 MB of records, a pause of about a millisecond for the IDs of that shard alone.
const MAX_SHARDS: u64 = 256;
/// Distinct TTLs one shard can name (a slot holds a `u8` index). Entries stay until evicted or
/// replaced, so a shard names every positive TTL configured while its entries were stored: one per
/// reload that changed it.
const TTL_KINDS: usize = 1 << 8;

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

struct Slot {
    /// `Key::Digits`: the packed value. `Key::Text`: the ID's length; its bytes lead the record.
    key: u64,
    as_of_sequence: u64,
    /// Nanoseconds after the store's epoch.
    learned_ns: u64,
    /// Where the stored bytes start in the shard's arena, and how many there are.
    offset: u32,
    len: u32,
    /// Index into the shard's TTL table.
    ttl: u8,
    /// 1 to 19: the ID is this many packed digits; 0: the ID is text.
    digits: u8,
    /// `FORM_WHOLE` or `FORM_ID_ELIDED`.
    form: u8,
    /// The merchant's status (fits a byte; kept so answers need not decode the bytes).
    status: u8,
    uses: AtomicU8,
}

// The slot is most of an entry's fixed cost: keep it at 40 bytes.
const _: () = assert!(std::mem::size_of::<Slot>() == 40);

struct Shard {
    /// Slot numbers, found by the hash of the slot's ID.
    index: HashTable<u32>,
    slots: Slab<Slot>,
    arena: Arena,
    /// TTLs in nanoseconds, named by `Slot::ttl`.
    ttls: Vec<u64>,
    evictions_since_aging: u64,
    /// Picks eviction samples. Seeded per shard so eviction is reproducible; no caller can observe the
    /// samples, so predictability gives nothing away.
    sampler: fastrand::Rng,
}

/// The ID `slot` is stored under.
fn slot_key<'s>(arena: &'s Arena, slot: &Slot) -> Key<'s> {
    if slot.digits > 0 {
        Key::Digits { value: slot.key, count: slot.digits }
    } else {
        Key::Text(&arena.get(slot.offset, slot.len)[..slot.key as usize])
    }
}

impl Shard {
    fn key<'s>(&'s self, slot: &Slot) -> Key<'s> {
        slot_key(&self.arena, slot)
    }

    fn holds(&self, at: u32, key: Key<'_>) -> bool {
        let slot = &self.slots[at as usize];
        match key {
            Key::Digits { value, count } => slot.digits == count && slot.key == value,
            Key::Text(bytes) => {
                slot.digits == 0
                    && slot.key == bytes.len() as u64
                    && &self.arena.get(slot.offset, slot.len)[..bytes.len()] == bytes
            }
        }
    }

    fn find(&self, hash: u64, key: Key<'_>) -> Option<u32> {
        self.index.find(hash, |&at| self.holds(at, key)).copied()
    }

    /// The encoded merchant of `slot`, rebuilt as it was given to [`PositiveStore::insert`].
    fn merchant(&self, slot: &Slot) -> Bytes {
        let stored = self.arena.get(slot.offset, slot.len);
        let rest = if slot.digits > 0 { stored } else { &stored[slot.key as usize..] };
        if slot.form == FORM_WHOLE {
            return Bytes::copy_from_slice(rest);
        }
        let mut buffer = [0; MAX_PACKED_DIGITS];
        let id = self.key(slot).text(&mut buffer);
        let mut bytes = Vec::with_capacity(2 + id.len() + rest.len());
        // Elided only when the ID's length fits one varint byte, so this is the field as it was.
        bytes.extend_from_slice(&[ID_FIELD_KEY, id.len() as u8]);
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(rest);
        Bytes::from(bytes)
    }

    /// The index of `ttl_ns` in the TTL table, adding it if new.
    fn ttl_index(&mut self, ttl_ns: u64) -> u8 {
        if let Some(at) = self.ttls.iter().rposition(|&known| known == ttl_ns) {
            return at as u8;
        }
        if self.ttls.len() == TTL_KINDS {
            self.forget_unused_ttls();
        }
        if self.ttls.len() < TTL_KINDS {
            self.ttls.push(ttl_ns);
            return (self.ttls.len() - 1) as u8;
        }
        // 256 different TTLs held in one shard at once (a reload per TTL): the entry gets the
        // longest known TTL not above its own, so it may expire early but never late (or the
        // shortest known, which the configured TTL still caps).
        let shorter =
            self.ttls.iter().enumerate().filter(|&(_, &known)| known <= ttl_ns).max_by_key(|&(_, &known)| known);
        let fallback = shorter.or_else(|| self.ttls.iter().enumerate().min_by_key(|&(_, &known)| known));
        fallback.map_or(0, |(at, _)| at as u8)
    }

    /// Drops TTLs no slot names and renumbers the rest.
    fn forget_unused_ttls(&mut self) {
        let mut used = [false; TTL_KINDS];
        for slot in self.slots.iter() {
            used[usize::from(slot.ttl)] = true;
        }
        let mut renumbered = [0u8; TTL_KINDS];
        let mut kept = Vec::new();
        for (at, &ttl) in self.ttls.iter().enumerate() {
            if used[at] {
                renumbered[at] = kept.len() as u8;
                kept.push(ttl);
            }
        }
        for slot in self.slots.iter_mut() {
            slot.ttl = renumbered[usize::from(slot.ttl)];
        }
        self.ttls = kept;
    }

    /// Copies every live record into fresh chunks, releasing the old ones.
    fn compact(&mut self) {
        let mut fresh = Arena::default();
        for slot in self.slots.iter_mut() {
            slot.offset = fresh.push(self.arena.get(slot.offset, slot.len), &[]);
        }
        self.arena = fresh;
    }
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
                        slots: Slab::default(),
                        arena: Arena::default(),
                        ttls: Vec::new(),
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

    fn hash(&self, key: Key<'_>) -> u64 {
        match key {
            Key::Digits { value, count } => self.hasher.hash_one((value, count)),
            Key::Text(bytes) => self.hasher.hash_one(bytes),
        }
    }

    fn locate(&self, key: Key<'_>) -> (u64, &RwLock<Shard>) {
        let hash = self.hash(key);
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
        let key = Key::of(id);
        let (hash, shard) = self.locate(key);
        let shard = shard.read();
        let slot = &shard.slots[shard.find(hash, key)? as usize];
        let age = self.since_epoch(now).saturating_sub(slot.learned_ns);
        let stamped = shard.ttls[usize::from(slot.ttl)];
        if age >= stamped.min(nanos(ttl)).saturating_add(nanos(past_ttl)) {
            return None;
        }
        let uses = slot.uses.load(Ordering::Relaxed);
        if uses < MAX_USES {
            // Racing increments may lose one; the count is an estimate either way.
            slot.uses.store(uses + 1, Ordering::Relaxed);
        }
        Some(self.entry(&shard, slot))
    }

    fn entry(&self, shard: &Shard, slot: &Slot) -> PositiveEntry {
        PositiveEntry {
            merchant: EncodedMerchant::from_parts(shard.merchant(slot), i32::from(slot.status)),
            as_of_sequence: slot.as_of_sequence,
            learned_at: self.epoch + Duration::from_nanos(slot.learned_ns),
            ttl: Duration::from_nanos(shard.ttls[usize::from(slot.ttl)]),
        }
    }

    /// The sequence the stored merchant reflects, fresh or not.
    pub fn as_of_sequence(&self, id: &str) -> Option<u64> {
        let key = Key::of(id);
        let (hash, shard) = self.locate(key);
        let shard = shard.read();
        Some(shard.slots[shard.find(hash, key)? as usize].as_of_sequence)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.as_of_sequence(id).is_some()
    }

    /// Stores or replaces the merchant for `id`, evicting another entry if the shard is full.
    pub fn insert(&self, id: &str, entry: &PositiveEntry) {
        self.insert_record(id, entry.record());
    }

    /// [`Self::insert`] from a borrowed record.
    pub fn insert_record(&self, id: &str, entry: PositiveRecord<'_>) {
        let key = Key::of(id);
        let (record, form) = stored_form(id.as_bytes(), entry.merchant);
        // A text ID leads its record; a packed one lives in the slot.
        let head = match key {
            Key::Digits { .. } => &[][..],
            Key::Text(bytes) => bytes,
        };
        let len = u32::try_from(head.len() + record.len()).expect("a merchant record is far below 4 GiB");
        let status = u8::try_from(entry.status).unwrap_or(u8::MAX);
        let learned_ns = self.since_epoch(entry.learned_at);
        let (hash, shard) = self.locate(key);
        let mut guard = shard.write();
        let shard = &mut *guard;
        let ttl = shard.ttl_index(nanos(entry.ttl));
        if let Some(at) = shard.find(hash, key) {
            let (old_offset, old_len) = (shard.slots[at as usize].offset, shard.slots[at as usize].len);
            let offset = if len <= old_len {
                // Usually a change keeps the record's size: overwrite it where it is.
                let place = shard.arena.get_mut(old_offset, len);
                place[..head.len()].copy_from_slice(head);
                place[head.len()..].copy_from_slice(record);
                shard.arena.forget(old_len - len);
                old_offset
            } else {
                shard.arena.forget(old_len);
                shard.arena.push(head, record)
            };
            let slot = &mut shard.slots[at as usize];
            // A merchant that changed is as hot as it was: `uses` stays.
            (slot.offset, slot.len, slot.form, slot.status) = (offset, len, form, status);
            (slot.as_of_sequence, slot.learned_ns, slot.ttl) = (entry.as_of_sequence, learned_ns, ttl);
            if shard.arena.wants_compaction() {
                shard.compact();
            }
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
        let offset = shard.arena.push(head, record);
        let (key_field, digits) = match key {
            Key::Digits { value, count } => (value, count),
            Key::Text(bytes) => (bytes.len() as u64, 0),
        };
        let at = u32::try_from(shard.slots.len()).expect("a shard holds fewer than 4 billion entries");
        shard.slots.push(Slot {
            key: key_field,
            as_of_sequence: entry.as_of_sequence,
            learned_ns,
            offset,
            len,
            ttl,
            digits,
            form,
            status,
            uses: AtomicU8::new(1),
        });
        let Shard { index, slots, arena, .. } = &mut *shard;
        index.insert_unique(hash, at, |&at| self.hash(slot_key(arena, &slots[at as usize])));
        // An eviction above left its record's bytes behind.
        if shard.arena.wants_compaction() {
            shard.compact();
        }
    }

    fn evict_one(&self, shard: &mut Shard) -> EvictionCause {
        let now = self.since_epoch(Instant::now());
        let len = shard.slots.len();
        let samples: [usize; SAMPLES] = std::array::from_fn(|_| shard.sampler.usize(..len));
        let expired = |slot: &Slot| now.saturating_sub(slot.learned_ns) >= shard.ttls[usize::from(slot.ttl)];
        let victim = samples
            .into_iter()
            .min_by_key(|&at| {
                let slot = &shard.slots[at];
                (!expired(slot), slot.uses.load(Ordering::Relaxed))
            })
            .expect("a full shard is not empty");
        let cause = if expired(&shard.slots[victim]) { EvictionCause::Expired } else { EvictionCause::Size };
        self.remove_at(shard, victim);
        shard.evictions_since_aging += 1;
        if shard.evictions_since_aging >= self.aging_period {
            shard.evictions_since_aging = 0;
            for slot in shard.slots.iter() {
                slot.uses.store(slot.uses.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
        cause
    }

    /// Takes slot `at` out, moving the last slot into its place (the caller keeps `len` and decides
    /// when to compact).
    fn remove_at(&self, shard: &mut Shard, at: usize) {
        let hash = self.hash(shard.key(&shard.slots[at]));
        let Ok(found) = shard.index.find_entry(hash, |&other| other as usize == at) else {
            unreachable!("every slot is indexed");
        };
        found.remove();
        shard.arena.forget(shard.slots[at].len);
        let last = shard.slots.len() - 1;
        shard.slots.swap_remove(at);
        if at != last {
            let moved = self.hash(shard.key(&shard.slots[at]));
            let position = shard.index.find_mut(moved, |&other| other as usize == last).expect("every slot is indexed");
            *position = at as u32;
        }
    }

    /// Forgets `id`; returns whether it was stored.
    pub fn remove(&self, id: &str) -> bool {
        let key = Key::of(id);
        let (hash, shard) = self.locate(key);
        let mut guard = shard.write();
        let shard = &mut *guard;
        let Some(at) = shard.find(hash, key) else {
            return false;
        };
        self.remove_at(shard, at as usize);
        if shard.arena.wants_compaction() {
            shard.compact();
        }
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
                if doomed(&self.entry(shard, &shard.slots[at])) {
                    self.remove_at(shard, at);
                    removed += 1;
                } else {
                    at += 1;
                }
            }
            if shard.arena.wants_compaction() {
                shard.compact();
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
        let mut buffer = [0; MAX_PACKED_DIGITS];
        let shard = self.shards[shard].read();
        for slot in shard.slots.iter() {
            let id = std::str::from_utf8(shard.key(slot).text(&mut buffer)).expect("IDs are stored from &str");
            visit(id, self.entry(&shard, slot));
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::blocks::{BLOCK_SLOTS, CHUNK_BYTES};

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

    /// Bytes written to a store's arenas, and bytes its slots refer to.
    fn arena_bytes(store: &PositiveStore) -> (usize, usize) {
        store.shards.iter().fold((0, 0), |(used, live), shard| {
            let shard = shard.read();
            let referenced: usize = shard.slots.iter().map(|slot| slot.len as usize).sum();
            assert_eq!(shard.arena.used - shard.arena.garbage, referenced, "garbage is counted exactly");
            (used + shard.arena.used, live + referenced)
        })
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
            let (used, live) = arena_bytes(&store);
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
        assert!(store.shards[0].read().ttls.len() <= TTL_KINDS);
    }

    #[test]
    fn the_slab_keeps_slots_across_blocks_and_frees_blocks_it_no_longer_needs() {
        let slot = |key| Slot {
            key,
            as_of_sequence: 0,
            learned_ns: 0,
            offset: 0,
            len: 0,
            ttl: 0,
            digits: 1,
            form: FORM_WHOLE,
            status: 0,
            uses: AtomicU8::new(0),
        };
        let mut slab = Slab::default();
        let mut model = Vec::new();
        for key in 0..(3 * BLOCK_SLOTS as u64 + 5) {
            slab.push(slot(key));
            model.push(key);
        }
        let mut random = fastrand::Rng::with_seed(1);
        while model.len() > 10 {
            let at = random.usize(..model.len());
            slab.swap_remove(at);
            model.swap_remove(at);
            assert_eq!(slab.len(), model.len());
            assert!(slab.blocks.len() <= model.len().div_ceil(BLOCK_SLOTS) + 1);
        }
        let keys: Vec<u64> = slab.iter().map(|slot| slot.key).collect();
        assert_eq!(keys, model);
        assert_eq!((0..model.len()).map(|at| slab[at].key).collect::<Vec<_>>(), model);
    }
}
