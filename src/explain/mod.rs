//! "Why was this merchant not found?": walks the field guide's checklist for one ID — the ID and its
//! rule (with typo suggestions), what the stores hold, the change feed, the core asked now — and ends
//! with a verdict in plain words; given a consistency token, also the applied sequence against it and
//! what a lookup carrying it would get. Served as JSON on the admin endpoint (`GET
//! /debug/merchants/{id}[?min_sequence=N]`) and printed by `merchant-edge explain [--min-sequence N]`.
pub mod typo;

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::cache::{Filled, Origin};
use crate::config::Config;
use crate::feed::FeedState;
use crate::lookup::outcome::{answer_reason, classify};
use crate::lookup::{after_core, remembered, stale_merchant, LookupError, NotFreshCause, Resolver};
use crate::merchant_id::IdRule;
use crate::pb::MerchantStatus;
use crate::upstream::CoreAnswer;
use crate::wire::EncodedMerchant;

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub id: IdCheck,
    pub positive_entry: Option<PositiveView>,
    pub negative_entry: Option<NegativeView>,
    pub feed: FeedView,
    pub core: CoreView,
    /// The consistency token asked about (`?min_sequence=N`), if any.
    pub token: Option<TokenView>,
    /// The `merchant.v1.Reason` a terminal looking the ID up now would get (carrying the token, if one
    /// was given).
    pub reason: String,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdCheck {
    pub typed: String,
    /// As looked up, when the ID keeps the rule.
    pub normalised: Option<String>,
    /// The rule broken, in the words a lookup's error uses.
    pub rule_broken: Option<String>,
    /// Known merchants (held in memory) one keying slip away.
    pub did_you_mean: Vec<String>,
    /// How many candidate IDs were looked up for suggestions, and how long it took.
    pub suggestion_candidates: usize,
    pub suggestion_micros: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PositiveView {
    pub version: u64,
    pub status: String,
    pub as_of_sequence: u64,
    pub age_ms: u64,
    /// Negative once past the TTL (then it is answered only as stale, while the core cannot answer).
    pub ttl_left_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NegativeView {
    pub as_of_sequence: u64,
    pub age_ms: u64,
    pub ttl_left_ms: i64,
    pub learned_from: String,
    /// Whether lookups are answered from it now (while the feed is down it is trusted only briefly).
    pub answered_from: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedView {
    pub connected: bool,
    pub applied_sequence: u64,
    pub core_head_sequence: u64,
    pub lag_notices: u64,
    /// How long the feed has been down or behind (0 when caught up).
    pub lag_seconds: f64,
    pub last_resync: Option<String>,
}

/// A consistency token against what the edge holds.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub min_sequence: u64,
    pub applied_sequence: u64,
    pub core_head_sequence: u64,
    /// Whether the edge has applied the token (then lookups carrying it are answered as any other).
    pub applied: bool,
    /// What a lookup carrying the token gets, in words.
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoreView {
    pub found: Option<bool>,
    pub version: Option<u64>,
    pub status: Option<String>,
    pub as_of_sequence: Option<u64>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

fn signed_millis_left(ttl: Duration, age: Duration) -> i64 {
    let left = i128::try_from(ttl.as_millis()).unwrap_or(i128::MAX) - i128::try_from(age.as_millis()).unwrap_or(0);
    left.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn status_name(status: i32) -> String {
    MerchantStatus::try_from(status).map_or_else(|_| format!("unknown status {status}"), |s| s.as_str_name().into())
}

/// Walks the checklist for `raw_id` under `config` (asking the core once, bypassing the stores and
/// core protection: an operator's question, not a terminal's), for a lookup carrying `min_sequence`
/// when given.
pub async fn explain(
    config: &Config,
    resolver: &Resolver,
    feed: &FeedState,
    raw_id: &str,
    min_sequence: Option<u64>,
) -> Explanation {
    let rule = &config.merchant_id;
    let stores = resolver.cache().stores();
    let started = std::time::Instant::now();
    let typed = IdRule::fold(raw_id);
    // One slip changes the length by at most one: anything further off gets no suggestions (and a
    // hostile 4 KB "ID" costs nothing).
    let typed_length = typed.chars().count();
    let suggestions = if typed_length + 1 >= rule.min_length && typed_length <= rule.max_length + 1 {
        typo::suggest(&typed, &rule.alphabet(), rule.min_length..=rule.max_length, |id| stores.holds_positive(id))
    } else {
        typo::Suggestions { ids: Vec::new(), candidates: 0 }
    };
    let suggestion_micros = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
    let normalised = rule.normalise(raw_id);
    let id = IdCheck {
        typed: raw_id.to_owned(),
        normalised: normalised.as_ref().ok().map(|id| id.to_string()),
        rule_broken: normalised.as_ref().err().map(ToString::to_string),
        did_you_mean: suggestions.ids,
        suggestion_candidates: suggestions.candidates,
        suggestion_micros,
    };
    let now = Instant::now();
    let lag = feed.lag(now);
    let feed_view = FeedView {
        connected: feed.is_connected(),
        applied_sequence: feed.applied(),
        core_head_sequence: feed.head(),
        lag_notices: lag.notices,
        lag_seconds: lag.duration.as_secs_f64(),
        last_resync: feed
            .last_resync()
            .map(|(at, reason)| format!("{reason:?} {:.1}s ago", now.saturating_duration_since(at).as_secs_f64())),
    };
    let Ok(normalised) = normalised else {
        let (_, reason) = classify(&LookupError::InvalidId(normalised.unwrap_err()));
        let core =
            CoreView { found: None, version: None, status: None, as_of_sequence: None, latency_ms: 0.0, error: None };
        let verdict = verdict(&id, None, None, &feed_view, &core, None);
        return Explanation {
            id,
            positive_entry: None,
            negative_entry: None,
            feed: feed_view,
            core,
            token: None,
            reason: reason.as_str_name().into(),
            verdict,
        };
    };
    let positive = stores.positive_within(&normalised, now, Duration::MAX, Duration::MAX).map(|entry| {
        let merchant = entry.merchant.decode();
        let age = now.saturating_duration_since(entry.learned_at);
        PositiveView {
            version: merchant.version,
            status: status_name(merchant.status),
            as_of_sequence: entry.as_of_sequence,
            age_ms: millis(age),
            ttl_left_ms: signed_millis_left(entry.ttl.min(config.cache.positive_ttl), age),
        }
    });
    let negative = stores.fresh_negative(&normalised, now, config.cache.negative_ttl).map(|entry| {
        let age = now.saturating_duration_since(entry.learned_at);
        NegativeView {
            as_of_sequence: entry.as_of_sequence,
            age_ms: millis(age),
            ttl_left_ms: signed_millis_left(entry.ttl.min(config.cache.negative_ttl), age),
            learned_from: match entry.origin {
                Origin::CoreRead => "a GetMerchant answer".into(),
                Origin::Notice => "a change notice or snapshot (deleted at the core)".into(),
            },
            answered_from: feed.trusts_negative(entry.learned_at, now, config.feed.negative_ttl_when_down),
        }
    });
    let asked = std::time::Instant::now();
    let answer = resolver.core().get_merchant(&normalised, config.upstream.timeout).await;
    let latency_ms = asked.elapsed().as_secs_f64() * 1000.0;
    let core = match &answer {
        Ok(CoreAnswer { merchant, as_of_sequence }) => CoreView {
            found: Some(merchant.is_some()),
            version: merchant.as_ref().map(|m| m.version),
            status: merchant.as_ref().map(|m| status_name(m.status)),
            as_of_sequence: Some(*as_of_sequence),
            latency_ms,
            error: None,
        },
        Err(error) => CoreView {
            found: None,
            version: None,
            status: None,
            as_of_sequence: None,
            latency_ms,
            error: Some(error.to_string()),
        },
    };
    // What a lookup now would answer, by the lookup path's own decisions without making one (no
    // metrics, no fill).
    let applied = feed.applied();
    let behind_token = min_sequence.filter(|token| applied < *token);
    let held = remembered(&stores, config, feed, &normalised, now)
        .filter(|held| behind_token.is_none_or(|token| held.as_of_sequence() >= token));
    let reason = match (held, behind_token) {
        (Some(held), _) => answer_reason(&held.into_answer(now)),
        // Behind the token: only the core's answer can do, and only if it is that fresh. This read
        // began after the question did, so an older answer means the token is ahead of the core.
        (None, Some(token)) => match &answer {
            Ok(found) if found.as_of_sequence >= token => {
                let filled = Filled {
                    merchant: found.merchant.as_ref().map(EncodedMerchant::encode),
                    as_of_sequence: found.as_of_sequence,
                };
                match after_core(Ok(filled), || None, now) {
                    Ok(answer) => answer_reason(&answer),
                    Err(error) => classify(&error).1,
                }
            }
            Ok(found) if feed.head() >= token => {
                let why = NotFreshCause::CoreBehind { answered: found.as_of_sequence };
                classify(&LookupError::NotFresh { asked: token, held: applied, why }).1
            }
            Ok(found) => classify(&LookupError::SequenceAhead { asked: token, core: found.as_of_sequence }).1,
            Err(error) => {
                let why = NotFreshCause::Core(error.clone().into());
                classify(&LookupError::NotFresh { asked: token, held: applied, why }).1
            }
        },
        (None, None) => {
            let outcome = answer
                .as_ref()
                .map(|found| Filled {
                    merchant: found.merchant.as_ref().map(EncodedMerchant::encode),
                    as_of_sequence: found.as_of_sequence,
                })
                .map_err(|error| error.clone().into());
            match after_core(outcome, || stale_merchant(&stores, &config.cache, &normalised, now), now) {
                Ok(answer) => answer_reason(&answer),
                Err(error) => classify(&error).1,
            }
        }
    };
    let token = min_sequence.map(|token| token_view(token, applied, feed.head(), &core, config.feed.fresh_wait));
    let stale_window = config.cache.serve_stale_for;
    let verdict =
        verdict(&id, positive.as_ref(), negative.as_ref(), &feed_view, &core, Some((&normalised, stale_window)));
    Explanation {
        id,
        positive_entry: positive,
        negative_entry: negative,
        feed: feed_view,
        core,
        token,
        reason: reason.as_str_name().into(),
        verdict,
    }
}

/// The token `min_sequence` against the applied sequence and the core's answer now.
fn token_view(min_sequence: u64, applied: u64, head: u64, core: &CoreView, fresh_wait: Duration) -> TokenView {
    let verdict = if applied >= min_sequence {
        format!("applied sequence {applied} is at or past the token: lookups carrying it are answered as any other")
    } else {
        let behind = format!(
            "applied sequence {applied} is {} behind the token {min_sequence}",
            crate::text::count(min_sequence - applied, "change", "changes")
        );
        match (core.as_of_sequence, &core.error) {
            (Some(core_at), _) if core_at >= min_sequence => format!(
                "{behind}: a lookup carrying it waits up to {fresh_wait:?} for the feed, then asks the core (at sequence \
                 {core_at} now)"
            ),
            (Some(core_at), _) if head < min_sequence => format!(
                "the token {min_sequence} is ahead of the bank core (at sequence {core_at} now): lookups carrying it get \
                 FAILED_PRECONDITION (REASON_SEQUENCE_AHEAD); the token comes from another core history or is wrong"
            ),
            (Some(core_at), _) => format!(
                "{behind}, and the core answers only as of sequence {core_at}: lookups carrying it get UNAVAILABLE until \
                 the feed applies it"
            ),
            (None, error) => format!(
                "{behind}, and the core cannot answer ({}): lookups carrying it get UNAVAILABLE until the feed applies it",
                error.as_deref().unwrap_or("not asked")
            ),
        }
    };
    TokenView {
        min_sequence,
        applied_sequence: applied,
        core_head_sequence: head,
        applied: applied >= min_sequence,
        verdict,
    }
}

fn did_you_mean(id: &IdCheck) -> String {
    match id.did_you_mean.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; did you mean one of {}?", many.join(", ")),
    }
}

fn feed_state(feed: &FeedView) -> String {
    if !feed.connected {
        format!("the feed has been down for {:.0} s", feed.lag_seconds.floor())
    } else if feed.lag_notices > 0 {
        format!(
            "the feed is {} ({:.1} s) behind",
            crate::text::count(feed.lag_notices, "notice", "notices"),
            feed.lag_seconds
        )
    } else {
        "the feed is connected and caught up".into()
    }
}

/// The verdict in plain words, from what the checklist found.
fn verdict(
    id: &IdCheck,
    positive: Option<&PositiveView>,
    negative: Option<&NegativeView>,
    feed: &FeedView,
    core: &CoreView,
    normalised: Option<(&str, Duration)>,
) -> String {
    let Some((normalised, stale_window)) = normalised else {
        let broken = id.rule_broken.as_deref().unwrap_or("the ID breaks the ID rule");
        return format!("format error: {broken}{}", did_you_mean(id));
    };
    if let Some(error) = &core.error {
        let stale_for = i64::try_from(stale_window.as_millis()).unwrap_or(i64::MAX);
        let served = match (positive, negative) {
            (Some(entry), _) if entry.ttl_left_ms > 0 => "terminals are answered from the cached merchant",
            (Some(entry), _) if -entry.ttl_left_ms < stale_for => {
                "terminals get the last known merchant as STALE (within cache.serve_stale_for)"
            }
            (None, Some(entry)) if entry.answered_from => {
                "terminals get the cached not-found, which cannot be checked now"
            }
            _ => "terminals get UNAVAILABLE (never \"not found\") until it answers",
        };
        return format!("core unreachable: {error}; {served}; {}", feed_state(feed));
    }
    match (core.found, core.status.as_deref()) {
        (Some(true), status) => {
            if let Some(entry) = negative.filter(|entry| !entry.answered_from) {
                return format!(
                    "a cached not-found (as of sequence {}) exists but is no longer answered ({}); lookups reach the \
                     core, which knows the merchant",
                    entry.as_of_sequence,
                    feed_state(feed),
                );
            }
            if let Some(entry) = negative {
                return format!(
                    "stale negative entry: a cached not-found (as of sequence {}, {:.0} s old) is older than the core's \
                     answer (merchant {normalised} exists, version {}, as of sequence {}); {}; POST /invalidate/{normalised} \
                     drops it",
                    entry.as_of_sequence,
                    entry.age_ms as f64 / 1000.0,
                    core.version.unwrap_or_default(),
                    core.as_of_sequence.unwrap_or_default(),
                    feed_state(feed),
                );
            }
            if let Some(entry) = positive.filter(|entry| Some(entry.version) < core.version) {
                return format!(
                    "stale positive entry: cached version {} is older than the core's version {}; {}",
                    entry.version,
                    core.version.unwrap_or_default(),
                    feed_state(feed)
                );
            }
            match status {
                Some("MERCHANT_STATUS_PENDING_REVIEW") => {
                    "merchant exists with status PENDING_REVIEW: qualification not approved yet".into()
                }
                Some("MERCHANT_STATUS_SUSPENDED") => {
                    "merchant exists with status SUSPENDED: suspended by the bank".into()
                }
                Some("MERCHANT_STATUS_CLOSED") => "merchant exists with status CLOSED: the account is closed".into(),
                _ => format!("merchant exists and is ACTIVE; lookups succeed ({})", feed_state(feed)),
            }
        }
        _ => {
            let sequence = core.as_of_sequence.unwrap_or_default();
            if positive.is_some() {
                return format!(
                    "stale positive entry: the cache still holds a merchant the core no longer knows (as of sequence \
                     {sequence}); {}; POST /invalidate/{normalised} drops it",
                    feed_state(feed)
                );
            }
            if let Some(entry) = negative.filter(|entry| entry.learned_from.starts_with("a change notice")) {
                return format!(
                    "deleted at the core as of sequence {}: the merchant no longer exists",
                    entry.as_of_sequence
                );
            }
            if id.did_you_mean.is_empty() {
                format!(
                    "unknown to the core as of sequence {sequence}: not registered (or not yet onboarded); check the ID \
                     with the bank"
                )
            } else {
                format!("unknown to the core as of sequence {sequence}: looks like a typo{}", did_you_mean(id))
            }
        }
    }
}
