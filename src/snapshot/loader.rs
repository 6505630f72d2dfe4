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
use crate::wire::EncodedMerchant;

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

/// Records handed from the reading thread to the storing one at a time.
const BATCH: usize = 4096;
/// Batches in flight between them: memory stays bounded whatever the file's size.
const BATCHES_IN_FLIGHT: usize = 4;

/// One record, decoded and ready for the stores.
struct Decoded {
    id: String,
    merchant: EncodedMerchant,
    as_of_sequence: u64,
    learned_at_unix_ms: i64,
}

/// Loads the snapshot at `path` (written under `rule`) into `restoring`, with ages counted back from
/// `now_unix_ms`. Only an `Ok` means `restoring` holds the file's whole content. Reading (I/O, the
/// checksum, decoding) runs on its own thread while this one stores, so a load takes about the longer
/// of the two rather than their sum.
pub fn load(path: &Path, rule: &IdRule, now_unix_ms: i64, restoring: &mut Restoring) -> Result<Verified, LoadError> {
    let mut input = open(path)?;
    let header = format::read_header(&mut input, Some(rule))?;
    let (batches, decoded) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let verified = format::read_records(input, header, |record, key| {
                batch.push(Decoded {
                    id: key.merchant_id,
                    merchant: EncodedMerchant::from_parts(record.merchant, key.status),
                    as_of_sequence: record.as_of_sequence,
                    learned_at_unix_ms: record.learned_at_unix_ms,
                });
                if batch.len() == BATCH {
                    // A send fails only if the storing side is gone, which it never is first.
                    let _ = batches.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            });
            let _ = batches.send(batch);
            verified
        });
        for batch in decoded {
            for record in batch {
                let age = age_at(now_unix_ms, record.learned_at_unix_ms);
                restoring.put(&record.id, record.merchant, record.as_of_sequence, age);
            }
        }
        Ok(reader.join().expect("reading a snapshot does not panic")?)
    })
}
