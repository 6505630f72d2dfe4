//! The one place where edge errors become gRPC statuses. An unreachable core is UNAVAILABLE, never
//! NOT_FOUND: "not found" is an answer (OK with `found = false`), not an error.
use tonic::{Code, Status};

use crate::resolver::LookupError;

/// Errors of a whole call, before any ID is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("batch has {got} merchant_ids; at most {max} are accepted per BatchLookup (server.max_batch_size): split the batch")]
    BatchTooLarge { got: usize, max: usize },
}

pub fn lookup_code(error: &LookupError) -> Code {
    match error {
        LookupError::InvalidId(_) => Code::InvalidArgument,
        LookupError::Upstream(_) => Code::Unavailable,
    }
}

impl From<LookupError> for Status {
    fn from(error: LookupError) -> Self {
        Status::new(lookup_code(&error), error.to_string())
    }
}

impl From<CallError> for Status {
    fn from(error: CallError) -> Self {
        match error {
            CallError::BatchTooLarge { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}
