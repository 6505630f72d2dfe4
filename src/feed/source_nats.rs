//! The relay's JetStream stream as a notice source (`feed.source = "nats"`): the edge reads what the
//! relays appended (`merchant-edge relay`, see [`crate::relay`]) with an ordered consumer, and the core
//! serves one watch per relay instead of one per edge.
//!
//! The consumer starts at the stream message holding the notice after the edge's applied sequence,
//! never at the stream's start. Between resync markers the stream holds the core's sequences
//! contiguously, so that message is usually the subject's last one stepped back by the difference in
//! core sequences; it is checked by reading it, and found by a binary search over stream sequences
//! when markers, other subjects or deleted messages make the arithmetic miss.
//!
//! What the stream says maps onto the feed's vocabulary: a notice is a notice; a resync marker is a
//! break in the history (a feed already past it ignores it); the first message on the subject being
//! past what the edge needs is "too old"; the subject's last message is the head as far as the stream
//! knows; a lost NATS connection or a consumer error is a stream failure.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind, Stream as JsStream};
use async_nats::jetstream::{self, Context};
use async_nats::Event;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::source::{Items, NoticeSource, SourceEnd, SourceItem};
use super::{FeedConfig, ResyncReason};
use crate::relay::{self, ConnectError, Entry, NatsLink, Position};

/// Why the NATS source cannot start: each names the `[feed]` key to fix.
#[derive(Debug, thiserror::Error)]
pub enum NatsSourceError {
    /// The credentials file cannot be read.
    #[error("feed.nats_creds_file: cannot read {}: {source}", path.display())]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file cannot be read.
    #[error("feed.nats_password_file: cannot read {}: {source}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The password file is empty.
    #[error("feed.nats_password_file: {} is empty; write the password into it", .0.display())]
    EmptyPassword(PathBuf),
    /// The CA file is missing.
    #[error("feed.nats_tls_ca: {} does not exist", .0.display())]
    TlsCa(PathBuf),
    /// The server list cannot be used.
    #[error("feed.nats_url: {url:?} cannot be used: {reason}; give it like nats://10.0.0.7:4222")]
    Url {
        /// The list as given.
        url: String,
        /// Why.
        reason: String,
    },
}

impl From<ConnectError> for NatsSourceError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::CredsFile { path, source } => Self::CredsFile { path, source },
            ConnectError::PasswordFile { path, source } => Self::PasswordFile { path, source },
            ConnectError::EmptyPassword(path) => Self::EmptyPassword(path),
            ConnectError::TlsCa(path) => Self::TlsCa(path),
            ConnectError::Url { url, reason } => Self::Url { url, reason },
        }
    }
}

/// Follows the relay's stream over one NATS connection (the client reconnects by itself).
pub struct NatsSource {
    js: Context,
    stream_name: String,
    subject: String,
    /// Whether the client is connected now (from its connection events).
    connected: watch::Receiver<bool>,
    /// How often an open stream reads the subject's last message, for the head.
    head_every: Duration,
    /// (ours, the stream tail's) incarnations a resync was already asked for at open. A second open
    /// with the same pair means the core agrees with us and the stream lags behind it (the relays have
    /// not seen the new history yet): then the stream is followed, not resynced from again.
    mismatch_resynced: Option<(String, String)>,
}

impl NatsSource {
    /// Connects in the background (the edge starts, and reports the feed down, while NATS is down);
    /// `link` tells operators which server it is on.
    pub async fn connect(settings: &FeedConfig, link: Arc<NatsLink>) -> Result<Self, NatsSourceError> {
        let auth = relay::login(
            settings.nats_creds_file.clone(),
            settings.nats_user.clone(),
            settings.nats_password_file.clone(),
        )?;
        let connected = link.subscribe();
        let connect = relay::Connect {
            name: "merchant-edge",
            url: &settings.nats_url,
            auth: &auth,
            tls_ca: settings.nats_tls_ca.as_deref(),
            request_timeout: settings.nats_request_timeout,
            reconnect_initial_backoff: settings.reconnect_initial_backoff,
            reconnect_max_backoff: settings.reconnect_max_backoff,
        };
        let client = relay::connect_with(connect, link, move |event, reconnect| match event {
            Event::Connected => tracing::info!(reconnect, "feed: connected to NATS"),
            Event::Disconnected | Event::Closed => {
                tracing::warn!(%event, "feed: NATS connection lost; reconnecting");
            }
            // A refused login or a TLS problem: the message names no credential.
            Event::ServerError(error) => tracing::warn!(%error, "feed: NATS server error"),
            Event::ClientError(error) => tracing::warn!(%error, "feed: cannot connect to NATS"),
            other => tracing::debug!(event = %other, "feed: NATS event"),
        })
        .await?;
        let js = jetstream::ContextBuilder::new().timeout(settings.nats_request_timeout).build(client);
        Ok(Self {
            js,
            stream_name: settings.nats_stream.clone(),
            subject: settings.nats_subject.clone(),
            connected,
            head_every: (settings.stall_timeout / 4).max(Duration::from_millis(50)),
            mismatch_resynced: None,
        })
    }

