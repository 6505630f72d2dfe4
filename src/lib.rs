//! merchant-edge: a gRPC edge cache that answers merchant lookups for payment terminals from memory,
//! asks the bank core once on a miss, and says where every answer came from.
//!
//! # Layout
//! - [`config`]: the TOML config, its defaults and its validation.
//! - [`merchant_id`]: ID normalisation and the configurable ID rule.
//! - [`store`]: the bounded positive (compact, [`store::positive`]) and negative answer stores.
//! - [`fill`]: in-flight core calls: singleflight and the fence against stale installs.
//! - [`upstream`]: the client for the bank core's `MerchantCore` contract.
//! - [`guard`]: protecting the core: bounded calls and queue, retries within deadlines, circuit
//!   breaker, per-client limits.
//! - [`resolver`]: the lookup path tying the above together (with serve-stale and refresh-ahead).
//! - [`feed`]: follows the core's change notices (fence, gaps, resyncs, warm start).
//! - [`service`]: the terminal-facing `MerchantLookup` gRPC service; [`status`] maps errors to gRPC codes
//!   and answers to reasons.
//! - [`explain`]: "why was this merchant not found?": the checklist, typo suggestions and a verdict.
//! - [`readiness`], [`admin`], [`metrics`], [`telemetry`]: what operators see.
//! - [`reload`]: live config reload (SIGHUP, `POST /reload`, file watch), validated and atomic.
//! - [`tls`]: TLS and mutual TLS for terminals, with certificates replaced on reload; [`accept`]: the
//!   accept loop that pauses on errors instead of spinning.
//! - [`shared`]: the handles the parts of a running edge share.
//! - [`server`]: assembles a running edge from a config and bound listeners, and drains it.
//! - [`sim`]: the bank-core simulator (`core-sim`, and the embedded default upstream).
//! - [`client`], [`commands`]: the `lookup` and `explain` clients and the binary's subcommands.
//! - [`pb`]: generated protobuf code; [`wire`]: the server's encoding of the lookup contract, with
//!   merchants encoded once per version.
pub mod accept;
pub mod admin;
pub mod client;
pub mod commands;
pub mod config;
pub mod explain;
pub mod feed;
pub mod fill;
pub mod guard;
pub mod merchant_id;
pub mod metrics;
pub mod pb;
pub mod readiness;
pub mod relay;
pub mod reload;
pub mod resolver;
pub mod server;
pub mod service;
pub mod shared;
pub mod sim;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wire;
