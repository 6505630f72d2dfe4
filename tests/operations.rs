//! What SREs rely on: live reload (each trigger, rejection, restart-only keys), metrics, health through
//! a drain, and TLS / mutual TLS with certificates replaced on reload.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use merchant_edge::config::Config;
use merchant_edge::pb::merchant_lookup_client::MerchantLookupClient;
use merchant_edge::pb::{BatchLookupRequest, LookupRequest, Source};
use merchant_edge::server::{Drain, Edge, RunningEdge};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

fn config_text(core: &Core, extra: &str) -> String {
    format!(
        "[upstream]\nendpoint = \"{}\"\n[feed]\nwarm_start = false\nreconnect_initial_backoff = \"10ms\"\n\
         reconnect_max_backoff = \"200ms\"\n{extra}",
        core.url()
    )
}

/// An edge started from `path`, reloadable from it.
async fn edge_from_file(path: &Path) -> RunningEdge {
    let config = Config::load(path).unwrap();
    let edge = Edge::bind_to(config, loopback_addr(), loopback_addr())
        .await
        .unwrap()
        .config_file(path.to_path_buf())
        .start()
        .await
        .unwrap();
    let edge = follow_clock(edge);
    wait_until("the feed is connected", || async { edge.feed.is_connected() }).await;
    edge
}

async fn batch_of(client: &mut MerchantLookupClient<Channel>, n: usize) -> Result<usize, tonic::Status> {
    let request = BatchLookupRequest { merchant_ids: vec![KNOWN.to_string(); n], min_sequence: 0 };
    client.batch_lookup(request).await.map(|r| r.into_inner().results.len())
}

#[tokio::test]
async fn admin_reload_applies_a_shorter_negative_ttl_to_stored_entries() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("admin-reload");
    let path = scratch
        .write("edge.toml", &config_text(&core, "[cache]\nnegative_ttl = \"30s\"\n[reload]\nwatch_file = false\n"));
    let edge = edge_from_file(&path).await;
    let mut client = client(&edge).await;
    lookup(&mut client, UNKNOWN).await.unwrap();
    assert_eq!(source(&lookup(&mut client, UNKNOWN).await.unwrap()), Source::NegativeCache);

    std::fs::write(&path, config_text(&core, "[cache]\nnegative_ttl = \"1s\"\n[reload]\nwatch_file = false\n"))
        .unwrap();
    let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["applied"], serde_json::json!(["cache.negative_ttl"]));
    assert_eq!(report["restart_required"], serde_json::json!([]));
    advance_clock(Duration::from_secs(1)).await;
    assert_eq!(
        source(&lookup(&mut client, UNKNOWN).await.unwrap()),
        Source::Upstream,
        "1s now, for stored entries too"
    );
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"merchant_edge_config_reloads_total{trigger="admin",result="success"} 1"#), "{metrics}");
    assert!(metrics.contains("merchant_edge_config_last_reload_successful 1"));
    let (_, effective) = http_get(edge.admin_addr, "/config").await;
    assert!(effective.contains("negative_ttl = \"1s\""), "{effective}");
}

#[tokio::test]
async fn a_bad_config_is_rejected_whole_and_the_running_one_keeps_serving() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("bad-reload");
    let good = config_text(&core, "[server]\nmax_batch_size = 3\n[reload]\nwatch_file = false\n");
    let path = scratch.write("edge.toml", &good);
    let edge = edge_from_file(&path).await;
    let mut client = client(&edge).await;
    let hash_before = edge.config.load().hash();

    for (broken, expected) in [
        (format!("{good}[cache\n"), "edge.toml:"),
        (good.replace("max_batch_size = 3", "max_batch_size = 5\nmax_bacth_size = 6"), "max_bacth_size"),
        (
            good.replace("max_batch_size = 3", "max_batch_size = 5\n[cache]\nnegative_ttl = \"0s\""),
            "cache.negative_ttl",
        ),
        (
            good.replace("max_batch_size = 3", "max_batch_size = 5\n[merchant_id]\nmin_length = 20\nmax_length = 10"),
            "must not exceed",
        ),
        (
            good.replace(
                "max_batch_size = 3",
                "max_batch_size = 5\n[server.tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"",
            ),
            "restart",
        ),
    ] {
        std::fs::write(&path, &broken).unwrap();
        let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
        if expected == "restart" {
            // Turning TLS on takes a restart: reported, and the rest applies.
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("server.tls = on (running: off)"), "{body}");
            std::fs::write(&path, &good).unwrap();
            assert_eq!(http_request(edge.admin_addr, "POST", "/reload").await.0, 200);
            continue;
        }
        assert_eq!(status, 422, "{broken}: {body}");
        assert!(body.contains(expected), "{expected} missing from {body}");
        assert_eq!(edge.config.load().hash(), hash_before, "nothing was half-applied");
        assert_eq!(batch_of(&mut client, 3).await.unwrap(), 3);
        assert_eq!(batch_of(&mut client, 4).await.unwrap_err().code(), Code::InvalidArgument);
    }
    std::fs::write(&path, format!("{good}[cache\n")).unwrap();
    http_request(edge.admin_addr, "POST", "/reload").await;
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    assert!(metrics.contains("merchant_edge_config_last_reload_successful 0"), "{metrics}");
}

