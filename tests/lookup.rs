//! The foundation: lookups over real gRPC against the simulator, answers with their provenance,
//! separate positive and negative stores, coalescing, ID validation and core failures.
mod common;

use std::time::Duration;

use common::*;
use merchant_edge::pb::{BatchLookupRequest, LookupRequest, MerchantStatus, SetFaultsRequest, Source};
use merchant_edge::sim::dataset::synthetic_merchant;
use tonic::Code;

#[tokio::test]
async fn miss_fills_from_the_core_then_hits() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;

    let first = lookup(&mut client, KNOWN).await.unwrap();
    assert!(first.found);
    assert_eq!(first.merchant.as_ref().unwrap(), &synthetic_merchant(42));
    assert_eq!(source(&first), Source::Upstream);
    assert_eq!(first.provenance.unwrap().age_ms, 0);

    let second = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!(second.merchant, first.merchant);
    assert_eq!(source(&second), Source::Cache);
    assert_eq!(core.stats().await.get_merchant_calls, 1, "the hit did not reach the core");
}

#[tokio::test]
async fn unknown_ids_are_answered_not_found_then_from_the_negative_store() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;

    let first = lookup(&mut client, UNKNOWN).await.unwrap();
    assert!(!first.found && first.merchant.is_none());
    assert_eq!(source(&first), Source::Upstream);
    let second = lookup(&mut client, UNKNOWN).await.unwrap();
    assert!(!second.found);
    assert_eq!(source(&second), Source::NegativeCache);
    assert_eq!(core.stats().await.get_merchant_calls, 1);
}

#[tokio::test]
async fn the_negative_ttl_is_shorter_and_separate() {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.cache.negative_ttl = Duration::from_secs(5);
    config.cache.positive_ttl = Duration::from_secs(60);
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    lookup(&mut client, UNKNOWN).await.unwrap();
    lookup(&mut client, KNOWN).await.unwrap();

    advance_clock(Duration::from_secs(6)).await;
    let unknown = lookup(&mut client, UNKNOWN).await.unwrap();
    assert_eq!(source(&unknown), Source::Upstream, "the not-found expired after negative_ttl");
    let known = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!(source(&known), Source::Cache, "the merchant is still within positive_ttl");
    assert!(known.provenance.unwrap().age_ms >= 6000, "age counts from when it was learned");

    advance_clock(Duration::from_secs(60)).await;
    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Upstream);
    assert_eq!(core.stats().await.get_merchant_calls, 4);
}

#[tokio::test]
async fn merchants_that_are_not_active_are_found_with_their_status() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    for (id, status) in [
        ("898000000000097", MerchantStatus::PendingReview),
        ("898000000000098", MerchantStatus::Suspended),
        ("898000000000099", MerchantStatus::Closed),
        ("898000000000100", MerchantStatus::Active),
    ] {
        let response = lookup(&mut client, id).await.unwrap();
        assert!(response.found, "{id} exists, whatever its status");
        assert_eq!(response.merchant.unwrap().status, status as i32, "{id}");
    }
}

#[tokio::test]
async fn batch_lookup_answers_each_id_in_request_order() {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.server.max_batch_size = 6.try_into().unwrap();
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    lookup(&mut client, "898000000000007").await.unwrap();

    let spelled_full_width = format!(" {}", full_width(KNOWN));
    let ids = ["898000000000007", UNKNOWN, "12345", "898000000000097", &spelled_full_width, "898000000000007"];
    let request = BatchLookupRequest { merchant_ids: ids.iter().map(|s| s.to_string()).collect(), min_sequence: 0 };
    let results = client.batch_lookup(request).await.unwrap().into_inner().results;
    assert_eq!(results.len(), ids.len());
    for (result, id) in results.iter().zip(ids) {
        assert_eq!(result.requested_merchant_id, id);
    }
    let sources: Vec<i32> = results.iter().map(|r| r.provenance.map_or(0, |p| p.source)).collect();
    assert_eq!(
        sources,
        [Source::Cache, Source::Upstream, Source::Unspecified, Source::Upstream, Source::Upstream, Source::Cache]
            .map(|s| s as i32)
    );
    assert!(results[0].found && results[0].merchant.as_ref().unwrap().merchant_id == "898000000000007");
    assert!(!results[1].found && results[1].error.is_none());
    let error = results[2].error.as_ref().expect("the malformed ID has its own error");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(error.message.contains("rule `length`"), "{}", error.message);
    assert_eq!(results[3].merchant.as_ref().unwrap().status, MerchantStatus::PendingReview as i32);
    assert_eq!(results[4].merchant.as_ref().unwrap().merchant_id, KNOWN, "normalised in a batch too");

    let too_many = BatchLookupRequest { merchant_ids: vec![KNOWN.to_string(); 7], min_sequence: 0 };
    let status = client.batch_lookup(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 6"), "{}", status.message());
}

#[tokio::test]
async fn concurrent_misses_for_one_id_make_one_core_call() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let client = client(&edge).await;
    // Hold the core's answer until all 64 lookups are waiting for it.
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let lookups: Vec<_> = (0..64)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { lookup(&mut client, UNKNOWN).await })
        })
        .collect();
    wait_until("63 lookups wait for the first one's core call", || async {
        edge.metrics.lookup.coalesced_waits.get() == 63
    })
    .await;
    assert_eq!(core.stats().await.get_merchant_calls, 1);
    core.set_faults(SetFaultsRequest::default()).await;
    for handle in lookups {
        let response = handle.await.unwrap().unwrap();
        assert!(!response.found);
        assert_eq!(source(&response), Source::Upstream);
    }
    assert_eq!(core.stats().await.get_merchant_calls, 1);
}

