//! A real `nats-server` with JetStream for tests: a free loopback port, a store directory of its own,
//! and stop/restart on the same port and store (what a broker restart looks like to the relays).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Longest any condition in the fleet and relay tests may take (a broker restart included).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `attempt` until it yields a value; fails the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::common::eventually_within(PATIENCE, what, attempt).await
}

/// Where Debian's package (and `scripts/test.sh`) installs the server.
const NATS_SERVER: &str = "nats-server";

/// A user the server accepts when started with [`NatsServer::start_with_user`].
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub password: String,
}

/// PEM files for a server that speaks TLS only.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`, for clients.
    pub ca: PathBuf,
}

pub struct NatsServer {
    pub port: u16,
    /// Its `server_name`.
    pub name: String,
    dir: PathBuf,
    config: PathBuf,
    /// The values a shipped config (`deploy/nats/`) reads from the environment.
    env: Vec<(String, String)>,
    user: Option<User>,
    tls: Option<Tls>,
    child: Option<Child>,
}

/// A directory of its own for one server's store and log.
fn server_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "merchant-edge-nats-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store")).unwrap();
    dir
}

/// A config file shipped under `deploy/nats/`.
pub fn deploy_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/nats").join(name)
}

/// A loopback port nothing listens on now, below the kernel's ephemeral range: a port the OS picked
/// from that range could be given to some outgoing connection (a route, a client) before the server
/// binds it, or while a killed server is down, and the server would not start.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000u32, ephemeral_low.saturating_sub(10_000).max(1000));
    // Test binaries run at once: each starts somewhere else in the range.
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// A server that admits only `user` (JetStream on, in the default account).
    pub async fn start_with_user(user: &User) -> Self {
        Self::start_with(Some(user), None).await
    }

    /// A server that speaks TLS only.
    pub async fn start_with_tls(tls: &Tls) -> Self {
        Self::start_with(None, Some(tls)).await
    }

    async fn start_with(user: Option<&User>, tls: Option<&Tls>) -> Self {
        let dir = server_dir();
        let port = free_port();
        let mut config = format!(
            "listen: 127.0.0.1:{port}\nserver_name: test_{port}\njetstream {{\n  store_dir: {:?}\n}}\n",
            dir.join("store").display().to_string()
        );
        if let Some(user) = user {
            config.push_str(&format!(
                "authorization {{\n  users: [ {{ user: {:?}, password: {:?} }} ]\n}}\n",
                user.name, user.password
            ));
        }
        if let Some(tls) = tls {
            config.push_str(&format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
                tls.cert.display().to_string(),
                tls.key.display().to_string()
            ));
        }
        let config_path = dir.join("nats.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut server = Self {
            port,
            name: format!("test_{port}"),
            dir,
            config: config_path,
            env: Vec::new(),
            user: user.cloned(),
            tls: tls.cloned(),
            child: None,
        };
        server.spawn().await;
        server
    }

    /// A server run from a shipped config file, its per-server values in the environment
    /// (`NATS_LISTEN` and `NATS_STORE_DIR` are filled in here). Not started yet.
    fn from_file(config: PathBuf, name: &str, port: u16, mut env: Vec<(String, String)>) -> Self {
        let dir = server_dir();
        env.push(("NATS_SERVER_NAME".into(), name.to_owned()));
        env.push(("NATS_LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push(("NATS_MONITOR_PORT".into(), free_port().to_string()));
        env.push(("NATS_STORE_DIR".into(), dir.join("store").display().to_string()));
        Self { port, name: name.to_owned(), dir, config, env, user: None, tls: None, child: None }
    }

    pub fn url(&self) -> String {
        // Over TLS by the name the test certificate is issued for.
        let host = if self.tls.is_some() { "localhost" } else { "127.0.0.1" };
        format!("nats://{host}:{}", self.port)
    }

    /// Starts the process and waits until it accepts connections.
    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the process (appending to its log, so a restart keeps what came before).
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.config)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {NATS_SERVER} (apt-get install nats-server, or run scripts/test.sh): {e}")
            });
        self.child = Some(child);
    }

    /// Waits until the server answers JetStream requests (in a cluster: once its peers elected a
    /// meta leader).
    async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        // JetStream answers only once the server has opened its store, a moment after the port.
        loop {
            let last_error = match self.options().connect(self.url()).await {
                // A raw request: async-nats' typed account info does not parse a 2.9 server's answer.
                Ok(client) => match client.request("$JS.API.INFO", "".into()).await {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(std::time::Instant::now() < deadline, "nats-server did not start ({last_error}): {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How a client logs in to this server: as its user, over TLS when it speaks TLS.
    fn options(&self) -> async_nats::ConnectOptions {
        let options = match &self.user {
            Some(user) => async_nats::ConnectOptions::with_user_and_password(user.name.clone(), user.password.clone()),
            None => async_nats::ConnectOptions::new(),
        };
        match &self.tls {
            Some(tls) => options.add_root_certificates(tls.ca.clone()).require_tls(true),
            None => options,
        }
    }

    /// A client of the server (as its user, over TLS, as the server requires).
    pub async fn client(&self) -> async_nats::Client {
        self.options().connect(self.url()).await.expect("connect to nats-server")
    }

    /// A JetStream context over a new [`Self::client`].
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Stops the server as an operator would (SIGTERM; SIGKILL if it has not exited within 10 s) and
    /// waits until it has exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
                return;
            }
        }
        child.kill().await.expect("kill nats-server");
    }

    /// Stops and starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// `kill -9`: no goodbye to clients or peers, whatever was not flushed is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9 nats-server");
        }
    }

    /// Starts a killed or stopped server again, same port, same store.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The origin region as `deploy/nats/cluster.conf` runs it: three JetStream servers with routes
