//! The fleet on NATS as operators deploy it, from the very files in `deploy/nats/`: a 3-node
//! JetStream cluster (the stream on three replicas) that loses its stream leader and then an edge's own
//! server to `kill -9` during churn, and a second region whose edges follow a mirror over a leaf node.
mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;

use std::sync::Arc;

use common::{client, lookup, Core};
use fleet::{
    assert_answers, assert_stream_contiguous, churn, churned, relay_config, start_edges, start_edges_with,
    wait_converged, ChangeLog, Checkers, RunningRelay,
};
use merchant_edge::relay::DEFAULT_STREAM;
use merchant_edge::server::RunningEdge;
use nats::{create_stream_from_file, deploy_file, eventually, NatsCluster};

/// The mirror `deploy/nats/region-b-mirror.json` creates.
const MIRROR: &str = "MERCHANT_CHANGES_MIRROR";

/// Relays on every server of the cluster, creating the stream with three replicas.
async fn cluster_relays(core: &Core, cluster: &NatsCluster) -> [RunningRelay; 2] {
    let mut config = relay_config(core, &cluster.urls());
    config.limits.replicas = 3;
    [RunningRelay::start(config.clone()).await, RunningRelay::start(config).await]
}

/// Changes `first..first + count` at the core on a task of their own (while a server is killed).
fn churn_in_background(core: &Core, first: u64, count: u64, log: &ChangeLog) -> tokio::task::JoinHandle<u64> {
    let (url, log) = (core.url(), log.clone());
    tokio::spawn(async move { churn(&url, first, count, Some(&log)).await })
}

/// The server `edge` is connected to, once it is connected to one.
async fn connected_server(edge: &RunningEdge) -> String {
    eventually("the edge names its NATS server", || async {
        edge.feed.nats().and_then(|link| link.server()).map(|server| server.name)
    })
    .await
}

