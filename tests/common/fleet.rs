//! The fleet as tests drive it: relays on tasks, edges following the relays' stream, churn at the
//! core with a log of what each change left, and the checks every fleet test makes (converged, every
//! answer as the churn left it, never older than what an edge had applied, the stream contiguous).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use merchant_edge::config::Config;
use merchant_edge::feed::SourceKind;
use merchant_edge::pb::core_admin_client::CoreAdminClient;
use merchant_edge::pb::{DeleteMerchantRequest, Merchant, UpsertMerchantRequest};
use merchant_edge::relay::{self, Entry, Position, Relay, RelayConfig, RelayError};
use merchant_edge::server::RunningEdge;
use tokio::task::JoinHandle;

use crate::common::{self, client, lookup, loopback, Core};
use crate::nats::{eventually, read_stream};

pub fn relay_config(core: &Core, nats_url: &str) -> RelayConfig {
    let mut config = RelayConfig::new(core.url(), nats_url);
    config.reconnect_initial_backoff = Duration::from_millis(10);
    config.reconnect_max_backoff = Duration::from_millis(200);
    config.core.stall_timeout = Duration::from_secs(2);
    config.nats.request_timeout = Duration::from_secs(1);
    config
}

/// A relay on its own task; killing (or dropping) it aborts the task, as a crash would.
pub struct RunningRelay {
    task: JoinHandle<Result<(), RelayError>>,
    pub admin_addr: std::net::SocketAddr,
    pub metrics: Arc<relay::RelayMetrics>,
}

impl RunningRelay {
    pub async fn start(config: RelayConfig) -> Self {
        let relay = Relay::new(config, loopback().await);
        let (admin_addr, metrics) = (relay.admin_addr().unwrap(), relay.metrics());
        Self { task: tokio::spawn(relay.run(std::future::pending())), admin_addr, metrics }
    }

    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An edge that follows the relays' stream at `nats_url` and asks `core` on misses and resyncs.
pub fn nats_edge_config(core: &Core, nats_url: &str) -> Config {
    let mut config = common::edge_config(&core.url());
    config.feed.source = SourceKind::Nats;
    config.feed.nats_url = nats_url.to_owned();
    config.feed.nats_request_timeout = Duration::from_secs(1);
    config.feed.stall_timeout = Duration::from_secs(2);
    config
}

pub async fn start_edges(core: &Core, nats_url: &str, count: usize) -> Vec<RunningEdge> {
    start_edges_with(core, nats_url, count, |_| {}).await
}

pub async fn start_edges_with(
    core: &Core,
    nats_url: &str,
    count: usize,
    configure: fn(&mut Config),
) -> Vec<RunningEdge> {
    let mut edges = Vec::new();
    for _ in 0..count {
        let mut config = nats_edge_config(core, nats_url);
        configure(&mut config);
        edges.push(common::start_edge(config).await);
    }
    for edge in &edges {
        eventually("the edge follows the stream", || async { edge.feed.is_connected().then_some(()) }).await;
    }
    edges
}

/// What the churn below leaves merchant `i` as: a new merchant onboarded, or a base one deleted.
pub fn churned(i: u64) -> (String, bool) {
    if i % 5 == 4 {
        (format!("898{i:012}"), false)
    } else {
        (format!("8985{i:011}"), true)
    }
}

/// Commits changes `first..first + count` at the core; returns the last sequence, and records each
/// merchant's change sequence in `log` (when given) once the core has committed it.
pub async fn churn(core_url: &str, first: u64, count: u64, log: Option<&ChangeLog>) -> u64 {
    let mut admin = CoreAdminClient::connect(core_url.to_owned()).await.expect("connect to core admin");
    let mut last = 0;
    for i in first..first + count {
        let (id, exists) = churned(i);
        let response = if exists {
            let merchant = Merchant {
                merchant_id: id.clone(),
                name: format!("Fleet Shop {i}"),
                mcc: "5411".into(),
                city: "Hangzhou".into(),
                ..Default::default()
            };
            admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await
        } else {
            admin.delete_merchant(DeleteMerchantRequest { merchant_id: id.clone() }).await
        };
        last = response.expect("the core commits the change").into_inner().sequence;
        if let Some(log) = log {
            log.lock().unwrap().insert(id, last);
        }
    }
    last
}

/// The sequence of the last change committed for each merchant the churn touched.
pub type ChangeLog = Arc<Mutex<HashMap<String, u64>>>;

/// Waits until every edge follows the stream with everything up to the core's head applied.
pub async fn wait_converged(edges: &[RunningEdge], core: &Core) {
    let head = core.stats().await.head_sequence;
    for (n, edge) in edges.iter().enumerate() {
        eventually(&format!("edge {n} applied {head}"), || async {
            (edge.feed.is_connected() && edge.feed.applied() == head).then_some(())
        })
        .await;
    }
}

/// Every edge answers every merchant of `changes` as the churn left it.
pub async fn assert_answers(edges: &[RunningEdge], changes: std::ops::Range<u64>) {
    for (n, edge) in edges.iter().enumerate() {
        let mut client = client(edge).await;
        for i in changes.clone() {
            let (id, exists) = churned(i);
            let answer = lookup(&mut client, &id).await.unwrap();
            assert_eq!(answer.found, exists, "edge {n}, merchant {id}: {answer:?}");
            if exists {
                assert_eq!(answer.merchant.unwrap().name, format!("Fleet Shop {i}"), "edge {n}");
            }
        }
    }
}

/// The stream holds `1..=head` of `incarnation`, each once, in order, and nothing else.
pub async fn assert_stream_contiguous(js: &async_nats::jetstream::Context, incarnation: &str, head: u64) {
    let positions: Vec<Position> = read_stream(js).await.iter().map(Entry::position).collect();
    let expected: Vec<Position> =
        (1..=head).map(|sequence| Position { incarnation: incarnation.to_owned(), sequence }).collect();
    assert_eq!(positions, expected);
}

/// Terminals on every edge while the core churns merchants `0..merchants` of [`churned`]: each answer
/// must be at least as new as the last change to that merchant the edge had applied when the lookup
/// began.
pub struct Checkers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<u64>>,
}

impl Checkers {
    pub fn start(edges: &Arc<Vec<RunningEdge>>, log: &ChangeLog, merchants: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for n in 0..edges.len() {
            let (edges, log, stop) = (edges.clone(), log.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let edge = &edges[n];
                let mut client = client(edge).await;
                let mut checked = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (id, _) = churned(i % merchants);
                    i += 7;
                    let applied = edge.feed.applied();
                    let vouched = log.lock().unwrap().get(&id).copied().filter(|&sequence| sequence <= applied);
                    let answer = lookup(&mut client, &id).await.expect("an answer");
                    let as_of = answer.provenance.unwrap().as_of_sequence;
                    if let Some(sequence) = vouched {
                        assert!(
                            as_of >= sequence,
                            "edge {n}: {id} answered as of {as_of}, older than applied {sequence}"
                        );
                        checked += 1;
                    }
                }
                checked
            }));
        }
        Self { stop, tasks }
    }

    /// Stops the terminals; fails unless some lookups raced applied notices (a check that checked).
    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut checked = 0;
        for task in self.tasks {
            checked += task.await.unwrap();
        }
        assert!(checked > 0, "some lookups raced applied notices");
    }
}
