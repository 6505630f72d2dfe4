//! The operators' HTTP endpoint (loopback by default): liveness, readiness, Prometheus metrics, the
//! effective config, reload, explaining one ID and invalidating one ID. The endpoints that change state
//! or ask the core sit behind one guard ([`guard`], deciding with [`crate::admin_auth`]): loopback
//! clients, and remote ones only with `admin.allow_remote_changes` and the bearer token of
//! `admin.token_file`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::time::Instant;

use crate::admin_auth::{self, Access, AdminToken};
use crate::config::LiveConfig;
use crate::feed::FeedState;
use crate::lookup::Resolver;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::{ReloadError, ReloadTrigger, Reloader};

#[derive(Clone)]
pub struct AdminState {
    pub config: LiveConfig,
    pub resolver: Arc<Resolver>,
    pub feed: Arc<FeedState>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub reloader: Arc<Reloader>,
    /// The local snapshot restored at start, if one was.
    pub restored: Option<Arc<crate::snapshot::Restored>>,
}

pub fn router(state: AdminState) -> Router {
    let guard = Guard { config: state.config.clone(), token: state.reloader.admin_token().clone() };
    // One guard for every endpoint that changes state or asks the core; `route_layer` so that an
    // unknown path is still a 404, not a 401.
    let guarded = Router::new()
        .route("/reload", post(reload))
        .route("/debug/merchants/{id}", get(explain))
        .route("/invalidate/{id}", post(invalidate))
        .route_layer(middleware::from_fn_with_state(guard, self::guard));
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .merge(guarded)
        .with_state(state)
}

/// What the guard reads on each request: the live config and the token in force (both replaced by
/// reloads).
#[derive(Clone)]
pub struct Guard {
    pub config: LiveConfig,
    pub token: Arc<AdminToken>,
}

/// Lets a request through to a guarded endpoint, or refuses it: 403 when this caller may not use it
/// at all, 401 with `WWW-Authenticate: Bearer` when the right token would be accepted. Refusals are
/// logged with the peer (never with what it sent).
pub async fn guard(
    State(guard): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|value| admin_auth::bearer(value.as_bytes()));
    let token = guard.token.current();
    let access = admin_auth::decide(peer.ip(), &guard.config.load().admin, token.as_deref(), presented);
    let refusal = |code: StatusCode, message: &str| {
        tracing::warn!(%peer, method = %request.method(), path = request.uri().path(), "admin request refused: {message}");
        (code, Json(serde_json::json!({ "error": message })))
    };
    match access {
        Access::Granted => next.run(request).await,
        Access::Forbidden(message) => refusal(StatusCode::FORBIDDEN, message).into_response(),
        Access::Unauthorized(message) => {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"merchant-edge admin\"")];
            (challenge, refusal(StatusCode::UNAUTHORIZED, message)).into_response()
        }
    }
}

/// Ready once warm and until draining. The body also says how the change feed is doing: the edge keeps
/// serving while the feed is down (from memory), so the feed does not decide readiness, but operators
/// need to see it.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let feed = &state.feed;
    let lag = feed.lag(Instant::now());
    let link = if feed.is_connected() { "connected" } else { "DOWN" };
    // Until the feed has followed the core once, a restored edge answers only what its snapshot held.
    let from_snapshot = state.restored.as_ref().filter(|_| !state.readiness.feed_has_followed()).map(|restored| {
        let age = humantime_serde::re::humantime::format_duration(Duration::from_secs(restored.age().as_secs()));
        format!("serving from local snapshot of {age}, feed {link}")
    });
    let (code, verdict) = match (state.readiness.is_ready(), from_snapshot) {
        (true, Some(snapshot)) => (StatusCode::OK, format!("ready: {snapshot}")),
        (true, None) => (StatusCode::OK, "ready".to_owned()),
        (false, Some(snapshot)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {snapshot}, waiting for the core"))
        }
        (false, None) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: warming up or draining".to_owned()),
    };
    let source = state.config.load().feed.source.as_str();
    let nats = feed.nats().map(|nats| format!("\nnats: {}", nats.describe())).unwrap_or_default();
    let body = format!(
        "{verdict}\nfeed: {link}, applied sequence {}, core head {}, lag {} / {:.1}s, source {source}{nats}\n",
        feed.applied(),
        feed.head(),
        crate::text::count(lag.notices, "notice", "notices"),
        lag.duration.as_secs_f64()
    );
    (code, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (positive, negative) = state.resolver.cache().stores().entry_counts();
    state.metrics.cache.set_entries(positive, negative);
    state.metrics.feed.refresh(&state.feed);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

/// The effective config, every default filled in, as TOML.
async fn config(State(state): State<AdminState>) -> impl IntoResponse {
    let config = state.config.load();
    let source = match state.reloader.path() {
        Some(path) => format!("loaded from {}", path.display()),
        None => "the embedded default (no --config)".to_owned(),
    };
    let body = format!("# effective config: {source}; hash {}\n{}", config.hash(), config.to_toml());
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// The checklist and verdict for one ID, as JSON; `?min_sequence=N` adds a consistency token to check.
/// It asks the core directly, so it is guarded like the state-changing endpoints.
async fn explain(State(state): State<AdminState>, Path(id): Path<String>, RawQuery(query): RawQuery) -> Response {
    let min_sequence = match min_sequence_param(query.as_deref()) {
        Ok(min_sequence) => min_sequence,
        Err(message) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
        }
    };
    let config = state.config.load_full();
    Json(crate::explain::explain(&config, &state.resolver, &state.feed, &id, min_sequence).await).into_response()
}

/// The `min_sequence` of an explain query string (the only parameter it takes).
fn min_sequence_param(query: Option<&str>) -> Result<Option<u64>, String> {
    let mut min_sequence = None;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("min_sequence", value)) => {
                let parsed = value.parse::<u64>().map_err(|_| {
                    format!("min_sequence must be a sequence number (0 to {}), not {value:?}", u64::MAX)
                })?;
                min_sequence = (parsed > 0).then_some(parsed);
            }
            _ => return Err(format!("unknown query parameter {pair:?}: only min_sequence=N is accepted")),
        }
    }
    Ok(min_sequence)
}

