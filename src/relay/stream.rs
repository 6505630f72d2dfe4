//! The JetStream side: connecting (with the operator's credentials), finding or creating the stream,
//! reading its tail, and appending a message only onto the tail the relay knows.
//!
//! Every append carries `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the last message
//! on the subject the relay knows. The server stores the message only if that is still the last one,
//! so two relays can never interleave or repeat: whoever appended first wins, the other is refused and
//! re-reads the tail. `Nats-Msg-Id` (`<incarnation>:<sequence>`) makes a copy of a notice already
//! stored within the duplicate window a no-op, which also covers a publish whose ack was lost.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, Event, HeaderMap};
use bytes::Bytes;

use super::config::{NatsAuth, NatsConfig, RelayConfig, Secret, StreamLimits};
use super::link::NatsLink;
use super::message::{self, Position, ResyncReason};
use super::metrics::{RelayMetrics, Side};
use super::RelayError;
use crate::pb::ChangeNotice;

/// The stream's last message on the relay's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Its JetStream sequence: what the next append expects.
    pub stream_sequence: u64,
    /// The core position it puts the stream at.
    pub position: Position,
}

/// What became of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the stream's tail is now this message.
    Stored(Tail),
    /// The same message (same `Nats-Msg-Id`) was already stored, at this stream sequence.
    Duplicate(Tail),
    /// The tail moved on since the relay read it (another relay appended): re-read it.
    TailMoved,
}

/// Why a JetStream step failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Worth retrying (connection down, timeout, server busy): the relay re-reads the tail after a pause.
    #[error("{0}")]
    Retry(String),
    /// No retry can fix it: the operator must.
    #[error(transparent)]
    Fatal(#[from] RelayError),
}

/// Why a NATS client could not be set up: each names the file or address at fault. The relay and the
/// edge's NATS source each add which flag or config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file cannot be read.
    #[error("cannot read the NATS credentials file {}: {source}", path.display())]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file cannot be read.
    #[error("cannot read the NATS password file {}: {source}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file holds no password.
    #[error("the NATS password file {} is empty; write the password into it", .0.display())]
    EmptyPassword(PathBuf),
    /// The TLS CA file is missing.
    #[error("the NATS TLS CA file {} does not exist", .0.display())]
    TlsCa(PathBuf),
    /// The server list cannot be used.
    #[error("invalid NATS URL {url:?}: {reason}")]
    Url {
        /// The list as given.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The login from a creds file, or a user with a password file (read here, trailing newline dropped),
/// or nothing. The password is read once, at connect time, and never logged.
pub fn login(
    creds: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<NatsAuth, ConnectError> {
    if let Some(path) = creds {
        return Ok(NatsAuth::CredsFile(path));
    }
    let Some(user) = user else { return Ok(NatsAuth::None) };
    let path = password_file.unwrap_or_default();
    let read =
        std::fs::read_to_string(&path).map_err(|source| ConnectError::PasswordFile { path: path.clone(), source })?;
    let password = read.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(ConnectError::EmptyPassword(path));
    }
    Ok(NatsAuth::UserPassword { user, password: Secret::new(password.to_owned()) })
}

/// Everything a NATS client of this crate (the relay, the edge's NATS source) connects with.
pub struct Connect<'a> {
    /// The client's name, as the server's monitoring shows it.
    pub name: &'a str,
    /// Server URLs, comma-separated.
    pub url: &'a str,
    /// The login.
    pub auth: &'a NatsAuth,
    /// PEM CA to trust (turns TLS on).
    pub tls_ca: Option<&'a Path>,
    /// Connect and request timeout.
    pub request_timeout: Duration,
    /// First reconnect pause; doubles with jitter up to `reconnect_max_backoff`.
    pub reconnect_initial_backoff: Duration,
    /// Longest reconnect pause.
    pub reconnect_max_backoff: Duration,
}