#[tokio::test]
async fn malformed_ids_are_refused_with_the_rule_and_never_reach_the_core() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    let ten_kb = "8".repeat(10 * 1024);
    for (id, rule) in [
        ("", "empty"),
        ("   ", "empty"),
        ("89800000000004", "rule `length`"),
        ("8980000000000420", "rule `length`"),
        ("89800000000O042", "rule `charset`"),
        ("898-000-000-042", "rule `charset`"),
        (ten_kb.as_str(), "rule `length`"),
    ] {
        let status = lookup(&mut client, id).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id:.20}");
        assert!(status.message().contains(rule), "{id:.20}: {}", status.message());
        assert!(status.message().len() < 200, "the message does not echo the input");
    }
    // Larger than server.max_request_bytes: refused by the message-size limit before decoding.
    let huge = "8".repeat(100 * 1024);
    let status = lookup(&mut client, &huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());
    assert_eq!(core.stats().await.get_merchant_calls, 0);
}

#[tokio::test]
async fn ids_are_normalised_before_lookup() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    for id in [" 898000000000042", "898000000000042\t\n", &full_width(KNOWN), "\u{3000}898000000000042"] {
        let response = lookup(&mut client, id).await.unwrap();
        assert_eq!(response.merchant.unwrap().merchant_id, KNOWN, "{id:?}");
    }
    assert_eq!(core.stats().await.get_merchant_calls, 1, "all spellings share one cache entry");
}

#[tokio::test]
async fn a_failing_core_is_unavailable_never_not_found_and_nothing_is_cached() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    core.set_faults(SetFaultsRequest { error_rate: 1.0, ..Default::default() }).await;
    for id in [KNOWN, UNKNOWN, UNKNOWN] {
        let status = lookup(&mut client, id).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{id}");
        assert!(status.message().contains("bank core"), "{}", status.message());
    }
    core.set_faults(SetFaultsRequest::default()).await;
    let known = lookup(&mut client, KNOWN).await.unwrap();
    let unknown = lookup(&mut client, UNKNOWN).await.unwrap();
    assert!(known.found && !unknown.found);
    assert_eq!((source(&known), source(&unknown)), (Source::Upstream, Source::Upstream), "failures were not cached");
}

#[tokio::test]
async fn a_core_that_is_down_gives_unavailable_and_is_used_again_when_back() {
    let mut core = Core::start(1000).await;
    let addr = core.addr;
    let mut config = edge_config(&core.url());
    config.upstream.timeout = Duration::from_secs(1);
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    core.stop().await;

    let status = lookup(&mut client, KNOWN).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let status = lookup(&mut client, UNKNOWN).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "a dead core is not 'not found'");

    let _core = Core::start_with(
        merchant_edge::sim::Simulator::new(1000, 100),
        tokio::net::TcpListener::bind(addr).await.unwrap(),
    )
    .await;
    let unknown = eventually("the edge reconnects to the restarted core", || {
        let mut client = client.clone();
        async move { lookup(&mut client, UNKNOWN).await.ok() }
    })
    .await;
    assert!(!unknown.found);
    assert_eq!(source(&unknown), Source::Upstream);
    assert!(lookup(&mut client, KNOWN).await.unwrap().found);
}

