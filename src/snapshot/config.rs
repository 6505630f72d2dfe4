//! The local snapshot's settings (`[snapshot]`).
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where and how often the edge writes what it holds, so that a restart answers without the core.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The snapshot file. Empty (the default, for the embedded demo): no snapshot is read or written.
    /// Its directory must be writable: the file is replaced by renaming a temporary file written beside
    /// it. Production: `/var/lib/merchant-edge/snapshot.bin` (the systemd unit's state directory).
    pub path: PathBuf,
    /// How often the snapshot is written while serving (it is written once more during a drain).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Whether an edge that loaded a snapshot at start reports ready at once, before the core answers
    /// (so terminals are served while the core is down); otherwise only once the change feed follows
    /// the core again. Read at start.
    pub ready_when_core_down: bool,
}

impl SnapshotConfig {
    /// The snapshot file, when snapshots are on.
    pub fn file(&self) -> Option<&std::path::Path> {
        (!self.path.as_os_str().is_empty()).then_some(self.path.as_path())
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { path: PathBuf::new(), interval: Duration::from_secs(60), ready_when_core_down: true }
    }
}
