//! The cache room: the only writer of the answer stores. It owns the positive and negative stores,
//! the in-flight fills and the fence ([`fence`]), and offers the whole write vocabulary — install a
//! core answer, apply a change, invalidate an ID, resync from a snapshot, resize — each decided by the
//! one rule [`fence::decide`] and applied under the ID's slot lock. Readers (the lookup path, explain)
//! get read-only views of the stores.
mod config;
pub mod fence;
mod metrics;
mod store;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::RwLock;
use tokio::time::Instant;

pub use self::config::CacheConfig;
pub use self::fence::{Fill, FillOutcome, Filled, Role};
use self::fence::{Fills, Offer, Op};
pub(crate) use self::metrics::StoreLabels;
pub use self::metrics::{CacheMetrics, EvictionCause, StoreLabel};
pub use self::store::{Capacities, NegativeEntry, Origin, PositiveEntry, PositiveRecord, Stored, Stores};
use crate::live::Live;
use crate::pb::Merchant;
use crate::wire::{EncodedMerchant, ListedMerchant, ListedMerchants};

fn capacities(cache: &CacheConfig) -> Capacities {
    Capacities { positive: cache.positive_capacity.get(), negative: cache.negative_capacity.get() }
}

/// The cache room: the stores, the fills and the fence, and every way to write them.
pub struct Cache {
    settings: Live<CacheConfig>,
    stores: ArcSwap<Stores>,
    /// Every store write holds this for reading; rebuilding the stores for new capacities holds it for
    /// writing, so no write lands in stores that are being replaced. Async, so a writer that must wait
    /// yields its worker thread instead of blocking it.
    store_writes: RwLock<()>,
    fills: Fills,
    metrics: CacheMetrics,
}

impl Cache {
    /// Empty stores sized by `settings`, which also gives the TTLs stamped on entries written later.
    pub fn new(settings: Live<CacheConfig>, metrics: CacheMetrics) -> Self {
        let stores = Stores::new(capacities(&settings.load()), &metrics);
        Self {
            settings,
            stores: ArcSwap::from_pointee(stores),
            store_writes: RwLock::new(()),
            fills: Fills::default(),
            metrics,
        }
    }

    /// The stores as they are now, to read (a capacity change replaces them).
    pub fn stores(&self) -> arc_swap::Guard<Arc<Stores>> {
        self.stores.load()
    }

    /// The room's metrics.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Joins the fill in flight for `id`, or registers one the caller must run (see [`Fills`]).
    pub fn join_or_start(&self, id: &str, applied_sequence: u64) -> Role {
        self.fills.join_or_start(id, applied_sequence)
    }

    /// Whether `fill` began in the current resync epoch (its answer speaks of the history the stores
    /// follow).
    pub fn is_current(&self, fill: &Fill) -> bool {
        self.fills.is_current(fill)
    }

    /// Applies the rule's verdict for an answer about `id` to `stores` (callers hold `store_writes` and,
    /// for the feed, the ID's slot). `negative_cap` bounds the TTL of a "not found" while the feed
    /// cannot vouch for it. Returns whether anything was stored or forgotten.
    fn install(&self, stores: &Stores, id: &str, offer: Offer, answer: Answer<'_>, learned: Learned<'_>) -> bool {
        let settings = learned.settings;
        let negative_ttl = settings.negative_ttl.min(learned.negative_cap);
        let held = stores.stored(id);
        let (merchant, as_of_sequence) = (answer.merchant, answer.as_of_sequence);
        match fence::decide(held, offer, as_of_sequence, merchant.is_some(), negative_ttl.is_zero()) {
            Op::Keep => return false,
            Op::PutMerchant => {
                let (learned_at, ttl) = (learned.at, settings.positive_ttl);
                merchant.expect("decided for a merchant").store(|merchant, status| {
                    let record = PositiveRecord { merchant, status, as_of_sequence, learned_at, ttl };
                    stores.put_positive(id, record, held);
                });
            }
            Op::PutNotFound => {
                let origin = if offer == Offer::Feed { Origin::Notice } else { Origin::CoreRead };
                let entry = NegativeEntry { as_of_sequence, learned_at: learned.at, ttl: negative_ttl, origin };
                stores.put_negative(Arc::from(id), entry, held);
            }
            Op::Forget => stores.remove(id),
        }
        true
    }

