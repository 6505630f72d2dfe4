//! The lookup path: normalise the ID, answer from the positive or negative store, otherwise ask the
//! core once (coalesced, fenced) and remember its answer.
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use tokio::sync::RwLock;
use tokio::time::Instant;

use crate::config::{CacheConfig, Config, LiveConfig};
use crate::feed::FeedStatus;
use crate::fill::{Fill, Filled, Fills, Role};
use crate::guard::{Caller, CoreGuard};
use crate::merchant_id::IdError;
use crate::metrics::{LookupCounters, Metrics};
use crate::pb::{ChangeKind, ChangeNotice, Merchant, Source};
use crate::store::{Capacities, NegativeEntry, Origin, PositiveEntry, Stored, Stores};
use crate::upstream::{CoreClient, UpstreamError};
use crate::wire::EncodedMerchant;

/// Whether a fresh merchant is within the refresh-ahead window of its TTL at `now`.
fn due_for_refresh(entry: &PositiveEntry, cache: &CacheConfig, now: Instant) -> bool {
    let expires_at = entry.learned_at + entry.ttl.min(cache.positive_ttl);
    expires_at.saturating_duration_since(now) < cache.refresh_window()
}

/// Refresh-ahead requests waiting; beyond this, hits do not queue more (each refresh is one core call
/// through the same budget as misses, so a burst of them must not pile up).
const REFRESHES_QUEUED: usize = 1024;

/// Less time than this left is not worth starting another fill for.
const MIN_FILL: Duration = Duration::from_millis(5);

/// Whether storing a state as of the same sequence as the stored one replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Equal {
    /// A fill refreshing an entry past its TTL.
    Replace,
    /// A notice or snapshot the store already reflects.
    Keep,
}

/// An answer for one ID, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `None` when the core does not know the ID.
    pub merchant: Option<EncodedMerchant>,
    pub source: Source,
    /// How long ago the edge learned the answer from the core.
    pub age: Duration,
    pub as_of_sequence: u64,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

pub struct Resolver {
    config: LiveConfig,
    stores: ArcSwap<Stores>,
    /// Every store write holds this for reading; rebuilding the stores for new capacities holds it for
    /// writing, so no write lands in stores that are being replaced. Async, so a writer that must wait
    /// yields its worker thread instead of blocking it.
    store_writes: RwLock<()>,
    fills: Fills,
    core: CoreClient,
    guard: CoreGuard,
    /// Refresh-ahead requests from the hit path, taken by [`Resolver::run_refreshes`].
    refreshes: tokio::sync::mpsc::Sender<Arc<str>>,
    refresh_requests: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Arc<str>>>>,
    feed: Arc<FeedStatus>,
    metrics: Arc<Metrics>,
    counters: LookupCounters,
}

fn capacities(cache: &CacheConfig) -> Capacities {
    Capacities { positive: cache.positive_capacity.get(), negative: cache.negative_capacity.get() }
}

/// Outcomes counted by a [`MemoryReader`] until it is dropped.
#[derive(Default, Clone, Copy)]
struct Tally {
    cache_hit: u64,
    negative_hit: u64,
    invalid_id: u64,
}

/// Answers IDs from memory as of one moment; see [`Resolver::memory`].
pub struct MemoryReader<'r> {
    resolver: &'r Resolver,
    config: arc_swap::Guard<Arc<Config>>,
    stores: arc_swap::Guard<Arc<Stores>>,
    now: Instant,
    tally: Cell<Tally>,
}

impl MemoryReader<'_> {
    fn count(&self, outcome: impl FnOnce(&mut Tally)) {
        let mut tally = self.tally.get();
        outcome(&mut tally);
        self.tally.set(tally);
    }

    /// The answer memory holds for one ID as a terminal sent it, or the normalised ID to ask the core.
    pub fn answer<'a>(&self, raw_id: &'a str) -> Result<InMemory<'a>, LookupError> {
        let (config, stores, now) = (&self.config, &self.stores, self.now);
        let id = config.merchant_id.normalise(raw_id).inspect_err(|_| self.count(|tally| tally.invalid_id += 1))?;
        if let Some(entry) = stores.fresh_positive(&id, now, config.cache.positive_ttl) {
            self.count(|tally| tally.cache_hit += 1);
            if due_for_refresh(&entry, &config.cache, now) {
                self.resolver.request_refresh(&id);
            }
            return Ok(InMemory::Answered(Answer {
                merchant: Some(entry.merchant),
                source: Source::Cache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            }));
        }
        let when_down = config.feed.negative_ttl_when_down;
        if let Some(entry) = stores
            .fresh_negative(&id, now, config.cache.negative_ttl)
            .filter(|entry| self.resolver.feed.trusts_negative(entry.learned_at, now, when_down))
        {
            self.count(|tally| tally.negative_hit += 1);
            return Ok(InMemory::Answered(Answer {
                merchant: None,
                source: Source::NegativeCache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            }));
        }
        Ok(InMemory::Missed(id))
    }
}

