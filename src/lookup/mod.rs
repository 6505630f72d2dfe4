//! The lookup path, read side only: the terminal-facing gRPC service ([`LookupService`]) asks the
//! [`Resolver`], which answers from the cache room's stores or asks the core through core protection
//! and hands the answer to the cache room to install; [`outcome`] turns the result into what a
//! terminal sees (gRPC code and reason).
mod metrics;
pub mod outcome;
mod resolver;
mod service;

pub use self::metrics::{LookupCounters, LookupMetrics, ResultLabel, SourceLabel, TokenMetrics, TokenOutcome};
pub use self::resolver::{
    after_core, remembered, stale_merchant, Answer, InMemory, LookupError, MemoryReader, NotFreshCause, Remembered,
    Resolver,
};
pub use self::service::LookupService;
