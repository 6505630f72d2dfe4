//! Change notices: the edge never serves an answer older than a notice it has applied, and recovers
//! from every way the stream can fail.
mod common;

use std::time::Duration;

use common::*;
use merchant_edge::feed::ResyncReason;
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{
    DeleteMerchantRequest, LookupResponse, Merchant, MerchantStatus, SetFaultsRequest, Source, UpsertMerchantRequest,
};
use merchant_edge::server::RunningEdge;
use merchant_edge::sim::Simulator;

const NEW: &str = "898000500000001";

fn version(response: &LookupResponse) -> Option<u64> {
    response.merchant.as_ref().filter(|_| response.found).map(|m| m.version)
}

async fn upsert(core: &Core, id: &str, name: &str) -> u64 {
    let merchant = Merchant {
        merchant_id: id.into(),
        name: name.into(),
        mcc: "5411".into(),
        city: "Shanghai".into(),
        status: MerchantStatus::Active as i32,
        ..Default::default()
    };
    core.admin()
        .await
        .upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) })
        .await
        .unwrap()
        .into_inner()
        .sequence
}

async fn delete(core: &Core, id: &str) -> u64 {
    core.admin()
        .await
        .delete_merchant(DeleteMerchantRequest { merchant_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .sequence
}

async fn following_edge(core: &Core, configure: impl FnOnce(&mut merchant_edge::config::Config)) -> RunningEdge {
    let mut config = edge_config(&core.url());
    configure(&mut config);
    start_following_edge(config).await
}

async fn wait_applied(edge: &RunningEdge, sequence: u64) {
    wait_until(&format!("sequence {sequence} is applied"), || async { edge.feed.applied() >= sequence }).await;
}

async fn wait_caught_up(edge: &RunningEdge, core: &Core) {
    let head = core.stats().await.head_sequence;
    wait_until(&format!("the feed is connected and caught up to {head}"), || async {
        edge.feed.is_connected() && edge.feed.applied() == head
    })
    .await;
}

/// The race of the design notes, made deterministic: a lookup of `id` misses and the core reads its
/// answer, which is held on the way back; meanwhile `change` commits at the core and its notice is
/// applied; then the late answer arrives. Returns the late answer and the change's sequence.
async fn hold_a_fill_across(
    core: &Core,
    edge: &RunningEdge,
    id: &str,
    change: impl std::future::Future<Output = u64>,
) -> (LookupResponse, u64) {
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut racing = client(edge).await;
    let id = id.to_owned();
    let in_flight = tokio::spawn(async move { lookup(&mut racing, &id).await });
    wait_until("the core has read the merchant", || async { core.stats().await.get_merchant_calls == 1 }).await;
    let sequence = change.await;
    wait_applied(edge, sequence).await;
    core.set_faults(SetFaultsRequest::default()).await;
    (in_flight.await.unwrap().unwrap(), sequence)
}

#[tokio::test]
async fn a_not_found_in_flight_cannot_outlive_the_onboarding_notice() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let (late, sequence) = hold_a_fill_across(&core, &edge, NEW, upsert(&core, NEW, "Just Onboarded")).await;
    assert!(!late.found, "the lookup that overlapped the onboarding may see the older answer");

    let after = lookup(&mut client(&edge).await, NEW).await.unwrap();
    assert!(after.found, "a lookup after the notice must never be answered from the stale not-found");
    assert_eq!(source(&after), Source::Cache, "the notice installed the merchant");
    assert_eq!(after.provenance.unwrap().as_of_sequence, sequence);
    assert_eq!(edge.metrics.cache.fills_fenced.get(), 1);
    assert_eq!(core.stats().await.get_merchant_calls, 1);
}

#[tokio::test]
async fn a_found_in_flight_cannot_outlive_the_delete_notice() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let (late, sequence) = hold_a_fill_across(&core, &edge, KNOWN, delete(&core, KNOWN)).await;
    assert!(late.found);

    let after = lookup(&mut client(&edge).await, KNOWN).await.unwrap();
    assert!(!after.found, "the deleted merchant must not come back from the late fill");
    assert_eq!(source(&after), Source::NegativeCache);
    assert_eq!(after.provenance.unwrap().as_of_sequence, sequence);
    assert_eq!(edge.metrics.cache.fills_fenced.get(), 1);
}

