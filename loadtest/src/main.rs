//! `merchant-loadgen`: the load-test kit's own tool. `data` writes the request files the ghz configs in
//! `loadtest/ghz/` use, deterministically (same seed, same files on every machine); `run` sends load
//! (see `run.rs`) and reports like ghz, in JSON and as an HTML page; `faults` sets the simulator's.
mod data;
mod keys;
mod progress;
mod report_html;
mod run;
#[cfg(test)]
mod test_edge;
mod timeline;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "merchant-loadgen", about = "Load-test kit for merchant-edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the ghz data files (JSON arrays of requests, used round-robin by ghz).
    Data {
        /// Where to write the files.
        #[arg(long, default_value = "loadtest/data")]
        out: PathBuf,
        /// Merchants the simulator under test holds (IDs 898 + index, index below this).
        #[arg(long, default_value_t = 100_000)]
        merchants: u64,
        /// Requests per file (ghz cycles through them).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Set the simulator's faults (latency, errors, hang) for a test, through its CoreAdmin service.
    Faults {
        /// The simulator's gRPC address.
        #[arg(long)]
        core: String,
        /// Delay added to every GetMerchant and ListMerchants answer.
        #[arg(long, default_value_t = 0)]
        latency_ms: u32,
        /// Share of GetMerchant calls answered UNAVAILABLE (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Hold every GetMerchant and ListMerchants call until faults are set again.
        #[arg(long)]
        hang: bool,
    },
    /// Send lookups to an edge for a bounded time and report like ghz.
    Run {
        /// The edge's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// How long to send (always bounded).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// HTTP/2 connections to spread the calls over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Closed loop: callers, each sending its next request when the last is answered. With --rate,
        /// bounds requests in flight (times 64).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: requests per second; latency counts from each request's intended send time.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, value_enum, default_value = "zipf")]
        keys: run::Popularity,
        /// Merchants the core holds (IDs 898 + index below this).
        #[arg(long, default_value_t = 100_000)]
        merchants: u64,
        /// Share of well-formed IDs no core knows.
        #[arg(long, default_value_t = 0.05)]
        unknown: f64,
        /// Share of malformed IDs.
        #[arg(long, default_value_t = 0.01)]
        malformed: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Longest wait for one answer; a call past it counts as DeadlineExceeded.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// The core's address, to onboard merchants through CoreAdmin during the run.
        #[arg(long, requires_all = ["churn_rate", "churn_admin"])]
        churn_core: Option<String>,
        /// The edge's admin address, to see when it has applied each onboarding.
        #[arg(long)]
        churn_admin: Option<String>,
        /// Merchants onboarded per second with --churn-core. Each new ID is first looked up (so the edge
        /// caches "not found"), then onboarded; once the edge reports the notice applied, a lookup that
        /// still says "not found" is stale and fails the run.
        #[arg(long)]
        churn_rate: Option<f64>,
        /// Also write the report as ghz's JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also write a self-contained HTML page: latency histogram, requests/s and p50/p99 per second,
        /// status codes, and for churn runs the change-to-found latencies and the stale count.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            target,
            duration,
            connections,
            concurrency,
            rate,
            keys,
            merchants,
            unknown,
            malformed,
            seed,
            timeout,
            churn_core,
            churn_admin,
            churn_rate,
            json,
            html,
        } => {
            let churn = churn_core.zip(churn_admin).map(|(core, admin)| {
                let core = if core.contains("://") { core } else { format!("http://{core}") };
                (core, admin, churn_rate.unwrap_or(1.0))
            });
            let options = run::Options {
                target,
                connections,
                duration,
                concurrency,
                rate,
                popularity: keys,
                merchants,
                unknown,
                malformed,
                seed,
                churn,
                timeout,
                json,
                html,
                // On a pipe or a file, carriage returns and escapes would only clutter the output.
                progress: std::io::stderr().is_terminal(),
            };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("merchant-loadgen run: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Faults { core, latency_ms, error_rate, hang } => {
            let faults = merchant_edge::pb::SetFaultsRequest { latency_ms, error_rate, hang, ..Default::default() };
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run::set_faults(&core, faults)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("merchant-loadgen faults: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Data { out, merchants, requests, seed } => match data::write_all(&out, merchants, requests, seed) {
            Ok(written) => {
                for (file, count) in written {
                    println!("{}: {count} requests", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("merchant-loadgen data: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
