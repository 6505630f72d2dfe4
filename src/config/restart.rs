//! The keys whose change takes a restart, listed once: how each shows its value, and how a reload
//! keeps the running one.
use std::path::PathBuf;

use super::Config;

impl Config {
    /// The keys whose change takes a restart, with their values here.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        RESTART_ONLY.iter().map(|key| (key.key, (key.show)(self))).collect()
    }

    /// `self` with every restart-only setting taken from `running` (what a reload can apply).
    pub fn with_restart_only_from(mut self, running: &Config) -> Self {
        for key in RESTART_ONLY {
            (key.keep)(&mut self, running);
        }
        self
    }
}

/// A setting that only takes effect at start: how to show its value, and how a reload keeps the
/// running one.
struct RestartOnly {
    key: &'static str,
    show: fn(&Config) -> String,
    keep: fn(&mut Config, &Config),
}

/// Every restart-only key, listed once.
const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "server.listen",
        show: |c| c.server.listen.to_string(),
        keep: |c, running| c.server.listen = running.server.listen,
    },
    RestartOnly {
        key: "server.max_request_bytes",
        show: |c| c.server.max_request_bytes.to_string(),
        keep: |c, running| c.server.max_request_bytes = running.server.max_request_bytes,
    },
    RestartOnly {
        key: "server.max_concurrent_streams",
        show: |c| c.server.max_concurrent_streams.to_string(),
        keep: |c, running| c.server.max_concurrent_streams = running.server.max_concurrent_streams,
    },
    // The serving runtimes and their sockets are built once, at start.
    RestartOnly {
        key: "server.runtime",
        show: |c| format!("{:?}", c.server.runtime),
        keep: |c, running| c.server.runtime = running.server.runtime,
    },
    RestartOnly {
        key: "server.threads",
        show: |c| c.server.threads.map_or_else(|| "one per core".to_owned(), |threads| threads.to_string()),
        keep: |c, running| c.server.threads = running.server.threads,
    },
    // Memory already faulted in keeps the pages it got.
    RestartOnly {
        key: "server.transparent_huge_pages",
        show: |c| c.server.transparent_huge_pages.to_string(),
        keep: |c, running| c.server.transparent_huge_pages = running.server.transparent_huge_pages,
    },
    // Certificates are re-read on reload; turning TLS on or off takes a restart.
    RestartOnly {
        key: "server.tls",
        show: |c| if c.server.tls.is_some() { "on".into() } else { "off".into() },
        keep: |c, running| {
            if c.server.tls.is_some() != running.server.tls.is_some() {
                c.server.tls = running.server.tls.clone();
            }
        },
    },
    RestartOnly {
        key: "admin.listen",
        show: |c| c.admin.listen.to_string(),
        keep: |c, running| c.admin.listen = running.admin.listen,
    },
    RestartOnly {
        key: "upstream.endpoint",
        show: |c| c.upstream.endpoint.to_string(),
        keep: |c, running| c.upstream.endpoint = running.upstream.endpoint.clone(),
    },
    RestartOnly {
        key: "upstream.connect_timeout",
        show: |c| format!("{:?}", c.upstream.connect_timeout),
        keep: |c, running| c.upstream.connect_timeout = running.upstream.connect_timeout,
    },
    RestartOnly {
        key: "upstream.embedded_merchants",
        show: |c| c.upstream.embedded_merchants.to_string(),
        keep: |c, running| c.upstream.embedded_merchants = running.upstream.embedded_merchants,
    },
    // Only the start reads it: whether to report ready before the core answers.
    RestartOnly {
        key: "snapshot.ready_when_core_down",
        show: |c| c.snapshot.ready_when_core_down.to_string(),
        keep: |c, running| c.snapshot.ready_when_core_down = running.snapshot.ready_when_core_down,
    },
    // The feed opens its notice source once; the NATS connection (servers, login, TLS) with it.
    RestartOnly {
        key: "feed.source",
        show: |c| c.feed.source.as_str().to_owned(),
        keep: |c, running| c.feed.source = running.feed.source,
    },
    RestartOnly {
        key: "feed.nats_*",
        show: |c| {
            let feed = &c.feed;
            let path = |p: &Option<PathBuf>| p.as_ref().map_or("-".to_owned(), |p| p.display().to_string());
            format!(
                "url {} stream {} subject {} creds {} user {} password file {} tls ca {} timeout {:?}",
                feed.nats_url,
                feed.nats_stream,
                feed.nats_subject,
                path(&feed.nats_creds_file),
                feed.nats_user.as_deref().unwrap_or("-"),
                path(&feed.nats_password_file),
                path(&feed.nats_tls_ca),
                feed.nats_request_timeout
            )
        },
        keep: |c, running| {
            let (feed, running) = (&mut c.feed, &running.feed);
            feed.nats_url.clone_from(&running.nats_url);
            feed.nats_stream.clone_from(&running.nats_stream);
            feed.nats_subject.clone_from(&running.nats_subject);
            feed.nats_creds_file.clone_from(&running.nats_creds_file);
            feed.nats_user.clone_from(&running.nats_user);
            feed.nats_password_file.clone_from(&running.nats_password_file);
            feed.nats_tls_ca.clone_from(&running.nats_tls_ca);
            feed.nats_request_timeout = running.nats_request_timeout;
        },
    },
    RestartOnly {
        key: "log.format",
        show: |c| format!("{:?}", c.log.format),
        keep: |c, running| c.log.format = running.log.format,
    },
    RestartOnly {
        key: "reload.watch_file",
        show: |c| c.reload.watch_file.to_string(),
        keep: |c, running| c.reload.watch_file = running.reload.watch_file,
    },
    RestartOnly {
        key: "reload.debounce",
        show: |c| format!("{:?}", c.reload.debounce),
        keep: |c, running| c.reload.debounce = running.reload.debounce,
    },
];