    async fn stream(&self) -> Result<JsStream, SourceEnd> {
        self.js.get_stream(&self.stream_name).await.map_err(|e| {
            SourceEnd::Reconnect(format!(
                "reading stream {} (a relay creates it; check feed.nats_stream): {e}",
                self.stream_name
            ))
        })
    }

    /// Where the consumer starts for the notices after `after` of `incarnation`.
    async fn start(&mut self, stream: &JsStream, after: u64, incarnation: Option<&str>) -> Result<u64, SourceEnd> {
        let info = stream.get_info().await.map_err(|e| read_failed(&self.stream_name, &e))?;
        let Some(tail) = last(stream, &self.subject).await? else {
            // Nothing on the subject (a new stream, or every message expired or was purged): follow
            // what comes. The relay's next message is a too-old marker if notices were lost.
            return Ok(info.state.last_sequence + 1);
        };
        let Some(ours) = incarnation else { return Ok(tail.stream_sequence + 1) };
        if tail.position.incarnation != ours {
            let pair = (ours.to_owned(), tail.position.incarnation.clone());
            if self.mismatch_resynced.as_ref() == Some(&pair) {
                return Ok(tail.stream_sequence + 1);
            }
            self.mismatch_resynced = Some(pair);
            return Err(SourceEnd::Resync(ResyncReason::CoreRestarted));
        }
        self.mismatch_resynced = None;
        let wanted = after + 1;
        if tail.position.sequence < wanted {
            return Ok(tail.stream_sequence + 1);
        }
        // Contiguous core sequences between markers: the wanted notice sits this far before the tail.
        let first = info.state.first_sequence.max(1);
        let guess = tail.stream_sequence.saturating_sub(tail.position.sequence - wanted).max(first);
        if let Some(found) = at_or_after(stream, &self.subject, guess).await? {
            if found.position.incarnation == ours && found.position.sequence == wanted && !found.marker {
                return Ok(found.stream_sequence);
            }
        }
        // Markers, other subjects or deleted messages in between: the first message of our history at
        // or past `wanted` is where the consumer starts (the messages of our history before it are
        // older, those of earlier histories come before them all).
        let (mut low, mut high) = (first, tail.stream_sequence);
        while low < high {
            let mid = low + (high - low) / 2;
            match at_or_after(stream, &self.subject, mid).await? {
                Some(found) if found.position.incarnation == ours && found.position.sequence >= wanted => high = mid,
                Some(found) if found.stream_sequence <= high => low = found.stream_sequence.max(mid) + 1,
                _ => low = mid + 1,
            }
        }
        let found = at_or_after(stream, &self.subject, low).await?.unwrap_or(tail);
        let oldest = at_or_after(stream, &self.subject, first).await?;
        let is_oldest = oldest.is_some_and(|oldest| oldest.stream_sequence == found.stream_sequence);
        if is_oldest && !found.marker && found.position.incarnation == ours && found.position.sequence > wanted {
            // The stream's limits dropped what the edge needs (it was away longer than the stream keeps).
            return Err(SourceEnd::Resync(ResyncReason::TooOld));
        }
        Ok(found.stream_sequence)
    }
}

/// One message on the subject, as far as locating is concerned.
#[derive(Debug, Clone)]
struct Located {
    stream_sequence: u64,
    position: Position,
    marker: bool,
}

fn read_failed(stream: &str, error: &dyn std::fmt::Display) -> SourceEnd {
    SourceEnd::Reconnect(format!("reading stream {stream}: {error}"))
}

