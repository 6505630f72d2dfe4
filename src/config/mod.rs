//! The one TOML config: a section per subsystem, every key optional with a documented default
//! (`config/example.toml`), unknown keys rejected, and errors that name the file, line and key.
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use crate::cache::CacheConfig;
pub use crate::feed::FeedConfig;
pub use crate::guard::ProtectConfig;
use crate::merchant_id::IdRule;
pub use crate::snapshot::SnapshotConfig;
use locate::{key_at_offset, line_of_key, line_of_offset, render_problems, syntax_message};

mod locate;
mod restart;
mod validate;

/// The config in force, swapped whole by a reload; subsystems read it when they use a setting.
pub type LiveConfig = std::sync::Arc<ArcSwap<Config>>;

/// The whole configuration of `merchant-edge serve`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The terminal-facing gRPC listener.
    pub server: ServerConfig,
    /// The operators' HTTP endpoint.
    pub admin: AdminConfig,
    /// The bank core.
    pub upstream: UpstreamConfig,
    /// Protecting the bank core.
    pub protect: ProtectConfig,
    /// The answer stores.
    pub cache: CacheConfig,
    /// The ID rule.
    pub merchant_id: IdRule,
    /// The change feed.
    pub feed: FeedConfig,
    /// The local snapshot.
    pub snapshot: SnapshotConfig,
    /// Live reload.
    pub reload: ReloadConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The terminal-facing gRPC listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where terminals connect.
    pub listen: SocketAddr,
    /// Largest request message accepted; larger ones are refused before they are decoded.
    pub max_request_bytes: NonZeroU32,
    /// Most IDs accepted in one BatchLookup (and most lookups one StreamLookup may have waiting for the core).
    pub max_batch_size: NonZeroU32,
    /// Most concurrent calls (HTTP/2 streams) per client connection; clients queue beyond it.
    pub max_concurrent_streams: NonZeroU32,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// TLS for terminals; absent means plaintext HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// How gRPC calls are scheduled: one single-threaded runtime per core, or one shared multi-thread
    /// runtime.
    pub runtime: ServerRuntime,
    /// How many runtimes serve gRPC with `runtime = "per-core"`; absent means one per core available to
    /// the process (CPU affinity and cgroup quota honoured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroU32>,
    /// Whether the process may back its memory with transparent huge pages. Off by default: the
    /// allocator's huge pages are resident whole, so an edge of 1,000,000 merchants held 190 – 217 MB
    /// with them and 147 MB without, 10,000,000 held 1,213 – 1,255 MB against 1,032 MB, and hits cost
    /// the same within noise (docs/performance.md).
    pub transparent_huge_pages: bool,
}

/// Most serving runtimes accepted for `server.threads`: far beyond any machine's cores, so a value
/// above it is a slip (each runtime is an OS thread with its own listening socket).
pub const MAX_SERVER_THREADS: u32 = 1024;

/// How the terminal-facing gRPC listener is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerRuntime {
    /// `server.threads` single-threaded runtimes, each on its own OS thread and accepting on its own
    /// `SO_REUSEPORT` socket: a call is served where its connection was accepted, with no work moving
    /// between cores; the kernel spreads connections across them.
    #[default]
    PerCore,
    /// One multi-thread runtime (also running the background work) whose workers steal calls from each
    /// other: one busy connection can use every core.
    Shared,
}

impl ServerConfig {
    /// How many runtimes serve gRPC: `threads`, else the cores available to the process; one for
    /// `runtime = "shared"` (its one multi-thread runtime).
    pub fn serving_runtimes(&self) -> usize {
        match self.runtime {
            ServerRuntime::Shared => 1,
            ServerRuntime::PerCore => self
                .threads
                .map(|threads| threads.get() as usize)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
        }
    }
}

/// TLS (and, with `client_ca`, mutual TLS) for the terminal-facing listener. The files are read again
/// at every reload, so rotated certificates take effect without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_request_bytes: NonZeroU32::new(64 * 1024).expect("non-zero"),
            max_batch_size: NonZeroU32::new(1000).expect("non-zero"),
            max_concurrent_streams: NonZeroU32::new(256).expect("non-zero"),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            runtime: ServerRuntime::PerCore,
            threads: None,
            transparent_huge_pages: false,
        }
    }
}

