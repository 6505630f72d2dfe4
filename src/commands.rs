//! The subcommands of the `merchant-edge` binary, as library functions (main only parses arguments).
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::{Config, UpstreamEndpoint};
use crate::reload::ReloadTrigger;
use crate::server::{Drain, Edge};
use crate::sim::{dataset, Simulator};

/// A merchant of the synthetic data set that every fresh edge can answer.
pub const EXAMPLE_ID: &str = "898000000000042";

/// `merchant-edge serve`: runs on the config file (or the embedded default) until SIGINT or SIGTERM,
/// reloading on SIGHUP. Exit status 0 after a clean drain, 1 when calls had to be cut off.
pub async fn serve(config_file: Option<&Path>) -> Result<ExitCode, String> {
    let config = match config_file {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let log = crate::telemetry::init_logging(&config.log);
    // Before the stores grow: the setting applies to memory faulted in from now on.
    if let Err(error) = crate::huge_pages::allow(config.server.transparent_huge_pages) {
        tracing::warn!(%error, "cannot change whether transparent huge pages are used; keeping the system's setting");
    }
    let upstream = match &config.upstream.endpoint {
        UpstreamEndpoint::Embedded => {
            let merchants = crate::text::count(config.upstream.embedded_merchants, "merchant", "merchants");
            format!("embedded bank-core simulator ({merchants})")
        }
        UpstreamEndpoint::Url(url) => format!("bank core at {url}"),
    };
    let scheme = if config.server.tls.is_some() { "gRPC over TLS" } else { "gRPC" };
    // Before binding, so that a slow start still pings a unit's watchdog.
    let _watchdog = crate::systemd::spawn_watchdog();
    let mut edge = Edge::bind(config).await.map_err(|e| e.to_string())?.log_control(log);
    if let Some(path) = config_file {
        edge = edge.config_file(path.to_path_buf());
    }
    let edge = edge.start().await.map_err(|e| e.to_string())?;
    crate::systemd::notify_ready_when(edge.readiness.became_ready());
    println!("merchant-edge listening for {scheme} on {} (admin http://{})", edge.grpc_addr, edge.admin_addr);
    println!("  upstream: {upstream}");
    println!("  try:      merchant-edge lookup {EXAMPLE_ID} --server {}", edge.grpc_addr);
    println!("        or: cargo run --release -- lookup {EXAMPLE_ID} 898000000000097 898999999999999");
    #[cfg(unix)]
    {
        let reloader = edge.reloader.clone();
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
        let span = tracing::info_span!("reload", trigger = "sighup");
        tokio::spawn(
            async move {
                while hangups.recv().await.is_some() {
                    let _ = reloader.reload(ReloadTrigger::Signal).await;
                }
            }
            .instrument(span),
        );
    }
    let drain_starts = async {
        termination().await;
        crate::systemd::notify_stopping();
    };
    match edge.run_until(drain_starts).await.map_err(|e| e.to_string())? {
        Drain::Clean => Ok(ExitCode::SUCCESS),
        Drain::Forced => Ok(ExitCode::from(1)),
    }
}

/// `merchant-edge core-sim`: a standalone bank-core simulator.
pub async fn core_sim(listen: SocketAddr, merchants: u64, history: usize) -> Result<(), String> {
    crate::telemetry::init_logging(&Default::default());
    if merchants > crate::config::MAX_EMBEDDED {
        return Err(format!("--merchants must be at most {}", crate::config::MAX_EMBEDDED));
    }
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let simulator = Simulator::new(merchants, history);
    println!(
        "core-sim listening on {} with {} ({} .. {}), keeping {}",
        listener.local_addr().map_err(|e| e.to_string())?,
        crate::text::count(merchants, "merchant", "merchants"),
        dataset::synthetic_id(0),
        dataset::synthetic_id(merchants.saturating_sub(1)),
        crate::text::count(history as u64, "change", "changes"),
    );
    simulator.serve(listener, termination()).await.map_err(|e| e.to_string())
}

/// Where `merchant-edge core-pg` listens, as the command line overrides the config.
pub struct CorePgArgs {
    /// `--config`.
    pub config: Option<std::path::PathBuf>,
    /// `--database-url` (or `DATABASE_URL`).
    pub database_url: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
}

/// `merchant-edge core-pg`: the core contract over a PostgreSQL table until SIGINT or SIGTERM.
pub async fn core_pg(args: CorePgArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => crate::core_pg::CorePgConfig::load(path).map_err(|e| e.to_string())?,
        None => crate::core_pg::CorePgConfig::default(),
    };
    if let Some(url) = args.database_url {
        config.postgres.url = url;
    }
    if config.postgres.url.is_empty() {
        return Err("no database: pass --database-url URL (or set DATABASE_URL, or [postgres] url)".into());
    }
    config.server.listen = args.listen.unwrap_or(config.server.listen);
    config.admin.listen = args.admin.unwrap_or(config.admin.listen);
    crate::telemetry::init_logging(&config.log);
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
    };
    let grpc = bind(config.server.listen, "--listen").await?;
    let admin = bind(config.admin.listen, "--admin").await?;
    let local = |listener: &TcpListener| listener.local_addr().map_err(|e| e.to_string());
    println!(
        "core-pg listening for gRPC on {} (admin http://{}), serving table {} through slot {}",
        local(&grpc)?,
        local(&admin)?,
        config.postgres.table,
        config.postgres.slot
    );
    crate::core_pg::serve(config, grpc, admin, termination()).await.map_err(|e| e.to_string())
}

/// `merchant-edge relay`: relays the core's notices into JetStream until SIGINT or SIGTERM.
pub async fn relay(config: crate::relay::RelayConfig, admin: SocketAddr) -> Result<(), String> {
    crate::telemetry::init_logging(&Default::default());
    let listener = TcpListener::bind(admin).await.map_err(|e| format!("cannot listen on {admin} (--admin): {e}"))?;
    let relay = crate::relay::Relay::new(config, listener);
    let admin = relay.admin_addr().map_err(|e| e.to_string())?;
    println!("merchant-edge relay: admin http://{admin} (/livez, /readyz, /metrics)");
    relay.run(termination()).await.map_err(|e| e.to_string())
}

/// `merchant-edge lookup`: exit status 1 when any lookup failed. `min_sequence` is sent with every
/// lookup (0: no consistency token).
pub async fn lookup(server: &str, tls: &crate::client::ClientTls, ids: &[String], min_sequence: u64) -> ExitCode {
    match crate::client::lookup_and_print(server, tls, ids, min_sequence).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(message) => {
            eprintln!("merchant-edge lookup: {message}");
            ExitCode::from(2)
        }
    }
}

/// `merchant-edge check-config`: prints the effective config, or the problems and exits non-zero. TLS
/// files and the admin token file are read too, as `serve` would (the token itself is never printed).
pub fn check_config(path: &Path) -> ExitCode {
    let checked = Config::load(path).map_err(|e| e.to_string()).and_then(|config| {
        match config.server.tls.as_ref().map(crate::tls::load).transpose() {
            Ok(_) => Ok(config),
            Err(error) => Err(format!("invalid config:\n  {}: {error}", path.display())),
        }
    });
    let checked = checked.and_then(|config| match crate::admin_auth::read_token(&config.admin) {
        Ok(_) => Ok(config),
        Err(error) => Err(format!("invalid config:\n  {}: {error}", path.display())),
    });
    match checked {
        Ok(config) => {
            println!("# {}: valid; effective values:", path.display());
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}
