//! "Why was this merchant not found?": each verdict of `GET /debug/merchants/{id}` reproduced through
//! the simulator, with the reason code a terminal gets for the same ID; and `POST /invalidate/{id}`.
mod common;

use std::time::Duration;

use common::*;
use merchant_edge::pb::{Merchant, MerchantStatus, Reason, SetFaultsRequest, Source, UpsertMerchantRequest};
use merchant_edge::server::RunningEdge;
use tonic::Code;

async fn explain(edge: &RunningEdge, id: &str) -> serde_json::Value {
    let (status, body) = http_get(edge.admin_addr, &format!("/debug/merchants/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn verdict(explanation: &serde_json::Value) -> &str {
    explanation["verdict"].as_str().unwrap()
}

fn reason(explanation: &serde_json::Value) -> &str {
    explanation["reason"].as_str().unwrap()
}

/// An edge holding every merchant of the core (warm start), so typo suggestions can find them.
async fn warm_edge(core: &Core) -> RunningEdge {
    let mut config = edge_config(&core.url());
    config.feed.warm_start = true;
    start_following_edge(config).await
}

fn error_reason(status: &tonic::Status) -> &str {
    status.metadata().get("merchant-edge-reason").unwrap().to_str().unwrap()
}

#[tokio::test]
async fn a_format_error_names_the_rule_and_suggests_the_known_id() {
    let core = Core::start(1000).await;
    let edge = warm_edge(&core).await;
    let explanation = explain(&edge, "89800000000042").await;
    assert!(verdict(&explanation).starts_with("format error: merchant_id has 14 characters"), "{explanation}");
    // With merchants 0..999 known, several are one slip from this ID; the intended one is first.
    assert!(verdict(&explanation).contains("did you mean one of 898000000000042, "), "{explanation}");
    assert_eq!(explanation["id"]["did_you_mean"][0], KNOWN);
    assert_eq!(reason(&explanation), "REASON_ID_LENGTH");
    assert!(explanation["id"]["suggestion_candidates"].as_u64().unwrap() > 100);
    let status = lookup(&mut client(&edge).await, "89800000000042").await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status)), (Code::InvalidArgument, "REASON_ID_LENGTH"));
    let status = lookup(&mut client(&edge).await, "89800000000004O").await.unwrap_err();
    assert_eq!(error_reason(&status), "REASON_ID_CHARSET");
}

#[tokio::test]
async fn a_typo_of_a_known_id_is_unknown_to_the_core_with_a_suggestion() {
    let core = Core::start(1000).await;
    let edge = warm_edge(&core).await;
    let typo = "898000000001042";
    let explanation = explain(&edge, typo).await;
    assert_eq!(explanation["core"]["found"], false);
    assert!(
        verdict(&explanation).starts_with("unknown to the core as of sequence 0: looks like a typo"),
        "{explanation}"
    );
    assert!(verdict(&explanation).ends_with("did you mean one of 898000000000042, 898000000000142?"), "{explanation}");
    assert_eq!(reason(&explanation), "REASON_UNKNOWN_TO_CORE");
    let answer = lookup(&mut client(&edge).await, typo).await.unwrap();
    assert_eq!((answer.found, answer.reason), (false, Reason::UnknownToCore as i32));
}

#[tokio::test]
async fn merchants_that_are_not_active_are_explained_by_their_status() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    for (id, reason_code, expected) in [
        ("898000000000097", Reason::PendingReview, "status PENDING_REVIEW: qualification not approved yet"),
        ("898000000000098", Reason::Suspended, "status SUSPENDED: suspended by the bank"),
        ("898000000000099", Reason::Closed, "status CLOSED"),
    ] {
        let answer = lookup(&mut client, id).await.unwrap();
        assert!(answer.found);
        assert_eq!(answer.reason, reason_code as i32, "{id}");
        let explanation = explain(&edge, id).await;
        assert!(verdict(&explanation).contains(expected), "{explanation}");
        assert_eq!(reason(&explanation), reason_code.as_str_name());
        let status = format!("MERCHANT_STATUS_{}", reason_code.as_str_name().trim_start_matches("REASON_"));
        assert_eq!(explanation["positive_entry"]["status"], status.as_str());
    }
    assert_eq!(
        lookup(&mut client, KNOWN).await.unwrap().reason,
        Reason::Unspecified as i32,
        "ACTIVE: nothing to explain"
    );
}

#[tokio::test]
async fn a_cached_not_found_older_than_the_core_with_the_feed_held_down_is_a_stale_negative_entry() {
    let core = Core::start(1000).await;
    let mut config = edge_config(&core.url());
    config.cache.negative_ttl = Duration::from_secs(120);
    // Trusted through the outage, so terminals really get the stale not-found the verdict describes.
    config.feed.negative_ttl_when_down = Duration::from_secs(120);
    let edge = start_following_edge(config).await;
    let new = "898000000005000";
    assert!(!lookup(&mut client(&edge).await, new).await.unwrap().found);
    core.set_faults(SetFaultsRequest { drop_streams: true, ..Default::default() }).await;
    wait_until("the feed is down", || async { !edge.feed.is_connected() }).await;
    let merchant = Merchant {
        merchant_id: new.into(),
        name: "Onboarded while the feed was down".into(),
        status: MerchantStatus::Active as i32,
        ..Default::default()
    };
    core.admin().await.upsert_merchant(UpsertMerchantRequest { merchant: Some(merchant) }).await.unwrap();
    advance_clock(Duration::from_secs(42)).await;
    let explanation = explain(&edge, new).await;
    let text = verdict(&explanation);
    assert!(text.starts_with("stale negative entry: a cached not-found (as of sequence 0"), "{explanation}");
    assert!(
        text.contains("is older than the core's answer (merchant 898000000005000 exists, version 1, as of sequence 1)")
    );
    assert!(text.contains("the feed has been down for 42 s"), "{text}");
    assert_eq!(explanation["negative_entry"]["learned_from"], "a GetMerchant answer");
    assert_eq!(explanation["negative_entry"]["answered_from"], true);
    assert_eq!(explanation["feed"]["connected"], false);
    assert_eq!(reason(&explanation), "REASON_UNKNOWN_TO_CORE");
    let answer = lookup(&mut client(&edge).await, new).await.unwrap();
    assert_eq!((answer.found, answer.reason), (false, Reason::UnknownToCore as i32), "what terminals get meanwhile");
}