impl Drop for MemoryReader<'_> {
    fn drop(&mut self) {
        let tally = self.tally.get();
        let counters = &self.resolver.counters;
        for (counter, count) in [
            (&counters.cache_hit, tally.cache_hit),
            (&counters.negative_hit, tally.negative_hit),
            (&counters.invalid_id, tally.invalid_id),
        ] {
            if count > 0 {
                counter.inc_by(count);
            }
        }
    }
}

/// What a lookup found in memory, or the normalised ID to ask the core about.
pub enum InMemory<'a> {
    Answered(Answer),
    Missed(std::borrow::Cow<'a, str>),
}

impl Resolver {
    pub fn new(config: LiveConfig, core: CoreClient, feed: Arc<FeedStatus>, metrics: Arc<Metrics>) -> Self {
        let stores = Stores::new(capacities(&config.load().cache), &metrics);
        let (refreshes, refresh_requests) = tokio::sync::mpsc::channel(REFRESHES_QUEUED);
        Self {
            refreshes,
            refresh_requests: parking_lot::Mutex::new(Some(refresh_requests)),
            config,
            stores: ArcSwap::from_pointee(stores),
            store_writes: RwLock::new(()),
            fills: Fills::default(),
            core,
            guard: CoreGuard::default(),
            feed,
            counters: LookupCounters::new(&metrics),
            metrics,
        }
    }

    /// Asks for a background refresh of a merchant close to its TTL (dropped when refreshes are
    /// already backed up: the entry is still fresh, and later hits ask again).
    fn request_refresh(&self, id: &str) {
        let _ = self.refreshes.try_send(Arc::from(id));
    }

    /// Runs the refresh-ahead requests until the resolver is dropped: each becomes a fill with nobody
    /// else waiting, unless one is already in flight for the ID (then it is refreshed already).
    pub async fn run_refreshes(self: Arc<Self>) {
        let Some(mut requests) = self.refresh_requests.lock().take() else {
            return;
        };
        while let Some(id) = requests.recv().await {
            // Hits queue a request each until the entry is refreshed; only the first one still finds
            // it close to its TTL.
            let cache = self.config.load().cache.clone();
            let now = Instant::now();
            let still_due = self
                .stores()
                .fresh_positive(&id, now, cache.positive_ttl)
                .is_some_and(|entry| due_for_refresh(&entry, &cache, now));
            if !still_due {
                continue;
            }
            if let Role::Leader(fill) = self.fills.join_or_start(&id, self.feed.applied()) {
                self.metrics.refreshes_ahead.inc();
                let waiting = fill.wait_here();
                let resolver = self.clone();
                tokio::spawn(async move {
                    resolver.run_fill(id, fill.clone(), None).await;
                    drop(waiting);
                });
            }
        }
    }

    /// The core client, for asking the core directly (explaining an ID).
    pub fn core(&self) -> &CoreClient {
        &self.core
    }

    /// Forgets both entries for `id` (manual repair), fenced like a change notice so that a core call
    /// in flight cannot put an answer back that it read before.
    pub async fn invalidate(&self, id: &str) {
        let _writes = self.store_writes.read().await;
        self.fills.supersede(id, || self.stores.load().remove(id));
    }

    /// Core protection: the breaker's state and the calls in flight and queued.
    pub fn guard(&self) -> &CoreGuard {
        &self.guard
    }

    /// The stores as they are now (a later capacity change replaces them).
    pub fn stores(&self) -> Arc<Stores> {
        self.stores.load_full()
    }

    /// Resolves one ID as a terminal sent it.
    pub async fn lookup(self: &Arc<Self>, raw_id: &str, caller: &Caller) -> Result<Answer, LookupError> {
        match self.answer_from_memory(raw_id)? {
            InMemory::Answered(answer) => Ok(answer),
            InMemory::Missed(id) => self.answer_from_core(&id, caller).await,
        }
    }

