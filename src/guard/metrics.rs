//! Core protection's metrics: core calls by result and duration, refusals by reason, retries and the
//! breaker's state.
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::RefusalReason;
use crate::metric_labels::label_values;

label_values! {
    /// How a core call ended.
    pub CoreCallResult {
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
}

/// Counters of core protection (cloning shares them).
#[derive(Clone)]
pub struct GuardMetrics {
    core_calls: Family<CoreCallLabels, Counter>,
    core_call_duration: Histogram,
    refusals: Family<RefusalLabels, Counter>,
    /// Core calls retried.
    pub core_retries: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
}

impl Default for GuardMetrics {
    fn default() -> Self {
        Self {
            core_calls: Family::default(),
            core_call_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            refusals: Family::default(),
            core_retries: Counter::default(),
            breaker_state: Gauge::default(),
        }
    }
}

impl GuardMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for &reason in RefusalReason::ALL {
            drop(metrics.refusals.get_or_create(&RefusalLabels { reason }));
        }
        registry.register("core_calls", "GetMerchant calls to the bank core, by result", metrics.core_calls.clone());
        registry.register_with_unit(
            "core_call_duration",
            "Time for one GetMerchant call to the bank core",
            Unit::Seconds,
            metrics.core_call_duration.clone(),
        );
        registry.register(
            "core_refusals",
            "Core-bound lookups refused without a core call, by reason (shed, breaker open, per-client limit, deadline)",
            metrics.refusals.clone(),
        );
        registry.register(
            "core_retries",
            "Core calls retried after a failure, within the caller's deadline",
            metrics.core_retries.clone(),
        );
        registry.register(
            "breaker_state",
            "The core circuit breaker: 0 closed, 1 open, 2 half-open",
            metrics.breaker_state.clone(),
        );
        metrics
    }

    /// Counts one core call and its duration.
    pub fn record_core_call(&self, result: CoreCallResult, elapsed: Duration) {
        self.core_calls.get_or_create(&CoreCallLabels { result }).inc();
        self.core_call_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one refusal.
    pub fn count_refusal(&self, reason: RefusalReason) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Refusals so far for `reason`.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals.get_or_create(&RefusalLabels { reason }).get()
    }
}
