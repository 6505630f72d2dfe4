//! A fleet: one core simulator, two relays appending its notices to a real `nats-server` with
//! JetStream, and three edges following that stream (`feed.source = "nats"`). Every edge converges,
//! never answers older than a notice it had applied, and recovers from a killed relay, a restarted
//! broker, a trimmed stream and a restarted core; the core serves one watch per relay.
mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, lookup, loopback, source, Core};
use fleet::{
    assert_answers, assert_stream_contiguous, churn, churned, nats_edge_config, relay_config, start_edges,
    start_edges_with, wait_converged, ChangeLog, Checkers, RunningRelay,
};
use merchant_edge::feed::ResyncReason;
use merchant_edge::pb::Source;
use merchant_edge::relay::{self, DEFAULT_STREAM, DEFAULT_SUBJECT};
use merchant_edge::server::RunningEdge;
use merchant_edge::sim::Simulator;
use nats::{eventually, NatsServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A TCP proxy in front of the NATS server for one edge: cutting it drops that edge's connection (and
/// refuses new ones) while the rest of the fleet keeps theirs.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (accepting, tracked) = (open.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let relayed = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(relayed.abort_handle());
            }
        });
        Self { addr, open, connections, task }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// What gRPC health says about `service` on `edge`.
async fn feed_health(edge: &RunningEdge, service: &str) -> Result<ServingStatus, tonic::Code> {
    let mut health = HealthClient::new(common::channel(edge.grpc_addr).await);
    let answer = health.check(HealthCheckRequest { service: service.into() }).await.map_err(|s| s.code())?;
    Ok(ServingStatus::try_from(answer.into_inner().status).expect("a known status"))
}

