//! A real PostgreSQL cluster for tests (Debian's `postgresql` package, which `scripts/test.sh`
//! installs): `initdb` in a scratch directory owned by the unprivileged `postgres` user (PostgreSQL
//! refuses to run as root, and CI runs as root), `wal_level = logical`, a free loopback port; and
//! `merchant-edge core-pg` processes over it.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest any condition over the database may take (a PostgreSQL restart included).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The schema every cluster gets, exactly as operators run it.
pub const SCHEMA: &str = include_str!("../../deploy/postgres/schema.sql");

/// The binaries of the newest PostgreSQL Debian installed.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test.sh installs the postgresql package)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| bin.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    versions.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// Who the cluster runs as: the `postgres` user when the tests run as root, else the caller.
fn cluster_owner() -> Option<(u32, u32)> {
    let uid = std::process::Command::new("id").arg("-u").output().expect("run id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd.lines().find(|line| line.starts_with("postgres:")).expect("a postgres user (from the package)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_owner(command: &mut std::process::Command) -> &mut std::process::Command {
    if let Some((uid, gid)) = cluster_owner() {
        command.uid(uid).gid(gid);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// One PostgreSQL cluster, stopped (immediately) and removed when dropped.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// A new cluster with deploy/postgres/schema.sql applied to database `postgres`.
    pub async fn start() -> Self {
        let postgres = Self::start_empty().await;
        postgres.client().await.batch_execute(SCHEMA).await.expect("deploy/postgres/schema.sql applies");
        postgres
    }

    /// A new cluster with nothing in it.
    pub async fn start_empty() -> Self {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("merchant-edge-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = cluster_owner() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let postgres = Self { port: free_port(), dir, bin: bin_dir() };
        postgres.initdb();
        postgres.start_server();
        postgres
    }

    fn initdb(&self) {
        let output = as_owner(std::process::Command::new(self.bin.join("initdb")).current_dir(&self.dir))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "--encoding=UTF8", "--locale=C", "-D"])
            .arg(self.dir.join("data"))
            .output()
            .expect("run initdb");
        assert!(output.status.success(), "initdb: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        as_owner(std::process::Command::new(self.bin.join("pg_ctl")).current_dir(&self.dir))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=10 \
             -c max_wal_senders=10 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let output = self.pg_ctl(&["-w", "-t", "60", "-l", log.to_str().unwrap(), "-o", &options, "start"]);
        assert!(output.status.success(), "pg_ctl start: {}\n{}", String::from_utf8_lossy(&output.stdout), self.log());
    }

    /// Stops the server as a crash would (no shutdown checkpoint).
    pub fn crash(&self) {
        let output = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(output.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Another database in its place: the cluster crashes and a new one (new system identifier,
    /// schema.sql applied) starts on the same port, as a restore or a failover looks to clients.
    pub async fn replace(&self) {
        self.crash();
        std::fs::remove_dir_all(self.dir.join("data")).unwrap();
        self.initdb();
        self.start_server();
        self.client().await.batch_execute(SCHEMA).await.expect("deploy/postgres/schema.sql applies");
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        self.start_server();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect to the test cluster");
        tokio::spawn(async move { drop(connection.await) });
        client
    }

    /// Runs SQL (several statements allowed) on a fresh connection.
    pub async fn execute(&self, sql: &str) {
        self.client().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The slots that exist, by name.
    pub async fn slots(&self) -> Vec<String> {
        let rows = self
            .client()
            .await
            .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
            .await
            .unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `INSERT` of merchants `first..first + count` (IDs 898 followed by 12 digits), in one statement.
pub fn insert_merchants(first: u64, count: u64) -> String {
    format!(
        "INSERT INTO merchants (merchant_id, name, mcc, city, status) \
         SELECT '898' || lpad(n::text, 12, '0'), 'Shop ' || n, '5411', 'Lisbon', 'ACTIVE' \
         FROM generate_series({first}, {}) AS n",
        first + count - 1
    )
}

/// The merchant ID `n` of [`insert_merchants`].
pub fn merchant_id(n: u64) -> String {
    format!("898{n:012}")
}

/// A `merchant-edge core-pg` process.
pub struct CorePg {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    config: PathBuf,
}

impl CorePg {
    /// Starts core-pg over `url` with `extra` TOML appended to a loopback config, and waits until it
    /// listens (not until it is ready: tests of a database that is down need it unready).
    pub async fn start(url: &str, extra: &str) -> Self {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let config = std::env::temp_dir().join(format!("merchant-edge-core-pg-{}-{n}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}"),
        )
        .unwrap();
        Self::spawn(&config, url).await
    }

    async fn spawn(config: &Path, url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
            .args(["core-pg", "--database-url", url, "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start merchant-edge core-pg");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("core-pg prints where it listens")
            .unwrap()
            .expect("core-pg started");
        // "core-pg listening for gRPC on 127.0.0.1:PORT (admin http://127.0.0.1:PORT), serving ..."
        let words: Vec<&str> = banner.split_whitespace().collect();
        let grpc = words[words.iter().position(|w| *w == "on").unwrap() + 1].parse().unwrap();
        let admin = words[words.iter().position(|w| *w == "(admin").unwrap() + 1]
            .trim_start_matches("http://")
            .trim_end_matches("),")
            .parse()
            .unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self { grpc, admin, child, config: config.to_owned() }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn is_ready(&self) -> bool {
        crate::common::http_get(self.admin, "/readyz").await.0 == 200
    }

    pub async fn wait_ready(&self) {
        crate::common::eventually_within(PATIENCE, "core-pg is ready", || async {
            self.is_ready().await.then_some(())
        })
        .await;
    }

    /// One sample of `/metrics`, e.g. `metric("merchant_edge_core_pg_head_sequence")`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = crate::common::http_get(self.admin, "/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .parse()
            .unwrap()
    }

    /// `kill -9`: no shutdown of any kind.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("core-pg exits on SIGTERM").unwrap()
    }

    /// Another process with the same config and database (after a kill or a stop).
    pub async fn start_again(&self, url: &str) -> Self {
        Self::spawn(&self.config, url).await
    }
}

impl Drop for CorePg {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
