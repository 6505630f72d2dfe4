//! Assembles a running edge from a config and bound listeners: the lookup service with health and
//! reflection (over TLS when configured), the admin endpoint, config reload, the change feed, and (for
//! `upstream.endpoint = "embedded"`) an in-process simulator; and drains it within a grace period.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{self, AdminState};
use tracing::Instrument;

use crate::cache::Cache;
use crate::config::{Config, LiveConfig, ServerRuntime, UpstreamEndpoint};
use crate::feed::{ChangeFeed, FeedParts, FeedState};
use crate::live;
use crate::lookup::{LookupService, Resolver};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::{self, Reloader};
use crate::runtime::{self, GrpcListeners, PerCore, RuntimeError};
use crate::sim::Simulator;
use crate::snapshot::{Restored, SnapshotParts, Snapshots};
use crate::telemetry::LogControl;
use crate::tls::{self, TlsError, TlsSettings};
use crate::upstream::CoreClient;
use crate::wire::merchant_lookup_server::MerchantLookupServer;

#[derive(Debug, thiserror::Error)]
/// Why an edge could not start or keep serving.
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    /// A listener could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener (its config key).
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    /// The core's address cannot be used.
    Upstream(String),
    #[error(transparent)]
    /// The TLS files cannot be used.
    Tls(#[from] TlsError),
    #[error(transparent)]
    /// The admin token file cannot be used.
    AdminToken(#[from] crate::admin_auth::TokenError),
    #[error("cannot watch the config file: {0}")]
    /// The config file cannot be watched.
    Watch(#[from] notify::Error),
    #[error("gRPC server failed: {0}")]
    /// The gRPC server failed.
    Grpc(#[from] tonic::transport::Error),
    #[error("admin endpoint failed: {0}")]
    /// The admin endpoint failed.
    Admin(std::io::Error),
    #[error(transparent)]
    /// The change feed's notice source cannot be used.
    FeedSource(#[from] crate::feed::NatsSourceError),
    #[error("server task failed: {0}")]
    /// A server task panicked or was cancelled.
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    /// A per-core serving runtime could not start or failed.
    Runtime(#[from] RuntimeError),
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, what, source })
}

/// A completion signal that many tasks can wait for.
#[derive(Clone)]
struct Stop(watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        Self(watch::Sender::new(false))
    }

    fn fire(&self) {
        self.0.send_replace(true);
    }

    fn fired(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every call in flight finished within the grace period.
    Clean,
    /// Calls (or streams) still open when the grace period ran out were cut off.
    Forced,
}

/// An edge whose listeners are bound but not yet serving.
pub struct Edge {
    config: Config,
    grpc: GrpcListeners,
    admin: TcpListener,
    config_file: Option<PathBuf>,
    log: Option<LogControl>,
}

impl Edge {
    /// Binds the listeners named in the config.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let (grpc, admin) = (config.server.listen, config.admin.listen);
        Self::bind_to(config, grpc, admin).await
    }

    /// Binds the listeners at other addresses than the config's (tests bind 127.0.0.1:0): one gRPC
    /// socket per serving runtime the config asks for, all on one port.
    pub async fn bind_to(config: Config, grpc: SocketAddr, admin: SocketAddr) -> Result<Self, ServeError> {
        let grpc = GrpcListeners::bind(grpc, config.server.serving_runtimes()).map_err(|source| ServeError::Bind {
            addr: grpc,
            what: "server.listen",
            source,
        })?;
        let admin = bind(admin, "admin.listen").await?;
        Ok(Self::with_listeners(config, grpc, admin))
    }

    /// Uses listeners bound by the caller. With `server.runtime = "per-core"` each gRPC socket gets
    /// its own runtime (a single `TcpListener` is served by one).
    pub fn with_listeners(config: Config, grpc: impl Into<GrpcListeners>, admin: TcpListener) -> Self {
        Self { config, grpc: grpc.into(), admin, config_file: None, log: None }
    }

    /// The file the config came from, for reloads.
    pub fn config_file(mut self, path: PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// Lets reloads change the log level.
    pub fn log_control(mut self, log: Option<LogControl>) -> Self {
        self.log = log;
        self
    }

    /// Starts serving; the returned handle drains and stops it.
    pub async fn start(self) -> Result<RunningEdge, ServeError> {
        let Edge { config, grpc, admin, config_file, log } = self;
        let grpc_addr = grpc.local_addr().map_err(ServeError::Admin)?;
        let admin_addr = admin.local_addr().map_err(ServeError::Admin)?;
        let tls = config.server.tls.as_ref().map(tls::load).transpose()?.map(TlsSettings::new);
        let admin_token = crate::admin_auth::read_token(&config.admin)?;
        let live: LiveConfig = Arc::new(ArcSwap::from_pointee(config.clone()));
        let (stop_serving, stop_background, stop_admin) = (Stop::new(), Stop::new(), Stop::new());
        let mut background = JoinSet::new();

        let core_endpoint = match &config.upstream.endpoint {
            UpstreamEndpoint::Url(url) => url.clone(),
            UpstreamEndpoint::Embedded => {
                let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "embedded core").await?;
                let url = format!("http://{}", listener.local_addr().map_err(ServeError::Admin)?);
                let simulator = Simulator::new(config.upstream.embedded_merchants, crate::sim::DEFAULT_HISTORY);
                let stop = stop_background.fired();
                background.spawn(async move { simulator.serve(listener, stop).await.map_err(ServeError::from) });
                url
            }
        };
        let core =
            CoreClient::connect_lazy(&core_endpoint, config.upstream.connect_timeout).map_err(ServeError::Upstream)?;

        let metrics = Arc::new(Metrics::default());
        let cache = Arc::new(Cache::new(live::section(&live, |config| &config.cache), metrics.cache.clone()));
        let feed = Arc::new(FeedState::new());
        // Before anything reads or writes the stores: a restart answers from what the edge held.
        let snapshots = Arc::new(Snapshots::new(SnapshotParts {
            settings: live::section(&live, |config| &config.snapshot),
            id_rule: live::section(&live, |config| &config.merchant_id),
            cache: cache.clone(),
            feed: feed.clone(),
            metrics: metrics.snapshot.clone(),
        }));
        let restored = snapshots.restore().await;
        let resolver = Arc::new(Resolver::new(
            live.clone(),
            cache.clone(),
            core.clone(),
            feed.clone(),
            metrics.lookup.clone(),
            metrics.guard.clone(),
        ));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(health_reporter);
        readiness.set(false).await;
        readiness.set_feed(false).await;
        let refreshes = resolver.clone().run_refreshes();
        let refreshes_stop = stop_background.fired();
        background.spawn(async move {
            tokio::select! {
                () = refreshes => {}
                () = refreshes_stop => {}
            }
            Ok(())
        });
        let source = crate::feed::source_for(&config.feed, core.grpc(), &feed).await?;
        let mut change_feed = ChangeFeed::new(FeedParts {
            core: core.listing(),
            source,
            cache: cache.clone(),
            state: feed.clone(),
            readiness: readiness.clone(),
            settings: live::section(&live, |config| &config.feed),
            metrics: metrics.feed.clone(),
        });
        let ready_when_core_down = config.snapshot.ready_when_core_down;
        if let Some(restored) = &restored {
            change_feed = change_feed.resume_from(restored.position.clone(), !ready_when_core_down);
        }
        let (writer, writer_stop) = (snapshots.clone().run(), stop_background.fired());
        background.spawn(
            async move {
                tokio::select! {
                    () = writer => {}
                    () = writer_stop => {}
                }
                Ok(())
            }
            .instrument(tracing::info_span!("snapshot")),
        );
        let feed_stop = stop_background.fired();
        background.spawn(
            async move {
                tokio::select! {
                    () = change_feed.run() => {}
                    () = feed_stop => {}
                }
                Ok(())
            }
            .instrument(tracing::info_span!("feed")),
        );

        let reloader =
            Arc::new(Reloader::new(config_file, live.clone(), cache.clone(), metrics.config.clone(), log, tls.clone()));
        reloader.admin_token().replace(admin_token);
        let watcher = match reloader.path() {
            Some(_) if config.reload.watch_file => Some(reload::watch_file(reloader.clone(), config.reload.debounce)?),
            _ => None,
        };

        // Reflection lists what this port serves: the lookup contract and health.
        let (reflection_v1, reflection_v1alpha) = crate::pb::reflection_services(
            &[crate::pb::LOOKUP_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET],
            &[crate::wire::merchant_lookup_server::SERVICE_NAME, tonic_health::pb::health_server::SERVICE_NAME],
        );
        // A router per serving runtime, each with its own lookup service: tonic and axum clone the
        // service's and the router's reference counts on every call, and one shared count would be a
        // cache line every serving core writes per request.
        let new_router = {
            let (resolver, live, readiness) = (resolver.clone(), live.clone(), readiness.clone());
            let (max_request_bytes, max_concurrent_streams) =
                (config.server.max_request_bytes.get() as usize, config.server.max_concurrent_streams.get());
            move || {
                let lookup =
                    MerchantLookupServer::new(LookupService::new(resolver.clone(), live.clone(), readiness.clone()))
                        .max_decoding_message_size(max_request_bytes);
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .max_concurrent_streams(max_concurrent_streams)
                    .add_service(health_service.clone())
                    .add_service(reflection_v1.clone())
                    .add_service(reflection_v1alpha.clone())
                    .add_service(lookup)
            }
        };
        let serving_runtimes = grpc.len();
        let (grpc_task, per_core) = match config.server.runtime {
            ServerRuntime::Shared => {
                let servers: Vec<_> = grpc
                    .into_inner()
                    .into_iter()
                    .map(|listener| serve_grpc(new_router(), tls.clone(), listener, stop_serving.fired()))
                    .collect();
                let task = tokio::spawn(async move {
                    futures::future::try_join_all(servers).await.map(drop).map_err(ServeError::from)
                });
                (task, None)
            }
            ServerRuntime::PerCore => {
                let (tls, stop) = (tls.clone(), stop_serving.clone());
                let (per_core, finished) = runtime::serve_per_core(grpc.into_inner(), move |listener| {
                    serve_grpc(new_router(), tls.clone(), listener, stop.fired())
                })?;
                (tokio::spawn(async move { finished.await.map_err(ServeError::from) }), Some(per_core))
            }
        };

        let admin_router = admin::router(AdminState {
            config: live.clone(),
            resolver: resolver.clone(),
            feed: feed.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            reloader: reloader.clone(),
            restored: restored.clone().map(Arc::new),
        });
        let admin_stop = stop_admin.fired();
        let admin_task = tokio::spawn(async move {
            axum::serve(admin, admin_router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(admin_stop)
                .await
                .map_err(ServeError::Admin)
        });

        // Restored from a snapshot: ready at once by policy, else once the feed follows the core.
        if restored.as_ref().map_or(!config.feed.warm_start, |_| ready_when_core_down) {
            readiness.set(true).await;
        }
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            tls = tls.is_some(),
            runtime = ?config.server.runtime,
            serving_runtimes,
            upstream = %config.upstream.endpoint,
            %core_endpoint,
            "merchant-edge serving"
        );
        Ok(RunningEdge {
            grpc_addr,
            admin_addr,
            core_endpoint,
            metrics,
            resolver,
            feed,
            readiness,
            reloader,
            config: live,
            snapshots,
            restored,
            stop_serving,
            stop_background,
            stop_admin,
            grpc_task,
            background,
            admin_task,
            per_core,
            _watcher: watcher,
        })
    }
}

/// One gRPC server on `listener`, over TLS when configured, until `stop` (then it drains).
async fn serve_grpc(
    router: tonic::transport::server::Router,
    tls: Option<Arc<TlsSettings>>,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), stop).await,
        None => router.serve_with_incoming_shutdown(crate::accept::plaintext(listener), stop).await,
    }
}

