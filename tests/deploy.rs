//! The deploy kit (`deploy/`) against the real thing: the systemd unit against the config defaults and
//! the real binary's sd_notify messages on a socket this test binds; the Prometheus rules through
//! `promtool`; a real Prometheus scraping a real edge, with every metric of the README's reference table
//! and every dashboard query checked through its HTTP API; and the Kubernetes manifests parsed and
//! checked against the config loader, so ports, paths and timings cannot drift from the code.
//!
//! `promtool` and `prometheus` must be on PATH (`scripts/test.sh` installs Debian's `prometheus`):
//! these tests fail, not skip, without them. `systemd-analyze verify` runs only where it is installed.
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use merchant_edge::config::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A file of the deploy kit.
fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// `program` must be installed: a clear failure rather than a skip, so CI cannot pass without it.
fn required_tool(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    if let Err(error) = std::process::Command::new(program).arg("--version").output() {
        panic!("`{program}` is required by this test and could not be run ({error}); install Debian's prometheus package (scripts/test.sh does)");
    }
    command.current_dir(deploy("prometheus"));
    command
}

fn run(mut command: std::process::Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{printed}");
    printed
}

fn parse_yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The config path that every deployment passes to `serve --config`.
const CONFIG_PATH: &str = "/etc/merchant-edge/config.toml";

// ---------------------------------------------------------------------------------------------- systemd

/// `key=value` lines of one section of a unit file, in order (keys may repeat).
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut entries = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if !line.is_empty() && !line.starts_with('#') && current == section {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            entries.push((key.to_owned(), value.to_owned()));
        }
    }
    entries
}

fn systemd_duration(value: &str) -> Duration {
    humantime_serde::re::humantime::parse_duration(value).unwrap_or_else(|e| panic!("`{value}`: {e}"))
}

#[test]
fn the_systemd_unit_matches_the_binary_and_the_config_defaults() {
    let path = deploy("systemd/merchant-edge.service");
    let unit = read(&path);
    let service = unit_section(&unit, "Service");
    let get = |key: &str| {
        service
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}= in [Service]"))
    };
    assert_eq!(get("Type"), "notify");
    let exec_start: Vec<&str> = get("ExecStart").split_whitespace().collect();
    assert!(exec_start[0].ends_with("/merchant-edge"), "{exec_start:?}");
    assert_eq!(&exec_start[1..], ["serve", "--config", CONFIG_PATH]);
    assert_eq!(get("ExecStartPre").split_whitespace().skip(1).collect::<Vec<_>>(), ["check-config", CONFIG_PATH]);
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    // The edge's own drain must end before systemd's SIGKILL.
    let grace = Config::default().server.shutdown_grace;
    let stop = systemd_duration(get("TimeoutStopSec"));
    assert!(stop > grace, "TimeoutStopSec {stop:?} must exceed server.shutdown_grace {grace:?}");
    assert!(systemd_duration(get("WatchdogSec")) >= Duration::from_secs(2), "pings come every WatchdogSec/2");
    // The config path's directory is the unit's configuration directory; the state directory is where
    // the snapshot will live.
    assert_eq!(Path::new(CONFIG_PATH).parent().unwrap(), Path::new("/etc").join(get("ConfigurationDirectory")));
    assert_eq!(get("StateDirectory"), "merchant-edge");
    assert!(
        unit.contains("[snapshot] path = \"/var/lib/merchant-edge/snapshot.bin\""),
        "the unit documents the snapshot path in its state directory"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("DynamicUser", "yes"),
    ] {
        assert_eq!(get(key), value, "{key}");
    }

    // systemd's own checker, where it is installed (it needs the binary to exist: use the built one).
    if std::process::Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let scratch = Scratch::new("deploy-unit");
        let installed = unit.replace("/usr/local/bin/merchant-edge", env!("CARGO_BIN_EXE_merchant-edge"));
        let copy = scratch.write("merchant-edge.service", &installed);
        let output = std::process::Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        // Unknown keys are only warned about (exit 0), so any line naming the unit is a failure too.
        let complaints: Vec<&str> = printed.lines().filter(|line| line.contains("merchant-edge.service")).collect();
        assert!(output.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{printed}");
    }
}

