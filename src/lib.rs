//! merchant-edge: a gRPC edge cache that answers merchant lookups for payment terminals from memory,
//! asks the bank core once on a miss, and says where every answer came from.
//!
//! # Layout
//! Two paths meet in one room:
//! - **read**: [`lookup`] (the `MerchantLookup` gRPC service → the resolver: memory answer, else the
//!   core through [`guard`], serve-stale, refresh-ahead) → reads the [`cache`]'s stores.
//!   A lookup with a consistency token (`min_sequence`) the edge has not applied yet waits on the
//!   [`feed`]'s applied sequence (`FeedState`), then asks the core through the same fill.
//! - **write**: [`feed`] (the core's change notices: order, gaps, resyncs, warm start) → [`cache`].
//!   Fills from the read path also write only through the [`cache`].
//! - [`cache`]: the only writer of the answer stores. It owns the positive and negative stores, the
//!   in-flight fills and the fence ([`cache::fence`]: the one rule for what may be installed).
//! - [`guard`]: protecting the core: bounded calls and queue, retries within deadlines, circuit
//!   breaker, per-client limits; [`upstream`]: the client of the core contract.
//! - [`config`]: the TOML config composed of each subsystem's section (`CacheConfig` in `cache`,
//!   `FeedConfig` in `feed`, `ProtectConfig` in `guard`), its loading, errors and reload diff;
//!   [`merchant_id`]: ID normalisation and the ID rule.
//! - [`metrics`]: the registry composing each subsystem's own metrics (`cache/metrics.rs`, ...).
//! - operations: readiness and gRPC health, the admin HTTP endpoint (with `explain`: the "why not
//!   found" checklist; who may use the endpoints that change state: loopback, or a bearer token), live
//!   reload, TLS, logging, systemd notifications.
//! - [`snapshot`]: the local snapshot file (what the edge holds, its feed position): restored at start
//!   through the [`cache`] so a restart answers while the core is down, and the feed resumes from it;
//!   written crash-safe every interval and at drain.
//! - [`server`]: assembles a running edge from a config and bound listeners, and drains it;
//!   [`runtime`]: where gRPC calls run (one single-threaded runtime per core on `SO_REUSEPORT`
//!   sockets, or the shared multi-thread one), background work staying on the main runtime;
//!   `huge_pages`: whether the process may use transparent huge pages.
//! - [`relay`]: `merchant-edge relay`: follows the core's change stream into a NATS JetStream stream,
//!   each notice once and in core order, for a fleet of edges.
//! - [`sim`]: the bank-core simulator (`core-sim`, and the embedded default upstream).
//! - [`core_pg`]: `merchant-edge core-pg`, the core contract served from a PostgreSQL table, its
//!   changes read from the WAL by logical decoding (a real system of record in place of the simulator).
//! - [`client`], [`commands`]: the `lookup` and `explain` clients (the `explain` report as aligned
//!   lines for people) and the binary's subcommands.
//! - [`pb`]: generated protobuf code; [`wire`]: the server's encoding of the lookup contract, with
//!   merchants encoded once per version, and the snapshot reader's (listed merchants kept as bytes).
mod accept;
mod admin;
mod admin_auth;
mod backoff;
pub mod cache;
mod checklist;
pub mod client;
pub mod commands;
pub mod config;
pub mod core_pg;
mod explain;
pub mod feed;
pub mod guard;
mod huge_pages;
pub mod live;
pub mod lookup;
pub mod merchant_id;
mod metric_labels;
pub mod metrics;
pub mod pb;
mod readiness;
pub mod relay;
mod reload;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod snapshot;
mod systemd;
mod telemetry;
mod text;
mod tls;
pub mod upstream;
pub mod wire;

pub use readiness::Readiness;
pub use reload::{ReloadError, ReloadReport, ReloadTrigger, Reloader};
pub use telemetry::LogControl;
