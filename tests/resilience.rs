//! Keeping terminals working through core faults while protecting the core: retries within the
//! caller's deadline, the circuit breaker, shedding beyond a bounded queue, serve-stale, per-client
//! limits and a flood of random unknown IDs. Faults come from the simulator's SetFaults.
mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::*;
use merchant_edge::config::Config;
use merchant_edge::guard::BreakerState;
use merchant_edge::guard::RefusalReason;
use merchant_edge::pb::{LookupRequest, SetFaultsRequest, Source};
use tonic::Code;

fn unknown(index: u64) -> String {
    format!("897{index:012}")
}

fn protected(core: &Core, change: impl FnOnce(&mut Config)) -> Config {
    let mut config = edge_config(&core.url());
    config.protect.max_attempts = NonZeroU32::new(3).unwrap();
    config.protect.retry_backoff = Duration::from_millis(5);
    config.protect.breaker_failures = NonZeroU32::new(5).unwrap();
    change(&mut config);
    config
}

fn errors(rate: f64) -> SetFaultsRequest {
    SetFaultsRequest { error_rate: rate, ..Default::default() }
}

fn pushback_ms(status: &tonic::Status) -> u64 {
    status.metadata().get("grpc-retry-pushback-ms").expect("a retry hint").to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_transient_core_error_is_retried_within_the_call() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(protected(&core, |_| {})).await;
    let mut client = client(&edge).await;
    // The simulator fails exactly every second call at this rate: the first call succeeds, the next
    // one fails and its retry succeeds.
    core.set_faults(errors(0.5)).await;
    assert!(lookup(&mut client, "898000000000001").await.unwrap().found);
    let retried = lookup(&mut client, "898000000000002").await.unwrap();
    assert!(retried.found);
    assert_eq!(source(&retried), Source::Upstream);
    assert_eq!(core.stats().await.get_merchant_calls, 3);
    assert_eq!(edge.metrics.guard.core_retries.get(), 1);
}

#[tokio::test]
async fn a_failing_core_opens_the_breaker_which_probes_and_closes_when_it_recovers() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        config.protect.max_attempts = NonZeroU32::new(1).unwrap();
        config.protect.breaker_failures = NonZeroU32::new(3).unwrap();
        config.protect.breaker_open_for = Duration::from_secs(5);
    });
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    core.set_faults(errors(1.0)).await;
    for index in 0..3 {
        assert_eq!(lookup(&mut client, &unknown(index)).await.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(edge.resolver.guard().breaker_state(), BreakerState::Open);
    let refused = lookup(&mut client, &unknown(3)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "never not-found because of a fault");
    assert!(refused.message().contains("circuit breaker"), "{}", refused.message());
    assert!((1..=5000).contains(&pushback_ms(&refused)));
    assert_eq!(core.stats().await.get_merchant_calls, 3, "an open breaker spares the core");
    assert_eq!(edge.metrics.guard.refusals(RefusalReason::BreakerOpen), 1);

    core.set_faults(SetFaultsRequest::default()).await;
    advance_clock(Duration::from_secs(5)).await;
    let probe = lookup(&mut client, &unknown(4)).await.unwrap();
    assert!(!probe.found && source(&probe) == Source::Upstream, "the probe reached the core");
    assert_eq!(edge.resolver.guard().breaker_state(), BreakerState::Closed);
    assert!(lookup(&mut client, "898000000000005").await.unwrap().found);
    assert_eq!(core.stats().await.get_merchant_calls, 5);
}

#[tokio::test]
async fn beyond_the_core_call_bounds_lookups_are_shed_at_once() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        config.protect.max_in_flight = NonZeroU32::new(2).unwrap();
        config.protect.max_queued = 2;
    });
    let edge = start_following_edge(config).await;
    let mut hot = client(&edge).await;
    lookup(&mut hot, KNOWN).await.unwrap();
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut waiting = Vec::new();
    for index in 0..4 {
        let mut client = client(&edge).await;
        waiting.push(tokio::spawn(async move { lookup(&mut client, &unknown(index)).await }));
    }
    wait_until("two calls run and two wait", || async { edge.resolver.guard().load() == (2, 2) }).await;
    let shed = lookup(&mut hot, &unknown(9)).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(shed.message().contains("shed"), "{}", shed.message());
    assert_eq!(shed.metadata().get("merchant-edge-reason").unwrap(), "REASON_CORE_BUSY");
    assert!(pushback_ms(&shed) > 0);
    assert_eq!(source(&lookup(&mut hot, KNOWN).await.unwrap()), Source::Cache, "hits never wait for the core");
    assert_eq!(core.stats().await.get_merchant_calls, 1 + 2);

    core.set_faults(SetFaultsRequest::default()).await;
    for lookup in waiting {
        assert!(!lookup.await.unwrap().unwrap().found, "queued lookups are answered once there is room");
    }
    assert_eq!(core.stats().await.get_merchant_calls, 1 + 4);
    assert_eq!(edge.metrics.guard.refusals(RefusalReason::QueueFull), 1);
}