/// Connects in the background (the caller starts, and reports not ready, while NATS is down); the
/// client reconnects by itself, forever, with jittered backoff, to any server of the list or of the
/// cluster. Connection events update `link`, then go to `on_event` (with whether it was a reconnect).
pub async fn connect_with<F>(
    settings: Connect<'_>,
    link: Arc<NatsLink>,
    on_event: F,
) -> Result<async_nats::Client, ConnectError>
where
    F: Fn(Event, bool) + Send + Sync + 'static,
{
    let mut options = match settings.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::CredsFile { path: path.clone(), source })?,
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
        }
    };
    if let Some(ca) = settings.tls_ca {
        if !ca.is_file() {
            return Err(ConnectError::TlsCa(ca.to_path_buf()));
        }
        options = options.add_root_certificates(ca.to_path_buf()).require_tls(true);
    }
    let (initial, max) = (settings.reconnect_initial_backoff, settings.reconnect_max_backoff);
    let on_event = Arc::new(on_event);
    let events_link = link.clone();
    let client = options
        .name(settings.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(settings.request_timeout)
        .request_timeout(Some(settings.request_timeout))
        .reconnect_delay_callback(move |attempts| crate::backoff::delay_after(attempts, initial, max))
        .event_callback(move |event| {
            let (on_event, link) = (on_event.clone(), events_link.clone());
            async move {
                let reconnect = link.observe(&event);
                on_event(event, reconnect)
            }
        })
        // Several servers (a cluster) as a comma-separated list: the client fails over between them.
        .connect(settings.url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .map_err(|e| ConnectError::Url { url: settings.url.to_owned(), reason: e.to_string() })?;
    link.attach(client.clone());
    Ok(client)
}

/// The relay's connection: connection state and reconnects go to `metrics`.
pub(super) async fn connect(
    config: &RelayConfig,
    metrics: Arc<RelayMetrics>,
) -> Result<async_nats::Client, RelayError> {
    let nats = &config.nats;
    let settings = Connect {
        name: "merchant-edge relay",
        url: &nats.url,
        auth: &nats.auth,
        tls_ca: nats.tls_ca.as_deref(),
        request_timeout: nats.request_timeout,
        reconnect_initial_backoff: config.reconnect_initial_backoff,
        reconnect_max_backoff: config.reconnect_max_backoff,
    };
    let link = metrics.nats_link();
    connect_with(settings, link, move |event, reconnect| on_event(&metrics, event, reconnect))
        .await
        .map_err(RelayError::from)
}

fn on_event(metrics: &RelayMetrics, event: Event, reconnect: bool) {
    match event {
        Event::Connected => {
            metrics.nats_connected.set(1);
            metrics.set_nats_error(None);
            if reconnect {
                metrics.reconnect(Side::Nats);
            }
            tracing::info!(reconnect, "relay: connected to NATS");
        }
        Event::Disconnected | Event::Closed => {
            metrics.nats_connected.set(0);
            tracing::warn!(%event, "relay: NATS connection lost; reconnecting");
        }
        // A refused login arrives as one of these (which one depends on when the server refused): say
        // so on /readyz. The messages name no credential.
        Event::ServerError(error) => {
            tracing::warn!(%error, "relay: NATS server error");
            metrics.set_nats_error(Some(format!("server: {error}")));
        }
        Event::ClientError(error) => {
            tracing::warn!(%error, "relay: cannot connect to NATS");
            metrics.set_nats_error(Some(format!("{error}")));
        }
        other => tracing::info!(event = %other, "relay: NATS event"),
    }
}

/// The stream settings the relay creates a missing stream with.
fn new_stream_config(nats: &NatsConfig, limits: &StreamLimits) -> StreamConfig {
    StreamConfig {
        name: nats.stream.clone(),
        description: Some("merchant-edge: the bank core's change notices, each once, in core order".into()),
        subjects: vec![nats.subject.clone()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: limits.replicas,
        max_age: limits.max_age,
        max_messages: limits.max_messages,
        duplicate_window: limits.duplicate_window,
        ..Default::default()
    }
}

/// Whether `subject` falls under the stream subject `filter` (NATS wildcards `*` and `>`).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in filter.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Finds the stream, or creates it with `limits`.
async fn find_or_create(
    js: &Context,
    nats: &NatsConfig,
    limits: &StreamLimits,
) -> Result<jetstream::stream::Stream, NatsError> {
    let retry = |what: &str, e: &dyn std::fmt::Display| NatsError::Retry(format!("{what} stream {}: {e}", nats.stream));
    let stream = match js.get_stream(&nats.stream).await {
        Ok(stream) => stream,
        Err(error) => match error.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                // Two relays starting together may both get here; the server creates the stream once
                // and answers the second identical request with the same stream (or an error, which
                // the retry turns into the lookup above).
                let stream =
                    js.create_stream(new_stream_config(nats, limits)).await.map_err(|e| retry("creating", &e))?;
                tracing::info!(
                    stream = nats.stream, subject = nats.subject, max_age = ?limits.max_age,
                    max_messages = limits.max_messages, duplicate_window = ?limits.duplicate_window,
                    replicas = limits.replicas,
                    "relay: created the stream (file storage, limits retention, discard old)"
                );
                stream
            }
            _ => return Err(retry("reading", &error)),
        },
    };
    let settings = &stream.cached_info().config;
    if !settings.subjects.iter().any(|filter| subject_matches(filter, &nats.subject)) {
        return Err(RelayError::SubjectNotInStream {
            stream: nats.stream.clone(),
            subject: nats.subject.clone(),
            subjects: settings.subjects.clone(),
        }
        .into());
    }
    if settings.duplicate_window < Duration::from_secs(1) {
        tracing::warn!(
            stream = nats.stream, duplicate_window = ?settings.duplicate_window,
            "relay: the stream's duplicate window is (nearly) off; ordering still holds (expected last \
             sequence), but a publish whose ack was lost is refused instead of acknowledged"
        );
    }
    tracing::info!(
        stream = nats.stream, subjects = ?settings.subjects, storage = ?settings.storage,
        max_age = ?settings.max_age, max_messages = settings.max_messages, max_bytes = settings.max_bytes,
        duplicate_window = ?settings.duplicate_window, replicas = settings.num_replicas,
        "relay: using the stream's settings"
    );
    Ok(stream)
}