/// between them, each from that very file, on free loopback ports.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// Where other regions' leaf nodes connect, per node.
    pub leaf_ports: Vec<u16>,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let leaf_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let mut env: Vec<(String, String)> = route_ports
                .iter()
                .enumerate()
                .map(|(peer, port)| (format!("NATS_ROUTE_{}", peer + 1), format!("nats-route://127.0.0.1:{port}")))
                .collect();
            env.push(("NATS_CLUSTER_LISTEN".into(), format!("127.0.0.1:{}", route_ports[n])));
            env.push(("NATS_LEAFNODE_LISTEN".into(), format!("127.0.0.1:{}", leaf_ports[n])));
            nodes.push(NatsServer::from_file(deploy_file("cluster.conf"), &format!("nats-{}", n + 1), ports[n], env));
        }
        // A lone server of three elects no leader: start all, then wait for each.
        for node in &mut nodes {
            node.launch();
        }
        for node in &nodes {
            node.wait_ready().await;
        }
        Self { nodes, leaf_ports }
    }

    /// Every server, comma-separated, as edges (`feed.nats_url`) and relays (`--nats`) take it.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The node named `name`.
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        self.nodes.iter_mut().find(|node| node.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The server leading `stream`'s Raft group, asked of any running node.
    pub async fn stream_leader(&self, stream: &str) -> String {
        let running: Vec<&NatsServer> = self.nodes.iter().filter(|node| node.is_running()).collect();
        eventually(&format!("stream {stream} has a leader"), || async {
            for node in &running {
                let Ok(client) = node.options().connect(node.url()).await else { continue };
                let Ok(reply) = client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()).await else {
                    continue;
                };
                let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                if let Some(leader) = info["cluster"]["leader"].as_str().filter(|leader| !leader.is_empty()) {
                    return Some(leader.to_owned());
                }
            }
            None
        })
        .await
    }

    /// Region B as `deploy/nats/region-b.conf` runs it: one JetStream server of its own domain, a
    /// leaf node of every origin server. Its mirror is not created yet.
    pub async fn start_region_b(&self) -> NatsServer {
        let env = self
            .leaf_ports
            .iter()
            .enumerate()
            .map(|(n, port)| (format!("NATS_ORIGIN_LEAF_{}", n + 1), format!("nats-leaf://127.0.0.1:{port}")))
            .collect();
        let mut server = NatsServer::from_file(deploy_file("region-b.conf"), "nats-b-1", free_port(), env);
        server.spawn().await;
        server
    }
}

/// Creates a stream from a JSON file as `nats stream add --config FILE` sends it (the JetStream API's
/// own format), on `server`; returns the stream's name.
pub async fn create_stream_from_file(server: &NatsServer, file: &std::path::Path) -> String {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let name = config["name"].as_str().expect("the stream config names the stream").to_owned();
    let client = server.client().await;
    let reply = client
        .request(format!("$JS.API.STREAM.CREATE.{name}"), serde_json::to_vec(&config).unwrap().into())
        .await
        .expect("the server answers STREAM.CREATE");
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(answer.get("error").is_none(), "creating stream {name} from {}: {answer}", file.display());
    name
}

/// Every message of the stream, in stream order, read with an ordered consumer.
pub async fn read_stream(js: &async_nats::jetstream::Context) -> Vec<merchant_edge::relay::Entry> {
    let mut stream = js.get_stream(merchant_edge::relay::DEFAULT_STREAM).await.expect("a relay created the stream");
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            filter_subject: merchant_edge::relay::DEFAULT_SUBJECT.into(),
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.unwrap();
    let mut entries = Vec::with_capacity(total);
    while entries.len() < total {
        let message = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut messages))
            .await
            .expect("the consumer delivers every stored message")
            .expect("the consumer is open")
            .expect("a message");
        let message = &message.message;
        entries
            .push(merchant_edge::relay::decode(message.headers.as_ref(), &message.payload).expect("a relay message"));
    }
    entries
}