#[tokio::test]
async fn an_unreachable_core_is_explained_and_never_reported_as_not_found() {
    let mut core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    lookup(&mut client, KNOWN).await.unwrap();
    core.stop().await;
    let uncached = "898000000000007";
    let explanation = explain(&edge, uncached).await;
    assert!(verdict(&explanation).starts_with("core unreachable: the bank core"), "{explanation}");
    assert!(verdict(&explanation).contains("terminals get UNAVAILABLE (never \"not found\")"), "{explanation}");
    assert_eq!(reason(&explanation), "REASON_CORE_UNREACHABLE");
    let status = lookup(&mut client, uncached).await.unwrap_err();
    assert_eq!((status.code(), error_reason(&status)), (Code::Unavailable, "REASON_CORE_UNREACHABLE"));
    let cached = explain(&edge, KNOWN).await;
    assert!(verdict(&cached).contains("terminals are answered from the cached merchant"), "{cached}");
}

#[tokio::test]
async fn invalidating_an_id_drops_its_entries_and_the_next_lookup_asks_the_core() {
    let core = Core::start(1000).await;
    let edge = start_following_edge(edge_config(&core.url())).await;
    let mut client = client(&edge).await;
    lookup(&mut client, UNKNOWN).await.unwrap();
    assert_eq!(source(&lookup(&mut client, UNKNOWN).await.unwrap()), Source::NegativeCache);
    let (status, body) = http_request(edge.admin_addr, "POST", &format!("/invalidate/{UNKNOWN}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(source(&lookup(&mut client, UNKNOWN).await.unwrap()), Source::Upstream);
    assert_eq!(edge.metrics.cache.invalidations.get(), 1);
    let (status, body) = http_request(edge.admin_addr, "POST", "/invalidate/12345").await;
    assert_eq!(status, 400, "a malformed ID changes nothing: {body}");
    assert!(body.contains("rule `length`"), "{body}");
}

/// Runs the real `merchant-edge explain` against `edge`: (exit code, stdout, stderr).
async fn explain_command(edge: &RunningEdge, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_merchant-edge"))
        .arg("explain")
        .args(args)
        .args(["--admin", &edge.admin_addr.to_string()])
        .output()
        .await
        .expect("run merchant-edge explain");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

/// Where a checklist line's sentence starts: after the mark, the step's name and the gap of spaces.
fn sentence_column(line: &str) -> usize {
    let named = &line["[ ok ] ".len()..];
    let gap = named.find("  ").unwrap_or_else(|| panic!("no gap after the step name: {line:?}"));
    let spaces = named[gap..].len() - named[gap..].trim_start().len();
    "[ ok ] ".len() + gap + spaces
}

#[tokio::test]
async fn the_explain_command_prints_an_aligned_checklist_with_the_verdict_last() {
    let core = Core::start(1000).await;
    let edge = warm_edge(&core).await;
    let (code, stdout, stderr) = explain_command(&edge, &["89800000000042"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "six steps and the verdict:\n{stdout}");
    let (steps, verdict) = lines.split_at(6);
    for line in steps {
        assert!(["[ ok ] ", "[FAIL] ", "[ ?? ] "].iter().any(|mark| line.starts_with(mark)), "{line:?}");
    }
    let columns: Vec<usize> = steps.iter().map(|line| sentence_column(line)).collect();
    assert!(columns.iter().all(|column| *column == columns[0]), "sentences not aligned:\n{stdout}");
    assert!(steps[0].starts_with("[FAIL] merchant ID"), "{stdout}");
    assert!(steps[0].contains("has 14 characters") && steps[0].contains("did you mean one of 898000000000042"));
    assert!(steps[1].starts_with("[ ?? ] "), "stores are not checked for a malformed ID:\n{stdout}");
    assert!(steps[5].contains("Merchant ID has the wrong length"), "{stdout}");
    assert!(verdict[0].starts_with("verdict: format error: merchant_id has 14 characters"), "{stdout}");
    assert!(!stdout.contains('{'), "no raw JSON in the checklist:\n{stdout}");

    let (code, stdout, stderr) = explain_command(&edge, &[KNOWN]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[..6].iter().all(|line| line.starts_with("[ ok ] ")), "an ACTIVE cached merchant:\n{stdout}");
    assert!(lines[6].starts_with("verdict: merchant exists and is ACTIVE"), "{stdout}");
}

#[tokio::test]
async fn the_explain_command_with_json_prints_the_admin_report_as_one_document() {
    let core = Core::start(1000).await;
    let edge = warm_edge(&core).await;
    let (code, stdout, stderr) = explain_command(&edge, &[UNKNOWN, "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    let direct = explain(&edge, UNKNOWN).await;
    let keys = |value: &serde_json::Value| value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&report), keys(&direct), "the admin endpoint's report, as it is");
    assert_eq!(report["id"]["normalised"], UNKNOWN);
    assert_eq!((reason(&report), verdict(&report)), (reason(&direct), verdict(&direct)));
}
