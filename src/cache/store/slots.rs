//! The sharded slot store both answer stores are made of: entries packed for memory and for the hit
//! path, an exact bound on the whole store, scan-resistant eviction, and a TTL stamped on each entry.
//!
//! With warm start the edge holds the whole merchant table, so bytes per entry decide the process size.
//! A general cache (moka) spent about 540 bytes per merchant on its policy queues, timers and per-entry
//! `Arc`s. Here an entry is a 40-byte slot, a 4-byte slot number in a hash index, and whatever bytes
//! its kind of record keeps ([`Record`]) in an arena of its shard:
//! - IDs of up to 19 digits (every ID the default rule admits) are packed into the slot as a number
//!   and their digit count, so leading zeros survive; any other ID is kept as text at the head of its
//!   record.
//! - Records live back to back in fixed-size chunks per shard, found by a 32-bit offset, instead of
//!   one allocation each: no allocator size-class rounding or per-allocation header, no pointer. A
//!   replaced record that fits is overwritten in place; bytes no slot refers to are reclaimed by
//!   compacting the shard once they pass an eighth of its arena.
//! - TTLs are kept once per shard in a small table (they are the configured TTL when stored, so a
//!   shard sees a handful), and the slot holds an index.
//!
//! Each shard is a slab of slots indexed by a `HashTable` of slot numbers, so a random slot can be
//! sampled for eviction. Eviction is sampled LFU: a full store evicts the least used of a few random
//! slots of the shard it inserts into, preferring entries past their TTL. Use counts are small
//! (saturating at `MAX_USES`) and halve after every `AGING_ROUNDS` shard-fulls of evictions, so a scan
//! of IDs seen once evicts other once-seen IDs while hot entries keep their counts.
//!
//! A read writes only its shard's lock word: a hot entry's saturated count is only loaded. Shards sit
//! behind a `parking_lot::RwLock`. crossbeam's `ShardedLock` (readers lock their thread's part of eight,
//! each on its own line) was tried: hits cost the same within noise (11 rounds side by side, median
//! 0.99), and its writers take all eight parts, which made inserts from two warm-start installers the
//! largest cost of a 10M warm start (21% of its CPU, ready after 12 s against 10.8 s).
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;
use tokio::time::Instant;

use super::blocks::{Arena, Slab};
use super::packed::{Key, MAX_PACKED_DIGITS};
use crate::cache::metrics::EvictionCause;

/// Use counts saturate here: enough to tell hot from once-seen, and a saturated count is never written.
pub(super) const MAX_USES: u8 = 15;
/// Random slots compared per eviction (Redis samples 5; 8 finds a once-seen entry more reliably).
const SAMPLES: usize = 8;
/// Use counts halve after this many shard capacities' worth of evictions, so yesterday's hot entries
/// can eventually make room (TinyLFU resets its sketch after ten times the capacity).
const AGING_ROUNDS: u64 = 10;
/// Entries per shard below which one shard is enough (small stores stay exactly bounded).
const ENTRIES_PER_SHARD: u64 = 1024;
/// Compaction copies a whole shard under its write lock; with 256 shards a shard of a 10M store holds
/// about 4 MB of records, a pause of about a millisecond for the IDs of that shard alone.
const MAX_SHARDS: u64 = 256;
/// Distinct TTLs one shard can name (a slot holds a `u8` index). Entries stay until evicted or
/// replaced, so a shard names every TTL configured while its entries were stored: one per reload
/// that changed it.
pub(super) const TTL_KINDS: usize = 1 << 8;

/// What every entry carries: the core sequence it reflects, when the edge learned it, and the TTL
/// configured then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) as_of_sequence: u64,
    pub(super) learned_at: Instant,
    pub(super) ttl: Duration,
}

impl Stamp {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.learned_at) >= self.ttl
    }
}

/// A kind of entry a [`SlotStore`] holds: what it keeps of one beyond its [`Stamp`], and how it is
/// read back exactly as it was given.
pub(super) trait Record: Sized {
    /// Kept in the slot; a byte or two, so that slots stay 40 bytes.
    type Extra: Copy + Send + Sync;

    fn stamp(&self) -> Stamp;

    /// The bytes to keep in the shard's arena for the entry stored under `id`, and its slot's extra.
    fn stored<'a>(&'a self, id: &str) -> (&'a [u8], Self::Extra);

    /// The entry stored under `id` from what [`Record::stored`] kept.
    fn read_back(id: Key<'_>, kept: &[u8], extra: Self::Extra, stamp: Stamp) -> Self;
}

pub(super) struct Slot<X> {
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
    uses: AtomicU8,
    extra: X,
}

struct Shard<X> {
    /// Slot numbers, found by the hash of the slot's ID.
    index: HashTable<u32>,
    slots: Slab<Slot<X>>,
    arena: Arena,
    /// TTLs in nanoseconds, named by `Slot::ttl`.
    ttls: Vec<u64>,
    evictions_since_aging: u64,
    /// Picks eviction samples. Seeded per shard so eviction is reproducible; no caller can observe the
    /// samples, so predictability gives nothing away.
    sampler: fastrand::Rng,
}

/// The ID `slot` is stored under.
fn slot_key<'s, X>(arena: &'s Arena, slot: &Slot<X>) -> Key<'s> {
    if slot.digits > 0 {
        Key::Digits { value: slot.key, count: slot.digits }
    } else {
        Key::Text(&arena.get(slot.offset, slot.len)[..slot.key as usize])
    }
}