    /// Ends a fill: installs its answer if the rule allows, and frees its slot. Caching may wait for
    /// a capacity migration, so the fill's waiters are answered first, by `publish`, unless the stores
    /// can be written at once: then the answer is cached before anyone has it, and a caller that asks
    /// again right after its answer finds it in memory.
    pub async fn settle_fill(
        &self,
        id: &str,
        fill: &Arc<Fill>,
        outcome: &FillOutcome,
        learned_at: Instant,
        negative_cap: Duration,
        publish: impl FnOnce(),
    ) {
        let mut publish = Some(publish);
        let writes = match self.store_writes.try_read() {
            Ok(writes) => writes,
            Err(_) => {
                if let Some(publish) = publish.take() {
                    publish();
                }
                self.store_writes.read().await
            }
        };
        let answer = outcome.as_ref().ok();
        let installed = self.fills.settle(id, fill, answer, |offer, answer| {
            let answer = Answer {
                merchant: answer.merchant.clone().map(Incoming::Encoded),
                as_of_sequence: answer.as_of_sequence,
            };
            let settings = self.settings.load();
            self.install(
                &self.stores.load(),
                id,
                offer,
                answer,
                Learned { at: learned_at, negative_cap, settings: &settings },
            )
        });
        drop(writes);
        if let Some(publish) = publish.take() {
            publish();
        }
        if answer.is_some() && !installed {
            self.metrics.fills_fenced.inc();
        }
    }

    /// Takes in a state of `id` that the core reached at `as_of_sequence` (a change notice, or a
    /// snapshot entry), with the fence up: a fill in flight for the ID loses its lease first, and
    /// nothing stored from the same or a later sequence is overwritten.
    fn install_from_feed(&self, stores: &Stores, id: &str, answer: Answer<'_>, learned: Learned<'_>) {
        self.fills.supersede(id, || {
            self.install(stores, id, Offer::Feed, answer, learned);
        });
    }

    /// Applies one change (in sequence order; the feed checks the order): `merchant` is what the
    /// merchant became, `None` for a delete.
    pub async fn apply_change(&self, id: &str, merchant: Option<&Merchant>, sequence: u64, negative_cap: Duration) {
        let _writes = self.store_writes.read().await;
        let answer = Answer { merchant: merchant.map(Incoming::Decoded), as_of_sequence: sequence };
        let settings = self.settings.load();
        let learned = Learned { at: Instant::now(), negative_cap, settings: &settings };
        self.install_from_feed(&self.stores.load(), id, answer, learned);
    }

    /// Forgets both entries for `id` (manual repair), fenced like a change so that a core call in
    /// flight cannot put back an answer it read before.
    pub async fn invalidate(&self, id: &str) {
        let _writes = self.store_writes.read().await;
        self.fills.supersede(id, || self.stores.load().remove(id));
        self.metrics.invalidations.inc();
    }

    /// Starts a resync: fills already in flight can no longer install, and no "not found" survives;
    /// when the stores' history is unknown or replaced (first sync, core restart), nothing does.
    pub async fn begin_resync(&self, forget_everything: bool) {
        let _writes = self.store_writes.read().await;
        self.fills.advance_epoch();
        let stores = self.stores.load();
        if forget_everything {
            stores.clear_all();
        } else {
            stores.clear_negative();
        }
    }

    /// Takes in one snapshot page as of `as_of_sequence`: every merchant when `load_all` (warm start),
    /// otherwise only those already held (re-validation).
    /// A page is one moment: its merchants share one clock reading, one reading of the settings and one
    /// view of the stores (which cannot be replaced meanwhile: the page holds `store_writes`). Reading
    /// the settings per merchant was a tenth of a warm start's CPU.
    pub async fn install_snapshot_page(&self, merchants: ListedMerchants, as_of_sequence: u64, load_all: bool) {
        let _writes = self.store_writes.read().await;
        let stores = self.stores.load();
        let settings = self.settings.load();
        let learned = Learned { at: Instant::now(), negative_cap: Duration::MAX, settings: &settings };
        for listed in merchants.iter() {
            if load_all || stores.holds_positive(listed.id) {
                let answer = Answer { merchant: Some(Incoming::Listed(listed)), as_of_sequence };
                self.install_from_feed(&stores, listed.id, answer, learned);
            }
        }
    }

