//! The read and miss path: normalise the ID, answer from the positive or negative store, otherwise
//! ask the core once (coalesced, through core protection) and hand its answer to the cache room to
//! install under the fence; serve-stale when the core cannot answer; refresh-ahead for merchants close
//! to their TTL. The decisions a terminal's answer follows from ([`remembered`], [`after_core`]) are
//! plain functions, so `explain` derives "what a terminal would get" from the same code. Lookups with
//! a consistency token the edge has not applied yet take the path in [`fresh`].
mod fresh;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::metrics::LookupMetrics;
use crate::cache::{Cache, CacheConfig, Fill, Filled, NegativeEntry, PositiveEntry, Role, Stores};
use crate::config::{Config, LiveConfig};
use crate::feed::FeedState;
use crate::guard::{Caller, CoreError, CoreGuard, GuardMetrics};
use crate::merchant_id::IdError;
use crate::pb::Source;
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

/// An answer for one ID, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `None` when the core does not know the ID.
    pub merchant: Option<EncodedMerchant>,
    /// Where the answer came from.
    pub source: Source,
    /// How long ago the edge learned the answer from the core.
    pub age: Duration,
    /// Every core change up to this sequence is reflected.
    pub as_of_sequence: u64,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    /// The ID broke the ID rule.
    InvalidId(#[from] IdError),
    #[error(transparent)]
    /// The core could not be asked, or did not answer.
    Core(#[from] CoreError),
    #[error(
        "min_sequence {asked} is ahead of the bank core, whose latest change is sequence {core}: the token comes \
         from another core history or is wrong; look up without min_sequence, or with a sequence this core returned"
    )]
    /// The consistency token is ahead of the core's latest change: no answer can be that fresh.
    SequenceAhead {
        /// The request's `min_sequence`.
        asked: u64,
        /// The core's latest change, as its answer read after the token was issued showed.
        core: u64,
    },
    #[error(
        "cannot answer as fresh as sequence {asked} (min_sequence): this edge has applied changes up to sequence \
         {held}, and {why}; retry in a moment"
    )]
    /// The edge is behind the consistency token and the core could not make up for it in time.
    NotFresh {
        /// The request's `min_sequence`.
        asked: u64,
        /// The sequence this edge had applied when it gave up.
        held: u64,
        /// Why the core could not answer instead.
        why: NotFreshCause,
    },
}

/// Why the core could not answer a lookup that the edge was too far behind to answer itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFreshCause {
    #[error("the bank core could not answer: {0}")]
    /// The core could not be asked, or did not answer in time.
    Core(CoreError),
    #[error("the bank core answered only as of sequence {answered} (a replica behind its own changes)")]
    /// The core answered, but from before the token (while the edge has seen it reach the token).
    CoreBehind {
        /// The core answer's `as_of_sequence`.
        answered: u64,
    },
}

/// What memory holds for an ID that a lookup may answer from.
pub enum Remembered {
    /// A merchant within its TTL.
    Merchant(PositiveEntry),
    /// A "not found" within its TTL that the feed vouches for.
    NotFound(NegativeEntry),
}

impl Remembered {
    /// The core sequence the entry was learned at.
    pub fn as_of_sequence(&self) -> u64 {
        match self {
            Self::Merchant(entry) => entry.as_of_sequence,
            Self::NotFound(entry) => entry.as_of_sequence,
        }
    }

    /// The answer a lookup at `now` gets from it.
    pub fn into_answer(self, now: Instant) -> Answer {
        match self {
            Self::Merchant(entry) => Answer {
                merchant: Some(entry.merchant),
                source: Source::Cache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            },
            Self::NotFound(entry) => Answer {
                merchant: None,
                source: Source::NegativeCache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            },
        }
    }
}

/// What a lookup of the normalised `id` is answered from memory at `now`: a merchant within its TTL,
/// else a "not found" within its TTL that the change feed still vouches for.
pub fn remembered(stores: &Stores, config: &Config, feed: &FeedState, id: &str, now: Instant) -> Option<Remembered> {
    if let Some(entry) = stores.fresh_positive(id, now, config.cache.positive_ttl) {
        return Some(Remembered::Merchant(entry));
    }
    let when_down = config.feed.negative_ttl_when_down;
    stores
        .fresh_negative(id, now, config.cache.negative_ttl)
        .filter(|entry| feed.trusts_negative(entry.learned_at, now, when_down))
        .map(Remembered::NotFound)
}

