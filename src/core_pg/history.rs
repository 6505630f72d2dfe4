//! The change history core-pg serves `WatchChanges` from: the last `limit` notices decoded from the
//! slot, contiguous by sequence, each with the WAL position its transaction ended at.
//!
//! - Whole transactions are appended at once (at their commit), so a subscriber never sees half of one.
//! - Until a watermark has been decoded after connecting (see [`History::sync`]), the history does not
//!   know where it starts: streams wait instead of answering "too old".
//! - The slot may be confirmed only up to the end of the last transaction evicted whole
//!   ([`History::confirmable`]): a restart then replays exactly what was kept.
//! - A new incarnation (another database, or a failover) replaces the history; open streams end.
use std::collections::VecDeque;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::pb::ChangeNotice;

/// One kept notice and the WAL position just past its transaction's commit.
struct Kept {
    notice: ChangeNotice,
    end_lsn: u64,
}

struct State {
    incarnation: String,
    /// Bumped whenever the history is replaced by another incarnation's.
    epoch: u64,
    /// The sequence just before the first kept notice; `None` until known.
    base: Option<u64>,
    notices: VecDeque<Kept>,
    /// Every transaction ending at or before this WAL position has been evicted whole.
    confirmable: u64,
    /// The end of the last transaction appended: where a reconnect resumes.
    resume: u64,
}

impl State {
    fn head(&self) -> Option<u64> {
        self.base.map(|base| base + self.notices.len() as u64)
    }

    fn clear_from(&mut self, base: Option<u64>) {
        self.notices.clear();
        self.base = base;
    }
}

/// What appending a transaction did, for the metrics and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Notices added.
    pub added: usize,
    /// Notices dropped as already kept (a replay after reconnecting).
    pub duplicates: usize,
    /// The sequence after which a notice was missing; the history restarted there.
    pub gap_after: Option<u64>,
}

/// What a subscriber reading after some sequence gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The next notices, oldest first; empty when there is nothing newer yet.
    Notices(Vec<ChangeNotice>),
    /// What follows `after` is no longer kept.
    TooOld {
        /// The oldest sequence one may resume after.
        oldest_resumable: u64,
        /// The last kept sequence.
        head: u64,
    },
    /// The history does not know yet where it starts (core-pg is catching up with the WAL).
    NotSynced,
    /// The history was replaced by another incarnation's since the subscriber started.
    Replaced,
}

/// The shared history, written by the decoder and read by every stream.
pub struct History {
    limit: usize,
    state: RwLock<State>,
    changed: watch::Sender<()>,
}

impl History {
    /// An empty history of no incarnation yet, keeping at most `limit` notices.
    pub fn new(limit: usize) -> Self {
        let state = State {
            incarnation: String::new(),
            epoch: 0,
            base: None,
            notices: VecDeque::new(),
            confirmable: 0,
            resume: 0,
        };
        Self { limit: limit.max(1), state: RwLock::new(state), changed: watch::Sender::new(()) }
    }

    /// Wakes on every change of the history.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The incarnation the history belongs to and its epoch (empty before the database was identified).
    pub fn incarnation(&self) -> (String, u64) {
        let state = self.state.read();
        (state.incarnation.clone(), state.epoch)
    }

    /// The last kept sequence, once known.
    pub fn head(&self) -> Option<u64> {
        self.state.read().head()
    }

