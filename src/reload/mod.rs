//! Live config reload. Every trigger (SIGHUP, `POST /reload`, a change of the file) comes here: the
//! file is parsed and validated whole, everything that can still fail (reading TLS files) is prepared,
//! and only then is the new config swapped in and applied. A bad config changes nothing and is reported
//! with its file, line and key. Restart-only keys keep their running values and are reported as
//! "restart required".
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Mutex};
use tracing::Instrument;

mod metrics;

pub use self::metrics::{ConfigMetrics, ReloadTrigger};
use crate::admin_auth::{AdminToken, TokenError};
use crate::cache::Cache;
use crate::config::{Config, ConfigError, LiveConfig};
use crate::telemetry::LogControl;
use crate::tls::{self, TlsError, TlsSettings};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: the edge was started without --config (on the embedded default)")]
    /// The edge runs on the embedded default: there is no file to reload.
    NoFile,
    #[error(transparent)]
    /// The file does not hold a valid config.
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    /// The TLS files it names cannot be used.
    Tls(#[from] TlsError),
    #[error(transparent)]
    /// The admin token file cannot be used.
    AdminToken(#[from] TokenError),
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Keys whose new values are now in force.
    pub applied: Vec<String>,
    /// Keys whose new values wait for a restart, with what they would become.
    pub restart_required: Vec<String>,
    /// Hash of the effective config now running.
    pub config_hash: String,
}

/// Reloads the config file: validated whole, swapped atomically, applied.
pub struct Reloader {
    path: Option<PathBuf>,
    config: LiveConfig,
    cache: Arc<Cache>,
    metrics: ConfigMetrics,
    log: Option<LogControl>,
    tls: Option<Arc<TlsSettings>>,
    /// The admin bearer token, re-read from `admin.token_file` by every reload.
    admin_token: Arc<AdminToken>,
    /// One reload at a time, whatever triggered it.
    serial: Mutex<()>,
}

impl Reloader {
    /// A reloader for the config in `path` (none: the embedded default).
    pub fn new(
        path: Option<PathBuf>,
        config: LiveConfig,
        cache: Arc<Cache>,
        metrics: ConfigMetrics,
        log: Option<LogControl>,
        tls: Option<Arc<TlsSettings>>,
    ) -> Self {
        metrics.loaded(&config.load().hash());
        Self { path, config, cache, metrics, log, tls, admin_token: Arc::default(), serial: Mutex::new(()) }
    }

    /// The config file, if the edge has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The admin token in force. Empty until the starter stores the one read at start (so guarded
    /// endpoints refuse remote callers, and loopback ones under `require_token`, rather than let them in).
    pub fn admin_token(&self) -> &Arc<AdminToken> {
        &self.admin_token
    }

    /// Reloads the config file, or changes nothing and says why.
    pub async fn reload(&self, trigger: ReloadTrigger) -> Result<ReloadReport, ReloadError> {
        // Every event of one reload carries its trigger (as the span `reload`), so the lines it logs
        // can be told apart from a concurrent one's in a JSON pipeline.
        let span = tracing::info_span!("reload", ?trigger);
        let _serial = self.serial.lock().await;
        let result = self.reload_file().instrument(span.clone()).await;
        let _in_span = span.enter();
        // Without a file nothing was tried, and the running config is not in doubt.
        if !matches!(result, Err(ReloadError::NoFile)) {
            self.metrics.reloaded(trigger, result.is_ok());
        }
        match &result {
            Ok(report) => tracing::info!(
                ?trigger,
                applied = ?report.applied,
                restart_required = ?report.restart_required,
                hash = %report.config_hash,
                "config reloaded"
            ),
            Err(error) => tracing::error!(?trigger, %error, "config reload rejected; the running config stays"),
        }
        result
    }

    async fn reload_file(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let wanted = Config::load(path)?;
        let running = self.config.load_full();
        let next = wanted.clone().with_restart_only_from(&running);
        let restart_required: Vec<String> = wanted
            .restart_only()
            .into_iter()
            .zip(running.restart_only())
            .filter(|(wanted, running)| wanted != running)
            .map(|((key, value), (_, now))| format!("{key} = {value} (running: {now})"))
            .collect();
        // Everything that can fail happens before anything changes.
        let tls = match (&self.tls, &next.server.tls) {
            (Some(settings), Some(config)) => Some((settings, tls::load(config)?)),
            _ => None,
        };
        let admin_token = crate::admin_auth::read_token(&next.admin)?;
        let applied = next.changed_keys(&running);
        let config_hash = next.hash();
        self.config.store(Arc::new(next.clone()));
        if let Some((settings, config)) = tls {
            settings.replace(config);
        }
        self.admin_token.replace(admin_token);
        // Only a changed level is installed, so a reload of other keys keeps a RUST_LOG filter.
        if let (Some(log), true) = (&self.log, next.log.level != running.log.level) {
            if let Err(error) = log.set_level(&next.log.level) {
                tracing::warn!(%error, "log level not changed");
            }
        }
        if self.cache.resize(&next.cache).await {
            tracing::info!(
                positive = %next.cache.positive_capacity,
                negative = %next.cache.negative_capacity,
                "stores rebuilt for the new capacities; entries migrated"
            );
        }
        self.metrics.loaded(&config_hash);
        Ok(ReloadReport { applied, restart_required, config_hash })
    }
}

/// Whether a file-system event in the config's directory can mean the config changed: writes,
/// creations, renames and removals of the file itself, or of Kubernetes' `..data` symlink. Reads are
/// not (the watcher's own reads would otherwise wake it forever).
fn may_change(event: &notify::Event, file_name: &std::ffi::OsStr) -> bool {
    use notify::EventKind;
    matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any)
        && event.paths.iter().any(|path| {
            path.file_name().is_some_and(|name| name == file_name || name.to_string_lossy().starts_with("..data"))
        })
}