#[tokio::test]
async fn a_merchant_past_its_ttl_is_served_stale_with_its_age_while_the_core_fails() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        config.cache.positive_ttl = Duration::from_secs(10);
        config.cache.serve_stale_for = Duration::from_secs(60);
        config.cache.negative_ttl = Duration::from_secs(5);
        config.feed.negative_ttl_when_down = Duration::from_secs(5);
        config.protect.breaker_failures = NonZeroU32::new(1000).unwrap();
    });
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    lookup(&mut client, KNOWN).await.unwrap();
    lookup(&mut client, UNKNOWN).await.unwrap();
    core.set_faults(errors(1.0)).await;

    advance_clock(Duration::from_secs(15)).await;
    let stale = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!(source(&stale), Source::Stale);
    assert!(stale.found && stale.merchant.unwrap().merchant_id == KNOWN);
    assert!(stale.provenance.unwrap().age_ms >= 15_000, "its age is told: {:?}", stale.provenance);
    let not_found = lookup(&mut client, UNKNOWN).await.unwrap_err();
    assert_eq!(not_found.code(), Code::Unavailable, "a not-found past its TTL is never served stale");

    advance_clock(Duration::from_secs(60)).await;
    assert_eq!(lookup(&mut client, KNOWN).await.unwrap_err().code(), Code::Unavailable, "past serve_stale_for");
    core.set_faults(SetFaultsRequest::default()).await;
    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Upstream);
}

#[tokio::test]
async fn the_callers_deadline_ends_the_core_call_and_no_retry_follows() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| config.upstream.timeout = Duration::from_secs(30));
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut request = tonic::Request::new(LookupRequest { merchant_id: UNKNOWN.into(), min_sequence: 0 });
    // The header alone (Request::set_timeout would also start a client-side timer that races the
    // server's answer).
    request.metadata_mut().insert("grpc-timeout", "300m".parse().unwrap());
    let started = std::time::Instant::now();
    let status = client.lookup(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the 30 s core timeout did not apply");
    core.set_faults(SetFaultsRequest::default()).await;
    // Anything still running for the gone caller would have retried against the recovered core.
    let after = lookup(&mut client, UNKNOWN).await.unwrap();
    assert_eq!(source(&after), Source::Upstream);
    assert_eq!(core.stats().await.get_merchant_calls, 2, "one call for the expired lookup, one for the new one");
}

#[tokio::test]
async fn a_lookup_sharing_a_core_call_is_not_cut_short_by_the_other_callers_deadline() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(protected(&core, |_| {})).await;
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut impatient = client(&edge).await;
    let mut request = tonic::Request::new(LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 });
    request.metadata_mut().insert("grpc-timeout", "500m".parse().unwrap());
    let first = tokio::spawn(async move { impatient.lookup(request).await });
    wait_until("the core holds the first call", || async { core.stats().await.get_merchant_calls == 1 }).await;
    let mut patient = client(&edge).await;
    let second = tokio::spawn(async move { lookup(&mut patient, KNOWN).await });
    assert_eq!(first.await.unwrap().unwrap_err().code(), Code::DeadlineExceeded);
    wait_until("the patient lookup asks again", || async { core.stats().await.get_merchant_calls == 2 }).await;
    core.set_faults(SetFaultsRequest::default()).await;
    assert!(second.await.unwrap().unwrap().found, "answered, not failed with the other caller's deadline");
}

#[tokio::test]
async fn one_client_over_its_limit_does_not_take_the_core_budget_from_others() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        // One a second, five saved: the test is over long before a token refills.
        config.protect.per_client_rate = NonZeroU32::new(1);
        config.protect.per_client_burst = NonZeroU32::new(5);
        config.protect.client_key = Some("x-gateway-id".into());
    });
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    lookup(&mut client, KNOWN).await.unwrap();
    let from = |gateway: &str, id: &str| {
        let mut request = tonic::Request::new(LookupRequest { merchant_id: id.into(), min_sequence: 0 });
        request.metadata_mut().insert("x-gateway-id", gateway.parse().unwrap());
        request
    };
    for index in 0..5 {
        client.lookup(from("gw-a", &unknown(index))).await.unwrap();
    }
    let limited = client.lookup(from("gw-a", &unknown(10))).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited.message().contains("gw-a") && limited.message().contains("per_client_rate"),
        "{}",
        limited.message()
    );
    assert!(client.lookup(from("gw-a", KNOWN)).await.is_ok(), "hits are not limited");
    assert!(client.lookup(from("gw-b", &unknown(11))).await.is_ok(), "another gateway keeps its budget");
    assert_eq!(edge.metrics.guard.refusals(RefusalReason::ClientLimit), 1);
}