#[tokio::test]
async fn restart_only_keys_are_reported_and_keep_their_running_values() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("restart-only");
    let path = scratch.write("edge.toml", &config_text(&core, "[reload]\nwatch_file = false\n"));
    let edge = edge_from_file(&path).await;
    let changed = config_text(
        &core,
        "[reload]\nwatch_file = false\n[server]\nlisten = \"127.0.0.1:1\"\nmax_batch_size = 7\n[log]\nformat = \"json\"\n",
    );
    std::fs::write(&path, changed).unwrap();
    let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let restart: Vec<String> = serde_json::from_value(report["restart_required"].clone()).unwrap();
    assert!(
        restart.iter().any(|k| k.starts_with("server.listen = 127.0.0.1:1 (running: 127.0.0.1:50051)")),
        "{restart:?}"
    );
    assert!(restart.iter().any(|k| k.starts_with("log.format")), "{restart:?}");
    assert_eq!(report["applied"], serde_json::json!(["server.max_batch_size"]));
    let effective = edge.config.load();
    assert_eq!((effective.server.listen.port(), effective.server.max_batch_size.get()), (50051, 7));
}

#[tokio::test]
async fn a_changed_file_is_reloaded_including_a_configmap_symlink_swap() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("watch");
    // The layout Kubernetes gives a mounted ConfigMap: edge.toml -> ..data/edge.toml, ..data -> ..v1
    std::fs::create_dir_all(scratch.0.join("..v1")).unwrap();
    let reload = "[reload]\nwatch_file = true\ndebounce = \"50ms\"\n";
    scratch.write("..v1/edge.toml", &config_text(&core, &format!("{reload}[server]\nmax_batch_size = 2\n")));
    std::os::unix::fs::symlink("..v1", scratch.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/edge.toml", scratch.0.join("edge.toml")).unwrap();
    let edge = edge_from_file(&scratch.0.join("edge.toml")).await;
    let mut client = client(&edge).await;
    assert!(batch_of(&mut client, 3).await.is_err());

    std::fs::create_dir_all(scratch.0.join("..v2")).unwrap();
    scratch.write("..v2/edge.toml", &config_text(&core, &format!("{reload}[server]\nmax_batch_size = 3\n")));
    std::os::unix::fs::symlink("..v2", scratch.0.join("..data_tmp")).unwrap();
    std::fs::rename(scratch.0.join("..data_tmp"), scratch.0.join("..data")).unwrap();
    wait_until("the swapped config is in force", || async { edge.config.load().server.max_batch_size.get() == 3 })
        .await;
    assert_eq!(batch_of(&mut client, 3).await.unwrap(), 3);

    // Configuration management replacing the file by a rename, then an editor writing it in place.
    scratch.write("edge.toml.new", &config_text(&core, &format!("{reload}[server]\nmax_batch_size = 4\n")));
    std::fs::rename(scratch.0.join("edge.toml.new"), scratch.0.join("edge.toml")).unwrap();
    wait_until("the replaced config is in force", || async { edge.config.load().server.max_batch_size.get() == 4 })
        .await;
    scratch.write("edge.toml", &config_text(&core, &format!("{reload}[server]\nmax_batch_size = 5\n")));
    wait_until("the rewritten config is in force", || async { edge.config.load().server.max_batch_size.get() == 5 })
        .await;
    let (_, metrics) = http_get(edge.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"merchant_edge_config_reloads_total{trigger="file_watch",result="success"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_capacity_change_rebuilds_the_stores_and_keeps_their_entries() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("capacity");
    let path = scratch.write("edge.toml", &config_text(&core, "[reload]\nwatch_file = false\n"));
    let edge = edge_from_file(&path).await;
    let mut client = client(&edge).await;
    for i in 0..20 {
        lookup(&mut client, &format!("8980000000000{i:02}")).await.unwrap();
    }
    std::fs::write(&path, config_text(&core, "[reload]\nwatch_file = false\n[cache]\npositive_capacity = 5000\n"))
        .unwrap();
    let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    for i in 0..20 {
        let response = lookup(&mut client, &format!("8980000000000{i:02}")).await.unwrap();
        assert_eq!(source(&response), Source::Cache, "entry {i} survived the migration");
    }
    assert_eq!(core.stats().await.get_merchant_calls, 20);
}

/// Every metric the README documents, by the name it has in the exposition.
const DOCUMENTED: &[&str] = &[
    "merchant_edge_lookups_total",
    "merchant_edge_cache_hits_total",
    "merchant_edge_cache_misses_total",
    "merchant_edge_cache_entries",
    "merchant_edge_cache_evictions_total",
    "merchant_edge_coalesced_waits_total",
    "merchant_edge_fills_fenced_total",
    "merchant_edge_token_lookups_total",
    "merchant_edge_token_wait_seconds",
    "merchant_edge_core_calls_total",
    "merchant_edge_core_call_duration_seconds",
    "merchant_edge_feed_connected",
    "merchant_edge_feed_applied_sequence",
    "merchant_edge_feed_core_head_sequence",
    "merchant_edge_feed_lag_notices",
    "merchant_edge_feed_lag_seconds",
    "merchant_edge_feed_notices_applied_total",
    "merchant_edge_feed_notices_duplicate_total",
    "merchant_edge_feed_gaps_total",
    "merchant_edge_feed_reconnects_total",
    "merchant_edge_feed_resyncs_total",
    "merchant_edge_feed_commit_to_apply_seconds",
    "merchant_edge_feed_source_info",
    "merchant_edge_snapshot_last_write_success_timestamp_seconds",
    "merchant_edge_snapshot_write_duration_seconds",
    "merchant_edge_snapshot_bytes",
    "merchant_edge_snapshot_merchants",
    "merchant_edge_snapshot_writes_total",
    "merchant_edge_snapshot_loads_total",
    "merchant_edge_config_last_reload_successful",
    "merchant_edge_config_last_reload_success_timestamp_seconds",
    "merchant_edge_config_info",
    "merchant_edge_config_reloads_total",
    "merchant_edge_build_info",
];

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_documented_names() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    for id in [KNOWN, KNOWN, UNKNOWN, UNKNOWN, "bad"] {
        let _ = lookup(&mut client, id).await;
    }
    let (status, text) = http_get(edge.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: std::collections::BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in DOCUMENTED {
        assert!(names.contains(name), "{name} missing; have {names:?}");
    }
    let readme = include_str!("../README.md");
    for name in DOCUMENTED {
        assert!(readme.contains(name), "{name} is not documented in the README");
    }
    let value = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("merchant_edge_lookups_total", &[("source", "cache"), ("result", "found")]), Some(1.0));
    assert_eq!(value("merchant_edge_lookups_total", &[("source", "none"), ("result", "invalid_id")]), Some(1.0));
    assert_eq!(value("merchant_edge_cache_hits_total", &[("store", "negative")]), Some(1.0));
    assert_eq!(value("merchant_edge_cache_misses_total", &[("store", "positive")]), Some(3.0));
    assert_eq!(value("merchant_edge_core_calls_total", &[("result", "not_found")]), Some(1.0));
}

