//! The `merchant-edge` binary: parses arguments and hands over to the library.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use merchant_edge::commands;

/// mimalloc instead of the system allocator: the request path allocates per call (HTTP/2 frames,
/// messages), and it does so measurably cheaper (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "merchant-edge", version, about = "gRPC edge cache for merchant lookups from payment terminals")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge. Without --config: gRPC on 127.0.0.1:50051, admin on 127.0.0.1:9090, and an
    /// embedded bank-core simulator with 100,000 merchants.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the bank-core simulator as a standalone gRPC server.
    CoreSim {
        #[arg(long, default_value = "127.0.0.1:50052")]
        listen: SocketAddr,
        /// Synthetic merchants: IDs 898 followed by the 12-digit index.
        #[arg(long, default_value_t = 1_000_000)]
        merchants: u64,
        /// Changes kept for WatchChanges resumption.
        #[arg(long, default_value_t = merchant_edge::sim::DEFAULT_HISTORY)]
        history: usize,
    },
    /// Serve the core contract from a PostgreSQL table, its changes read by logical decoding
    /// (deploy/postgres/schema.sql sets the database up).
    CorePg {
        /// The database, e.g. postgres://core_pg@db.internal:5432/merchants (or [postgres] url).
        #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// gRPC address for edges and relays [default: 127.0.0.1:50053, or [server] listen].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Admin HTTP address: /livez, /readyz, /metrics [default: 127.0.0.1:9093, or [admin] listen].
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// TOML config (table and column names, slot, pool; config/core-pg.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Look merchant IDs up on a running edge and print the answers.
    Lookup {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:50051")]
        server: String,
        /// Connect over TLS, trusting this PEM CA.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Client certificate (PEM) for an edge that requires mutual TLS; needs --key and --ca.
        #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
        cert: Option<PathBuf>,
        /// Client private key (PEM) for --cert.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// Consistency token: answers must reflect every core change up to this sequence (what
        /// onboarding returned, or the highest `as of sequence` seen). 0: none.
        #[arg(long, value_name = "N", default_value_t = 0)]
        min_sequence: u64,
    },
    /// Explain why an ID is (not) found: the checklist and a verdict, from a running edge's admin endpoint.
    Explain {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Print the admin endpoint's report as one JSON document instead of the checklist.
        #[arg(long)]
        json: bool,
        /// File holding the admin bearer token (for an edge with admin.require_token, or a remote one).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Also check a consistency token: the edge's applied sequence against it, and what a lookup
        /// carrying it would get.
        #[arg(long, value_name = "N")]
        min_sequence: Option<u64>,
    },
    /// Validate a config file and print its effective values.
    CheckConfig { file: PathBuf },
    /// Work with local snapshot files ([snapshot] path).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Follow the core's change notices and append each, once and in order, to a NATS JetStream stream.
    Relay {
        /// The bank core's MerchantCore address, e.g. http://10.0.0.5:50052.
        #[arg(long, value_name = "URL")]
        core: String,
        /// The NATS server(s), e.g. nats://127.0.0.1:4222 (comma-separated for several).
        #[arg(long, value_name = "URL")]
        nats: String,
        /// JetStream stream (created with the documented limits if missing).
        #[arg(long, default_value = merchant_edge::relay::DEFAULT_STREAM)]
        stream: String,
        /// Subject the notices are published on.
        #[arg(long, default_value = merchant_edge::relay::DEFAULT_SUBJECT)]
        subject: String,
        /// Admin HTTP address: /livez, /readyz, /metrics.
        #[arg(long, default_value = merchant_edge::relay::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// NATS credentials file (user JWT and NKey seed).
        #[arg(long, value_name = "FILE", conflicts_with = "nats_user")]
        nats_creds: Option<PathBuf>,
        /// NATS user; the password is read from --nats-password-file.
        #[arg(long, value_name = "USER", requires = "nats_password_file")]
        nats_user: Option<String>,
        /// File holding the NATS password (never printed).
        #[arg(long, value_name = "FILE", requires = "nats_user")]
        nats_password_file: Option<PathBuf>,
        /// PEM CA to trust for a NATS server over TLS.
        #[arg(long, value_name = "FILE")]
        nats_tls_ca: Option<PathBuf>,
        /// Stream replicas when the relay creates the stream: 1 on a single server, 3 on a 3-node
        /// cluster (survives losing any one server). An existing stream keeps its own.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Print a snapshot's header (format, sequence, incarnation, written at, merchants, bytes) and
    /// verify every record and the checksum; exit status 1 for a file a start would reject.
    Inspect { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        return commands::check_config(file);
    }
    if let Command::Snapshot { command: SnapshotCommand::Inspect { file } } = &cli.command {
        return merchant_edge::snapshot::inspect::inspect(file);
    }
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => commands::serve(config.as_deref()).await,
            Command::CoreSim { listen, merchants, history } => {
                commands::core_sim(listen, merchants, history).await.map(|()| ExitCode::SUCCESS)
            }
            Command::CorePg { database_url, listen, admin, config } => {
                let args = commands::CorePgArgs { config, database_url, listen, admin };
                commands::core_pg(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Lookup { ids, server, ca, cert, key, min_sequence } => {
                let tls = merchant_edge::client::ClientTls { ca, identity: cert.zip(key) };
                Ok(commands::lookup(&server, &tls, &ids, min_sequence).await)
            }
            Command::Explain { id, admin, json, token_file, min_sequence } => {
                merchant_edge::client::explain_and_print(&admin, &id, json, token_file.as_deref(), min_sequence)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Relay {
                core,
                nats,
                stream,
                subject,
                admin,
                nats_creds,
                nats_user,
                nats_password_file,
                nats_tls_ca,
                replicas,
            } => {
                let auth = merchant_edge::relay::nats_auth(nats_creds, nats_user, nats_password_file)
                    .map_err(|e| e.to_string())?;
                let mut config = merchant_edge::relay::RelayConfig::new(core, nats);
                config.nats.auth = auth;
                config.nats.tls_ca = nats_tls_ca;
                config.nats.stream = stream;
                config.nats.subject = subject;
                config.limits.replicas = usize::from(replicas);
                commands::relay(config, admin).await.map(|()| ExitCode::SUCCESS)
            }
            Command::CheckConfig { .. } | Command::Snapshot { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    result.unwrap_or_else(|message| {
        eprintln!("merchant-edge: {message}");
        ExitCode::FAILURE
    })
}