/// The operators' HTTP endpoint (health and metrics).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the endpoint listens (loopback by default).
    pub listen: SocketAddr,
    /// Whether the guarded endpoints (`POST /reload`, `POST /invalidate/{id}`, `GET /debug/...`) answer
    /// clients other than loopback; they must also send the bearer token of `token_file`.
    pub allow_remote_changes: bool,
    /// File holding the bearer token for the guarded endpoints (surrounding whitespace ignored). Read
    /// at start and on every reload; only its path is ever printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Whether loopback clients must send the token too.
    pub require_token: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            allow_remote_changes: false,
            token_file: None,
            require_token: false,
        }
    }
}

/// Live config reload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file changes (watched through its directory, so Kubernetes ConfigMap
    /// symlink swaps are seen). SIGHUP and `POST /reload` work either way.
    pub watch_file: bool,
    /// How long the file must stay unchanged before it is reloaded (editors write in several steps).
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { watch_file: true, debounce: Duration::from_millis(500) }
    }
}

/// The bank core the edge asks on a miss.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"embedded"` runs the bank-core simulator inside the process; otherwise an `http://host:port` URL
    /// of a MerchantCore server.
    pub endpoint: UpstreamEndpoint,
    /// Longest wait for one core call before the lookup is answered UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to open a connection to the core.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How many merchants the embedded simulator holds (only with `endpoint = "embedded"`).
    pub embedded_merchants: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoint: UpstreamEndpoint::Embedded,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            embedded_merchants: 100_000,
        }
    }
}

/// Where the bank core is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEndpoint {
    /// The bank-core simulator, inside the process.
    Embedded,
    /// A MerchantCore server at this URL.
    Url(String),
}

impl fmt::Display for UpstreamEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("embedded"),
            Self::Url(url) => f.write_str(url),
        }
    }
}

impl std::str::FromStr for UpstreamEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "embedded" {
            return Ok(Self::Embedded);
        }
        let uri: tonic::transport::Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is neither \"embedded\" nor a URL like \"http://10.0.0.5:50052\": {e}"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(_)) => Ok(Self::Url(text.to_owned())),
            _ => Err(format!("`{text}` must be \"embedded\" or an http:// or https:// URL with a host and port")),
        }
    }
}

impl<'de> Deserialize<'de> for UpstreamEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for UpstreamEndpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or directives (`merchant_edge=debug,tower=warn`).
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
/// How log lines are written.
pub enum LogFormat {
    /// For people: one line per event.
    Text,
    /// For log pipelines: one JSON object per line, with the span fields.
    Json,
}

/// Why a config was rejected. Each problem names where it is, so the operator can go straight to it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    #[error("{}", render_problems(.origin, .problems))]
    /// The text is not a valid config.
    Invalid {
        /// Where the text came from (usually the file path).
        origin: String,
        /// Everything wrong with it.
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key or value, when it is in the file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `cache.negative_ttl`, when known.
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Reads a TOML config file of any of the binary's commands (`serve`, `core-pg`) and validates it.
pub fn load_checked<T: serde::de::DeserializeOwned>(
    path: &Path,
    semantic_problems: impl Fn(&T) -> Vec<(&'static str, String)>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_checked(&text, &path.display().to_string(), semantic_problems)
}

/// Parses TOML config text into `T` and validates it with `semantic_problems` (dotted key, message);
/// every problem is located in the text by its line, and `origin` names the text in errors.
pub fn parse_checked<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
    semantic_problems: impl Fn(&T) -> Vec<(&'static str, String)>,
) -> Result<T, ConfigError> {
    let invalid = |problems| ConfigError::Invalid { origin: origin.to_owned(), problems };
    let config: T = toml::from_str(text).map_err(|e| {
        invalid(vec![Problem {
            line: e.span().map(|span| line_of_offset(text, span.start)),
            key: e.span().and_then(|span| key_at_offset(text, span.start)),
            message: syntax_message(&e, text),
        }])
    })?;
    let problems: Vec<Problem> = semantic_problems(&config)
        .into_iter()
        .map(|(key, message)| Problem { line: line_of_key(text, key), key: Some(key.to_owned()), message })
        .collect();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_checked(path, Config::semantic_problems)
    }

    /// Parses and validates config text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        parse_checked(text, origin, Config::semantic_problems)
    }

    /// Dotted keys whose effective values differ between two configs.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let flatten = |config: &Config| {
            let mut keys = std::collections::BTreeMap::new();
            if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(config) {
                flatten_into(&mut keys, "", &sections);
            }
            keys
        };
        let (mine, theirs) = (flatten(self), flatten(other));
        let mut all: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
        all.sort();
        all.dedup();
        all.into_iter().filter(|key| mine.get(*key) != theirs.get(*key)).cloned().collect()
    }

    /// A short stable fingerprint of the effective values (FNV-1a of the TOML), for the info metric.
    pub fn hash(&self) -> String {
        let fingerprint = self
            .to_toml()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
        format!("{fingerprint:016x}")
    }

    /// The effective config as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config types always serialize")
    }
}

