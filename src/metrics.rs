//! Prometheus metrics (prometheus-client, text format on the admin endpoint). Handles for the hit path
//! are resolved once here, so counting a lookup is one atomic add with no label lookup.
use std::time::Duration;

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::feed::FeedStatus;

mod process;

/// Declares an enum used as a label value, rendered in Prometheus' snake_case.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

label_values! {
    /// Which store answered a lookup.
    SourceLabel {
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
    ResultLabel {
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

label_values! {
    /// How a core call ended.
    CoreCallResult {
        Found => "found",
        NotFound => "not_found",
        Error => "error",
        Timeout => "timeout",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CoreCallLabels {
    result: CoreCallResult,
}

label_values! {
    StoreLabel {
        Positive => "positive",
        Negative => "negative",
    }
}

label_values! {
    /// Why an entry left a store (moka's removal causes).
    EvictionCause {
        /// Its TTL passed.
        Expired => "expired",
        /// The store was full and its admission policy chose to drop it.
        Size => "size",
        /// Removed on purpose: a change notice, a resync or a manual invalidation.
        Explicit => "explicit",
        /// Overwritten by a newer answer for the same ID.
        Replaced => "replaced",
    }
}

label_values! {
    /// Why a lookup that needed the core did not get a core call.
    RefusalReason {
        QueueFull => "queue_full",
        BreakerOpen => "breaker_open",
        ClientLimit => "client_limit",
        Deadline => "deadline",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EvictionLabels {
    store: StoreLabel,
    cause: EvictionCause,
}

label_values! {
    /// What asked for a config reload.
    ReloadTrigger {
        Signal => "sighup",
        Admin => "admin",
        FileWatch => "file_watch",
    }
}

label_values! {
    ReloadResult {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    trigger: ReloadTrigger,
    result: ReloadResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigInfoLabels {
    hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildInfoLabels {
    version: String,
}

/// Config reload bookkeeping, as Prometheus exports its own.
#[derive(Default)]
pub struct ConfigMetrics {
    last_reload_successful: Gauge,
    last_reload_success_timestamp: Gauge<f64, AtomicU64>,
    reloads: Family<ReloadLabels, Counter>,
    info: Family<ConfigInfoLabels, Gauge>,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> Self {
        let config = Self::default();
        // Every series exists from the start, so rates and alerts work before the first reload.
        for trigger in [ReloadTrigger::Signal, ReloadTrigger::Admin, ReloadTrigger::FileWatch] {
            for result in [ReloadResult::Success, ReloadResult::Failure] {
                drop(config.reloads.get_or_create(&ReloadLabels { trigger, result }));
            }
        }
        let registry = registry.sub_registry_with_prefix("config");
        registry.register(
            "last_reload_successful",
            "1 if the last config reload succeeded (or none was tried), 0 if it was rejected",
            config.last_reload_successful.clone(),
        );
        registry.register_with_unit(
            "last_reload_success_timestamp",
            "When the running config was last loaded successfully (Unix time)",
            Unit::Seconds,
            config.last_reload_success_timestamp.clone(),
        );
        registry.register("reloads", "Config reloads, by trigger and result", config.reloads.clone());
        registry.register("info", "The running config, by the hash of its effective values", config.info.clone());
        config
    }

    /// Records that `hash` is now the running config.
    pub fn loaded(&self, hash: &str) {
        self.last_reload_successful.set(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_reload_success_timestamp.set(now.as_secs_f64());
        self.info.clear();
        self.info.get_or_create(&ConfigInfoLabels { hash: hash.to_owned() }).set(1);
    }

    pub fn reloaded(&self, trigger: ReloadTrigger, succeeded: bool) {
        let result = if succeeded { ReloadResult::Success } else { ReloadResult::Failure };
        self.reloads.get_or_create(&ReloadLabels { trigger, result }).inc();
        if !succeeded {
            self.last_reload_successful.set(0);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    store: StoreLabel,
}

label_values! {
    /// Why the feed reloaded from a snapshot.
    ResyncReason {
        /// The core no longer holds the history after the applied sequence.
        TooOld => "too_old",
        /// The core restarted with a new history (new incarnation, or its head went backwards).
        CoreRestarted => "core_restarted",
        /// A notice did not say what the merchant became.
        MalformedNotice => "malformed_notice",
        /// The stream kept skipping the same sequence: the core's history has a hole.
        PersistentGap => "persistent_gap",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResyncLabels {
    reason: ResyncReason,
}

/// The change feed's counters.
pub struct FeedMetrics {
    pub notices_applied: Counter,
    pub notices_duplicate: Counter,
    pub gaps: Counter,
    pub reconnects: Counter,
    resyncs: Family<ResyncLabels, Counter>,
    pub commit_to_apply: Histogram,
    connected: Gauge,
    applied_sequence: Gauge,
    core_head_sequence: Gauge,
    lag_notices: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
}

impl FeedMetrics {
    fn register(registry: &mut Registry) -> Self {
        let feed = Self {
            notices_applied: Counter::default(),
            notices_duplicate: Counter::default(),
            gaps: Counter::default(),
            reconnects: Counter::default(),
            resyncs: Family::default(),
            commit_to_apply: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            connected: Gauge::default(),
            applied_sequence: Gauge::default(),
            core_head_sequence: Gauge::default(),
            lag_notices: Gauge::default(),
            lag_seconds: Gauge::default(),
        };
        for reason in [
            ResyncReason::TooOld,
            ResyncReason::CoreRestarted,
            ResyncReason::MalformedNotice,
            ResyncReason::PersistentGap,
        ] {
            drop(feed.resyncs.get_or_create(&ResyncLabels { reason }));
        }
        let registry = registry.sub_registry_with_prefix("feed");
        registry.register("notices_applied", "Change notices applied", feed.notices_applied.clone());
        registry.register(
            "notices_duplicate",
            "Change notices dropped because their sequence was already applied",
            feed.notices_duplicate.clone(),
        );
        registry.register("gaps", "Sequence gaps detected on the change stream (each reopens it)", feed.gaps.clone());
        registry.register(
            "reconnects",
            "Change streams reopened after a failure, gap or stall",
            feed.reconnects.clone(),
        );
        registry.register(
            "resyncs",
            "Reloads from a core snapshot after the first sync, by reason",
            feed.resyncs.clone(),
        );
        registry.register_with_unit(
            "commit_to_apply",
            "Time from a change's commit at the core to its application at the edge (wall clocks of both)",
            Unit::Seconds,
            feed.commit_to_apply.clone(),
        );
        registry.register("connected", "1 while the change stream is open and trusted", feed.connected.clone());
        registry.register("applied_sequence", "The last change sequence applied", feed.applied_sequence.clone());
        registry.register(
            "core_head_sequence",
            "The highest change sequence the core has shown",
            feed.core_head_sequence.clone(),
        );
        registry.register("lag_notices", "Changes committed at the core and not yet applied", feed.lag_notices.clone());
        registry.register_with_unit(
            "lag",
            "How long the edge has been behind the core or the feed down (0 when caught up)",
            Unit::Seconds,
            feed.lag_seconds.clone(),
        );
        feed
    }

    pub fn count_resync(&self, reason: ResyncReason) {
        self.resyncs.get_or_create(&ResyncLabels { reason }).inc();
    }

    pub fn resyncs(&self, reason: ResyncReason) -> u64 {
        self.resyncs.get_or_create(&ResyncLabels { reason }).get()
    }

    /// Copies the feed's state into the gauges (at scrape time).
    pub fn refresh(&self, status: &FeedStatus) {
        let lag = status.lag(tokio::time::Instant::now());
        let as_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.connected.set(i64::from(status.is_connected()));
        self.applied_sequence.set(as_gauge(status.applied()));
        self.core_head_sequence.set(as_gauge(status.head()));
        self.lag_notices.set(as_gauge(lag.notices));
        self.lag_seconds.set(lag.duration.as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    /// Metrics under their conventional unprefixed names (`process_*`).
    unprefixed: Registry,
    pub feed: FeedMetrics,
    pub config: ConfigMetrics,
    evictions: Family<EvictionLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    core_calls: Family<CoreCallLabels, Counter>,
    core_call_duration: Histogram,
    pub coalesced_waits: Counter,
    pub fills_fenced: Counter,
    cache_entries: Family<StoreLabels, Gauge>,
    core_refusals: Family<RefusalLabels, Counter>,
    pub core_retries: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
    pub invalidations: Counter,
    pub refreshes_ahead: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("merchant_edge");
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register("lookups", "Lookups answered, by the store that answered and the result", lookups.clone());
        let core_calls = Family::<CoreCallLabels, Counter>::default();
        registry.register("core_calls", "GetMerchant calls to the bank core, by result", core_calls.clone());
        let core_call_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "core_call_duration",
            "Time for one GetMerchant call to the bank core",
            Unit::Seconds,
            core_call_duration.clone(),
        );
        let coalesced_waits = Counter::default();
        registry.register(
            "coalesced_waits",
            "Lookups that waited for a core call already in flight for the same ID instead of making their own",
            coalesced_waits.clone(),
        );
        let fills_fenced = Counter::default();
        registry.register(
            "fills_fenced",
            "Core answers not cached because a change notice for the ID arrived while they were in flight, \
             or because they were older than notices already applied",
            fills_fenced.clone(),
        );
        let cache_entries = Family::<StoreLabels, Gauge>::default();
        registry.register("cache_entries", "Entries held per store", cache_entries.clone());
        let core_refusals = Family::<RefusalLabels, Counter>::default();
        for reason in
            [RefusalReason::QueueFull, RefusalReason::BreakerOpen, RefusalReason::ClientLimit, RefusalReason::Deadline]
        {
            drop(core_refusals.get_or_create(&RefusalLabels { reason }));
        }
        registry.register(
            "core_refusals",
            "Core-bound lookups refused without a core call, by reason (shed, breaker open, per-client limit, deadline)",
            core_refusals.clone(),
        );
        let core_retries = Counter::default();
        registry.register(
            "core_retries",
            "Core calls retried after a failure, within the caller's deadline",
            core_retries.clone(),
        );
        let refreshes_ahead = Counter::default();
        registry.register(
            "refreshes_ahead",
            "Merchants refreshed from the core in the background because they were looked up close to their TTL",
            refreshes_ahead.clone(),
        );
        let invalidations = Counter::default();
        registry.register(
            "invalidations",
            "IDs whose entries an operator dropped (POST /invalidate/{id})",
            invalidations.clone(),
        );
        let breaker_state = Gauge::default();
        registry.register(
            "breaker_state",
            "The core circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );

        let feed = FeedMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let evictions = Family::<EvictionLabels, Counter>::default();
        // Every series exists from the start, so rates and alerts work before the first eviction.
        for store in [StoreLabel::Positive, StoreLabel::Negative] {
            for cause in [EvictionCause::Expired, EvictionCause::Size, EvictionCause::Explicit, EvictionCause::Replaced]
            {
                drop(evictions.get_or_create(&EvictionLabels { store, cause }));
            }
        }
        registry.register("cache_evictions", "Entries that left a store, by store and cause", evictions.clone());
        // Store hits and misses follow from how lookups ended, so they are summed when scraped and the
        // lookup path counts each lookup once.
        let outcomes = LookupCounters::resolve(&lookups);
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
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        registry.register("build_info", "The running build", build_info.clone());
        build_info.get_or_create(&BuildInfoLabels { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);
        let mut unprefixed = Registry::default();
        process::register(&mut unprefixed);
        Self {
            registry,
            unprefixed,
            feed,
            config,
            evictions,
            lookups,
            core_calls,
            core_call_duration,
            coalesced_waits,
            fills_fenced,
            cache_entries,
            core_refusals,
            core_retries,
            breaker_state,
            invalidations,
            refreshes_ahead,
        }
    }
}

impl Metrics {
    pub fn record_core_call(&self, result: CoreCallResult, elapsed: Duration) {
        self.core_calls.get_or_create(&CoreCallLabels { result }).inc();
        self.core_call_duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_refusal(&self, reason: RefusalReason) {
        self.core_refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.core_refusals.get_or_create(&RefusalLabels { reason }).get()
    }

    pub fn count_evictions(&self, store: StoreLabel, cause: EvictionCause, count: u64) {
        self.evictions.get_or_create(&EvictionLabels { store, cause }).inc_by(count);
    }

    pub fn set_cache_entries(&self, positive: u64, negative: u64) {
        let set = |store, value: u64| {
            self.cache_entries.get_or_create(&StoreLabels { store }).set(value.try_into().unwrap_or(i64::MAX))
        };
        set(StoreLabel::Positive, positive);
        set(StoreLabel::Negative, negative);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut text = String::new();
        // One exposition: both registries, then the single `# EOF` OpenMetrics ends with.
        encode_registry(&mut text, &self.registry)
            .and_then(|()| encode_registry(&mut text, &self.unprefixed))
            .and_then(|()| encode_eof(&mut text))
            .expect("writing to a String cannot fail");
        text
    }
}

/// A counter per store whose value is a sum of lookup-outcome counters, computed when scraped.
#[derive(Debug)]
struct StoreTally(Vec<(StoreLabel, Vec<Counter>)>);

impl EncodeMetric for StoreTally {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
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
    pub cache_hit: Counter,
    pub negative_hit: Counter,
    pub upstream_found: Counter,
    pub upstream_not_found: Counter,
    pub invalid_id: Counter,
    pub unavailable: Counter,
    pub stale: Counter,
}

impl LookupCounters {
    pub fn new(metrics: &Metrics) -> Self {
        Self::resolve(&metrics.lookups)
    }

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
