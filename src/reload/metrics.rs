//! Config reload bookkeeping, exported as Prometheus exports its own.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::metric_labels::label_values;

label_values! {
    /// What asked for a config reload.
    pub ReloadTrigger {
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

/// Config reload bookkeeping, as Prometheus exports its own.
#[derive(Clone, Default)]
pub struct ConfigMetrics {
    last_reload_successful: Gauge,
    last_reload_success_timestamp: Gauge<f64, AtomicU64>,
    reloads: Family<ReloadLabels, Counter>,
    info: Family<ConfigInfoLabels, Gauge>,
}

impl ConfigMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let config = Self::default();
        // Every series exists from the start, so rates and alerts work before the first reload.
        for &trigger in ReloadTrigger::ALL {
            for &result in ReloadResult::ALL {
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