    /// The answer for an ID that memory could not answer (normalised by [`Self::answer_from_memory`]).
    /// When the core cannot answer, a merchant past its TTL but within `cache.serve_stale_for` is
    /// answered instead (source STALE); a cached "not found" never is.
    pub async fn answer_from_core(self: &Arc<Self>, id: &str, caller: &Caller) -> Result<Answer, LookupError> {
        let outcome = match self.guard.admit(caller, &self.config.load().protect, &self.metrics) {
            Ok(()) => self.ask_core(id, caller.deadline).await,
            Err(refused) => Err(refused),
        };
        let error = match outcome {
            Ok(answer) => {
                match answer.merchant {
                    Some(_) => self.counters.upstream_found.inc(),
                    None => self.counters.upstream_not_found.inc(),
                };
                return Ok(Answer {
                    merchant: answer.merchant,
                    source: Source::Upstream,
                    age: Duration::ZERO,
                    as_of_sequence: answer.as_of_sequence,
                });
            }
            Err(error) => error,
        };
        let config = self.config.load();
        let now = Instant::now();
        let stale =
            self.stores.load().positive_within(id, now, config.cache.positive_ttl, config.cache.serve_stale_for);
        match stale {
            Some(entry) => {
                self.counters.stale.inc();
                tracing::debug!(id, %error, "serving a stale merchant");
                Ok(Answer {
                    merchant: Some(entry.merchant),
                    source: Source::Stale,
                    age: now.saturating_duration_since(entry.learned_at),
                    as_of_sequence: entry.as_of_sequence,
                })
            }
            None => {
                self.counters.unavailable.inc();
                Err(error.into())
            }
        }
    }

