//! The cache room's metrics: what the stores hold, why entries leave them, and fills the fence kept
//! out.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metric_labels::label_values;

label_values! {
    /// One of the two answer stores.
    pub StoreLabel {
        Positive => "positive",
        Negative => "negative",
    }
}

label_values! {
    /// Why an entry left a store.
    pub EvictionCause {
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    pub(crate) store: StoreLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EvictionLabels {
    store: StoreLabel,
    cause: EvictionCause,
}

/// Counters and gauges of the cache room (cloning shares them).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    evictions: Family<EvictionLabels, Counter>,
    entries: Family<StoreLabels, Gauge>,
    /// Core answers the fence kept out of the stores.
    pub fills_fenced: Counter,
    /// IDs an operator invalidated.
    pub invalidations: Counter,
}

impl CacheMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for &store in StoreLabel::ALL {
            for &cause in EvictionCause::ALL {
                drop(metrics.evictions.get_or_create(&EvictionLabels { store, cause }));
            }
        }
        registry.register(
            "fills_fenced",
            "Core answers not cached because a change notice for the ID arrived while they were in flight, \
             or because they were older than notices already applied",
            metrics.fills_fenced.clone(),
        );
        registry.register("cache_entries", "Entries held per store", metrics.entries.clone());
        registry.register(
            "invalidations",
            "IDs whose entries an operator dropped (POST /invalidate/{id})",
            metrics.invalidations.clone(),
        );
        registry.register(
            "cache_evictions",
            "Entries that left a store, by store and cause",
            metrics.evictions.clone(),
        );
        metrics
    }

    /// Counts `count` entries that left `store` for `cause`.
    pub fn count_evictions(&self, store: StoreLabel, cause: EvictionCause, count: u64) {
        self.evictions.get_or_create(&EvictionLabels { store, cause }).inc_by(count);
    }

    /// Copies the stores' entry counts into the gauges (at scrape time).
    pub fn set_entries(&self, positive: u64, negative: u64) {
        for (store, value) in [(StoreLabel::Positive, positive), (StoreLabel::Negative, negative)] {
            self.entries.get_or_create(&StoreLabels { store }).set(value.try_into().unwrap_or(i64::MAX));
        }
    }
}
