//! What a relay needs to run: the core, the NATS server and how to log in to it, the stream and
//! subject, and its timings. Built by `merchant-edge relay` from flags, or by tests directly.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Stream created when the named stream does not exist yet.
pub const DEFAULT_STREAM: &str = "MERCHANT_CHANGES";
/// Subject the relay publishes on (and a new stream is created for).
pub const DEFAULT_SUBJECT: &str = "merchant.changes";
/// Where the relay's admin HTTP endpoint listens by default (the edge's is 9090).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9091";

/// A password that never shows in logs, `Debug` output or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that must send it (the NATS login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the relay logs in to NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server without authorization).
    #[default]
    None,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it.
    CredsFile(PathBuf),
    /// User and password (the password read from a file, so it is not in the process list).
    UserPassword {
        /// The NATS user.
        user: String,
        /// Its password.
        password: Secret,
    },
}

/// The NATS side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// e.g. `nats://127.0.0.1:4222`; several servers separated by commas.
    pub url: String,
    /// How to log in.
    pub auth: NatsAuth,
    /// PEM CA to trust for a TLS server (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// Stream to append to: created with [`StreamLimits::default`] if missing, used as it is if not.
    pub stream: String,
    /// Subject the notices are published on; the stream must take it.
    pub subject: String,
    /// Longest wait for one JetStream answer (a publish ack, a stream read) before it counts as failed.
    pub request_timeout: Duration,
}

/// The core side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// e.g. `http://10.0.0.5:50052`.
    pub url: String,
    /// Longest wait for a connection to the core.
    pub connect_timeout: Duration,
    /// Reopen a watch that brings nothing while the core's head is ahead for this long.
    pub stall_timeout: Duration,
}

/// Limits of a stream the relay creates. An operator's existing stream keeps its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLimits {
    /// Messages older than this are dropped (an edge away longer resyncs from the core).
    pub max_age: Duration,
    /// Most messages kept; the oldest go first.
    pub max_messages: i64,
    /// How long a `Nats-Msg-Id` is remembered, so a second copy of a notice is refused.
    pub duplicate_window: Duration,
    /// Copies of the stream JetStream keeps on different servers (Raft): 1 on a single server, 3 on a
    /// 3-node cluster, so that losing any one server loses no notice and stops no append.
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            max_messages: 10_000_000,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// Everything a relay runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The core it follows.
    pub core: CoreConfig,
    /// The NATS server and stream it appends to.
    pub nats: NatsConfig,
    /// Limits of a stream it creates.
    pub limits: StreamLimits,
    /// First reconnect pause (either side); doubles with jitter up to `reconnect_max_backoff`.
    pub reconnect_initial_backoff: Duration,
    /// Longest reconnect pause.
    pub reconnect_max_backoff: Duration,
}

impl RelayConfig {
    /// Defaults for everything but the two addresses.
    pub fn new(core_url: impl Into<String>, nats_url: impl Into<String>) -> Self {
        Self {
            core: CoreConfig {
                url: core_url.into(),
                connect_timeout: Duration::from_secs(1),
                stall_timeout: Duration::from_secs(10),
            },
            nats: NatsConfig {
                url: nats_url.into(),
                auth: NatsAuth::None,
                tls_ca: None,
                stream: DEFAULT_STREAM.to_owned(),
                subject: DEFAULT_SUBJECT.to_owned(),
                request_timeout: Duration::from_secs(2),
            },
            limits: StreamLimits::default(),
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let auth = NatsAuth::UserPassword { user: "relay".into(), password: Secret::new("hunter2".into()) };
        let printed = format!("{auth:?}");
        assert!(printed.contains("relay") && !printed.contains("hunter2"), "{printed}");
    }
}
