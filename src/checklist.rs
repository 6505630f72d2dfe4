//! `merchant-edge explain` for people: the admin endpoint's report (`GET /debug/merchants/{id}`) as a
//! checklist a support desk can read out, one aligned line per step with a mark (`[ ok ]`, `[FAIL]`,
//! `[ ?? ]`) and a sentence, and the verdict last. It reads the report as JSON rather than as the
//! `explain` module's types, so a field added to the report does not break the printer, and a field
//! it does not find is printed as unknown instead of failing.
use serde_json::Value;

use crate::pb::Reason;

/// How a step of the checklist came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing wrong here.
    Ok,
    /// This step shows what is wrong.
    Problem,
    /// Not checked, or the answer needed for it is missing.
    Unknown,
}

impl Mark {
    /// The mark as printed; every mark has the same width, so the sentences line up.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "[ ok ]",
            Self::Problem => "[FAIL]",
            Self::Unknown => "[ ?? ]",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub mark: Mark,
    /// What was checked, a few words.
    pub what: &'static str,
    /// What was found, as a sentence.
    pub found: String,
}

/// The steps of a report, in the field guide's order: the ID, the two stores, the feed, the core asked
/// now, and what a terminal would get.
pub fn steps(report: &Value) -> Vec<Step> {
    let checked = report["id"]["normalised"].is_string();
    let core = core_found(report);
    let mut steps = vec![
        id_step(&report["id"]),
        if checked { positive_step(&report["positive_entry"]) } else { not_checked("cached merchant") },
        if checked { negative_step(&report["negative_entry"], core) } else { not_checked("cached not-found") },
        feed_step(&report["feed"]),
        if checked { core_step(&report["core"]) } else { not_checked("bank core now") },
    ];
    // Only when a token was asked about (`--min-sequence`): the applied sequence against it.
    if report["token"].is_object() {
        steps.push(token_step(&report["token"]));
    }
    steps.push(reason_step(report["reason"].as_str()));
    steps
}

fn token_step(token: &Value) -> Step {
    let what = "token";
    let verdict = token["verdict"].as_str().unwrap_or("no verdict reported");
    let found = format!("min_sequence {}: {verdict}", sequence(&token["min_sequence"]));
    match token["applied"].as_bool() {
        Some(true) => Step { mark: Mark::Ok, what, found },
        Some(false) => Step { mark: Mark::Problem, what, found },
        None => Step { mark: Mark::Unknown, what, found },
    }
}

/// The whole text: one line per step, then the verdict.
pub fn render(report: &Value) -> String {
    let steps = steps(report);
    let width = steps.iter().map(|step| step.what.len()).max().unwrap_or(0);
    let mut text = String::new();
    for step in &steps {
        text.push_str(&format!("{} {:<width$}  {}\n", step.mark.label(), step.what, step.found));
    }
    let verdict = report["verdict"].as_str().unwrap_or("none given (the admin endpoint sent no verdict)");
    text.push_str(&format!("verdict: {verdict}\n"));
    text
}

fn not_checked(what: &'static str) -> Step {
    Step { mark: Mark::Unknown, what, found: "not checked: the ID breaks the ID rule".into() }
}

/// Whether the core, asked now, knows the ID (`None` when it was not asked or did not answer).
fn core_found(report: &Value) -> Option<bool> {
    report["core"]["found"].as_bool()
}

/// `MERCHANT_STATUS_PENDING_REVIEW` → `PENDING_REVIEW`.
fn status(value: &Value) -> &str {
    value.as_str().map_or("unknown status", |status| status.trim_start_matches("MERCHANT_STATUS_"))
}

fn seconds(millis: &Value) -> String {
    match millis.as_f64() {
        Some(millis) => format!("{:.1} s", millis / 1000.0),
        None => "? s".into(),
    }
}

fn sequence(value: &Value) -> String {
    value.as_u64().map_or_else(|| "?".into(), |sequence| sequence.to_string())
}

fn id_step(id: &Value) -> Step {
    let typed = id["typed"].as_str().unwrap_or_default();
    let suggestions: Vec<&str> =
        id["did_you_mean"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let did_you_mean = match suggestions.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; did you mean one of {}?", many.join(", ")),
    };
    match (id["normalised"].as_str(), id["rule_broken"].as_str()) {
        (Some(normalised), _) if normalised == typed => {
            Step { mark: Mark::Ok, what: "merchant ID", found: format!("{normalised} has the right form") }
        }
        (Some(normalised), _) => Step {
            mark: Mark::Ok,
            what: "merchant ID",
            found: format!("{typed:?} as typed is read as {normalised}, which has the right form"),
        },
        (None, Some(rule)) => Step {
            mark: Mark::Problem,
            what: "merchant ID",
            found: format!("{typed:?} is mistyped: {rule}{did_you_mean}"),
        },
        (None, None) => Step { mark: Mark::Unknown, what: "merchant ID", found: format!("{typed:?}: not reported") },
    }
}