fn flatten_into(keys: &mut std::collections::BTreeMap<String, String>, prefix: &str, table: &toml::Table) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten_into(keys, &dotted, inner),
            other => {
                keys.insert(dotted, other.to_string());
            }
        }
    }
}

/// The embedded simulator builds merchants on demand, but beyond this many the IDs no longer fit the
/// 12-digit index of the synthetic ID scheme.
pub const MAX_EMBEDDED: u64 = 999_999_999_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_documented_default() {
        let config = Config::parse("", "test").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.upstream.endpoint, UpstreamEndpoint::Embedded);
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = include_str!("../../config/example.toml");
        assert_eq!(Config::parse(example, "example.toml").unwrap(), Config::default());
    }

    #[test]
    fn a_nats_source_needs_one_login_and_shows_only_file_paths() {
        let text = "[feed]\nsource = \"nats\"\nnats_url = \"nats://10.0.0.9:4222\"\n\
                    nats_user = \"edge\"\nnats_password_file = \"/run/secrets/nats\"\n";
        let config = Config::parse(text, "edge.toml").unwrap();
        assert_eq!(config.feed.source, crate::feed::SourceKind::Nats);
        let shown = config.to_toml();
        assert!(shown.contains("nats_password_file = \"/run/secrets/nats\""), "{shown}");
        let both = format!("{text}nats_creds_file = \"/etc/nats.creds\"\n");
        let err = Config::parse(&both, "edge.toml").unwrap_err().to_string();
        assert!(err.contains("feed.nats_user: conflicts with feed.nats_creds_file"), "{err}");
        let no_password = "[feed]\nsource = \"nats\"\nnats_user = \"edge\"\n";
        let err = Config::parse(no_password, "edge.toml").unwrap_err().to_string();
        assert!(
            err.contains("edge.toml:3: feed.nats_user: feed.nats_user and feed.nats_password_file go together"),
            "{err}"
        );
        let no_url = "[feed]\nsource = \"nats\"\nnats_url = \" \"\n";
        assert!(Config::parse(no_url, "t").unwrap_err().to_string().contains("feed.nats_url: must name"));
        let wildcard = "[feed]\nsource = \"nats\"\nnats_subject = \"merchant.>\"\n";
        assert!(Config::parse(wildcard, "t").unwrap_err().to_string().contains("without wildcards"));
        let unknown = "[feed]\nsource = \"kafka\"\n";
        assert!(Config::parse(unknown, "t").is_err());
    }

    #[test]
    fn the_notice_source_takes_a_restart() {
        let running = Config::default();
        let mut wanted = Config::default();
        wanted.feed.source = crate::feed::SourceKind::Nats;
        wanted.feed.nats_url = "nats://10.0.0.9:4222".into();
        let applied = wanted.clone().with_restart_only_from(&running);
        assert_eq!(
            (applied.feed.source, applied.feed.nats_url.as_str()),
            (running.feed.source, "nats://127.0.0.1:4222")
        );
        let changed: Vec<_> = wanted
            .restart_only()
            .into_iter()
            .zip(running.restart_only())
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, ["feed.source", "feed.nats_*"]);
    }

    #[test]
    fn refresh_ahead_never_covers_more_than_half_the_ttl() {
        let config = Config::parse("[cache]\npositive_ttl = \"30s\"\n", "t").unwrap();
        assert_eq!(config.cache.refresh_window(), Duration::from_secs(15), "the 1m default is cut to half the TTL");
        assert_eq!(Config::default().cache.refresh_window(), Duration::from_secs(60));
    }

    #[test]
    fn durations_are_human_readable() {
        let config = Config::parse("[cache]\nnegative_ttl = \"5s\"\npositive_ttl = \"10m\"\n", "t").unwrap();
        assert_eq!(config.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!(config.cache.positive_ttl, Duration::from_secs(600));
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let err = Config::parse("[cache]\npositive_ttl = \"1m\"\nnegative_tll = \"5s\"\n", "edge.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("edge.toml:3: cache.negative_tll: unknown field"), "{text}");
    }

    #[test]
    fn bad_values_name_line_and_reason() {
        let err = Config::parse("[cache]\n\nnegative_capacity = 0\n", "edge.toml").unwrap_err();
        assert!(err.to_string().contains("edge.toml:3: cache.negative_capacity:"), "{err}");
        let err = Config::parse("[cache]\nnegative_ttl = \"5x\"\n", "edge.toml").unwrap_err();
        assert!(err.to_string().contains("edge.toml:2: cache.negative_ttl:"), "{err}");
        let err = Config::parse("[upstream]\nendpoint = \"tcp://core\"\n", "edge.toml").unwrap_err();
        assert!(err.to_string().contains("edge.toml:2"), "{err}");
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn impossible_combinations_are_rejected_with_the_key() {
        let text = "[server]\nlisten = \"127.0.0.1:7000\"\n[admin]\nlisten = \"127.0.0.1:7000\"\n";
        let err = Config::parse(text, "edge.toml").unwrap_err().to_string();
        assert!(err.contains("edge.toml:4: admin.listen: must differ"), "{err}");
        let err = Config::parse("[merchant_id]\nmin_length = 20\nmax_length = 10\n", "e").unwrap_err();
        assert!(err.to_string().contains("merchant_id"), "{err}");
        let err = Config::parse("[cache]\nnegative_ttl = \"0s\"\n", "e").unwrap_err();
        assert!(err.to_string().contains("e:2: cache.negative_ttl: must be between 1ms and 365d"), "{err}");
        let err = Config::parse("[upstream]\ntimeout = \"20000years\"\n", "e").unwrap_err();
        assert!(err.to_string().contains("e:2: upstream.timeout: must be between 1ms and 1h"), "{err}");
    }

    #[test]
    fn require_token_needs_a_token_file_but_remote_changes_alone_are_accepted() {
        let err = Config::parse("[admin]\nrequire_token = true\n", "edge.toml").unwrap_err().to_string();
        assert!(err.contains("edge.toml:2: admin.require_token: needs admin.token_file"), "{err}");
        let with_file = "[admin]\nrequire_token = true\ntoken_file = \"/run/secrets/admin-token\"\n";
        assert!(Config::parse(with_file, "t").is_ok());
        assert!(Config::parse("[admin]\nallow_remote_changes = true\n", "t").is_ok());
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = Config::parse("[server]\nlisten = \n", "edge.toml").unwrap_err();
        assert!(err.to_string().contains("edge.toml:2"), "{err}");
    }

    #[test]
    fn syntax_errors_toml_leaves_unexplained_still_say_what_is_wrong() {
        let err = Config::parse("[server]\nlisten =", "edge.toml").unwrap_err().to_string();
        assert!(err.ends_with("edge.toml:2: invalid TOML syntax: the text ends where more was expected"), "{err}");
        let err = Config::parse("\r[server]\n", "edge.toml").unwrap_err().to_string();
        assert!(err.ends_with("edge.toml:1: invalid TOML syntax at '\\r'"), "{err}");
        let err = Config::parse("#\0\n", "edge.toml").unwrap_err().to_string();
        assert!(err.ends_with("edge.toml:1: invalid TOML syntax at '\\0'"), "{err}");
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let running = Config::default();
        let text = "[server]\nlisten = \"127.0.0.1:7000\"\nmax_batch_size = 5\n[cache]\nnegative_ttl = \"5s\"\n";
        let wanted = Config::parse(text, "t").unwrap();
        let applied = wanted.clone().with_restart_only_from(&running);
        assert_eq!(applied.server.listen, running.server.listen);
        assert_eq!(applied.server.max_batch_size.get(), 5);
        assert_eq!(wanted.changed_keys(&running), ["cache.negative_ttl", "server.listen", "server.max_batch_size"]);
        assert_eq!(applied.changed_keys(&running), ["cache.negative_ttl", "server.max_batch_size"]);
        assert_ne!(applied.hash(), running.hash());
        assert_eq!(running.hash(), Config::default().hash());
    }

    #[test]
    fn the_serving_runtime_defaults_to_one_per_core_and_threads_apply_only_to_it() {
        let config = Config::default();
        assert_eq!(config.server.runtime, ServerRuntime::PerCore);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(config.server.serving_runtimes(), cores);
        let three = Config::parse("[server]\nthreads = 3\n", "t").unwrap();
        assert_eq!(three.server.serving_runtimes(), 3);
        let shared = Config::parse("[server]\nruntime = \"shared\"\n", "t").unwrap();
        assert_eq!((shared.server.runtime, shared.server.serving_runtimes()), (ServerRuntime::Shared, 1));
        let err = Config::parse("[server]\nruntime = \"shared\"\nthreads = 2\n", "e").unwrap_err().to_string();
        assert!(err.contains("e:3: server.threads: applies only to server.runtime = \"per-core\""), "{err}");
        let err = Config::parse("[server]\nthreads = 5000\n", "e").unwrap_err().to_string();
        assert!(err.contains("e:2: server.threads: must be at most 1024"), "{err}");
        let err = Config::parse("[server]\nruntime = \"per_core\"\n", "e").unwrap_err().to_string();
        assert!(err.contains("e:2: server.runtime"), "{err}");
        let running = Config::default();
        let wanted = Config::parse("[server]\nruntime = \"shared\"\n", "t").unwrap();
        assert_eq!(wanted.clone().with_restart_only_from(&running), running);
        assert!(running.restart_only().iter().any(|(key, value)| *key == "server.threads" && value == "one per core"));
    }

    #[test]
    fn effective_config_round_trips() {
        let config = Config::parse("[upstream]\nendpoint = \"http://127.0.0.1:50052\"\n", "t").unwrap();
        assert_eq!(Config::parse(&config.to_toml(), "t").unwrap(), config);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        const EXAMPLE: &str = include_str!("../../config/example.toml");

        /// What a key holds, so generated documents mostly have plausible values and some get through
        /// validation (only those exercise the round trip).
        #[derive(Debug, Clone, Copy)]
        enum Kind {
            Address,
            Duration,
            Count,
            Bool,
            Endpoint,
            Level,
            Format,
            Charset,
            Runtime,
            Path,
        }

        /// A config with every optional setting present, so that serializing it lists every key.
        fn every_key_set() -> Config {
            let mut config = Config::default();
            config.server.tls = Some(TlsConfig {
                cert: "/etc/tls/cert.pem".into(),
                key: "/etc/tls/key.pem".into(),
                client_ca: Some("/etc/tls/ca.pem".into()),
            });
            config.protect.per_client_rate = NonZeroU32::new(10);
            config.protect.per_client_burst = NonZeroU32::new(20);
            config.protect.client_key = Some("x-gateway-id".into());
            config.admin.token_file = Some("/etc/merchant-edge/admin-token".into());
            config.server.threads = NonZeroU32::new(2);
            config
        }

        /// What a key holds, read off its value in the serialized config.
        fn kind_of(key: &str, value: &toml::Value) -> Kind {
            match (key, value) {
                (_, toml::Value::Boolean(_)) => Kind::Bool,
                (_, toml::Value::Integer(_)) => Kind::Count,
                ("endpoint", _) => Kind::Endpoint,
                ("level", _) => Kind::Level,
                ("format", _) => Kind::Format,
                ("charset", _) => Kind::Charset,
                ("runtime", _) => Kind::Runtime,
                (_, toml::Value::String(text)) if text.parse::<SocketAddr>().is_ok() => Kind::Address,
                (_, toml::Value::String(text)) if humantime_serde::re::humantime::parse_duration(text).is_ok() => {
                    Kind::Duration
                }
                _ => Kind::Path,
            }
        }

        type Section = (&'static str, &'static [(&'static str, Kind)]);

        fn collect_sections(prefix: &str, table: &toml::Table, sections: &mut Vec<Section>) {
            let leak = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
            let mut keys = Vec::new();
            for (key, value) in table {
                match value {
                    toml::Value::Table(inner) => collect_sections(&format!("{prefix}.{key}"), inner, sections),
                    value => keys.push((leak(key.clone()), kind_of(key, value))),
                }
            }
            let name = leak(prefix.trim_start_matches('.').to_owned());
            sections.push((name, Box::leak(keys.into_boxed_slice())));
        }

        /// Every section and key of the real config types (so the generated documents cannot drift
        /// from them), each key with what it holds.
        fn sections() -> &'static [Section] {
            static SECTIONS: std::sync::OnceLock<Vec<Section>> = std::sync::OnceLock::new();
            SECTIONS.get_or_init(|| {
                let toml::Value::Table(top) = toml::Value::try_from(every_key_set()).expect("serializes") else {
                    unreachable!("a config serializes to a table")
                };
                let mut sections = Vec::new();
                for (name, value) in &top {
                    if let toml::Value::Table(table) = value {
                        collect_sections(&format!(".{name}"), table, &mut sections);
                    }
                }
                sections
            })
        }

        #[test]
        fn the_generated_keys_are_the_real_ones() {
            let names: Vec<&str> = sections().iter().map(|(name, _)| *name).collect();
            for expected in ["server", "server.tls", "admin", "protect", "cache", "feed", "merchant_id", "log"] {
                assert!(names.contains(&expected), "{expected} missing from {names:?}");
            }
            let protect = sections().iter().find(|(name, _)| *name == "protect").unwrap().1;
            assert!(protect.iter().any(|(key, _)| *key == "client_key"), "optional keys are listed too");
        }

        /// A TOML value as written in a file, via `toml::Value` so strings are escaped correctly.
        fn toml_text(value: toml::Value) -> String {
            value.to_string()
        }

        fn strings(pool: &'static [&'static str]) -> BoxedStrategy<String> {
            prop::sample::select(pool).prop_map(|s| toml_text(toml::Value::String(s.to_owned()))).boxed()
        }

        /// Any scalar, array or inline table, valid for no key in particular.
        fn any_value() -> BoxedStrategy<String> {
            let scalar = prop_oneof![
                any::<i64>().prop_map(toml::Value::Integer),
                prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN), Just(1 << 32)]
                    .prop_map(toml::Value::Integer),
                any::<f64>().prop_map(toml::Value::Float),
                any::<bool>().prop_map(toml::Value::Boolean),
                prop::collection::vec(any::<char>(), 0..24).prop_map(|c| toml::Value::String(c.into_iter().collect())),
                Just(toml::Value::Datetime("1979-05-27T07:32:00Z".parse().expect("a TOML datetime"))),
            ];
            scalar
                .prop_recursive(2, 8, 4, |inner| {
                    prop_oneof![
                        prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                        prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                            .prop_map(|map| toml::Value::Table(map.into_iter().collect())),
                    ]
                })
                .prop_map(toml_text)
                .boxed()
        }

        /// Values for a kind of key: mostly valid, with the boundaries and near misses of each kind.
        fn value_of(kind: Kind) -> BoxedStrategy<String> {
            let plausible = match kind {
                Kind::Address => strings(&[
                    "127.0.0.1:0",
                    "127.0.0.1:7000",
                    "0.0.0.0:50051",
                    "[::1]:9090",
                    "[fe80::1%2]:80",
                    "[::]:65535",
                    "127.0.0.1",
                    "localhost:80",
                    "1.2.3.4:65536",
                ]),
                Kind::Duration => prop_oneof![
                    strings(&[
                        "0s",
                        "1ns",
                        "1ms",
                        "50ms",
                        "99ms",
                        "100ms",
                        "500ms",
                        "10s",
                        "1m",
                        "59m 59s 999ms",
                        "1h",
                        "1h 1ns",
                        "365d",
                        "366d",
                        "1year",
                        "1month 1w 1d",
                        "30",
                        "20000years",
                        "1.5s",
                        "-1s",
                        "",
                        "99999999999999999999s",
                    ]),
                    (0..4_000_000_000u64, prop::sample::select(&["ns", "us", "ms", "s", "m", "h", "d"][..]))
                        .prop_map(|(n, unit)| toml_text(toml::Value::String(format!("{n}{unit}")))),
                ]
                .boxed(),
                Kind::Count => prop_oneof![
                    prop::sample::select(
                        &[0i64, 1, 14, 15, 64, 65, 1000, 65_536, 999_999_999_999, 1_000_000_000_000, 1 << 32, -1][..]
                    ),
                    1..100i64,
                ]
                .prop_map(|n| toml_text(toml::Value::Integer(n)))
                .boxed(),
                Kind::Bool => any::<bool>().prop_map(|b| toml_text(toml::Value::Boolean(b))).boxed(),
                Kind::Endpoint => strings(&[
                    "embedded",
                    "Embedded",
                    "http://10.0.0.5:50052",
                    "https://core.bank:443",
                    "http://[::1]:1/path?q=1",
                    "tcp://core:1",
                    "http://",
                    "core:50052",
                    "http://a b:1",
                ]),
                Kind::Level => strings(&[
                    "info",
                    "TRACE",
                    "off",
                    "merchant_edge=debug,tower=warn",
                    "warn,[lookup{merchant_id=1}]=trace",
                    "[{id=\"a.*\"}]",
                    "[{id=\"(\"}]=info",
                    "target[",
                    "=",
                    ",",
                    "",
                    "not a level",
                ]),
                Kind::Format => strings(&["text", "json", "JSON", "yaml"]),
                Kind::Charset => strings(&["digits", "alphanumeric", "hex", ""]),
                Kind::Runtime => strings(&["per-core", "shared", "Shared", "per_core", "multi-thread", ""]),
                Kind::Path => strings(&["/etc/merchant-edge/tls/server.pem", "relative/key.pem", "", "with\"quote\n"]),
            };
            prop_oneof![6 => plausible, 1 => any_value()].boxed()
        }

        /// A section's settings: each of its keys at most once, in any order, now and then with strays
        /// (a key repeated with any value, or one the section does not know, possibly quoted).
        fn section_body(keys: &'static [(&'static str, Kind)]) -> BoxedStrategy<Vec<String>> {
            let setting = |(key, kind): (&'static str, Kind)| value_of(kind).prop_map(move |v| format!("{key} = {v}"));
            let known = prop::sample::subsequence(keys, 0..=keys.len())
                .prop_flat_map(move |chosen| chosen.into_iter().map(setting).collect::<Vec<_>>());
            let stray_key = prop_oneof![
                prop::sample::select(keys).prop_map(|(key, _)| key.to_owned()).boxed(),
                "[a-z_]{1,12}".boxed(),
                prop::collection::vec(any::<char>(), 0..12)
                    .prop_map(|c| toml_text(toml::Value::String(c.into_iter().collect())))
                    .boxed(),
            ];
            let strays = prop_oneof![
                6 => Just(Vec::new()),
                1 => prop::collection::vec((stray_key, any_value()).prop_map(|(k, v)| format!("{k} = {v}")), 1..3),
            ];
            (known, strays)
                .prop_flat_map(|(known, strays)| {
                    Just(known.into_iter().chain(strays).collect::<Vec<_>>()).prop_shuffle()
                })
                .boxed()
        }

        /// A document of sections (known ones, repeated ones, unknown ones, keys before any header) with
        /// random keys and values.
        fn random_document() -> impl Strategy<Value = String> {
            let known = prop::sample::select(sections())
                .prop_flat_map(|(name, keys)| (Just(format!("[{name}]")), section_body(keys)));
            let unknown = ("[a-z_.]{0,10}", prop::sample::select(sections())).prop_flat_map(|(name, (_, keys))| {
                (
                    prop_oneof![Just(format!("[{name}]")), Just(format!("[[{name}]]")), Just(String::new())],
                    section_body(keys),
                )
            });
            prop::collection::vec(prop_oneof![10 => known, 1 => unknown], 0..5).prop_map(|sections| {
                let lines = sections.into_iter().flat_map(|(header, entries)| std::iter::once(header).chain(entries));
                lines.collect::<Vec<_>>().join("\n")
            })
        }

        #[derive(Debug, Clone)]
        enum Mutation {
            DeleteByte(prop::sample::Index),
            DuplicateLine {
                line: prop::sample::Index,
                to: prop::sample::Index,
            },
            ReplaceValue {
                line: prop::sample::Index,
                value: String,
            },
            /// Turns a commented example (such as `# [server.tls]`) into a setting.
            Uncomment(prop::sample::Index),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                any::<prop::sample::Index>().prop_map(Mutation::DeleteByte),
                (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                    .prop_map(|(line, to)| Mutation::DuplicateLine { line, to }),
                (
                    any::<prop::sample::Index>(),
                    prop_oneof![value_of(Kind::Duration), value_of(Kind::Count), any_value()]
                )
                    .prop_map(|(line, value)| Mutation::ReplaceValue { line, value }),
                any::<prop::sample::Index>().prop_map(Mutation::Uncomment),
            ]
        }

        fn mutate(text: &str, mutation: &Mutation) -> String {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let pick = |lines: &[String], index: &prop::sample::Index, wanted: &dyn Fn(&str) -> bool| {
                let matching: Vec<usize> = (0..lines.len()).filter(|&i| wanted(&lines[i])).collect();
                (!matching.is_empty()).then(|| matching[index.index(matching.len())])
            };
            match mutation {
                Mutation::DeleteByte(index) => {
                    if text.is_empty() {
                        return String::new();
                    }
                    // A byte, not a character: cutting into the example's full-width `０-９` must be
                    // handled too (as the replacement character, since the parser takes a `str`).
                    let mut bytes = text.as_bytes().to_vec();
                    bytes.remove(index.index(bytes.len()));
                    return String::from_utf8_lossy(&bytes).into_owned();
                }
                Mutation::DuplicateLine { line, to } => {
                    if let Some(i) = pick(&lines, line, &|_| true) {
                        let copy = lines[i].clone();
                        lines.insert(to.index(lines.len() + 1), copy);
                    }
                }
                Mutation::ReplaceValue { line, value } => {
                    let setting = |l: &str| !l.trim_start().starts_with('#') && l.contains('=');
                    if let Some(i) = pick(&lines, line, &setting) {
                        let key = lines[i].split('=').next().unwrap_or_default().to_owned();
                        lines[i] = format!("{key}= {value}");
                    }
                }
                Mutation::Uncomment(line) => {
                    let example_setting = |l: &str| {
                        l.strip_prefix("# ")
                            .is_some_and(|l| l.starts_with('[') || l.split_whitespace().nth(1) == Some("="))
                    };
                    if let Some(i) = pick(&lines, line, &example_setting) {
                        lines[i] = lines[i]["# ".len()..].to_owned();
                    }
                }
            }
            lines.join("\n") + "\n"
        }

        /// The properties every config text must have, whatever it holds.
        fn parse_is_total(text: &str) -> Result<(), TestCaseError> {
            match Config::parse(text, "fuzz.toml") {
                Ok(config) => {
                    // What `check-config` prints and the info metric hashes must read back as the same
                    // config, or a reload of the effective config would change the running one.
                    let effective = config.to_toml();
                    let again = Config::parse(&effective, "effective");
                    prop_assert!(
                        matches!(&again, Ok(same) if *same == config),
                        "input:\n{text}\neffective:\n{effective}\nreparsed: {again:?}"
                    );
                    prop_assert_eq!(again.expect("checked above").to_toml(), effective);
                }
                Err(err) => {
                    let ConfigError::Invalid { origin, problems } = &err else {
                        return Err(TestCaseError::fail(format!("parse cannot fail to read: {err}")));
                    };
                    prop_assert_eq!(origin, "fuzz.toml");
                    prop_assert!(!problems.is_empty());
                    let lines = text.matches('\n').count() + 1;
                    for problem in problems {
                        prop_assert!(!problem.message.trim().is_empty(), "{problem:?}");
                        prop_assert!(problem.line.is_none_or(|line| (1..=lines).contains(&line)), "{problem:?}");
                    }
                    let display = err.to_string();
                    prop_assert!(display.starts_with("invalid config:\n  fuzz.toml"), "{display}");
                }
            }
            Ok(())
        }

        #[test]
        fn the_unmutated_example_round_trips() {
            assert!(Config::parse(EXAMPLE, "example.toml").is_ok());
            parse_is_total(EXAMPLE).unwrap();
        }

        proptest! {
            // Default case count (256, or PROPTEST_CASES) so a long local run needs no code change.

            #[test]
            fn parse_never_panics_on_any_text(text in prop_oneof![
                prop::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
                // Mostly TOML punctuation, so the parser gets past the first character.
                prop::collection::vec(prop::sample::select(&[
                    '[', ']', '=', '"', '\'', '.', ',', '{', '}', '#', '\n', ' ', '\\', 'a', 'k', '1', '0', 'e',
                    '-', '+', ':', 'T', 'Z', '_', '\u{FF10}', '\u{3000}', '\r', '\t', '\u{0}',
                ][..]), 0..200).prop_map(String::from_iter),
            ]) {
                parse_is_total(&text)?;
            }

            #[test]
            fn parse_never_panics_on_random_documents(text in random_document()) {
                parse_is_total(&text)?;
            }

            #[test]
            fn parse_never_panics_on_a_mutated_example(mutations in prop::collection::vec(mutation(), 1..=4)) {
                let text = mutations.iter().fold(EXAMPLE.to_owned(), |text, m| mutate(&text, m));
                parse_is_total(&text)?;
            }
        }
    }
}
