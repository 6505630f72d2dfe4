//! What the types alone cannot check: ranges and combinations of keys, each named by its dotted key.
use std::time::Duration;

use super::{Config, ServerRuntime, UpstreamEndpoint, MAX_EMBEDDED, MAX_SERVER_THREADS};

impl Config {
    /// Checks what the types alone cannot: ranges and combinations of keys.
    pub(super) fn semantic_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.server.listen == self.admin.listen && self.server.listen.port() != 0 {
            problems.push(("admin.listen", format!("must differ from server.listen ({})", self.server.listen)));
        }
        // Bounds keep every duration usable by the timers and clocks downstream (tonic panics on
        // "unrealistically large" timeouts) and catch unit slips such as "30" days for "30s".
        let (ms, hour, year) = (Duration::from_millis(1), Duration::from_secs(3600), Duration::from_secs(31_536_000));
        let up_to_an_hour = (ms, hour, "1ms and 1h");
        let up_to_a_year = (ms, year, "1ms and 365d");
        for (key, value, (min, max, range)) in [
            ("server.shutdown_grace", self.server.shutdown_grace, up_to_an_hour),
            ("upstream.timeout", self.upstream.timeout, up_to_an_hour),
            ("protect.retry_backoff", self.protect.retry_backoff, up_to_an_hour),
            ("protect.breaker_open_for", self.protect.breaker_open_for, up_to_an_hour),
            ("cache.serve_stale_for", self.cache.serve_stale_for, (Duration::ZERO, year, "0s and 365d")),
            ("upstream.connect_timeout", self.upstream.connect_timeout, up_to_an_hour),
            ("cache.positive_ttl", self.cache.positive_ttl, up_to_a_year),
            ("cache.negative_ttl", self.cache.negative_ttl, up_to_a_year),
            ("feed.negative_ttl_when_down", self.feed.negative_ttl_when_down, (Duration::ZERO, year, "0s and 365d")),
            ("feed.reconnect_initial_backoff", self.feed.reconnect_initial_backoff, up_to_an_hour),
            ("feed.reconnect_max_backoff", self.feed.reconnect_max_backoff, up_to_an_hour),
            ("feed.stall_timeout", self.feed.stall_timeout, (100 * ms, hour, "100ms and 1h")),
            // A lookup holds its caller this long at most before the core is asked: beyond a minute a
            // terminal has long given up.
            ("feed.fresh_wait", self.feed.fresh_wait, (Duration::ZERO, Duration::from_secs(60), "0s and 1m")),
            ("reload.debounce", self.reload.debounce, (50 * ms, Duration::from_secs(60), "50ms and 1m")),
            (
                "snapshot.interval",
                self.snapshot.interval,
                (Duration::from_secs(1), Duration::from_secs(86_400), "1s and 1d"),
            ),
        ] {
            if value < min || value > max {
                problems.push((key, format!("must be between {range}")));
            }
        }
        if self.feed.reconnect_max_backoff < self.feed.reconnect_initial_backoff {
            problems.push((
                "feed.reconnect_max_backoff",
                "must not be shorter than feed.reconnect_initial_backoff".to_owned(),
            ));
        }
        if self.feed.negative_ttl_when_down > self.cache.negative_ttl {
            problems.push((
                "feed.negative_ttl_when_down",
                format!("must not exceed cache.negative_ttl ({:?})", self.cache.negative_ttl),
            ));
        }
        problems.extend(self.feed_source_problems());
        if self.upstream.endpoint == UpstreamEndpoint::Embedded && self.upstream.embedded_merchants > MAX_EMBEDDED {
            problems.push(("upstream.embedded_merchants", format!("must be at most {MAX_EMBEDDED}")));
        }
        match (self.server.runtime, self.server.threads) {
            (ServerRuntime::Shared, Some(_)) => problems.push((
                "server.threads",
                "applies only to server.runtime = \"per-core\" (the shared runtime has one worker per core)".to_owned(),
            )),
            (_, Some(threads)) if threads.get() > MAX_SERVER_THREADS => {
                problems.push(("server.threads", format!("must be at most {MAX_SERVER_THREADS}")));
            }
            _ => {}
        }
        if let Some(key) = &self.protect.client_key {
            if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes()).is_err()
                || key.ends_with("-bin")
            {
                problems.push((
                    "protect.client_key",
                    format!("`{key}` is not an ASCII gRPC metadata key (lowercase letters, digits, - _ .)"),
                ));
            }
        }
        // allow_remote_changes without a token file is accepted (remote calls are then refused with a
        // message saying to set it), but require_token without one would lock every caller out.
        if self.admin.require_token && self.admin.token_file.is_none() {
            problems.push((
                "admin.require_token",
                "needs admin.token_file: the file holding the bearer token every caller must send".to_owned(),
            ));
        }
        if let Err(message) = self.merchant_id.validate() {
            problems.push(("merchant_id", message));
        }
        if let Err(message) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(("log.level", format!("is not a valid level or filter: {message}")));
        }
        problems
    }

    /// What `feed.source = "nats"` needs: servers, a stream and subject, and one way to log in.
    fn feed_source_problems(&self) -> Vec<(&'static str, String)> {
        let feed = &self.feed;
        let mut problems = Vec::new();
        if feed.source != crate::feed::SourceKind::Nats {
            return problems;
        }
        if feed.nats_url.split(',').all(|url| url.trim().is_empty()) {
            problems.push(("feed.nats_url", "must name a NATS server, like nats://10.0.0.7:4222".to_owned()));
        }
        for (key, value) in [("feed.nats_stream", &feed.nats_stream), ("feed.nats_subject", &feed.nats_subject)] {
            if value.is_empty() || value.contains(char::is_whitespace) {
                problems.push((key, "must be a NATS name without spaces".to_owned()));
            }
        }
        if feed.nats_subject.contains(['*', '>']) {
            problems.push(("feed.nats_subject", "must be the relay's literal subject, without wildcards".to_owned()));
        }
        if feed.nats_creds_file.is_some() && feed.nats_user.is_some() {
            problems.push(("feed.nats_user", "conflicts with feed.nats_creds_file: log in one way".to_owned()));
        }
        if feed.nats_user.is_some() != feed.nats_password_file.is_some() {
            let key = if feed.nats_user.is_some() { "feed.nats_user" } else { "feed.nats_password_file" };
            problems.push((key, "feed.nats_user and feed.nats_password_file go together".to_owned()));
        }
        let timeout = feed.nats_request_timeout;
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(3600) {
            problems.push(("feed.nats_request_timeout", "must be between 10ms and 1h".to_owned()));
        }
        problems
    }
}