fn positive_step(entry: &Value) -> Step {
    let what = "cached merchant";
    if entry.is_null() {
        return Step { mark: Mark::Ok, what, found: "none held: the next lookup asks the bank core".into() };
    }
    let described = format!(
        "version {}, {}, as of sequence {}, {} old",
        sequence(&entry["version"]),
        status(&entry["status"]),
        sequence(&entry["as_of_sequence"]),
        seconds(&entry["age_ms"])
    );
    match entry["ttl_left_ms"].as_i64() {
        Some(left) if left > 0 => {
            let mark = if status(&entry["status"]) == "ACTIVE" { Mark::Ok } else { Mark::Problem };
            Step { mark, what, found: format!("{described}, {} of its TTL left", seconds(&left.into())) }
        }
        Some(left) => Step {
            mark: Mark::Problem,
            what,
            found: format!(
                "{described}, past its TTL by {}: answered only as stale while the core cannot answer",
                seconds(&(-left).into())
            ),
        },
        None => Step { mark: Mark::Unknown, what, found: described },
    }
}

fn negative_step(entry: &Value, core_found: Option<bool>) -> Step {
    let what = "cached not-found";
    if entry.is_null() {
        return Step { mark: Mark::Ok, what, found: "none held".into() };
    }
    let answered = entry["answered_from"].as_bool();
    let described = format!(
        "one held, as of sequence {}, {} old, learned from {}",
        sequence(&entry["as_of_sequence"]),
        seconds(&entry["age_ms"]),
        entry["learned_from"].as_str().unwrap_or("an unknown source")
    );
    // A cached not-found is wrong only when lookups are answered from it and the core knows the merchant.
    match (answered, core_found) {
        (Some(false), _) => Step {
            mark: Mark::Ok,
            what,
            found: format!("{described}; not answered from now (the feed is down), lookups ask the core"),
        },
        (Some(true), Some(false)) => {
            Step { mark: Mark::Ok, what, found: format!("{described}; the core agrees the ID is unknown") }
        }
        (Some(true), Some(true)) => Step {
            mark: Mark::Problem,
            what,
            found: format!("{described}; terminals are told \"not found\" although the core knows the merchant"),
        },
        _ => Step { mark: Mark::Unknown, what, found: format!("{described}; cannot be checked against the core now") },
    }
}

fn feed_step(feed: &Value) -> Step {
    let what = "change feed";
    let lag = feed["lag_notices"].as_u64().unwrap_or_default();
    let lag_seconds = feed["lag_seconds"].as_f64().unwrap_or_default();
    let resync = match feed["last_resync"].as_str() {
        Some(resync) => format!("; last resync {resync}"),
        None => String::new(),
    };
    let applied = sequence(&feed["applied_sequence"]);
    match feed["connected"].as_bool() {
        Some(true) if lag == 0 => {
            Step { mark: Mark::Ok, what, found: format!("connected and caught up at sequence {applied}{resync}") }
        }
        Some(true) => Step {
            mark: Mark::Problem,
            what,
            found: format!(
                "connected but {} ({lag_seconds:.1} s) behind the core (applied {applied}, core at {}){resync}",
                crate::text::count(lag, "notice", "notices"),
                sequence(&feed["core_head_sequence"])
            ),
        },
        Some(false) => Step {
            mark: Mark::Problem,
            what,
            found: format!(
                "DOWN for {lag_seconds:.0} s: changes at the bank do not reach this edge (applied sequence {applied}){resync}"
            ),
        },
        None => Step { mark: Mark::Unknown, what, found: "not reported".into() },
    }
}

fn core_step(core: &Value) -> Step {
    let what = "bank core now";
    let latency = match core["latency_ms"].as_f64() {
        Some(ms) => format!(" ({ms:.1} ms)"),
        None => String::new(),
    };
    if let Some(error) = core["error"].as_str() {
        return Step { mark: Mark::Problem, what, found: format!("did not answer: {error}{latency}") };
    }
    let as_of = sequence(&core["as_of_sequence"]);
    match core["found"].as_bool() {
        Some(true) => {
            let status = status(&core["status"]);
            let mark = if status == "ACTIVE" { Mark::Ok } else { Mark::Problem };
            let found = format!(
                "knows the merchant: version {}, {status}, as of sequence {as_of}{latency}",
                sequence(&core["version"])
            );
            Step { mark, what, found }
        }
        Some(false) => {
            Step { mark: Mark::Problem, what, found: format!("does not know this ID as of sequence {as_of}{latency}") }
        }
        None => Step { mark: Mark::Unknown, what, found: format!("no answer reported{latency}") },
    }
}