    /// (oldest sequence one may resume after, head), once known.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let state = self.state.read();
        Some((state.base?, state.head()?))
    }

    /// Kept notices now.
    pub fn kept(&self) -> usize {
        self.state.read().notices.len()
    }

    /// The WAL position the slot may be confirmed up to.
    pub fn confirmable(&self) -> u64 {
        self.state.read().confirmable
    }

    /// Where the decoder resumes after reconnecting (0: from the slot's confirmed position).
    pub fn resume_lsn(&self) -> u64 {
        self.state.read().resume
    }

    /// Starts a new history for `incarnation` if it is not the current one; returns whether it did.
    pub fn adopt(&self, incarnation: &str) -> bool {
        let mut state = self.state.write();
        if state.incarnation == incarnation {
            return false;
        }
        state.incarnation = incarnation.to_owned();
        state.epoch += 1;
        state.clear_from(None);
        state.confirmable = 0;
        state.resume = 0;
        drop(state);
        self.changed.send_replace(());
        true
    }

    /// Forgets every notice (the slot was recreated: what it held before is gone); the history
    /// starts again at the next [`Self::sync`].
    pub fn forget(&self) {
        let mut state = self.state.write();
        state.clear_from(None);
        state.confirmable = 0;
        state.resume = 0;
        drop(state);
        self.changed.send_replace(());
    }

    /// Appends one committed transaction's notices, its commit ending at `end_lsn`.
    pub fn append(&self, notices: Vec<ChangeNotice>, end_lsn: u64) -> Appended {
        let mut outcome = Appended::default();
        let mut state = self.state.write();
        for notice in notices {
            let head = state.head();
            match head {
                Some(head) if notice.sequence <= head => {
                    outcome.duplicates += 1;
                    continue;
                }
                Some(head) if notice.sequence != head + 1 => {
                    outcome.gap_after = Some(head);
                    state.clear_from(Some(notice.sequence - 1));
                }
                None => state.clear_from(Some(notice.sequence - 1)),
                Some(_) => {}
            }
            state.notices.push_back(Kept { notice, end_lsn });
            outcome.added += 1;
        }
        while state.notices.len() > self.limit {
            let evicted = state.notices.pop_front().expect("longer than the limit");
            state.base = state.base.map(|base| base + 1);
            let front_end = state.notices.front().map_or(u64::MAX, |kept| kept.end_lsn);
            if evicted.end_lsn < front_end {
                state.confirmable = state.confirmable.max(evicted.end_lsn);
            }
        }
        state.resume = state.resume.max(end_lsn);
        drop(state);
        if outcome.added > 0 || outcome.gap_after.is_some() {
            self.changed.send_replace(());
        }
        outcome
    }

    /// A watermark written after reading the committed head `head` has been decoded: every change up to
    /// `head` committed before it, so the history now knows where it starts. Returns the sequence
    /// after which changes were missing (the history restarted at `head`), if any were.
    pub fn sync(&self, head: u64) -> Option<u64> {
        let mut state = self.state.write();
        let missing = match state.head() {
            None => {
                state.clear_from(Some(head));
                None
            }
            Some(kept) if kept < head => {
                state.clear_from(Some(head));
                Some(kept)
            }
            Some(_) => None,
        };
        drop(state);
        self.changed.send_replace(());
        missing
    }

    /// Lets the slot go past every transaction decoded so far, up to `lsn` (the slot holds too much
    /// WAL): a restart then replays only what commits after it.
    pub fn release_up_to(&self, lsn: u64) {
        let mut state = self.state.write();
        state.confirmable = state.confirmable.max(lsn);
    }

    /// Up to `max` notices after `after`, for a stream opened in `epoch`.
    pub fn read_after(&self, after: u64, max: usize, epoch: u64) -> Read {
        let state = self.state.read();
        if state.epoch != epoch {
            return Read::Replaced;
        }
        let (Some(base), Some(head)) = (state.base, state.head()) else { return Read::NotSynced };
        if after < base {
            return Read::TooOld { oldest_resumable: base, head };
        }
        let first = usize::try_from(after - base).unwrap_or(usize::MAX).min(state.notices.len());
        Read::Notices(state.notices.range(first..).take(max).map(|kept| kept.notice.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(sequence: u64) -> ChangeNotice {
        ChangeNotice { sequence, merchant_id: format!("m{sequence}"), ..Default::default() }
    }

    fn sequences(read: Read) -> Vec<u64> {
        match read {
            Read::Notices(notices) => notices.iter().map(|n| n.sequence).collect(),
            other => panic!("notices expected, got {other:?}"),
        }
    }

    fn history(limit: usize) -> (History, u64) {
        let history = History::new(limit);
        history.adopt("pg-1");
        let epoch = history.incarnation().1;
        (history, epoch)
    }

    #[test]
    fn streams_wait_until_the_history_knows_where_it_starts() {
        let (history, epoch) = history(10);
        assert_eq!(history.read_after(5, 10, epoch), Read::NotSynced);
        history.append(vec![notice(6), notice(7)], 100);
        history.sync(5);
        assert_eq!(sequences(history.read_after(5, 10, epoch)), [6, 7]);
        assert_eq!(sequences(history.read_after(7, 10, epoch)), Vec::<u64>::new());
        assert_eq!(history.read_after(4, 10, epoch), Read::TooOld { oldest_resumable: 5, head: 7 });
    }

    #[test]
    fn an_empty_history_starts_at_the_watermarks_head() {
        let (history, epoch) = history(10);
        history.sync(42);
        assert_eq!(history.bounds(), Some((42, 42)));
        history.append(vec![notice(43)], 10);
        assert_eq!(sequences(history.read_after(42, 10, epoch)), [43]);
    }

    #[test]
    fn a_replay_after_reconnecting_is_dropped_and_a_gap_restarts_the_history() {
        let (history, epoch) = history(10);
        history.sync(0);
        history.append(vec![notice(1), notice(2)], 10);
        let replay = history.append(vec![notice(1), notice(2), notice(3)], 20);
        assert_eq!((replay.added, replay.duplicates, replay.gap_after), (1, 2, None));
        let gap = history.append(vec![notice(7)], 30);
        assert_eq!(gap.gap_after, Some(3));
        assert_eq!(history.read_after(3, 10, epoch), Read::TooOld { oldest_resumable: 6, head: 7 });
    }

    #[test]
    fn a_watermark_ahead_of_the_history_means_changes_were_missed() {
        let (history, epoch) = history(10);
        history.append(vec![notice(1)], 10);
        assert_eq!(history.sync(3), Some(1));
        assert_eq!(history.read_after(1, 10, epoch), Read::TooOld { oldest_resumable: 3, head: 3 });
        assert_eq!(history.sync(3), None);
    }

    #[test]
    fn the_slot_is_confirmable_only_past_transactions_evicted_whole() {
        let (history, _) = history(3);
        history.sync(0);
        history.append(vec![notice(1), notice(2)], 100);
        history.append(vec![notice(3), notice(4)], 200);
        // Notice 1 is evicted, but its transaction (ending at 100) still has notice 2 kept.
        assert_eq!((history.confirmable(), history.bounds()), (0, Some((1, 4))));
        history.append(vec![notice(5)], 300);
        assert_eq!((history.confirmable(), history.bounds()), (100, Some((2, 5))));
        assert_eq!(history.resume_lsn(), 300);
    }

    #[test]
    fn another_incarnation_replaces_the_history_and_ends_old_streams() {
        let (history, epoch) = history(10);
        history.sync(0);
        history.append(vec![notice(1)], 10);
        assert!(!history.adopt("pg-1"));
        assert!(history.adopt("pg-2"));
        assert_eq!(history.read_after(0, 10, epoch), Read::Replaced);
        let (incarnation, new_epoch) = history.incarnation();
        assert_eq!((incarnation.as_str(), history.read_after(0, 10, new_epoch)), ("pg-2", Read::NotSynced));
        assert_eq!((history.confirmable(), history.resume_lsn()), (0, 0));
    }
}
