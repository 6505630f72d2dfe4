//! The relay's operators' HTTP endpoint: `/livez`, `/readyz` (both sides connected and the stream's
//! tail known; otherwise 503 saying what is missing) and `/metrics` (Prometheus text).
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::RelayMetrics;

pub fn router(metrics: Arc<RelayMetrics>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<RelayMetrics>>) -> impl IntoResponse {
    let position = format!(
        "applied sequence {}, published sequence {}, core head {}, lag {} notices; NATS {}",
        metrics.applied_sequence.get(),
        metrics.published_sequence.get(),
        metrics.core_head_sequence.get(),
        metrics.lag_notices.get(),
        metrics.nats_link().describe()
    );
    match metrics.readiness() {
        Ok(()) => (StatusCode::OK, format!("ready: relaying; {position}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}; {position}\n")),
    }
}

async fn metrics_text(State(metrics): State<Arc<RelayMetrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
}