#[tokio::test]
async fn a_drain_reports_not_serving_and_lets_calls_in_flight_finish() {
    use merchant_edge::pb::SetFaultsRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.server.shutdown_grace = Duration::from_secs(30);
    // The held call must outlast the drain's steps below however loaded the machine is (the default
    // 2 s core timeout would end it first when the whole suite runs on two busy cores).
    config.upstream.timeout = Duration::from_secs(30);
    let edge = start_following_edge(config).await;
    let (admin, grpc) = (edge.admin_addr, edge.grpc_addr);
    let mut health = HealthClient::new(channel(edge.grpc_addr).await);
    let request = HealthCheckRequest { service: "merchant.v1.MerchantLookup".into() };
    let mut watch = health.watch(request).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    // A lookup in flight: the core has read it and holds the answer.
    core.set_faults(SetFaultsRequest { hang: true, ..Default::default() }).await;
    let mut terminal = client(&edge).await;
    let in_flight = tokio::spawn(async move { lookup(&mut terminal, KNOWN).await });
    wait_until("the core has the call", || async { core.stats().await.get_merchant_calls == 1 }).await;

    let draining = tokio::spawn(edge.shutdown());
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    assert!(!matches!(watch.message().await, Ok(Some(_))), "the health watch ends, so it cannot hold the drain");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let newcomer = MerchantLookupClient::connect(format!("http://{grpc}")).await;
    let refused = match newcomer {
        Err(_) => true,
        Ok(mut client) => lookup(&mut client, KNOWN).await.is_err(),
    };
    assert!(refused, "new work is refused while draining");
    core.set_faults(SetFaultsRequest::default()).await;
    assert!(in_flight.await.unwrap().unwrap().found, "the call in flight finished during the drain");
    assert_eq!(draining.await.unwrap().unwrap(), Drain::Clean);
}

