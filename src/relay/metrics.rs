//! The relay's Prometheus metrics (prefix `merchant_edge_relay_`), and the state its `/readyz` reads.
//! Every metric is documented in the README ("Relay metrics").
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::link::{NatsLink, ServerLabels};
use super::message::ResyncReason;
use crate::metric_labels::label_values;

label_values! {
    /// Which side of the relay a reconnect or failure is on.
    pub Side {
        Core => "core",
        Nats => "nats",
    }
}

label_values! {
    /// How the stream refused a copy of something already in it.
    pub RefusedBy {
        /// `Nats-Msg-Id` seen within the duplicate window: the server acknowledged without storing.
        MsgId => "msg_id",
        /// `Nats-Expected-Last-Subject-Sequence` did not match: another relay appended first.
        ExpectedLast => "expected_last",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReasonLabel(ResyncReason);

impl EncodeLabelValue for ReasonLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0.as_str().replace('-', "_"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SideLabels {
    side: Side,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    by: RefusedBy,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: ReasonLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The relay's metrics (what `/metrics` exports) and the state `/readyz` reports.
pub struct RelayMetrics {
    registry: Registry,
    /// 1 while the core's watch is open.
    pub core_connected: Gauge,
    /// 1 while the NATS connection is up.
    pub nats_connected: Gauge,
    /// Last core sequence received in order.
    pub applied_sequence: Gauge,
    /// Last core sequence in the stream.
    pub published_sequence: Gauge,
    /// JetStream sequence of the subject's last message.
    pub stream_sequence: Gauge,
    /// Highest sequence the core has shown.
    pub core_head_sequence: Gauge,
    /// Core head minus published sequence.
    pub lag_notices: Gauge,
    /// Notices this relay appended.
    pub publishes: Counter,
    /// Notices already in the stream when this relay received them.
    pub skipped: Counter,
    /// Sequence gaps in the core's stream.
    pub gaps: Counter,
    refused: Family<RefusedLabels, Counter>,
    reconnects: Family<SideLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    markers: Family<ReasonLabels, Counter>,
    nats_server: Family<ServerLabels, Gauge>,
    /// The NATS connection: which server, how many reconnects.
    nats_link: Arc<NatsLink>,
    /// The stream exists (found or created) and the relay knows its tail.
    stream_ready: AtomicBool,
    /// The last problem the relay's loop met, for `/readyz` (never holds a credential).
    last_error: Mutex<Option<String>>,
    /// Why the NATS connection is down (a refused login, say), until it is up again.
    nats_error: Mutex<Option<String>>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    /// Every series, registered at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let build: Family<VersionLabels, Gauge> = Family::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);
        let metrics = Self {
            registry: Registry::default(),
            core_connected: Gauge::default(),
            nats_connected: Gauge::default(),
            applied_sequence: Gauge::default(),
            published_sequence: Gauge::default(),
            stream_sequence: Gauge::default(),
            core_head_sequence: Gauge::default(),
            lag_notices: Gauge::default(),
            publishes: Counter::default(),
            skipped: Counter::default(),
            gaps: Counter::default(),
            refused: Family::default(),
            reconnects: Family::default(),
            events: Family::default(),
            markers: Family::default(),
            nats_server: Family::default(),
            nats_link: Arc::default(),
            stream_ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
            nats_error: Mutex::new(None),
        };
        // Every labelled series exists from the start, so rates and alerts work before the first event.
        for by in [RefusedBy::MsgId, RefusedBy::ExpectedLast] {
            drop(metrics.refused.get_or_create(&RefusedLabels { by }));
        }
        for side in [Side::Core, Side::Nats] {
            drop(metrics.reconnects.get_or_create(&SideLabels { side }));
        }
        for reason in ResyncReason::ALL.map(ReasonLabel) {
            drop(metrics.events.get_or_create(&ReasonLabels { reason }));
            drop(metrics.markers.get_or_create(&ReasonLabels { reason }));
        }
        let r = root.sub_registry_with_prefix("merchant_edge_relay");
        r.register("core_connected", "1 while the core's WatchChanges stream is open", metrics.core_connected.clone());
        r.register("nats_connected", "1 while the NATS connection is up", metrics.nats_connected.clone());
        r.register(
            "applied_sequence",
            "Last core sequence received in order from WatchChanges",
            metrics.applied_sequence.clone(),
        );
        r.register(
            "published_sequence",
            "Last core sequence in the stream (whichever relay appended it)",
            metrics.published_sequence.clone(),
        );
        r.register(
            "stream_sequence",
            "JetStream sequence of the stream's last message on the relay's subject",
            metrics.stream_sequence.clone(),
        );
        r.register(
            "core_head_sequence",
            "Highest sequence the core has shown (notices and head probes)",
            metrics.core_head_sequence.clone(),
        );
        r.register(
            "lag_notices",
            "Core notices committed and not in the stream yet (core head minus published sequence)",
            metrics.lag_notices.clone(),
        );
        r.register("publishes", "Notices this relay appended to the stream", metrics.publishes.clone());
        r.register(
            "notices_skipped",
            "Notices received from the core that were already in the stream (appended by another relay)",
            metrics.skipped.clone(),
        );
        r.register("gaps", "Sequence gaps in the core's stream (each reopens the watch)", metrics.gaps.clone());
        r.register(
            "duplicates_refused",
            "Publishes the stream refused because their message was already there, by how",
            metrics.refused.clone(),
        );
        r.register("reconnects", "Reconnects after a failure, by side", metrics.reconnects.clone());
        r.register(
            "history_breaks",
            "Times this relay found the core's history could not be continued (too old, new incarnation, persistent gap)",
            metrics.events.clone(),
        );
        r.register(
            "resync_markers",
            "Resync markers this relay appended (one per break, whichever relay saw it first)",
            metrics.markers.clone(),
        );
        r.register(
            "nats_server_info",
            "1, labelled with the NATS server the relay is connected to (no series while disconnected)",
            metrics.nats_server.clone(),
        );
        r.register("build_info", "1, labelled with the running version", build);
        Self { registry: root, ..metrics }
    }

    /// The NATS connection's state, for the client to update.
    pub fn nats_link(&self) -> Arc<NatsLink> {
        self.nats_link.clone()
    }

    /// Counts a copy the stream refused.
    pub fn refused(&self, by: RefusedBy) {
        self.refused.get_or_create(&RefusedLabels { by }).inc();
    }

    /// Counts a reconnect to `side`.
    pub fn reconnect(&self, side: Side) {
        self.reconnects.get_or_create(&SideLabels { side }).inc();
    }

    /// Counts a break in the core's history this relay saw.
    pub fn history_break(&self, reason: ResyncReason) {
        self.events.get_or_create(&ReasonLabels { reason: ReasonLabel(reason) }).inc();
    }

    /// Counts a resync marker this relay appended.
    pub fn marker(&self, reason: ResyncReason) {
        self.markers.get_or_create(&ReasonLabels { reason: ReasonLabel(reason) }).inc();
    }

    /// The stream's tail is at core `sequence` (stream sequence `stream_sequence`).
    pub fn set_published(&self, sequence: u64, stream_sequence: u64) {
        self.published_sequence.set(to_gauge(sequence));
        self.stream_sequence.set(to_gauge(stream_sequence));
        self.update_lag();
    }

    /// The watch is applied up to core `sequence`.
    pub fn set_applied(&self, sequence: u64) {
        self.applied_sequence.set(to_gauge(sequence));
        if self.core_head_sequence.get() < to_gauge(sequence) {
            self.core_head_sequence.set(to_gauge(sequence));
        }
        self.update_lag();
    }

    /// The core's head as a probe read it (a new incarnation may move it backwards).
    pub fn set_core_head(&self, sequence: u64) {
        self.core_head_sequence.set(to_gauge(sequence));
        self.update_lag();
    }

    fn update_lag(&self) {
        self.lag_notices.set((self.core_head_sequence.get() - self.published_sequence.get()).max(0));
    }

    /// Whether the stream is found and its tail known.
    pub fn set_stream_ready(&self, ready: bool) {
        self.stream_ready.store(ready, Ordering::Relaxed);
    }

    /// The last problem of the relay's loop (`None` once resolved).
    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock() = error;
    }

    /// Why the NATS connection is down (`None` once up).
    pub fn set_nats_error(&self, error: Option<String>) {
        *self.nats_error.lock() = error;
    }

    /// Ready while both sides are connected and the stream's tail is known; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.nats_connected.get() != 1 {
            missing.push("NATS is not connected");
        }
        if !self.stream_ready.load(Ordering::Relaxed) {
            missing.push("the stream is not ready");
        }
        if self.core_connected.get() != 1 {
            missing.push("the core's watch is not open");
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut why = missing.join("; ");
        if let Some(error) = self.nats_error.lock().as_ref() {
            why.push_str("; NATS connection: ");
            why.push_str(error);
        }
        if let Some(error) = self.last_error.lock().as_ref() {
            why.push_str("; last error: ");
            why.push_str(error);
        }
        Err(why)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.nats_link.export_server(&self.nats_server);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

fn to_gauge(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_head_minus_published_and_every_series_is_exported_from_the_start() {
        let metrics = RelayMetrics::new();
        metrics.set_core_head(10);
        metrics.set_published(4, 4);
        assert_eq!(metrics.lag_notices.get(), 6);
        metrics.set_applied(12);
        assert_eq!(metrics.lag_notices.get(), 8);
        let text = metrics.encode();
        for series in [
            "merchant_edge_relay_reconnects_total{side=\"core\"} 0",
            "merchant_edge_relay_reconnects_total{side=\"nats\"} 0",
            "merchant_edge_relay_duplicates_refused_total{by=\"expected_last\"} 0",
            "merchant_edge_relay_history_breaks_total{reason=\"too_old\"} 0",
            "merchant_edge_relay_resync_markers_total{reason=\"new_incarnation\"} 0",
            "merchant_edge_relay_published_sequence 4",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }
}