/// What every edge answers for merchants `0..count` of the churn, and its applied sequence.
async fn answers(edges: &[RunningEdge], count: u64) -> Vec<(u64, Vec<(bool, String)>)> {
    let mut all = Vec::new();
    for edge in edges {
        let mut client = client(edge).await;
        let mut seen = Vec::new();
        for i in 0..count {
            let answer = lookup(&mut client, &churned(i).0).await.unwrap();
            seen.push((answer.found, answer.merchant.map(|merchant| merchant.name).unwrap_or_default()));
        }
        all.push((edge.feed.applied(), seen));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_stream_leader_and_then_of_an_edges_server_loses_and_repeats_nothing() {
    let core = Core::start(2_000).await;
    let mut cluster = NatsCluster::start().await;
    let relays = cluster_relays(&core, &cluster).await;
    let edges = Arc::new(start_edges(&core, &cluster.urls(), 3).await);
    let js = cluster.nodes[0].jetstream().await;
    let replicas = js.get_stream(DEFAULT_STREAM).await.unwrap().cached_info().config.num_replicas;
    assert_eq!(replicas, 3, "--replicas 3 made the stream");

    let log: ChangeLog = Arc::default();
    let checking = Checkers::start(&edges, &log, 600);
    churn(&core.url(), 0, 100, Some(&log)).await;

    // The stream's Raft leader dies mid-churn; the other two elect another and take the appends.
    let leader = cluster.stream_leader(DEFAULT_STREAM).await;
    let churning = churn_in_background(&core, 100, 200, &log);
    cluster.node(&leader).kill().await;
    churning.await.unwrap();
    wait_converged(&edges, &core).await;
    assert_ne!(cluster.stream_leader(DEFAULT_STREAM).await, leader, "another server leads the stream");
    let before = answers(&edges, 300).await;
    cluster.node(&leader).start_again().await;
    wait_converged(&edges, &core).await;
    assert_eq!(answers(&edges, 300).await, before, "the returning server changes nothing an edge answers");

    // Then the server the first edge is connected to: it fails over to another and resumes.
    let server = connected_server(&edges[0]).await;
    let reconnects = edges[0].feed.nats().unwrap().reconnects();
    let churning = churn_in_background(&core, 300, 300, &log);
    cluster.node(&server).kill().await;
    churning.await.unwrap();
    wait_converged(&edges, &core).await;
    let now_on = connected_server(&edges[0]).await;
    assert_ne!(now_on, server, "the edge moved to another server");
    assert!(edges[0].feed.nats().unwrap().reconnects() > reconnects);
    let before = answers(&edges, 600).await;
    cluster.node(&server).start_again().await;
    wait_converged(&edges, &core).await;
    assert_eq!(answers(&edges, 600).await, before, "the returning server changes nothing an edge answers");

    checking.finish().await;
    assert_answers(&edges, 0..600).await;
    let stats = core.stats().await;
    assert_eq!(stats.watch_streams_open, 2, "one watch per relay, none per edge, after every failover");
    // Each notice once, in core order, in the stream; each applied once by every edge (none resynced).
    assert_stream_contiguous(&js, &stats.incarnation, stats.head_sequence).await;
    for (n, edge) in edges.iter().enumerate() {
        assert_eq!(edge.metrics.feed.notices_applied.get(), stats.head_sequence, "edge {n} applied each once");
        let (status, body) = common::http_get(edge.admin_addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("nats: connected to nats-"), "/readyz names the server: {body}");
        let (_, text) = common::http_get(edge.admin_addr, "/metrics").await;
        let server = connected_server(edge).await;
        let series = format!("merchant_edge_feed_nats_server_info{{server_name=\"{server}\",");
        assert!(text.contains(&series), "{series} in {text}");
        assert!(text.contains("merchant_edge_feed_nats_connected 1"), "{text}");
    }
    let (_, text) = common::http_get(edges[0].admin_addr, "/metrics").await;
    assert!(!text.contains("merchant_edge_feed_nats_reconnects_total 0\n"), "edge 0 counted its failover: {text}");
    for relay in &relays {
        let (status, body) = common::http_get(relay.admin_addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("NATS connected to nats-"), "{body}");
        assert!(relay.metrics.encode().contains("merchant_edge_relay_nats_server_info{server_name=\"nats-"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_of_a_second_region_follow_a_mirror_over_a_leaf_node_and_find_what_the_core_onboarded() {
    let core = Core::start(1_000).await;
    let cluster = NatsCluster::start().await;
    let _relays = cluster_relays(&core, &cluster).await;
    let origin = start_edges(&core, &cluster.urls(), 1).await;
    let region_b = cluster.start_region_b().await;
    assert_eq!(create_stream_from_file(&region_b, &deploy_file("region-b-mirror.json")).await, MIRROR);
    let edges = start_edges_with(&core, &region_b.url(), 2, |config| config.feed.nats_stream = MIRROR.into()).await;

    // A "not found" cached in region B before the onboarding must not outlive it.
    let (onboarded, exists) = churned(0);
    assert!(exists);
    for edge in &edges {
        assert!(!lookup(&mut client(edge).await, &onboarded).await.unwrap().found);
    }
    churn(&core.url(), 0, 200, None).await;
    wait_converged(&origin, &core).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..200).await;
    assert_answers(&origin, 0..200).await;

    // One copy per link: the origin's stream serves the mirror's one consumer, not one per edge.
    let origin_js = cluster.nodes[0].jetstream().await;
    let mut stream = origin_js.get_stream(DEFAULT_STREAM).await.unwrap();
    let origin_consumers = stream.info().await.unwrap().state.consumer_count;
    let mut mirror = region_b.jetstream().await.get_stream(MIRROR).await.unwrap();
    let mirror_consumers = mirror.info().await.unwrap().state.consumer_count;
    assert!(mirror_consumers >= edges.len(), "region B's edges read the mirror: {mirror_consumers}");
    assert!(origin_consumers <= 2, "the origin serves the origin edge and the mirror: {origin_consumers}");
}
