//! Why core protection refused a core-bound lookup: one reason enum (also the metric's label), and
//! the error that carries it with what the caller needs to retry well.
use std::time::Duration;

use crate::metric_labels::label_values;
use crate::upstream::UpstreamError;

label_values! {
    /// Why a lookup that needed the core did not get a core call.
    pub RefusalReason {
        /// Core calls in flight and the queue behind them are both full: shed.
        QueueFull => "queue_full",
        /// The circuit breaker is open.
        BreakerOpen => "breaker_open",
        /// The caller's client is over its rate.
        ClientLimit => "client_limit",
        /// The caller's deadline passed while it waited for a place.
        Deadline => "deadline",
    }
}

/// How long a shed caller should wait before trying again.
const SHED_PUSHBACK: Duration = Duration::from_millis(100);

/// A refusal, with what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Refused {
    /// Why.
    pub reason: RefusalReason,
    /// When retrying may succeed (breaker and client limits know; shedding suggests a moment).
    pub retry_in: Option<Duration>,
    /// For a client limit: the client and its rate.
    pub client: Option<(String, u32)>,
}

impl Refused {
    /// Shed: calls in flight and the queue are full.
    pub fn shed() -> Self {
        Self { reason: RefusalReason::QueueFull, retry_in: Some(SHED_PUSHBACK), client: None }
    }

    /// The breaker is open for `retry_in` more.
    pub fn breaker_open(retry_in: Duration) -> Self {
        Self { reason: RefusalReason::BreakerOpen, retry_in: Some(retry_in), client: None }
    }

    /// `client` is over its `rate`; a token is back in `retry_in`.
    pub fn client_limit(client: String, rate: u32, retry_in: Duration) -> Self {
        Self { reason: RefusalReason::ClientLimit, retry_in: Some(retry_in), client: Some((client, rate)) }
    }

    /// The caller's deadline passed while it waited.
    pub fn deadline() -> Self {
        Self { reason: RefusalReason::Deadline, retry_in: None, client: None }
    }

    fn message(&self) -> String {
        match (self.reason, &self.client) {
            (RefusalReason::QueueFull, _) => {
                "too many lookups are waiting for the bank core; this one was shed: retry in a moment".into()
            }
            (RefusalReason::BreakerOpen, _) => format!(
                "the bank core is failing, so calls to it are paused (circuit breaker open); retry in {:?}",
                self.retry_in.unwrap_or_default()
            ),
            (RefusalReason::ClientLimit, Some((client, rate))) => format!(
                "client {client} is over its limit of {rate} lookups per second that need the bank core \
                 (protect.per_client_rate); retry in {:?}",
                self.retry_in.unwrap_or_default()
            ),
            (RefusalReason::ClientLimit, None) => "the client is over its limit (protect.per_client_rate)".into(),
            (RefusalReason::Deadline, _) => "the call's deadline passed before the bank core answered".into(),
        }
    }
}

/// Why a core call gave no answer: protection refused it, or the core failed. Cloneable because one
/// failure is shared by every lookup that joined the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    /// Core protection refused the call.
    Refused(#[from] Refused),
    #[error(transparent)]
    /// The core failed.
    Upstream(#[from] UpstreamError),
}

impl CoreError {
    /// The caller's deadline ended it (not the core): worth one more try under a caller's own deadline.
    pub fn is_deadline(&self) -> bool {
        matches!(
            self,
            Self::Upstream(UpstreamError::DeadlineExceeded)
                | Self::Refused(Refused { reason: RefusalReason::Deadline, .. })
        )
    }

    /// When the caller may usefully try again, for errors that know.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused(refused) => refused.retry_in,
            Self::Upstream(_) => None,
        }
    }
}
