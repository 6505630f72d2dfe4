//! The fence: the one rule for what may be written into the stores, and the in-flight fills it
//! guards (one core call per ID however many terminals ask at once: singleflight).
//!
//! [`decide`] is the rule, a pure function: given what the stores hold for an ID and an answer offered
//! for it (by a fill or by the change feed), it says whether the answer goes in and what it replaces.
//! The cache room ([`super::Cache`]) applies its verdict under the ID's slot lock, so nothing can be
//! written between the decision and the write.
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

use super::store::Stored;
use crate::guard::CoreError;
use crate::wire::EncodedMerchant;

/// Who offers an answer for an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A fill: what the core answered a GetMerchant. `holds_lease` is false once a notice for the ID
    /// took the fill's slot (or a newer fill did); `current_epoch` is false once a resync began after
    /// the fill did; `started_after_sequence` is the applied notice sequence when it began.
    Fill {
        /// Whether the fill still holds its ID's slot.
        holds_lease: bool,
        /// Whether no resync began since the fill did.
        current_epoch: bool,
        /// The applied notice sequence when the fill began.
        started_after_sequence: u64,
    },
    /// The change feed: a notice, or a page of a snapshot, taken in with the fence up (fills for the ID
    /// lose their lease first).
    Feed,
}

/// What [`decide`] says to do with an offered answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Store the merchant (and forget any "not found" for the ID).
    PutMerchant,
    /// Store the "not found" (and forget any merchant for the ID).
    PutNotFound,
    /// Forget both entries: a "not found" that may not be cached now (its TTL would be zero).
    Forget,
    /// Change nothing.
    Keep,
}

/// May an answer as of `sequence` (`found` or not) be installed, and what does it replace?
///
/// - A fill that lost its lease, began before the latest resync, or answers older than the notices the
///   edge had applied when it began, installs nothing: a change it did not see has been applied since.
/// - Only a strictly newer state replaces a stored one, so a lagging core replica or a replayed notice
///   cannot roll an entry back; at the same sequence a fill wins (it refreshes an entry past its TTL),
///   the feed does not (the store already reflects that change).
/// - A "not found" whose TTL would be zero (`negative_ttl`: the feed cannot vouch for it at all)
///   forgets the ID instead of caching.
pub fn decide(held: Option<Stored>, offer: Offer, sequence: u64, found: bool, negative_ttl_is_zero: bool) -> Op {
    if let Offer::Fill { holds_lease, current_epoch, started_after_sequence } = offer {
        if !holds_lease || !current_epoch || sequence < started_after_sequence {
            return Op::Keep;
        }
    }
    if let Some(stored) = held.map(Stored::as_of_sequence) {
        if stored > sequence || (stored == sequence && offer == Offer::Feed) {
            return Op::Keep;
        }
    }
    match (found, negative_ttl_is_zero) {
        (true, _) => Op::PutMerchant,
        (false, false) => Op::PutNotFound,
        (false, true) => Op::Forget,
    }
}

/// What the core said, encoded once for every caller that shares the fill and for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// `None` when the core does not know the ID.
    pub merchant: Option<EncodedMerchant>,
    /// Every change up to this core sequence is reflected in the answer.
    pub as_of_sequence: u64,
}

/// What a fill ends with: the core's answer, or why there is none.
pub type FillOutcome = Result<Filled, CoreError>;

/// One core call in flight, shared by every lookup of its ID that joined it.
pub struct Fill {
    outcome: watch::Sender<Option<FillOutcome>>,
    /// The edge's applied notice sequence when the fill began.
    pub started_after_sequence: u64,
    /// When the fill began: its core read happens later, so it reflects every change committed before
    /// (a consistency token issued before this instant must be met by its answer).
    pub started_at: tokio::time::Instant,
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

/// Whether a lookup starts the core call or joins one already running.
pub enum Role {
    /// This lookup registered the fill and must run its core call.
    Started(Arc<Fill>),
    /// A fill for the ID was already running; this lookup waits for it.
    Joined(Arc<Fill>),
}

/// The fills in flight, one slot per ID (the lease), and the resync epoch.
pub struct Fills {
    /// Every notice and snapshot entry takes its ID's slot here, from as many installers as there are
    /// cores: hashbrown's hasher (foldhash; SipHash was a visible part of a warm start's profile) and
    /// `SLOT_SHARDS` shards, so that two installers rarely wait on one shard's lock (with dashmap's
    /// default of 4 per core they did on every eighth merchant, a tenth of a warm start's CPU).
    in_flight: DashMap<Arc<str>, Arc<Fill>, hashbrown::DefaultHashBuilder>,
    /// Advanced by every resync. Installs hold it for reading, so none can straddle an advance.
    epoch: RwLock<u64>,
}

/// Shards of the fill slots (a power of two, as dashmap requires).
const SLOT_SHARDS: usize = 256;

impl Default for Fills {
    fn default() -> Self {
        Self {
            in_flight: DashMap::with_hasher_and_shard_amount(hashbrown::DefaultHashBuilder::default(), SLOT_SHARDS),
            epoch: RwLock::default(),
        }
    }
}

impl Fills {
    /// Joins the fill in flight for `id`, or registers a new one that the caller must run. A fill that
    /// has already answered but not yet settled (caching can wait for a store migration) is not joined:
    /// its answer is getting old, or was a failure worth retrying. The new fill takes its slot, which
    /// also fences the old one out of caching.
    pub fn join_or_start(&self, id: &str, applied_sequence: u64) -> Role {
        if let Some(fill) = self.in_flight.get(id).filter(|fill| !fill.is_published()) {
            return Role::Joined(fill.clone());
        }
        let fill = || {
            Arc::new(Fill {
                outcome: watch::Sender::new(None),
                started_after_sequence: applied_sequence,
                started_at: tokio::time::Instant::now(),
                epoch: *self.epoch.read(),
                waiting: watch::Sender::new(0),
            })
        };
        match self.in_flight.entry(Arc::from(id)) {
            Entry::Occupied(existing) if !existing.get().is_published() => Role::Joined(existing.get().clone()),
            Entry::Occupied(mut stale) => {
                let fresh = fill();
                stale.insert(fresh.clone());
                Role::Started(fresh)
            }
            Entry::Vacant(slot) => {
                let fresh = fill();
                slot.insert(fresh.clone());
                Role::Started(fresh)
            }
        }
    }