#[tokio::test]
async fn notices_install_change_and_remove_entries() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    assert!(lookup(&mut client, KNOWN).await.unwrap().found);
    assert!(!lookup(&mut client, NEW).await.unwrap().found);
    assert_eq!(source(&lookup(&mut client, NEW).await.unwrap()), Source::NegativeCache);

    let renamed = upsert(&core, KNOWN, "Renamed").await;
    let onboarded = upsert(&core, NEW, "Onboarded").await;
    wait_applied(&edge, onboarded).await;
    let known = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!((known.merchant.as_ref().unwrap().name.as_str(), version(&known)), ("Renamed", Some(2)));
    assert_eq!((source(&known), known.provenance.unwrap().as_of_sequence), (Source::Cache, renamed));
    let new = lookup(&mut client, NEW).await.unwrap();
    assert!(new.found, "the negative entry was deleted by the notice, not left to expire");
    assert_eq!(source(&new), Source::Cache);

    let deleted = delete(&core, KNOWN).await;
    wait_applied(&edge, deleted).await;
    assert!(!lookup(&mut client, KNOWN).await.unwrap().found);
    assert_eq!(core.stats().await.get_merchant_calls, 2, "every answer after the notices came from memory");
    assert!(edge.metrics.feed.notices_applied.get() >= 3);
}

#[tokio::test]
async fn duplicate_notices_are_dropped() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    core.set_faults(SetFaultsRequest { duplicate_notices: true, ..Default::default() }).await;
    upsert(&core, KNOWN, "First").await;
    upsert(&core, KNOWN, "Second").await;
    let last = upsert(&core, NEW, "New").await;
    wait_applied(&edge, last).await;
    wait_until("the repeats arrived", || async { edge.metrics.feed.notices_duplicate.get() == 3 }).await;
    assert_eq!(edge.metrics.feed.notices_applied.get(), 3);
    assert_eq!(edge.metrics.feed.gaps.get(), 0);
    let known = lookup(&mut client, KNOWN).await.unwrap();
    assert_eq!((known.merchant.as_ref().unwrap().name.as_str(), source(&known)), ("Second", Source::Cache));
}

#[tokio::test]
async fn a_gap_reopens_the_stream_from_the_applied_sequence() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    core.set_faults(SetFaultsRequest { skip_notices: 2, ..Default::default() }).await;
    upsert(&core, "898000000000001", "Skipped one").await;
    upsert(&core, "898000000000002", "Skipped two").await;
    let last = upsert(&core, "898000000000003", "Reveals the gap").await;
    wait_applied(&edge, last).await;
    assert!(edge.metrics.feed.gaps.get() >= 1);
    assert!(edge.metrics.feed.reconnects.get() >= 1);
    for (id, name) in [("898000000000001", "Skipped one"), ("898000000000002", "Skipped two")] {
        let response = lookup(&mut client, id).await.unwrap();
        assert_eq!((response.merchant.as_ref().unwrap().name.as_str(), source(&response)), (name, Source::Cache));
    }
}

#[tokio::test]
async fn a_stall_at_the_tail_is_noticed_through_reads_and_the_backlog_replays() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |config| config.feed.stall_timeout = Duration::from_secs(10)).await;
    let mut client = client(&edge).await;
    // Nothing follows the skipped notices, so only a read can show that the core is ahead; the
    // backlog then replays slowly, and the stream reopened for it must be left to finish.
    core.set_faults(SetFaultsRequest { skip_notices: 50, notice_delay_ms: 2, ..Default::default() }).await;
    let mut hidden = 0;
    for i in 0..50 {
        hidden = upsert(&core, &format!("8980008000000{i:02}"), "Never announced").await;
    }
    let other = lookup(&mut client, "898000000000500").await.unwrap();
    assert_eq!(other.provenance.unwrap().as_of_sequence, hidden);
    assert_eq!(edge.feed.lag(tokio::time::Instant::now()).notices, 50);
    advance_clock(Duration::from_secs(11)).await;
    wait_applied(&edge, hidden).await;
    assert_eq!(edge.metrics.feed.reconnects.get(), 1, "one reopen for the stall, none while replaying");
    assert_eq!(source(&lookup(&mut client, "898000800000049").await.unwrap()), Source::Cache);
}

