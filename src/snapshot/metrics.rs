//! The local snapshot's metrics: the last successful write (when, how long, how big), write results,
//! and what happened to the snapshot at start.
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::format::RejectReason;
use crate::metric_labels::label_values;

label_values! {
    /// What became of the snapshot file at start.
    pub LoadOutcome {
        /// Loaded: the edge served from it.
        Loaded => "loaded",
        /// No file at the path (a first start).
        Missing => "missing",
        /// Rejected: the file ends early.
        Truncated => "truncated",
        /// Rejected: the content does not match its checksum or framing.
        Corrupted => "corrupted",
        /// Rejected: another format version.
        UnknownVersion => "unknown_version",
        /// Rejected: written under another ID rule.
        OtherIdRule => "other_id_rule",
        /// Rejected: a directory, no permission, an I/O error.
        Unreadable => "unreadable",
    }
}

impl From<RejectReason> for LoadOutcome {
    fn from(reason: RejectReason) -> Self {
        match reason {
            RejectReason::Truncated => Self::Truncated,
            RejectReason::Corrupted => Self::Corrupted,
            RejectReason::UnknownVersion => Self::UnknownVersion,
            RejectReason::OtherIdRule => Self::OtherIdRule,
            RejectReason::Unreadable => Self::Unreadable,
        }
    }
}

label_values! {
    WriteResult {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoadLabels {
    outcome: LoadOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WriteLabels {
    result: WriteResult,
}

/// The snapshot's metrics (cloning shares them).
#[derive(Clone)]
pub struct SnapshotMetrics {
    last_write_success: Gauge<f64, AtomicU64>,
    write_duration: Histogram,
    bytes: Gauge,
    merchants: Gauge,
    writes: Family<WriteLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
}

impl Default for SnapshotMetrics {
    fn default() -> Self {
        Self {
            last_write_success: Gauge::default(),
            // 10 ms .. about 5 min: a small table to tens of millions of merchants on a slow disk.
            write_duration: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            bytes: Gauge::default(),
            merchants: Gauge::default(),
            writes: Family::default(),
            loads: Family::default(),
        }
    }
}

impl SnapshotMetrics {
    /// Creates the metrics and registers them in `registry` (under `snapshot_`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Every series exists from the start, so alerts on increases work from the first failure.
        for &result in WriteResult::ALL {
            drop(metrics.writes.get_or_create(&WriteLabels { result }));
        }
        for &outcome in LoadOutcome::ALL {
            drop(metrics.loads.get_or_create(&LoadLabels { outcome }));
        }
        let registry = registry.sub_registry_with_prefix("snapshot");
        registry.register_with_unit(
            "last_write_success_timestamp",
            "When the local snapshot was last written completely (Unix time; 0: never since start)",
            Unit::Seconds,
            metrics.last_write_success.clone(),
        );
        registry.register_with_unit(
            "write_duration",
            "Time to write the local snapshot (successful writes)",
            Unit::Seconds,
            metrics.write_duration.clone(),
        );
        registry.register("bytes", "Size of the last local snapshot written", metrics.bytes.clone());
        registry.register("merchants", "Merchants in the last local snapshot written", metrics.merchants.clone());
        registry.register("writes", "Local snapshot writes, by result", metrics.writes.clone());
        registry.register("loads", "What became of the local snapshot at start, by outcome", metrics.loads.clone());
        metrics
    }

    /// Records a complete write.
    pub fn written(&self, took: Duration, bytes: u64, merchants: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_write_success.set(now.as_secs_f64());
        self.write_duration.observe(took.as_secs_f64());
        self.bytes.set(bytes.try_into().unwrap_or(i64::MAX));
        self.merchants.set(merchants.try_into().unwrap_or(i64::MAX));
        self.writes.get_or_create(&WriteLabels { result: WriteResult::Success }).inc();
    }

    /// Records a write that failed (the previous snapshot stays).
    pub fn write_failed(&self) {
        self.writes.get_or_create(&WriteLabels { result: WriteResult::Failure }).inc();
    }

    /// How many starts ended with `outcome` (for tests and explanations).
    pub fn loads(&self, outcome: LoadOutcome) -> u64 {
        self.loads.get_or_create(&LoadLabels { outcome }).get()
    }

    /// Complete writes since start.
    pub fn writes_succeeded(&self) -> u64 {
        self.writes.get_or_create(&WriteLabels { result: WriteResult::Success }).get()
    }

    /// Records what became of the snapshot at start.
    pub fn loaded(&self, outcome: LoadOutcome) {
        self.loads.get_or_create(&LoadLabels { outcome }).inc();
    }
}
