//! Protecting the bank core: every core call goes through [`CoreGuard::call`], which bounds how many
//! run and wait (shedding beyond that at once), stops calling a failing core (circuit breaker), retries
//! failures with backoff and jitter only while the caller's deadline allows, and charges core-bound
//! lookups to their client ([`CoreGuard::admit`]).
mod breaker;
mod budget;
mod client_limit;
mod config;
mod metrics;
mod refusal;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use breaker::Breaker;
pub use breaker::BreakerState;
use budget::Budget;
use client_limit::ClientLimits;
pub use config::ProtectConfig;
pub use metrics::{CoreCallResult, GuardMetrics};
pub use refusal::{CoreError, RefusalReason, Refused};

use crate::upstream::{CoreAnswer, UpstreamError};

/// Less time than this left before the deadline is not worth a core call.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);
/// The shortest retry hint given while the breaker refuses calls (clients must not retry at once).
const MIN_PUSHBACK: Duration = Duration::from_millis(100);

/// Who is asking, as far as core protection cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The client the per-client limit charges (peer IP or the configured metadata value).
    pub client: Option<String>,
    /// When the caller stops waiting (its gRPC deadline).
    pub deadline: Option<Instant>,
}

#[derive(Default)]
/// The budget, breaker and client limits every core call goes through.
pub struct CoreGuard {
    budget: Budget,
    breaker: Breaker,
    clients: ClientLimits,
}

impl CoreGuard {
    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Calls in flight and queued now.
    pub fn load(&self) -> (usize, usize) {
        self.budget.load()
    }

    /// Admits one core-bound lookup: refused at once when the core-call queue is full (before any
    /// work is spent on it: under a flood of unknown IDs most lookups end here), or when the caller's
    /// client is over its limit.
    pub fn admit(&self, caller: &Caller, protect: &ProtectConfig, metrics: &GuardMetrics) -> Result<(), Refused> {
        if self.budget.is_full(protect.max_in_flight.get() as usize, protect.max_queued as usize) {
            metrics.count_refusal(RefusalReason::QueueFull);
            return Err(Refused::shed());
        }
        self.charge(caller, protect, metrics)
    }

    fn charge(&self, caller: &Caller, protect: &ProtectConfig, metrics: &GuardMetrics) -> Result<(), Refused> {
        let (Some(client), Some(rate)) = (&caller.client, protect.per_client_rate) else {
            return Ok(());
        };
        let burst = protect.per_client_burst.map_or(rate.get(), |burst| burst.get());
        self.clients.take(client, rate.get(), burst, Instant::now()).map_err(|retry_in| {
            metrics.count_refusal(RefusalReason::ClientLimit);
            Refused::client_limit(client.clone(), rate.get(), retry_in)
        })
    }

    /// Runs `attempt` (given each attempt's timeout) within the budget and the breaker, retrying
    /// failures while `deadline` allows. Once `abandoned` completes (nobody waits for the answer any
    /// more), whatever is under way stops: a queued call leaves the queue, a running attempt is
    /// cancelled (which cancels the RPC at the core), and no retry follows.
    pub async fn call<Attempt, Fut>(
        &self,
        protect: &ProtectConfig,
        attempt_timeout: Duration,
        deadline: Instant,
        metrics: &GuardMetrics,
        abandoned: impl Future<Output = ()>,
        attempt: Attempt,
    ) -> Result<CoreAnswer, CoreError>
    where
        Attempt: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<CoreAnswer, UpstreamError>>,
    {
        tokio::pin!(abandoned);
        tokio::select! {
            outcome = self.call_until_deadline(protect, attempt_timeout, deadline, metrics, attempt) => outcome,
            () = &mut abandoned => Err(UpstreamError::DeadlineExceeded.into()),
        }
    }

    async fn call_until_deadline<Attempt, Fut>(
        &self,
        protect: &ProtectConfig,
        attempt_timeout: Duration,
        deadline: Instant,
        metrics: &GuardMetrics,
        attempt: Attempt,
    ) -> Result<CoreAnswer, CoreError>
    where
        Attempt: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<CoreAnswer, UpstreamError>>,
    {
        let refuse = |refused: Refused| {
            metrics.count_refusal(refused.reason);
            refused
        };
        let _permit = self
            .budget
            .acquire(protect.max_in_flight.get() as usize, protect.max_queued as usize, deadline)
            .await
            .map_err(|reason| {
                refuse(match reason {
                    RefusalReason::QueueFull => Refused::shed(),
                    _ => Refused::deadline(),
                })
            })?;
        let mut backoff = protect.retry_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left < MIN_ATTEMPT {
                return Err(UpstreamError::DeadlineExceeded.into());
            }
            let admitted = self.breaker.admit(now);
            self.publish_breaker(metrics);
            let probe = admitted.map_err(|retry_in| refuse(Refused::breaker_open(retry_in.max(MIN_PUSHBACK))))?;
            let clipped = left < attempt_timeout;
            let outcome = match attempt(attempt_timeout.min(left)).await {
                // The caller's deadline ended the attempt, not the core: say so, and do not hold it
                // against the core.
                Err(UpstreamError::Timeout(_)) if clipped => Err(UpstreamError::DeadlineExceeded),
                outcome => outcome,
            };
            metrics.record_core_call(
                match &outcome {
                    Ok(answer) if answer.merchant.is_some() => CoreCallResult::Found,
                    Ok(_) => CoreCallResult::NotFound,
                    Err(UpstreamError::Timeout(_) | UpstreamError::DeadlineExceeded) => CoreCallResult::Timeout,
                    Err(_) => CoreCallResult::Error,
                },
                now.elapsed(),
            );
            let verdict = match &outcome {
                Ok(_) => Some(true),
                Err(UpstreamError::DeadlineExceeded) => None,
                Err(_) => Some(false),
            };
            probe.settle(verdict, Instant::now(), protect.breaker_failures.get(), protect.breaker_open_for);
            self.publish_breaker(metrics);
            let error = match outcome {
                Ok(answer) => return Ok(answer),
                Err(UpstreamError::DeadlineExceeded) => return Err(UpstreamError::DeadlineExceeded.into()),
                Err(error) => error,
            };
            // Full jitter (a random pause up to the backoff) keeps retries from many edges apart.
            let pause = backoff.mul_f64(fastrand::f64());
            if attempts >= protect.max_attempts.get() || Instant::now() + pause + MIN_ATTEMPT >= deadline {
                return Err(error.into());
            }
            metrics.core_retries.inc();
            tokio::time::sleep(pause).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    fn publish_breaker(&self, metrics: &GuardMetrics) {
        metrics.breaker_state.set(match self.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        });
    }
}
