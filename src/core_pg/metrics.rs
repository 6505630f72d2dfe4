//! core-pg's Prometheus metrics (prefix `merchant_edge_core_pg_`), and the state its `/readyz` reads.
//! Every metric is documented in the README ("PostgreSQL").
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::row::SkipReason;
use crate::metric_labels::label_values;

label_values! {
    /// The MerchantCore and CoreAdmin calls core-pg serves.
    pub Method {
        GetMerchant => "get_merchant",
        ListMerchants => "list_merchants",
        WatchChanges => "watch_changes",
        UpsertMerchant => "upsert_merchant",
        DeleteMerchant => "delete_merchant",
        GetStats => "get_stats",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

/// One replication slot of the database, as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReading {
    /// Its name.
    pub slot: String,
    /// Whether a session streams from it now.
    pub active: bool,
    /// WAL the server keeps for it: current WAL position minus its restart_lsn.
    pub retained_bytes: i64,
    /// Current WAL position minus its confirmed_flush_lsn.
    pub lag_bytes: i64,
    /// `wal_status` is `lost`: the WAL it needs is gone, it can only be dropped.
    pub lost: bool,
}

/// core-pg's metrics.
pub struct CorePgMetrics {
    registry: Registry,
    /// 1 while the decoder streams from the slot and knows where its history starts.
    pub ready: Gauge,
    /// 1 while the replication connection is up.
    pub decoder_connected: Gauge,
    /// Replication connections lost (each is retried with backoff).
    pub decoder_reconnects: Counter,
    /// Changes decoded from the slot into the history.
    pub changes_decoded: Counter,
    /// Transactions with changes decoded.
    pub transactions_decoded: Counter,
    /// Changes decoded again after a reconnect, dropped as already kept.
    pub changes_duplicate: Counter,
    /// Changes missing from the decoded stream (the history restarted after them).
    pub gaps: Counter,
    /// `merchant_edge.change` messages that are not changes at all.
    pub malformed_messages: Counter,
    /// COMMIT → decoded by core-pg.
    pub decode_delay: Histogram,
    /// The last sequence decoded.
    pub head_sequence: Gauge,
    /// Changes kept for WatchChanges.
    pub history_notices: Gauge,
    /// The slot was recreated (its WAL was lost).
    pub slot_recreated: Counter,
    /// The slot was advanced past kept history because it retained too much WAL.
    pub slot_released: Counter,
    /// WatchChanges streams open now.
    pub watch_streams_open: Gauge,
    /// WatchChanges streams opened.
    pub watch_streams_opened: Counter,
    /// Listings holding a snapshot now.
    pub listings_open: Gauge,
    /// Connections in the pool, and idle ones.
    pub pool_connections: Gauge,
    /// Idle pooled connections.
    pub pool_idle: Gauge,
    /// GetMerchant's primary-key read, as core-pg timed it.
    pub get_merchant_duration: Histogram,
    calls: Family<MethodLabels, Counter>,
    call_errors: Family<MethodLabels, Counter>,
    rows_skipped: Family<ReasonLabels, Counter>,
    slot_retained: Family<SlotLabels, Gauge>,
    slot_lag: Family<SlotLabels, Gauge>,
    slot_active: Family<SlotLabels, Gauge>,
    slot_lost: Family<SlotLabels, Gauge>,
    /// Why the decoder is not following, for `/readyz`.
    not_ready: Mutex<Option<String>>,
}

impl Default for CorePgMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CorePgMetrics {
    /// Every series, registered at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let metrics = Self {
            registry: Registry::default(),
            ready: Gauge::default(),
            decoder_connected: Gauge::default(),
            decoder_reconnects: Counter::default(),
            changes_decoded: Counter::default(),
            transactions_decoded: Counter::default(),
            changes_duplicate: Counter::default(),
            gaps: Counter::default(),
            malformed_messages: Counter::default(),
            decode_delay: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            head_sequence: Gauge::default(),
            history_notices: Gauge::default(),
            slot_recreated: Counter::default(),
            slot_released: Counter::default(),
            watch_streams_open: Gauge::default(),
            watch_streams_opened: Counter::default(),
            listings_open: Gauge::default(),
            pool_connections: Gauge::default(),
            pool_idle: Gauge::default(),
            get_merchant_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            calls: Family::default(),
            call_errors: Family::default(),
            rows_skipped: Family::default(),
            slot_retained: Family::default(),
            slot_lag: Family::default(),
            slot_active: Family::default(),
            slot_lost: Family::default(),
            not_ready: Mutex::new(Some("starting".into())),
        };
        for &method in Method::ALL {
            drop(metrics.calls.get_or_create(&MethodLabels { method }));
            drop(metrics.call_errors.get_or_create(&MethodLabels { method }));
        }
        for &reason in SkipReason::ALL {
            drop(metrics.rows_skipped.get_or_create(&ReasonLabels { reason }));
        }
        let r = root.sub_registry_with_prefix("merchant_edge_core_pg");
        r.register("ready", "1 while core-pg follows the database's changes and serves them", metrics.ready.clone());
        r.register("decoder_connected", "1 while the replication connection is up", metrics.decoder_connected.clone());
        r.register(
            "decoder_reconnects",
            "Replication connections lost and retried",
            metrics.decoder_reconnects.clone(),
        );
        r.register(
            "changes_decoded",
            "Changes decoded from the slot into the history",
            metrics.changes_decoded.clone(),
        );
        r.register("transactions_decoded", "Transactions with changes decoded", metrics.transactions_decoded.clone());
        r.register(
            "changes_duplicate",
            "Changes decoded again after a reconnect and dropped as already kept",
            metrics.changes_duplicate.clone(),
        );
        r.register(
            "gaps",
            "Times changes were missing from the decoded stream (the history restarted after them)",
            metrics.gaps.clone(),
        );
        r.register(
            "malformed_messages",
            "merchant_edge.change messages that are not changes (not written by the schema's trigger)",
            metrics.malformed_messages.clone(),
        );
        r.register(
            "rows_skipped",
            "Rows that cannot be served (left out of listings, sent as deletes, read as not found), by reason",
            metrics.rows_skipped.clone(),
        );
        r.register("decode_delay_seconds", "COMMIT to decoded by core-pg", metrics.decode_delay.clone());
        r.register("head_sequence", "The last change sequence decoded", metrics.head_sequence.clone());
        r.register("history_notices", "Changes kept for WatchChanges resumption", metrics.history_notices.clone());
        r.register(
            "slot_retained_wal_bytes",
            "WAL PostgreSQL keeps for the slot (current WAL position minus restart_lsn), per logical slot of the database",
            metrics.slot_retained.clone(),
        );
        r.register(
            "slot_confirmed_lag_bytes",
            "Current WAL position minus the slot's confirmed_flush_lsn, per logical slot of the database",
            metrics.slot_lag.clone(),
        );
        r.register(
            "slot_active",
            "1 while a session streams from the slot, per logical slot of the database",
            metrics.slot_active.clone(),
        );
        r.register(
            "slot_lost",
            "1 when the slot's WAL is gone (wal_status lost): it can only be dropped",
            metrics.slot_lost.clone(),
        );
        r.register(
            "slot_recreated",
            "Times this process recreated its slot after its WAL was lost",
            metrics.slot_recreated.clone(),
        );
        r.register(
            "slot_released",
            "Times the slot was advanced past kept history because it retained more than slot_max_retained_bytes",
            metrics.slot_released.clone(),
        );
        r.register("watch_streams_open", "WatchChanges streams open now", metrics.watch_streams_open.clone());
        r.register("watch_streams_opened", "WatchChanges streams opened", metrics.watch_streams_opened.clone());
        r.register("listings_open", "ListMerchants listings holding a snapshot now", metrics.listings_open.clone());
        r.register("pool_connections", "Connections in the read/write pool", metrics.pool_connections.clone());
        r.register("pool_idle_connections", "Idle connections in the read/write pool", metrics.pool_idle.clone());
        r.register(
            "get_merchant_duration_seconds",
            "GetMerchant's primary-key read, as core-pg timed it",
            metrics.get_merchant_duration.clone(),
        );
        r.register("calls", "Calls received, by method", metrics.calls.clone());
        r.register("call_errors", "Calls answered with an error, by method", metrics.call_errors.clone());
        Self { registry: root, ..metrics }
    }

    /// Counts a call, and whether it failed.
    pub fn call(&self, method: Method, failed: bool) {
        self.calls.get_or_create(&MethodLabels { method }).inc();
        if failed {
            self.call_errors.get_or_create(&MethodLabels { method }).inc();
        }
    }

    /// Calls of `method` so far.
    pub fn calls_of(&self, method: Method) -> u64 {
        self.calls.get_or_create(&MethodLabels { method }).get()
    }

    /// Counts a row that cannot be served.
    pub fn skipped(&self, reason: SkipReason) {
        self.rows_skipped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Replaces the slot readings (a slot dropped since the last reading disappears).
    pub fn set_slots(&self, readings: &[SlotReading]) {
        for family in [&self.slot_retained, &self.slot_lag, &self.slot_active, &self.slot_lost] {
            family.clear();
        }
        for reading in readings {
            let labels = SlotLabels { slot: reading.slot.clone() };
            self.slot_retained.get_or_create(&labels).set(reading.retained_bytes);
            self.slot_lag.get_or_create(&labels).set(reading.lag_bytes);
            self.slot_active.get_or_create(&labels).set(i64::from(reading.active));
            self.slot_lost.get_or_create(&labels).set(i64::from(reading.lost));
        }
    }

    /// Ready, or why not (`/readyz`, gRPC health, `ready`).
    pub fn set_readiness(&self, not_ready: Option<String>) {
        self.ready.set(i64::from(not_ready.is_none()));
        *self.not_ready.lock() = not_ready;
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.not_ready.lock().clone().map_or(Ok(()), Err)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_exists_from_the_start_and_dropped_slots_disappear() {
        let metrics = CorePgMetrics::new();
        let reading =
            |slot: &str| SlotReading { slot: slot.into(), active: true, retained_bytes: 42, lag_bytes: 7, lost: false };
        metrics.set_slots(&[reading("edge_a"), reading("edge_b")]);
        metrics.set_slots(&[reading("edge_a")]);
        let text = metrics.encode();
        for series in [
            "merchant_edge_core_pg_rows_skipped_total{reason=\"unknown_status\"} 0",
            "merchant_edge_core_pg_calls_total{method=\"watch_changes\"} 0",
            "merchant_edge_core_pg_slot_retained_wal_bytes{slot=\"edge_a\"} 42",
            "merchant_edge_core_pg_ready 0",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        assert!(!text.contains("edge_b"), "a dropped slot is still exported:\n{text}");
    }
}
