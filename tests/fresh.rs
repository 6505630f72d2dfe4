//! Consistency tokens (`min_sequence`): read-your-writes right after onboarding, monotonic reads when a
//! terminal moves to an edge that is behind, and clear errors for tokens the edge cannot meet. Real
//! gRPC over loopback against the simulator; none of the assertions depends on timing, only the
//! notice delays that make the edges late do.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use merchant_edge::config::Config;
use merchant_edge::lookup::TokenOutcome;
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{
    BatchLookupRequest, LookupRequest, LookupResponse, Merchant, MerchantStatus, Reason, SetFaultsRequest, Source,
    UpsertMerchantRequest,
};
use merchant_edge::server::RunningEdge;
use tonic::transport::Channel;
use tonic::Code;

async fn upsert(core: &Core, id: &str, name: &str) -> u64 {
    let merchant = Merchant {
        merchant_id: id.into(),
        name: name.into(),
        mcc: "5411".into(),
        city: "Hangzhou".into(),
        status: MerchantStatus::Active as i32,
        ..Default::default()
    };
    let change = core.admin().await.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await;
    let change = change.unwrap().into_inner();
    assert!(change.sequence > 0, "the core returns the sequence it committed the change at");
    change.sequence
}

async fn lookup_at_least(
    client: &mut MerchantLookupClient<Channel>,
    id: &str,
    min_sequence: u64,
) -> Result<LookupResponse, tonic::Status> {
    client.lookup(LookupRequest { merchant_id: id.into(), min_sequence }).await.map(|r| r.into_inner())
}

fn version(response: &LookupResponse) -> u64 {
    assert!(response.found, "expected a merchant: {response:?}");
    response.merchant.as_ref().unwrap().version
}