impl<X> Shard<X> {
    fn key<'s>(&'s self, slot: &Slot<X>) -> Key<'s> {
        slot_key(&self.arena, slot)
    }

    /// What the record kept, after the ID a text key leads it with.
    fn kept(&self, slot: &Slot<X>) -> &[u8] {
        let stored = self.arena.get(slot.offset, slot.len);
        if slot.digits > 0 {
            stored
        } else {
            &stored[slot.key as usize..]
        }
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

    /// Whether `slot` is past its stamped TTL at `now` (nanoseconds after the epoch).
    fn expired(&self, slot: &Slot<X>, now: u64) -> bool {
        now.saturating_sub(slot.learned_ns) >= self.ttls[usize::from(slot.ttl)]
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

/// What happened to entries that left the store, and how many, for the eviction metrics.
pub type EvictionSink = Box<dyn Fn(EvictionCause, u64) + Send + Sync>;

/// A bounded store of entries of kind `R` (see the module docs).
pub(super) struct SlotStore<R: Record> {
    shards: Box<[RwLock<Shard<R::Extra>>]>,
    /// The bound is on the whole store, not per shard: hashing never fills shards evenly, and a
    /// per-shard bound would evict entries from a full shard while others still had room.
    capacity: u64,
    len: AtomicU64,
    /// Evictions in a shard between agings.
    aging_period: u64,
    hasher: DefaultHashBuilder,
    /// Instants are kept as nanoseconds after this (8 bytes instead of 16).
    epoch: Instant,
    on_eviction: EvictionSink,
    records: PhantomData<fn() -> R>,
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().try_into().unwrap_or(u64::MAX)
}

impl<R: Record> SlotStore<R> {
    /// A store for at most `capacity` entries. `epoch` must not be later than any `learned_at` stored.
    pub(super) fn new(capacity: u64, epoch: Instant, on_eviction: EvictionSink) -> Self {
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
            records: PhantomData,
        }
    }

    pub(super) fn epoch(&self) -> Instant {
        self.epoch
    }

    fn hash(&self, key: Key<'_>) -> u64 {
        match key {
            Key::Digits { value, count } => self.hasher.hash_one((value, count)),
            Key::Text(bytes) => self.hasher.hash_one(bytes),
        }
    }

    fn locate(&self, key: Key<'_>) -> (u64, &RwLock<Shard<R::Extra>>) {
        let hash = self.hash(key);
        // Middle bits: the table uses the low bits for the bucket and the top seven as a tag, so
        // choosing the shard from either would leave every entry of a shard alike in those bits.
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (hash, &self.shards[shard])
    }

    fn since_epoch(&self, instant: Instant) -> u64 {
        nanos(instant.saturating_duration_since(self.epoch))
    }

    fn stamp(&self, shard: &Shard<R::Extra>, slot: &Slot<R::Extra>) -> Stamp {
        Stamp {
            as_of_sequence: slot.as_of_sequence,
            learned_at: self.epoch + Duration::from_nanos(slot.learned_ns),
            ttl: Duration::from_nanos(shard.ttls[usize::from(slot.ttl)]),
        }
    }

    fn entry(&self, shard: &Shard<R::Extra>, slot: &Slot<R::Extra>) -> R {
        R::read_back(shard.key(slot), shard.kept(slot), slot.extra, self.stamp(shard, slot))
    }

    /// The entry stored for `id`, if its age at `now` is below the shorter of its stamped TTL and `ttl`
    /// (a shortened TTL applies at once to entries already stored), plus `past_ttl` (zero for a fresh
    /// answer; `cache.serve_stale_for` when the core cannot answer).
    pub(super) fn within(&self, id: &str, now: Instant, ttl: Duration, past_ttl: Duration) -> Option<R> {
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

    /// The sequence the stored entry reflects, fresh or not.
    pub(super) fn as_of_sequence(&self, id: &str) -> Option<u64> {
        let key = Key::of(id);
        let (hash, shard) = self.locate(key);
        let shard = shard.read();
        Some(shard.slots[shard.find(hash, key)? as usize].as_of_sequence)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.as_of_sequence(id).is_some()
    }

    /// Stores or replaces the entry for `id`, evicting another if the store is full.
    pub(super) fn insert(&self, id: &str, entry: &R) {
        let (record, extra) = entry.stored(id);
        self.insert_parts(id, record, extra, entry.stamp());
    }

    /// [`Self::insert`] from what [`Record::stored`] would give, for writers that hold the bytes in
    /// another form than `R` (a snapshot page).
    pub(super) fn insert_parts(&self, id: &str, record: &[u8], extra: R::Extra, stamp: Stamp) {
        let key = Key::of(id);
        // A text ID leads its record; a packed one lives in the slot.
        let head = match key {
            Key::Digits { .. } => &[][..],
            Key::Text(bytes) => bytes,
        };
        let len = u32::try_from(head.len() + record.len()).expect("a record is far below 4 GiB");
        let learned_ns = self.since_epoch(stamp.learned_at);
        let (hash, shard) = self.locate(key);
        let mut guard = shard.write();
        let shard = &mut *guard;
        let ttl = shard.ttl_index(nanos(stamp.ttl));
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
            // An entry that changed is as hot as it was: `uses` stays.
            (slot.offset, slot.len, slot.extra) = (offset, len, extra);
            (slot.as_of_sequence, slot.learned_ns, slot.ttl) = (stamp.as_of_sequence, learned_ns, ttl);
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
            as_of_sequence: stamp.as_of_sequence,
            learned_ns,
            offset,
            len,
            ttl,
            digits,
            uses: AtomicU8::new(1),
            extra,
        });
        let Shard { index, slots, arena, .. } = &mut *shard;
        index.insert_unique(hash, at, |&at| self.hash(slot_key(arena, &slots[at as usize])));
        // An eviction above left its record's bytes behind.
        if shard.arena.wants_compaction() {
            shard.compact();
        }
    }

    fn evict_one(&self, shard: &mut Shard<R::Extra>) -> EvictionCause {
        let now = self.since_epoch(Instant::now());
        let len = shard.slots.len();
        let samples: [usize; SAMPLES] = std::array::from_fn(|_| shard.sampler.usize(..len));
        let victim = samples
            .into_iter()
            .min_by_key(|&at| {
                let slot = &shard.slots[at];
                (!shard.expired(slot, now), slot.uses.load(Ordering::Relaxed))
            })
            .expect("a full shard is not empty");
        let cause = if shard.expired(&shard.slots[victim], now) { EvictionCause::Expired } else { EvictionCause::Size };
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
    fn remove_at(&self, shard: &mut Shard<R::Extra>, at: usize) {
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
    pub(super) fn remove(&self, id: &str) -> bool {
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

    /// Forgets every entry `doomed` picks, counted as leaving for `cause`. A shard holding none is only
    /// read, so lookups of its IDs do not wait; `doomed` is asked again under the write lock.
    pub(super) fn remove_where(&self, cause: EvictionCause, mut doomed: impl FnMut(Stamp) -> bool) {
        for shard in self.shards.iter() {
            let reading = shard.read();
            let wanted = reading.slots.iter().any(|slot| doomed(self.stamp(&reading, slot)));
            drop(reading);
            if !wanted {
                continue;
            }
            let mut guard = shard.write();
            let shard = &mut *guard;
            let mut at = 0;
            let mut removed = 0;
            while at < shard.slots.len() {
                if doomed(self.stamp(shard, &shard.slots[at])) {
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
                (self.on_eviction)(cause, removed);
            }
        }
    }

    /// Forgets every entry past its stamped TTL at `now`. Evictions already prefer such entries, so
    /// this only frees their memory sooner, and makes [`Self::len`] count live entries.
    pub(super) fn remove_expired(&self, now: Instant) {
        self.remove_where(EvictionCause::Expired, |stamp| stamp.expired(now));
    }

    /// Every entry, shard by shard (each shard read under its lock).
    pub(super) fn for_each(&self, mut visit: impl FnMut(&str, R)) {
        for shard in 0..self.shard_count() {
            self.for_each_in_shard(shard, &mut visit);
        }
    }

    /// How many shards [`Self::for_each_in_shard`] walks.
    pub(super) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every entry of one shard, read under that shard's lock only (so a caller doing slow work between
    /// shards, such as writing a snapshot, holds no lock meanwhile).
    pub(super) fn for_each_in_shard(&self, shard: usize, mut visit: impl FnMut(&str, R)) {
        let mut buffer = [0; MAX_PACKED_DIGITS];
        let shard = self.shards[shard].read();
        for slot in shard.slots.iter() {
            let id = std::str::from_utf8(shard.key(slot).text(&mut buffer)).expect("IDs are stored from &str");
            visit(id, self.entry(&shard, slot));
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Bytes written to the store's arenas, and bytes its slots refer to (checking that garbage is
    /// counted exactly).
    #[cfg(test)]
    pub(super) fn arena_bytes(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(used, live), shard| {
            let shard = shard.read();
            let referenced: usize = shard.slots.iter().map(|slot| slot.len as usize).sum();
            assert_eq!(shard.arena.used - shard.arena.garbage, referenced, "garbage is counted exactly");
            (used + shard.arena.used, live + referenced)
        })
    }

    /// The most TTLs any shard names.
    #[cfg(test)]
    pub(super) fn ttl_kinds(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().ttls.len()).max().unwrap_or(0)
    }
}