/// Drops both entries for one ID (manual repair); the next lookup asks the core.
async fn invalidate(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    let id = match state.config.load().merchant_id.normalise(&id) {
        Ok(id) => id.into_owned(),
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    };
    state.resolver.cache().invalidate(&id).await;
    tracing::info!(%peer, id, "entries invalidated over the admin endpoint");
    (StatusCode::OK, Json(serde_json::json!({ "invalidated": id }))).into_response()
}

async fn reload(State(state): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    tracing::info!(%peer, "reload requested over the admin endpoint");
    // In its own task: a client that hangs up must not cancel a reload halfway through.
    let reloader = state.reloader.clone();
    let reloaded = tokio::spawn(async move { reloader.reload(ReloadTrigger::Admin).await });
    match reloaded.await.expect("a reload does not panic") {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(error) => {
            let code = match error {
                ReloadError::NoFile => StatusCode::CONFLICT,
                ReloadError::Invalid(_) | ReloadError::Tls(_) | ReloadError::AdminToken(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            };
            (code, Json(serde_json::json!({ "error": error.to_string() }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use arc_swap::ArcSwap;
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::admin_auth::Token;
    use crate::config::Config;

    /// A guarded endpoint behind the real guard, with `admin` settings and the token in force.
    fn guarded(configure: impl FnOnce(&mut Config), token: Option<&str>) -> Router {
        let mut config = Config::default();
        configure(&mut config);
        let guard = Guard { config: Arc::new(ArcSwap::from_pointee(config)), token: Arc::default() };
        guard.token.replace(token.map(|token| Token::from_bytes(token.as_bytes()).unwrap()));
        Router::new()
            .route("/reload", post(|| async { "reloaded" }))
            .route_layer(middleware::from_fn_with_state(guard, self::guard))
    }

    /// One request from `peer`, as `into_make_service_with_connect_info` would hand it over:
    /// (status, WWW-Authenticate, body).
    async fn call(router: Router, peer: &str, bearer: Option<&str>) -> (StatusCode, Option<String>, String) {
        let mut request = Request::post("/reload");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let response = router.oneshot(request).await.unwrap();
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, challenge, String::from_utf8(body.to_vec()).unwrap())
    }

    const LOOPBACK: &str = "127.0.0.1:40000";
    const REMOTE: &str = "192.0.2.7:40000";

    #[tokio::test]
    async fn loopback_callers_need_no_token_by_default() {
        let (status, _, body) = call(guarded(|_| {}, None), LOOPBACK, None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "reloaded"));
        let (status, _, _) = call(guarded(|_| {}, Some("s3cret")), "[::1]:40000", None).await;
        assert_eq!(status, StatusCode::OK, "a token file alone does not lock loopback out");
    }

    #[tokio::test]
    async fn loopback_callers_send_the_token_with_require_token() {
        let required = |config: &mut Config| config.admin.require_token = true;
        let (status, _, _) = call(guarded(required, Some("s3cret")), LOOPBACK, Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK);
        for wrong in [Some("guess"), None] {
            let (status, challenge, body) = call(guarded(required, Some("s3cret")), LOOPBACK, wrong).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"merchant-edge admin\""));
            assert!(body.contains("admin.token_file"), "{body}");
        }
    }

    #[tokio::test]
    async fn remote_callers_are_refused_without_allow_remote_changes() {
        let (status, challenge, body) = call(guarded(|_| {}, Some("s3cret")), REMOTE, Some("s3cret")).await;
        assert_eq!((status, challenge), (StatusCode::FORBIDDEN, None));
        assert!(body.contains("admin.allow_remote_changes = true and admin.token_file"), "{body}");
    }

    #[tokio::test]
    async fn remote_callers_are_refused_with_allow_remote_changes_but_no_token_file() {
        let allowed = |config: &mut Config| config.admin.allow_remote_changes = true;
        let (status, _, body) = call(guarded(allowed, None), REMOTE, Some("anything")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("set admin.token_file"), "{body}");
    }

    #[tokio::test]
    async fn remote_callers_with_allow_remote_changes_need_the_right_token() {
        let allowed = |config: &mut Config| config.admin.allow_remote_changes = true;
        let (status, _, body) = call(guarded(allowed, Some("s3cret")), REMOTE, Some("s3cret")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "reloaded"));
        for wrong in [Some("s3cre"), Some("s3cret2"), None] {
            let (status, challenge, _) = call(guarded(allowed, Some("s3cret")), REMOTE, wrong).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
            assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{wrong:?}");
        }
    }
}
