//! The load generator: what ghz cannot do. Keys from a Zipf or uniform distribution over the
//! simulator's IDs with shares of unknown and malformed IDs; closed loop (a fixed number of callers)
//! or open loop (a target rate, with each latency measured from the intended send time, so queueing
//! inside the generator or the edge is not hidden); optional onboarding churn through `CoreAdmin`,
//! checking that no answer after a notice is stale. Prints a summary like ghz's and writes ghz's JSON
//! report format.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use merchant_edge::pb::core_admin_client::CoreAdminClient;
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{LookupRequest, Merchant, Source, UpsertMerchantRequest};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

use crate::keys::Keys;

/// Whether known merchants are drawn with Zipf or uniform popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Popularity {
    Zipf,
    Uniform,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub connections: usize,
    pub duration: Duration,
    /// Closed loop: this many callers, each sending its next request when the last is answered.
    pub concurrency: usize,
    /// Open loop: requests per second, sent on schedule whatever the answers do.
    pub rate: Option<u64>,
    pub popularity: Popularity,
    pub merchants: u64,
    pub unknown: f64,
    pub malformed: f64,
    pub seed: u64,
    /// Onboard this many merchants per second through the core's CoreAdmin at `churn_core`.
    pub churn: Option<(String, f64)>,
    pub json: Option<std::path::PathBuf>,
}

/// Latencies (nanoseconds) and status codes.
struct Tally {
    latencies: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: &Result<(), tonic::Status>) {
        let _ = self.latencies.record(latency.as_nanos().clamp(1, 60_000_000_000) as u64);
        let code = match outcome {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        };
        *self.statuses.entry(code_name(code)).or_default() += 1;
        if let Err(status) = outcome {
            let error = format!("rpc error: code = {} desc = {}", code_name(code), status.message());
            *self.errors.entry(error).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latencies.add(&other.latencies);
        for (code, count) in other.statuses {
            *self.statuses.entry(code).or_default() += count;
        }
        for (error, count) in other.errors {
            *self.errors.entry(error).or_default() += count;
        }
    }
}

/// gRPC code names as ghz (grpc-go) prints them.
fn code_name(code: Code) -> String {
    match code {
        Code::Ok => "OK".to_owned(),
        Code::Cancelled => "Canceled".to_owned(),
        other => format!("{other:?}"),
    }
}

async fn lookup(client: &mut MerchantLookupClient<Channel>, id: String) -> Result<(), tonic::Status> {
    client.lookup(LookupRequest { merchant_id: id }).await.map(drop)
}

/// What the churn task saw.
#[derive(Debug, Default)]
struct Churn {
    onboarded: u64,
    checked: u64,
    stale: u64,
    visible_after: Vec<Duration>,
}

/// Onboards merchants at `per_second` and, for each, looks it up until it is found: an answer
/// "not found" that claims to reflect the onboarding's sequence (or later) is stale.
async fn churn(
    core: String,
    edge: Vec<MerchantLookupClient<Channel>>,
    per_second: f64,
    until: Instant,
) -> Result<Churn, String> {
    let mut admin = CoreAdminClient::connect(core.clone()).await.map_err(|e| format!("core admin at {core}: {e}"))?;
    let mut edge = edge[0].clone();
    let mut seen = Churn::default();
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let mut next = Instant::now();
    let run = std::process::id();
    while Instant::now() < until {
        tokio::time::sleep_until(next).await;
        next += period;
        let merchant_id = format!("896{:06}{:06}", run % 1_000_000, seen.onboarded);
        let merchant =
            Merchant { merchant_id: merchant_id.clone(), name: "Load-test onboarding".into(), ..Default::default() };
        let committed = Instant::now();
        let sequence = admin
            .upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) })
            .await
            .map_err(|e| format!("onboarding through CoreAdmin failed: {e}"))?
            .into_inner()
            .sequence;
        seen.onboarded += 1;
        loop {
            let answer = edge.lookup(LookupRequest { merchant_id: merchant_id.clone() }).await;
            let Ok(answer) = answer.map(tonic::Response::into_inner) else { break };
            seen.checked += 1;
            let provenance = answer.provenance.unwrap_or_default();
            if answer.found {
                seen.visible_after.push(committed.elapsed());
                break;
            }
            if provenance.as_of_sequence >= sequence && provenance.source != Source::Unspecified as i32 {
                seen.stale += 1;
            }
            if committed.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(seen)
}