/// What a lookup that memory could not answer gets once the core was asked: the core's answer; else,
/// when the core could not answer, the merchant past its TTL that `stale` finds (serve-stale); else the
/// error. A cached "not found" is never served stale.
pub fn after_core(
    outcome: Result<Filled, CoreError>,
    stale: impl FnOnce() -> Option<PositiveEntry>,
    now: Instant,
) -> Result<Answer, LookupError> {
    let error = match outcome {
        Ok(answer) => {
            return Ok(Answer {
                merchant: answer.merchant,
                source: Source::Upstream,
                age: Duration::ZERO,
                as_of_sequence: answer.as_of_sequence,
            })
        }
        Err(error) => error,
    };
    match stale() {
        Some(entry) => Ok(Answer {
            merchant: Some(entry.merchant),
            source: Source::Stale,
            age: now.saturating_duration_since(entry.learned_at),
            as_of_sequence: entry.as_of_sequence,
        }),
        None => Err(error.into()),
    }
}

/// The merchant serve-stale may answer for `id` at `now` (past its TTL by at most `serve_stale_for`).
pub fn stale_merchant(stores: &Stores, cache: &CacheConfig, id: &str, now: Instant) -> Option<PositiveEntry> {
    stores.positive_within(id, now, cache.positive_ttl, cache.serve_stale_for)
}

/// Answers lookups: from memory, else from the core (coalesced and protected).
pub struct Resolver {
    config: LiveConfig,
    cache: Arc<Cache>,
    core: CoreClient,
    guard: CoreGuard,
    /// Refresh-ahead requests from the hit path, taken by [`Resolver::run_refreshes`].
    refreshes: tokio::sync::mpsc::Sender<Arc<str>>,
    refresh_requests: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Arc<str>>>>,
    feed: Arc<FeedState>,
    metrics: LookupMetrics,
    guard_metrics: GuardMetrics,
    /// The latest core read answered, for judging consistency tokens ahead of the core.
    head_proof: fresh::HeadProof,
}

/// Outcomes counted by a [`MemoryReader`] until it is dropped.
#[derive(Default, Clone, Copy)]
struct Tally {
    cache_hit: u64,
    negative_hit: u64,
    invalid_id: u64,
    /// Lookups with a consistency token the edge had already applied, answered from memory.
    token_fresh: u64,
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
        let (config, now) = (&self.config, self.now);
        let id = config.merchant_id.normalise(raw_id).inspect_err(|_| self.count(|tally| tally.invalid_id += 1))?;
        match remembered(&self.stores, config, &self.resolver.feed, &id, now) {
            Some(Remembered::Merchant(entry)) => {
                self.count(|tally| tally.cache_hit += 1);
                if due_for_refresh(&entry, &config.cache, now) {
                    self.resolver.request_refresh(&id);
                }
                Ok(InMemory::Answered(Remembered::Merchant(entry).into_answer(now)))
            }
            Some(not_found) => {
                self.count(|tally| tally.negative_hit += 1);
                Ok(InMemory::Answered(not_found.into_answer(now)))
            }
            None => Ok(InMemory::Missed(id)),
        }
    }

    /// As [`MemoryReader::answer`], for a lookup whose answer must reflect every core change up to
    /// `min_sequence` (0: no token). A token the edge has applied costs one load and compare: every
    /// change up to the applied sequence is in the stores, so memory answers as for any lookup. Behind
    /// it, the normalised ID comes back as [`InMemory::Behind`] for [`Resolver::answer_beyond_memory`].
    pub fn answer_at_least<'a>(&self, raw_id: &'a str, min_sequence: u64) -> Result<InMemory<'a>, LookupError> {
        if min_sequence == 0 {
            return self.answer(raw_id);
        }
        if self.resolver.feed.applied() >= min_sequence {
            let answered = self.answer(raw_id);
            if let Ok(InMemory::Answered(_)) = answered {
                self.count(|tally| tally.token_fresh += 1);
            }
            return answered;
        }
        let id =
            self.config.merchant_id.normalise(raw_id).inspect_err(|_| self.count(|tally| tally.invalid_id += 1))?;
        Ok(InMemory::Behind(id))
    }
}

impl Drop for MemoryReader<'_> {
    fn drop(&mut self) {
        let tally = self.tally.get();
        let counters = &self.resolver.metrics.counters;
        for (counter, count) in [
            (&counters.cache_hit, tally.cache_hit),
            (&counters.negative_hit, tally.negative_hit),
            (&counters.invalid_id, tally.invalid_id),
            (&self.resolver.metrics.tokens.fresh, tally.token_fresh),
        ] {
            if count > 0 {
                counter.inc_by(count);
            }
        }
    }
}

