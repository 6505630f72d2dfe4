//! The change feed: follows the core's change notices so that every change reaches the stores within
//! milliseconds, and recovers from every way the stream can go wrong.
//!
//! The notices come from a [`NoticeSource`]: the core's own `WatchChanges` ([`CoreSource`], the
//! default) or the relays' NATS JetStream stream ([`NatsSource`], `feed.source = "nats"`). The rules
//! below are the feed's, whatever the source; snapshots are always read from the core.
//!
//! - Notices are applied in sequence order; a repeat (sequence already applied) is dropped.
//! - A gap, a stream error or end, or a stall (reads show the core ahead for `stall_timeout` while
//!   nothing arrives) reopens the stream from the applied sequence, with backoff and jitter.
//! - "Too old" (OUT_OF_RANGE: the core trimmed the history we need), a restarted core (a new
//!   incarnation, or a head behind ours) and a malformed notice trigger a resync: fills in flight are
//!   fenced off, every negative entry is dropped, positives are reloaded or re-validated from a
//!   `ListMerchants` snapshot, and the stream resumes from the snapshot's sequence.
//! - Warm start loads the whole snapshot before the edge reports ready; cold start only learns the
//!   core's head and incarnation.
mod config;
mod metrics;
pub mod notice;
mod source;
mod source_core;
mod source_nats;
mod state;

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;
use tracing::Instrument;

use std::sync::Arc;

pub use self::config::{FeedConfig, SourceKind};
pub use self::metrics::{FeedMetrics, ResyncReason};
pub use self::source::{Items, NoticeSource, SourceEnd, SourceItem};
pub use self::source_core::CoreSource;
pub use self::source_nats::{NatsSource, NatsSourceError};
pub use self::state::{FeedState, Lag};
use crate::backoff::Backoff;
use crate::cache::Cache;
use crate::live::Live;
use crate::pb::merchant_core_client::MerchantCoreClient;
use crate::pb::ChangeNotice;
use crate::readiness::Readiness;
use crate::upstream::describe_status;
use crate::wire::{ListedMerchants, ListingClient, ListingPage, ListingRequest};

/// Aborts a helper task when the sync that started it ends early (an error, or being cancelled).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A snapshot page whose merchants were checked (see [`ListedMerchants::check`]).
struct Page {
    merchants: ListedMerchants,
    next_page_token: String,
    as_of_sequence: u64,
    incarnation: String,
}

/// Checks a snapshot page's merchants: a page with one the edge could not answer with fails whole,
/// like a page that does not decode, and the sync is retried.
fn checked(page: ListingPage) -> Result<Page, Status> {
    let merchants =
        ListedMerchants::check(page.merchants).map_err(|malformed| Status::data_loss(malformed.to_string()))?;
    let ListingPage { next_page_token, as_of_sequence, incarnation, .. } = page;
    Ok(Page { merchants, next_page_token, as_of_sequence, incarnation })
}

/// Reads one snapshot page and checks it.
async fn read_page(core: &mut ListingClient<Channel>, request: ListingRequest) -> Result<Page, Status> {
    checked(core.list_merchants(request).await?.into_inner())
}

/// Asks for one snapshot page on its own task (stopped if the answer is no longer wanted).
fn ask_for_page(
    core: &ListingClient<Channel>,
    request: &ListingRequest,
) -> (JoinHandle<Result<ListingPage, Status>>, AbortOnDrop) {
    let (mut core, request) = (core.clone(), request.clone());
    let call = tokio::spawn(
        async move { core.list_merchants(request).await.map(tonic::Response::into_inner) }.in_current_span(),
    );
    let stop = AbortOnDrop(call.abort_handle());
    (call, stop)
}

/// Reads snapshot pages from `request` on, in order, until the last one or an error. The next page is
/// asked for as soon as a page arrives, before its merchants are checked, so the core builds one page
/// while the edge checks the one before.
async fn fetch_pages(
    core: ListingClient<Channel>,
    mut request: ListingRequest,
    pages: mpsc::Sender<Result<Page, Status>>,
) {
    let mut next = Some(ask_for_page(&core, &request));
    while let Some((call, _stop)) = next.take() {
        let page = call.await.unwrap_or_else(|_| Err(Status::aborted("the snapshot page call stopped")));
        let page = page.and_then(|page| {
            if !page.next_page_token.is_empty() {
                request.page_token = page.next_page_token.clone();
                next = Some(ask_for_page(&core, &request));
            }
            checked(page)
        });
        let failed = page.is_err();
        if pages.send(page).await.is_err() || failed {
            return;
        }
    }
}

/// How the stores must be brought in step with the core before following the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Load every merchant, then follow.
    WarmStart,
    /// Learn the head and incarnation only; the stores start empty.
    ColdStart,
    Resync(ResyncReason),
}