#[tokio::test]
async fn the_embedded_default_serves_on_its_own() {
    let mut config = merchant_edge::config::Config::default();
    config.upstream.embedded_merchants = 1000;
    let edge = start_edge(config).await;
    let mut client = client(&edge).await;
    wait_until("the embedded default is warm and following changes", || async {
        edge.readiness.is_ready() && edge.feed.is_connected()
    })
    .await;
    let (status, body) = http_get(edge.admin_addr, "/readyz").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("ready\nfeed: connected, applied sequence 0"), "{body}");
    let known = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!(source(&known), Source::Cache, "warm start loaded the snapshot: no miss");
    assert!(!lookup(&mut client, "898000000001000").await.unwrap().found, "index 1000 is beyond 1000 merchants");
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    for line in [
        r#"merchant_edge_lookups_total{source="cache",result="found"} 1"#,
        r#"merchant_edge_lookups_total{source="upstream",result="not_found"} 1"#,
        r#"merchant_edge_cache_entries{store="positive"} 1000"#,
        "merchant_edge_feed_connected 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    edge.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_request_field_is_a_plain_string() {
    // Guards the wire contract that ghz configs and terminals rely on.
    let request = LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 };
    assert_eq!(prost::Message::encode_to_vec(&request), [&[0x0a, 15][..], KNOWN.as_bytes()].concat());
}

/// Sends `ids` on one `StreamLookup` call, keeping the request side open until `close` resolves.
async fn open_stream(
    edge: &merchant_edge::server::RunningEdge,
    ids: Vec<&str>,
) -> (tokio::sync::mpsc::Sender<LookupRequest>, tonic::Streaming<merchant_edge::pb::BatchLookupResult>) {
    let (requests, receiver) = tokio::sync::mpsc::channel(16);
    for id in ids {
        requests.send(LookupRequest { merchant_id: id.into(), min_sequence: 0 }).await.unwrap();
    }
    let outbound = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let results = client(edge).await.stream_lookup(outbound).await.unwrap().into_inner();
    (requests, results)
}

#[tokio::test]
async fn a_lookup_stream_answers_each_id_once_and_ends_after_the_client_half_closes() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    lookup(&mut client(&edge).await, KNOWN).await.unwrap();
    let (requests, mut results) = open_stream(&edge, vec![KNOWN, "12345", UNKNOWN, " 898000000000043 "]).await;
    drop(requests);
    let mut answered = Vec::new();
    while let Some(result) = results.message().await.unwrap() {
        answered.push(result);
    }
    assert_eq!(answered.len(), 4, "{answered:?}");
    let by_id = |id: &str| answered.iter().find(|result| result.requested_merchant_id == id).unwrap();
    assert_eq!(by_id(KNOWN).merchant.as_ref().unwrap(), &synthetic_merchant(42));
    assert_eq!(Source::try_from(by_id(KNOWN).provenance.unwrap().source).unwrap(), Source::Cache);
    assert_eq!(by_id("12345").error.as_ref().unwrap().code, Code::InvalidArgument as i32);
    assert!(!by_id(UNKNOWN).found && by_id(UNKNOWN).error.is_none(), "the core's authoritative not-found");
    assert_eq!(by_id(" 898000000000043 ").merchant.as_ref().unwrap(), &synthetic_merchant(43));
    assert_eq!(core.stats().await.get_merchant_calls, 3, "the hit did not reach the core");
}

#[tokio::test]
async fn a_lookup_waiting_for_the_core_does_not_hold_up_the_stream() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    lookup(&mut client(&edge).await, KNOWN).await.unwrap();
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let (requests, mut results) = open_stream(&edge, vec!["898000000000043", KNOWN]).await;
    let first = results.message().await.unwrap().unwrap();
    assert_eq!(first.requested_merchant_id, KNOWN, "answered from memory while the core holds the other");
    requests.send(LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 }).await.unwrap();
    assert_eq!(results.message().await.unwrap().unwrap().requested_merchant_id, KNOWN);
    core.set_faults(SetFaultsRequest::default()).await;
    let late = results.message().await.unwrap().unwrap();
    assert_eq!(late.merchant.unwrap(), synthetic_merchant(43));
    drop(requests);
    assert!(results.message().await.unwrap().is_none());
}

#[tokio::test]
async fn a_drain_ends_open_lookup_streams_cleanly() {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.server.shutdown_grace = Duration::from_secs(30);
    let edge = start_following_edge(config).await;
    let (requests, mut results) = open_stream(&edge, vec![KNOWN]).await;
    assert!(results.message().await.unwrap().unwrap().found);
    let started = tokio::time::Instant::now();
    let drain = tokio::spawn(edge.shutdown());
    assert!(results.message().await.unwrap().is_none(), "the stream ends (OK) when the drain starts");
    assert_eq!(drain.await.unwrap().unwrap(), merchant_edge::server::Drain::Clean);
    assert!(started.elapsed() < Duration::from_secs(10), "without waiting for the grace period");
    drop(requests);
}
