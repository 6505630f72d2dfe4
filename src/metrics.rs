//! Prometheus metrics (prometheus-client, text format on the admin endpoint). Handles for the hit path
//! are resolved once here, so counting a lookup is one atomic add with no label lookup.
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    store: StoreLabel,
}

pub struct Metrics {
    registry: Registry,
    lookups: Family<LookupLabels, Counter>,
    core_calls: Family<CoreCallLabels, Counter>,
    core_call_duration: Histogram,
    pub coalesced_waits: Counter,
    pub fills_fenced: Counter,
    cache_entries: Family<StoreLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("merchant_edge");
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Lookups answered, by the store that answered and the result",
            lookups.clone(),
        );
        let core_calls = Family::<CoreCallLabels, Counter>::default();
        registry.register(
            "core_calls",
            "GetMerchant calls to the bank core, by result",
            core_calls.clone(),
        );
        let core_call_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "core_call_duration",
            "Time for one GetMerchant call to the bank core",
            prometheus_client::registry::Unit::Seconds,
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
        registry.register(
            "cache_entries",
            "Entries held per store (an estimate: maintenance runs in batches)",
            cache_entries.clone(),
        );
        Self {
            registry,
            lookups,
            core_calls,
            core_call_duration,
            coalesced_waits,
            fills_fenced,
            cache_entries,
        }
    }
}

impl Metrics {
    /// The counter for one kind of lookup outcome; resolve once and keep it.
    pub fn lookup_counter(&self, source: SourceLabel, result: ResultLabel) -> Counter {
        self.lookups
            .get_or_create(&LookupLabels { source, result })
            .clone()
    }

    pub fn record_core_call(&self, result: CoreCallResult, elapsed: Duration) {
        self.core_calls
            .get_or_create(&CoreCallLabels { result })
            .inc();
        self.core_call_duration.observe(elapsed.as_secs_f64());
    }

    pub fn set_cache_entries(&self, positive: u64, negative: u64) {
        let set = |store, value: u64| {
            self.cache_entries
                .get_or_create(&StoreLabels { store })
                .set(value.try_into().unwrap_or(i64::MAX))
        };
        set(StoreLabel::Positive, positive);
        set(StoreLabel::Negative, negative);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
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
}

impl LookupCounters {
    pub fn new(metrics: &Metrics) -> Self {
        use ResultLabel::*;
        use SourceLabel as S;
        Self {
            cache_hit: metrics.lookup_counter(S::Cache, Found),
            negative_hit: metrics.lookup_counter(S::NegativeCache, NotFound),
            upstream_found: metrics.lookup_counter(S::Upstream, Found),
            upstream_not_found: metrics.lookup_counter(S::Upstream, NotFound),
            invalid_id: metrics.lookup_counter(S::None, InvalidId),
            unavailable: metrics.lookup_counter(S::None, Unavailable),
        }
    }
}
