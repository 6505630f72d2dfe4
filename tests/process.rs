//! The real binary under signals: SIGTERM drains (bounded by the grace period even with streams held
//! open) and SIGHUP reloads, including the log level; and an edge whose core process is killed and
//! started again.
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `merchant-edge serve` on loopback ports chosen by the OS.
struct Served {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

fn config_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("merchant-edge-process-{name}-{}.toml", std::process::id()))
}

/// Loopback ports chosen by the OS, a short grace period, a small embedded core; `server` adds keys to
/// `[server]`, `rest` appends tables.
fn config_text(server: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"500ms\"\n{server}[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nembedded_merchants = 1000\n[reload]\nwatch_file = false\n{rest}"
    )
}

impl Served {
    async fn start(name: &str, config_text: String) -> Self {
        let config = config_path(name);
        std::fs::write(&config, config_text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start merchant-edge");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the edge prints where it listens")
            .unwrap()
            .unwrap();
        // "merchant-edge listening for gRPC on 127.0.0.1:PORT (admin http://127.0.0.1:PORT)"
        let words: Vec<&str> = banner.split_whitespace().collect();
        let grpc = words[words.iter().position(|w| *w == "on").unwrap() + 1].parse().unwrap();
        let admin = words.last().unwrap().trim_start_matches("http://").trim_end_matches(')').parse().unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let served = Self { child, grpc, admin, config };
        wait_until("the edge is ready", || async { http_get(served.admin, "/readyz").await.0 == 200 }).await;
        served
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most 10 s: far beyond any grace period used here).
    async fn exit(mut self) -> (ExitStatus, String) {
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            pipe.read_to_string(&mut stderr).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("the edge exits after SIGTERM");
        let _ = std::fs::remove_file(&self.config);
        (status, stderr)
    }
}

/// The kernel's view of whether the process may use transparent huge pages.
fn thp_enabled(served: &Served) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id().unwrap())).unwrap();
    let line = status.lines().find(|line| line.starts_with("THP_enabled:")).expect("the kernel reports THP_enabled");
    line["THP_enabled:".len()..].trim().to_owned()
}

#[tokio::test]
async fn transparent_huge_pages_are_off_unless_configured() {
    let default = Served::start("thp-default", config_text("", "")).await;
    assert_eq!(thp_enabled(&default), "0", "off by default");
    let allowed = Served::start("thp-allowed", config_text("transparent_huge_pages = true\n", "")).await;
    assert_eq!(thp_enabled(&allowed), "1", "the system's setting when allowed");
    for served in [default, allowed] {
        served.signal("-TERM");
        assert_eq!(served.exit().await.0.code(), Some(0));
    }
}

#[tokio::test]
async fn sigterm_drains_cleanly_and_exits_zero() {
    let served = Served::start("clean", config_text("", "")).await;
    let mut client = merchant_edge::pb::merchant_lookup_client::MerchantLookupClient::new(channel(served.grpc).await);
    assert!(lookup(&mut client, KNOWN).await.unwrap().found);
    drop(client);
    served.signal("-TERM");
    let (status, stderr) = served.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("drain clean"), "{stderr}");
}

#[tokio::test]
async fn sigterm_with_a_stream_held_open_exits_within_the_grace_period() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{server_reflection_request::MessageRequest, ServerReflectionRequest};

    let served = Served::start("held", config_text("", "")).await;
    // A reflection stream that the client never closes.
    let (requests, held) = tokio::sync::mpsc::channel(1);
    let mut reflection = ServerReflectionClient::new(channel(served.grpc).await);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    requests.send(list).await.unwrap();
    let mut responses = reflection
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(held))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some(), "the stream is open");

    let asked = std::time::Instant::now();
    served.signal("-TERM");
    let (status, stderr) = served.exit().await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(1), "calls were cut off: {stderr}");
    assert!(stderr.contains("drain NOT clean"), "{stderr}");
    println!("exited {took:?} after SIGTERM with shutdown_grace = 500ms and a stream held open");
    // A correctness bound, not a performance figure: the process must not outlive its grace period
    // by more than a loaded machine's scheduling slack.
    assert!(took < Duration::from_secs(3), "exited {took:?} after SIGTERM; shutdown_grace is 500ms");
    drop(requests);
}

