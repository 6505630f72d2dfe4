//! The stream's message format: what the relay appends and what an edge-side NATS notice source reads.
//!
//! Every message on the relay's subject is one of two kinds, told apart by the `Merchant-Resync` header:
//! - a **notice**: the payload is the core's `merchant.v1.ChangeNotice` protobuf, unchanged; the headers
//!   repeat its sequence and incarnation so a reader can judge order without decoding.
//! - a **resync marker** (`Merchant-Resync` set, empty payload): the core's history cannot be continued
//!   contiguously here (too old, a new incarnation, a persistent gap); the notices after it continue
//!   from `Merchant-Core-Sequence` of `Merchant-Core-Incarnation`. A reader resyncs from the core's
//!   snapshot, as on OUT_OF_RANGE from `WatchChanges`.
//!
//! Both kinds carry `Nats-Msg-Id`, so the stream's duplicate window refuses a second copy.
use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message as _;

use crate::pb::ChangeNotice;

/// The core sequence of the notice (for a marker: the sequence the notices after it continue from).
pub const SEQUENCE_HEADER: &str = "Merchant-Core-Sequence";
/// The core's history incarnation the sequence belongs to.
pub const INCARNATION_HEADER: &str = "Merchant-Core-Incarnation";
/// Present only on resync markers: why the history is not contiguous here (see [`ResyncReason`]).
pub const RESYNC_HEADER: &str = "Merchant-Resync";
/// JetStream's de-duplication header (the server refuses a second message with the same ID within the
/// stream's duplicate window).
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Why a resync marker was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResyncReason {
    /// The core trimmed the history after the stream's last notice (OUT_OF_RANGE): the notices in
    /// between are lost; the stream continues from the core's head.
    TooOld,
    /// The core restarted with a new history: sequences start over in the new incarnation.
    NewIncarnation,
    /// The core kept skipping the same notice: its history has a hole the relay cannot fill.
    PersistentGap,
}

impl ResyncReason {
    /// Every reason, in a fixed order.
    pub const ALL: [Self; 3] = [Self::TooOld, Self::NewIncarnation, Self::PersistentGap];

    /// The header value (and metric label, with `_` for `-`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooOld => "too-old",
            Self::NewIncarnation => "new-incarnation",
            Self::PersistentGap => "persistent-gap",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == value)
    }
}

/// Where a message puts the stream: every notice of `incarnation` up to `sequence` is in the stream
/// (since the last marker), and the next notice must be `sequence + 1` of the same incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The core history (incarnation) the sequence belongs to.
    pub incarnation: String,
    /// The core sequence.
    pub sequence: u64,
}

/// One decoded stream message.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A core notice, as the core sent it.
    Notice(ChangeNotice),
    /// A resync marker: the history breaks here and goes on from `position`.
    Resync {
        /// Why the history breaks.
        reason: ResyncReason,
        /// Where the notices after the marker continue from.
        position: Position,
    },
}

impl Entry {
    /// The position the stream is at after this message.
    pub fn position(&self) -> Position {
        match self {
            Self::Notice(notice) => Position { incarnation: notice.incarnation.clone(), sequence: notice.sequence },
            Self::Resync { position, .. } => position.clone(),
        }
    }
}

/// A message on the relay's subject that is not in the format above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A header the format needs is missing.
    #[error(
        "message without a {0} header: the subject carries messages that no relay wrote; give the relay \
         a subject of its own (--subject)"
    )]
    MissingHeader(&'static str),
    /// A header does not hold what it should.
    #[error("header {header} has {value:?}, which is not a {expected}")]
    BadHeader {
        /// The header.
        header: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The payload does not decode.
    #[error("the payload is not a merchant.v1.ChangeNotice: {0}")]
    BadPayload(String),
    /// The headers and the notice disagree on its position.
    #[error(
        "the headers say {header_incarnation}:{header_sequence} but the notice is \
         {notice_incarnation}:{notice_sequence}"
    )]
    Mismatch {
        /// The incarnation in the headers.
        header_incarnation: String,
        /// The sequence in the headers.
        header_sequence: u64,
        /// The incarnation in the notice.
        notice_incarnation: String,
        /// The sequence in the notice.
        notice_sequence: u64,
    },
}

/// The de-duplication ID of a notice: `<incarnation>:<sequence>`.
pub fn notice_msg_id(position: &Position) -> String {
    format!("{}:{}", position.incarnation, position.sequence)
}

/// The de-duplication ID of a marker, distinct from any notice's.
pub fn marker_msg_id(reason: ResyncReason, position: &Position) -> String {
    format!("{}:{}:resync:{}", position.incarnation, position.sequence, reason.as_str())
}