/// What a lookup found in memory, or the normalised ID to ask the core about.
pub enum InMemory<'a> {
    /// Memory answered.
    Answered(Answer),
    /// Memory could not answer; this is the normalised ID.
    Missed(std::borrow::Cow<'a, str>),
    /// The lookup's consistency token is ahead of the applied sequence, so memory may be too old to
    /// answer; this is the normalised ID.
    Behind(std::borrow::Cow<'a, str>),
}

impl Resolver {
    /// A resolver reading `cache` and asking `core` on misses.
    pub fn new(
        config: LiveConfig,
        cache: Arc<Cache>,
        core: CoreClient,
        feed: Arc<FeedState>,
        metrics: LookupMetrics,
        guard_metrics: GuardMetrics,
    ) -> Self {
        let (refreshes, refresh_requests) = tokio::sync::mpsc::channel(REFRESHES_QUEUED);
        Self {
            refreshes,
            refresh_requests: parking_lot::Mutex::new(Some(refresh_requests)),
            config,
            cache,
            core,
            guard: CoreGuard::default(),
            feed,
            metrics,
            guard_metrics,
            head_proof: fresh::HeadProof::default(),
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
                .cache
                .stores()
                .fresh_positive(&id, now, cache.positive_ttl)
                .is_some_and(|entry| due_for_refresh(&entry, &cache, now));
            if !still_due {
                continue;
            }
            if let Role::Started(fill) = self.cache.join_or_start(&id, self.feed.applied()) {
                self.metrics.refreshes_ahead.inc();
                let waiting = fill.wait_here();
                let resolver = self.clone();
                let span = tracing::debug_span!("refresh_ahead", merchant_id = %id);
                tokio::spawn(
                    async move {
                        resolver.run_fill(id, fill.clone(), None).await;
                        drop(waiting);
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// The core client, for asking the core directly (explaining an ID).
    pub fn core(&self) -> &CoreClient {
        &self.core
    }

    /// Core protection: the breaker's state and the calls in flight and queued.
    pub fn guard(&self) -> &CoreGuard {
        &self.guard
    }

    /// The cache room this resolver reads and hands core answers to.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Resolves one ID as a terminal sent it.
    pub async fn lookup(self: &Arc<Self>, raw_id: &str, caller: &Caller) -> Result<Answer, LookupError> {
        self.lookup_at_least(raw_id, 0, caller).await
    }

    /// Resolves one ID as a terminal sent it, with an answer reflecting every core change up to
    /// `min_sequence` (0: no token).
    pub async fn lookup_at_least(
        self: &Arc<Self>,
        raw_id: &str,
        min_sequence: u64,
        caller: &Caller,
    ) -> Result<Answer, LookupError> {
        match self.memory().answer_at_least(raw_id, min_sequence)? {
            InMemory::Answered(answer) => Ok(answer),
            InMemory::Missed(id) | InMemory::Behind(id) => self.answer_beyond_memory(&id, min_sequence, caller).await,
        }
    }

    /// The answer for an ID memory could not answer, or not fresh enough (normalised by
    /// [`MemoryReader::answer_at_least`]): without a token, [`Self::answer_from_core`]; with one, the
    /// answer reflects every change up to `min_sequence` or the lookup fails saying why.
    pub async fn answer_beyond_memory(
        self: &Arc<Self>,
        id: &str,
        min_sequence: u64,
        caller: &Caller,
    ) -> Result<Answer, LookupError> {
        if min_sequence == 0 {
            return self.answer_from_core(id, caller).await;
        }
        self.answer_at_least(id, min_sequence, caller).await
    }

    /// The answer for an ID that memory could not answer (normalised by [`Self::answer_from_memory`]).
    /// When the core cannot answer, a merchant past its TTL but within `cache.serve_stale_for` is
    /// answered instead (source STALE); a cached "not found" never is.
    pub async fn answer_from_core(self: &Arc<Self>, id: &str, caller: &Caller) -> Result<Answer, LookupError> {
        let outcome = match self.guard.admit(caller, &self.config.load().protect, &self.guard_metrics) {
            Ok(()) => self.ask_core(id, caller.deadline).await.0,
            Err(refused) => Err(refused.into()),
        };
        let config = self.config.load();
        let now = Instant::now();
        let failure = outcome.as_ref().err().map(ToString::to_string);
        let answer = after_core(outcome, || stale_merchant(&self.cache.stores(), &config.cache, id, now), now);
        let counters = &self.metrics.counters;
        match &answer {
            Ok(Answer { source: Source::Stale, .. }) => {
                counters.stale.inc();
                tracing::debug!(id, error = failure.as_deref().unwrap_or_default(), "serving a stale merchant");
            }
            Ok(Answer { merchant: Some(_), .. }) => {
                counters.upstream_found.inc();
            }
            Ok(Answer { merchant: None, .. }) => {
                counters.upstream_not_found.inc();
            }
            Err(_) => {
                counters.unavailable.inc();
            }
        }
        answer
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
            stores: self.cache.stores(),
            now: Instant::now(),
            tally: Cell::default(),
        }
    }

    /// Asks the core for `id`, sharing the call with every concurrent lookup of the same ID, and waits
    /// for the answer until `deadline` at most. A shared call can end early for reasons of the lookup
    /// that started it (its deadline, or every waiter leaving just as this one joined); then this
    /// lookup starts its own call once, under its own deadline.
    /// Also returns when the fill that answered began (its core read reflects every change committed
    /// before then).
    async fn ask_core(self: &Arc<Self>, id: &str, deadline: Option<Instant>) -> (Result<Filled, CoreError>, Instant) {
        let (outcome, began) = self.ask_core_once(id, deadline).await;
        let own_deadline_left = deadline.is_none_or(|deadline| Instant::now() + MIN_FILL < deadline);
        if outcome.as_ref().is_err_and(CoreError::is_deadline) && own_deadline_left {
            return self.ask_core_once(id, deadline).await;
        }
        (outcome, began)
    }

    async fn ask_core_once(
        self: &Arc<Self>,
        id: &str,
        deadline: Option<Instant>,
    ) -> (Result<Filled, CoreError>, Instant) {
        let (fill, waiting) = match self.cache.join_or_start(id, self.feed.applied()) {
            Role::Joined(fill) => {
                self.metrics.coalesced_waits.inc();
                let waiting = fill.wait_here();
                (fill, waiting)
            }
            Role::Started(fill) => {
                let waiting = fill.wait_here();
                // The call runs in its own task so that other waiters are answered even if the caller
                // that started it goes away; it stops retrying once nobody waits, and never works past
                // the starting caller's deadline.
                let resolver = self.clone();
                let (id, task_fill) = (Arc::<str>::from(id), fill.clone());
                let span = tracing::debug_span!("fill", merchant_id = %id);
                tokio::spawn(async move { resolver.run_fill(id, task_fill, deadline).await }.instrument(span));
                (fill, waiting)
            }
        };
        let outcome = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, fill.outcome())
                .await
                .unwrap_or(Err(UpstreamError::DeadlineExceeded.into())),
            None => fill.outcome().await,
        };
        drop(waiting);
        (outcome, fill.started_at)
    }

    async fn run_fill(&self, id: Arc<str>, fill: Arc<Fill>, deadline: Option<Instant>) {
        let config = self.config.load_full();
        let (protect, timeout) = (&config.protect, config.upstream.timeout);
        // Without a caller's deadline, every attempt may take the whole timeout.
        let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout * protect.max_attempts.get());
        let call = self.guard.call(protect, timeout, deadline, &self.guard_metrics, fill.abandoned(), |timeout| {
            self.core.get_merchant(&id, timeout)
        });
        // A panic below must still answer the waiters and free the slot, or every later lookup of this
        // ID would wait for this fill forever.
        let outcome = std::panic::AssertUnwindSafe(call)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Unavailable("internal error while asking the core".into()).into()));
        // Encoded once here, shared by every waiter and by the store.
        let outcome = outcome.map(|answer| Filled {
            merchant: answer.merchant.as_ref().map(EncodedMerchant::encode),
            as_of_sequence: answer.as_of_sequence,
        });
        if let Ok(answer) = &outcome {
            // An answer from before a resync may come from a core history that no longer exists.
            if self.cache.is_current(&fill) {
                self.feed.observe_head(answer.as_of_sequence);
                self.head_proof.record(answer.as_of_sequence, fill.started_at);
            }
        }
        let learned_at = Instant::now();
        fill.publish(outcome.clone());
        let negative_cap = self.feed.negative_ttl(Duration::MAX, config.feed.negative_ttl_when_down);
        self.cache.settle_fill(&id, &fill, &outcome, learned_at, negative_cap).await;
    }
}
