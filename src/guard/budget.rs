//! The core-call budget: at most `max_in_flight` calls at once and at most `max_queued` waiting behind
//! them; a call beyond both is refused at once instead of joining an unbounded queue. Limits are read
//! at every acquire, so a reload applies to the next call (a smaller limit lets in-flight calls finish).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::RefusalReason;

#[derive(Default)]
struct State {
    in_flight: usize,
    /// Waiters in arrival order; a released permit is handed to the first still waiting.
    queue: VecDeque<oneshot::Sender<Permit>>,
}

#[derive(Default)]
pub struct Budget {
    state: Arc<Mutex<State>>,
    /// The in-flight limit the last acquire saw, for handing over permits on release.
    max_in_flight: Arc<AtomicUsize>,
}

/// One core call's place in the budget; released on drop.
pub struct Permit {
    state: Arc<Mutex<State>>,
    max_in_flight: Arc<AtomicUsize>,
    /// False for a permit that came back from a waiter that had gone: its place is still being handed
    /// on by the release that made it, under the lock.
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.state.lock();
        state.in_flight -= 1;
        // Hand places straight to the waiters still there (one that gave up has dropped its receiver,
        // and the place comes back), as many as the limit allows now: more than this one when the
        // limit was raised, none while a lowered limit is still exceeded.
        let max = self.max_in_flight.load(Ordering::Relaxed);
        while state.in_flight < max {
            let Some(waiter) = state.queue.pop_front() else { break };
            match waiter.send(self.sibling()) {
                Ok(()) => state.in_flight += 1,
                Err(mut returned) => returned.armed = false,
            }
        }
    }
}

impl Permit {
    fn sibling(&self) -> Permit {
        Permit { state: self.state.clone(), max_in_flight: self.max_in_flight.clone(), armed: true }
    }
}

impl Budget {
    /// Calls in flight and waiting now.
    pub fn load(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.in_flight, state.queue.len())
    }

    /// Whether a call now would be refused for a full queue (a cheap check before any work for it).
    pub fn is_full(&self, max_in_flight: usize, max_queued: usize) -> bool {
        let state = self.state.lock();
        state.in_flight >= max_in_flight && state.queue.len() >= max_queued
    }

    /// A place for one core call, waiting in the queue if need be but not past `deadline`.
    pub async fn acquire(
        &self,
        max_in_flight: usize,
        max_queued: usize,
        deadline: Instant,
    ) -> Result<Permit, RefusalReason> {
        self.max_in_flight.store(max_in_flight, Ordering::Relaxed);
        let receiver = {
            let mut state = self.state.lock();
            if state.in_flight < max_in_flight && state.queue.is_empty() {
                state.in_flight += 1;
                return Ok(Permit {
                    state: self.state.clone(),
                    max_in_flight: self.max_in_flight.clone(),
                    armed: true,
                });
            }
            state.queue.retain(|waiter| !waiter.is_closed());
            if state.queue.len() >= max_queued {
                return Err(RefusalReason::QueueFull);
            }
            let (sender, receiver) = oneshot::channel();
            state.queue.push_back(sender);
            receiver
        };
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(permit)) => Ok(permit),
            // The budget never drops a waiter's sender while the waiter is still queued.
            Ok(Err(_)) => unreachable!("queued waiters are answered or outlive the budget"),
            // Dropping the receiver leaves a closed sender, skipped by the next release; a permit sent
            // in the same instant is dropped with the receiver and so released again.
            Err(_) => Err(RefusalReason::Deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_in_flight_and_queue_calls_are_refused_at_once() {
        let budget = Arc::new(Budget::default());
        let first = budget.acquire(1, 1, far()).await.unwrap();
        let queued = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(1, 1, far()).await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert_eq!(budget.load(), (1, 1));
        assert_eq!(budget.acquire(1, 1, far()).await.err(), Some(RefusalReason::QueueFull));
        drop(first);
        assert!(queued.await.unwrap(), "the queued call got the released place");
        assert_eq!(budget.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_gives_up_at_its_deadline_and_frees_its_place() {
        let budget = Budget::default();
        let held = budget.acquire(1, 1, far()).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(budget.acquire(1, 1, deadline).await.err(), Some(RefusalReason::Deadline));
        drop(held);
        assert_eq!(budget.load(), (0, 0), "the gone waiter was skipped, not handed the place");
        let _again = budget.acquire(1, 1, far()).await.unwrap();
        assert_eq!(budget.load(), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_limit_lets_calls_in_flight_finish_without_admitting_more() {
        let budget = Arc::new(Budget::default());
        let a = budget.acquire(2, 4, far()).await.unwrap();
        let b = budget.acquire(2, 4, far()).await.unwrap();
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(1, 4, far()).await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert_eq!(budget.load(), (1, 1), "two in flight over a limit of one: the release is not handed on");
        drop(b);
        assert!(waiter.await.unwrap());
    }
}
