//! Protecting the bank core: every core call goes through [`CoreGuard::call`], which bounds how many
//! run and wait (shedding beyond that at once), stops calling a failing core (circuit breaker), retries
//! failures with backoff and jitter only while the caller's deadline allows, and charges core-bound
//! lookups to their client ([`CoreGuard::charge`]).
mod breaker;
mod budget;
mod client_limit;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use breaker::Breaker;
pub use breaker::BreakerState;
use budget::{Budget, Refused};
use client_limit::ClientLimits;

use crate::config::ProtectConfig;
use crate::metrics::{CoreCallResult, Metrics, RefusalReason};
use crate::upstream::{CoreAnswer, UpstreamError};

/// Who is asking, as far as core protection cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The client the per-client limit charges (peer IP or the configured metadata value).
    pub client: Option<String>,
    /// When the caller stops waiting (its gRPC deadline).
    pub deadline: Option<Instant>,
}

#[derive(Default)]
pub struct CoreGuard {
    budget: Budget,
    breaker: Breaker,
    clients: ClientLimits,
}

impl CoreGuard {
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Calls in flight and queued now.
    pub fn load(&self) -> (usize, usize) {
        self.budget.load()
    }

    /// Charges one core-bound lookup to the caller's client.
    pub fn charge(&self, caller: &Caller, protect: &ProtectConfig, metrics: &Metrics) -> Result<(), UpstreamError> {
        let (Some(client), Some(rate)) = (&caller.client, protect.per_client_rate) else {
            return Ok(());
        };
        let burst = protect.per_client_burst.map_or(rate.get(), |burst| burst.get());
        self.clients.take(client, rate.get(), burst, Instant::now()).map_err(|retry_in| {
            metrics.count_refusal(RefusalReason::ClientLimit);
            UpstreamError::ClientLimit { client: client.clone(), rate: rate.get(), retry_in }
        })
    }

    /// Runs `attempt` (given each attempt's timeout) within the budget and the breaker, retrying
    /// failures while `deadline` allows. `still_wanted` is asked before each attempt: when nobody waits
    /// for the answer any more, no further call is made.
    pub async fn call<Attempt, Fut>(
        &self,
        protect: &ProtectConfig,
        attempt_timeout: Duration,
        deadline: Instant,
        metrics: &Metrics,
        still_wanted: impl Fn() -> bool,
        attempt: Attempt,
    ) -> Result<CoreAnswer, UpstreamError>
    where
        Attempt: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<CoreAnswer, UpstreamError>>,
    {
        let refuse = |reason, error| {
            metrics.count_refusal(reason);
            error
        };
        let _permit = self
            .budget
            .acquire(protect.max_in_flight.get() as usize, protect.max_queued as usize, deadline)
            .await
            .map_err(|refused| match refused {
                Refused::QueueFull => refuse(RefusalReason::QueueFull, UpstreamError::Shed),
                Refused::DeadlineExceeded => refuse(RefusalReason::Deadline, UpstreamError::DeadlineExceeded),
            })?;
        let mut backoff = protect.retry_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let now = Instant::now();
            if !still_wanted() || now >= deadline {
                return Err(refuse(RefusalReason::Deadline, UpstreamError::DeadlineExceeded));
            }
            self.breaker.admit(now).map_err(|retry_in| {
                self.publish_breaker(metrics);
                refuse(RefusalReason::BreakerOpen, UpstreamError::BreakerOpen(retry_in))
            })?;
            let outcome = attempt(attempt_timeout.min(deadline - now)).await;
            let result = match &outcome {
                Ok(answer) if answer.merchant.is_some() => CoreCallResult::Found,
                Ok(_) => CoreCallResult::NotFound,
                Err(UpstreamError::Timeout(_)) => CoreCallResult::Timeout,
                Err(_) => CoreCallResult::Error,
            };
            metrics.record_core_call(result, now.elapsed());
            self.breaker.record(
                outcome.is_ok(),
                Instant::now(),
                protect.breaker_failures.get(),
                protect.breaker_open_for,
            );
            self.publish_breaker(metrics);
            let error = match outcome {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            // Full jitter (a random pause up to the backoff) keeps retries from many edges apart.
            let pause = backoff.mul_f64(fastrand::f64());
            if attempts >= protect.max_attempts.get() || Instant::now() + pause >= deadline {
                return Err(error);
            }
            metrics.core_retries.inc();
            tokio::time::sleep(pause).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    fn publish_breaker(&self, metrics: &Metrics) {
        metrics.breaker_state.set(match self.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        });
    }
}