/// A serving edge.
pub struct RunningEdge {
    /// Where terminals connect.
    pub grpc_addr: SocketAddr,
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// The core's URL (for the embedded simulator, where it listens on loopback).
    pub core_endpoint: String,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// The lookup path (and through it the cache room).
    pub resolver: Arc<Resolver>,
    /// The change feed's state.
    pub feed: Arc<FeedState>,
    /// Readiness and gRPC health.
    pub readiness: Readiness,
    /// Config reload.
    pub reloader: Arc<Reloader>,
    /// The config in force.
    pub config: LiveConfig,
    /// The local snapshot (tests write it on demand).
    pub snapshots: Arc<Snapshots>,
    /// The local snapshot restored at start, if one was.
    pub restored: Option<Restored>,
    stop_serving: Stop,
    stop_background: Stop,
    stop_admin: Stop,
    grpc_task: JoinHandle<Result<(), ServeError>>,
    background: JoinSet<Result<(), ServeError>>,
    admin_task: JoinHandle<Result<(), ServeError>>,
    /// The serving runtimes with `server.runtime = "per-core"` (stopped when this is dropped).
    per_core: Option<PerCore>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl RunningEdge {
    /// The runtimes serving gRPC with `server.runtime = "per-core"`; none with `"shared"`, which
    /// serves on the runtime the edge was started on. (Tests that move tokio's paused clock move
    /// these runtimes' clocks too: each runtime has its own.)
    pub fn serving_runtimes(&self) -> &[tokio::runtime::Handle] {
        self.per_core.as_ref().map_or(&[], PerCore::runtimes)
    }

    /// Serves until `signal` completes (or the gRPC server fails), then drains.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<Drain, ServeError> {
        tokio::select! {
            () = signal => {}
            failed = &mut self.grpc_task => {
                failed??;
                return Err(ServeError::Upstream("the gRPC server stopped unexpectedly".into()));
            }
        }
        self.shutdown().await
    }