#[tokio::test]
async fn a_flood_of_random_unknown_ids_stays_within_the_core_bounds_and_hot_merchants_still_hit() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        config.protect.max_in_flight = NonZeroU32::new(4).unwrap();
        config.protect.max_queued = 8;
        config.cache.negative_capacity = std::num::NonZeroU64::new(100).unwrap();
    });
    let edge = start_following_edge(config).await;
    let hot: Vec<String> = (0..20).map(|index| format!("898{index:012}")).collect();
    let mut client = client(&edge).await;
    for id in &hot {
        lookup(&mut client, id).await.unwrap();
    }
    core.set_faults(SetFaultsRequest { latency_ms: 5, ..Default::default() }).await;
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..24u64 {
        let mut client = client.clone();
        flood.spawn(async move {
            let (mut answered, mut shed) = (0, 0);
            for index in 0..50 {
                match lookup(&mut client, &unknown(worker * 1_000_000 + index)).await {
                    Ok(response) => {
                        assert!(!response.found);
                        answered += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        shed += 1;
                    }
                }
            }
            (answered, shed)
        });
    }
    let mut hot_lookups = 0;
    while !flood.is_empty() {
        let (in_flight, queued) = edge.resolver.guard().load();
        assert!(in_flight <= 4 && queued <= 8, "bounds held: {in_flight} in flight, {queued} queued");
        for id in &hot {
            assert_eq!(source(&lookup(&mut client, id).await.unwrap()), Source::Cache, "{id}");
            hot_lookups += 1;
        }
        if let Some(done) = flood.try_join_next() {
            done.unwrap();
        }
    }
    assert!(hot_lookups >= 20);
    assert!(
        edge.metrics.guard.refusals(RefusalReason::QueueFull) > 0,
        "24 callers against 4 + 8 places: some were shed"
    );
    assert!(core.stats().await.get_merchant_calls <= 20 + 24 * 50);
    let (positive, negative) = edge.resolver.cache().stores().entry_counts();
    assert_eq!(positive, 20, "no hot merchant was evicted");
    assert!(negative <= 100, "the negative store stayed bounded: {negative}");
}

#[tokio::test]
async fn a_merchant_looked_up_close_to_its_ttl_is_refreshed_once_in_the_background_and_never_misses() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| {
        config.cache.positive_ttl = Duration::from_secs(60);
        config.cache.refresh_ahead = Duration::from_secs(10);
    });
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    lookup(&mut client, KNOWN).await.unwrap();
    advance_clock(Duration::from_secs(30)).await;
    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Cache);
    assert_eq!(core.stats().await.get_merchant_calls, 1, "not yet within refresh_ahead of the TTL");

    advance_clock(Duration::from_secs(25)).await;
    for _ in 0..5 {
        assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Cache, "answered at once");
    }
    wait_until("the refresh reached the core", || async { core.stats().await.get_merchant_calls == 2 }).await;
    wait_until("the refresh is stored", || async {
        let answer = lookup(&mut client.clone(), KNOWN).await.unwrap();
        answer.provenance.unwrap().age_ms < 5_000
    })
    .await;
    advance_clock(Duration::from_secs(10)).await;
    let after = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!(source(&after), Source::Cache, "past the first answer's TTL, still a hit");
    assert_eq!(core.stats().await.get_merchant_calls, 2, "refreshed once, not once per hit");
    assert_eq!(edge.metrics.lookup.refreshes_ahead.get(), 1);
}

#[tokio::test]
async fn calls_beyond_max_concurrent_streams_wait_on_their_connection() {
    let core = Core::start(1000).await;
    let config = protected(&core, |config| config.server.max_concurrent_streams = NonZeroU32::new(1).unwrap());
    let edge = start_following_edge(config).await;
    let mut shared = client(&edge).await;
    lookup(&mut shared, KNOWN).await.unwrap();
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut first = shared.clone();
    let held = tokio::spawn(async move { lookup(&mut first, UNKNOWN).await });
    wait_until("the core holds the first call", || async { core.stats().await.get_merchant_calls == 2 }).await;
    let mut second = shared.clone();
    let queued = tokio::spawn(async move { lookup(&mut second, KNOWN).await });
    let mut other_connection = client(&edge).await;
    assert_eq!(
        source(&lookup(&mut other_connection, KNOWN).await.unwrap()),
        Source::Cache,
        "the limit is per connection"
    );
    assert!(!queued.is_finished(), "a second call on the full connection waits for a stream");
    core.set_faults(SetFaultsRequest::default()).await;
    assert!(!held.await.unwrap().unwrap().found);
    assert_eq!(source(&queued.await.unwrap().unwrap()), Source::Cache);
}
