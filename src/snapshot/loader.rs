//! Reading a snapshot file into stores off to the side: every check passes (header, every record, the
//! trailer's count and checksum, nothing after it) before the stores are swapped in, so a file that is
//! damaged anywhere is rejected whole and never half-loaded.
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::format::{self, RejectReason, Rejected, Summing, Verified};
use super::writer::age_at;
use crate::cache::Restoring;
use crate::merchant_id::IdRule;

/// Why nothing was loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// No file at the path: a first start, not a problem.
    #[error("no snapshot file")]
    Missing,
    /// A file that is not a usable snapshot.
    #[error(transparent)]
    Rejected(#[from] Rejected),
}

/// Opens `path` for reading as a snapshot, telling a missing file from an unusable one.
pub fn open(path: &Path) -> Result<Summing<BufReader<File>>, LoadError> {
    let unreadable = |error: &std::io::Error| LoadError::Rejected(Rejected::unreadable(error));
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(error) => return Err(unreadable(&error)),
        Ok(metadata) if metadata.is_dir() => {
            return Err(LoadError::Rejected(Rejected {
                reason: RejectReason::Unreadable,
                message: "unreadable: it is a directory, not a file (snapshot.path must name a file)".into(),
            }))
        }
        Ok(_) => {}
    }
    let file = File::open(path).map_err(|error| unreadable(&error))?;
    Ok(Summing::new(BufReader::with_capacity(1 << 20, file)))
}

/// Loads the snapshot at `path` (written under `rule`) into `restoring`, with ages counted back from
/// `now_unix_ms`. Only an `Ok` means `restoring` holds the file's whole content.
pub fn load(path: &Path, rule: &IdRule, now_unix_ms: i64, restoring: &mut Restoring) -> Result<Verified, LoadError> {
    let mut input = open(path)?;
    let header = format::read_header(&mut input, Some(rule))?;
    let verified = format::read_records(input, header, |record| {
        let merchant = record.merchant.as_ref().expect("read_records checks every record holds a merchant");
        restoring.put(merchant, record.as_of_sequence, age_at(now_unix_ms, record.learned_at_unix_ms));
    })?;
    Ok(verified)
}
