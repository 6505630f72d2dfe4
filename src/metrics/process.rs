//! `process_resident_memory_bytes`, under the name every Prometheus client library and dashboard uses
//! (so it carries no `merchant_edge_` prefix): the resident set size, read from `/proc/self/status` when
//! scraped. The caches are the edge's memory, and this is what the kernel's OOM killer and a pod's
//! memory limit count; the stores' entry counts alone do not say how many bytes they cost.
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Registers the RSS gauge in `registry` (which must have no prefix).
pub(super) fn register(registry: &mut Registry) {
    registry.register_with_unit(
        "process_resident_memory",
        "Resident memory size of the process",
        Unit::Bytes,
        ResidentMemory,
    );
}

#[derive(Debug)]
struct ResidentMemory;

impl EncodeMetric for ResidentMemory {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        // Where /proc is missing (not Linux) the family is exposed without a sample rather than as 0,
        // which would read as "uses no memory".
        match std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(resident_bytes) {
            Some(bytes) => encoder.encode_gauge(&bytes),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The `VmRSS:` line of `/proc/PID/status` (`VmRSS:` then spaces or a tab, `123456 kB`), in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_status_file() {
        let status = "Name:\tmerchant-edge\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(resident_bytes(status), Some(2 * 1024 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_size() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let sample = text.lines().find(|line| line.starts_with("process_resident_memory_bytes ")).expect(&text);
        let bytes: f64 = sample.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(bytes > 0.0, "{text}");
    }
}
