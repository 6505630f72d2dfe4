//! The lookup path's metrics: lookups by the store that answered and the result, waits on shared
//! core calls, refresh-ahead; lookups with a consistency token; and the store hit/miss counters,
//! which follow from lookup outcomes.
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cache::{StoreLabel, StoreLabels};
use crate::metric_labels::label_values;

label_values! {
    /// Which store answered a lookup.
    pub SourceLabel {
        Cache => "cache",
        NegativeCache => "negative_cache",
        Upstream => "upstream",
        /// A merchant past its TTL, because the core could not answer (serve-stale).
        Stale => "stale",
        /// No store answered: the lookup failed.
        None => "none",
    }
}

label_values! {
    /// How a lookup ended for the caller.
    pub ResultLabel {
        Found => "found",
        NotFound => "not_found",
        InvalidId => "invalid_id",
        Unavailable => "unavailable",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    source: SourceLabel,
    result: ResultLabel,
}

/// Counters of the lookup path (cloning shares them).
#[derive(Clone)]
pub struct LookupMetrics {
    lookups: Family<LookupLabels, Counter>,
    /// Pre-resolved for the hot paths.
    pub counters: LookupCounters,
    /// Lookups that joined a core call already in flight.
    pub coalesced_waits: Counter,
    /// Background refreshes of merchants close to their TTL.
    pub refreshes_ahead: Counter,
    /// Lookups with a consistency token.
    pub tokens: TokenMetrics,
}

impl Default for LookupMetrics {
    fn default() -> Self {
        let lookups = Family::<LookupLabels, Counter>::default();
        Self {
            counters: LookupCounters::resolve(&lookups),
            lookups,
            coalesced_waits: Counter::default(),
            refreshes_ahead: Counter::default(),
            tokens: TokenMetrics::default(),
        }
    }
}

impl LookupMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "lookups",
            "Lookups answered, by the store that answered and the result",
            metrics.lookups.clone(),
        );
        registry.register(
            "coalesced_waits",
            "Lookups that waited for a core call already in flight for the same ID instead of making their own",
            metrics.coalesced_waits.clone(),
        );
        registry.register(
            "refreshes_ahead",
            "Merchants refreshed from the core in the background because they were looked up close to their TTL",
            metrics.refreshes_ahead.clone(),
        );
        // Store hits and misses follow from how lookups ended, so they are summed when scraped and the
        // lookup path counts each lookup once.
        let outcomes = &metrics.counters;
        let fell_through =
            [&outcomes.upstream_found, &outcomes.upstream_not_found, &outcomes.unavailable, &outcomes.stale];
        let hits = StoreTally(vec![
            (StoreLabel::Positive, vec![outcomes.cache_hit.clone()]),
            (StoreLabel::Negative, vec![outcomes.negative_hit.clone()]),
        ]);
        registry.register("cache_hits", "Lookups answered by a store", hits);
        let misses = StoreTally(vec![
            (StoreLabel::Positive, std::iter::once(&outcomes.negative_hit).chain(fell_through).cloned().collect()),
            (StoreLabel::Negative, fell_through.into_iter().cloned().collect()),
        ]);
        registry.register("cache_misses", "Lookups a store could not answer (absent or past its TTL)", misses);
        metrics.tokens.register(registry);
        metrics
    }
}

/// A counter per store whose value is a sum of lookup-outcome counters, computed when scraped.
#[derive(Debug)]
struct StoreTally(Vec<(StoreLabel, Vec<Counter>)>);

impl EncodeMetric for StoreTally {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        for (store, parts) in &self.0 {
            let total: u64 = parts.iter().map(Counter::get).sum();
            encoder
                .encode_family(&StoreLabels { store: *store })?
                .encode_counter::<NoLabelSet, _, u64>(&total, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Pre-resolved lookup counters for the hot paths.
#[derive(Clone)]
pub struct LookupCounters {
    /// A merchant answered from memory.
    pub cache_hit: Counter,
    /// A "not found" answered from memory.
    pub negative_hit: Counter,
    /// A merchant answered by the core.
    pub upstream_found: Counter,
    /// A "not found" answered by the core.
    pub upstream_not_found: Counter,
    /// An ID that broke the ID rule.
    pub invalid_id: Counter,
    /// No answer: the core could not be asked or did not answer.
    pub unavailable: Counter,
    /// A merchant past its TTL, served because the core could not answer.
    pub stale: Counter,
}

impl LookupCounters {
    fn resolve(lookups: &Family<LookupLabels, Counter>) -> Self {
        use ResultLabel::*;
        use SourceLabel as S;
        let counter = |source, result| lookups.get_or_create(&LookupLabels { source, result }).clone();
        Self {
            cache_hit: counter(S::Cache, Found),
            negative_hit: counter(S::NegativeCache, NotFound),
            upstream_found: counter(S::Upstream, Found),
            upstream_not_found: counter(S::Upstream, NotFound),
            invalid_id: counter(S::None, InvalidId),
            unavailable: counter(S::None, Unavailable),
            stale: counter(S::Stale, Found),
        }
    }
}

label_values! {
    /// How a lookup with a consistency token (`min_sequence`) went.
    pub TokenOutcome {
        /// The edge had applied the token already (or held an entry learned after it): answered as usual.
        Fresh => "fresh",
        /// The change feed applied the token while the lookup waited.
        Waited => "waited",
        /// Still behind after the wait: the core answered, fresh enough.
        AskedCore => "asked_core",
        /// Behind, and the core could not answer fresh enough in time: UNAVAILABLE (or the core's error).
        Failed => "failed",
        /// The token is ahead of the core's latest change: FAILED_PRECONDITION.
        Ahead => "ahead",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    outcome: TokenOutcome,
}

/// Lookups with a consistency token, by outcome, and how long they waited for the change feed
/// (cloning shares them).
#[derive(Clone)]
pub struct TokenMetrics {
    lookups: Family<TokenLabels, Counter>,
    /// Pre-resolved: tokens already applied (the hit path counts these).
    pub fresh: Counter,
    /// How long lookups behind their token waited for the feed (whether it caught up or not).
    pub wait: Histogram,
}

impl Default for TokenMetrics {
    fn default() -> Self {
        let lookups = Family::<TokenLabels, Counter>::default();
        for outcome in TokenOutcome::ALL {
            drop(lookups.get_or_create(&TokenLabels { outcome: *outcome }));
        }
        let fresh = lookups.get_or_create(&TokenLabels { outcome: TokenOutcome::Fresh }).clone();
        Self {
            fresh,
            lookups,
            // 1 ms to about 16 s: the wait is bounded by `feed.fresh_wait` (at most a minute).
            wait: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl TokenMetrics {
    /// Counts one lookup with a token.
    pub fn count(&self, outcome: TokenOutcome) {
        self.lookups.get_or_create(&TokenLabels { outcome }).inc();
    }

    /// How many lookups with a token ended with `outcome`.
    pub fn get(&self, outcome: TokenOutcome) -> u64 {
        self.lookups.get_or_create(&TokenLabels { outcome }).get()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "token_lookups",
            "Lookups with a consistency token (min_sequence), by outcome: already applied, waited for the feed, asked \
             the core, failed, or ahead of the core",
            self.lookups.clone(),
        );
        registry.register(
            "token_wait_seconds",
            "How long lookups behind their consistency token waited for the change feed to apply it",
            self.wait.clone(),
        );
    }
}
