//! Consistency tokens (`min_sequence`): a lookup whose token the edge has not applied yet waits for
//! the change feed to apply it (up to `feed.fresh_wait`, woken by the apply itself), then asks the core
//! through the ordinary fill (coalesced, protected, installed under the fence), and answers only with
//! data at least that fresh; otherwise it fails saying why. Never an older answer: no stale-served
//! merchant and no cached "not found" stand in for a core that cannot answer.
//!
//! A token is issued by the core before the lookup carrying it begins, so a core read that began after
//! the lookup did reflects it — unless the token is ahead of the core (another core history, or a wrong
//! one). That is how a token ahead of the core is told from one the edge has merely not seen yet
//! (right after onboarding the edge's view of the core's head lags by the notice's delivery, so the
//! feed alone cannot tell them apart): by a read that began after the lookup did, the lookup's own fill,
//! or any fill of any ID that [`HeadProof`] remembers, so a flood of such tokens costs about one core
//! read per `fresh_wait` and ID, not one per lookup.
use std::sync::Arc;

use tokio::time::Instant;

use super::{after_core, remembered, stale_merchant, Answer, LookupError, NotFreshCause, Resolver};
use crate::cache::Filled;
use crate::guard::{Caller, CoreError};
use crate::lookup::metrics::TokenOutcome;
use crate::pb::Source;

/// The latest core read answered: its `as_of_sequence`, and an instant its read began after. A token
/// issued before that instant and above that sequence is ahead of the core.
#[derive(Default)]
pub(super) struct HeadProof(parking_lot::Mutex<Option<(u64, Instant)>>);

impl HeadProof {
    /// Remembers a read that began after `began` and answered as of `as_of_sequence`.
    pub(super) fn record(&self, as_of_sequence: u64, began: Instant) {
        let mut latest = self.0.lock();
        if latest.is_none_or(|(_, latest_began)| latest_began <= began) {
            *latest = Some((as_of_sequence, began));
        }
    }

    /// The core's head as shown by a read that began at or after `since`, if one was answered.
    fn since(&self, since: Instant) -> Option<u64> {
        self.0.lock().filter(|(_, began)| *began >= since).map(|(as_of_sequence, _)| as_of_sequence)
    }
}

impl Resolver {
    /// Answers the normalised `id` with data reflecting every core change up to `min_sequence`.
    pub(super) async fn answer_at_least(
        self: &Arc<Self>,
        id: &str,
        min_sequence: u64,
        caller: &Caller,
    ) -> Result<Answer, LookupError> {
        let began = Instant::now();
        let tokens = &self.metrics.tokens;
        if let Some(answer) = self.fresh_in_memory(id, min_sequence) {
            tokens.count(TokenOutcome::Fresh);
            return Ok(answer);
        }
        let mut outcome = TokenOutcome::Fresh;
        if self.feed.applied() < min_sequence {
            outcome = TokenOutcome::AskedCore;
            let wait = self.config.load().feed.fresh_wait;
            // A feed that is down applies nothing soon: waiting would only delay asking the core.
            if self.feed.is_connected() && !wait.is_zero() {
                let until = caller.deadline.map_or(began + wait, |deadline| deadline.min(began + wait));
                if self.feed.wait_applied(min_sequence, until).await {
                    outcome = TokenOutcome::Waited;
                }
                tokens.wait.observe(began.elapsed().as_secs_f64());
            }
            // The feed caught up, or another lookup's fill stored an entry learned after the token.
            if let Some(answer) = self.fresh_in_memory(id, min_sequence) {
                tokens.count(outcome);
                return Ok(answer);
            }
            if self.feed.applied() < min_sequence && self.feed.head() < min_sequence {
                if let Some(core) = self.head_proof.since(began).filter(|head| *head < min_sequence) {
                    tokens.count(TokenOutcome::Ahead);
                    return Err(LookupError::SequenceAhead { asked: min_sequence, core });
                }
            }
        }
        let answer = self.ask_core_at_least(id, min_sequence, began, caller).await;
        let counters = &self.metrics.counters;
        match &answer {
            Ok(Answer { source: Source::Stale, .. }) => counters.stale.inc(),
            Ok(Answer { merchant: Some(_), .. }) => counters.upstream_found.inc(),
            Ok(Answer { merchant: None, .. }) => counters.upstream_not_found.inc(),
            // Not an answer the core could not give: the request asked for the impossible.
            Err(LookupError::SequenceAhead { .. }) => 0,
            Err(_) => counters.unavailable.inc(),
        };
        tokens.count(match &answer {
            Ok(_) => outcome,
            Err(LookupError::SequenceAhead { .. }) => TokenOutcome::Ahead,
            Err(_) => TokenOutcome::Failed,
        });
        answer
    }

