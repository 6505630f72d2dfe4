//! Writing a snapshot file crash-safe: a temporary file in the same directory, fsync, an atomic rename
//! over the previous snapshot, and an fsync of the directory (so the rename itself survives a power
//! loss). A `kill -9` at any moment leaves either the previous complete snapshot or the new complete
//! one at the path, never a part of one; a stale temporary file is simply overwritten next time.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::format::{self, Header, Summing};
use crate::cache::Stores;

/// Why a snapshot could not be written (the previous one, if any, is still in place).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The temporary file could not be created or written.
    #[error(
        "cannot write {path}: {source} (the snapshot's directory must exist and be writable by the edge, \
         with room for another copy of the snapshot)"
    )]
    Write {
        /// The temporary file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The finished file could not replace the previous snapshot.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The snapshot path.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory could not be synced, so the rename might not survive a power loss.
    #[error("cannot sync directory {path} after renaming the snapshot into it: {source}")]
    SyncDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `snapshot.path` names no file.
    #[error("snapshot.path {0} does not name a file")]
    NotAFile(PathBuf),
    /// A resync replaced the stores while they were being written: the file would mix two states.
    #[error(
        "a resync began while the snapshot was being written; kept the previous one, the next interval writes again"
    )]
    Resynced,
}

/// What a complete write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The file's size.
    pub bytes: u64,
    /// Merchants in it.
    pub merchants: u64,
}

/// The temporary file a snapshot at `path` is written to before it is renamed over `path`.
pub fn temporary_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.tmp")))
}

/// Converts the store's instants to wall-clock time, as of one reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// Unix milliseconds at `instant`.
    pub unix_ms: i64,
    /// The same moment on tokio's clock.
    pub instant: Instant,
}

impl Clocks {
    /// Both clocks now.
    pub fn now() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { unix_ms: i64::try_from(unix.as_millis()).unwrap_or(i64::MAX), instant: Instant::now() }
    }

    fn unix_ms_of(&self, instant: Instant) -> i64 {
        let age = self.instant.saturating_duration_since(instant);
        self.unix_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Writes every merchant of `stores` under `header` to `path`, crash-safe. The stores are walked a
/// shard at a time: each shard's records are encoded into a buffer under its read lock (lookups read
/// on; memory stays bounded by one shard), and the buffer is written with no lock held. `still_valid`
/// is asked before the rename: false keeps the previous snapshot.
pub fn write_file(
    path: &Path,
    header: &Header,
    stores: &Stores,
    clocks: Clocks,
    still_valid: impl Fn() -> bool,
) -> Result<Written, WriteError> {
    let temporary = temporary_path(path).ok_or_else(|| WriteError::NotAFile(path.to_owned()))?;
    let result = write_temporary(&temporary, header, stores, clocks).and_then(|written| {
        if !still_valid() {
            return Err(WriteError::Resynced);
        }
        std::fs::rename(&temporary, path).map_err(|source| WriteError::Rename {
            from: temporary.clone(),
            to: path.to_owned(),
            source,
        })?;
        Ok(written)
    });
    let written = match result {
        Ok(written) => written,
        Err(error) => {
            // Best effort: a leftover is overwritten by the next write anyway.
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| WriteError::SyncDirectory { path: directory.to_owned(), source })?;
    Ok(written)
}

fn write_temporary(path: &Path, header: &Header, stores: &Stores, clocks: Clocks) -> Result<Written, WriteError> {
    let failed = |source| WriteError::Write { path: path.to_owned(), source };
    let file = File::create(path).map_err(failed)?;
    let mut out = Summing::new(BufWriter::with_capacity(1 << 20, file));
    format::write_header(&mut out, header).map_err(failed)?;
    let mut merchants = 0u64;
    let mut buffer = Vec::new();
    for shard in 0..stores.positive_shards() {
        stores.for_each_positive_in_shard(shard, |_, entry| {
            let learned_at = clocks.unix_ms_of(entry.learned_at);
            format::encode_record(&mut buffer, entry.merchant.as_slice(), entry.as_of_sequence, learned_at);
            merchants += 1;
        });
        out.write_all(&buffer).map_err(failed)?;
        buffer.clear();
    }
    format::write_trailer(&mut out, merchants).map_err(failed)?;
    let bytes = out.position();
    let file = out.into_inner().into_inner().map_err(|error| failed(error.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok(Written { bytes, merchants })
}

/// How long ago (at `clocks`) a merchant learned at `learned_at_unix_ms` was learned; zero for a time
/// in the future (the wall clock stepped back).
pub fn age_at(clocks_unix_ms: i64, learned_at_unix_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(clocks_unix_ms.saturating_sub(learned_at_unix_ms)).unwrap_or(0))
}
