//! core-pg's operators' HTTP endpoint: `/livez`, `/readyz` (200 while it follows the database's
//! changes; otherwise 503 saying why) and `/metrics` (Prometheus text).
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::CorePgMetrics;

pub fn router(metrics: Arc<CorePgMetrics>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<CorePgMetrics>>) -> impl IntoResponse {
    let head = metrics.head_sequence.get();
    match metrics.readiness() {
        Ok(()) => (StatusCode::OK, format!("ready: following the database's changes; head sequence {head}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}; head sequence {head}\n")),
    }
}

async fn metrics_text(State(metrics): State<Arc<CorePgMetrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
}