/// What a terminal shows for each reason (the `Show:` lines of `lookup.proto`).
fn terminal_shows(reason: Reason) -> &'static str {
    match reason {
        Reason::Unspecified => "the merchant, answered normally",
        Reason::UnknownToCore => {
            "\"Merchant not registered with the bank. Check the merchant ID configured on this terminal.\""
        }
        Reason::PendingReview => {
            "\"Merchant registration is awaiting the bank's approval. Card payments start once approved.\""
        }
        Reason::Suspended => "\"Merchant suspended by the bank. Contact your bank.\"",
        Reason::Closed => "\"Merchant account closed. Contact your bank.\"",
        Reason::IdEmpty => "\"No merchant ID is configured on this terminal.\"",
        Reason::IdLength => "\"Merchant ID has the wrong length. Check the ID configured on this terminal.\"",
        Reason::IdCharset => "\"Merchant ID contains an invalid character. Check the ID configured on this terminal.\"",
        Reason::CoreUnreachable => "\"Cannot reach the bank right now. Try again in a moment.\"",
        Reason::CoreBusy => "\"The bank is busy. Try again in a moment.\"",
        Reason::StatusUnknown => "\"Merchant status cannot be verified. Contact your bank.\"",
        Reason::SequenceAhead => {
            "\"Merchant data is being updated. Try again in a moment; if this persists, contact your bank.\""
        }
    }
}

fn reason_step(reason: Option<&str>) -> Step {
    let what = "terminal shows";
    match reason.and_then(Reason::from_str_name) {
        Some(Reason::Unspecified) => Step { mark: Mark::Ok, what, found: terminal_shows(Reason::Unspecified).into() },
        Some(known) => {
            Step { mark: Mark::Problem, what, found: format!("{} ({})", terminal_shows(known), known.as_str_name()) }
        }
        None => Step {
            mark: Mark::Unknown,
            what,
            found: format!("reason {} (unknown to this client)", reason.unwrap_or("missing")),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn format_error() -> Value {
        json!({
            "id": {"typed": "89800000000042", "normalised": null,
                   "rule_broken": "merchant_id has 14 characters after trimming whitespace; rule `length`: it must be exactly 15 ASCII digits 0-9",
                   "did_you_mean": ["898000000000042"], "suggestion_candidates": 140, "suggestion_micros": 120},
            "positive_entry": null, "negative_entry": null,
            "feed": {"connected": true, "applied_sequence": 7, "core_head_sequence": 7, "lag_notices": 0,
                     "lag_seconds": 0.0, "last_resync": null},
            "core": {"found": null, "version": null, "status": null, "as_of_sequence": null, "latency_ms": 0.0, "error": null},
            "reason": "REASON_ID_LENGTH",
            "verdict": "format error: merchant_id has 14 characters ...; did you mean 898000000000042?"
        })
    }

    #[test]
    fn a_token_asked_about_gets_its_own_step_before_what_the_terminal_shows() {
        let mut report = format_error();
        assert!(steps(&report).iter().all(|step| step.what != "token"), "no token, no step");
        report["token"] = json!({"min_sequence": 9, "applied_sequence": 7, "core_head_sequence": 7, "applied": false,
                                 "verdict": "applied sequence 7 is 2 changes behind the token 9: ..."});
        let steps = steps(&report);
        let token = &steps[steps.len() - 2];
        assert_eq!((token.mark, token.what), (Mark::Problem, "token"));
        assert!(token.found.starts_with("min_sequence 9: applied sequence 7"), "{}", token.found);
        assert_eq!(steps.last().unwrap().what, "terminal shows");
    }

    #[test]
    fn a_format_error_fails_the_id_and_leaves_the_stores_unchecked() {
        let marks: Vec<Mark> = steps(&format_error()).iter().map(|step| step.mark).collect();
        use Mark::*;
        assert_eq!(marks, [Problem, Unknown, Unknown, Ok, Unknown, Problem]);
        let text = render(&format_error());
        assert!(text.contains("did you mean 898000000000042?"), "{text}");
        assert!(text.contains("wrong length"), "{text}");
    }

    #[test]
    fn a_stale_negative_entry_is_the_step_that_fails() {
        let mut report = format_error();
        report["id"] = json!({"typed": "898000000000042", "normalised": "898000000000042", "rule_broken": null, "did_you_mean": []});
        report["negative_entry"] = json!({"as_of_sequence": 0, "age_ms": 42_000, "ttl_left_ms": 100,
            "learned_from": "a GetMerchant answer", "answered_from": true});
        report["feed"]["connected"] = json!(false);
        report["feed"]["lag_seconds"] = json!(42.3);
        report["core"] = json!({"found": true, "version": 1, "status": "MERCHANT_STATUS_ACTIVE", "as_of_sequence": 3,
            "latency_ms": 1.5, "error": null});
        report["reason"] = json!("REASON_UNKNOWN_TO_CORE");
        let steps = steps(&report);
        let marks: Vec<Mark> = steps.iter().map(|step| step.mark).collect();
        use Mark::*;
        assert_eq!(marks, [Ok, Ok, Problem, Problem, Ok, Problem]);
        assert!(steps[3].found.starts_with("DOWN for 42 s"), "{:?}", steps[3]);
        assert!(steps[4].found.contains("version 1, ACTIVE, as of sequence 3 (1.5 ms)"), "{:?}", steps[4]);
    }

    #[test]
    fn missing_fields_are_unknown_rather_than_an_error() {
        let text = render(&json!({}));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[..6].iter().all(|line| line.starts_with(Mark::Unknown.label())), "{text}");
        assert!(lines[6].starts_with("verdict: none given"), "{text}");
    }
}
