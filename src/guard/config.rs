//! The settings of core protection.
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Protecting the bank core from the edge's own traffic: bounds on core calls, retries, the circuit
/// breaker and per-client limits. Everything here applies live.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectConfig {
    /// Most core calls at once.
    pub max_in_flight: NonZeroU32,
    /// Most core-bound lookups waiting for a call; beyond this they are shed at once with
    /// RESOURCE_EXHAUSTED (and a `grpc-retry-pushback-ms` hint). 0: no queue.
    pub max_queued: u32,
    /// Attempts per core call (1: no retries). Retries happen only while the caller's deadline allows.
    pub max_attempts: NonZeroU32,
    /// Longest pause before the first retry (a random share of it); doubles for each further retry.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Consecutive failed core calls that open the circuit breaker.
    pub breaker_failures: NonZeroU32,
    /// How long an open breaker refuses core calls before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// Core-bound lookups per second allowed to each client; absent: no per-client limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client_rate: Option<NonZeroU32>,
    /// How many a client may save up beyond the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client_burst: Option<NonZeroU32>,
    /// Request metadata naming the client (e.g. "x-gateway-id"); absent: the peer's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        Self {
            max_in_flight: NonZeroU32::new(64).expect("non-zero"),
            max_queued: 256,
            max_attempts: NonZeroU32::new(3).expect("non-zero"),
            retry_backoff: Duration::from_millis(25),
            breaker_failures: NonZeroU32::new(5).expect("non-zero"),
            breaker_open_for: Duration::from_secs(5),
            per_client_rate: None,
            per_client_burst: None,
            client_key: None,
        }
    }
}
