//! Assembles a running edge from a config and bound listeners: the lookup service with health and
//! reflection, the admin endpoint, and (for `upstream.endpoint = "embedded"`) an in-process simulator.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::config::{Config, UpstreamEndpoint};
use crate::feed::{FeedStatus, Follower};
use crate::metrics::Metrics;
use crate::pb::merchant_lookup_server::MerchantLookupServer;
use crate::readiness::Readiness;
use crate::resolver::Resolver;
use crate::service::LookupService;
use crate::sim::Simulator;
use crate::upstream::CoreClient;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin endpoint failed: {0}")]
    Admin(std::io::Error),
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, what, source })
}

/// An edge whose listeners are bound but not yet serving.
pub struct Edge {
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
}

impl Edge {
    /// Binds the listeners named in the config.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let grpc = bind(config.server.listen, "server.listen").await?;
        let admin = bind(config.admin.listen, "admin.listen").await?;
        Ok(Self { config, grpc, admin })
    }

    /// Uses listeners bound by the caller (tests bind 127.0.0.1:0).
    pub fn with_listeners(config: Config, grpc: TcpListener, admin: TcpListener) -> Self {
        Self { config, grpc, admin }
    }

    /// Starts serving; the returned handle stops it.
    pub async fn start(self) -> Result<RunningEdge, ServeError> {
        let Edge { config, grpc, admin } = self;
        let grpc_addr = grpc.local_addr().map_err(ServeError::Admin)?;
        let admin_addr = admin.local_addr().map_err(ServeError::Admin)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = JoinSet::new();

        let core_endpoint = match &config.upstream.endpoint {
            UpstreamEndpoint::Url(url) => url.clone(),
            UpstreamEndpoint::Embedded => {
                let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "embedded core").await?;
                let url = format!("http://{}", listener.local_addr().map_err(ServeError::Admin)?);
                let simulator = Simulator::new(config.upstream.embedded_merchants, crate::sim::DEFAULT_HISTORY);
                let stop = stopped();
                tasks.spawn(async move { simulator.serve(listener, stop).await.map_err(ServeError::from) });
                url
            }
        };
        let core = CoreClient::connect_lazy(&core_endpoint, config.upstream.connect_timeout, config.upstream.timeout)
            .map_err(ServeError::Upstream)?;

        let metrics = Arc::new(Metrics::default());
        let feed = Arc::new(FeedStatus::new(config.feed.negative_ttl_when_down));
        let resolver = Arc::new(Resolver::new(
            config.merchant_id.clone(),
            &config.cache,
            core.clone(),
            feed.clone(),
            metrics.clone(),
        ));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(health_reporter);
        readiness.set(false).await;
        readiness.set_feed(false).await;
        let follower = Follower::new(
            core.grpc(),
            resolver.clone(),
            feed.clone(),
            metrics.clone(),
            readiness.clone(),
            config.feed.clone(),
        );
        let follower_stop = stopped();
        tasks.spawn(async move {
            tokio::select! {
                () = follower.run() => {}
                () = follower_stop => {}
            }
            Ok(())
        });

        let (reflection_v1, reflection_v1alpha) = crate::pb::reflection_services();
        let max_request = config.server.max_request_bytes.get() as usize;
        let lookup = MerchantLookupServer::new(LookupService::new(
            resolver.clone(),
            config.server.max_batch_size.get() as usize,
        ))
        .max_decoding_message_size(max_request);
        let grpc_server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(lookup)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped());
        tasks.spawn(async move { grpc_server.await.map_err(ServeError::from) });

        let admin_router = admin::router(AdminState {
            metrics: metrics.clone(),
            resolver: resolver.clone(),
            readiness: readiness.clone(),
            feed: feed.clone(),
        });
        let admin_stop = stopped();
        tasks.spawn(async move {
            axum::serve(admin, admin_router).with_graceful_shutdown(admin_stop).await.map_err(ServeError::Admin)
        });

        if !config.feed.warm_start {
            readiness.set(true).await;
        }
        tracing::info!(%grpc_addr, %admin_addr, upstream = %config.upstream.endpoint, %core_endpoint, "merchant-edge serving");
        Ok(RunningEdge { grpc_addr, admin_addr, core_endpoint, metrics, feed, readiness, stop: stop_tx, tasks })
    }
}

/// A serving edge.
pub struct RunningEdge {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The core's URL (for the embedded simulator, where it listens on loopback).
    pub core_endpoint: String,
    pub metrics: Arc<Metrics>,
    pub feed: Arc<FeedStatus>,
    pub readiness: Readiness,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), ServeError>>,
}

impl RunningEdge {
    /// Serves until `signal` completes (or a server fails), then stops.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        tokio::select! {
            () = signal => {}
            Some(failed) = self.tasks.join_next() => {
                failed??;
            }
        }
        self.shutdown().await
    }

    /// Stops accepting, lets in-flight calls finish, and waits for every server task.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop.send_replace(true);
        while let Some(result) = self.tasks.join_next().await {
            result??;
        }
        Ok(())
    }
}
