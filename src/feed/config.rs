//! The change feed's settings.
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Following the core's change notices.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Load every merchant from the core's snapshot before reporting ready, so a restarted edge does not
    /// send its whole traffic to the core as misses.
    pub warm_start: bool,
    /// While the change stream is down, resyncing or stalled, a "not found" is trusted for at most this
    /// long (it may be stale: the merchant could have been onboarded meanwhile). `0s` disables negative
    /// answers from memory while the feed is down.
    #[serde(with = "humantime_serde")]
    pub negative_ttl_when_down: Duration,
    /// First wait before reconnecting a failed stream; doubles (with jitter) up to the maximum.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    /// Longest wait between reconnects.
    pub reconnect_max_backoff: Duration,
    /// If reads show the core ahead of the applied notices for this long while the stream is open, the
    /// stream is presumed stuck and reopened.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Merchants per ListMerchants page when loading a snapshot.
    pub snapshot_page_size: NonZeroU32,
    /// How long a lookup with a consistency token (`min_sequence`) that this edge has not applied yet
    /// waits for the change feed to apply it before asking the core instead. Read at each such lookup,
    /// so a reload applies at once. `0s`: ask the core at once.
    #[serde(with = "humantime_serde")]
    pub fresh_wait: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            warm_start: true,
            negative_ttl_when_down: Duration::from_secs(1),
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(10),
            snapshot_page_size: NonZeroU32::new(5000).expect("non-zero"),
            fresh_wait: Duration::from_millis(200),
        }
    }
}