fn metric_line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines().find(|line| line.starts_with(series))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_on_two_relays_converge_never_answer_older_than_applied_and_the_core_serves_two_watches() {
    let core = Core::start(2_000).await;
    let nats = NatsServer::start().await;
    let _relays = [
        RunningRelay::start(relay_config(&core, &nats.url())).await,
        RunningRelay::start(relay_config(&core, &nats.url())).await,
    ];
    let edges = Arc::new(start_edges(&core, &nats.url(), 3).await);
    let log: ChangeLog = Arc::default();

    // Terminals on every edge while the core churns: each answer must be at least as new as the last
    // change to that merchant that the edge had applied when the lookup began.
    let checking = Checkers::start(&edges, &log, 300);
    let head = churn(&core.url(), 0, 300, Some(&log)).await;
    wait_converged(&edges, &core).await;
    checking.finish().await;
    assert_answers(&edges, 0..300).await;

    assert_eq!(core.stats().await.watch_streams_open, 2, "one watch per relay, none per edge");
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    assert_stream_contiguous(&js, &incarnation, head).await;
    for edge in edges.iter() {
        let (status, body) = common::http_get(edge.admin_addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("source nats"), "{body}");
        let (_, text) = common::http_get(edge.admin_addr, "/metrics").await;
        assert!(metric_line(&text, "merchant_edge_feed_source_info{source=\"nats\"} 1").is_some(), "{text}");
        assert_eq!(edge.metrics.feed.resyncs(ResyncReason::TooOld), 0);
        assert_eq!(feed_health(edge, "merchant.v1.ChangeFeed.nats").await, Ok(ServingStatus::Serving));
        let other = feed_health(edge, "merchant.v1.ChangeFeed.core").await;
        assert_eq!(other, Err(tonic::Code::NotFound), "the source not in use is not reported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_not_found_flips_to_found_on_every_edge_after_onboarding() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let _relay = RunningRelay::start(relay_config(&core, &nats.url())).await;
    let edges = start_edges(&core, &nats.url(), 3).await;
    let id = churned(0).0;
    for edge in &edges {
        let mut client = client(edge).await;
        assert!(!lookup(&mut client, &id).await.unwrap().found);
        let cached = lookup(&mut client, &id).await.unwrap();
        assert_eq!((cached.found, source(&cached)), (false, Source::NegativeCache));
    }
    let sequence = churn(&core.url(), 0, 1, None).await;
    for (n, edge) in edges.iter().enumerate() {
        eventually(&format!("edge {n} applied the onboarding"), || async {
            (edge.feed.applied() >= sequence).then_some(())
        })
        .await;
        let answer = lookup(&mut client(edge).await, &id).await.unwrap();
        assert!(answer.found, "edge {n} still says not found");
        assert_eq!(source(&answer), Source::Cache, "the notice installed it on edge {n}");
    }
    assert_eq!(core.stats().await.get_merchant_calls, 3, "one miss per edge, before the onboarding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_either_relay_again_and_again_loses_and_repeats_nothing_and_the_edges_converge() {
    let core = Core::start(2_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let mut relays = [
        RunningRelay::start(relay_config(&core, &nats.url())).await,
        RunningRelay::start(relay_config(&core, &nats.url())).await,
    ];
    let edges = start_edges(&core, &nats.url(), 3).await;
    let churning = {
        let url = core.url();
        tokio::spawn(async move {
            let mut last = 0;
            for first in (0..600).step_by(10) {
                last = churn(&url, first, 10, None).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        })
    };
    for round in 0..6 {
        let before = edges[0].feed.applied();
        eventually("the edges move on", || async {
            (edges[0].feed.applied() >= before + 30 || churning.is_finished()).then_some(())
        })
        .await;
        let fresh = RunningRelay::start(relay_config(&core, &nats.url())).await;
        std::mem::replace(&mut relays[round % 2], fresh).kill().await;
    }
    let head = churning.await.unwrap();
    wait_converged(&edges, &core).await;
    assert_stream_contiguous(&js, &incarnation, head).await;
    assert_answers(&edges, 0..600).await;
    for edge in &edges {
        assert_eq!(edge.metrics.feed.gaps.get(), 0, "the stream never skips");
        assert_eq!(edge.metrics.feed.notices_duplicate.get(), 0, "nor repeats");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_server_loses_nothing_and_edges_and_relays_resume() {
    let core = Core::start(1_000).await;
    let mut nats = NatsServer::start().await;
    let incarnation = core.stats().await.incarnation;
    let _relays = [
        RunningRelay::start(relay_config(&core, &nats.url())).await,
        RunningRelay::start(relay_config(&core, &nats.url())).await,
    ];
    let edges =
        start_edges_with(&core, &nats.url(), 3, |config| config.feed.negative_ttl_when_down = Duration::ZERO).await;
    churn(&core.url(), 0, 100, None).await;
    wait_converged(&edges, &core).await;

    let unknown = "898999999999999";
    for edge in &edges {
        let mut client = client(edge).await;
        lookup(&mut client, unknown).await.unwrap();
        assert_eq!(source(&lookup(&mut client, unknown).await.unwrap()), Source::NegativeCache);
    }

    nats.stop().await;
    for edge in &edges {
        eventually("the edge sees its feed down", || async { (!edge.feed.is_connected()).then_some(()) }).await;
        // A notice that would have removed it may be missed now: the "not found" goes back to the core.
        let answer = lookup(&mut client(edge).await, unknown).await.unwrap();
        assert_eq!((answer.found, source(&answer)), (false, Source::Upstream), "negatives are not trusted");
        assert_eq!(feed_health(edge, "merchant.v1.ChangeFeed.nats").await, Ok(ServingStatus::NotServing));
    }
    // Committed while the broker is down: they reach the edges through the stream once it is back.
    churn(&core.url(), 100, 50, None).await;
    nats.restart().await;
    let head = churn(&core.url(), 150, 50, None).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..200).await;
    let js = nats.jetstream().await;
    assert_stream_contiguous(&js, &incarnation, head).await;
    for edge in &edges {
        assert_eq!(edge.metrics.feed.resyncs(ResyncReason::TooOld), 0, "resumed, not reloaded");
        assert!(edge.metrics.feed.reconnects.get() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_a_disconnected_edge_makes_that_edge_resync_and_no_other() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let _relays = [
        RunningRelay::start(relay_config(&core, &nats.url())).await,
        RunningRelay::start(relay_config(&core, &nats.url())).await,
    ];
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], nats.port))).await;
    let mut edges = start_edges(&core, &nats.url(), 2).await;
    edges.push(common::start_edge(nats_edge_config(&core, &proxy.url())).await);
    let away = &edges[2];
    eventually("the proxied edge follows", || async { away.feed.is_connected().then_some(()) }).await;
    churn(&core.url(), 0, 20, None).await;
    wait_converged(&edges, &core).await;
    // What the away edge caches before it goes: merchants the churn below onboards (not found yet)
    // and base merchants it deletes (found).
    let mut client = client(away).await;
    for i in 20..80 {
        let (id, exists) = churned(i);
        assert_eq!(lookup(&mut client, &id).await.unwrap().found, !exists, "{id} before the churn");
    }

    proxy.cut();
    eventually("the away edge sees its feed down", || async { (!away.feed.is_connected()).then_some(()) }).await;
    let head = churn(&core.url(), 20, 60, None).await;
    let js = nats.jetstream().await;
    eventually("the relays appended the churn", || async {
        let stream = js.get_stream(DEFAULT_STREAM).await.ok()?;
        let last = stream.get_last_raw_message_by_subject(DEFAULT_SUBJECT).await.ok()?;
        let position = relay::decode(Some(&last.headers), &last.payload).ok()?.position();
        (position.sequence == head).then_some(())
    })
    .await;
    // The stream's limits take all but the last 5 notices: the away edge's next one is gone.
    js.get_stream(DEFAULT_STREAM).await.unwrap().purge().keep(5).await.unwrap();
    proxy.restore();

    wait_converged(&edges, &core).await;
    assert_eq!(away.metrics.feed.resyncs(ResyncReason::TooOld), 1, "the away edge resynced from the core");
    for edge in &edges[..2] {
        assert_eq!(edge.metrics.feed.resyncs(ResyncReason::TooOld), 0, "the others were not affected");
    }
    assert_answers(&edges, 0..80).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_restarted_with_a_new_incarnation_makes_relays_and_edges_resync() {
    let listener = loopback().await;
    let addr = listener.local_addr().unwrap();
    let mut core = Core::start_with(Simulator::new(1_000, 10_000), listener).await;
    let nats = NatsServer::start().await;
    let _relays = [
        RunningRelay::start(relay_config(&core, &nats.url())).await,
        RunningRelay::start(relay_config(&core, &nats.url())).await,
    ];
    let edges = start_edges(&core, &nats.url(), 3).await;
    churn(&core.url(), 0, 40, None).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..40).await;

    core.stop().await;
    let listener = eventually("the core's port is free again", || async { TcpListener::bind(addr).await.ok() }).await;
    // A new history: none of the old churn, sequences start over.
    let core = Core::start_with(Simulator::new(1_000, 10_000), listener).await;
    let head = churn(&core.url(), 100, 20, None).await;
    for (n, edge) in edges.iter().enumerate() {
        eventually(&format!("edge {n} resynced to the new history"), || async {
            let resynced = edge.metrics.feed.resyncs(ResyncReason::CoreRestarted) >= 1;
            (resynced && edge.feed.is_connected() && edge.feed.applied() == head).then_some(())
        })
        .await;
    }
    assert_answers(&edges, 100..120).await;
    for (n, edge) in edges.iter().enumerate() {
        let mut client = client(edge).await;
        // Onboarded only in the old history: a new core does not know it, and neither may the edge.
        let answer = lookup(&mut client, &churned(0).0).await.unwrap();
        assert!(!answer.found, "edge {n} kept a merchant of the old history");
    }
    eventually("the relays watch the new core", || async {
        (core.stats().await.watch_streams_open == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_resumes_exactly_after_its_applied_sequence_in_a_stream_shared_with_other_subjects() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    // An operator's stream that carries other subjects too: stream sequences no longer follow core
    // sequences one for one, so the edge must search for where to resume.
    let operator = async_nats::jetstream::stream::Config {
        name: DEFAULT_STREAM.into(),
        subjects: vec!["merchant.>".into()],
        ..Default::default()
    };
    js.create_stream(operator).await.unwrap();
    let _relay = RunningRelay::start(relay_config(&core, &nats.url())).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], nats.port))).await;
    let edges = [common::start_edge(nats_edge_config(&core, &proxy.url())).await];
    let away = &edges[0];
    eventually("the proxied edge follows", || async { away.feed.is_connected().then_some(()) }).await;
    churn(&core.url(), 0, 10, None).await;
    wait_converged(&edges, &core).await;

    proxy.cut();
    eventually("the edge sees its feed down", || async { (!away.feed.is_connected()).then_some(()) }).await;
    for batch in 0..4 {
        churn(&core.url(), 10 + batch * 10, 10, None).await;
        for n in 0..7 {
            js.publish("merchant.audit", format!("noise {batch}.{n}").into()).await.unwrap().await.unwrap();
        }
    }
    proxy.restore();
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..50).await;
    let feed = &away.metrics.feed;
    assert_eq!(feed.resyncs(ResyncReason::TooOld) + feed.resyncs(ResyncReason::PersistentGap), 0, "resumed");
    assert_eq!((feed.gaps.get(), feed.notices_duplicate.get()), (0, 0), "at exactly the next notice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_log_in_to_nats_with_a_password_file_and_never_show_the_password() {
    let user = nats::User { name: "fleet".into(), password: "edge-s3cret".into() };
    let core = Core::start(1_000).await;
    let nats = NatsServer::start_with_user(&user).await;
    let secrets = common::Scratch::new(&format!("fleet-auth-{}", nats.port));
    let password_file = secrets.write("password", &format!("{}\n", user.password));
    let mut relay = relay_config(&core, &nats.url());
    relay.nats.auth = relay::nats_auth(None, Some(user.name.clone()), Some(password_file.clone())).unwrap();
    let _relay = RunningRelay::start(relay).await;
    let mut config = nats_edge_config(&core, &nats.url());
    config.feed.nats_user = Some(user.name.clone());
    config.feed.nats_password_file = Some(password_file.clone());
    let edges = [common::start_edge(config).await];
    eventually("the edge follows", || async { edges[0].feed.is_connected().then_some(()) }).await;
    churn(&core.url(), 0, 10, None).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..10).await;
    let (_, shown) = common::http_get(edges[0].admin_addr, "/config").await;
    assert!(shown.contains(&password_file.display().to_string()), "{shown}");
    assert!(!shown.contains(&user.password), "{shown}");

    let mut config = nats_edge_config(&core, &nats.url());
    config.feed.nats_user = Some(user.name.clone());
    config.feed.nats_password_file = Some(secrets.0.join("missing"));
    let error = merchant_edge::server::Edge::with_listeners(config, loopback().await, loopback().await)
        .start()
        .await
        .err()
        .expect("an unreadable password file stops the edge at start");
    assert!(error.to_string().contains("feed.nats_password_file"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_talk_tls_to_a_nats_server_they_trust_through_the_given_ca() {
    let pki = common::Pki::new("fleet-nats-tls");
    let (cert, key) = pki.issue("nats", &["localhost", "127.0.0.1"]);
    let tls = nats::Tls { cert, key, ca: pki.scratch.0.join("ca.pem") };
    let core = Core::start(1_000).await;
    let nats = NatsServer::start_with_tls(&tls).await;
    let mut relay = relay_config(&core, &nats.url());
    relay.nats.tls_ca = Some(tls.ca.clone());
    let _relay = RunningRelay::start(relay).await;
    let mut config = nats_edge_config(&core, &nats.url());
    config.feed.nats_tls_ca = Some(tls.ca.clone());
    let edges = [common::start_edge(config).await];
    eventually("the edge follows over TLS", || async { edges[0].feed.is_connected().then_some(()) }).await;
    churn(&core.url(), 0, 10, None).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_relay_down_the_edges_fall_behind_distrust_not_found_and_catch_up_when_one_returns() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let relay = RunningRelay::start(relay_config(&core, &nats.url())).await;
    let edges =
        start_edges_with(&core, &nats.url(), 2, |config| config.feed.negative_ttl_when_down = Duration::ZERO).await;
    churn(&core.url(), 0, 5, None).await;
    wait_converged(&edges, &core).await;
    let unknown = "898999999999998";

    relay.kill().await;
    let head = churn(&core.url(), 5, 5, None).await;
    for (n, edge) in edges.iter().enumerate() {
        let mut client = client(edge).await;
        // A miss asks the core, whose answer shows it ahead of the stream: the edge knows it is behind.
        let onboarded_meanwhile = lookup(&mut client, &churned(5).0).await.unwrap();
        assert!(onboarded_meanwhile.found, "edge {n}: misses still ask the core");
        assert!(edge.feed.head() >= head && edge.feed.applied() < head, "edge {n} knows it is behind");
        lookup(&mut client, unknown).await.unwrap();
        let again = lookup(&mut client, unknown).await.unwrap();
        assert_eq!(source(&again), Source::Upstream, "edge {n}: a not-found is not cached while behind");
    }

    let _relay = RunningRelay::start(relay_config(&core, &nats.url())).await;
    wait_converged(&edges, &core).await;
    assert_answers(&edges, 0..10).await;
    for edge in &edges {
        let mut client = client(edge).await;
        lookup(&mut client, unknown).await.unwrap();
        assert_eq!(source(&lookup(&mut client, unknown).await.unwrap()), Source::NegativeCache, "trusted again");
    }
}
