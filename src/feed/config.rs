//! The change feed's settings.
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the edge reads change notices from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The core's own `WatchChanges` stream (one watch on the core per edge).
    #[default]
    Core,
    /// The relay's NATS JetStream stream (`merchant-edge relay`): one watch on the core per relay,
    /// however many edges read the stream.
    Nats,
}

impl SourceKind {
    /// The config value (and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Nats => "nats",
        }
    }
}

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
    /// Where notices come from: `"core"` (its `WatchChanges`) or `"nats"` (the relay's stream).
    /// Snapshots (warm start, resyncs) and misses always go to the core. Takes a restart.
    pub source: SourceKind,
    /// NATS server(s) for `source = "nats"`, comma-separated (the client fails over between them).
    pub nats_url: String,
    /// The JetStream stream the relays append to.
    pub nats_stream: String,
    /// The subject the relays publish on.
    pub nats_subject: String,
    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it). Only its path is printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_creds_file: Option<PathBuf>,
    /// NATS user; the password is read from `nats_password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_user: Option<String>,
    /// File holding the NATS password (trailing newline ignored). Only its path is printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_password_file: Option<PathBuf>,
    /// PEM CA to trust for a NATS server over TLS (turns TLS on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Longest wait for one NATS answer (connect, a stream read, opening a consumer).
    #[serde(with = "humantime_serde")]
    pub nats_request_timeout: Duration,
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
            source: SourceKind::Core,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_stream: crate::relay::DEFAULT_STREAM.to_owned(),
            nats_subject: crate::relay::DEFAULT_SUBJECT.to_owned(),
            nats_creds_file: None,
            nats_user: None,
            nats_password_file: None,
            nats_tls_ca: None,
            nats_request_timeout: Duration::from_secs(2),
            fresh_wait: Duration::from_millis(200),
        }
    }
}
