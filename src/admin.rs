//! The operators' HTTP endpoint (loopback by default): liveness, readiness and Prometheus metrics.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::resolver::Resolver;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<Resolver>,
    pub readiness: Readiness,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (positive, negative) = state.resolver.stores().entry_counts();
    state.metrics.set_cache_entries(positive, negative);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
