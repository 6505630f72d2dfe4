//! The local snapshot: what the edge holds, on disk, so that an edge restarted while the bank core is
//! unreachable still answers, and resumes the change feed from where it was instead of reloading.
//!
//! - [`mod@format`]: the file (a versioned header, length-delimited protobuf records, a checksummed
//!   trailer); [`writer`]: written crash-safe (temporary file, fsync, rename, directory fsync);
//!   [`loader`]: read back whole or not at all; [`inspect`]: `merchant-edge snapshot inspect FILE`.
//! - [`Snapshots`] ties them to a running edge: at start it restores the stores through the cache
//!   room ([`crate::cache::Cache::begin_restore`]) before anything else runs; then it writes every
//!   `snapshot.interval` from a blocking thread, and once more during a drain.
//!
//! What a snapshot claims must hold: its sequence is read before the stores are walked, so every
//! change up to it is in the records (later changes may be too; replaying them is harmless), and a
//! write during which a resync began is thrown away. Negative entries are never written: a "not found"
//! must not outlive the feed that vouched for it.
mod config;
pub mod format;
pub mod inspect;
pub mod loader;
mod metrics;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub use self::config::SnapshotConfig;
pub use self::metrics::{LoadOutcome, SnapshotMetrics};
use self::writer::{Clocks, WriteError, Written};
use crate::cache::Cache;
use crate::feed::{FeedState, Position};
use crate::live::Live;
use crate::merchant_id::IdRule;

/// A snapshot the edge restored at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The file.
    pub path: PathBuf,
    /// Where in the core's history the stores now are.
    pub position: Position,
    /// When the snapshot was written.
    pub written_at: SystemTime,
    /// Merchants restored.
    pub merchants: u64,
    /// Merchants left out: learned too long ago to be answered even stale.
    pub too_old: u64,
}

impl Restored {
    /// How old the snapshot is now.
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.written_at).unwrap_or_default()
    }
}

/// The snapshot of one running edge: restores at start, writes while serving.
pub struct Snapshots {
    settings: Live<SnapshotConfig>,
    id_rule: Live<IdRule>,
    cache: Arc<Cache>,
    feed: Arc<FeedState>,
    metrics: SnapshotMetrics,
    /// One write at a time (the periodic one and the drain's share the temporary file).
    writing: tokio::sync::Mutex<()>,
}

/// What [`Snapshots`] works with.
pub struct SnapshotParts {
    /// The `[snapshot]` settings, live.
    pub settings: Live<SnapshotConfig>,
    /// The ID rule the stores' IDs are normalised under, live.
    pub id_rule: Live<IdRule>,
    /// The cache room: restored into, and read when writing.
    pub cache: Arc<Cache>,
    /// The feed's position, written with the merchants.
    pub feed: Arc<FeedState>,
    /// The snapshot's metrics.
    pub metrics: SnapshotMetrics,
}

impl Snapshots {
    /// Snapshots for one edge.
    pub fn new(parts: SnapshotParts) -> Self {
        let SnapshotParts { settings, id_rule, cache, feed, metrics } = parts;
        Self { settings, id_rule, cache, feed, metrics, writing: tokio::sync::Mutex::new(()) }
    }

    fn path(&self) -> Option<PathBuf> {
        self.settings.load().file().map(Path::to_path_buf)
    }

