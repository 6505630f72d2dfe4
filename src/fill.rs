//! In-flight fills: one core call per ID however many terminals ask at once (singleflight), and the
//! fence that stops a fill from installing an answer older than a change notice.
//!
//! The fence is a lease, as memcache leases are: a fill holds its ID's slot in `in_flight` while the
//! core call runs. Applying a change notice for the ID takes the slot away (under the same map-shard
//! lock the fill must hold to install), so a fill that began before the notice can no longer install
//! its answer; and lookups that start after the notice do not join it but start a fresh fill. A fill
//! also refuses to install an answer whose `as_of_sequence` is older than the notices the edge had
//! applied when it began (a core replica lagging behind its own change feed), and one that began before
//! the latest resync (its answer may predate changes the resync skipped over, or come from a core
//! history that no longer exists).
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::upstream::UpstreamError;
use crate::wire::EncodedMerchant;

/// What the core said, encoded once for every caller that shares the fill and for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub merchant: Option<EncodedMerchant>,
    pub as_of_sequence: u64,
}

pub type FillOutcome = Result<Filled, UpstreamError>;

/// One core call in flight, shared by every lookup of its ID that joined it.
pub struct Fill {
    outcome: watch::Sender<Option<FillOutcome>>,
    /// The edge's applied notice sequence when the fill began.
    pub started_after_sequence: u64,
    /// The resync epoch the fill began in.
    epoch: u64,
    /// Lookups waiting for the outcome now; when none are left, the core call is not worth finishing.
    waiting: watch::Sender<usize>,
}

/// Counts one lookup as waiting for a fill until dropped (including when the lookup is cancelled
/// because its caller went away).
pub struct Waiting(Arc<Fill>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.send_modify(|waiting| *waiting -= 1);
    }
}

impl Fill {
    /// Waits for the core's answer (or failure).
    pub async fn outcome(&self) -> FillOutcome {
        let mut receiver = self.outcome.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let outcome = receiver.wait_for(Option::is_some).await.expect("fill sender outlives its waiters").clone();
        outcome.expect("waited for Some")
    }

    /// Registers a waiting lookup (before the core call can start, so the call never sees nobody).
    pub fn wait_here(self: &Arc<Self>) -> Waiting {
        self.waiting.send_modify(|waiting| *waiting += 1);
        Waiting(self.clone())
    }

    /// Completes when no lookup waits for this fill's outcome any more.
    pub fn abandoned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut waiting = self.waiting.subscribe();
        async move {
            // The sender lives as long as the fill, which the caller holds.
            let _ = waiting.wait_for(|waiting| *waiting == 0).await;
        }
    }

    fn is_published(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Hands the outcome to every waiter (before it is cached, which may have to wait).
    pub fn publish(&self, outcome: FillOutcome) {
        self.outcome.send_replace(Some(outcome));
    }
}

/// Whether a lookup starts the core call or waits for one already running.
pub enum Role {
    Leader(Arc<Fill>),
    Follower(Arc<Fill>),
}

#[derive(Default)]
pub struct Fills {
    in_flight: DashMap<Arc<str>, Arc<Fill>>,
    /// Advanced by every resync. Installs hold it for reading, so none can straddle an advance.
    epoch: RwLock<u64>,
}

impl Fills {
    /// Joins the fill in flight for `id`, or registers a new one that the caller must run. A fill that
    /// has already answered but not yet settled (caching can wait for a store migration) is not joined:
    /// its answer is getting old, or was a failure worth retrying. The new fill takes its slot, which
    /// also fences the old one out of caching.
    pub fn join_or_start(&self, id: &str, applied_sequence: u64) -> Role {
        if let Some(fill) = self.in_flight.get(id).filter(|fill| !fill.is_published()) {
            return Role::Follower(fill.clone());
        }
        let fill = || {
            Arc::new(Fill {
                outcome: watch::Sender::new(None),
                started_after_sequence: applied_sequence,
                epoch: *self.epoch.read(),
                waiting: watch::Sender::new(0),
            })
        };
        match self.in_flight.entry(Arc::from(id)) {
            Entry::Occupied(existing) if !existing.get().is_published() => Role::Follower(existing.get().clone()),
            Entry::Occupied(mut stale) => {
                let fresh = fill();
                stale.insert(fresh.clone());
                Role::Leader(fresh)
            }
            Entry::Vacant(slot) => {
                let fresh = fill();
                slot.insert(fresh.clone());
                Role::Leader(fresh)
            }
        }
    }

    /// Ends a fill whose outcome was published: if it still holds its slot, began in the current epoch
    /// and its answer is not older than what the edge had applied, runs `install` (which says whether
    /// it stored anything) while holding the slot's lock; then frees the slot. Returns whether it
    /// installed. A failure (`None`) only frees the slot.
    pub fn settle(
        &self,
        id: &str,
        fill: &Arc<Fill>,
        answer: Option<&Filled>,
        install: impl FnOnce(&Filled) -> bool,
    ) -> bool {
        let mut installed = false;
        self.in_flight.remove_if(id, |_, holder| {
            let holds_slot = Arc::ptr_eq(holder, fill);
            if let (true, Some(answer)) = (holds_slot, answer) {
                let epoch = self.epoch.read();
                if *epoch == fill.epoch && answer.as_of_sequence >= fill.started_after_sequence {
                    installed = install(answer);
                }
            }
            holds_slot
        });
        installed
    }

