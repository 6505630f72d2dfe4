//! `merchant-edge core-pg`: the core contract (`MerchantCore`, plus `CoreAdmin`'s writes) served from
//! a PostgreSQL table, its changes read from the WAL by logical decoding. Edges and relays use it as
//! they use the simulator.
//!
//! # Layout
//! - numbering (in the database, deploy/postgres/schema.sql): triggers give every change the next
//!   contiguous sequence in commit order and write it, with the row, as a transactional logical
//!   message; docs/postgres.md explains the design.
//! - change path: [`decoder`] (the slot, over a replication connection) → [`change`] (one message into
//!   a notice) → [`history`] (the kept notices) → [`service`]'s `WatchChanges` streams.
//! - read path: [`service`] → [`database`] (pooled primary-key reads, CoreAdmin writes) and
//!   [`listing`] (`ListMerchants` pages at one exported snapshot); [`schema`] checks the mapped table
//!   at start and builds the SQL; [`row`] turns a row, however read, into a `Merchant` or a reason it
//!   cannot be served.
//! - operations: [`slot`] (creation, recreation, readings), [`metrics`], [`admin`] (HTTP), [`config`].
mod admin;
pub mod change;
pub mod config;
mod database;
mod decoder;
mod error;
mod history;
mod listing;
mod metrics;
pub mod row;
mod schema;
mod service;
mod slot;

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub use self::config::CorePgConfig;
use self::database::Database;
use self::decoder::{Decoder, ReplicationTarget};
pub use self::error::CorePgError;
use self::history::History;
use self::listing::Listings;
use self::metrics::CorePgMetrics;
use self::service::{AdminService, Backend, CoreService, Shared};
use crate::backoff::Backoff;
use crate::pb::core_admin_server::CoreAdminServer;
use crate::pb::merchant_core_server::MerchantCoreServer;

/// How often readiness, the pool gauges and idle listings are looked at.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the core contract from the database `config` names until `shutdown` completes. The listeners
/// serve at once: until the database is reachable, calls are UNAVAILABLE and `/readyz` says why. A
/// database that is reachable but not set up for core-pg ends the run with an error naming what is
/// missing.
pub async fn serve(
    config: CorePgConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CorePgError> {
    let postgres = config.postgres.clone();
    let connect = database::connect_config(&postgres, &postgres.url).map_err(CorePgError::Setup)?;
    let target = ReplicationTarget::of(&connect).map_err(CorePgError::Setup)?;
    let metrics = Arc::new(CorePgMetrics::new());
    let shared = Arc::new(Shared {
        backend: OnceLock::new(),
        history: Arc::new(History::new(postgres.history)),
        metrics: metrics.clone(),
        rule: config.merchant_id.clone(),
        closing: watch::Sender::new(false),
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = crate::pb::reflection_services(
        &[crate::pb::CORE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET],
        &[
            crate::pb::merchant_core_server::SERVICE_NAME,
            crate::pb::core_admin_server::SERVICE_NAME,
            tonic_health::pb::health_server::SERVICE_NAME,
        ],
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(axum::serve(admin, admin::router(metrics.clone())).into_future());
    let (stop, stopped) = watch::channel(false);
    let grpc_server = tonic::transport::Server::builder()
        .add_service(MerchantCoreServer::new(CoreService(shared.clone())))
        .add_service(CoreAdminServer::new(AdminService(shared.clone())))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // As the simulator: without TCP_NODELAY on a listener passed in, the last segment of every
        // large response waits for the client's delayed ACK.
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), {
            let mut stopped = stopped.clone();
            async move { drop(stopped.wait_for(|stop| *stop).await) }
        });
    let grpc_task = tokio::spawn(grpc_server);
    let run = async {
        let database = Arc::new(open_database(&postgres, connect, &metrics).await?);
        let listings = Listings::new(&database.mapping, postgres.max_listings.get(), postgres.listing_idle_timeout);
        let release = Arc::new(AtomicBool::new(false));
        let decoder = Decoder {
            database: database.clone(),
            history: shared.history.clone(),
            metrics: metrics.clone(),
            target,
            slot: postgres.slot.clone(),
            publication: postgres.publication.clone(),
            columns: postgres.columns.clone(),
            rule: config.merchant_id.clone(),
            release: release.clone(),
        };
        let _ = shared.backend.set(Backend { database, listings });
        let decoding = tokio::spawn(decoder.run());
        let _stop_decoding = AbortOnDrop(decoding.abort_handle());
        housekeeping(&shared, &postgres, &release, health).await;
        Ok::<(), CorePgError>(())
    };
    let result = tokio::select! {
        result = run => result,
        () = shutdown => Ok(()),
    };
    tracing::info!("core-pg: shutting down");
    shared.closing.send_replace(true);
    let _ = stop.send(true);
    let _ = grpc_task.await;
    tasks.abort_all();
    result
}

/// Aborts a task when dropped (the decoder, when serving ends).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects and checks the database, retrying with backoff while it is unreachable.
async fn open_database(
    postgres: &config::PostgresConfig,
    connect: tokio_postgres::Config,
    metrics: &CorePgMetrics,
) -> Result<Database, CorePgError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match Database::open(postgres, connect.clone()).await {
            Ok(database) => return Ok(database),
            Err(error @ (CorePgError::Schema(_) | CorePgError::Setup(_))) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "core-pg: cannot reach the database; retrying");
                metrics.set_readiness(Some(format!("cannot reach the database: {error}")));
                backoff.wait().await;
            }
        }
    }
}

/// Forever: gRPC health from readiness, the pool and listing gauges, idle listings closed, and the
/// slots read every `slot_check_interval` (asking the decoder to release the slot when it holds too
/// much WAL).
async fn housekeeping(
    shared: &Shared,
    postgres: &config::PostgresConfig,
    release: &AtomicBool,
    health: HealthReporter,
) {
    let backend = shared.backend.get().expect("set before housekeeping starts");
    let metrics = &shared.metrics;
    let mut ticks = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut slots_read_at: Option<tokio::time::Instant> = None;
    let mut serving = None;
    loop {
        ticks.tick().await;
        let ready = metrics.readiness().is_ok();
        if serving != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in
                ["", crate::pb::merchant_core_server::SERVICE_NAME, crate::pb::core_admin_server::SERVICE_NAME]
            {
                health.set_service_status(service, status).await;
            }
            serving = Some(ready);
        }
        let (connections, idle) = backend.database.pool_status();
        metrics.pool_connections.set(connections as i64);
        metrics.pool_idle.set(idle as i64);
        if backend.listings.close_idle() > 0 {
            tracing::info!("core-pg: closed listings idle longer than [postgres] listing_idle_timeout");
        }
        metrics.listings_open.set(backend.listings.open() as i64);
        if slots_read_at.is_some_and(|at| at.elapsed() < postgres.slot_check_interval) {
            continue;
        }
        slots_read_at = Some(tokio::time::Instant::now());
        match slot::readings(&backend.database).await {
            Ok(readings) => {
                metrics.set_slots(&readings);
                let own = readings.iter().find(|reading| reading.slot == postgres.slot);
                if own.is_some_and(|own| own.retained_bytes.max(0) as u64 > postgres.slot_max_retained_bytes) {
                    release.store(true, Ordering::Relaxed);
                }
            }
            Err(error) => tracing::debug!(%error, "core-pg: cannot read the replication slots"),
        }
    }
}