/// Reloads whenever the config file changes: watches its directory (a Kubernetes ConfigMap update swaps
/// a symlink there rather than writing the file), waits until events stop for `debounce` (at most ten
/// debounce periods in all), and reloads if the file's content differs from the last content that
/// loaded. Runs until the returned watcher is dropped.
pub fn watch_file(reloader: Arc<Reloader>, debounce: Duration) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let path = reloader.path().map(Path::to_path_buf).ok_or(notify::Error::generic("no config file to watch"))?;
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let file_name =
        path.file_name().map(ToOwned::to_owned).ok_or(notify::Error::generic("the config path names no file"))?;
    let (events, mut changed) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| may_change(&event, &file_name)) {
            let _ = events.send(());
        }
    })?;
    watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
    let span = tracing::info_span!("config_watch", path = %path.display());
    tokio::spawn(
        async move {
            let mut loaded = tokio::fs::read(&path).await.ok();
            while changed.recv().await.is_some() {
                let settle_by = tokio::time::Instant::now() + debounce * 10;
                loop {
                    match tokio::time::timeout(debounce, changed.recv()).await {
                        Ok(Some(())) if tokio::time::Instant::now() < settle_by => continue,
                        Ok(Some(())) | Err(_) => break,
                        Ok(None) => return,
                    }
                }
                let content = tokio::fs::read(&path).await.ok();
                if content.is_some() && content != loaded && reloader.reload(ReloadTrigger::FileWatch).await.is_ok() {
                    loaded = content;
                }
            }
        }
        .instrument(span),
    );
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, ModifyKind};
    use notify::{Event, EventKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_the_config_or_its_configmap_link_count() {
        let name = std::ffi::OsStr::new("edge.toml");
        assert!(may_change(&event(EventKind::Modify(ModifyKind::Any), "/etc/edge/edge.toml"), name));
        assert!(may_change(&event(EventKind::Create(CreateKind::Any), "/etc/edge/..data"), name));
        assert!(may_change(&event(EventKind::Create(CreateKind::Any), "/etc/edge/..data_tmp"), name));
        assert!(!may_change(&event(EventKind::Access(AccessKind::Any), "/etc/edge/edge.toml"), name), "reads");
        assert!(!may_change(&event(EventKind::Modify(ModifyKind::Any), "/etc/edge/other.toml"), name));
    }
}