    /// What memory may answer for `id` under the token: anything a lookup would get once the feed has
    /// applied it (every change up to the applied sequence is in the stores), else an entry learned at
    /// or after the token (a fill's answer: no change of the ID up to the token is missing from it).
    fn fresh_in_memory(&self, id: &str, min_sequence: u64) -> Option<Answer> {
        // Loaded before the stores are read: the stores hold at least every change up to it.
        let applied = self.feed.applied();
        let config = self.config.load();
        let now = Instant::now();
        let held = remembered(&self.cache.stores(), &config, &self.feed, id, now)
            .filter(|held| applied >= min_sequence || held.as_of_sequence() >= min_sequence)?;
        let counters = &self.metrics.counters;
        match held {
            super::Remembered::Merchant(_) => counters.cache_hit.inc(),
            super::Remembered::NotFound(_) => counters.negative_hit.inc(),
        };
        Some(held.into_answer(now))
    }

    /// Asks the core for `id` through the ordinary fill and returns its answer if it reflects
    /// `min_sequence`. A fill already in flight that began before the lookup (`lookup_began`) may answer
    /// from before the token: then the core is asked once more (the next fill begins after that one
    /// answered, so after the lookup began). An answer from a read that began after the lookup and is
    /// still older than the token means the token is ahead of the core, unless the edge has seen the
    /// core reach it (then this core answered from a replica behind its own changes).
    async fn ask_core_at_least(
        self: &Arc<Self>,
        id: &str,
        min_sequence: u64,
        lookup_began: Instant,
        caller: &Caller,
    ) -> Result<Answer, LookupError> {
        let config = self.config.load_full();
        let not_fresh = |why| LookupError::NotFresh { asked: min_sequence, held: self.feed.applied(), why };
        // Once the feed has applied the token, the stores reflect it, stale entries included: a core that
        // cannot answer is then met as any lookup would meet it (serve-stale, or the core's error).
        let as_any_lookup = |error: CoreError| {
            let now = Instant::now();
            if self.feed.applied() >= min_sequence {
                after_core(Err(error), || stale_merchant(&self.cache.stores(), &config.cache, id, now), now)
            } else {
                Err(not_fresh(NotFreshCause::Core(error)))
            }
        };
        if let Err(refused) = self.guard.admit(caller, &config.protect, &self.guard_metrics) {
            return as_any_lookup(refused.into());
        }
        let mut too_old = 0;
        for _ in 0..2 {
            let (outcome, fill_began) = self.ask_core(id, caller.deadline).await;
            let filled = match outcome {
                Ok(filled) => filled,
                Err(error) => return as_any_lookup(error),
            };
            let Filled { merchant, as_of_sequence } = filled;
            if as_of_sequence >= min_sequence {
                return Ok(Answer {
                    merchant,
                    source: Source::Upstream,
                    age: std::time::Duration::ZERO,
                    as_of_sequence,
                });
            }
            too_old = as_of_sequence;
            if fill_began >= lookup_began {
                break;
            }
        }
        if self.feed.head() >= min_sequence {
            return Err(not_fresh(NotFreshCause::CoreBehind { answered: too_old }));
        }
        Err(LookupError::SequenceAhead { asked: min_sequence, core: too_old })
    }
}
