//! The local snapshot: an edge restarted while the bank core is down answers what it held (with its
//! true age), resumes the feed from the snapshot's sequence without reloading, resyncs when it must,
//! never loads a damaged file, and survives `kill -9` in the middle of a write.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use merchant_edge::config::Config;
use merchant_edge::feed::ResyncReason;
use merchant_edge::pb::{DeleteMerchantRequest, Merchant, MerchantStatus, Source, UpsertMerchantRequest};
use merchant_edge::server::RunningEdge;
use merchant_edge::sim::Simulator;
use merchant_edge::snapshot::inspect::verify;
use merchant_edge::snapshot::LoadOutcome;
use tonic::Code;

const NEW: &str = "898000500000001";
const OTHER: &str = "898000000000043";

async fn upsert(core: &Core, id: &str, name: &str) -> u64 {
    let merchant = Merchant {
        merchant_id: id.into(),
        name: name.into(),
        mcc: "5411".into(),
        city: "Suzhou".into(),
        status: MerchantStatus::Active as i32,
        ..Default::default()
    };
    let request = UpsertMerchantRequest { merchant: Some(merchant) };
    core.admin().await.upsert_merchant(request).await.unwrap().into_inner().sequence
}

async fn delete(core: &Core, id: &str) -> u64 {
    let request = DeleteMerchantRequest { merchant_id: id.into() };
    core.admin().await.delete_merchant(request).await.unwrap().into_inner().sequence
}

/// An edge on `core_url` that loads every merchant at start and keeps its snapshot at `path`.
fn snapshot_config(core_url: &str, path: &Path) -> Config {
    let mut config = edge_config(core_url);
    config.feed.warm_start = true;
    config.snapshot.path = path.to_owned();
    config
}

async fn wait_caught_up(edge: &RunningEdge, core: &Core) {
    let head = core.stats().await.head_sequence;
    wait_until(&format!("the feed follows the core at {head}"), || async {
        edge.feed.is_connected() && edge.feed.applied() == head
    })
    .await;
}

/// The core at `addr` again, with the same history (the same simulator).
async fn restart_core(simulator: &Simulator, addr: std::net::SocketAddr) -> Core {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the core's port");
    Core::start_with(simulator.clone(), listener).await
}

fn version(response: &merchant_edge::pb::LookupResponse) -> u64 {
    response.merchant.as_ref().map_or(0, |m| m.version)
}