#[tokio::test]
async fn while_the_stream_is_down_negatives_are_distrusted_and_changes_arrive_on_return() {
    let core = Core::start(1000).await;
    let edge = following_edge(&core, |config| {
        config.cache.negative_ttl = Duration::from_secs(30);
        config.feed.negative_ttl_when_down = Duration::from_secs(2);
    })
    .await;
    let mut client = client(&edge).await;
    let learned_while_up = "898000500000002";
    assert!(!lookup(&mut client, learned_while_up).await.unwrap().found);

    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    let (_, ready) = http_get(edge.admin_addr, "/readyz").await;
    assert!(ready.contains("feed: DOWN"), "{ready}");
    let onboarded = upsert(&core, NEW, "Onboarded during the outage").await;
    let learned_while_down = "898000500000003";
    assert!(!lookup(&mut client, learned_while_down).await.unwrap().found);
    assert_eq!(source(&lookup(&mut client, learned_while_down).await.unwrap()), Source::NegativeCache);
    assert_eq!(source(&lookup(&mut client, learned_while_up).await.unwrap()), Source::NegativeCache);

    advance_clock(Duration::from_secs(2)).await;
    for id in [learned_while_down, learned_while_up] {
        let response = lookup(&mut client, id).await.unwrap();
        assert_eq!(source(&response), Source::Upstream, "{id}: not trusted 2s into the outage");
    }
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    assert!(metrics.contains("merchant_edge_feed_connected 0"), "{metrics}");
    assert!(metrics.contains("merchant_edge_feed_lag_notices 1"), "the reads showed the core one ahead");

    core.set_faults(SetFaultsRequest::default()).await;
    wait_applied(&edge, onboarded).await;
    let new = lookup(&mut client, NEW).await.unwrap();
    assert_eq!((new.found, source(&new)), (true, Source::Cache));
}

#[tokio::test]
async fn too_old_resyncs_from_the_snapshot() {
    let core = Core::start_with(Simulator::new(1000, 5), loopback().await).await;
    let edge = following_edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    let (changed, deleted, kept) = ("898000000000001", "898000000000002", "898000000000003");
    let (onboarded, still_unknown) = (NEW, "898000500000009");
    for id in [changed, deleted, kept, onboarded, still_unknown] {
        lookup(&mut client, id).await.unwrap();
    }

    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    upsert(&core, changed, "Changed during the outage").await;
    delete(&core, deleted).await;
    upsert(&core, onboarded, "Onboarded during the outage").await;
    for i in 0..7 {
        upsert(&core, &format!("8980006000000{i:02}"), "Filler").await;
    }
    core.set_faults(SetFaultsRequest::default()).await;
    wait_until("a too-old resync", || async { edge.metrics.feed.resyncs(ResyncReason::TooOld) == 1 }).await;
    wait_caught_up(&edge, &core).await;

    let response = lookup(&mut client, changed).await.unwrap();
    assert_eq!(response.merchant.unwrap().name, "Changed during the outage");
    assert_eq!(source(&lookup(&mut client, changed).await.unwrap()), Source::Cache, "re-validated in place");
    assert!(!lookup(&mut client, deleted).await.unwrap().found, "dropped: not in the snapshot");
    assert!(lookup(&mut client, onboarded).await.unwrap().found, "the negative entry did not survive");
    let unknown = lookup(&mut client, still_unknown).await.unwrap();
    assert_eq!((unknown.found, source(&unknown)), (false, Source::Upstream), "every negative was dropped");
    assert_eq!(source(&lookup(&mut client, kept).await.unwrap()), Source::Cache);
}

