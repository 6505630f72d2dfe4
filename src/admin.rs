//! The operators' HTTP endpoint (loopback by default): liveness, readiness and Prometheus metrics.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use tokio::time::Instant;

use crate::feed::FeedStatus;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::resolver::Resolver;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<Resolver>,
    pub readiness: Readiness,
    pub feed: Arc<FeedStatus>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready once warm. The body also says how the change feed is doing: the edge keeps serving while the
/// feed is down (from memory), so the feed does not decide readiness, but operators need to see it.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let (code, verdict) = if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: loading the core snapshot")
    };
    let feed = &state.feed;
    let lag = feed.lag(Instant::now());
    let link = if feed.is_connected() { "connected" } else { "DOWN" };
    let body = format!(
        "{verdict}\nfeed: {link}, applied sequence {}, core head {}, lag {} notices / {:.1}s\n",
        feed.applied(),
        feed.head(),
        lag.notices,
        lag.duration.as_secs_f64()
    );
    (code, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (positive, negative) = state.resolver.stores().entry_counts();
    state.metrics.set_cache_entries(positive, negative);
    state.metrics.feed.refresh(&state.feed);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}