/// Why a stream ended (the sources' own vocabulary).
type StreamEnd = SourceEnd;

/// The source `settings` name: the core's watch, or a connection to NATS (made in the background,
/// its state kept in `state` for `/readyz` and the metrics).
pub async fn source_for(
    settings: &FeedConfig,
    core: MerchantCoreClient<Channel>,
    state: &FeedState,
) -> Result<Box<dyn NoticeSource>, NatsSourceError> {
    Ok(match settings.source {
        SourceKind::Core => Box::new(CoreSource::new(core)),
        SourceKind::Nats => Box::new(NatsSource::connect(settings, state.follow_nats()).await?),
    })
}

/// What the feed works with: the cache it writes, the state it keeps for the lookup path, the
/// readiness it reports, its live settings and its metrics.
pub struct FeedParts {
    /// The core whose snapshots are read (warm start, resyncs).
    pub core: ListingClient<Channel>,
    /// Where the notices come from (see [`source_for`]).
    pub source: Box<dyn NoticeSource>,
    /// Where changes are applied.
    pub cache: Arc<Cache>,
    /// What the lookup path reads about the feed.
    pub state: Arc<FeedState>,
    /// Readiness, reported once warm and per the stream's health.
    pub readiness: Readiness,
    /// The feed's settings, live.
    pub settings: Live<FeedConfig>,
    /// The feed's metrics.
    pub metrics: FeedMetrics,
}

/// A place in the core's history that the stores already reflect (a local snapshot's): the feed
/// resumes the stream from it instead of syncing first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Every change up to this sequence is in the stores.
    pub sequence: u64,
    /// The core history the sequence belongs to.
    pub incarnation: String,
}

/// Follows a notice source into the cache (snapshots from the core).
pub struct ChangeFeed {
    core: ListingClient<Channel>,
    source: Box<dyn NoticeSource>,
    cache: Arc<Cache>,
    state: Arc<FeedState>,
    readiness: Readiness,
    settings: Live<FeedConfig>,
    metrics: FeedMetrics,
    /// The core history the stores reflect, once known.
    incarnation: Option<String>,
    /// The applied sequence at the last gaps, and how many gaps in a row happened there.
    gap_streak: (u64, u32),
    /// Where to resume from instead of syncing first (taken when [`Self::run`] starts).
    resume: Option<Position>,
    /// Report the edge ready at the next sync or stream opened (a warm start, or a resume whose edge
    /// waits for the core).
    ready_when_following: bool,
}

/// Gaps at the same sequence, in a row, that mean the history itself has a hole.
const GAPS_BEFORE_RESYNC: u32 = 3;

impl ChangeFeed {
    /// A feed that has not synced yet.
    pub fn new(parts: FeedParts) -> Self {
        let FeedParts { core, source, cache, state, readiness, settings, metrics } = parts;
        metrics.set_source(source.kind());
        readiness.set_feed_source(source.kind());
        Self {
            core,
            source,
            cache,
            state,
            readiness,
            settings,
            metrics,
            incarnation: None,
            gap_streak: (0, 0),
            resume: None,
            ready_when_following: false,
        }
    }
    /// Resumes the stream from `position` (the stores were restored to it) instead of syncing first:
    /// with the core's history still there, only the missed notices are read; "too old" or another
    /// incarnation resyncs as usual. `report_ready` makes the edge ready once the stream is open (an
    /// edge that does not serve from its snapshot while the core is down).
    pub fn resume_from(mut self, position: Position, report_ready: bool) -> Self {
        self.resume = Some(position);
        self.ready_when_following = report_ready;
        self
    }

    /// The feed settings in force now (a reload may change them between streams).
    fn settings(&self) -> FeedConfig {
        self.settings.load().clone()
    }

    /// Follows the feed forever (the caller stops it by dropping the future).
    pub async fn run(mut self) {
        let settings = self.settings();
        let mut backoff = Backoff::new(settings.reconnect_initial_backoff, settings.reconnect_max_backoff);
        let mut pending = match self.resume.take() {
            Some(Position { sequence, incarnation }) => {
                tracing::info!(sequence, %incarnation, "feed: resuming from the local snapshot's position");
                self.state.restart_at(sequence);
                self.state.set_incarnation(Some(&incarnation));
                self.incarnation = Some(incarnation);
                None
            }
            None => {
                self.ready_when_following = settings.warm_start;
                Some(if settings.warm_start { Sync::WarmStart } else { Sync::ColdStart })
            }
        };
        loop {
            if let Some(sync) = pending.take() {
                self.state.mark_down();
                if let Err(status) = self.sync(sync).await {
                    tracing::warn!(?sync, error = %describe_status(&status), "feed: sync with the core failed; retrying");
                    pending = Some(sync);
                    backoff.wait().await;
                    continue;
                }
                if std::mem::take(&mut self.ready_when_following) {
                    self.readiness.set(true).await;
                }
            }
            let opened = Instant::now();
            let (end, applied_any) = self.follow_stream().await;
            self.state.mark_down();
            self.readiness.set_feed(false).await;
            match end {
                StreamEnd::Resync(reason) => {
                    tracing::warn!(?reason, applied = self.state.applied(), "feed: resync needed");
                    pending = Some(Sync::Resync(reason));
                }
                StreamEnd::Reconnect(why) => {
                    tracing::warn!(%why, applied = self.state.applied(), "feed: change stream lost; resuming");
                }
            }
            let settings = self.settings();
            backoff.reconfigure(settings.reconnect_initial_backoff, settings.reconnect_max_backoff);
            if applied_any || opened.elapsed() >= settings.reconnect_max_backoff {
                backoff.reset();
            }
            backoff.wait().await;
            self.metrics.reconnects.inc();
        }
    }

