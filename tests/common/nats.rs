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
    dir: PathBuf,
    config: PathBuf,
    user: Option<User>,
    tls: Option<Tls>,
    child: Option<Child>,
}

/// A loopback port nothing listens on now (the OS picks it; the server binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
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
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "merchant-edge-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("store")).unwrap();
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
        let mut server = Self { port, dir, config: config_path, user: user.cloned(), tls: tls.cloned(), child: None };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        // Over TLS by the name the test certificate is issued for.
        let host = if self.tls.is_some() { "localhost" } else { "127.0.0.1" };
        format!("nats://{host}:{}", self.port)
    }

    /// Starts the process and waits until it accepts connections.
    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {NATS_SERVER} (apt-get install nats-server, or run scripts/test.sh): {e}")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
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