    /// Drains within `server.shutdown_grace`: health turns NOT_SERVING (health Watch streams end) and
    /// readiness fails, the listener stops accepting and open connections are told to go away,
    /// in-flight calls get the grace period less a small reserve to finish (then they are cut off),
    /// the local snapshot is written once more, and the feed, the embedded core and the admin
    /// endpoint stop.
    pub async fn shutdown(mut self) -> Result<Drain, ServeError> {
        let grace = self.config.load().server.shutdown_grace;
        let started = tokio::time::Instant::now();
        let deadline = started + grace;
        let reserve = (grace / 10).min(Duration::from_millis(200));
        tracing::info!(?grace, "draining");
        self.readiness.begin_draining().await;
        self.stop_serving.fire();
        let drain = match tokio::time::timeout_at(deadline - reserve, &mut self.grpc_task).await {
            Ok(finished) => {
                finished??;
                Drain::Clean
            }
            Err(_) => {
                self.grpc_task.abort();
                if let Some(per_core) = &self.per_core {
                    per_core.cut_off();
                }
                Drain::Forced
            }
        };
        // After the last call: what the next start resumes from (its own bound: the drain's deadline).
        if tokio::time::timeout_at(deadline, self.snapshots.write_at_drain()).await.is_err() {
            tracing::warn!("local snapshot not written at drain: the grace period ran out");
        }
        self.stop_background.fire();
        let background = async {
            while let Some(finished) = self.background.join_next().await {
                if let Err(error) = finished.map_err(ServeError::from).and_then(|result| result) {
                    tracing::warn!(%error, "background task failed while stopping");
                }
            }
        };
        if tokio::time::timeout_at(deadline, background).await.is_err() {
            self.background.abort_all();
        }
        self.stop_admin.fire();
        if tokio::time::timeout_at(deadline, &mut self.admin_task).await.is_err() {
            self.admin_task.abort();
        }
        match drain {
            Drain::Clean => tracing::info!(elapsed = ?started.elapsed(), "drain clean: every call finished"),
            Drain::Forced => {
                tracing::warn!(?grace, "drain NOT clean: calls still open after the grace period were cut off")
            }
        }
        Ok(drain)
    }
}
