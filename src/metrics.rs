//! The Prometheus registry (text format on the admin endpoint): each subsystem declares and registers
//! its own metrics next to its code (`feed/metrics.rs`, `guard/metrics.rs`, ...); this composes them
//! under the `merchant_edge_` prefix and encodes them. Hit-path handles are resolved when registered,
//! so counting a lookup is one atomic add with no label lookup.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::CacheMetrics;
use crate::feed::FeedMetrics;
use crate::guard::GuardMetrics;
use crate::lookup::LookupMetrics;
use crate::reload::ConfigMetrics;
use crate::snapshot::SnapshotMetrics;

mod process;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildInfoLabels {
    version: String,
}

/// Every subsystem's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// Metrics under their conventional unprefixed names (`process_*`).
    unprefixed: Registry,
    /// The lookup path's.
    pub lookup: LookupMetrics,
    /// Core protection's.
    pub guard: GuardMetrics,
    /// The cache room's.
    pub cache: CacheMetrics,
    /// The change feed's.
    pub feed: FeedMetrics,
    /// Config reloads'.
    pub config: ConfigMetrics,
    /// The local snapshot's.
    pub snapshot: SnapshotMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("merchant_edge");
        let lookup = LookupMetrics::register(&mut registry);
        let guard = GuardMetrics::register(&mut registry);
        let cache = CacheMetrics::register(&mut registry);
        let feed = FeedMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let snapshot = SnapshotMetrics::register(&mut registry);
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        registry.register("build_info", "The running build", build_info.clone());
        build_info.get_or_create(&BuildInfoLabels { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);
        let mut unprefixed = Registry::default();
        process::register(&mut unprefixed);
        Self { registry, unprefixed, lookup, guard, cache, feed, config, snapshot }
    }
}

impl Metrics {
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