#[tokio::test]
async fn restarted_with_the_core_down_it_answers_what_it_held_then_resumes_without_listing() {
    let scratch = Scratch::new("snapshot-core-down");
    let path = scratch.0.join("snapshot.bin");
    let mut core = Core::start(1000).await;
    let config = snapshot_config(&core.url(), &path);
    let edge = start_following_edge(config.clone()).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    let changed = upsert(&core, OTHER, "Changed Before The Restart").await;
    wait_caught_up(&edge, &core).await;
    // Taken once the edge has the change, so its true age can only be longer than what this measures.
    let learned = std::time::Instant::now();
    edge.shutdown().await.unwrap();
    let written = verify(&path).unwrap();
    assert_eq!((written.header.sequence, written.merchants), (changed, 1000), "the drain wrote what the edge held");

    // While the edge is down, the core commits a change; then the core goes down too.
    let while_down = upsert(&core, NEW, "Onboarded While The Edge Was Down").await;
    let listings = core.stats().await.list_merchants_calls;
    let (addr, simulator) = (core.addr, core.simulator.clone());
    core.stop().await;

    let edge = start_edge(config.clone()).await;
    assert_eq!(edge.metrics.snapshot.loads(LoadOutcome::Loaded), 1);
    assert!(edge.readiness.is_ready(), "ready from the snapshot, before the core answers");
    let (status, body) = http_get(edge.admin_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: serving from local snapshot of "), "{body}");
    assert!(body.contains("feed DOWN"), "{body}");
    let mut terminal = client(&edge).await;
    for i in (0..1000).step_by(7) {
        let id = format!("898{i:012}");
        let answer = lookup(&mut terminal, &id).await.unwrap();
        assert!(answer.found, "{id} held before the restart");
        assert_eq!(source(&answer), Source::Cache, "{id}");
    }
    let answer = lookup(&mut terminal, OTHER).await.unwrap();
    let provenance = answer.provenance.unwrap();
    assert_eq!((version(&answer), provenance.as_of_sequence), (2, changed), "the change applied before the snapshot");
    let since_learned = learned.elapsed().as_millis() as u64;
    assert!(provenance.age_ms + 5 >= since_learned, "true age across the restart: {provenance:?} vs {since_learned}ms");
    let unknown = lookup(&mut terminal, UNKNOWN).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "never not-found while the core cannot vouch: {unknown:?}");
    assert_eq!(lookup(&mut terminal, NEW).await.unwrap_err().code(), Code::Unavailable);

    // Past its TTL, with the core still down: answered stale, as by an edge that never restarted.
    advance_clock(config.cache.positive_ttl + Duration::from_secs(1)).await;
    let stale = lookup(&mut terminal, KNOWN).await.unwrap();
    assert!(stale.found);
    assert_eq!(source(&stale), Source::Stale);
    assert!(stale.provenance.unwrap().age_ms > config.cache.positive_ttl.as_millis() as u64);

    // The core comes back with the same history: only the missed notice is read.
    let core = restart_core(&simulator, addr).await;
    wait_until("the missed notice is applied", || async { edge.feed.applied() == while_down }).await;
    let onboarded = lookup(&mut terminal, NEW).await.unwrap();
    assert!(onboarded.found);
    assert_eq!(source(&onboarded), Source::Cache, "installed by the notice");
    assert_eq!(core.stats().await.list_merchants_calls, listings, "resumed without any ListMerchants");
    assert_eq!(edge.metrics.feed.resyncs(ResyncReason::TooOld), 0);
    let (_, body) = http_get(edge.admin_addr, "/readyz").await;
    assert!(body.starts_with("ready\n"), "following the core again: {body}");
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_ready_when_core_down_off_a_restored_edge_waits_for_the_core_to_report_ready() {
    let scratch = Scratch::new("snapshot-not-ready");
    let path = scratch.0.join("snapshot.bin");
    let mut core = Core::start(1000).await;
    let mut config = snapshot_config(&core.url(), &path);
    config.snapshot.ready_when_core_down = false;
    let edge = start_following_edge(config.clone()).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    edge.shutdown().await.unwrap();
    let (addr, simulator) = (core.addr, core.simulator.clone());
    core.stop().await;

    let edge = start_edge(config).await;
    let (status, body) = http_get(edge.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: serving from local snapshot of "), "{body}");
    assert!(body.contains("waiting for the core"), "{body}");
    // Not ready is for load balancers; a terminal that still asks is answered from the snapshot.
    assert!(lookup(&mut client(&edge).await, KNOWN).await.unwrap().found);
    let core = restart_core(&simulator, addr).await;
    wait_until("ready once the feed follows the core", || async { edge.readiness.is_ready() }).await;
    assert_eq!(core.stats().await.list_merchants_calls, 1, "only the first edge's warm start listed");
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_core_that_trimmed_the_history_past_the_snapshot_resyncs() {
    let scratch = Scratch::new("snapshot-trimmed");
    let path = scratch.0.join("snapshot.bin");
    let core = Core::start_with(Simulator::new(1000, 2), loopback().await).await;
    let config = snapshot_config(&core.url(), &path);
    let edge = start_following_edge(config.clone()).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    edge.shutdown().await.unwrap();
    assert_eq!(verify(&path).unwrap().header.sequence, 0);

    for i in 1..=4 {
        upsert(&core, OTHER, &format!("Renamed {i}")).await;
    }
    let deleted = delete(&core, KNOWN).await;
    let listings = core.stats().await.list_merchants_calls;

    let edge = start_edge(config).await;
    assert_eq!(edge.metrics.snapshot.loads(LoadOutcome::Loaded), 1);
    wait_until("a too-old resync", || async { edge.metrics.feed.resyncs(ResyncReason::TooOld) == 1 }).await;
    wait_caught_up(&edge, &core).await;
    assert!(core.stats().await.list_merchants_calls > listings, "the resync listed the merchants");
    let mut terminal = client(&edge).await;
    let renamed = lookup(&mut terminal, OTHER).await.unwrap();
    assert_eq!(renamed.merchant.unwrap().name, "Renamed 4");
    let gone = lookup(&mut terminal, KNOWN).await.unwrap();
    assert!(!gone.found, "deleted while the edge was down");
    assert_eq!(gone.provenance.unwrap().as_of_sequence, deleted);
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_core_with_a_new_incarnation_resyncs_and_a_merchant_deleted_meanwhile_is_gone() {
    let scratch = Scratch::new("snapshot-incarnation");
    let path = scratch.0.join("snapshot.bin");
    let mut first = Core::start(1000).await;
    let edge = start_following_edge(snapshot_config(&first.url(), &path)).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    edge.shutdown().await.unwrap();
    first.stop().await;

    let second = Core::start(1000).await;
    delete(&second, KNOWN).await;
    let edge = start_edge(snapshot_config(&second.url(), &path)).await;
    assert_eq!(edge.metrics.snapshot.loads(LoadOutcome::Loaded), 1);
    wait_until("a core-restarted resync", || async { edge.metrics.feed.resyncs(ResyncReason::CoreRestarted) == 1 })
        .await;
    wait_caught_up(&edge, &second).await;
    let mut terminal = client(&edge).await;
    assert!(!lookup(&mut terminal, KNOWN).await.unwrap().found, "deleted in the new history");
    assert!(lookup(&mut terminal, OTHER).await.unwrap().found);
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_notice_applied_before_a_snapshot_was_written_is_never_undone() {
    let scratch = Scratch::new("snapshot-never-undone");
    let path = scratch.0.join("snapshot.bin");
    let mut core = Core::start(1000).await;
    let config = snapshot_config(&core.url(), &path);
    let edge = start_following_edge(config.clone()).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    delete(&core, KNOWN).await;
    let renamed = upsert(&core, OTHER, "Renamed").await;
    wait_caught_up(&edge, &core).await;
    // The periodic write (not the drain's), while the edge keeps serving.
    let written = edge.snapshots.write().await.unwrap().expect("snapshots are on and the feed follows the core");
    assert_eq!(written.merchants, 999);
    assert_eq!(verify(&path).unwrap().header.sequence, renamed);
    // Gone without a drain (no last write): the restart has only the periodic snapshot.
    drop(edge);
    let (addr, simulator) = (core.addr, core.simulator.clone());
    core.stop().await;

    let edge = start_edge(config).await;
    let mut terminal = client(&edge).await;
    let deleted = lookup(&mut terminal, KNOWN).await.unwrap_err();
    assert_eq!(deleted.code(), Code::Unavailable, "the deleted merchant is not in the snapshot: {deleted:?}");
    assert_eq!(lookup(&mut terminal, OTHER).await.unwrap().merchant.unwrap().name, "Renamed");
    let core = restart_core(&simulator, addr).await;
    wait_caught_up(&edge, &core).await;
    assert!(!lookup(&mut terminal, KNOWN).await.unwrap().found);
    assert_eq!(lookup(&mut terminal, OTHER).await.unwrap().merchant.unwrap().name, "Renamed");
    edge.shutdown().await.unwrap();
}

/// Starts an edge on `path`, checks it rejected the file for `outcome` and serves from the core.
async fn rejected_as(core: &Core, path: &Path, outcome: LoadOutcome, configure: impl FnOnce(&mut Config)) {
    let mut config = edge_config(&core.url());
    config.snapshot.path = path.to_owned();
    configure(&mut config);
    let edge = start_following_edge(config).await;
    assert_eq!(edge.metrics.snapshot.loads(outcome), 1, "{} rejected as {outcome:?}", path.display());
    assert_eq!(edge.metrics.snapshot.loads(LoadOutcome::Loaded), 0);
    assert!(edge.restored.is_none());
    let answer = lookup(&mut client(&edge).await, KNOWN).await.unwrap();
    assert!(answer.found);
    assert_eq!(source(&answer), Source::Upstream, "served from the core, as without a snapshot");
    edge.shutdown().await.unwrap();
}

fn variant(scratch: &Scratch, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_damaged_or_unreadable_snapshot_is_rejected_whole_with_its_reason() {
    let scratch = Scratch::new("snapshot-damaged");
    let good = scratch.0.join("good.bin");
    let core = Core::start(1000).await;
    let edge = start_following_edge(snapshot_config(&core.url(), &good)).await;
    wait_until("warm", || async { edge.readiness.is_ready() }).await;
    edge.shutdown().await.unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let len = bytes.len();

    // The inspect command agrees, and names the reason.
    // (Before the edges below: each writes a fresh snapshot over the file it rejected when it drains.)
    let mut flipped = bytes.clone();
    flipped[len / 2] ^= 0x01;
    let damaged = [
        (variant(&scratch, "inspect-flipped.bin", &flipped), "corrupted"),
        (variant(&scratch, "inspect-cut.bin", &bytes[..5]), "truncated"),
    ];
    for (path, reason) in damaged {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
            .args(["snapshot", "inspect"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!(": {reason}: ")), "{stderr}");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["snapshot", "inspect"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in
        ["format:      merchant-edge snapshot, version 1", "sequence:    0", "merchants:   1000", "checksum:    ok"]
    {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
    assert!(stdout.contains(&format!("bytes:       {len}")), "{stdout}");

    for cut in [0, 5, 20, len / 2, len - 21, len - 1] {
        let path = variant(&scratch, &format!("cut-{cut}.bin"), &bytes[..cut]);
        rejected_as(&core, &path, LoadOutcome::Truncated, |_| {}).await;
    }
    let mut flipped = bytes.clone();
    flipped[len / 2] ^= 0x01;
    let path = variant(&scratch, "flipped.bin", &flipped);
    rejected_as(&core, &path, LoadOutcome::Corrupted, |_| {}).await;
    let mut future = bytes.clone();
    future[8] = 9;
    let path = variant(&scratch, "version.bin", &future);
    rejected_as(&core, &path, LoadOutcome::UnknownVersion, |_| {}).await;
    rejected_as(&core, &good, LoadOutcome::OtherIdRule, |config| {
        config.merchant_id.charset = merchant_edge::merchant_id::Charset::Alphanumeric;
    })
    .await;
    let directory = scratch.0.join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    rejected_as(&core, &directory, LoadOutcome::Unreadable, |_| {}).await;
    // Tests run as root, whom file modes do not stop; a path through a regular file is refused to
    // everyone (ENOTDIR), the same "cannot open it" case as a permission error.
    let blocked = variant(&scratch, "not-a-directory", b"").join("snapshot.bin");
    rejected_as(&core, &blocked, LoadOutcome::Unreadable, |_| {}).await;
}

/// `merchant-edge serve` (the real binary) on `config`; returns the child and its admin address.
async fn serve(config: &Path) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start merchant-edge");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap().unwrap();
    let admin = banner.split_whitespace().last().unwrap().trim_start_matches("http://").trim_end_matches(')');
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    (child, admin.parse().unwrap())
}

/// Polls `condition` every millisecond for up to 120 s: writes here follow a warm start or a resync of
/// the embedded core (each restart is a new core incarnation), which a debug build on a busy machine
/// may take longer than the harness's usual 10 s for.
async fn patiently(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn kill_9_during_a_write_leaves_the_previous_complete_snapshot() {
    const MERCHANTS: u64 = 100_000;
    let scratch = Scratch::new("snapshot-kill");
    let path = scratch.0.join("snapshot.bin");
    let temporary = merchant_edge::snapshot::writer::temporary_path(&path).unwrap();
    let config = scratch.write(
        "edge.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nembedded_merchants = \
             {MERCHANTS}\n[reload]\nwatch_file = false\n[snapshot]\npath = \"{}\"\ninterval = \"1s\"\n",
            path.display()
        ),
    );
    let mut previous: Option<SystemTime> = None;
    let mut cut_short = 0;
    for round in 0..4 {
        let (mut child, admin) = serve(&config).await;
        if round > 0 {
            let (_, metrics) = http_get(admin, "/metrics").await;
            assert!(
                metrics.contains(r#"merchant_edge_snapshot_loads_total{outcome="loaded"} 1"#),
                "round {round}: the start after a kill loaded the snapshot:\n{metrics}"
            );
        }
        if round == 0 {
            patiently("the first complete snapshot", || path.exists()).await;
        }
        // Kill while a write is in progress: the temporary file exists (it is renamed when complete),
        // at a random point of the write.
        let _ = std::fs::remove_file(&temporary);
        patiently("a snapshot write is in progress", || temporary.exists()).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        // A temporary file left behind: this kill did land in the middle of a write.
        cut_short += u32::from(temporary.exists());
        let kept =
            verify(&path).unwrap_or_else(|failed| panic!("round {round}: the snapshot is damaged: {:?}", failed.1));
        assert_eq!(kept.merchants, MERCHANTS, "round {round}: a complete snapshot");
        let written_at = SystemTime::UNIX_EPOCH + Duration::from_millis(kept.header.written_at_unix_ms as u64);
        assert!(previous.is_none_or(|previous| written_at >= previous), "round {round}");
        previous = Some(written_at);
    }
    assert!(previous.is_some(), "at least one write completed before a kill");
    assert!(cut_short > 0, "no kill landed in the middle of a write");
}
