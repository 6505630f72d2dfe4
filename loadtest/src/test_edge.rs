//! An edge and its core simulator in-process, for the tests that run real load against them.
use std::time::Duration;

use merchant_edge::config::{Config, UpstreamEndpoint};
use merchant_edge::server::{Edge, RunningEdge};
use merchant_edge::sim::Simulator;
use tokio::net::TcpListener;

pub struct TestEdge {
    pub edge: RunningEdge,
    /// The simulator's gRPC URL, for CoreAdmin (onboarding churn).
    pub core_url: String,
}

/// Starts a simulator with 1,000 merchants and an edge on it, and returns once the edge is ready and
/// follows the core's change feed, so onboardings during a run reach it.
pub async fn start() -> TestEdge {
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
    TestEdge { edge, core_url }
}
