//! Where change notices come from. The feed follows one [`NoticeSource`]: the core's own
//! `WatchChanges` stream ([`CoreSource`](super::CoreSource)), or the relay's JetStream stream
//! ([`NatsSource`](super::NatsSource)). Every source yields the same items, so the feed's rules (order,
//! duplicates, gaps, stalls, resyncs, the fence) live in one place, and a third source (Kafka, a
//! bank's own log) is one more implementation of this trait, not another feed.
//!
//! A source only reports what it sees; it never decides what to apply. Resyncs always read the core's
//! `ListMerchants` snapshot directly, whatever the source.
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::ResyncReason;
use crate::pb::ChangeNotice;

/// What a source says next.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A core notice, in the order the source holds them (the feed judges its sequence).
    Notice(ChangeNotice),
    /// The history the source carries breaks here. `continues_from` is where the notices after the
    /// break continue (incarnation, sequence), when the source knows: a feed already at or past that
    /// point in that incarnation has nothing to reload; any other feed resyncs from the core.
    Resync {
        /// Why the source cannot continue contiguously.
        reason: ResyncReason,
        /// Where the history continues after the break.
        continues_from: Option<(String, u64)>,
    },
    /// The core has reached at least `sequence` of `incarnation`, as far as the source can tell (the
    /// tail of a broker's stream): for the lag, stall checks and negative trust.
    Head {
        /// The core history the sequence belongs to.
        incarnation: String,
        /// The sequence.
        sequence: u64,
    },
    /// The stream failed: the feed resumes from its applied sequence after a pause.
    Failed(String),
}

/// Why a stream could not be opened, or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEnd {
    /// Resume from the applied sequence after a pause.
    Reconnect(String),
    /// The history the stores reflect cannot be continued: reload from the core's snapshot.
    Resync(ResyncReason),
}

/// An open stream of items; it ending counts as a failure (the feed reopens it).
pub type Items = BoxStream<'static, SourceItem>;

/// A source of change notices the feed can open from any applied sequence.
pub trait NoticeSource: Send + Sync {
    /// The source's name, for `/readyz`, logs and `merchant_edge_feed_source_info{source}`.
    fn kind(&self) -> &'static str;

    /// Opens a stream of the notices after `after` of `incarnation` (the history the stores reflect;
    /// `None` before the first sync). A source that can tell the history changed says
    /// `Resync(CoreRestarted)`; one that no longer holds what follows `after` says `Resync(TooOld)`.
    /// It need not start exactly at `after + 1`: earlier notices are dropped as duplicates, and a later
    /// first notice is a gap.
    fn open<'a>(&'a mut self, after: u64, incarnation: Option<&'a str>) -> BoxFuture<'a, Result<Items, SourceEnd>>;
}
