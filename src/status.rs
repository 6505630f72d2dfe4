//! The one place where edge errors become gRPC statuses. An unreachable core is UNAVAILABLE, never
//! NOT_FOUND: "not found" is an answer (OK with `found = false`), not an error.
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::resolver::LookupError;
use crate::upstream::UpstreamError;

/// Server pushback as gRPC's retry design (A6) defines it: how long a client should wait first.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Errors of a whole call, before any ID is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("batch has {got} merchant_ids; at most {max} are accepted per BatchLookup (server.max_batch_size): split the batch")]
    BatchTooLarge { got: usize, max: usize },
}

pub fn lookup_code(error: &LookupError) -> Code {
    match error {
        LookupError::InvalidId(_) => Code::InvalidArgument,
        LookupError::Upstream(UpstreamError::Shed | UpstreamError::ClientLimit { .. }) => Code::ResourceExhausted,
        LookupError::Upstream(UpstreamError::DeadlineExceeded) => Code::DeadlineExceeded,
        LookupError::Upstream(
            UpstreamError::Timeout(_) | UpstreamError::Unavailable(_) | UpstreamError::BreakerOpen(_),
        ) => Code::Unavailable,
    }
}

impl From<LookupError> for Status {
    fn from(error: LookupError) -> Self {
        let mut status = Status::new(lookup_code(&error), error.to_string());
        if let LookupError::Upstream(upstream) = &error {
            if let Some(after) = upstream.retry_after() {
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