/// Receives one notification datagram before `deadline`.
async fn notification(socket: &tokio::net::UnixDatagram, deadline: tokio::time::Instant, waiting_for: &str) -> String {
    let mut buffer = vec![0u8; 4096];
    let length = tokio::time::timeout_at(deadline, socket.recv(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no {waiting_for} from the edge in time"))
        .unwrap();
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

#[tokio::test]
async fn the_binary_notifies_systemd_ready_watchdog_and_stopping() {
    let scratch = Scratch::new("deploy-notify");
    let socket_path = scratch.0.join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let config = scratch.write(
        "config.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nembedded_merchants = 20000\n[reload]\nwatch_file = false\n",
    );
    let log = scratch.0.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // 200 ms: pings every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start merchant-edge");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the edge prints where it listens")
        .unwrap()
        .unwrap();
    let admin: SocketAddr =
        banner.split_whitespace().last().unwrap().trim_start_matches("http://").trim_end_matches(')').parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = notification(&socket, deadline, "READY=1").await;
        messages.push(message.clone());
        if message.lines().any(|line| line == "READY=1") {
            let (code, body) = http_get(admin, "/readyz").await;
            assert_eq!(code, 200, "READY=1 came while /readyz said: {body}");
            break;
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut pings = 0;
    while pings < 3 {
        let message = notification(&socket, deadline, "three WATCHDOG=1 pings").await;
        pings += usize::from(message.lines().any(|line| line == "WATCHDOG=1"));
        messages.push(message);
    }

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = notification(&socket, deadline, "STOPPING=1").await;
        messages.push(message.clone());
        if message.lines().any(|line| line == "STOPPING=1") {
            break;
        }
    }
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits after SIGTERM").unwrap();
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Anything sent before the exit is in the socket by now.
    let mut buffer = vec![0u8; 4096];
    while let Ok(length) = socket.try_recv(&mut buffer) {
        messages.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
    }
    let readies = messages.iter().filter(|m| m.lines().any(|line| line == "READY=1")).count();
    assert_eq!(readies, 1, "READY=1 exactly once: {messages:?}");
}

// ---------------------------------------------------------------------------------------------- rules

/// The names of the rules of one kind (`alert` or `record`) in the rule files.
fn rule_names(kind: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for path in files_ending(&deploy("prometheus"), ".rules.yml") {
        for group in parse_yaml(&path)["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(name) = rule[kind].as_str() {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

fn alert_names() -> BTreeSet<String> {
    rule_names("alert")
}

#[test]
fn the_prometheus_rules_pass_promtool_and_every_alert_is_tested_both_ways() {
    let rule_files = files_ending(&deploy("prometheus"), ".rules.yml");
    let test_files = files_ending(&deploy("prometheus"), "_test.yml");
    assert!(!rule_files.is_empty() && !test_files.is_empty());
    let mut check = required_tool("promtool");
    check.args(["check", "rules"]).args(&rule_files);
    run(check);
    let mut test = required_tool("promtool");
    test.args(["test", "rules"]).args(&test_files);
    run(test);
    let mut config = required_tool("promtool");
    config.args(["check", "config"]).arg(deploy("prometheus/prometheus.example.yml"));
    run(config);

    // promtool passes a file that tests nothing; each alert needs a case where it fires and one where
    // it does not.
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for path in &test_files {
        for test in parse_yaml(path)["tests"].as_array().unwrap() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap().to_owned();
                match case["exp_alerts"].as_array().map(Vec::len) {
                    Some(0) | None => silent.insert(name),
                    Some(_) => fires.insert(name),
                };
            }
        }
    }
    let alerts = alert_names();
    assert!(alerts.len() >= 8, "{alerts:?}");
    let untested: Vec<_> = alerts.iter().filter(|a| !fires.contains(*a) || !silent.contains(*a)).collect();
    assert!(untested.is_empty(), "alerts without a firing and a silent case: {untested:?}");
}

// ---------------------------------------------------------------------------------------------- a real Prometheus

/// A GET over HTTP/1.0 (so the Go server answers unchunked and closes): (status, body).
async fn http10_get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.ok().flatten()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `prometheus` server on loopback with its own storage, stopped when dropped.
struct Prometheus {
    addr: SocketAddr,
    child: tokio::process::Child,
    _scratch: Scratch,
}

impl Prometheus {
    /// Scrapes `target` every second as job `merchant-edge`, with the deploy kit's rules.
    async fn start(target: SocketAddr) -> Self {
        drop(required_tool("prometheus"));
        let scratch = Scratch::new("deploy-prometheus");
        let rules: Vec<String> = files_ending(&deploy("prometheus"), ".rules.yml")
            .iter()
            .map(|path| format!("  - {}\n", path.display()))
            .collect();
        let config = scratch.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\
                 scrape_configs:\n  - job_name: merchant-edge\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.concat()
            ),
        );
        // A port the OS just handed out, which Prometheus binds a moment later; should another process
        // take it in between, Prometheus exits and the next attempt takes another port.
        for _attempt in 0..3 {
            let addr = loopback().await.local_addr().unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", scratch.0.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(scratch.0.join("prometheus.log")).unwrap())
                .kill_on_drop(true)
                .spawn()
                .expect("start prometheus");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!(
                        "prometheus exited ({status}) before it was ready:\n{}",
                        read(&scratch.0.join("prometheus.log"))
                    );
                    break;
                }
                if let Some((200, _)) = http10_get(addr, "/-/ready").await {
                    return Self { addr, child, _scratch: scratch };
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "prometheus not ready after 30 s:\n{}",
                    read(&scratch.0.join("prometheus.log"))
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!("prometheus did not start (see its log above)");
    }

    /// Stops the server and waits for it, so its storage can be removed.
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._scratch.0.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_for<T, F, Fut>(&self, what: &str, limit: Duration, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Retries `check` (a list of what is still wrong) for up to 30 s, until nothing is left; the last
    /// list otherwise, for the test to report.
    async fn until_none_left<F, Fut>(&self, mut check: F) -> Vec<String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Vec<String>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = check().await;
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `GET /api/v1/{path}`: the parsed JSON of a 200 answer.
    async fn api(&self, path: &str) -> Value {
        let (code, body) =
            http10_get(self.addr, &format!("/api/v1/{path}")).await.unwrap_or_else(|| panic!("no answer to {path}"));
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// An instant query; fails the test unless Prometheus answers `success`. The result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let answer = self.api(&format!("query?query={}", url_encode(promql))).await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The metric names and types of the README's "Metrics reference" table.
fn readme_metrics() -> Vec<(String, String)> {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let table = readme.split("### Metrics reference").nth(1).expect("the README has a Metrics reference");
    let table = table.split("\n## ").next().unwrap();
    let metrics: Vec<(String, String)> = table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(2)?.to_string()))
        })
        .collect();
    assert!(metrics.len() >= 25, "parsed the README's metrics table: {metrics:?}");
    metrics
}

/// Every `expr` in the dashboard, however deeply nested.
fn dashboard_exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => dashboard_exprs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, found)),
        _ => {}
    }
}