#[tokio::test]
async fn a_fill_from_before_a_resync_cannot_install_after_it() {
    let core = Core::start_with(Simulator::new(1000, 5), loopback().await).await;
    let edge = following_edge(&core, |config| config.upstream.timeout = Duration::from_secs(120)).await;
    // The core reads the merchant now and answers in 60 s (the latency is fixed when the call starts).
    core.set_faults(SetFaultsRequest { latency_ms: 60_000, ..Default::default() }).await;
    let mut racing = client(&edge).await;
    let in_flight = tokio::spawn(async move { lookup(&mut racing, KNOWN).await });
    wait_until("the core has read the merchant", || async { core.stats().await.get_merchant_calls == 1 }).await;

    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    delete(&core, KNOWN).await;
    for i in 0..7 {
        upsert(&core, &format!("8980006000000{i:02}"), "Filler").await;
    }
    core.set_faults(SetFaultsRequest::default()).await;
    wait_until("a too-old resync", || async { edge.metrics.feed.resyncs(ResyncReason::TooOld) == 1 }).await;
    wait_caught_up(&edge, &core).await;

    advance_clock(Duration::from_secs(60)).await;
    assert!(in_flight.await.unwrap().unwrap().found, "the late answer still reaches its own caller");
    let after = lookup(&mut client(&edge).await, KNOWN).await.unwrap();
    assert!(!after.found, "the fill from before the resync did not resurrect the deleted merchant");
}

/// Restarts the core on the same address with a new history holding `changes_after_restart` changes.
async fn restart_core(core: &mut Core, changes_after_restart: usize) -> Core {
    core.stop().await;
    let listener = tokio::net::TcpListener::bind(core.addr).await.unwrap();
    let restarted = Core::start_with(Simulator::new(1000, 100), listener).await;
    upsert(&restarted, NEW, "Exists in the new history").await;
    for i in 1..changes_after_restart {
        upsert(&restarted, &format!("8980007000000{i:02}"), "Filler").await;
    }
    restarted
}

async fn core_restart_is_detected(changes_before: usize, changes_after: usize) {
    let mut core = Core::start(1000).await;
    let edge = following_edge(&core, |_| {}).await;
    let mut client = client(&edge).await;
    let renamed = "898000000000005";
    let mut last = 0;
    for _ in 0..changes_before {
        last = upsert(&core, renamed, "Only in the old history").await;
    }
    wait_applied(&edge, last).await;
    assert!(!lookup(&mut client, NEW).await.unwrap().found);
    assert_eq!(lookup(&mut client, renamed).await.unwrap().merchant.unwrap().name, "Only in the old history");

    let restarted = restart_core(&mut core, changes_after).await;
    wait_until("a resync for the restarted core", || async {
        edge.metrics.feed.resyncs(ResyncReason::CoreRestarted) == 1
    })
    .await;
    wait_caught_up(&edge, &restarted).await;
    assert!(lookup(&mut client, NEW).await.unwrap().found, "the stale negative is gone");
    let response = lookup(&mut client, renamed).await.unwrap();
    assert_eq!(response.merchant.unwrap().version, 1, "nothing of the old history is served");
}

#[tokio::test]
async fn a_core_restart_whose_head_went_backwards_resyncs() {
    core_restart_is_detected(3, 1).await;
}

#[tokio::test]
async fn a_core_restart_with_a_new_incarnation_resyncs() {
    core_restart_is_detected(1, 3).await;
}

