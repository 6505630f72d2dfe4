//! The relay's loop: read the stream's tail, watch the core from there, append each next notice onto
//! that tail, and start over from a fresh tail after anything goes wrong. The stream, never the
//! relay's memory, says where to resume, so any number of relays may run and be killed at any moment.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::core::{Core, Watch, WatchError};
use super::message::{Position, ResyncReason};
use super::metrics::{RefusedBy, RelayMetrics, Side};
use super::stream::{Appended, NatsError, Publisher, Tail};
use super::RelayError;
use crate::backoff::Backoff;
use crate::pb::ChangeNotice;

/// What to do with one notice from the core, given the stream's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Already in the stream (another relay appended it, or the core repeated it).
    Skip,
    /// The next one: append it.
    Append,
    /// Notices are missing between the tail and this one: reopen the watch from the tail.
    Gap { expected: u64 },
    /// The core's history changed under the stream's tail.
    NewIncarnation,
}

/// Judges a notice against the stream's tail.
pub fn step(tail: Option<&Position>, notice: &ChangeNotice) -> Step {
    let Some(tail) = tail else {
        // An empty stream takes whatever the core's kept history starts with.
        return Step::Append;
    };
    if notice.incarnation != tail.incarnation {
        return Step::NewIncarnation;
    }
    match notice.sequence {
        sequence if sequence <= tail.sequence => Step::Skip,
        sequence if sequence == tail.sequence + 1 => Step::Append,
        _ => Step::Gap { expected: tail.sequence + 1 },
    }
}

/// Where the stream continues when the core refused to resume from the tail (OUT_OF_RANGE), given
/// where the core is now; or why it cannot continue yet.
pub fn resume_point(tail: Option<&Position>, core: &Position) -> Result<(ResyncReason, Position), String> {
    match tail {
        // Nothing stored yet, and the core trimmed the start of its history: start at its head.
        None => Ok((ResyncReason::TooOld, core.clone())),
        // A new history: its notices follow from its beginning (if it has trimmed that too, the next
        // watch says so and a too-old marker follows).
        Some(tail) if tail.incarnation != core.incarnation => {
            Ok((ResyncReason::NewIncarnation, Position { incarnation: core.incarnation.clone(), sequence: 0 }))
        }
        Some(tail) if core.sequence > tail.sequence => Ok((ResyncReason::TooOld, core.clone())),
        // Same history, head not ahead of the stream, yet no resume: a core that lost changes without
        // saying so. Appending from its head would repeat sequences, so wait for it instead.
        Some(tail) => Err(format!(
            "the core (incarnation {}) is at sequence {} but the stream already holds {}, and the core refuses \
             to resume: it lost changes without a new incarnation; not appending until it is ahead again",
            core.incarnation, core.sequence, tail.sequence
        )),
    }
}

/// How a round ended.
enum Next {
    /// Start the next round at once (the stream moved on: a marker was appended or refused).
    Now,
    /// Pause (backoff), then start over.
    Pause { side: Side, why: String, progressed: bool },
}

fn pause(side: Side, why: impl Into<String>, progressed: bool) -> Next {
    Next::Pause { side, why: why.into(), progressed }
}

/// Gaps at the same tail, in a row, that mean the core's history itself has a hole.
const GAPS_BEFORE_MARKER: u32 = 3;
/// Rounds in a row that may start at once before the loop pauses anyway (a core and a stream that
/// disagree in some way not foreseen here must not make it spin).
const IMMEDIATE_ROUNDS: u32 = 4;

pub struct Follower {
    core: Core,
    publisher: Publisher,
    metrics: Arc<RelayMetrics>,
    backoff: Backoff,
    stall_timeout: Duration,
    /// The tail at the last gaps, and how many gaps in a row happened there.
    gap_streak: (Option<Position>, u32),
    /// A NATS step failed: look the stream up again before the next round.
    reopen: bool,
}