/// A dashboard query as Grafana would send it: its interval variables as 1m, the job and instance
/// variables as "any".
fn as_grafana_sends(expr: &str) -> String {
    let mut promql = expr.to_owned();
    for (variable, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "1m"),
        ("${job}", ".+"),
        ("$job", ".+"),
        ("${instance}", ".+"),
        ("$instance", ".+"),
    ] {
        promql = promql.replace(variable, value);
    }
    assert!(!promql.contains('$'), "a dashboard variable the test does not know: {expr}");
    promql
}

#[tokio::test]
async fn a_real_prometheus_scrapes_a_real_edge_with_every_documented_metric_and_dashboard_query() {
    let core = Core::start(1_000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    // A miss and a hit, a core "not found" and a negative-cache hit, a malformed ID: every lookup
    // series and a core call exist before the first scrape.
    for id in [KNOWN, KNOWN, UNKNOWN, UNKNOWN] {
        lookup(&mut client, id).await.unwrap();
    }
    assert!(lookup(&mut client, "12345").await.is_err());

    let prometheus = Prometheus::start(edge.admin_addr).await;
    prometheus
        .wait_for("the edge is scraped and up", Duration::from_secs(30), || async {
            let targets = prometheus.api("targets").await;
            let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            let up = active.iter().any(|t| t["health"] == "up" && t["labels"]["job"] == "merchant-edge");
            up.then_some(())
        })
        .await;

    // Counters and gauges by their names; histograms by their `_count` series.
    let expected: Vec<String> = readme_metrics()
        .into_iter()
        .map(|(name, kind)| if kind == "histogram" { format!("{name}_count") } else { name })
        .chain(["process_resident_memory_bytes".to_owned()])
        .collect();
    let missing = prometheus
        .until_none_left(|| async {
            let mut missing = Vec::new();
            for name in &expected {
                if prometheus.query(&format!("{name}{{job=\"merchant-edge\"}}")).await.is_empty() {
                    missing.push(name.clone());
                }
            }
            missing
        })
        .await;
    assert!(missing.is_empty(), "documented in the README, not scraped by Prometheus: {missing:?}");
    let rss = prometheus.query("process_resident_memory_bytes").await;
    let bytes: f64 = rss[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(bytes > 1_000_000.0, "resident memory {bytes}");

    // Every dashboard query is valid PromQL and, once rates have two samples, returns data (a query
    // that names a metric the edge does not expose would succeed empty).
    let dashboard: Value = serde_json::from_str(&read(&deploy("grafana/merchant-edge.json"))).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let empty = prometheus
        .until_none_left(|| async {
            let mut empty = Vec::new();
            for expr in &exprs {
                if prometheus.query(&as_grafana_sends(expr)).await.is_empty() {
                    empty.push(expr.clone());
                }
            }
            empty
        })
        .await;
    assert!(empty.is_empty(), "dashboard queries that return no data from a real edge: {empty:#?}");

    // The deploy kit's rules, evaluated on the real series: every one healthy.
    let alerts = alert_names();
    prometheus
        .wait_for("every rule is evaluated without error", Duration::from_secs(30), || async {
            let rules = prometheus.api("rules").await;
            let rules: Vec<Value> = rules["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let unhealthy: Vec<&Value> = rules.iter().filter(|rule| rule["health"] != "ok").collect();
            let loaded: BTreeSet<String> = rules
                .iter()
                .filter(|r| r["type"] == "alerting")
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect();
            assert!(
                unhealthy.iter().all(|rule| rule["health"] == "unknown"),
                "rules failing on real series: {unhealthy:?}"
            );
            (unhealthy.is_empty() && loaded == alerts).then_some(())
        })
        .await;
    // The recording rules produce series from the real edge (once an evaluation saw two samples).
    prometheus
        .wait_for("the recording rules record", Duration::from_secs(30), || async {
            let recorded = prometheus.query("{__name__=~\".+:.+:.+\"}").await;
            let names: BTreeSet<String> =
                recorded.iter().filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_owned)).collect();
            (names == rule_names("record")).then_some(())
        })
        .await;
    prometheus.stop().await;
    edge.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------- Kubernetes

/// The manifests of deploy/kubernetes by kind.
fn manifests() -> Vec<(PathBuf, Value)> {
    files_ending(&deploy("kubernetes"), ".yaml").into_iter().map(|path| (path.clone(), parse_yaml(&path))).collect()
}

fn of_kind<'m>(manifests: &'m [(PathBuf, Value)], kind: &str) -> &'m Value {
    let mut matching = manifests.iter().filter(|(_, m)| m["kind"] == kind);
    let found = matching.next().map(|(_, m)| m).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    assert!(matching.next().is_none(), "one {kind} expected");
    found
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(key, value)| &labels[key] == value)
}