#[tokio::test]
async fn sighup_reloads_the_config_and_the_log_level() {
    let served = Served::start("sighup", config_text("", "[log]\nlevel = \"warn\"\n")).await;
    assert!(http_get(served.admin, "/config").await.1.contains("max_batch_size = 1000"));
    // A reloadable key changes, and info-level logs, hidden until now, appear once the new level is in force.
    std::fs::write(&served.config, config_text("max_batch_size = 9\n", "[log]\nlevel = \"info\"\n")).unwrap();
    served.signal("-HUP");
    wait_until("the reload is in force", || async {
        http_get(served.admin, "/config").await.1.contains("max_batch_size = 9")
    })
    .await;
    let (_, metrics) = http_get(served.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"merchant_edge_config_reloads_total{trigger="sighup",result="success"} 1"#),
        "{metrics}"
    );
    served.signal("-TERM");
    let (status, stderr) = served.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("merchant-edge serving"), "info was hidden at level warn: {stderr}");
    assert!(stderr.contains("drain clean"), "info shows after the reload to level info: {stderr}");
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_escapes() {
    let served = Served::start("plain-logs", config_text("", "")).await;
    served.signal("-TERM");
    let (status, stderr) = served.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("merchant-edge serving") && stderr.contains("drain clean"), "{stderr}");
    assert!(!stderr.contains("\x1b["), "ANSI escapes in logs written to a pipe: {stderr:?}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_span_fields() {
    let served = Served::start("json-logs", config_text("", "[log]\nformat = \"json\"\n")).await;
    served.signal("-HUP");
    wait_until("the SIGHUP reload is done", || async {
        let (_, metrics) = http_get(served.admin, "/metrics").await;
        metrics.contains(r#"merchant_edge_config_reloads_total{trigger="sighup",result="success"} 1"#)
    })
    .await;
    let grpc = served.grpc;
    served.signal("-TERM");
    let (status, stderr) = served.exit().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("\x1b["), "{stderr:?}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let find = |message: &str| {
        lines.iter().find(|line| line["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {stderr}"))
    };
    // Event fields sit at the top level.
    assert_eq!(find("merchant-edge serving")["grpc_addr"], grpc.to_string());
    // An event inside a span carries the span's fields, and the list of enclosing spans.
    let reloaded = find("config reloaded");
    assert_eq!(reloaded["span"]["name"], "reload", "{reloaded}");
    assert_eq!(reloaded["span"]["trigger"], "Signal", "{reloaded}");
    assert_eq!(reloaded["spans"][0]["name"], "reload", "{reloaded}");
    find("drain clean: every call finished");
}

#[tokio::test]
async fn the_lookup_client_speaks_tls() {
    let pki = Pki::new("process-tls");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let tls = format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let served = Served::start("tls", config_text("", &tls)).await;
    let server = served.grpc.to_string();
    let ca = pki.scratch.0.join("ca.pem");
    let lookup = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge")).args(args).output().unwrap()
    };
    let over_tls = lookup(vec![
        "lookup".into(),
        KNOWN.into(),
        "--server".into(),
        server.clone(),
        "--ca".into(),
        ca.display().to_string(),
    ]);
    let printed = String::from_utf8_lossy(&over_tls.stdout);
    assert!(over_tls.status.success(), "{printed} {}", String::from_utf8_lossy(&over_tls.stderr));
    assert!(printed.contains(&format!("{KNOWN}  found  ACTIVE")), "{printed}");
    let plaintext = lookup(vec!["lookup".into(), KNOWN.into(), "--server".into(), server]);
    assert!(!plaintext.status.success(), "a plaintext lookup must fail against a TLS edge");
    served.signal("-TERM");
    assert_eq!(served.exit().await.0.code(), Some(0));
}

/// Starts `merchant-edge core-sim` on `addr` and waits until it listens.
async fn start_core_sim(addr: SocketAddr) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["core-sim", "--merchants", "1000", "--listen"])
        .arg(addr.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start core-sim");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.unwrap().unwrap().unwrap();
    assert!(banner.contains("core-sim listening"), "{banner}");
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    child
}

#[tokio::test]
async fn killing_the_core_process_never_turns_into_not_found_and_the_edge_recovers_when_it_returns() {
    let addr = loopback().await.local_addr().unwrap();
    let mut core = start_core_sim(addr).await;
    let mut config = edge_config(&format!("http://{addr}"));
    config.cache.positive_ttl = std::time::Duration::from_secs(10);
    config.upstream.timeout = Duration::from_millis(500);
    let edge = start_following_edge(config).await;
    let mut client = client(&edge).await;
    let (stale, cache) = (merchant_edge::pb::Source::Stale, merchant_edge::pb::Source::Cache);
    assert!(lookup(&mut client, KNOWN).await.unwrap().found);

    core.kill().await.unwrap();
    assert_eq!(source(&lookup(&mut client, KNOWN).await.unwrap()), cache);
    let never_seen = "898000000000007";
    for _ in 0..3 {
        let status = lookup(&mut client, never_seen).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    wait_until("the feed sees the core gone", || async { !edge.feed.is_connected() }).await;
    advance_clock(Duration::from_secs(11)).await;
    let served = lookup(&mut client, KNOWN).await.unwrap();
    assert!(served.found && source(&served) == stale, "past its TTL, answered stale: {served:?}");

    let _core = start_core_sim(addr).await;
    let back = eventually("the edge uses the core again", || {
        let mut client = client.clone();
        async move { lookup(&mut client, never_seen).await.ok() }
    })
    .await;
    assert!(back.found);
    wait_until("the feed follows the new core", || async { edge.feed.is_connected() }).await;
    assert_ne!(source(&lookup(&mut client, KNOWN).await.unwrap()), stale);
}
