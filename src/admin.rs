//! The operators' HTTP endpoint (loopback by default): liveness, readiness, Prometheus metrics, the
//! effective config, reload, explaining one ID and invalidating one ID. Endpoints that change state answer loopback clients only, unless
//! `admin.allow_remote_changes` is set.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::time::Instant;

use crate::metrics::ReloadTrigger;
use crate::reload::{ReloadError, Reloader};
use crate::shared::Shared;

#[derive(Clone)]
pub struct AdminState {
    pub shared: Shared,
    pub reloader: Arc<Reloader>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/reload", post(reload))
        .route("/debug/merchants/{id}", get(explain))
        .route("/invalidate/{id}", post(invalidate))
        .with_state(state)
}

/// Ready once warm and until draining. The body also says how the change feed is doing: the edge keeps
/// serving while the feed is down (from memory), so the feed does not decide readiness, but operators
/// need to see it.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let (code, verdict) = if state.shared.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: warming up or draining")
    };
    let feed = &state.shared.feed;
    let lag = feed.lag(Instant::now());
    let link = if feed.is_connected() { "connected" } else { "DOWN" };
    let body = format!(
        "{verdict}\nfeed: {link}, applied sequence {}, core head {}, lag {} / {:.1}s\n",
        feed.applied(),
        feed.head(),
        crate::text::count(lag.notices, "notice", "notices"),
        lag.duration.as_secs_f64()
    );
    (code, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (positive, negative) = state.shared.resolver.stores().entry_counts();
    state.shared.metrics.set_cache_entries(positive, negative);
    state.shared.metrics.feed.refresh(&state.shared.feed);
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.shared.metrics.encode(),
    )
}

/// The effective config, every default filled in, as TOML.
async fn config(State(state): State<AdminState>) -> impl IntoResponse {
    let config = state.shared.config.load();
    let source = match state.reloader.path() {
        Some(path) => format!("loaded from {}", path.display()),
        None => "the embedded default (no --config)".to_owned(),
    };
    let body = format!("# effective config: {source}; hash {}\n{}", config.hash(), config.to_toml());
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// Whether a client at `peer` may use endpoints that change state.
fn may_change_state(peer: IpAddr, allow_remote_changes: bool) -> bool {
    allow_remote_changes || peer.is_loopback() || peer.to_canonical().is_loopback()
}

/// Refuses a state-changing request from a client that may not make one.
fn refuse_remote(state: &AdminState, peer: SocketAddr, what: &str) -> Option<Response> {
    if may_change_state(peer.ip(), state.shared.config.load().admin.allow_remote_changes) {
        return None;
    }
    tracing::warn!(%peer, "refused {what} from a non-loopback client");
    let message = "state-changing endpoints answer loopback clients only (see admin.allow_remote_changes)";
    Some((StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": message }))).into_response())
}

/// The checklist and verdict for one ID, as JSON. It asks the core directly, so it answers the same
/// clients as the state-changing endpoints (loopback unless admin.allow_remote_changes).
async fn explain(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = refuse_remote(&state, peer, "GET /debug/merchants") {
        return refused;
    }
    Json(crate::explain::explain(&state.shared, &id).await).into_response()
}

/// Drops both entries for one ID (manual repair); the next lookup asks the core.
async fn invalidate(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = refuse_remote(&state, peer, "POST /invalidate") {
        return refused;
    }
    let id = match state.shared.config.load().merchant_id.normalise(&id) {
        Ok(id) => id.into_owned(),
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    };
    state.shared.resolver.invalidate(&id).await;
    state.shared.metrics.invalidations.inc();
    tracing::info!(%peer, id, "entries invalidated over the admin endpoint");
    (StatusCode::OK, Json(serde_json::json!({ "invalidated": id }))).into_response()
}

async fn reload(State(state): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(refused) = refuse_remote(&state, peer, "POST /reload") {
        return refused;
    }
    tracing::info!(%peer, "reload requested over the admin endpoint");
    // In its own task: a client that hangs up must not cancel a reload halfway through.
    let reloader = state.reloader.clone();
    let reloaded = tokio::spawn(async move { reloader.reload(ReloadTrigger::Admin).await });
    match reloaded.await.expect("a reload does not panic") {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(error) => {
            let code = match error {
                ReloadError::NoFile => StatusCode::CONFLICT,
                ReloadError::Invalid(_) | ReloadError::Tls(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (code, Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_change_state_unless_allowed() {
        for loopback in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(may_change_state(loopback.parse().unwrap(), false), "{loopback}");
        }
        for remote in ["10.0.0.7", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.7"] {
            assert!(!may_change_state(remote.parse().unwrap(), false), "{remote}");
            assert!(may_change_state(remote.parse().unwrap(), true), "{remote} with allow_remote_changes");
        }
    }
}