impl Follower {
    pub fn new(
        core: Core,
        publisher: Publisher,
        metrics: Arc<RelayMetrics>,
        backoff: Backoff,
        stall_timeout: Duration,
    ) -> Self {
        Self { core, publisher, metrics, backoff, stall_timeout, gap_streak: (None, 0), reopen: false }
    }

    /// Relays until a failure no retry can fix (the caller stops it by dropping the future).
    pub async fn run(mut self) -> RelayError {
        let mut immediate = 0;
        loop {
            let next = match self.round().await {
                Ok(next) => next,
                Err(NatsError::Fatal(error)) => return error,
                Err(NatsError::Retry(why)) => {
                    self.reopen = true;
                    pause(Side::Nats, why, false)
                }
            };
            self.metrics.core_connected.set(0);
            let (side, why, progressed) = match next {
                Next::Now if immediate < IMMEDIATE_ROUNDS => {
                    immediate += 1;
                    continue;
                }
                Next::Now => (Side::Core, "the stream keeps moving under this relay".to_owned(), false),
                Next::Pause { side, why, progressed } => (side, why, progressed),
            };
            immediate = 0;
            tracing::warn!(?side, %why, "relay: resuming from the stream's tail after a pause");
            self.metrics.set_error(Some(why));
            if progressed {
                self.backoff.reset();
            }
            self.backoff.wait().await;
            self.metrics.reconnect(side);
        }
    }

    fn note_tail(&self, tail: Option<&Tail>) {
        let (sequence, stream_sequence) = tail.map_or((0, 0), |t| (t.position.sequence, t.stream_sequence));
        self.metrics.set_published(sequence, stream_sequence);
    }

    /// One watch: from reading the tail to the watch's end.
    async fn round(&mut self) -> Result<Next, NatsError> {
        if self.reopen {
            self.metrics.set_stream_ready(false);
            self.publisher.reopen().await?;
            self.reopen = false;
        }
        let tail = self.publisher.tail().await?;
        self.metrics.set_stream_ready(true);
        self.note_tail(tail.as_ref());
        if tail.is_none() && self.publisher.ever_stored().await? {
            // The stream's limits (max age, max messages) or a purge removed every message on the
            // subject: where the stream was is unknown, so it goes on from the core's head after a
            // too-old marker rather than replaying the core's whole kept history.
            return self.break_history(None, "the stream's messages on the subject are gone (expired or purged)").await;
        }
        let after = tail.as_ref().map_or(0, |t| t.position.sequence);
        let mut watch = match self.core.watch(after).await {
            Ok(watch) => watch,
            Err(WatchError::OutOfRange(why)) => return self.break_history(tail.as_ref(), &why).await,
            Err(WatchError::Failed(why)) => return Ok(pause(Side::Core, why, false)),
        };
        if let (Some(tail), Some(announced)) = (&tail, &watch.incarnation) {
            if *announced != tail.position.incarnation {
                let position = Position { incarnation: announced.clone(), sequence: 0 };
                return self.mark(Some(tail), ResyncReason::NewIncarnation, position).await;
            }
        }
        self.metrics.core_connected.set(1);
        self.metrics.set_error(None);
        tracing::info!(after, "relay: following the core's changes");
        self.follow(tail, &mut watch, after).await
    }

