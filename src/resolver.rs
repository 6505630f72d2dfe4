//! The lookup path: normalise the ID, answer from the positive or negative store, otherwise ask the
//! core once (coalesced, fenced) and remember its answer.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::feed::FeedStatus;
use crate::fill::{Fill, Fills, Role};
use crate::merchant_id::{IdError, IdRule};
use crate::metrics::{CoreCallResult, LookupCounters, Metrics};
use crate::pb::{ChangeKind, ChangeNotice, Merchant, Source};
use crate::store::{NegativeEntry, PositiveEntry, Stores};
use crate::upstream::{CoreAnswer, CoreClient, UpstreamError};

/// An answer for one ID, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `None` when the core does not know the ID.
    pub merchant: Option<Merchant>,
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
    rule: IdRule,
    stores: Stores,
    fills: Fills,
    core: CoreClient,
    negative_ttl: Duration,
    feed: Arc<FeedStatus>,
    metrics: Arc<Metrics>,
    counters: LookupCounters,
}

impl Resolver {
    pub fn new(
        rule: IdRule,
        cache: &CacheConfig,
        core: CoreClient,
        feed: Arc<FeedStatus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            rule,
            stores: Stores::new(cache),
            fills: Fills::default(),
            core,
            negative_ttl: cache.negative_ttl,
            feed,
            counters: LookupCounters::new(&metrics),
            metrics,
        }
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Resolves one ID as a terminal sent it.
    pub async fn lookup(self: &Arc<Self>, raw_id: &str) -> Result<Answer, LookupError> {
        let id = self.rule.normalise(raw_id).inspect_err(|_| {
            self.counters.invalid_id.inc();
        })?;
        let now = Instant::now();
        if let Some(entry) = self.stores.fresh_positive(&id, now) {
            self.counters.cache_hit.inc();
            return Ok(Answer {
                merchant: Some(entry.merchant.clone()),
                source: Source::Cache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            });
        }
        if let Some(entry) =
            self.stores.fresh_negative(&id, now).filter(|entry| self.feed.trusts_negative(entry.learned_at, now))
        {
            self.counters.negative_hit.inc();
            return Ok(Answer {
                merchant: None,
                source: Source::NegativeCache,
                age: now.saturating_duration_since(entry.learned_at),
                as_of_sequence: entry.as_of_sequence,
            });
        }
        let outcome = self.ask_core(&id).await;
        match &outcome {
            Ok(answer) if answer.merchant.is_some() => self.counters.upstream_found.inc(),
            Ok(_) => self.counters.upstream_not_found.inc(),
            Err(_) => self.counters.unavailable.inc(),
        };
        let answer = outcome?;
        Ok(Answer {
            merchant: answer.merchant,
            source: Source::Upstream,
            age: Duration::ZERO,
            as_of_sequence: answer.as_of_sequence,
        })
    }

    /// Asks the core for `id`, sharing the call with every concurrent lookup of the same ID.
    async fn ask_core(self: &Arc<Self>, id: &str) -> Result<CoreAnswer, UpstreamError> {
        let fill = match self.fills.join_or_start(id, self.feed.applied()) {
            Role::Follower(fill) => {
                self.metrics.coalesced_waits.inc();
                fill
            }
            Role::Leader(fill) => {
                // The call runs in its own task so that waiters are answered even if the caller that
                // started it goes away.
                let resolver = self.clone();
                let (id, task_fill) = (Arc::<str>::from(id), fill.clone());
                tokio::spawn(async move { resolver.run_fill(id, task_fill).await });
                fill
            }
        };
        fill.outcome().await
    }

    async fn run_fill(&self, id: Arc<str>, fill: Arc<Fill>) {
        let started = Instant::now();
        let outcome = self.core.get_merchant(&id).await;
        let result = match &outcome {
            Ok(answer) if answer.merchant.is_some() => CoreCallResult::Found,
            Ok(_) => CoreCallResult::NotFound,
            Err(UpstreamError::Timeout(_)) => CoreCallResult::Timeout,
            Err(UpstreamError::Unavailable(_)) => CoreCallResult::Error,
        };
        self.metrics.record_core_call(result, started.elapsed());
        if let Ok(answer) = &outcome {
            self.feed.observe_head(answer.as_of_sequence);
        }
        let learned_at = Instant::now();
        let installed = self.fills.finish(&id, &fill, outcome.clone(), |answer| {
            self.remember(id.clone(), answer, learned_at);
        });
        if outcome.is_ok() && !installed {
            self.metrics.fills_fenced.inc();
        }
    }

    fn remember(&self, id: Arc<str>, answer: &CoreAnswer, learned_at: Instant) {
        self.store(id, answer.merchant.clone(), answer.as_of_sequence, learned_at);
    }

    /// Stores what the core said about `id` as of `as_of_sequence`.
    fn store(&self, id: Arc<str>, merchant: Option<Merchant>, as_of_sequence: u64, learned_at: Instant) {
        match merchant {
            Some(merchant) => self.stores.put_positive(id, PositiveEntry { merchant, as_of_sequence, learned_at }),
            None => {
                let ttl = self.feed.negative_ttl(self.negative_ttl);
                if ttl.is_zero() {
                    self.stores.remove(&id);
                } else {
                    self.stores.put_negative(id, NegativeEntry { as_of_sequence, learned_at, ttl });
                }
            }
        }
    }

    /// Stores a state of `id` that the core reached at `as_of_sequence`, with the fence up: a fill in
    /// flight for the ID loses its slot, and nothing stored from a later sequence is overwritten (the
    /// snapshot and the stream may repeat changes the store already reflects).
    fn install_with_fence(&self, id: &str, merchant: Option<Merchant>, as_of_sequence: u64) {
        self.fills.supersede(id, || {
            if self.stores.stored_as_of(id).is_some_and(|stored| stored >= as_of_sequence) {
                return;
            }
            self.store(Arc::from(id), merchant, as_of_sequence, Instant::now());
        });
    }

    /// Applies one change notice (in sequence order; the feed checks the order).
    pub fn apply_change(&self, notice: &ChangeNotice) {
        let merchant = match ChangeKind::try_from(notice.kind) {
            Ok(ChangeKind::Upsert) => notice.merchant.clone(),
            _ => None,
        };
        self.install_with_fence(&notice.merchant_id, merchant, notice.sequence);
    }

    /// Starts a resync: no "not found" survives it; after a core restart, nothing at all does.
    pub fn begin_resync(&self, core_restarted: bool) {
        if core_restarted {
            self.stores.clear_all();
        } else {
            self.stores.clear_negative();
        }
    }

    /// Takes in one snapshot page: every merchant when `load_all` (warm start), otherwise only those
    /// already held (re-validation).
    pub fn install_snapshot(&self, merchants: Vec<Merchant>, as_of_sequence: u64, load_all: bool) {
        for merchant in merchants {
            if load_all || self.stores.holds_positive(&merchant.merchant_id) {
                let id = merchant.merchant_id.clone();
                self.install_with_fence(&id, Some(merchant), as_of_sequence);
            }
        }
    }

    /// Ends a resync whose snapshot began at `snapshot_sequence`.
    pub fn finish_resync(&self, snapshot_sequence: u64) {
        self.stores.drop_positives_older_than(snapshot_sequence);
    }
}