fn reason(status: &tonic::Status) -> &str {
    status.metadata().get("merchant-edge-reason").and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// A following edge whose cached "not found" answers stay trusted while the feed lags, so a lookup
/// without a token shows exactly the stale answer the token protects against.
async fn edge(core: &Core, configure: impl FnOnce(&mut Config)) -> RunningEdge {
    let mut config = edge_config(&core.url());
    config.feed.negative_ttl_when_down = config.cache.negative_ttl;
    configure(&mut config);
    start_following_edge(config).await
}

fn id(n: u64) -> String {
    format!("898000600{n:06}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Rounds of onboard-then-look-up racing a notice delayed 500 ms; returns the token lookups' latencies.
async fn onboard_and_look_up(
    core: &Core,
    edge: &RunningEdge,
    client: &mut MerchantLookupClient<Channel>,
    ids: std::ops::Range<u64>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for n in ids {
        let id = id(n);
        assert!(!lookup(client, &id).await.unwrap().found, "not onboarded yet");
        let sequence = upsert(core, &id, "Onboarded Just Now").await;
        let plain = lookup(client, &id).await.unwrap();
        assert!(edge.feed.applied() < sequence, "the notice is still on its way");
        assert!(!plain.found, "without the token the cached not-found is served: the race is real");
        assert_eq!(source(&plain), Source::NegativeCache);
        let started = std::time::Instant::now();
        let fresh = lookup_at_least(client, &id, sequence).await.unwrap();
        latencies.push(started.elapsed());
        assert!(fresh.found, "round {n}: the token's lookup found the merchant onboarded at {sequence}");
        assert!(fresh.provenance.unwrap().as_of_sequence >= sequence);
    }
    latencies
}

#[tokio::test]
async fn a_merchant_looked_up_with_its_onboarding_sequence_is_found_every_time() {
    let core = Core::start(1_000).await;
    let edge = edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    core.set_faults(SetFaultsRequest { notice_delay_ms: 500, ..Default::default() }).await;

    // feed.fresh_wait (200ms) is shorter than the notice delay: the lookups ask the core.
    let mut asked = onboard_and_look_up(&core, &edge, &mut client, 0..12).await;
    let tokens = &edge.metrics.lookup.tokens;
    assert_eq!(tokens.get(TokenOutcome::AskedCore), 12);
    asked.sort();
    eprintln!(
        "token lookups after onboarding, notice delay 500ms, fresh_wait 200ms: p50 {:?} p99 {:?}",
        percentile(&asked, 0.5),
        percentile(&asked, 0.99)
    );

    // Live reload: with a wait longer than the delay the feed's own apply answers them (no core call).
    let head = core.stats().await.head_sequence;
    wait_until("the delayed notices are applied", || async { edge.feed.applied() >= head }).await;
    let mut config = (**edge.config.load()).clone();
    config.feed.fresh_wait = Duration::from_secs(3);
    edge.config.store(Arc::new(config));
    let calls = core.stats().await.get_merchant_calls;
    let mut waited = onboard_and_look_up(&core, &edge, &mut client, 100..106).await;
    assert_eq!(tokens.get(TokenOutcome::Waited), 6);
    assert_eq!(core.stats().await.get_merchant_calls - calls, 6, "only the first plain lookup of each round");
    waited.sort();
    eprintln!(
        "token lookups after onboarding, notice delay 500ms, fresh_wait 3s: p50 {:?} p99 {:?}",
        percentile(&waited, 0.5),
        percentile(&waited, 0.99)
    );
    let metrics = http_get(edge.admin_addr, "/metrics").await.1;
    assert!(metrics.contains("merchant_edge_token_lookups_total{outcome=\"waited\"} 6"), "{metrics}");
    assert!(metrics.contains("merchant_edge_token_wait_seconds_count 18"), "every token lookup waited");
}

#[tokio::test]
async fn a_token_the_feed_has_applied_costs_no_core_call_and_a_stalled_feed_asks_the_core_once_per_id() {
    let core = Core::start(1_000).await;
    let edge = edge(&core, |_| {}).await;
    let mut client = client(&edge).await;

    let applied = upsert(&core, &id(1), "Caught Up").await;
    wait_until("the notice is applied", || async { edge.feed.applied() >= applied }).await;
    let calls = core.stats().await.get_merchant_calls;
    let answer = lookup_at_least(&mut client, &id(1), applied).await.unwrap();
    assert_eq!(source(&answer), Source::Cache);
    let batch = BatchLookupRequest { merchant_ids: vec![id(1), id(1)], min_sequence: applied };
    let batch = client.batch_lookup(batch).await.unwrap().into_inner();
    assert!(batch.results.iter().all(|result| result.found));
    assert_eq!(core.stats().await.get_merchant_calls, calls, "a token already applied costs no core call");
    assert_eq!(edge.metrics.lookup.tokens.get(TokenOutcome::Fresh), 3);

    // The feed stalls (notices take a minute) and the core answers slowly, so every waiter overlaps the
    // one fill: a plain lookup starts it, twenty terminals per ID with the token join it.
    core.set_faults(SetFaultsRequest { notice_delay_ms: 60_000, latency_ms: 400, ..Default::default() }).await;
    let (a, b) = (id(2), id(3));
    upsert(&core, &a, "Stalled A").await;
    let token = upsert(&core, &b, "Stalled B").await;
    let calls = core.stats().await.get_merchant_calls;
    let mut waiters = Vec::new();
    for merchant in [&a, &b] {
        let mut plain = client.clone();
        let merchant_id = merchant.clone();
        waiters.push(tokio::spawn(async move { lookup(&mut plain, &merchant_id).await }));
        for _ in 0..20 {
            let (mut client, merchant_id) = (client.clone(), merchant.clone());
            waiters.push(tokio::spawn(async move { lookup_at_least(&mut client, &merchant_id, token).await }));
        }
    }
    for waiter in waiters {
        assert!(waiter.await.unwrap().unwrap().found);
    }
    assert_eq!(core.stats().await.get_merchant_calls - calls, 2, "one core call per ID, shared with the plain fill");
    assert!(edge.feed.applied() < token, "the feed was stalled throughout");
    // The fill was stored under the fence as of a sequence past the token: later token lookups hit.
    let again = lookup_at_least(&mut client, &a, token).await.unwrap();
    assert_eq!(source(&again), Source::Cache);
    assert_eq!(core.stats().await.get_merchant_calls - calls, 2);
}

#[tokio::test]
async fn a_terminal_moving_to_an_edge_held_behind_never_sees_an_older_version() {
    let core = Core::start(1_000).await;
    let ahead = edge(&core, |_| {}).await;
    // The second edge's stream opens stalled and stays so (its stall detection is put off for the test).
    core.set_faults(SetFaultsRequest { stall_new_streams: true, ..Default::default() }).await;
    let behind = edge(&core, |config| config.feed.stall_timeout = Duration::from_secs(3600)).await;
    core.set_faults(SetFaultsRequest::default()).await;
    let (mut first, mut second) = (client(&ahead).await, client(&behind).await);
    let merchant = id(7);
    let mut seen_version = 0;
    for round in 0..5u64 {
        let sequence = upsert(&core, &merchant, &format!("Version {round}")).await;
        wait_until("the first edge applied the change", || async { ahead.feed.applied() >= sequence }).await;
        let on_first = lookup(&mut first, &merchant).await.unwrap();
        let token = on_first.provenance.unwrap().as_of_sequence;
        assert!(version(&on_first) > seen_version);
        seen_version = version(&on_first);
        if round > 0 {
            let plain = lookup(&mut second, &merchant).await.unwrap();
            assert!(version(&plain) < seen_version, "without the token the second edge answers an older version");
        }
        let on_second = lookup_at_least(&mut second, &merchant, token).await.unwrap();
        assert_eq!(version(&on_second), seen_version, "round {round}: never older than what the terminal saw");
        assert!(behind.feed.applied() < sequence, "the second edge is still behind");
    }
}

#[tokio::test]
async fn a_token_from_the_future_fails_at_once_with_its_reason_and_does_not_flood_the_core() {
    let core = Core::start(1_000).await;
    let edge = edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    let head = upsert(&core, &id(1), "Real").await;
    let bogus = head + 1_000_000;
    let ids = [KNOWN.to_string(), id(1), id(2), "898000000000007".to_string()];
    let calls = core.stats().await.get_merchant_calls;
    let started = std::time::Instant::now();
    let mut lookups = Vec::new();
    for merchant in &ids {
        for _ in 0..10 {
            let (mut client, merchant) = (client.clone(), merchant.clone());
            lookups.push(tokio::spawn(async move { lookup_at_least(&mut client, &merchant, bogus).await }));
        }
    }
    for lookup in lookups {
        let status = lookup.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason(&status), "REASON_SEQUENCE_AHEAD");
        assert!(status.message().contains(&bogus.to_string()) && status.message().contains(&head.to_string()));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "bounded by feed.fresh_wait and one core read: {elapsed:?}");
    let asked = core.stats().await.get_merchant_calls - calls;
    assert!(asked <= ids.len() as u64, "at most one core read per ID for 40 lookups, got {asked}");
    assert_eq!(edge.metrics.lookup.tokens.get(TokenOutcome::Ahead), 40);

    // Batches and streams carry the error per ID, with the same code and reason.
    let batch = BatchLookupRequest { merchant_ids: vec![KNOWN.into()], min_sequence: bogus };
    let result = client.batch_lookup(batch).await.unwrap().into_inner().results.remove(0);
    let error = result.error.unwrap();
    assert_eq!((error.code, error.reason), (Code::FailedPrecondition as i32, Reason::SequenceAhead as i32));
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let mut results = client.stream_lookup(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.unwrap();
    requests.send(LookupRequest { merchant_id: KNOWN.into(), min_sequence: bogus }).await.unwrap();
    requests.send(LookupRequest { merchant_id: id(1), min_sequence: head }).await.unwrap();
    drop(requests);
    let mut by_id = std::collections::HashMap::new();
    while let Some(result) = results.get_mut().message().await.unwrap() {
        by_id.insert(result.requested_merchant_id.clone(), result);
    }
    assert_eq!(by_id[KNOWN].reason, Reason::SequenceAhead as i32);
    assert!(by_id[&id(1)].found, "each stream request carries its own token");
}

#[tokio::test]
async fn behind_the_token_with_the_core_down_is_unavailable_never_stale_never_not_found() {
    let mut core = Core::start(1_000).await;
    let edge = edge(&core, |config| config.cache.positive_ttl = Duration::from_secs(1)).await;
    let mut client = client(&edge).await;
    let newcomer = id(9);
    assert!(lookup(&mut client, KNOWN).await.unwrap().found);
    assert!(!lookup(&mut client, UNKNOWN).await.unwrap().found);
    assert!(!lookup(&mut client, &newcomer).await.unwrap().found);
    // Reopen the edge's stream stalled, so the onboarding never reaches it; then the core goes away.
    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    core.set_faults(SetFaultsRequest { stall_new_streams: true, ..Default::default() }).await;
    wait_until("the feed reconnected", || async { edge.feed.is_connected() }).await;
    let token = upsert(&core, &newcomer, "Onboarded While Down").await;
    core.stop().await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    advance_clock(Duration::from_secs(2)).await;
    let held = edge.feed.applied();
    assert!(held < token);

    for merchant in [KNOWN, UNKNOWN, newcomer.as_str()] {
        let status = lookup_at_least(&mut client, merchant, token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{merchant}: {status:?}");
        assert_eq!(reason(&status), "REASON_CORE_UNREACHABLE");
        let message = status.message();
        assert!(message.contains(&format!("sequence {token}")) && message.contains(&format!("sequence {held}")));
    }
    assert_eq!(edge.metrics.lookup.tokens.get(TokenOutcome::Failed), 3);
    // Without the token the same edge answers from what it holds: that is what the token refused.
    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Stale);
    assert_eq!(source(&lookup(&mut client, &newcomer).await.unwrap()), Source::NegativeCache);
}

#[tokio::test]
async fn explain_shows_the_applied_sequence_against_a_token() {
    let core = Core::start(1_000).await;
    let edge = edge(&core, |_| {}).await;
    let applied = upsert(&core, &id(1), "Explained").await;
    wait_until("the notice is applied", || async { edge.feed.applied() >= applied }).await;
    let admin = edge.admin_addr.to_string();
    let report = |min_sequence| {
        let admin = admin.clone();
        async move {
            let body = merchant_edge::client::fetch_explanation(&admin, &id(1), None, min_sequence).await.unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    assert!(report(None).await["token"].is_null(), "no token asked about, none reported");
    let met = report(Some(applied)).await;
    assert_eq!(met["token"]["applied"], true, "{met}");
    assert_eq!(met["token"]["applied_sequence"], applied);
    assert_eq!(met["reason"], "REASON_UNSPECIFIED");
    let bogus = applied + 1_000;
    let ahead = report(Some(bogus)).await;
    assert_eq!(ahead["token"]["applied"], false);
    let verdict = ahead["token"]["verdict"].as_str().unwrap();
    assert!(verdict.contains("ahead of the bank core") && verdict.contains(&bogus.to_string()), "{verdict}");
    assert_eq!(ahead["reason"], "REASON_SEQUENCE_AHEAD", "what a lookup carrying the token gets");
    let (status, body) = http_get(edge.admin_addr, &format!("/debug/merchants/{}?min_sequence=soon", id(1))).await;
    assert_eq!(status, 400);
    assert!(body.contains("min_sequence must be a sequence number"), "{body}");
}

#[tokio::test]
async fn the_lookup_command_sends_its_min_sequence() {
    let core = Core::start(1_000).await;
    let edge = edge(&core, |_| {}).await;
    core.set_faults(SetFaultsRequest { notice_delay_ms: 500, ..Default::default() }).await;
    let merchant = id(5);
    let sequence = upsert(&core, &merchant, "Command Line").await;
    let run = |min_sequence: u64| {
        let server = edge.grpc_addr.to_string();
        let merchant = merchant.clone();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
            .args(["lookup", &merchant, "--server", &server, "--min-sequence", &min_sequence.to_string()])
            .output()
    };
    let fresh = run(sequence).await.unwrap();
    let line = String::from_utf8_lossy(&fresh.stdout);
    assert!(fresh.status.success() && line.contains("found  ACTIVE  \"Command Line\""), "{line}");
    let ahead = run(sequence + 1_000).await.unwrap();
    let line = String::from_utf8_lossy(&ahead.stdout);
    assert_eq!(ahead.status.code(), Some(1), "{line}");
    assert!(line.contains("FailedPrecondition") && line.contains("REASON_SEQUENCE_AHEAD"), "{line}");
}