#[tokio::test]
async fn a_drain_without_open_calls_is_clean() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    lookup(&mut client, KNOWN).await.unwrap();
    drop(client);
    assert_eq!(edge.shutdown().await.unwrap(), Drain::Clean);
}

async fn tls_client(
    edge: &RunningEdge,
    ca_pem: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<MerchantLookupClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    let channel =
        Channel::from_shared(format!("https://{}", edge.grpc_addr)).unwrap().tls_config(tls)?.connect().await?;
    Ok(MerchantLookupClient::new(channel))
}

async fn tls_lookup(edge: &RunningEdge, ca_pem: &str, identity: Option<(&Path, &Path)>) -> Result<bool, String> {
    let mut client = tls_client(edge, ca_pem, identity).await.map_err(|e| format!("{e:?}"))?;
    let response = client
        .lookup(LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 })
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(response.into_inner().found)
}

#[tokio::test]
async fn tls_serves_terminals_and_plaintext_is_refused() {
    let core = Core::start(1000).await;
    let pki = Pki::new("tls");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let mut config = edge_config(&core.url());
    config.server.tls = Some(merchant_edge::config::TlsConfig { cert, key, client_ca: None });
    let edge = start_following_edge(config).await;
    assert_eq!(tls_lookup(&edge, &pki.ca_pem(), None).await, Ok(true));
    let plaintext = MerchantLookupClient::connect(format!("http://{}", edge.grpc_addr)).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut client) => client.lookup(LookupRequest { merchant_id: KNOWN.into(), min_sequence: 0 }).await.is_err(),
    };
    assert!(refused, "a plaintext client must not get an answer from a TLS listener");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let core = Core::start(1000).await;
    let pki = Pki::new("mtls");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let (terminal_cert, terminal_key) = pki.issue("terminal", &["terminal-0001"]);
    let stranger = Pki::new("mtls-stranger");
    let (stranger_cert, stranger_key) = stranger.issue("terminal", &["terminal-9999"]);
    let client_ca = Some(pki.scratch.0.join("ca.pem"));
    let mut config = edge_config(&core.url());
    config.server.tls = Some(merchant_edge::config::TlsConfig { cert, key, client_ca });
    let edge = start_following_edge(config).await;

    assert_eq!(tls_lookup(&edge, &pki.ca_pem(), Some((&terminal_cert, &terminal_key))).await, Ok(true));
    assert!(tls_lookup(&edge, &pki.ca_pem(), None).await.is_err(), "no client certificate");
    assert!(
        tls_lookup(&edge, &pki.ca_pem(), Some((&stranger_cert, &stranger_key))).await.is_err(),
        "a certificate from an untrusted CA"
    );
}