    /// Ends a fill whose outcome was published: runs `install` with the fill's [`Offer`] (whether it
    /// still holds its lease, began in the current epoch, and the sequence it began after) while
    /// holding the slot's lock, then frees the slot if the fill still held it. Returns what `install`
    /// returned; a failure (`None`) only frees the slot.
    pub fn settle(
        &self,
        id: &str,
        fill: &Arc<Fill>,
        answer: Option<&Filled>,
        install: impl FnOnce(Offer, &Filled) -> bool,
    ) -> bool {
        let mut installed = false;
        let mut install = Some(install);
        let mut offer_to = |holds_lease: bool| {
            if let (Some(install), Some(answer)) = (install.take(), answer) {
                let epoch = self.epoch.read();
                let current_epoch = *epoch == fill.epoch;
                let offer =
                    Offer::Fill { holds_lease, current_epoch, started_after_sequence: fill.started_after_sequence };
                installed = install(offer, answer);
            }
        };
        let removed = self.in_flight.remove_if(id, |_, holder| {
            let holds_lease = Arc::ptr_eq(holder, fill);
            offer_to(holds_lease);
            holds_lease
        });
        if removed.is_none() {
            // No slot for the ID at all: a notice took it. The offer is still made (so the rule, not
            // this bookkeeping, refuses it) under no lock, which is safe because it holds no lease.
            offer_to(false);
        }
        installed
    }

    /// Whether `fill` began in the current epoch (its answer speaks of the history the stores follow).
    pub fn is_current(&self, fill: &Fill) -> bool {
        *self.epoch.read() == fill.epoch
    }