    /// Appends the watch's notices until it ends.
    async fn follow(&mut self, mut tail: Option<Tail>, watch: &mut Watch, after: u64) -> Result<Next, NatsError> {
        let mut progressed = false;
        let mut received = after;
        let mut last_received = Instant::now();
        let check_every = self.stall_timeout / 4;
        let mut probe = tokio::time::interval_at(Instant::now() + check_every, check_every);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let notice = tokio::select! {
                next = watch.next() => match next {
                    Ok(Some(notice)) => notice,
                    Ok(None) => return Ok(pause(Side::Core, "the core closed the stream", progressed)),
                    Err(WatchError::OutOfRange(why)) => return self.break_history(tail.as_ref(), &why).await,
                    Err(WatchError::Failed(why)) => return Ok(pause(Side::Core, why, progressed)),
                },
                _ = probe.tick() => {
                    if let Some(why) = self.stalled(watch, tail.as_ref(), received, last_received).await {
                        return Ok(pause(Side::Core, why, progressed));
                    }
                    continue;
                }
            };
            let mut notice = notice;
            if notice.incarnation.is_empty() {
                // A core that names its incarnation only in the stream header: every stored notice names it.
                notice.incarnation = watch.incarnation.clone().unwrap_or_default();
            }
            received = received.max(notice.sequence);
            last_received = Instant::now();
            // The same notice is judged again after the tail moved under it.
            loop {
                match step(tail.as_ref().map(|t| &t.position), &notice) {
                    Step::Skip => {
                        self.metrics.skipped.inc();
                        break;
                    }
                    Step::NewIncarnation => {
                        let position = Position { incarnation: notice.incarnation.clone(), sequence: 0 };
                        return self.mark(tail.as_ref(), ResyncReason::NewIncarnation, position).await;
                    }
                    Step::Gap { expected } => return self.gap(tail.as_ref(), expected, &notice, progressed).await,
                    Step::Append => match self.publisher.append_notice(tail.as_ref(), &notice).await? {
                        Appended::Stored(stored) => {
                            self.metrics.publishes.inc();
                            progressed = true;
                            self.gap_streak = (None, 0);
                            tail = Some(stored);
                            self.note_tail(tail.as_ref());
                            break;
                        }
                        Appended::Duplicate(stored) => {
                            self.metrics.refused(RefusedBy::MsgId);
                            tail = Some(stored);
                            self.note_tail(tail.as_ref());
                            break;
                        }
                        Appended::TailMoved => {
                            self.metrics.refused(RefusedBy::ExpectedLast);
                            let had_tail = tail.is_some();
                            tail = self.publisher.tail().await?;
                            self.note_tail(tail.as_ref());
                            if had_tail && tail.is_none() {
                                // Emptied under us (purged, or expired): the next round decides from scratch.
                                return Ok(Next::Now);
                            }
                        }
                    },
                }
            }
            // In order (appended, or already in the stream): the watch is applied up to here.
            self.metrics.set_applied(notice.sequence);
        }
    }

    /// A gap reopens the watch from the tail; the same gap again and again means a hole in the core's
    /// history, which a marker steps over.
    async fn gap(
        &mut self,
        tail: Option<&Tail>,
        expected: u64,
        notice: &ChangeNotice,
        progressed: bool,
    ) -> Result<Next, NatsError> {
        self.metrics.gaps.inc();
        let at = tail.map(|t| t.position.clone());
        let streak = if self.gap_streak.0 == at { self.gap_streak.1 + 1 } else { 1 };
        self.gap_streak = (at, streak);
        if streak < GAPS_BEFORE_MARKER {
            let why = format!("gap: expected sequence {expected}, got {}", notice.sequence);
            return Ok(pause(Side::Core, why, progressed));
        }
        self.gap_streak = (None, 0);
        let core = match self.core.position().await {
            Ok(core) => core,
            Err(why) => return Ok(pause(Side::Core, why, progressed)),
        };
        self.metrics.set_core_head(core.sequence);
        if tail.is_some_and(|t| t.position.incarnation != core.incarnation || t.position.sequence >= core.sequence) {
            return Ok(pause(Side::Core, "persistent gap, but the core moved; retrying", progressed));
        }
        self.mark(tail, ResyncReason::PersistentGap, core).await
    }

    /// The core refused to resume from the tail: append the marker that says where the stream goes on.
    async fn break_history(&mut self, tail: Option<&Tail>, why: &str) -> Result<Next, NatsError> {
        let core = match self.core.position().await {
            Ok(core) => core,
            Err(probe) => return Ok(pause(Side::Core, format!("{why}; and reading the core's head: {probe}"), false)),
        };
        self.metrics.set_core_head(core.sequence);
        match resume_point(tail.map(|t| &t.position), &core) {
            Ok((reason, position)) => self.mark(tail, reason, position).await,
            Err(refusal) => {
                tracing::error!(%refusal, "relay: not appending");
                Ok(pause(Side::Core, refusal, false))
            }
        }
    }

    async fn mark(&mut self, tail: Option<&Tail>, reason: ResyncReason, position: Position) -> Result<Next, NatsError> {
        self.metrics.history_break(reason);
        tracing::warn!(
            reason = reason.as_str(),
            from = ?tail.map(|t| &t.position),
            to = ?position,
            "relay: the core's history breaks here; appending a resync marker"
        );
        match self.publisher.append_marker(tail, reason, position).await? {
            Appended::Stored(_) => self.metrics.marker(reason),
            Appended::Duplicate(_) => self.metrics.refused(RefusedBy::MsgId),
            // Another relay appended first (perhaps the same marker); the next round judges its tail.
            Appended::TailMoved => self.metrics.refused(RefusedBy::ExpectedLast),
        }
        Ok(Next::Now)
    }

    /// Why the watch should be reopened: the core restarted, or it is ahead while the watch brings
    /// nothing for `stall_timeout`.
    async fn stalled(&self, watch: &Watch, tail: Option<&Tail>, received: u64, last: Instant) -> Option<String> {
        let core = match self.core.position().await {
            Ok(core) => core,
            Err(why) => {
                tracing::warn!(%why, "relay: head probe failed");
                return None;
            }
        };
        self.metrics.set_core_head(core.sequence);
        let known = watch.incarnation.as_ref().or(tail.map(|t| &t.position.incarnation));
        if known.is_some_and(|known| *known != core.incarnation) {
            return Some(format!("the core restarted (incarnation {})", core.incarnation));
        }
        let quiet = last.elapsed();
        (core.sequence > received && quiet >= self.stall_timeout).then(|| {
            format!(
                "stalled: the core is at {} but the watch brought nothing after {received} for {quiet:?}",
                core.sequence
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(incarnation: &str, sequence: u64) -> Position {
        Position { incarnation: incarnation.into(), sequence }
    }

    fn notice(incarnation: &str, sequence: u64) -> ChangeNotice {
        ChangeNotice { sequence, incarnation: incarnation.into(), ..Default::default() }
    }

    #[test]
    fn a_notice_is_appended_only_right_after_the_tail() {
        let tail = at("a", 5);
        assert_eq!(step(None, &notice("a", 1)), Step::Append);
        assert_eq!(step(Some(&tail), &notice("a", 6)), Step::Append);
        assert_eq!(step(Some(&tail), &notice("a", 5)), Step::Skip);
        assert_eq!(step(Some(&tail), &notice("a", 2)), Step::Skip);
        assert_eq!(step(Some(&tail), &notice("a", 8)), Step::Gap { expected: 6 });
        assert_eq!(step(Some(&tail), &notice("b", 6)), Step::NewIncarnation);
    }

    #[test]
    fn out_of_range_resumes_at_the_head_or_the_new_history_and_never_repeats_sequences() {
        let core = at("a", 900);
        assert_eq!(resume_point(None, &core), Ok((ResyncReason::TooOld, core.clone())));
        assert_eq!(resume_point(Some(&at("a", 10)), &core), Ok((ResyncReason::TooOld, core.clone())));
        assert_eq!(resume_point(Some(&at("old", 10)), &core), Ok((ResyncReason::NewIncarnation, at("a", 0))));
        assert!(resume_point(Some(&at("a", 900)), &core).is_err());
        assert!(resume_point(Some(&at("a", 950)), &core).is_err());
    }
}