    /// Whether `fill` began in the current epoch (its answer speaks of the history the stores follow).
    pub fn is_current(&self, fill: &Fill) -> bool {
        *self.epoch.read() == fill.epoch
    }

    /// Starts a new epoch: no fill that began before can install after this returns.
    pub fn advance_epoch(&self) {
        *self.epoch.write() += 1;
    }

    /// Applies a change for `id` with the fence up: any fill in flight loses its slot first, and
    /// `apply` runs under the slot's lock, so no fill can install in between. Returns whether a fill
    /// was superseded.
    pub fn supersede(&self, id: &str, apply: impl FnOnce()) -> bool {
        match self.in_flight.entry(Arc::from(id)) {
            Entry::Occupied(slot) => {
                apply();
                slot.remove();
                true
            }
            Entry::Vacant(_slot) => {
                apply();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(as_of_sequence: u64) -> FillOutcome {
        Ok(Filled { merchant: None, as_of_sequence })
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_fill() {
        let fills = Fills::default();
        let Role::Leader(leader) = fills.join_or_start("m", 0) else { panic!("first is the leader") };
        let Role::Follower(follower) = fills.join_or_start("m", 0) else { panic!("second follows") };
        assert!(Arc::ptr_eq(&leader, &follower));
        let waiter = tokio::spawn(async move { follower.outcome().await });
        leader.publish(answer(3));
        assert_eq!(waiter.await.unwrap(), answer(3));
        assert!(fills.settle("m", &leader, answer(3).as_ref().ok(), |_| true));
        assert!(matches!(fills.join_or_start("m", 0), Role::Leader(_)), "a finished fill frees the slot");
    }

    #[tokio::test]
    async fn a_superseded_fill_cannot_install_and_new_lookups_do_not_join_it() {
        let fills = Fills::default();
        let Role::Leader(old) = fills.join_or_start("m", 0) else { panic!() };
        let mut applied = false;
        assert!(fills.supersede("m", || applied = true));
        assert!(applied);
        let Role::Leader(fresh) = fills.join_or_start("m", 1) else { panic!("must not join the old fill") };
        old.publish(answer(0));
        assert!(!fills.settle("m", &old, answer(0).as_ref().ok(), |_| panic!("old fill installed")));
        assert_eq!(old.outcome().await, answer(0), "its own waiters still get an answer");
        assert!(fills.settle("m", &fresh, answer(1).as_ref().ok(), |_| true));
    }

    #[tokio::test]
    async fn answers_older_than_applied_notices_are_not_installed() {
        let fills = Fills::default();
        let Role::Leader(fill) = fills.join_or_start("m", 10) else { panic!() };
        assert!(!fills.settle("m", &fill, answer(9).as_ref().ok(), |_| panic!("stale answer installed")));
    }

    #[tokio::test]
    async fn fills_from_before_a_resync_cannot_install() {
        let fills = Fills::default();
        let Role::Leader(fill) = fills.join_or_start("m", 0) else { panic!() };
        fills.advance_epoch();
        assert!(!fills.is_current(&fill));
        assert!(!fills.settle("m", &fill, answer(5).as_ref().ok(), |_| panic!("pre-resync answer installed")));
        let Role::Leader(fresh) = fills.join_or_start("m", 0) else { panic!() };
        assert!(fills.is_current(&fresh));
    }

    #[tokio::test]
    async fn an_answered_fill_waiting_to_settle_is_not_joined() {
        let fills = Fills::default();
        let Role::Leader(answered) = fills.join_or_start("m", 0) else { panic!() };
        answered.publish(Err(UpstreamError::Unavailable("down".into())));
        let Role::Leader(retry) = fills.join_or_start("m", 0) else { panic!("a published failure is retried") };
        assert!(!fills.settle("m", &answered, None, |_| true), "the old fill no longer holds the slot");
        assert!(fills.settle("m", &retry, answer(1).as_ref().ok(), |_| true));
    }

    #[tokio::test]
    async fn failures_are_shared_and_never_installed() {
        let fills = Fills::default();
        let Role::Leader(fill) = fills.join_or_start("m", 0) else { panic!() };
        let failure: FillOutcome = Err(UpstreamError::Unavailable("down".into()));
        fill.publish(failure.clone());
        assert!(!fills.settle("m", &fill, None, |_| panic!("failure installed")));
        assert_eq!(fill.outcome().await, failure);
        assert!(matches!(fills.join_or_start("m", 0), Role::Leader(_)), "a failure frees the slot");
    }
}
