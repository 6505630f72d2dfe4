//! The cache room's settings: capacities and TTLs of the two stores, serve-stale and refresh-ahead.
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The positive and negative stores: separate capacities and TTLs, so a flood of unknown IDs can only
/// evict negative entries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most merchants kept.
    pub positive_capacity: NonZeroU64,
    /// How long a merchant is served from memory without asking the core again. Change notices keep
    /// entries fresh; the TTL is the safety net.
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// Most "not found" answers kept.
    pub negative_capacity: NonZeroU64,
    /// How long a "not found" answer is served from memory.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How long past its TTL a merchant is still answered (source STALE, with its age) when the core
    /// cannot be asked (as RFC 8767 does for DNS). "0s" turns serve-stale off. Never applies to "not found".
    #[serde(with = "humantime_serde")]
    pub serve_stale_for: Duration,
    /// Refresh-ahead: a merchant looked up within this long (at most half the positive TTL) before its
    /// TTL ends is refreshed from the core in the background (once), so merchants in use never expire
    /// into a miss. "0s" turns it off.
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Duration,
}

impl CacheConfig {
    /// The refresh-ahead window in force: never more than half the TTL, so a short TTL configured
    /// without thinking of refresh-ahead does not refresh on every hit.
    pub fn refresh_window(&self) -> Duration {
        self.refresh_ahead.min(self.positive_ttl / 2)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_capacity: NonZeroU64::new(1_000_000).expect("non-zero"),
            positive_ttl: Duration::from_secs(600),
            negative_capacity: NonZeroU64::new(100_000).expect("non-zero"),
            negative_ttl: Duration::from_secs(30),
            serve_stale_for: Duration::from_secs(3600),
            refresh_ahead: Duration::from_secs(60),
        }
    }
}