#[test]
fn the_kubernetes_manifests_match_the_config_loader() {
    let manifests = manifests();
    let deployment = of_kind(&manifests, "Deployment");
    let config_map = of_kind(&manifests, "ConfigMap");
    let service = of_kind(&manifests, "Service");
    let budget = of_kind(&manifests, "PodDisruptionBudget");
    let monitor = of_kind(&manifests, "ServiceMonitor");

    // The ConfigMap's TOML is accepted by the real loader and validator.
    let file_name = Path::new(CONFIG_PATH).file_name().unwrap().to_str().unwrap();
    let toml = config_map["data"][file_name].as_str().expect("the ConfigMap holds config.toml");
    let config = Config::parse(toml, "deploy/kubernetes/configmap.yaml").unwrap_or_else(|e| panic!("{e}"));
    let defaults = Config::default();
    // Reachable from outside the pod, on the documented default ports.
    assert!(config.server.listen.ip().is_unspecified(), "server.listen {}", config.server.listen);
    assert!(config.admin.listen.ip().is_unspecified(), "admin.listen {}", config.admin.listen);
    assert_eq!(config.server.listen.port(), defaults.server.listen.port());
    assert_eq!(config.admin.listen.port(), defaults.admin.listen.port());
    assert!(config.reload.watch_file, "a ConfigMap update must reach the edge through the file watch");

    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["serve", "--config", CONFIG_PATH]);
    let port = |name: &str| -> u16 {
        let ports = container["ports"].as_array().unwrap();
        let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no container port {name}"));
        port["containerPort"].as_u64().unwrap().try_into().unwrap()
    };
    assert_eq!(port("grpc"), config.server.listen.port());
    assert_eq!(port("admin"), config.admin.listen.port());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "admin", "{probe} on the admin port");
    }

    // The config directory is a ConfigMap volume mounted whole (a subPath mount never sees updates).
    let mounts = container["volumeMounts"].as_array().unwrap();
    let config_dir = Path::new(CONFIG_PATH).parent().unwrap().to_str().unwrap();
    let mount = mounts.iter().find(|m| m["mountPath"] == config_dir).expect("a mount at the config directory");
    assert!(mount.get("subPath").is_none(), "subPath mounts do not see ConfigMap updates");
    let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);

    // The local snapshot lives on a writable volume mounted at its directory (the root filesystem is
    // read-only, and the file is replaced by a rename within that directory).
    let snapshot = config.snapshot.file().expect("the ConfigMap turns the local snapshot on");
    let snapshot_dir = snapshot.parent().unwrap().to_str().unwrap();
    assert_eq!(snapshot_dir, "/var/lib/merchant-edge", "the same state directory as the systemd unit's");
    let state = mounts.iter().find(|m| m["mountPath"] == snapshot_dir).expect("a mount at the snapshot's directory");
    assert_ne!(state["readOnly"], true, "the snapshot's directory must be writable");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // The kubelet's SIGKILL comes after the preStop pause and the edge's own bounded drain.
    let pre_stop = Duration::from_secs(container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0));
    let termination = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    for grace in [config.server.shutdown_grace, defaults.server.shutdown_grace] {
        assert!(
            termination > pre_stop + grace,
            "terminationGracePeriodSeconds {termination:?} vs {pre_stop:?} + {grace:?}"
        );
    }

    // Prometheus annotations name the admin port and path.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], config.admin.listen.port().to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Selectors find the pods; Service and ServiceMonitor ports exist.
    let pod_labels = &pod["metadata"]["labels"];
    assert!(labels_match(&deployment["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(labels_match(&service["spec"]["selector"], pod_labels));
    assert!(labels_match(&budget["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(labels_match(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    for service_port in service_ports {
        let target = service_port["targetPort"].as_str().unwrap();
        assert_eq!(service_port["port"].as_u64().unwrap(), u64::from(port(target)), "{service_port}");
    }
    for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
        assert!(service_ports.iter().any(|p| p["name"] == endpoint["port"]), "{endpoint}");
        assert_eq!(endpoint["path"], "/metrics");
    }
    // Voluntary disruptions leave at least one pod serving.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(budget["spec"]["maxUnavailable"].as_u64().unwrap() < replicas);

    // kustomization.yaml applies every other manifest.
    let kustomization = manifests.iter().find(|(p, _)| p.ends_with("kustomization.yaml")).expect("kustomization.yaml");
    let listed: BTreeSet<&str> =
        kustomization.1["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    let files: BTreeSet<String> = manifests
        .iter()
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files.iter().map(String::as_str).collect());
}