    /// Restores the stores from the snapshot file, if there is a valid one (call before anything else
    /// reads or writes the stores). A file that cannot be used is rejected whole, logged once with why,
    /// and counted; the edge then starts as it would without one.
    pub async fn restore(&self) -> Option<Restored> {
        let path = self.path()?;
        let rule = self.id_rule.load().clone();
        let started = std::time::Instant::now();
        let mut restoring = self.cache.begin_restore(Instant::now());
        let now_unix_ms = Clocks::now().unix_ms;
        let reading = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            loader::load(&reading, &rule, now_unix_ms, &mut restoring).map(|verified| (verified, restoring))
        })
        .await
        .expect("loading a snapshot does not panic");
        let (verified, restoring) = match loaded {
            Ok(loaded) => loaded,
            Err(loader::LoadError::Missing) => {
                self.metrics.loaded(LoadOutcome::Missing);
                tracing::info!(path = %path.display(), "no local snapshot yet; starting from the core");
                return None;
            }
            Err(loader::LoadError::Rejected(rejected)) => {
                self.metrics.loaded(rejected.reason.into());
                tracing::warn!(
                    path = %path.display(),
                    reason = rejected.reason.label(),
                    "local snapshot {} rejected: {rejected}; starting from the core as without one",
                    path.display()
                );
                return None;
            }
        };
        let (merchants, too_old) = restoring.counts();
        self.cache.finish_restore(restoring).await;
        self.metrics.loaded(LoadOutcome::Loaded);
        let header = verified.header;
        let written_at = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(header.written_at_unix_ms).unwrap_or_default());
        let restored = Restored {
            path,
            position: Position { sequence: header.sequence, incarnation: header.incarnation },
            written_at,
            merchants,
            too_old,
        };
        tracing::info!(
            path = %restored.path.display(),
            merchants,
            too_old,
            sequence = restored.position.sequence,
            incarnation = %restored.position.incarnation,
            age = ?restored.age(),
            bytes = verified.bytes,
            elapsed = ?started.elapsed(),
            "local snapshot loaded; serving from it"
        );
        Some(restored)
    }

    /// Writes the snapshot now (waiting for a write in progress first). `Ok(None)`: nothing to write,
    /// because snapshots are off or the feed is not in step with the core yet (a snapshot must say
    /// where in the core's history its merchants are).
    pub async fn write(&self) -> Result<Option<Written>, WriteError> {
        let _one_at_a_time = self.writing.lock().await;
        let Some(path) = self.path() else { return Ok(None) };
        // The order matters: the epoch and position before the stores, so the stores hold at least
        // every change the header claims.
        let epoch = self.cache.resync_epoch();
        let Some(incarnation) = self.feed.incarnation() else {
            tracing::debug!("local snapshot not written: the feed is not in step with the core yet");
            return Ok(None);
        };
        let clocks = Clocks::now();
        let header = format::Header {
            sequence: self.feed.applied(),
            incarnation: incarnation.to_string(),
            written_at_unix_ms: clocks.unix_ms,
            id_rule_fingerprint: format::id_rule_fingerprint(&self.id_rule.load()),
            id_rule: format::describe_rule(&self.id_rule.load()),
            written_by: format!("merchant-edge {}", env!("CARGO_PKG_VERSION")),
        };
        let stores = arc_swap::Guard::into_inner(self.cache.stores());
        let (cache, feed) = (self.cache.clone(), self.feed.clone());
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let still_valid =
                || cache.resync_epoch() == epoch && feed.incarnation().as_deref() == Some(incarnation.as_ref());
            writer::write_file(&path, &header, &stores, clocks, still_valid)
        })
        .await
        .expect("writing a snapshot does not panic");
        match &result {
            Ok(written) => self.metrics.written(started.elapsed(), written.bytes, written.merchants),
            Err(_) => self.metrics.write_failed(),
        }
        result.map(Some)
    }

    /// Writes every `snapshot.interval` until dropped (a failed write keeps the previous snapshot and
    /// is retried at the next interval).
    pub async fn run(self: Arc<Self>) {
        loop {
            let interval = self.settings.load().interval;
            tokio::time::sleep(interval).await;
            match self.write().await {
                Ok(Some(written)) => tracing::debug!(?written, "local snapshot written"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "local snapshot not written"),
            }
        }
    }

    /// The drain's last write, after the last call finished: the next start resumes from here.
    pub async fn write_at_drain(&self) {
        let started = std::time::Instant::now();
        match self.write().await {
            Ok(Some(written)) => tracing::info!(
                merchants = written.merchants,
                bytes = written.bytes,
                elapsed = ?started.elapsed(),
                "local snapshot written for the next start"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "local snapshot not written at drain; the previous one stays"),
        }
    }
}
