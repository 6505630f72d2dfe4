//! The relay against a real core simulator and a real `nats-server` with JetStream: the stream holds
//! each core notice exactly once, in core order, whatever is killed or restarted.
mod common;
#[path = "common/nats.rs"]
mod nats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use common::{http_get, loopback, Core};
use merchant_edge::pb::core_admin_client::CoreAdminClient;
use merchant_edge::pb::{ChangeNotice, DeleteMerchantRequest, Merchant, SetFaultsRequest, UpsertMerchantRequest};
use merchant_edge::relay::{
    self, Entry, NatsAuth, Position, Relay, RelayConfig, RelayError, RelayMetrics, ResyncReason, StreamLimits,
};
use merchant_edge::relay::{Appended, Publisher, DEFAULT_STREAM, DEFAULT_SUBJECT};
use merchant_edge::sim::Simulator;
use nats::{eventually, read_stream, NatsServer, Tls, User, PATIENCE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A relay config for tests: fast reconnects and stall checks.
fn relay_config(core: &Core, nats: &NatsServer) -> RelayConfig {
    let mut config = RelayConfig::new(core.url(), nats.url());
    config.reconnect_initial_backoff = Duration::from_millis(10);
    config.reconnect_max_backoff = Duration::from_millis(200);
    config.core.stall_timeout = Duration::from_secs(2);
    config.nats.request_timeout = Duration::from_secs(1);
    config
}

/// A relay running on its own task; dropping or killing it aborts the task, as a crash would.
struct RunningRelay {
    task: JoinHandle<Result<(), RelayError>>,
    metrics: Arc<RelayMetrics>,
    admin: SocketAddr,
}

impl RunningRelay {
    async fn start(config: RelayConfig) -> Self {
        let relay = Relay::new(config, loopback().await);
        let (metrics, admin) = (relay.metrics(), relay.admin_addr().unwrap());
        let task = tokio::spawn(relay.run(std::future::pending()));
        Self { task, metrics, admin }
    }

    /// Aborts it mid-flight and waits until its task is gone.
    async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Commits `count` changes at the core: mostly onboardings, every fifth a delete of a base merchant.
/// Returns the last sequence.
async fn churn(core: &Core, first: u64, count: u64) -> u64 {
    churn_at(core.url(), first, count).await
}

async fn churn_at(url: String, first: u64, count: u64) -> u64 {
    let mut admin = CoreAdminClient::connect(url).await.expect("connect to core admin");
    let mut last = 0;
    for i in first..first + count {
        let response = if i % 5 == 4 {
            let request = DeleteMerchantRequest { merchant_id: format!("898{i:012}") };
            admin.delete_merchant(request).await
        } else {
            let merchant = Merchant {
                merchant_id: format!("8985{i:011}"),
                name: format!("Relay Test Shop {i}"),
                mcc: "5411".into(),
                city: "Suzhou".into(),
                ..Default::default()
            };
            admin.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await
        };
        last = response.expect("the core commits the change").into_inner().sequence;
    }
    last
}

/// The stream's last position on the relay's subject, if any.
async fn tail(js: &async_nats::jetstream::Context) -> Option<Position> {
    let stream = js.get_stream(DEFAULT_STREAM).await.ok()?;
    let last = stream.get_last_raw_message_by_subject(DEFAULT_SUBJECT).await.ok()?;
    Some(relay::decode(Some(&last.headers), &last.payload).expect("a relay message").position())
}

async fn wait_for_tail(js: &async_nats::jetstream::Context, incarnation: &str, sequence: u64) {
    let want = Position { incarnation: incarnation.to_owned(), sequence };
    eventually(&format!("the stream holds {incarnation}:{sequence}"), || async {
        (tail(js).await.as_ref() == Some(&want)).then_some(())
    })
    .await;
}

/// The (incarnation, sequence) of each notice, and where the markers are.
fn positions(entries: &[Entry]) -> Vec<(String, u64, Option<ResyncReason>)> {
    entries
        .iter()
        .map(|entry| {
            let Position { incarnation, sequence } = entry.position();
            let reason = match entry {
                Entry::Resync { reason, .. } => Some(*reason),
                Entry::Notice(_) => None,
            };
            (incarnation, sequence, reason)
        })
        .collect()
}

fn notices(incarnation: &str, sequences: std::ops::RangeInclusive<u64>) -> Vec<(String, u64, Option<ResyncReason>)> {
    sequences.map(|sequence| (incarnation.to_owned(), sequence, None)).collect()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_appends_each_notice_once_in_core_order_and_a_restarted_relay_resumes_from_the_stream() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;

    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let head = churn(&core, 0, 150).await;
    wait_for_tail(&js, &incarnation, head).await;
    // The NATS client reports "connected" through its event task, which may lag behind the first publish.
    eventually("/readyz says ready", || async { (http_get(relay.admin, "/readyz").await.0 == 200).then_some(()) })
        .await;
    assert_eq!(core.stats().await.watch_streams_open, 1, "one relay, one watch");

    let entries = read_stream(&js).await;
    assert_eq!(positions(&entries), notices(&incarnation, 1..=head));
    let Entry::Notice(first) = &entries[0] else { panic!("the first message is a notice") };
    assert_eq!(first.merchant_id, "898500000000000", "the payload is the core's notice");

    let (_, text) = http_get(relay.admin, "/metrics").await;
    assert_eq!(metric(&text, "merchant_edge_relay_published_sequence"), head as f64);
    assert_eq!(metric(&text, "merchant_edge_relay_publishes_total"), head as f64);
    assert_eq!(metric(&text, "merchant_edge_relay_lag_notices"), 0.0);
    relay.kill().await;

    // A new relay (no memory of the old one) resumes from the stream's tail: nothing repeated.
    let head = churn(&core, 150, 50).await;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head));
    assert_eq!(relay.metrics.publishes.get(), 50);
    eventually("the killed relay's watch is closed", || async {
        (core.stats().await.watch_streams_open == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_killed_again_and_again_during_churn_lose_and_repeat_nothing() {
    let core = Core::start(5_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let mut relays =
        [RunningRelay::start(relay_config(&core, &nats)).await, RunningRelay::start(relay_config(&core, &nats)).await];
    eventually("both relays watch the core", || async { (core.stats().await.watch_streams_open == 2).then_some(()) })
        .await;

    const CHANGES: u64 = 1_200;
    let churning = {
        let url = core.url();
        tokio::spawn(async move {
            // Paced in batches, so the kills below land while notices are flowing.
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut last = 0;
            for first in (0..CHANGES).step_by(5) {
                pace.tick().await;
                last = churn_at(url.clone(), first, 5).await;
            }
            last
        })
    };
    for round in 0..8 {
        let before = tail(&js).await.map_or(0, |p| p.sequence);
        eventually("the stream moves on", || async {
            (tail(&js).await.map_or(0, |p| p.sequence) >= before + 40 || churning.is_finished()).then_some(())
        })
        .await;
        let victim = round % 2;
        let fresh = RunningRelay::start(relay_config(&core, &nats)).await;
        std::mem::replace(&mut relays[victim], fresh).kill().await;
    }
    let head = churning.await.unwrap();
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head), "each notice once, in order");

    let refused: f64 = relays
        .iter()
        .map(|relay| {
            let text = relay.metrics.encode();
            metric(&text, "merchant_edge_relay_duplicates_refused_total{by=\"msg_id\"}")
                + metric(&text, "merchant_edge_relay_duplicates_refused_total{by=\"expected_last\"}")
        })
        .sum();
    let skipped: u64 = relays.iter().map(|r| r.metrics.skipped.get()).sum();
    assert!(refused + skipped as f64 > 0.0, "two hot relays race (refused {refused}, skipped {skipped})");
    eventually("exactly the two live relays watch the core", || async {
        (core.stats().await.watch_streams_open == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_server_loses_nothing_and_the_relays_resume() {
    let core = Core::start(1_000).await;
    let mut nats = NatsServer::start().await;
    let incarnation = core.stats().await.incarnation;
    let relays =
        [RunningRelay::start(relay_config(&core, &nats)).await, RunningRelay::start(relay_config(&core, &nats)).await];
    let js = nats.jetstream().await;
    let head = churn(&core, 0, 100).await;
    wait_for_tail(&js, &incarnation, head).await;

    nats.stop().await;
    // Changes committed while the broker is down reach the stream after it is back.
    churn(&core, 100, 50).await;
    nats.restart().await;
    let head = churn(&core, 150, 50).await;
    let js = nats.jetstream().await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head));
    // The other relay may have relayed everything while this one's client still waits to reconnect.
    for relay in &relays {
        eventually("the relay reconnected to NATS and is ready again", || async {
            let text = relay.metrics.encode();
            let reconnected = metric(&text, "merchant_edge_relay_reconnects_total{side=\"nats\"}") >= 1.0;
            (reconnected && relay.metrics.readiness().is_ok()).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_restarted_with_a_new_incarnation_continues_in_the_stream_after_a_marker() {
    let listener = loopback().await;
    let addr = listener.local_addr().unwrap();
    let mut core = Core::start_with(Simulator::new(1_000, 10_000), listener).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let old = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let old_head = churn(&core, 0, 50).await;
    wait_for_tail(&js, &old, old_head).await;

    core.stop().await;
    let listener = eventually("the core's port is free again", || async { TcpListener::bind(addr).await.ok() }).await;
    let core = Core::start_with(Simulator::new(1_000, 10_000), listener).await;
    let new = core.stats().await.incarnation;
    assert_ne!(new, old);
    let new_head = churn(&core, 0, 30).await;
    wait_for_tail(&js, &new, new_head).await;

    let mut expected = notices(&old, 1..=old_head);
    expected.push((new.clone(), 0, Some(ResyncReason::NewIncarnation)));
    expected.extend(notices(&new, 1..=new_head));
    assert_eq!(positions(&read_stream(&js).await), expected);
    let text = relay.metrics.encode();
    assert_eq!(metric(&text, "merchant_edge_relay_history_breaks_total{reason=\"new_incarnation\"}"), 1.0);
    eventually("the relay watches the new core", || async {
        (core.stats().await.watch_streams_open == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_trimmed_past_the_stream_gets_a_too_old_marker_and_the_stream_goes_on_from_the_head() {
    // The core keeps only 20 changes.
    let core = Core::start_with(Simulator::new(1_000, 20), loopback().await).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let first = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, first).await;
    relay.kill().await;

    let trimmed_head = churn(&core, 10, 50).await;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    wait_for_tail(&js, &incarnation, trimmed_head).await;
    let head = churn(&core, 60, 5).await;
    wait_for_tail(&js, &incarnation, head).await;

    let mut expected = notices(&incarnation, 1..=first);
    expected.push((incarnation.clone(), trimmed_head, Some(ResyncReason::TooOld)));
    expected.extend(notices(&incarnation, trimmed_head + 1..=head));
    assert_eq!(positions(&read_stream(&js).await), expected);
    let text = relay.metrics.encode();
    assert_eq!(metric(&text, "merchant_edge_relay_resync_markers_total{reason=\"too_old\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_logs_in_with_user_and_password_and_never_shows_the_password() {
    let user = User { name: "relay".into(), password: "s3cret-pw".into() };
    let core = Core::start(1_000).await;
    let nats = NatsServer::start_with_user(&user).await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let secrets = common::Scratch::new(&format!("relay-auth-{}", nats.port));

    let wrong = secrets.write("wrong", "not-the-password\n");
    let mut config = relay_config(&core, &nats);
    config.nats.auth = relay::nats_auth(None, Some(user.name.clone()), Some(wrong)).unwrap();
    let refused = RunningRelay::start(config).await;
    let body = eventually("the refused login shows on /readyz", || async {
        let (code, body) = http_get(refused.admin, "/readyz").await;
        (code == 503 && body.to_lowercase().contains("authorization")).then_some(body)
    })
    .await;
    assert!(!body.contains("not-the-password"), "{body}");
    refused.kill().await;

    let right = secrets.write("right", &format!("{}\n", user.password));
    let mut config = relay_config(&core, &nats);
    config.nats.auth = relay::nats_auth(None, Some(user.name.clone()), Some(right)).unwrap();
    assert!(matches!(&config.nats.auth, NatsAuth::UserPassword { password, .. } if password.expose() == "s3cret-pw"));
    let relay = RunningRelay::start(config).await;
    let head = churn(&core, 0, 20).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head));
    let body = eventually("/readyz says ready", || async {
        let (code, body) = http_get(relay.admin, "/readyz").await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(!format!("{body}{}", relay.metrics.encode()).contains(&user.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_an_append_onto_a_stale_tail_and_acknowledges_a_repeat_without_storing_it() {
    // What the relay's guarantees rest on, checked against the server the tests (and CI) run.
    let core = Core::start(10).await;
    let nats = NatsServer::start().await;
    let config = relay_config(&core, &nats);
    let publisher = Publisher::open(nats.client().await, &config).await.expect("the stream is created");
    let notice = |sequence| ChangeNotice { sequence, incarnation: "inc".into(), ..Default::default() };

    let Appended::Stored(first) = publisher.append_notice(None, &notice(1)).await.unwrap() else {
        panic!("the first append onto an empty subject is stored")
    };
    assert_eq!(publisher.append_notice(None, &notice(2)).await.unwrap(), Appended::TailMoved, "0 = empty only");
    let Appended::Stored(second) = publisher.append_notice(Some(&first), &notice(2)).await.unwrap() else {
        panic!("an append onto the real tail is stored")
    };
    assert_eq!(publisher.append_notice(Some(&first), &notice(3)).await.unwrap(), Appended::TailMoved);
    assert_eq!(
        publisher.append_notice(Some(&first), &notice(2)).await.unwrap(),
        Appended::Duplicate(second.clone()),
        "a repeat within the duplicate window is acknowledged with the original's sequence"
    );
    assert_eq!(publisher.tail().await.unwrap(), Some(second));

    let js = nats.jetstream().await;
    let mut stream = js.get_stream(DEFAULT_STREAM).await.unwrap();
    let settings = stream.info().await.unwrap().config.clone();
    let limits = StreamLimits::default();
    assert_eq!(settings.subjects, vec![DEFAULT_SUBJECT.to_owned()]);
    assert_eq!(settings.storage, StorageType::File);
    assert_eq!(
        (settings.max_age, settings.max_messages, settings.duplicate_window),
        (limits.max_age, limits.max_messages, limits.duplicate_window)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_stream_is_used_as_it_is_and_one_without_the_subject_stops_the_relay() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let operator = StreamConfig {
        name: DEFAULT_STREAM.into(),
        subjects: vec!["merchant.>".into()],
        max_age: Duration::from_secs(3600),
        max_messages: 5_000,
        ..Default::default()
    };
    js.create_stream(operator.clone()).await.unwrap();
    let incarnation = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let head = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, head).await;
    let settings = js.get_stream(DEFAULT_STREAM).await.unwrap().info().await.unwrap().config.clone();
    assert_eq!((settings.max_age, settings.max_messages), (operator.max_age, operator.max_messages));
    relay.kill().await;

    let mut config = relay_config(&core, &nats);
    config.nats.subject = "payments.changes".into();
    let relay = Relay::new(config, loopback().await);
    let stopped = tokio::time::timeout(PATIENCE, relay.run(std::future::pending())).await.expect("the relay stops");
    let error = stopped.expect_err("a stream that does not take the subject is the operator's to fix");
    assert!(matches!(error, RelayError::SubjectNotInStream { .. }), "{error}");
    assert!(error.to_string().contains("--subject"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_repeats_and_dropped_watches_at_the_core_leave_the_stream_contiguous() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let head = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, head).await;

    core.set_faults(SetFaultsRequest { skip_notices: 3, ..Default::default() }).await;
    let head = churn(&core, 10, 10).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert!(relay.metrics.gaps.get() >= 1);

    core.set_faults(SetFaultsRequest { duplicate_notices: true, ..Default::default() }).await;
    let head = churn(&core, 20, 10).await;
    wait_for_tail(&js, &incarnation, head).await;
    // The repeat of the last notice may arrive just after the tail shows the notice itself.
    eventually("the core's repeats are skipped", || async { (relay.metrics.skipped.get() >= 10).then_some(()) }).await;

    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    let dropped_head = churn(&core, 30, 10).await;
    eventually("the relay sees the watch dropped", || async {
        (relay.metrics.core_connected.get() == 0).then_some(())
    })
    .await;
    core.set_faults(SetFaultsRequest::default()).await;
    wait_for_tail(&js, &incarnation, dropped_head).await;

    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=dropped_head));
    let text = relay.metrics.encode();
    assert!(metric(&text, "merchant_edge_relay_reconnects_total{side=\"core\"}") >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_stops_cleanly_when_its_shutdown_future_completes() {
    let core = Core::start(10).await;
    let nats = NatsServer::start().await;
    let relay = Relay::new(relay_config(&core, &nats), loopback().await);
    let metrics = relay.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async { drop(stopped.await) }));
    eventually("the relay is ready", || async { metrics.readiness().ok() }).await;
    stop.send(()).unwrap();
    let result = tokio::time::timeout(PATIENCE, task).await.expect("the relay stops").unwrap();
    assert!(result.is_ok(), "{result:?}");
    eventually("its watch is closed", || async { (core.stats().await.watch_streams_open == 0).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_emptied_by_the_streams_limits_goes_on_from_the_core_head_after_a_too_old_marker() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let before = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, before).await;

    // A purge empties the subject as max_age or max_messages would: where the stream was is gone.
    js.get_stream(DEFAULT_STREAM).await.unwrap().purge().await.unwrap();
    let head = churn(&core, 10, 5).await;
    wait_for_tail(&js, &incarnation, head).await;
    let entries = positions(&read_stream(&js).await);
    let (marker_incarnation, resumed_at, reason) = entries[0].clone();
    assert_eq!(
        (marker_incarnation.as_str(), reason),
        (incarnation.as_str(), Some(ResyncReason::TooOld)),
        "{entries:?}"
    );
    assert!((before..=head).contains(&resumed_at), "{entries:?}");
    assert_eq!(entries[1..], notices(&incarnation, resumed_at + 1..=head)[..]);
    let text = relay.metrics.encode();
    assert_eq!(metric(&text, "merchant_edge_relay_resync_markers_total{reason=\"too_old\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_created_again_with_the_cores_kept_history() {
    let core = Core::start(1_000).await;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let relay = RunningRelay::start(relay_config(&core, &nats)).await;
    let head = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, head).await;

    js.delete_stream(DEFAULT_STREAM).await.unwrap();
    let head = churn(&core, 10, 5).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head));
    eventually("the relay is ready again", || async { relay.metrics.readiness().ok() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_command_relays_with_a_password_file_and_exits_cleanly_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let user = User { name: "relay".into(), password: "pw-from-a-file".into() };
    let core = Core::start(1_000).await;
    let nats = NatsServer::start_with_user(&user).await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;
    let secrets = common::Scratch::new(&format!("relay-command-{}", nats.port));
    let password_file = secrets.write("password", &format!("{}\n", user.password));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .args(["relay", "--core", &core.url(), "--nats", &nats.url(), "--admin", "127.0.0.1:0"])
        .args(["--nats-user", &user.name, "--nats-password-file"])
        .arg(&password_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start merchant-edge relay");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(PATIENCE, stdout.next_line()).await.expect("a banner").unwrap().unwrap();
    // "merchant-edge relay: admin http://127.0.0.1:PORT (/livez, /readyz, /metrics)"
    let admin: SocketAddr = banner.split_whitespace().nth(3).unwrap().trim_start_matches("http://").parse().unwrap();
    eventually("the relay process is ready", || async { (http_get(admin, "/readyz").await.0 == 200).then_some(()) })
        .await;
    let head = churn(&core, 0, 5).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(core.stats().await.watch_streams_open, 1);

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    let status = tokio::time::timeout(PATIENCE, async {
        pipe.read_to_string(&mut stderr).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("the relay exits after SIGTERM");
    assert!(status.success(), "{status}\n{stderr}");
    assert!(!format!("{banner}{stderr}").contains(&user.password), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_talks_tls_to_a_nats_server_it_trusts_through_the_given_ca() {
    let pki = common::Pki::new("relay-nats-tls");
    let (cert, key) = pki.issue("nats", &["localhost", "127.0.0.1"]);
    let tls = Tls { cert, key, ca: pki.scratch.0.join("ca.pem") };
    let core = Core::start(1_000).await;
    let nats = NatsServer::start_with_tls(&tls).await;
    let js = nats.jetstream().await;
    let incarnation = core.stats().await.incarnation;

    let mut config = relay_config(&core, &nats);
    config.nats.tls_ca = Some(tls.ca.clone());
    let relay = RunningRelay::start(config).await;
    let head = churn(&core, 0, 10).await;
    wait_for_tail(&js, &incarnation, head).await;
    assert_eq!(positions(&read_stream(&js).await), notices(&incarnation, 1..=head));
    eventually("the relay is ready", || async { relay.metrics.readiness().ok() }).await;

    let mut config = relay_config(&core, &nats);
    config.nats.tls_ca = Some(pki.scratch.0.join("missing-ca.pem"));
    let error = Relay::new(config, loopback().await).run(std::future::pending()).await.unwrap_err();
    assert!(matches!(error, RelayError::TlsCa(_)), "{error}");
    assert!(error.to_string().contains("--nats-tls-ca"), "{error}");
}