#[tokio::test]
async fn warm_start_loads_the_snapshot_before_reporting_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let core = Core::start(2500).await;
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut config = edge_config(&core.url());
    config.feed.warm_start = true;
    config.feed.snapshot_page_size = 1000.try_into().unwrap();
    let edge = start_edge(config).await;
    wait_until("the snapshot is being read", || async { core.stats().await.list_merchants_calls >= 1 }).await;
    let mut health = HealthClient::new(channel(edge.grpc_addr).await);
    let check = HealthCheckRequest { service: "merchant.v1.MerchantLookup".into() };
    assert_eq!(health.check(check.clone()).await.unwrap().into_inner().status, ServingStatus::NotServing as i32);
    let (status, body) = http_get(edge.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");

    core.set_faults(SetFaultsRequest::default()).await;
    wait_until("ready", || async { edge.readiness.is_ready() }).await;
    assert_eq!(health.check(check).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    assert_eq!(core.stats().await.list_merchants_calls, 3);
    let mut client = client(&edge).await;
    for id in [KNOWN, "898000000002499"] {
        assert_eq!(source(&lookup(&mut client, id).await.unwrap()), Source::Cache, "{id}");
    }
    assert_eq!(core.stats().await.get_merchant_calls, 0, "a warm edge does not stampede the core");
}

/// The state of one merchant after a change at some sequence: its version, or `None` when it does not exist.
type Timeline = Vec<(u64, Option<u64>)>;

/// Many tasks look up (6 readers) and onboard, change and delete (3 writers) merchants while the core's
/// latency and notice delay change at random; every answer is checked against the core's history: it must be a state the
/// merchant had at or after the sequence the edge had applied when the lookup began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_older_than_an_applied_notice() {
    const BASE: u64 = 100;
    const IDS: u64 = 140; // 100 synthetic merchants and 40 that exist only once onboarded
    const WRITES: usize = 300;
    const READERS: usize = 6;
    const READS_PER_READER: usize = 400;

    let core = Core::start_with(Simulator::new(BASE, 100_000), loopback().await).await;
    // Short TTLs keep fills racing the notices all through the run.
    let edge = following_edge(&core, |config| {
        config.cache.positive_ttl = Duration::from_millis(20);
        config.cache.negative_ttl = Duration::from_millis(20);
        config.feed.negative_ttl_when_down = Duration::from_millis(20);
    })
    .await;
    fn id(index: u64) -> String {
        format!("898{index:012}")
    }

    const WRITERS: u64 = 3;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut admin = core.admin().await;
        writers.push(tokio::spawn(async move {
            let mut random = fastrand::Rng::with_seed(7 + writer);
            for step in 0..WRITES / WRITERS as usize {
                if writer == 0 && step % 25 == 0 {
                    let faults = SetFaultsRequest {
                        latency_ms: random.u32(0..15),
                        notice_delay_ms: random.u32(0..3),
                        ..Default::default()
                    };
                    admin.set_faults(faults).await.unwrap();
                }
                let merchant_id = id(random.u64(0..IDS));
                if random.u8(0..4) == 0 {
                    let _ = admin.delete_merchant(DeleteMerchantRequest { merchant_id }).await;
                } else {
                    let merchant =
                        Merchant { merchant_id, name: format!("writer {writer} step {step}"), ..Default::default() };
                    admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await.unwrap();
                }
            }
        }));
    }
    let readers: Vec<_> = (0..READERS as u64)
        .map(|reader| {
            let (feed, address) = (edge.feed.clone(), edge.grpc_addr);
            tokio::spawn(async move {
                let mut client = MerchantLookupClient::new(channel(address).await);
                let mut random = fastrand::Rng::with_seed(100 + reader);
                let mut seen = Vec::with_capacity(READS_PER_READER);
                for _ in 0..READS_PER_READER {
                    let index = random.u64(0..IDS);
                    let applied_before = feed.applied();
                    let response = lookup(&mut client, &id(index)).await.unwrap();
                    seen.push((index, applied_before, version(&response), source(&response)));
                }
                seen
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    core.set_faults(SetFaultsRequest::default()).await;
    let mut answers = Vec::new();
    for reader in readers {
        answers.extend(reader.await.unwrap());
    }

    let mut timelines: Vec<Timeline> = (0..IDS).map(|index| vec![(0, (index < BASE).then_some(1))]).collect();
    for notice in core.simulator.ledger().changes_after(0, usize::MAX).unwrap() {
        let index = notice.merchant_id[3..].parse::<u64>().unwrap();
        timelines[index as usize].push((notice.sequence, notice.merchant.map(|m| m.version)));
    }
    let mut by_source = std::collections::BTreeMap::new();
    for (index, applied_before, answered, source) in &answers {
        let timeline = &timelines[*index as usize];
        let current_then = timeline.iter().rev().find(|(sequence, _)| sequence <= applied_before).unwrap().1;
        let allowed: Vec<Option<u64>> = std::iter::once(current_then)
            .chain(timeline.iter().filter(|(sequence, _)| sequence > applied_before).map(|(_, state)| *state))
            .collect();
        assert!(
            allowed.contains(answered),
            "merchant {index}: answered {answered:?} from {source:?}, but with sequence {applied_before} applied \
             only {allowed:?} were possible (history {timeline:?})"
        );
        *by_source.entry(format!("{source:?}")).or_insert(0) += 1;
    }
    let changes = timelines.iter().map(|t| t.len() - 1).sum::<usize>();
    println!("checked {} lookups against {changes} changes: {by_source:?}", answers.len());
    assert_eq!(answers.len(), READERS * READS_PER_READER);
    assert!(changes >= WRITES * 2 / 3, "most writes were committed changes");
}
