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
use merchant_edge::pb::{LookupRequest, Merchant, UpsertMerchantRequest};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

use crate::keys::Keys;
use crate::timeline::Timeline;
use crate::{progress, report_html};

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
    /// Onboard merchants through the core's CoreAdmin: (core address, edge admin address, per second).
    pub churn: Option<(String, String, f64)>,
    /// Longest wait for one answer.
    pub timeout: Duration,
    pub json: Option<std::path::PathBuf>,
    /// Also write a self-contained HTML page with the report and its charts.
    pub html: Option<std::path::PathBuf>,
    /// Redraw a progress line on stderr once a second (only on a terminal).
    pub progress: bool,
}

/// Latencies (nanoseconds) and status codes. As in ghz, the average covers every call and the rest of
/// the latency figures only calls that succeeded.
struct Tally {
    latencies: Histogram<u64>,
    ok_latencies: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    fn new() -> Self {
        Self { latencies: histogram(), ok_latencies: histogram(), statuses: BTreeMap::new(), errors: BTreeMap::new() }
    }

    fn record(&mut self, latency: Duration, outcome: &Result<(), tonic::Status>) {
        let nanos = latency.as_nanos().clamp(1, 60_000_000_000) as u64;
        let _ = self.latencies.record(nanos);
        if outcome.is_ok() {
            let _ = self.ok_latencies.record(nanos);
        }
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
        let _ = self.ok_latencies.add(&other.ok_latencies);
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

/// One lookup, given up after `timeout` (counted as DeadlineExceeded), so a stuck edge cannot hold a run.
async fn lookup(
    client: &mut MerchantLookupClient<Channel>,
    id: String,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    match tokio::time::timeout(timeout, client.lookup(LookupRequest { merchant_id: id, min_sequence: 0 })).await {
        Ok(answer) => answer.map(drop),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
    }
}

/// What the churn task saw.
#[derive(Debug, Default)]
struct Churn {
    onboarded: u64,
    /// Lookups of onboarded merchants until each was found.
    checked: u64,
    /// "Not found" answers given after the edge had reported the notice applied.
    stale: u64,
    /// Onboardings not found within 5 s, or that could not be checked.
    failures: u64,
    /// From `UpsertMerchant` returning at the core to the edge answering FOUND.
    found_after: Vec<Duration>,
}

impl Churn {
    fn found_after_sorted(&self) -> Vec<Duration> {
        let mut found = self.found_after.clone();
        found.sort();
        found
    }
}

/// The sample at `quantile` of sorted durations (zero for none), as the summary and the report give it.
fn at(sorted: &[Duration], quantile: f64) -> Duration {
    let index = ((sorted.len() as f64 * quantile) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

/// The edge's applied sequence, from the first line of its admin `/readyz` (cheap to produce).
async fn applied_sequence(admin: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (_, rest) = response.split_once("applied sequence ")?;
    rest.split(',').next()?.trim().parse().ok()
}

/// Onboards merchants at `per_second`. Each new ID is looked up first, so the edge holds a "not found"
/// for it; then it is onboarded through CoreAdmin and looked up until the edge answers FOUND, which
/// times the way from the core's acknowledgement to the terminal. Before each of those lookups the
/// edge's applied sequence is read: a "not found" after the edge had applied the notice is stale.
async fn churn(
    core: String,
    admin: String,
    mut edge: MerchantLookupClient<Channel>,
    per_second: f64,
    until: Instant,
    timeout: Duration,
) -> Result<Churn, String> {
    let mut core_admin =
        CoreAdminClient::connect(core.clone()).await.map_err(|e| format!("core admin at {core}: {e}"))?;
    let mut seen = Churn::default();
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let mut next = Instant::now();
    let run = std::process::id();
    while next < until {
        tokio::time::sleep_until(next).await;
        next += period;
        let merchant_id = format!("896{:06}{:06}", run % 1_000_000, seen.onboarded);
        let planted = edge.lookup(LookupRequest { merchant_id: merchant_id.clone(), min_sequence: 0 }).await;
        if !planted.is_ok_and(|answer| !answer.into_inner().found) {
            seen.failures += 1;
            continue;
        }
        let merchant =
            Merchant { merchant_id: merchant_id.clone(), name: "Load-test onboarding".into(), ..Default::default() };
        let onboarding = core_admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) });
        let sequence = tokio::time::timeout(timeout, onboarding)
            .await
            .map_err(|_| "CoreAdmin did not answer".to_owned())?
            .map_err(|e| format!("onboarding through CoreAdmin failed: {e}"))?
            .into_inner()
            .sequence;
        let acknowledged = Instant::now();
        seen.onboarded += 1;
        loop {
            let applied = applied_sequence(&admin).await;
            let answer = tokio::time::timeout(
                timeout,
                edge.lookup(LookupRequest { merchant_id: merchant_id.clone(), min_sequence: 0 }),
            );
            let Ok(Ok(answer)) = answer.await else {
                seen.failures += 1;
                break;
            };
            seen.checked += 1;
            if answer.into_inner().found {
                seen.found_after.push(acknowledged.elapsed());
                break;
            }
            if applied.is_some_and(|applied| applied >= sequence) {
                seen.stale += 1;
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(5) {
                seen.failures += 1;
                break;
            }
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
    // Built before the clock starts, once: each caller draws from it with its own seed.
    let first_keys = match options.popularity {
        Popularity::Zipf => Keys::zipf(options.merchants, options.seed),
        Popularity::Uniform => Keys::uniform(options.merchants, options.seed),
    };
    let keys = |seed| first_keys.reseeded(seed);
    let started = Instant::now();
    let until = started + options.duration;
    let timeline = Arc::new(Timeline::new(started));
    let progress = options.progress.then(|| progress::start(timeline.clone(), started, std::io::stderr()));
    // The progress line ends before anything else is printed, whether the load ran through or not.
    let load = async {
        let churn_task = options.churn.clone().map(|(core, admin, per_second)| {
            tokio::spawn(churn(core, admin, clients[0].clone(), per_second, until, options.timeout))
        });
        let timeout = options.timeout;

        let tally = match options.rate {
            None => {
                let callers: Vec<_> = (0..options.concurrency.max(1))
                    .map(|caller| {
                        let mut client = clients[caller % clients.len()].clone();
                        let mut keys = keys(options.seed + caller as u64);
                        let (unknown, malformed) = (options.unknown, options.malformed);
                        let timeline = timeline.clone();
                        tokio::spawn(async move {
                            let mut tally = Tally::new();
                            while Instant::now() < until {
                                let id = keys.next_id(unknown, malformed);
                                let sent = Instant::now();
                                let outcome = lookup(&mut client, id, timeout).await;
                                let answered = Instant::now();
                                tally.record(answered - sent, &outcome);
                                timeline.record(answered, answered - sent, outcome.is_ok());
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
                    // tokio's timers wake up to a millisecond late, which at tens of thousands of requests a
                    // second would be counted as latency: sleep only when more than a millisecond ahead, and
                    // send whatever is due at once.
                    let now = Instant::now();
                    if intended > now {
                        if intended - now > Duration::from_millis(2) {
                            tokio::time::sleep_until(intended - Duration::from_millis(1)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                    let slot = in_flight.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                    let mut client = clients[sent as usize % clients.len()].clone();
                    let id = keys.next_id(options.unknown, options.malformed);
                    let (tally, timeline) = (tally.clone(), timeline.clone());
                    tasks.spawn(async move {
                        let outcome = lookup(&mut client, id, timeout).await;
                        let answered = Instant::now();
                        let latency = answered - intended;
                        tally.lock().expect("tally lock").record(latency, &outcome);
                        timeline.record(answered, latency, outcome.is_ok());
                        drop(slot);
                    });
                    while tasks.try_join_next().is_some() {}
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
        Ok::<_, String>((tally, total, churned))
    }
    .await;
    if let Some(progress) = progress {
        progress.finish().await;
    }
    let (tally, total, churned) = load?;
    print_summary(&tally, total, churned.as_ref());
    // One report for both files, so the page shows exactly the JSON report's numbers (its date too).
    let report = ghz_report(&options, &tally, total, churned.as_ref());
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nghz-format JSON report written to {}", path.display());
    }
    if let Some(path) = &options.html {
        let charts = report_html::Charts {
            timeline: timeline.points(total),
            latencies: tally
                .ok_latencies
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            found_after: churned
                .as_ref()
                .map(|churn| churn.found_after_sorted().iter().map(|d| d.as_nanos() as u64).collect()),
        };
        std::fs::write(path, report_html::page(&report, &charts))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("HTML report written to {}", path.display());
    }
    match churned {
        Some(churn) if churn.stale > 0 => Err(format!("{} stale answers after a notice", churn.stale)),
        Some(churn) if churn.failures > 0 => Err(format!("{} onboardings could not be checked", churn.failures)),
        _ => Ok(()),
    }
}

fn millis(nanos: u64) -> String {
    format!("{:.2} ms", nanos as f64 / 1e6)
}

fn print_summary(tally: &Tally, total: Duration, churned: Option<&Churn>) {
    let (latencies, count) = (&tally.ok_latencies, tally.latencies.len());
    println!("Summary:");
    println!("  Count:\t{count}");
    println!("  Total:\t{:.2} ms", total.as_secs_f64() * 1e3);
    println!("  Slowest:\t{}", millis(latencies.max()));
    println!("  Fastest:\t{}", millis(latencies.min()));
    println!("  Average:\t{}", millis(tally.latencies.mean() as u64));
    println!("  Requests/sec:\t{:.2}", count as f64 / total.as_secs_f64());
    println!("\nLatency distribution (calls that succeeded):");
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
        let found = churn.found_after_sorted();
        println!("\nOnboarding churn (each ID cached as not found first):");
        println!(
            "  onboarded {}, lookups of them {}, stale {}, not found within 5 s or unchecked {}",
            churn.onboarded, churn.checked, churn.stale, churn.failures
        );
        println!(
            "  from UpsertMerchant returning to the edge answering FOUND: p50 {:?}, p99 {:?}, slowest {:?} (n = {})",
            at(&found, 0.5),
            at(&found, 0.99),
            found.last().copied().unwrap_or_default(),
            found.len()
        );
    }
}

/// The report in ghz's JSON format (durations in nanoseconds), without per-request details. A churn
/// run adds a `churn` object, which ghz's own readers ignore as an unknown field.
fn ghz_report(options: &Options, tally: &Tally, total: Duration, churned: Option<&Churn>) -> serde_json::Value {
    let latencies = &tally.ok_latencies;
    let count = tally.latencies.len();
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
            json!({ "mark": mark as f64 / 1e9, "count": bucket, "frequency": bucket as f64 / latencies.len().max(1) as f64 })
        })
        .collect();
    let mut report = json!({
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
            "timeout": options.timeout.as_nanos() as u64,
            "load-schedule": "const",
            "binary": false,
            "CPUs": std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        "count": count,
        "total": total.as_nanos() as u64,
        "average": tally.latencies.mean() as u64,
        "fastest": fastest,
        "slowest": slowest,
        "rps": count as f64 / total.as_secs_f64(),
        "errorDistribution": tally.errors,
        "statusCodeDistribution": tally.statuses,
        "latencyDistribution": distribution,
        "histogram": histogram,
        "details": [],
    });
    if let Some(churn) = churned {
        let found = churn.found_after_sorted();
        let nanos = |d: Duration| d.as_nanos() as u64;
        report["churn"] = json!({
            "onboarded": churn.onboarded,
            "checked": churn.checked,
            "stale": churn.stale,
            "failures": churn.failures,
            "foundAfter": {
                "count": found.len(),
                "p50": nanos(at(&found, 0.5)),
                "p99": nanos(at(&found, 0.99)),
                "slowest": nanos(found.last().copied().unwrap_or_default()),
            },
        });
    }
    report
}

/// Sets the simulator's faults (the `faults` command).
pub async fn set_faults(core: &str, faults: merchant_edge::pb::SetFaultsRequest) -> Result<(), String> {
    let url = if core.contains("://") { core.to_owned() } else { format!("http://{core}") };
    let mut admin = CoreAdminClient::connect(url.clone()).await.map_err(|e| format!("core admin at {url}: {e}"))?;
    admin.set_faults(faults).await.map_err(|status| format!("SetFaults: {}", status.message()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_edge;

    #[test]
    fn code_names_match_ghz() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_run_with_churn_reports_every_answer_and_no_stale_one() {
        let test_edge::TestEdge { edge, core_url } = test_edge::start().await;
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
            churn: Some((core_url, edge.admin_addr.to_string(), 50.0)),
            timeout: Duration::from_secs(5),
            json: Some(report.clone()),
            html: None,
            progress: false,
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
