//! The handles that every part of a running edge shares (the feed, reloads, the admin endpoint).
use std::sync::Arc;

use crate::config::LiveConfig;
use crate::feed::FeedStatus;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::resolver::Resolver;

#[derive(Clone)]
pub struct Shared {
    pub config: LiveConfig,
    pub resolver: Arc<Resolver>,
    pub feed: Arc<FeedStatus>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}
