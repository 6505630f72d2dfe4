//! `server.runtime`: the key cases (lookups of every kind over many connections with exact metrics,
//! health, the message-size limit, a drain with a stream open, TLS) on both runtimes; the other test
//! files run them on the default, per-core.
mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::*;
use merchant_edge::config::{Config, ServerRuntime, TlsConfig};
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{BatchLookupRequest, LookupRequest, Source};
use merchant_edge::server::Drain;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Connections opened: more than the runtimes, so the kernel spreads them over several.
const CONNECTIONS: usize = 8;

fn per_core(threads: u32) -> impl FnOnce(&mut Config) {
    move |config| {
        config.server.runtime = ServerRuntime::PerCore;
        config.server.threads = NonZeroU32::new(threads);
    }
}

fn shared(config: &mut Config) {
    config.server.runtime = ServerRuntime::Shared;
}

fn counted(metrics: &str, source: &str, result: &str) -> u64 {
    let series = format!("merchant_edge_lookups_total{{source=\"{source}\",result=\"{result}\"}} ");
    let line = metrics.lines().find(|line| line.starts_with(&series)).unwrap_or_else(|| panic!("{series}: {metrics}"));
    line[series.len()..].parse().unwrap()
}

async fn key_cases(configure: impl FnOnce(&mut Config), runtimes: usize) {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.server.shutdown_grace = Duration::from_secs(30);
    configure(&mut config);
    let edge = start_following_edge(config).await;
    assert_eq!(edge.serving_runtimes().len(), runtimes);

    let mut health = HealthClient::new(channel(edge.grpc_addr).await);
    let request = HealthCheckRequest { service: "merchant.v1.MerchantLookup".into() };
    assert_eq!(health.check(request).await.unwrap().into_inner().status, ServingStatus::Serving as i32);

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(client(&edge).await);
    }
    assert_eq!(source(&lookup(&mut clients[0], KNOWN).await.unwrap()), Source::Upstream);
    assert_eq!(source(&lookup(&mut clients[0], UNKNOWN).await.unwrap()), Source::Upstream);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), Source::Cache);
                    assert_eq!(source(&lookup(&mut client, UNKNOWN).await.unwrap()), Source::NegativeCache);
                }
                let status = lookup(&mut client, "12345").await.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument);
                let batch = BatchLookupRequest { merchant_ids: vec![KNOWN.into(); 3], min_sequence: 0 };
                let results = client.batch_lookup(batch).await.unwrap().into_inner().results;
                assert!(results.iter().all(|result| result.found));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let connections = CONNECTIONS as u64;
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    assert_eq!(counted(&metrics, "cache", "found"), connections * (10 + 3));
    assert_eq!(counted(&metrics, "negative_cache", "not_found"), connections * 10);
    assert_eq!(counted(&metrics, "none", "invalid_id"), connections);
    assert_eq!(counted(&metrics, "upstream", "found"), 1);
    assert_eq!(counted(&metrics, "upstream", "not_found"), 1);
    let hits = format!("merchant_edge_cache_hits_total{{store=\"positive\"}} {}", connections * 13);
    assert!(metrics.contains(&hits), "{metrics}");
    assert_eq!(core.stats().await.get_merchant_calls, 2);

    // Larger than server.max_request_bytes: refused before decoding.
    let status = lookup(&mut clients[1], &"8".repeat(100 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A drain ends an open stream cleanly and without waiting for the grace period.
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    requests.send(LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 }).await.unwrap();
    let outbound = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut results = clients[2].stream_lookup(outbound).await.unwrap().into_inner();
    assert!(results.message().await.unwrap().unwrap().found);
    let started = tokio::time::Instant::now();
    let drain = tokio::spawn(edge.shutdown());
    assert!(results.message().await.unwrap().is_none(), "the stream ends (OK) when the drain starts");
    assert_eq!(drain.await.unwrap().unwrap(), Drain::Clean);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(requests);
}

#[tokio::test]
async fn per_core_serves_every_kind_of_lookup_over_many_connections_and_counts_exactly() {
    key_cases(per_core(3), 3).await;
}

#[tokio::test]
async fn shared_serves_every_kind_of_lookup_over_many_connections_and_counts_exactly() {
    key_cases(shared, 0).await;
}

#[tokio::test]
async fn per_core_sockets_share_one_port_chosen_once() {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    per_core(4)(&mut config);
    let edge = merchant_edge::server::Edge::bind_to(config, loopback_addr(), loopback_addr()).await.unwrap();
    let edge = follow_clock(edge.start().await.unwrap());
    assert_eq!(edge.serving_runtimes().len(), 4);
    assert_ne!(edge.grpc_addr.port(), 0);
    // Every socket is bound to that port: connections keep being accepted whichever one the kernel picks.
    for _ in 0..16 {
        assert!(lookup(&mut client(&edge).await, KNOWN).await.unwrap().found);
    }
    // A second edge on the same (fixed) port is refused, as without SO_REUSEPORT.
    let mut second = edge_config(&core.url());
    per_core(2)(&mut second);
    let taken = merchant_edge::server::Edge::bind_to(second, edge.grpc_addr, loopback_addr()).await;
    let error = taken.err().expect("the port is taken").to_string();
    assert!(error.contains("server.listen"), "{error}");
    assert_eq!(edge.shutdown().await.unwrap(), Drain::Clean);
}

async fn tls_lookup_on(configure: impl FnOnce(&mut Config)) {
    let core = Core::start(1000).await;
    let pki = Pki::new(&format!("runtime-tls-{:?}", std::thread::current().id()));
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let mut config = edge_config(&core.url());
    config.server.tls = Some(TlsConfig { cert, key, client_ca: None });
    configure(&mut config);
    let edge = start_following_edge(config).await;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem())).domain_name("localhost");
    for _ in 0..4 {
        let channel = Channel::from_shared(format!("https://{}", edge.grpc_addr))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = MerchantLookupClient::new(channel);
        assert!(lookup(&mut client, KNOWN).await.unwrap().found);
    }
    let plaintext = MerchantLookupClient::connect(format!("http://{}", edge.grpc_addr)).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut client) => lookup(&mut client, KNOWN).await.is_err(),
    };
    assert!(refused, "a plaintext client must not get an answer from a TLS listener");
    assert_eq!(edge.shutdown().await.unwrap(), Drain::Clean);
}

#[tokio::test]
async fn tls_works_on_per_core() {
    tls_lookup_on(per_core(2)).await;
}

#[tokio::test]
async fn tls_works_on_shared() {
    tls_lookup_on(shared).await;
}