fn located(message: &async_nats::jetstream::message::StreamMessage) -> Result<Located, SourceEnd> {
    match relay::decode(Some(&message.headers), &message.payload) {
        Ok(entry) => Ok(Located {
            stream_sequence: message.sequence,
            marker: matches!(entry, Entry::Resync { .. }),
            position: entry.position(),
        }),
        Err(error) => {
            tracing::error!(%error, sequence = message.sequence, "feed: a message on the subject is not a relay's");
            Err(SourceEnd::Resync(ResyncReason::MalformedNotice))
        }
    }
}

/// The subject's last message, if any.
async fn last(stream: &JsStream, subject: &str) -> Result<Option<Located>, SourceEnd> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => located(&message).map(Some),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(read_failed(&stream.cached_info().config.name, &error)),
    }
}

/// The first message on the subject at or after stream sequence `sequence`, if any.
async fn at_or_after(stream: &JsStream, subject: &str, sequence: u64) -> Result<Option<Located>, SourceEnd> {
    match stream.get_first_raw_message_by_subject(subject, sequence).await {
        Ok(message) => located(&message).map(Some),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(read_failed(&stream.cached_info().config.name, &error)),
    }
}

fn item(entry: Entry) -> SourceItem {
    match entry {
        Entry::Notice(notice) => SourceItem::Notice(notice),
        Entry::Resync { reason, position } => SourceItem::Resync {
            reason: match reason {
                relay::ResyncReason::TooOld => ResyncReason::TooOld,
                relay::ResyncReason::NewIncarnation => ResyncReason::CoreRestarted,
                relay::ResyncReason::PersistentGap => ResyncReason::PersistentGap,
            },
            continues_from: Some((position.incarnation, position.sequence)),
        },
    }
}

/// What an open stream waits on between items.
struct Following {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    connected: watch::Receiver<bool>,
    probe: tokio::time::Interval,
    stream: Arc<JsStream>,
    subject: String,
    done: bool,
}

impl Following {
    async fn next(&mut self) -> Option<SourceItem> {
        if self.done {
            return None;
        }
        let item = loop {
            tokio::select! {
                message = self.messages.next() => break match message {
                    Some(Ok(message)) => match relay::decode(message.headers.as_ref(), &message.payload) {
                        Ok(entry) => item(entry),
                        Err(error) => {
                            tracing::error!(%error, "feed: a message on the subject is not a relay's");
                            SourceItem::Resync { reason: ResyncReason::MalformedNotice, continues_from: None }
                        }
                    },
                    Some(Err(error)) => SourceItem::Failed(format!("NATS consumer: {error}")),
                    None => SourceItem::Failed("the NATS consumer ended".into()),
                },
                () = lost(&mut self.connected) => break SourceItem::Failed("the NATS connection is lost".into()),
                _ = self.probe.tick() => {
                    // The stream's tail is the head as far as the stream knows: a consumer that falls
                    // behind (or stops) shows as lag, and the stall check reopens it.
                    if let Ok(Some(tail)) = last(&self.stream, &self.subject).await {
                        break SourceItem::Head { incarnation: tail.position.incarnation, sequence: tail.position.sequence };
                    }
                }
            }
        };
        self.done = matches!(item, SourceItem::Failed(_));
        Some(item)
    }
}

/// Completes once the connection is down (or the client is gone).
async fn lost(connected: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here: it must not be held across the caller's awaits.
    let _ = connected.wait_for(|connected| !connected).await.map(drop);
}

impl NoticeSource for NatsSource {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn open<'a>(&'a mut self, after: u64, incarnation: Option<&'a str>) -> BoxFuture<'a, Result<Items, SourceEnd>> {
        async move {
            if !*self.connected.borrow() {
                return Err(SourceEnd::Reconnect(format!("NATS ({}) is not connected", self.stream_name)));
            }
            let stream = self.stream().await?;
            let start_sequence = self.start(&stream, after, incarnation).await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: self.subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                    ..Default::default()
                })
                .await
                .map_err(|e| read_failed(&self.stream_name, &e))?;
            let messages = consumer.messages().await.map_err(|e| read_failed(&self.stream_name, &e))?;
            tracing::debug!(after, start_sequence, stream = self.stream_name, "feed: NATS consumer opened");
            let mut probe = tokio::time::interval(self.head_every);
            probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let following = Following {
                messages,
                connected: self.connected.clone(),
                probe,
                stream: Arc::new(stream),
                subject: self.subject.clone(),
                done: false,
            };
            let items = futures::stream::unfold(following, |mut following| async move {
                following.next().await.map(|item| (item, following))
            });
            Ok(items.boxed())
        }
        .boxed()
    }
}
