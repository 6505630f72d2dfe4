//! The relay (`merchant-edge relay`): follows the core's `WatchChanges` and appends every notice to a
//! NATS JetStream stream, so that the core serves one watch per relay while any number of edges read
//! the stream. The stream holds each core notice exactly once, in core order, with two (or more)
//! relays running hot and either killed at any moment.
//!
//! # How
//! - The stream's last message on the subject ([`stream::Tail`]) says where the stream is: a core
//!   incarnation and sequence. A relay reads it on start and after every failure and resumes the core
//!   watch from there, never from its own memory.
//! - Each append expects that tail (`Nats-Expected-Last-Subject-Sequence`): if another relay appended
//!   first, the server refuses, and the relay re-reads the tail, skips what is already there and goes
//!   on. `Nats-Msg-Id: <incarnation>:<sequence>` makes a repeat within the duplicate window a no-op
//!   (a lost ack, a race on the same notice). Both refusals are counted.
//! - Where the core's history cannot be continued (OUT_OF_RANGE: trimmed past the tail; a new
//!   incarnation; the same gap again and again), the relay appends a resync marker
//!   ([`message::ResyncReason`]) and continues from the core's head (or the new history's start).
//!
//! # Layout
//! - [`config`]: what a relay needs; [`message`]: the stream's message format (what an edge reads).
//! - [`core`]: the watch and head probes; [`stream`]: the JetStream side (connect, stream, append).
//! - [`follow`]: the loop tying them together; [`backoff`]: reconnect pauses.
//! - [`metrics`], [`admin`]: what operators see.
pub mod admin;
pub mod backoff;
pub mod config;
pub mod core;
pub mod follow;
pub mod message;
pub mod metrics;
pub mod stream;

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use self::backoff::Backoff;
pub use self::config::{CoreConfig, NatsAuth, NatsConfig, RelayConfig, Secret, StreamLimits};
pub use self::message::{decode, Entry, MessageError, Position, ResyncReason};
pub use self::metrics::RelayMetrics;
use self::stream::{NatsError, Publisher};
use crate::upstream::CoreClient;

/// Why a relay stopped or could not start: each says what to fix. Passing failures of either side
/// (down, timing out) are retried and never end up here.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid core URL: {0}; pass --core like http://10.0.0.5:50052")]
    CoreUrl(String),
    #[error("invalid NATS URL {url:?}: {reason}; pass --nats like nats://127.0.0.1:4222")]
    NatsUrl { url: String, reason: String },
    #[error("cannot read the NATS credentials file {}: {source}; check --nats-creds", path.display())]
    CredsFile { path: PathBuf, source: io::Error },
    #[error("cannot read the NATS password file {}: {source}; check --nats-password-file", path.display())]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error("the NATS password file {} is empty; write the password into it", .0.display())]
    EmptyPassword(PathBuf),
    #[error("the NATS TLS CA file {} does not exist; check --nats-tls-ca", .0.display())]
    TlsCa(PathBuf),
    #[error(
        "stream {stream} does not take subject {subject} (its subjects: {subjects:?}): add the subject to \
         the stream, or pass the --subject it takes"
    )]
    SubjectNotInStream { stream: String, subject: String, subjects: Vec<String> },
    #[error(
        "the last message on {subject} in stream {stream} (stream sequence {sequence}) is not the relay's: \
         {source}"
    )]
    ForeignMessage { stream: String, subject: String, sequence: u64, source: MessageError },
    #[error("the relay's admin endpoint failed: {0}")]
    Admin(io::Error),
}

/// The login for NATS from the command line's flags: a creds file, or a user with a password file
/// (read here, trailing newline dropped), or nothing.
pub fn nats_auth(
    creds: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<NatsAuth, RelayError> {
    if let Some(path) = creds {
        return Ok(NatsAuth::CredsFile(path));
    }
    let Some(user) = user else { return Ok(NatsAuth::None) };
    let path = password_file.unwrap_or_default();
    let read =
        std::fs::read_to_string(&path).map_err(|source| RelayError::PasswordFile { path: path.clone(), source })?;
    let password = read.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(RelayError::EmptyPassword(path));
    }
    Ok(NatsAuth::UserPassword { user, password: Secret::new(password.to_owned()) })
}

/// A relay ready to run: its config and its bound admin listener.
pub struct Relay {
    config: RelayConfig,
    admin: TcpListener,
    metrics: Arc<RelayMetrics>,
}

impl Relay {
    pub fn new(config: RelayConfig, admin: TcpListener) -> Self {
        Self { config, admin, metrics: Arc::new(RelayMetrics::new()) }
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The relay's metrics and readiness, readable while it runs.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Relays until `shutdown` completes (Ok) or a failure no retry can fix (the error). Everything it
    /// started lives inside this future: dropping it stops the relay at once (as a kill would).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let Relay { config, admin, metrics } = self;
        let admin_server = axum::serve(admin, admin::router(metrics.clone())).into_future();
        let core =
            CoreClient::connect_lazy(&config.core.url, config.core.connect_timeout).map_err(RelayError::CoreUrl)?;
        let core = core::Core::new(core.grpc(), config.nats.request_timeout.max(config.core.connect_timeout));
        let client = stream::connect(&config, metrics.clone()).await?;
        let work = async {
            let mut backoff = Backoff::new(config.reconnect_initial_backoff, config.reconnect_max_backoff);
            let publisher = loop {
                match Publisher::open(client.clone(), &config).await {
                    Ok(publisher) => break publisher,
                    Err(NatsError::Fatal(error)) => return error,
                    Err(NatsError::Retry(why)) => {
                        tracing::warn!(%why, "relay: the stream is not available yet; retrying");
                        metrics.set_error(Some(why));
                        backoff.wait().await;
                    }
                }
            };
            backoff.reset();
            follow::Follower::new(core, publisher, metrics.clone(), backoff, config.core.stall_timeout).run().await
        };
        tracing::info!(
            core = config.core.url,
            nats = config.nats.url,
            stream = config.nats.stream,
            subject = config.nats.subject,
            "relay: starting"
        );
        tokio::select! {
            error = work => {
                tracing::error!(%error, "relay: stopped");
                Err(error)
            }
            served = admin_server => Err(RelayError::Admin(served.err().unwrap_or_else(|| io::Error::other("stopped")))),
            () = shutdown => {
                tracing::info!("relay: shutting down");
                Ok(())
            }
        }
    }
}
