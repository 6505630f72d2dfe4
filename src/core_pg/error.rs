//! What can go wrong serving the core contract from PostgreSQL, and the one place it becomes a gRPC
//! status. Messages say what the caller (or the operator) can do about it.
use tonic::Status;

use super::schema::VerifyError;

/// A failed core-pg operation.
#[derive(Debug, thiserror::Error)]
pub enum CorePgError {
    #[error("no database connection available ({0}); retry later")]
    /// The pool could not hand out a connection in time.
    Pool(String),
    #[error("the database failed the request: {0}")]
    /// A statement failed (connection lost, timeout, constraint).
    Database(String),
    #[error("{0}")]
    /// The request itself is wrong.
    InvalidArgument(String),
    #[error("merchant {0} does not exist")]
    /// A delete of an unknown merchant.
    NotFound(String),
    #[error("the listing's snapshot is gone (idle longer than [postgres] listing_idle_timeout, or core-pg restarted); start the listing again with an empty page_token")]
    /// A page token names a snapshot no longer held.
    ListingExpired,
    #[error("{0}")]
    /// WatchChanges from a point the history cannot continue.
    OutOfRange(String),
    #[error("{0} listings are open ([postgres] max_listings); retry when one has finished")]
    /// Too many listings at once.
    TooManyListings(u32),
    #[error("core-pg is not following the database yet ({0}); retry later")]
    /// The decoder has not synced, or the database's identity changed under it.
    NotReady(String),
    #[error("{0} is not implemented by core-pg: {1}")]
    /// A simulator-only call.
    Unimplemented(&'static str, &'static str),
    #[error("{0}")]
    /// The settings cannot work (a bad URL, an unreadable password file, a port in use).
    Setup(String),
    #[error(transparent)]
    /// The database is not set up for core-pg.
    Schema(#[from] VerifyError),
}

impl From<tokio_postgres::Error> for CorePgError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Database(describe(&error))
    }
}

impl From<deadpool_postgres::PoolError> for CorePgError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Self::Database(describe(&error)),
            other => Self::Pool(other.to_string()),
        }
    }
}

/// A database error with PostgreSQL's own message and code when it sent one (tokio-postgres' Display
/// says only "db error").
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl From<CorePgError> for Status {
    fn from(error: CorePgError) -> Self {
        let message = error.to_string();
        match error {
            CorePgError::Pool(_) | CorePgError::Database(_) | CorePgError::NotReady(_) | CorePgError::Schema(_) => {
                Status::unavailable(message)
            }
            CorePgError::InvalidArgument(_) => Status::invalid_argument(message),
            CorePgError::NotFound(_) => Status::not_found(message),
            CorePgError::ListingExpired => Status::aborted(message),
            CorePgError::OutOfRange(_) => Status::out_of_range(message),
            CorePgError::TooManyListings(_) => Status::resource_exhausted(message),
            CorePgError::Unimplemented(..) => Status::unimplemented(message),
            CorePgError::Setup(_) => Status::internal(message),
        }
    }
}