    /// Brings the stores in step with the core. A snapshot from a different incarnation than the
    /// stores reflect means the core restarted with a new history (its head may even have gone
    /// backwards, which the stream reports only as OUT_OF_RANGE): then nothing stored is kept.
    async fn sync(&mut self, sync: Sync) -> Result<(), Status> {
        let started = Instant::now();
        let settings = self.settings();
        let page_size = if sync == Sync::ColdStart { 1 } else { settings.snapshot_page_size.get() };
        let mut request = ListingRequest { page_size, page_token: String::new() };
        let mut page = read_page(&mut self.core, request.clone()).await?;
        let (sequence, incarnation) = (page.as_of_sequence, page.incarnation.clone());
        // Whatever was stored before the first sync, or from another history, cannot be vouched for.
        let history_changed = self.incarnation.as_ref() != Some(&incarnation);
        // From here until the sync ends the stores are in no single position of the core's history.
        self.state.set_incarnation(None);
        let reason = match sync {
            _ if history_changed && self.incarnation.is_some() => Some(ResyncReason::CoreRestarted),
            Sync::Resync(reason) => Some(reason),
            Sync::WarmStart | Sync::ColdStart => None,
        };
        self.cache.begin_resync(history_changed).await;
        if sync == Sync::ColdStart {
            self.state.restart_at(sequence);
            self.state.set_incarnation(Some(&incarnation));
            self.incarnation = Some(incarnation);
            tracing::info!(sequence, "feed: cold start; following changes");
            return Ok(());
        }
        let load_all = sync == Sync::WarmStart || settings.warm_start;
        let mut merchants = 0usize;
        // The next pages are fetched on their own task while this one installs, so reading the
        // snapshot and storing it overlap instead of taking turns.
        let (pages, mut next_pages) = mpsc::channel(2);
        let fetcher = (!page.next_page_token.is_empty()).then(|| {
            request.page_token = page.next_page_token.clone();
            let span = tracing::info_span!("snapshot_fetch", ?sync, sequence);
            tokio::spawn(fetch_pages(self.core.clone(), request, pages).instrument(span))
        });
        let _stop_fetching = fetcher.map(|task| task.abort_handle()).map(AbortOnDrop);
        // Before a warm start nothing is served yet, so pages install on every core at once (pages hold
        // distinct IDs, so their order does not matter); a resync while serving installs one page at a
        // time and leaves the other cores to lookups.
        let installers = match sync {
            Sync::WarmStart => std::thread::available_parallelism().map_or(1, usize::from),
            _ => 1,
        };
        // Dropped with the sync, which aborts installs still running if it ends early.
        let mut installing = JoinSet::new();
        loop {
            if page.incarnation != incarnation {
                return Err(Status::aborted("the core restarted during the snapshot"));
            }
            merchants += page.merchants.len();
            let last = page.next_page_token.is_empty();
            if installing.len() == installers {
                installing.join_next().await.expect("an install is running").expect("installing a page never panics");
            }
            let (cache, as_of_sequence) = (self.cache.clone(), page.as_of_sequence);
            let install = async move { cache.install_snapshot_page(page.merchants, as_of_sequence, load_all).await };
            installing.spawn(install.in_current_span());
            if last {
                break;
            }
            page = next_pages.recv().await.unwrap_or_else(|| Err(Status::aborted("the snapshot reader stopped")))?;
        }
        while let Some(installed) = installing.join_next().await {
            installed.expect("installing a page never panics");
        }
        self.cache.finish_resync(sequence).await;
        self.state.restart_at(sequence);
        self.state.set_incarnation(Some(&incarnation));
        self.incarnation = Some(incarnation);
        if let Some(reason) = reason {
            self.metrics.count_resync(reason);
            self.state.record_resync(reason);
        }
        tracing::info!(?sync, ?reason, merchants, sequence, elapsed = ?started.elapsed(), "feed: snapshot loaded");
        Ok(())
    }