#[tokio::test]
async fn certificates_are_replaced_by_a_reload() {
    let core = Core::start(1000).await;
    let old = Pki::new("rotate-old");
    let (cert, key) = old.issue("server", &["localhost"]);
    let scratch = Scratch::new("rotate-config");
    let tls = format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let path = scratch.write("edge.toml", &config_text(&core, &format!("[reload]\nwatch_file = false\n{tls}")));
    let edge = edge_from_file(&path).await;
    assert_eq!(tls_lookup(&edge, &old.ca_pem(), None).await, Ok(true));

    let new = Pki::new("rotate-new");
    let (new_cert, new_key) = new.issue("server", &["localhost"]);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tls_lookup(&edge, &new.ca_pem(), None).await, Ok(true), "new connections get the new certificate");
    assert!(tls_lookup(&edge, &old.ca_pem(), None).await.is_err(), "the old certificate is gone");

    std::fs::write(&key, "not a key").unwrap();
    let (status, body) = http_request(edge.admin_addr, "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("private key"), "{body}");
    assert_eq!(tls_lookup(&edge, &new.ca_pem(), None).await, Ok(true), "a failed reload keeps the running certificate");
}

#[tokio::test]
async fn with_require_token_every_guarded_endpoint_needs_the_token_and_a_reload_rereads_it() {
    let core = Core::start(1000).await;
    let scratch = Scratch::new("admin-token");
    let token_file = scratch.write("admin-token", "first-token\n");
    let admin = format!("[admin]\nrequire_token = true\ntoken_file = \"{}\"\n", token_file.display());
    let path = scratch.write("edge.toml", &config_text(&core, &admin));
    let edge = edge_from_file(&path).await;
    let addr = edge.admin_addr;
    let guarded =
        [("POST", "/reload"), ("GET", &format!("/debug/merchants/{KNOWN}")), ("POST", "/invalidate/898000000000007")];
    for (method, endpoint) in guarded {
        for wrong in [None, Some("guess")] {
            let (status, head, body) = http_request_with_token(addr, method, endpoint, wrong).await;
            assert_eq!(status, 401, "{method} {endpoint} with {wrong:?}: {body}");
            assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
        }
        let (status, _, body) = http_request_with_token(addr, method, endpoint, Some("first-token")).await;
        assert_eq!(status, 200, "{method} {endpoint}: {body}");
    }
    for open in ["/livez", "/readyz", "/metrics", "/config"] {
        assert_eq!(http_request_with_token(addr, "GET", open, None).await.0, 200, "{open} stays open");
    }
    let (_, effective) = http_get(addr, "/config").await;
    assert!(effective.contains(&format!("token_file = \"{}\"", token_file.display())), "{effective}");
    assert!(!effective.contains("first-token"), "the token itself is never shown: {effective}");

    // A rotated token applies at the next reload; an unreadable token file rejects the reload whole.
    std::fs::write(&token_file, "second-token").unwrap();
    assert_eq!(http_request_with_token(addr, "POST", "/reload", Some("first-token")).await.0, 200);
    assert_eq!(http_request_with_token(addr, "POST", "/reload", Some("first-token")).await.0, 401);
    std::fs::remove_file(&token_file).unwrap();
    let (status, _, body) = http_request_with_token(addr, "POST", "/reload", Some("second-token")).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("cannot read admin.token_file"), "{body}");
    assert_eq!(http_request_with_token(addr, "POST", "/reload", Some("second-token")).await.0, 422, "token kept");
}

#[tokio::test]
async fn loopback_callers_need_no_token_without_require_token() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let (status, _, body) =
        http_request_with_token(edge.admin_addr, "GET", &format!("/debug/merchants/{KNOWN}"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http_request_with_token(edge.admin_addr, "POST", "/invalidate/898000000000007", None).await;
    assert_eq!(status, 200);
    assert_eq!(http_request_with_token(edge.admin_addr, "GET", "/nowhere", None).await.0, 404, "not a 401");
}
