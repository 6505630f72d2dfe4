//! The change feed's metrics: notices applied and dropped, gaps, reconnects, resyncs by reason, lag.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::FeedState;
use crate::metric_labels::label_values;
use crate::relay::ServerLabels;

label_values! {
    /// Why the feed reloaded from a snapshot.
    pub ResyncReason {
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// The change feed's counters (cloning shares them).
#[derive(Clone)]
pub struct FeedMetrics {
    /// Notices applied.
    pub notices_applied: Counter,
    /// Notices dropped as repeats.
    pub notices_duplicate: Counter,
    /// Sequence gaps seen.
    pub gaps: Counter,
    /// Streams reopened.
    pub reconnects: Counter,
    resyncs: Family<ResyncLabels, Counter>,
    /// Time from commit at the core to apply at the edge.
    pub commit_to_apply: Histogram,
    connected: Gauge,
    applied_sequence: Gauge,
    core_head_sequence: Gauge,
    lag_notices: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    source_info: Family<SourceLabels, Gauge>,
    nats_connected: Gauge,
    nats_reconnects: Counter,
    /// Two scrapes at once must not both add the same reconnects.
    nats_catch_up: std::sync::Arc<parking_lot::Mutex<()>>,
    nats_server: Family<ServerLabels, Gauge>,
}

impl FeedMetrics {
    /// Creates the metrics and registers them in `registry` (under `feed_`).
    pub fn register(registry: &mut Registry) -> Self {
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
            source_info: Family::default(),
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            nats_catch_up: Default::default(),
            nats_server: Family::default(),
        };
        for &reason in ResyncReason::ALL {
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
        registry.register(
            "source_info",
            "1, labelled with where the change notices come from (core: its WatchChanges; nats: the relays' stream)",
            feed.source_info.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while the NATS connection is up (feed.source = \"nats\"; always 0 otherwise)",
            feed.nats_connected.clone(),
        );
        registry.register(
            "nats_reconnects",
            "NATS connects after the first: a failover to another server, or the server coming back",
            feed.nats_reconnects.clone(),
        );
        registry.register(
            "nats_server_info",
            "1, labelled with the NATS server the feed is connected to (no series while disconnected)",
            feed.nats_server.clone(),
        );
        feed
    }

    /// Says where the notices come from (`merchant_edge_feed_source_info{source}`).
    pub fn set_source(&self, source: &'static str) {
        self.source_info.clear();
        self.source_info.get_or_create(&SourceLabels { source }).set(1);
    }

    /// Counts one resync.
    pub fn count_resync(&self, reason: ResyncReason) {
        self.resyncs.get_or_create(&ResyncLabels { reason }).inc();
    }

    /// Resyncs so far for `reason`.
    pub fn resyncs(&self, reason: ResyncReason) -> u64 {
        self.resyncs.get_or_create(&ResyncLabels { reason }).get()
    }

    /// Copies the feed's state into the gauges (at scrape time).
    pub fn refresh(&self, status: &FeedState) {
        let lag = status.lag(tokio::time::Instant::now());
        let as_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.connected.set(i64::from(status.is_connected()));
        self.applied_sequence.set(as_gauge(status.applied()));
        self.core_head_sequence.set(as_gauge(status.head()));
        self.lag_notices.set(as_gauge(lag.notices));
        self.lag_seconds.set(lag.duration.as_secs_f64());
        if let Some(link) = status.nats() {
            self.nats_connected.set(i64::from(link.is_connected()));
            // The client counts; the counter catches up with it at each scrape.
            let _one_at_a_time = self.nats_catch_up.lock();
            self.nats_reconnects.inc_by(link.reconnects().saturating_sub(self.nats_reconnects.get()));
            link.export_server(&self.nats_server);
        }
    }
}