    /// Reads one stream until it ends; returns why, and whether it applied anything.
    async fn follow_stream(&mut self) -> (StreamEnd, bool) {
        let after = self.state.applied();
        let source = self.source.kind();
        let mut items = match self.source.open(after, self.incarnation.as_deref()).await {
            Ok(items) => items,
            Err(end) => return (end, false),
        };
        self.state.mark_connected();
        self.readiness.set_feed(true).await;
        if std::mem::take(&mut self.ready_when_following) {
            self.readiness.set(true).await;
        }
        tracing::info!(after, source, "feed: following changes");
        let mut applied_any = false;
        let mut last_progress = Instant::now();
        let patience = self.settings().stall_timeout;
        let check_every = patience / 4;
        let mut stall_check = tokio::time::interval_at(last_progress + check_every, check_every);
        loop {
            tokio::select! {
                item = items.next() => {
                    let end = match item {
                        Some(SourceItem::Notice(notice)) => match self.apply(&notice).await {
                            Ok(applied) => {
                                if applied {
                                    applied_any = true;
                                    last_progress = Instant::now();
                                }
                                continue;
                            }
                            Err(end) => end,
                        },
                        Some(SourceItem::Resync { reason, continues_from }) => {
                            if self.already_past(continues_from.as_ref()) {
                                tracing::debug!(?reason, ?continues_from, "feed: the stores are already past this break");
                                continue;
                            }
                            StreamEnd::Resync(reason)
                        }
                        Some(SourceItem::Head { incarnation, sequence }) => {
                            if self.incarnation.as_ref() == Some(&incarnation) {
                                self.state.observe_head(sequence);
                            }
                            continue;
                        }
                        Some(SourceItem::Failed(why)) => StreamEnd::Reconnect(why),
                        None => StreamEnd::Reconnect(format!("the {source} stream ended")),
                    };
                    return (end, applied_any);
                }
                _ = stall_check.tick() => {
                    let now = Instant::now();
                    if self.state.behind_for(patience, now) && now.duration_since(last_progress) >= patience {
                        let lag = self.state.lag(Instant::now());
                        return (StreamEnd::Reconnect(format!("stalled: {} behind for {:?}", crate::text::count(lag.notices, "notice", "notices"), lag.duration)), applied_any);
                    }
                }
            }
        }
    }

    /// Whether the stores already reflect the history up to where a break says it continues from
    /// (a source replaying a resync marker the feed has already resynced past).
    fn already_past(&self, continues_from: Option<&(String, u64)>) -> bool {
        continues_from.is_some_and(|(incarnation, sequence)| {
            self.incarnation.as_ref() == Some(incarnation) && *sequence <= self.state.applied()
        })
    }

    /// Applies one notice if it is the next in sequence; returns whether it was applied (false for a
    /// repeat), or why the stream must end.
    async fn apply(&mut self, notice: &ChangeNotice) -> Result<bool, StreamEnd> {
        if self.incarnation.as_ref().is_some_and(|known| !notice.incarnation.is_empty() && *known != notice.incarnation)
        {
            return Err(StreamEnd::Resync(ResyncReason::CoreRestarted));
        }
        let applied = self.state.applied();
        if notice.sequence <= applied {
            self.metrics.notices_duplicate.inc();
            return Ok(false);
        }
        if notice.sequence != applied + 1 {
            self.metrics.gaps.inc();
            let streak = if self.gap_streak.0 == applied { self.gap_streak.1 + 1 } else { 1 };
            self.gap_streak = (applied, streak);
            if streak >= GAPS_BEFORE_RESYNC {
                return Err(StreamEnd::Resync(ResyncReason::PersistentGap));
            }
            let gap = format!("gap: expected sequence {}, got {}", applied + 1, notice.sequence);
            return Err(StreamEnd::Reconnect(gap));
        }
        let change = match notice::parse(notice) {
            Ok(change) => change,
            Err(problem) => {
                tracing::error!(%problem, "feed: the core sent a notice the edge cannot apply");
                return Err(StreamEnd::Resync(ResyncReason::MalformedNotice));
            }
        };
        // While the feed is behind, a "not found" it writes is trusted only as long as any other.
        let negative_cap = self.state.negative_ttl(Duration::MAX, self.settings.load().negative_ttl_when_down);
        self.cache.apply_change(&notice.merchant_id, change.merchant(), notice.sequence, negative_cap).await;
        self.state.set_applied(notice.sequence);
        self.metrics.notices_applied.inc();
        if let Some(committed) = notice.committed_at.and_then(|at| SystemTime::try_from(at).ok()) {
            let delay = SystemTime::now().duration_since(committed).unwrap_or(Duration::ZERO);
            self.metrics.commit_to_apply.observe(delay.as_secs_f64());
        }
        Ok(true)
    }
}