fn position_headers(position: &Position, msg_id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, msg_id.as_str());
    headers.insert(SEQUENCE_HEADER, position.sequence.to_string().as_str());
    headers.insert(INCARNATION_HEADER, position.incarnation.as_str());
    headers
}

/// Headers and payload for a notice. The notice must name its incarnation (the relay fills it in from
/// the `WatchChanges` header when a core leaves it out), so every stored notice does.
pub fn encode_notice(notice: &ChangeNotice) -> (HeaderMap, Bytes) {
    let position = Position { incarnation: notice.incarnation.clone(), sequence: notice.sequence };
    (position_headers(&position, notice_msg_id(&position)), Bytes::from(notice.encode_to_vec()))
}

/// Headers (and the empty payload) for a resync marker.
pub fn encode_marker(reason: ResyncReason, position: &Position) -> (HeaderMap, Bytes) {
    let mut headers = position_headers(position, marker_msg_id(reason, position));
    headers.insert(RESYNC_HEADER, reason.as_str());
    (headers, Bytes::new())
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, MessageError> {
    headers.get(name).map(|value| value.as_str()).ok_or(MessageError::MissingHeader(name))
}

/// Reads one stream message (headers and payload as the consumer delivered them).
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Entry, MessageError> {
    let headers = headers.ok_or(MessageError::MissingHeader(SEQUENCE_HEADER))?;
    let raw_sequence = header(headers, SEQUENCE_HEADER)?;
    let sequence = raw_sequence.parse().map_err(|_| MessageError::BadHeader {
        header: SEQUENCE_HEADER,
        value: raw_sequence.to_owned(),
        expected: "core sequence number",
    })?;
    let incarnation = header(headers, INCARNATION_HEADER)?.to_owned();
    let position = Position { incarnation, sequence };
    if let Some(value) = headers.get(RESYNC_HEADER) {
        let reason = ResyncReason::parse(value.as_str()).ok_or_else(|| MessageError::BadHeader {
            header: RESYNC_HEADER,
            value: value.as_str().to_owned(),
            expected: "resync reason (too-old, new-incarnation, persistent-gap)",
        })?;
        return Ok(Entry::Resync { reason, position });
    }
    let notice = ChangeNotice::decode(payload).map_err(|e| MessageError::BadPayload(e.to_string()))?;
    if notice.sequence != position.sequence || notice.incarnation != position.incarnation {
        return Err(MessageError::Mismatch {
            header_incarnation: position.incarnation,
            header_sequence: position.sequence,
            notice_incarnation: notice.incarnation,
            notice_sequence: notice.sequence,
        });
    }
    Ok(Entry::Notice(notice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::ChangeKind;

    fn notice(sequence: u64) -> ChangeNotice {
        ChangeNotice {
            sequence,
            merchant_id: "898000000000042".into(),
            kind: ChangeKind::Delete.into(),
            incarnation: "inc-a".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_notice_round_trips_with_its_position_in_the_headers() {
        let (headers, payload) = encode_notice(&notice(7));
        assert_eq!(headers.get(MSG_ID_HEADER).unwrap().as_str(), "inc-a:7");
        assert_eq!(headers.get(SEQUENCE_HEADER).unwrap().as_str(), "7");
        assert_eq!(headers.get(INCARNATION_HEADER).unwrap().as_str(), "inc-a");
        assert_eq!(decode(Some(&headers), &payload).unwrap(), Entry::Notice(notice(7)));
    }

    #[test]
    fn a_marker_round_trips_and_its_id_differs_from_the_notice_at_the_same_position() {
        let position = Position { incarnation: "inc-b".into(), sequence: 0 };
        let (headers, payload) = encode_marker(ResyncReason::NewIncarnation, &position);
        assert!(payload.is_empty());
        assert_ne!(headers.get(MSG_ID_HEADER).unwrap().as_str(), notice_msg_id(&position));
        let entry = decode(Some(&headers), &payload).unwrap();
        assert_eq!(entry, Entry::Resync { reason: ResyncReason::NewIncarnation, position: position.clone() });
        assert_eq!(entry.position(), position);
    }

    #[test]
    fn foreign_and_inconsistent_messages_are_refused_with_the_reason() {
        assert_eq!(decode(None, b"x"), Err(MessageError::MissingHeader(SEQUENCE_HEADER)));
        let (mut headers, payload) = encode_notice(&notice(7));
        headers.insert(SEQUENCE_HEADER, "8");
        assert!(matches!(decode(Some(&headers), &payload), Err(MessageError::Mismatch { .. })));
        headers.insert(SEQUENCE_HEADER, "seven");
        assert!(matches!(decode(Some(&headers), &payload), Err(MessageError::BadHeader { .. })));
    }
}