    /// The hit path for one ID: validation and both stores, under the config in force now.
    pub fn answer_from_memory<'a>(&self, raw_id: &'a str) -> Result<InMemory<'a>, LookupError> {
        self.memory().answer(raw_id)
    }

    /// A reader for answering many IDs from memory under one config, one set of stores and one clock
    /// reading (a batch), counting outcomes once at the end.
    pub fn memory(&self) -> MemoryReader<'_> {
        MemoryReader {
            resolver: self,
            config: self.config.load(),
            stores: self.stores.load(),
            now: Instant::now(),
            tally: Cell::default(),
        }
    }

    /// Asks the core for `id`, sharing the call with every concurrent lookup of the same ID, and waits
    /// for the answer until `deadline` at most. A shared call can end early for reasons of the lookup
    /// that started it (its deadline, or every waiter leaving just as this one joined); then this
    /// lookup starts its own call once, under its own deadline.
    async fn ask_core(self: &Arc<Self>, id: &str, deadline: Option<Instant>) -> Result<Filled, UpstreamError> {
        let outcome = self.ask_core_once(id, deadline).await;
        let own_deadline_left = deadline.is_none_or(|deadline| Instant::now() + MIN_FILL < deadline);
        if matches!(outcome, Err(UpstreamError::DeadlineExceeded)) && own_deadline_left {
            return self.ask_core_once(id, deadline).await;
        }
        outcome
    }

    async fn ask_core_once(self: &Arc<Self>, id: &str, deadline: Option<Instant>) -> Result<Filled, UpstreamError> {
        let (fill, waiting) = match self.fills.join_or_start(id, self.feed.applied()) {
            Role::Follower(fill) => {
                self.metrics.coalesced_waits.inc();
                let waiting = fill.wait_here();
                (fill, waiting)
            }
            Role::Leader(fill) => {
                let waiting = fill.wait_here();
                // The call runs in its own task so that other waiters are answered even if the caller
                // that started it goes away; it stops retrying once nobody waits, and never works past
                // the starting caller's deadline.
                let resolver = self.clone();
                let (id, task_fill) = (Arc::<str>::from(id), fill.clone());
                tokio::spawn(async move { resolver.run_fill(id, task_fill, deadline).await });
                (fill, waiting)
            }
        };
        let outcome = match deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, fill.outcome()).await.unwrap_or(Err(UpstreamError::DeadlineExceeded))
            }
            None => fill.outcome().await,
        };
        drop(waiting);
        outcome
    }

    async fn run_fill(&self, id: Arc<str>, fill: Arc<Fill>, deadline: Option<Instant>) {
        let config = self.config.load_full();
        let (protect, timeout) = (&config.protect, config.upstream.timeout);
        // Without a caller's deadline, every attempt may take the whole timeout.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout * protect.max_attempts.get());
        let call = self.guard.call(protect, timeout, deadline, &self.metrics, fill.abandoned(), |timeout| {
            self.core.get_merchant(&id, timeout)
        });
        // A panic below must still answer the waiters and free the slot, or every later lookup of this
        // ID would wait for this fill forever.
        let outcome = std::panic::AssertUnwindSafe(call)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Unavailable("internal error while asking the core".into())));
        // Encoded once here, shared by every waiter and by the store.
        let outcome = outcome.map(|answer| Filled {
            merchant: answer.merchant.as_ref().map(EncodedMerchant::encode),
            as_of_sequence: answer.as_of_sequence,
        });
        if let Ok(answer) = &outcome {
            // An answer from before a resync may come from a core history that no longer exists.
            if self.fills.is_current(&fill) {
                self.feed.observe_head(answer.as_of_sequence);
            }
        }
        let learned_at = Instant::now();
        fill.publish(outcome.clone());
        // Caching may wait for a capacity migration; the callers above already have their answer.
        let _writes = self.store_writes.read().await;
        let installed = self.fills.settle(&id, &fill, outcome.as_ref().ok(), |answer| {
            // Only a strictly newer stored state wins, so an entry past its TTL can be refreshed with an
            // answer as of the same sequence, but a lagging core replica cannot roll an entry back.
            let merchant = answer.merchant.clone();
            self.store_unless_newer(id.clone(), merchant, answer.as_of_sequence, learned_at, Equal::Replace)
        });
        if outcome.is_ok() && !installed {
            self.metrics.fills_fenced.inc();
        }
    }

    /// Stores what the core said about `id` as of `as_of_sequence`, unless the store already holds a
    /// later state; returns whether it stored anything. Callers hold `store_writes`.
    fn store_unless_newer(
        &self,
        id: Arc<str>,
        merchant: Option<EncodedMerchant>,
        as_of_sequence: u64,
        learned_at: Instant,
        equal: Equal,
    ) -> bool {
        let stores = self.stores.load();
        let held = stores.stored(&id);
        if let Some(stored) = held.map(Stored::as_of_sequence) {
            if stored > as_of_sequence || (stored == as_of_sequence && equal == Equal::Keep) {
                return false;
            }
        }
        let config = self.config.load();
        match merchant {
            Some(merchant) => {
                let ttl = config.cache.positive_ttl;
                stores.put_positive(id, PositiveEntry { merchant, as_of_sequence, learned_at, ttl }, held)
            }
            None => {
                let ttl = self.feed.negative_ttl(config.cache.negative_ttl, config.feed.negative_ttl_when_down);
                if ttl.is_zero() {
                    stores.remove(&id);
                } else {
                    let origin = if equal == Equal::Replace { Origin::CoreRead } else { Origin::Notice };
                    stores.put_negative(id, NegativeEntry { as_of_sequence, learned_at, ttl, origin }, held);
                }
            }
        }
        true
    }

    /// Stores a state of `id` that the core reached at `as_of_sequence`, with the fence up: a fill in
    /// flight for the ID loses its slot, and nothing stored from the same or a later sequence is
    /// overwritten (the snapshot and the stream may repeat changes the store already reflects).
    /// Callers hold `store_writes`.
    fn install_with_fence(&self, id: &str, merchant: Option<&Merchant>, as_of_sequence: u64) {
        let merchant = merchant.map(EncodedMerchant::encode);
        self.fills.supersede(id, || {
            self.store_unless_newer(Arc::from(id), merchant, as_of_sequence, Instant::now(), Equal::Keep);
        });
    }

    /// Applies one change notice (in sequence order; the feed checks the order). A notice that does not
    /// say what the merchant became is refused rather than guessed at: guessing "deleted" would turn a
    /// protocol error into "not found".
    pub async fn apply_change(&self, notice: &ChangeNotice) -> Result<(), String> {
        let merchant = match (ChangeKind::try_from(notice.kind), &notice.merchant) {
            (Ok(ChangeKind::Upsert), Some(merchant)) if merchant.merchant_id == notice.merchant_id => Some(merchant),
            (Ok(ChangeKind::Delete), _) => None,
            _ => {
                return Err(format!(
                    "malformed notice at sequence {}: kind {} for {:?} with merchant {:?}",
                    notice.sequence,
                    notice.kind,
                    notice.merchant_id,
                    notice.merchant.as_ref().map(|m| &m.merchant_id)
                ))
            }
        };
        let _writes = self.store_writes.read().await;
        self.install_with_fence(&notice.merchant_id, merchant, notice.sequence);
        Ok(())
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

    /// Takes in one snapshot page: every merchant when `load_all` (warm start), otherwise only those
    /// already held (re-validation).
    pub async fn install_snapshot(&self, merchants: Vec<Merchant>, as_of_sequence: u64, load_all: bool) {
        let _writes = self.store_writes.read().await;
        for merchant in merchants {
            if load_all || self.stores.load().holds_positive(&merchant.merchant_id) {
                self.install_with_fence(&merchant.merchant_id, Some(&merchant), as_of_sequence);
            }
        }
    }

    /// Ends a resync whose snapshot began at `snapshot_sequence`.
    pub async fn finish_resync(&self, snapshot_sequence: u64) {
        let _writes = self.store_writes.read().await;
        self.stores.load().drop_positives_older_than(snapshot_sequence);
    }

    /// Rebuilds the stores when the configured capacities differ from theirs, migrating every entry
    /// (moka cannot change a capacity in place). Lookups keep reading the old stores until the swap;
    /// store writes wait for it. Returns whether the stores were rebuilt.
    pub async fn apply_capacities(&self, cache: &CacheConfig) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose core is never reached (the client connects lazily).
    fn resolver() -> Resolver {
        let core = CoreClient::connect_lazy("http://127.0.0.1:9", Duration::from_millis(10)).unwrap();
        let config = Arc::new(ArcSwap::from_pointee(crate::config::Config::default()));
        Resolver::new(config, core, Arc::new(FeedStatus::new()), Arc::new(Metrics::default()))
    }

    fn upsert(sequence: u64, id: &str, version: u64) -> ChangeNotice {
        ChangeNotice {
            sequence,
            merchant_id: id.into(),
            kind: ChangeKind::Upsert as i32,
            merchant: Some(Merchant { merchant_id: id.into(), version, ..Default::default() }),
            ..Default::default()
        }
    }

    fn stored_version(resolver: &Resolver, id: &str) -> Option<u64> {
        resolver.stores().fresh_positive(id, Instant::now(), Duration::MAX).map(|entry| entry.merchant.decode().version)
    }

    #[tokio::test]
    async fn malformed_notices_are_refused_and_change_nothing() {
        let resolver = resolver();
        let id = "898000000000042";
        resolver.apply_change(&upsert(1, id, 1)).await.unwrap();
        let without_merchant = ChangeNotice { merchant: None, ..upsert(2, id, 2) };
        let unknown_kind = ChangeNotice { kind: 9, ..upsert(2, id, 2) };
        let other_merchant = upsert(2, "898000000000043", 2);
        let mislabelled = ChangeNotice { merchant_id: id.into(), ..other_merchant };
        for notice in [without_merchant, unknown_kind, mislabelled] {
            assert!(resolver.apply_change(&notice).await.is_err(), "{notice:?}");
            assert_eq!(stored_version(&resolver, id), Some(1), "not turned into a delete");
        }
    }

    #[tokio::test]
    async fn replayed_notices_never_roll_an_entry_back() {
        let resolver = resolver();
        let id = "898000000000042";
        resolver.apply_change(&upsert(5, id, 3)).await.unwrap();
        resolver.apply_change(&upsert(4, id, 2)).await.unwrap();
        assert_eq!(stored_version(&resolver, id), Some(3));
        let delete = ChangeNotice { kind: ChangeKind::Delete as i32, merchant: None, ..upsert(5, id, 0) };
        resolver.apply_change(&delete).await.unwrap();
        assert_eq!(stored_version(&resolver, id), Some(3), "a notice at the stored sequence is already reflected");
        resolver.apply_change(&ChangeNotice { sequence: 6, ..delete }).await.unwrap();
        assert_eq!(stored_version(&resolver, id), None);
        assert!(resolver.stores().fresh_negative(id, Instant::now(), Duration::MAX).is_some());
    }
}