pub async fn run(options: Options) -> Result<(), String> {
    let url =
        if options.target.contains("://") { options.target.clone() } else { format!("http://{}", options.target) };
    let mut clients = Vec::new();
    for _ in 0..options.connections.max(1) {
        let channel = Channel::from_shared(url.clone())
            .map_err(|e| format!("invalid target {url}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        clients.push(MerchantLookupClient::new(channel));
    }
    let keys = |seed| match options.popularity {
        Popularity::Zipf => Keys::zipf(options.merchants, seed),
        Popularity::Uniform => Keys::uniform(options.merchants, seed),
    };
    let started = Instant::now();
    let until = started + options.duration;
    let churn_task =
        options.churn.clone().map(|(core, per_second)| tokio::spawn(churn(core, clients.clone(), per_second, until)));

    let tally = match options.rate {
        None => {
            let callers: Vec<_> = (0..options.concurrency.max(1))
                .map(|caller| {
                    let mut client = clients[caller % clients.len()].clone();
                    let mut keys = keys(options.seed + caller as u64);
                    let (unknown, malformed) = (options.unknown, options.malformed);
                    tokio::spawn(async move {
                        let mut tally = Tally::new();
                        while Instant::now() < until {
                            let id = keys.next_id(unknown, malformed);
                            let sent = Instant::now();
                            let outcome = lookup(&mut client, id).await;
                            tally.record(sent.elapsed(), &outcome);
                        }
                        tally
                    })
                })
                .collect();
            let mut tally = Tally::new();
            for caller in callers {
                tally.merge(caller.await.map_err(|e| e.to_string())?);
            }
            tally
        }
        Some(rate) => {
            // Requests leave on schedule; a bound on requests in flight keeps the generator's memory
            // finite, and a request that waits for a slot still counts from its intended send time.
            let tally = Arc::new(Mutex::new(Tally::new()));
            let in_flight = Arc::new(Semaphore::new(options.concurrency.max(1) * 64));
            let mut keys = keys(options.seed);
            let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut tasks = tokio::task::JoinSet::new();
            let mut sent = 0u64;
            loop {
                let intended = started + period.mul_f64(sent as f64);
                if intended >= until {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                let slot = in_flight.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                let mut client = clients[sent as usize % clients.len()].clone();
                let id = keys.next_id(options.unknown, options.malformed);
                let tally = tally.clone();
                tasks.spawn(async move {
                    let outcome = lookup(&mut client, id).await;
                    tally.lock().expect("tally lock").record(intended.elapsed(), &outcome);
                    drop(slot);
                });
                sent += 1;
            }
            while tasks.join_next().await.is_some() {}
            Arc::try_unwrap(tally)
                .map_err(|_| "requests still running".to_owned())?
                .into_inner()
                .map_err(|e| e.to_string())?
        }
    };
    let total = started.elapsed();
    let churned = match churn_task {
        Some(task) => Some(task.await.map_err(|e| e.to_string())??),
        None => None,
    };
    print_summary(&tally, total, churned.as_ref());
    if let Some(path) = &options.json {
        let report = ghz_report(&options, &tally, total);
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nghz-format JSON report written to {}", path.display());
    }
    match churned {
        Some(churn) if churn.stale > 0 => Err(format!("{} stale answers after a notice", churn.stale)),
        _ => Ok(()),
    }
}

fn millis(nanos: u64) -> String {
    format!("{:.2} ms", nanos as f64 / 1e6)
}

fn print_summary(tally: &Tally, total: Duration, churned: Option<&Churn>) {
    let latencies = &tally.latencies;
    let count = latencies.len();
    println!("Summary:");
    println!("  Count:\t{count}");
    println!("  Total:\t{:.2} ms", total.as_secs_f64() * 1e3);
    println!("  Slowest:\t{}", millis(latencies.max()));
    println!("  Fastest:\t{}", millis(latencies.min()));
    println!("  Average:\t{}", millis(latencies.mean() as u64));
    println!("  Requests/sec:\t{:.2}", count as f64 / total.as_secs_f64());
    println!("\nLatency distribution:");
    for percentile in [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9] {
        println!("  {percentile}% in {}", millis(latencies.value_at_quantile(percentile / 100.0)));
    }
    println!("\nStatus code distribution:");
    for (code, count) in &tally.statuses {
        println!("  [{code}]\t{count} responses");
    }
    if !tally.errors.is_empty() {
        println!("\nError distribution:");
        for (error, count) in &tally.errors {
            println!("  [{count}]\t{error}");
        }
    }
    if let Some(churn) = churned {
        let mut visible = churn.visible_after.clone();
        visible.sort();
        let median = visible.get(visible.len() / 2).copied().unwrap_or_default();
        let slowest = visible.last().copied().unwrap_or_default();
        println!("\nOnboarding churn:");
        println!("  onboarded {}, {} lookups of them checked, {} stale", churn.onboarded, churn.checked, churn.stale);
        println!(
            "  visible at the edge after: median {median:?}, slowest {slowest:?} (from the core's acknowledgement)"
        );
    }
}

/// The report in ghz's JSON format (durations in nanoseconds), without per-request details.
fn ghz_report(options: &Options, tally: &Tally, total: Duration) -> serde_json::Value {
    let latencies = &tally.latencies;
    let count = latencies.len();
    let distribution: Vec<_> = [10, 25, 50, 75, 90, 95, 99]
        .iter()
        .map(|&p| json!({ "percentage": p, "latency": latencies.value_at_quantile(f64::from(p) / 100.0) }))
        .collect();
    let (fastest, slowest) = (latencies.min(), latencies.max());
    let step = (slowest.saturating_sub(fastest)) as f64 / 10.0;
    let mut previous = 0;
    let histogram: Vec<_> = (0..=10)
        .map(|i| {
            let mark = if i == 10 { slowest } else { fastest + (step * f64::from(i)) as u64 };
            let below = latencies.count_between(0, mark);
            let bucket = below.saturating_sub(previous);
            previous = below;
            json!({ "mark": mark as f64 / 1e9, "count": bucket, "frequency": bucket as f64 / count.max(1) as f64 })
        })
        .collect();
    json!({
        "name": "merchant-loadgen",
        "endReason": "timeout",
        "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "options": {
            "call": "merchant.v1.MerchantLookup.Lookup",
            "host": options.target,
            "insecure": true,
            "rps": options.rate.unwrap_or(0),
            "concurrency": options.concurrency,
            "connections": options.connections,
            "duration": options.duration.as_nanos() as u64,
            "load-schedule": "const",
            "binary": false,
            "CPUs": std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        "count": count,
        "total": total.as_nanos() as u64,
        "average": latencies.mean() as u64,
        "fastest": fastest,
        "slowest": slowest,
        "rps": count as f64 / total.as_secs_f64(),
        "errorDistribution": tally.errors,
        "statusCodeDistribution": tally.statuses,
        "latencyDistribution": distribution,
        "histogram": histogram,
        "details": [],
    })
}

#[cfg(test)]
mod tests {
    use merchant_edge::config::{Config, UpstreamEndpoint};
    use merchant_edge::server::Edge;
    use merchant_edge::sim::Simulator;
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn code_names_match_ghz() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_run_with_churn_reports_every_answer_and_no_stale_one() {
        let core = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let core_url = format!("http://{}", core.local_addr().unwrap());
        tokio::spawn(Simulator::new(1000, 10_000).serve(core, std::future::pending()));
        let mut config = Config::default();
        config.upstream.endpoint = UpstreamEndpoint::Url(core_url.clone());
        let (grpc, admin) =
            (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
        let edge = Edge::with_listeners(config, grpc, admin).start().await.unwrap();
        while !edge.readiness.is_ready() || !edge.feed.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = std::env::temp_dir().join(format!("merchant-loadgen-report-{}.json", std::process::id()));
        let options = Options {
            target: edge.grpc_addr.to_string(),
            connections: 2,
            duration: Duration::from_millis(400),
            concurrency: 8,
            rate: None,
            popularity: Popularity::Zipf,
            merchants: 1000,
            unknown: 0.05,
            malformed: 0.05,
            seed: 1,
            churn: Some((core_url, 50.0)),
            json: Some(report.clone()),
        };
        run(options).await.expect("no stale answers");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let count = json["count"].as_u64().unwrap();
        let statuses = &json["statusCodeDistribution"];
        let ok = statuses["OK"].as_u64().unwrap();
        let invalid = statuses["InvalidArgument"].as_u64().unwrap();
        assert!(count > 100, "{json}");
        assert_eq!(ok + invalid, count, "found and not-found are OK; only malformed IDs fail: {statuses}");
        assert_eq!(json["latencyDistribution"].as_array().unwrap().len(), 7);
        std::fs::remove_file(report).unwrap();
        edge.shutdown().await.unwrap();
    }
}