    /// The resync epoch now (it only grows).
    pub fn epoch(&self) -> u64 {
        *self.epoch.read()
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
    use crate::upstream::UpstreamError;

    fn answer(as_of_sequence: u64) -> FillOutcome {
        Ok(Filled { merchant: None, as_of_sequence })
    }

    /// Installs what the rule allows into empty stores.
    fn by_the_rule(offer: Offer, answer: &Filled) -> bool {
        decide(None, offer, answer.as_of_sequence, answer.merchant.is_some(), false) != Op::Keep
    }

    fn unavailable() -> FillOutcome {
        Err(CoreError::Upstream(UpstreamError::Unavailable("down".into())))
    }

    const FRESH_FILL: Offer = Offer::Fill { holds_lease: true, current_epoch: true, started_after_sequence: 5 };

    #[test]
    fn the_rule_refuses_fills_that_lost_their_lease_their_epoch_or_saw_older_history() {
        assert_eq!(decide(None, FRESH_FILL, 5, true, false), Op::PutMerchant);
        assert_eq!(decide(None, FRESH_FILL, 4, true, false), Op::Keep, "older than notices applied when it began");
        let lost_lease = Offer::Fill { holds_lease: false, current_epoch: true, started_after_sequence: 0 };
        assert_eq!(decide(None, lost_lease, 9, false, false), Op::Keep, "a notice arrived while it was in flight");
        let old_epoch = Offer::Fill { holds_lease: true, current_epoch: false, started_after_sequence: 0 };
        assert_eq!(decide(None, old_epoch, 9, true, false), Op::Keep, "began before a resync");
    }

    #[test]
    fn only_a_newer_state_replaces_a_stored_one_and_fills_win_ties() {
        let fill = Offer::Fill { holds_lease: true, current_epoch: true, started_after_sequence: 0 };
        for held in [Stored::Positive(7), Stored::Negative(7)] {
            assert_eq!(decide(Some(held), fill, 6, true, false), Op::Keep, "a lagging replica cannot roll back");
            assert_eq!(decide(Some(held), Offer::Feed, 6, false, false), Op::Keep, "a replayed notice neither");
            assert_eq!(
                decide(Some(held), fill, 7, true, false),
                Op::PutMerchant,
                "a fill refreshes at the same sequence"
            );
            assert_eq!(decide(Some(held), Offer::Feed, 7, true, false), Op::Keep, "the store reflects that change");
            assert_eq!(decide(Some(held), Offer::Feed, 8, false, false), Op::PutNotFound);
        }
    }

    #[test]
    fn a_not_found_that_cannot_be_vouched_for_forgets_instead_of_caching() {
        assert_eq!(decide(Some(Stored::Positive(1)), Offer::Feed, 2, false, true), Op::Forget);
        assert_eq!(decide(None, FRESH_FILL, 5, false, true), Op::Forget);
        assert_eq!(decide(None, FRESH_FILL, 5, true, true), Op::PutMerchant, "merchants do not depend on the feed");
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_fill() {
        let fills = Fills::default();
        let Role::Started(started) = fills.join_or_start("m", 0) else { panic!("first starts the fill") };
        let Role::Joined(joined) = fills.join_or_start("m", 0) else { panic!("second joins") };
        assert!(Arc::ptr_eq(&started, &joined));
        let waiter = tokio::spawn(async move { joined.outcome().await });
        started.publish(answer(3));
        assert_eq!(waiter.await.unwrap(), answer(3));
        assert!(fills.settle("m", &started, answer(3).as_ref().ok(), by_the_rule));
        assert!(matches!(fills.join_or_start("m", 0), Role::Started(_)), "a finished fill frees the slot");
    }

    #[tokio::test]
    async fn a_superseded_fill_cannot_install_and_new_lookups_do_not_join_it() {
        let fills = Fills::default();
        let Role::Started(old) = fills.join_or_start("m", 0) else { panic!() };
        let mut applied = false;
        assert!(fills.supersede("m", || applied = true));
        assert!(applied);
        let Role::Started(fresh) = fills.join_or_start("m", 1) else { panic!("must not join the old fill") };
        old.publish(answer(0));
        assert!(!fills.settle("m", &old, answer(0).as_ref().ok(), by_the_rule), "old fill installed");
        assert_eq!(old.outcome().await, answer(0), "its own waiters still get an answer");
        assert!(fills.settle("m", &fresh, answer(1).as_ref().ok(), by_the_rule));
    }

    #[tokio::test]
    async fn a_fill_whose_slot_a_notice_emptied_cannot_install() {
        let fills = Fills::default();
        let Role::Started(fill) = fills.join_or_start("m", 0) else { panic!() };
        fills.supersede("m", || ());
        assert!(!fills.settle("m", &fill, answer(3).as_ref().ok(), by_the_rule));
    }

    #[tokio::test]
    async fn answers_older_than_applied_notices_are_not_installed() {
        let fills = Fills::default();
        let Role::Started(fill) = fills.join_or_start("m", 10) else { panic!() };
        assert!(!fills.settle("m", &fill, answer(9).as_ref().ok(), by_the_rule), "stale answer installed");
    }

    #[tokio::test]
    async fn fills_from_before_a_resync_cannot_install() {
        let fills = Fills::default();
        let Role::Started(fill) = fills.join_or_start("m", 0) else { panic!() };
        fills.advance_epoch();
        assert!(!fills.is_current(&fill));
        assert!(!fills.settle("m", &fill, answer(5).as_ref().ok(), by_the_rule), "pre-resync answer installed");
        let Role::Started(fresh) = fills.join_or_start("m", 0) else { panic!() };
        assert!(fills.is_current(&fresh));
    }

    #[tokio::test]
    async fn an_answered_fill_waiting_to_settle_is_not_joined() {
        let fills = Fills::default();
        let Role::Started(answered) = fills.join_or_start("m", 0) else { panic!() };
        answered.publish(unavailable());
        let Role::Started(retry) = fills.join_or_start("m", 0) else { panic!("a published failure is retried") };
        assert!(!fills.settle("m", &answered, None, by_the_rule), "the old fill no longer holds the slot");
        assert!(fills.settle("m", &retry, answer(1).as_ref().ok(), by_the_rule));
    }

    #[tokio::test]
    async fn failures_are_shared_and_never_installed() {
        let fills = Fills::default();
        let Role::Started(fill) = fills.join_or_start("m", 0) else { panic!() };
        fill.publish(unavailable());
        assert!(!fills.settle("m", &fill, None, |_, _| panic!("failure installed")));
        assert_eq!(fill.outcome().await, unavailable());
        assert!(matches!(fills.join_or_start("m", 0), Role::Started(_)), "a failure frees the slot");
    }
}
