//! The one place where lookup outcomes become what a terminal sees: errors become gRPC codes with a
//! reason, and answers get the reason that explains them. An unreachable core is UNAVAILABLE, never
//! NOT_FOUND: "not found" is an answer (OK with `found = false`), not an error.
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::resolver::{Answer, LookupError, NotFreshCause};
use crate::guard::{CoreError, RefusalReason};
use crate::merchant_id::IdError;
use crate::pb::{MerchantStatus, Reason, Source};
use crate::upstream::UpstreamError;

/// Response metadata naming the reason (a `merchant.v1.Reason` name) of a failed unary Lookup.
pub const REASON_HEADER: &str = "merchant-edge-reason";

/// Why an answer is not simply "an ACTIVE merchant" (see `merchant.v1.Reason`).
pub fn answer_reason(answer: &Answer) -> Reason {
    let Some(merchant) = &answer.merchant else {
        return Reason::UnknownToCore;
    };
    match MerchantStatus::try_from(merchant.status()) {
        Ok(MerchantStatus::PendingReview) => Reason::PendingReview,
        Ok(MerchantStatus::Suspended) => Reason::Suspended,
        Ok(MerchantStatus::Closed) => Reason::Closed,
        Ok(MerchantStatus::Active) if answer.source == Source::Stale => Reason::CoreUnreachable,
        Ok(MerchantStatus::Active) => Reason::Unspecified,
        Ok(MerchantStatus::Unspecified) | Err(_) => Reason::StatusUnknown,
    }
}

/// The gRPC code and the reason (see `merchant.v1.Reason`) of a lookup that has no answer.
pub fn classify(error: &LookupError) -> (Code, Reason) {
    match error {
        LookupError::InvalidId(IdError::Empty { .. }) => (Code::InvalidArgument, Reason::IdEmpty),
        LookupError::InvalidId(IdError::Length { .. }) => (Code::InvalidArgument, Reason::IdLength),
        LookupError::InvalidId(IdError::Charset { .. }) => (Code::InvalidArgument, Reason::IdCharset),
        LookupError::Core(core) => core_outcome(core),
        LookupError::SequenceAhead { .. } => (Code::FailedPrecondition, Reason::SequenceAhead),
        // Behind the token, the core's failure is what the caller meets: shed stays RESOURCE_EXHAUSTED (with
        // its pushback), the caller's own deadline DEADLINE_EXCEEDED, anything else UNAVAILABLE.
        LookupError::NotFresh { why: NotFreshCause::Core(core), .. } => core_outcome(core),
        LookupError::NotFresh { why: NotFreshCause::CoreBehind { .. }, .. } => {
            (Code::Unavailable, Reason::CoreUnreachable)
        }
    }
}

/// The gRPC code and reason of a core that could not be asked or did not answer.
fn core_outcome(error: &CoreError) -> (Code, Reason) {
    match error {
        CoreError::Refused(refused) => match refused.reason {
            RefusalReason::QueueFull | RefusalReason::ClientLimit => (Code::ResourceExhausted, Reason::CoreBusy),
            RefusalReason::BreakerOpen => (Code::Unavailable, Reason::CoreUnreachable),
            RefusalReason::Deadline => (Code::DeadlineExceeded, Reason::CoreUnreachable),
        },
        CoreError::Upstream(UpstreamError::DeadlineExceeded) => (Code::DeadlineExceeded, Reason::CoreUnreachable),
        CoreError::Upstream(UpstreamError::Timeout(_) | UpstreamError::Unavailable(_)) => {
            (Code::Unavailable, Reason::CoreUnreachable)
        }
    }
}

/// Server pushback as gRPC's retry design (A6) defines it: how long a client should wait first.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Errors of a whole call, before any ID is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("batch has {got} merchant_ids; at most {max} are accepted per BatchLookup (server.max_batch_size): split the batch")]
    /// More IDs than `server.max_batch_size`.
    BatchTooLarge {
        /// IDs in the batch.
        got: usize,
        /// The limit.
        max: usize,
    },
}

impl From<LookupError> for Status {
    fn from(error: LookupError) -> Self {
        let (code, reason) = classify(&error);
        let mut status = Status::new(code, error.to_string());
        status.metadata_mut().insert(REASON_HEADER, MetadataValue::from_static(reason.as_str_name()));
        if let LookupError::Core(core) | LookupError::NotFresh { why: NotFreshCause::Core(core), .. } = &error {
            if let Some(after) = core.retry_after() {
                let millis = MetadataValue::from(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
                status.metadata_mut().insert(RETRY_PUSHBACK_HEADER, millis);
            }
        }
        status
    }
}

impl From<CallError> for Status {
    fn from(error: CallError) -> Self {
        match error {
            CallError::BatchTooLarge { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::EncodedMerchant;

    fn answer(status: i32, source: Source) -> Answer {
        let merchant = crate::pb::Merchant { status, ..Default::default() };
        Answer { merchant: Some(EncodedMerchant::encode(&merchant)), source, age: Duration::ZERO, as_of_sequence: 0 }
    }

    #[test]
    fn only_an_active_merchant_answered_normally_has_nothing_to_explain() {
        let active = MerchantStatus::Active as i32;
        assert_eq!(answer_reason(&answer(active, Source::Cache)), Reason::Unspecified);
        assert_eq!(answer_reason(&answer(active, Source::Stale)), Reason::CoreUnreachable);
        let suspended = MerchantStatus::Suspended as i32;
        assert_eq!(answer_reason(&answer(suspended, Source::Stale)), Reason::Suspended, "status first");
        assert_eq!(answer_reason(&answer(0, Source::Upstream)), Reason::StatusUnknown);
        assert_eq!(answer_reason(&answer(77, Source::Upstream)), Reason::StatusUnknown, "a status from a newer core");
        let unknown = Answer { merchant: None, source: Source::NegativeCache, age: Duration::ZERO, as_of_sequence: 3 };
        assert_eq!(answer_reason(&unknown), Reason::UnknownToCore);
    }

    #[test]
    fn a_token_ahead_of_the_core_is_a_failed_precondition_and_one_the_core_cannot_meet_is_unavailable() {
        let ahead = LookupError::SequenceAhead { asked: 900, core: 41 };
        assert_eq!(classify(&ahead), (Code::FailedPrecondition, Reason::SequenceAhead));
        let message = ahead.to_string();
        assert!(message.contains("900") && message.contains("41"), "{message}");
        let down = CoreError::Upstream(UpstreamError::Unavailable("connection refused".into()));
        let behind = LookupError::NotFresh { asked: 12, held: 9, why: NotFreshCause::Core(down) };
        assert_eq!(classify(&behind), (Code::Unavailable, Reason::CoreUnreachable));
        let message = behind.to_string();
        assert!(message.contains("sequence 12") && message.contains("sequence 9"), "{message}");
        let replica = LookupError::NotFresh { asked: 12, held: 9, why: NotFreshCause::CoreBehind { answered: 10 } };
        assert_eq!(classify(&replica), (Code::Unavailable, Reason::CoreUnreachable));
        let status = Status::from(ahead);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(REASON_HEADER).unwrap(), "REASON_SEQUENCE_AHEAD");
    }
}
