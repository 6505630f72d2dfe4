//! Shared harness: a real simulator and a real edge on 127.0.0.1:0, talking gRPC over loopback.
#![allow(dead_code)] // each test binary uses its own subset

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use merchant_edge::config::{Config, UpstreamEndpoint};
use merchant_edge::pb::core_admin_client::CoreAdminClient;
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{GetStatsRequest, GetStatsResponse, LookupRequest, LookupResponse, SetFaultsRequest, Source};
use merchant_edge::server::{Edge, RunningEdge};
use merchant_edge::sim::Simulator;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const KNOWN: &str = "898000000000042";
pub const UNKNOWN: &str = "898999999999999";

/// `id` typed on a CJK keyboard: each ASCII digit as its full-width form (０-９).
pub fn full_width(id: &str) -> String {
    id.chars().map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap()).collect()
}

pub async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

/// A simulator serving on loopback.
pub struct Core {
    pub addr: SocketAddr,
    pub simulator: Simulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Core {
    pub async fn start(merchants: u64) -> Self {
        Self::start_with(Simulator::new(merchants, 10_000), loopback().await).await
    }

    pub async fn start_with(simulator: Simulator, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = simulator.clone();
        let task = tokio::spawn(async move {
            serving.serve(listener, async { drop(stopped.await) }).await.expect("core-sim serves");
        });
        Self { addr, simulator, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn admin(&self) -> CoreAdminClient<Channel> {
        CoreAdminClient::connect(self.url()).await.expect("connect to core admin")
    }

    pub async fn stats(&self) -> GetStatsResponse {
        self.admin().await.get_stats(GetStatsRequest {}).await.unwrap().into_inner()
    }

    pub async fn set_faults(&self, faults: SetFaultsRequest) {
        self.admin().await.set_faults(faults).await.unwrap();
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// An edge configuration pointing at `core_url`, starting cold (so lookups exercise the miss path),
/// with fast feed reconnects.
pub fn edge_config(core_url: &str) -> Config {
    let mut config = Config::default();
    config.upstream.endpoint = UpstreamEndpoint::Url(core_url.to_owned());
    config.feed.warm_start = false;
    config.feed.reconnect_initial_backoff = Duration::from_millis(10);
    config.feed.reconnect_max_backoff = Duration::from_millis(200);
    // One attempt per lookup and a breaker that does not open, so that tests of other behaviour see
    // exactly the core calls they make; tests/resilience.rs sets these itself.
    config.protect.max_attempts = NonZeroU32::new(1).unwrap();
    config.protect.breaker_failures = NonZeroU32::new(u32::MAX).unwrap();
    // No background refreshes either (tests with short TTLs would see extra core calls).
    config.cache.refresh_ahead = Duration::ZERO;
    config
}

pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts an edge on 127.0.0.1:0 with as many gRPC sockets as its config serves from (one per core
/// by default), so tests run on the serving runtime the config asks for.
pub async fn start_edge(config: Config) -> RunningEdge {
    let edge = Edge::bind_to(config, loopback_addr(), loopback_addr()).await.expect("edge binds");
    follow_clock(edge.start().await.expect("edge starts"))
}

thread_local! {
    /// The serving runtimes of the edges this test started (each test runs on its own thread).
    static SERVING_RUNTIMES: std::cell::RefCell<Vec<tokio::runtime::Handle>> = Default::default();
}

/// Has [`advance_clock`] move the clocks of `edge`'s serving runtimes too: each tokio runtime keeps
/// its own clock, and per-core runtimes read theirs on the hit path.
pub fn follow_clock(edge: RunningEdge) -> RunningEdge {
    SERVING_RUNTIMES.with(|runtimes| runtimes.borrow_mut().extend(edge.serving_runtimes().iter().cloned()));
    edge
}

/// Starts an edge and waits until its feed has synced with the core and is following the stream
/// (until then nothing it learns is cached: it could not tell what the answers are as of).
pub async fn start_following_edge(config: Config) -> RunningEdge {
    let edge = start_edge(config).await;
    wait_until("the feed is connected", || async { edge.feed.is_connected() }).await;
    edge
}

pub async fn client(edge: &RunningEdge) -> MerchantLookupClient<Channel> {
    MerchantLookupClient::connect(format!("http://{}", edge.grpc_addr)).await.expect("connect to edge")
}

/// Which store answered.
pub fn source(response: &LookupResponse) -> Source {
    Source::try_from(response.provenance.unwrap().source).unwrap()
}

pub async fn lookup(client: &mut MerchantLookupClient<Channel>, id: &str) -> Result<LookupResponse, tonic::Status> {
    client.lookup(LookupRequest { merchant_id: id.to_owned(), min_sequence: 0 }).await.map(|r| r.into_inner())
}

/// Moves tokio's clock forward without sleeping: the test's runtime (where the edge's background work
/// runs) and the serving runtimes of the edges it started. Each clock is paused only for the jump, so
/// the loopback I/O of the rest of the test runs on normal time.
pub async fn advance_clock(by: Duration) {
    async fn jump(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    }
    jump(by).await;
    let runtimes = SERVING_RUNTIMES.with(|runtimes| runtimes.borrow().clone());
    for runtime in runtimes {
        // A runtime of an edge already stopped cancels the task at once; nothing to move there.
        let _ = runtime.spawn(jump(by)).await;
    }
}

/// Polls `condition` until it holds; fails the test after 10 s of real time.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `attempt` until it yields a value; fails the test after 10 s of real time.
pub async fn eventually<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(10), what, attempt).await
}

/// Polls `attempt` until it yields a value; fails the test after `patience` of real time.
pub async fn eventually_within<T, F, Fut>(patience: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A plain HTTP/1.1 GET against the admin endpoint: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A plain HTTP/1.1 request without a body: (status code, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.1 request without a body, with `Authorization: Bearer {token}` when a token is
/// given: (status code, response head, body).
pub async fn http_request_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A connected channel to a loopback server, for clients generated without a `connect` helper.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("merchant-edge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority and the certificates it issues, written as PEM files.
pub struct Pki {
    pub scratch: Scratch,
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let scratch = Scratch::new(name);
        scratch.write("ca.pem", &ca.pem());
        Self { scratch, ca, issuer: rcgen::Issuer::new(params, ca_key) }
    }

    /// Issues a certificate for `names` and writes `{file}.pem` and `{file}.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (
            self.scratch.write(&format!("{file}.pem"), &certificate.pem()),
            self.scratch.write(&format!("{file}.key"), &key.serialize_pem()),
        )
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}