/// Appends to the relay's stream, only ever onto the tail it knows.
pub struct Publisher {
    js: Context,
    stream: jetstream::stream::Stream,
    nats: NatsConfig,
    limits: StreamLimits,
    stream_name: String,
    subject: String,
}

impl Publisher {
    /// Finds the stream, or creates it with the config's limits. An existing stream is used as it is
    /// (its limits are the operator's), provided it takes the relay's subject.
    pub async fn open(client: async_nats::Client, config: &RelayConfig) -> Result<Self, NatsError> {
        let nats = &config.nats;
        let js = jetstream::ContextBuilder::new().timeout(nats.request_timeout).build(client);
        let stream = find_or_create(&js, nats, &config.limits).await?;
        Ok(Self {
            js,
            stream,
            nats: nats.clone(),
            limits: config.limits.clone(),
            stream_name: nats.stream.clone(),
            subject: nats.subject.clone(),
        })
    }

    /// Looks the stream up again (after a failure: an operator may have deleted or replaced it, and a
    /// deleted one is created anew).
    pub async fn reopen(&mut self) -> Result<(), NatsError> {
        self.stream = find_or_create(&self.js, &self.nats, &self.limits).await?;
        Ok(())
    }

    /// Whether the stream ever stored a message (its last stream sequence is past 0): an empty subject
    /// in such a stream lost its messages to the stream's limits (or never had any, in a stream shared
    /// with other subjects).
    pub async fn ever_stored(&self) -> Result<bool, NatsError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| NatsError::Retry(format!("reading the state of stream {}: {e}", self.stream_name)))?;
        Ok(info.state.last_sequence > 0)
    }

    /// The stream's last message on the subject, or `None` when there is none yet.
    pub async fn tail(&self) -> Result<Option<Tail>, NatsError> {
        let last = match self.stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(last) => last,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(error) => {
                return Err(NatsError::Retry(format!("reading the tail of stream {}: {error}", self.stream_name)))
            }
        };
        let entry =
            message::decode(Some(&last.headers), &last.payload).map_err(|source| RelayError::ForeignMessage {
                stream: self.stream_name.clone(),
                subject: self.subject.clone(),
                sequence: last.sequence,
                source,
            })?;
        Ok(Some(Tail { stream_sequence: last.sequence, position: entry.position() }))
    }

    /// Appends `notice` right after `tail` (the notice must name its incarnation).
    pub async fn append_notice(&self, tail: Option<&Tail>, notice: &ChangeNotice) -> Result<Appended, NatsError> {
        let (headers, payload) = message::encode_notice(notice);
        let position = Position { incarnation: notice.incarnation.clone(), sequence: notice.sequence };
        self.append(tail, headers, payload, position).await
    }

    /// Appends a resync marker right after `tail`: the stream continues from `position`.
    pub async fn append_marker(
        &self,
        tail: Option<&Tail>,
        reason: ResyncReason,
        position: Position,
    ) -> Result<Appended, NatsError> {
        let (headers, payload) = message::encode_marker(reason, &position);
        self.append(tail, headers, payload, position).await
    }

    async fn append(
        &self,
        tail: Option<&Tail>,
        headers: HeaderMap,
        payload: Bytes,
        position: Position,
    ) -> Result<Appended, NatsError> {
        // 0 means "no message on the subject yet", which the server checks too.
        let expected = tail.map_or(0, |tail| tail.stream_sequence);
        let publish =
            PublishMessage::build().headers(headers).payload(payload).expected_last_subject_sequence(expected);
        let failed =
            |e: &dyn std::fmt::Display| NatsError::Retry(format!("publishing to stream {}: {e}", self.stream_name));
        let ack = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(pending) => pending.await,
            Err(error) => return Err(failed(&error)),
        };
        match ack {
            Ok(ack) => {
                let tail = Tail { stream_sequence: ack.sequence, position };
                Ok(if ack.duplicate { Appended::Duplicate(tail) } else { Appended::Stored(tail) })
            }
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Ok(Appended::TailMoved),
            Err(error) => Err(failed(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_with_nats_wildcards() {
        assert!(subject_matches("merchant.changes", "merchant.changes"));
        assert!(subject_matches("merchant.*", "merchant.changes"));
        assert!(subject_matches("merchant.>", "merchant.changes"));
        assert!(subject_matches(">", "merchant.changes"));
        assert!(!subject_matches("merchant.changes.*", "merchant.changes"));
        assert!(!subject_matches("merchant", "merchant.changes"));
        assert!(!subject_matches("merchant.*", "merchant.changes.eu"));
        assert!(!subject_matches("other.changes", "merchant.changes"));
    }
}
