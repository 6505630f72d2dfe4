//! The relay (`merchant-edge relay`): follows the core's `WatchChanges` and appends every notice to a
//! NATS JetStream stream, so that the core serves one watch per relay while any number of edges read
//! the stream. The stream holds each core notice exactly once, in core order, with two (or more)
//! relays running hot and either killed at any moment.
//!
//! # How
//! - The stream's last message on the subject ([`Tail`]) says where the stream is: a core
//!   incarnation and sequence. A relay reads it on start and after every failure and resumes the core
//!   watch from there, never from its own memory.
//! - Each append expects that tail (`Nats-Expected-Last-Subject-Sequence`): if another relay appended
//!   first, the server refuses, and the relay re-reads the tail, skips what is already there and goes
//!   on. `Nats-Msg-Id: <incarnation>:<sequence>` makes a repeat within the duplicate window a no-op
//!   (a lost ack, a race on the same notice). Both refusals are counted.
//! - Where the core's history cannot be continued (OUT_OF_RANGE: trimmed past the tail; a new
//!   incarnation; the same gap again and again), the relay appends a resync marker
//!   ([`ResyncReason`]) and continues from the core's head (or the new history's start).
//!
//! # Layout
//! - `config`: what a relay needs; `message`: the stream's message format (what an edge reads).
//! - `core`: the watch and head probes; `stream`: the JetStream side (connect, stream, append).
//! - `follow`: the loop tying them together; reconnect pauses come from the crate's shared backoff.
//! - `link`: which NATS server a client is on and how often it reconnected (relays and edges).
//! - `metrics`, `admin`: what operators see.
//!
//! The public surface is what the binary, the tests and the edge's NATS notice source need: the
//! config, the message format ([`decode`], [`Entry`]), the [`Relay`] itself, its metrics, and the
//! publisher that the tests drive directly to check what the server guarantees.
mod admin;
mod config;
mod core;
mod follow;
mod link;
mod message;
mod metrics;
mod stream;

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use self::config::{
    CoreConfig, NatsAuth, NatsConfig, RelayConfig, Secret, StreamLimits, DEFAULT_ADMIN, DEFAULT_STREAM, DEFAULT_SUBJECT,
};
pub use self::link::{ConnectedServer, NatsLink, ServerLabels};
pub use self::message::{decode, Entry, MessageError, Position, ResyncReason};
pub use self::metrics::RelayMetrics;
pub(crate) use self::stream::{connect_with, Connect};
pub use self::stream::{login, Appended, ConnectError, NatsError, Publisher, Tail};
use crate::backoff::Backoff;
use crate::upstream::CoreClient;

/// Why a relay stopped or could not start: each says what to fix. Passing failures of either side
/// (down, timing out) are retried and never end up here.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// `--core` is not a usable URL.
    #[error("invalid core URL: {0}; pass --core like http://10.0.0.5:50052")]
    CoreUrl(String),
    /// `--nats` is not a usable server list.
    #[error("invalid NATS URL {url:?}: {reason}; pass --nats like nats://127.0.0.1:4222")]
    NatsUrl {
        /// The list as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The `--nats-creds` file cannot be read.
    #[error("cannot read the NATS credentials file {}: {source}; check --nats-creds", path.display())]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `--nats-password-file` cannot be read.
    #[error("cannot read the NATS password file {}: {source}; check --nats-password-file", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `--nats-password-file` is empty.
    #[error("the NATS password file {} is empty; write the password into it", .0.display())]
    EmptyPassword(PathBuf),
    /// The `--nats-tls-ca` file is missing.
    #[error("the NATS TLS CA file {} does not exist; check --nats-tls-ca", .0.display())]
    TlsCa(PathBuf),
    /// The stream exists but does not take the relay's subject.
    #[error(
        "stream {stream} does not take subject {subject} (its subjects: {subjects:?}): add the subject to \
         the stream, or pass the --subject it takes"
    )]
    SubjectNotInStream {
        /// The stream.
        stream: String,
        /// The relay's subject.
        subject: String,
        /// The subjects the stream takes.
        subjects: Vec<String>,
    },
    /// The subject's last message was not written by a relay.
    #[error(
        "the last message on {subject} in stream {stream} (stream sequence {sequence}) is not the relay's: \
         {source}"
    )]
    ForeignMessage {
        /// The stream.
        stream: String,
        /// The relay's subject.
        subject: String,
        /// The message's stream sequence.
        sequence: u64,
        /// What is wrong with it.
        source: MessageError,
    },
    /// The admin endpoint stopped.
    #[error("the relay's admin endpoint failed: {0}")]
    Admin(io::Error),
}

impl From<ConnectError> for RelayError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::CredsFile { path, source } => Self::CredsFile { path, source },
            ConnectError::PasswordFile { path, source } => Self::PasswordFile { path, source },
            ConnectError::EmptyPassword(path) => Self::EmptyPassword(path),
            ConnectError::TlsCa(path) => Self::TlsCa(path),
            ConnectError::Url { url, reason } => Self::NatsUrl { url, reason },
        }
    }
}

/// The login for NATS from the command line's flags: a creds file, or a user with a password file
/// (read here, trailing newline dropped), or nothing.
pub fn nats_auth(
    creds: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<NatsAuth, RelayError> {
    login(creds, user, password_file).map_err(RelayError::from)
}

/// A relay ready to run: its config and its bound admin listener.
pub struct Relay {
    config: RelayConfig,
    admin: TcpListener,
    metrics: Arc<RelayMetrics>,
}

impl Relay {
    /// A relay with `config`, serving its admin endpoint on `admin`.
    pub fn new(config: RelayConfig, admin: TcpListener) -> Self {
        Self { config, admin, metrics: Arc::new(RelayMetrics::new()) }
    }

    /// Where the admin endpoint listens.
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