    /// Ends a resync whose snapshot began at `snapshot_sequence`: merchants it did not refresh were
    /// deleted while the feed was out of step.
    pub async fn finish_resync(&self, snapshot_sequence: u64) {
        let _writes = self.store_writes.read().await;
        self.stores.load().drop_positives_older_than(snapshot_sequence);
    }

    /// How many resyncs have begun (with [`Self::begin_resync`] or a restore): a reader that walks the
    /// stores and sees this unchanged before and after knew no resync began meanwhile.
    pub fn resync_epoch(&self) -> u64 {
        self.fills.epoch()
    }

    /// Starts restoring from a local snapshot at `now`: new stores off to the side (lookups see them
    /// only once [`Self::finish_restore`] swaps them in, so a snapshot found damaged half-way through
    /// was never visible), able to hold merchants learned up to `positive_ttl + serve_stale_for` ago
    /// (older ones could not be answered even stale).
    pub fn begin_restore(&self, now: Instant) -> Restoring {
        let settings = self.settings.load();
        let mut window = settings.positive_ttl.saturating_add(settings.serve_stale_for);
        // The store keeps instants as offsets from its epoch, so the epoch must precede every restored
        // entry; an instant before the clock's origin may not exist on every platform, and then the
        // window shrinks to what the clock can represent.
        let epoch = loop {
            match now.checked_sub(window) {
                Some(epoch) => break epoch,
                None => window /= 2,
            }
        };
        let capacities = self.stores.load().capacities();
        Restoring {
            stores: Stores::with_epoch(capacities, epoch, &self.metrics),
            ttl: settings.positive_ttl,
            now,
            window,
            kept: 0,
            too_old: 0,
        }
    }

    /// Makes the restored stores the ones lookups read. Fills that began before cannot install into
    /// them (a new resync epoch): their answers speak of a history the snapshot may have moved past.
    pub async fn finish_restore(&self, restoring: Restoring) {
        let _writes = self.store_writes.write().await;
        self.fills.advance_epoch();
        self.stores.store(Arc::new(restoring.stores));
    }

    /// Rebuilds the stores when the configured capacities differ from theirs, migrating every entry
    /// (the slot stores' shard layout follows the capacity). Lookups keep reading the old stores until the swap;
    /// store writes wait for it. Returns whether the stores were rebuilt.
    pub async fn resize(&self, cache: &CacheConfig) -> bool {
        let wanted = capacities(cache);
        if self.stores.load().capacities() == wanted {
            return false;
        }
        let writes = self.store_writes.write().await;
        let old = self.stores.load_full();
        let metrics = self.metrics.clone();
        let rebuilt = tokio::task::spawn_blocking(move || Stores::migrated(wanted, &metrics, &old))
            .await
            .expect("migrating the stores does not panic");
        self.stores.store(Arc::new(rebuilt));
        drop(writes);
        true
    }
}

/// Stores being filled from a local snapshot before they replace the live ones (see
/// [`Cache::begin_restore`]). Filled from one thread (a blocking loader), never read meanwhile.
pub struct Restoring {
    stores: Stores,
    /// The positive TTL stamped on restored entries.
    ttl: Duration,
    /// When the restore began: ages count back from it.
    now: Instant,
    /// Merchants older than this could not be answered even stale.
    window: Duration,
    kept: u64,
    too_old: u64,
}

impl Restoring {
    /// Takes in merchant `id` (as the core sent it, encoded) as of `as_of_sequence`, learned `age` ago.
    /// One learned too long ago to be answered even stale is left out (the next lookup asks the core).
    pub fn put(&mut self, id: &str, merchant: EncodedMerchant, as_of_sequence: u64, age: Duration) {
        if age > self.window {
            self.too_old += 1;
            return;
        }
        let entry = PositiveEntry { merchant, as_of_sequence, learned_at: self.now - age, ttl: self.ttl };
        self.stores.restore_positive(id, &entry);
        self.kept += 1;
    }

    /// Merchants taken in, and left out as too old.
    pub fn counts(&self) -> (u64, u64) {
        (self.kept, self.too_old)
    }
}

/// A merchant offered to the stores, in whichever form its writer has it (fills encode once for
/// their waiters; a snapshot page holds the core's encoding; a notice is encoded only if the rule lets
/// it in).
enum Incoming<'a> {
    Encoded(EncodedMerchant),
    Decoded(&'a Merchant),
    Listed(ListedMerchant<'a>),
}

impl Incoming<'_> {
    /// Hands `store` the encoded record and its status.
    fn store(self, store: impl FnOnce(&[u8], i32)) {
        match self {
            Self::Encoded(merchant) => store(merchant.as_slice(), merchant.status()),
            Self::Decoded(merchant) => {
                let merchant = EncodedMerchant::encode(merchant);
                store(merchant.as_slice(), merchant.status());
            }
            Self::Listed(listed) => store(listed.record, listed.status),
        }
    }
}

/// When an answer was learned, the longest a "not found" in it may be trusted for, and the settings
/// (TTLs) in force then.
#[derive(Clone, Copy)]
struct Learned<'s> {
    at: Instant,
    negative_cap: Duration,
    settings: &'s CacheConfig,
}

/// What the core said about an ID as of a sequence (`merchant` absent: it does not exist).
struct Answer<'a> {
    merchant: Option<Incoming<'a>>,
    as_of_sequence: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Cache {
        Cache::new(crate::live::fixed(CacheConfig::default()), CacheMetrics::default())
    }

    fn merchant(id: &str, version: u64) -> Merchant {
        Merchant { merchant_id: id.into(), version, ..Default::default() }
    }

    fn stored_version(cache: &Cache, id: &str) -> Option<u64> {
        cache.stores().fresh_positive(id, Instant::now(), Duration::MAX).map(|entry| entry.merchant.decode().version)
    }

    const ID: &str = "898000000000042";

    #[tokio::test]
    async fn replayed_changes_never_roll_an_entry_back() {
        let cache = cache();
        cache.apply_change(ID, Some(&merchant(ID, 3)), 5, Duration::MAX).await;
        cache.apply_change(ID, Some(&merchant(ID, 2)), 4, Duration::MAX).await;
        assert_eq!(stored_version(&cache, ID), Some(3));
        cache.apply_change(ID, None, 5, Duration::MAX).await;
        assert_eq!(stored_version(&cache, ID), Some(3), "a change at the stored sequence is already reflected");
        cache.apply_change(ID, None, 6, Duration::MAX).await;
        assert_eq!(stored_version(&cache, ID), None);
        assert!(cache.stores().fresh_negative(ID, Instant::now(), Duration::MAX).is_some());
    }

    #[tokio::test]
    async fn a_fill_superseded_by_a_change_installs_nothing_and_is_counted() {
        let cache = cache();
        let Role::Started(fill) = cache.join_or_start(ID, 0) else { panic!("no fill runs") };
        cache.apply_change(ID, Some(&merchant(ID, 1)), 1, Duration::MAX).await;
        let not_found: FillOutcome = Ok(Filled { merchant: None, as_of_sequence: 0 });
        cache.settle_fill(ID, &fill, &not_found, Instant::now(), Duration::MAX, || ()).await;
        assert_eq!(stored_version(&cache, ID), Some(1), "the late not-found did not replace the onboarded merchant");
        assert_eq!(cache.metrics().fills_fenced.get(), 1);
    }

    #[tokio::test]
    async fn a_fill_is_cached_before_its_waiters_are_answered() {
        let cache = cache();
        let Role::Started(fill) = cache.join_or_start(ID, 0) else { panic!() };
        let found: FillOutcome =
            Ok(Filled { merchant: Some(EncodedMerchant::encode(&merchant(ID, 1))), as_of_sequence: 0 });
        let mut cached_first = false;
        let publish = || cached_first = stored_version(&cache, ID) == Some(1);
        cache.settle_fill(ID, &fill, &found, Instant::now(), Duration::MAX, publish).await;
        assert!(cached_first, "a caller that asks again right after its answer finds it in memory");
    }

    #[tokio::test]
    async fn a_not_found_the_feed_cannot_vouch_for_is_not_cached() {
        let cache = cache();
        let Role::Started(fill) = cache.join_or_start(ID, 0) else { panic!() };
        let not_found: FillOutcome = Ok(Filled { merchant: None, as_of_sequence: 0 });
        cache.settle_fill(ID, &fill, &not_found, Instant::now(), Duration::ZERO, || ()).await;
        assert!(cache.stores().stored(ID).is_none());
    }
}
