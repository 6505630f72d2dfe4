//! The ghz data files (see `crate::keys` for how IDs are drawn):
//! - hits: merchants drawn uniformly from the data set;
//! - mix: a realistic fleet, hot merchants drawn from a Zipf distribution (s = 1), 5% IDs unknown to
//!   the core and 1% malformed (wrong length, a letter, inner spaces);
//! - negative flood: distinct well-formed IDs that no core knows (prefix `897`, outside the scheme);
//! - batch: BatchLookup requests of 100 IDs drawn like the mix (without malformed ones).
use std::path::{Path, PathBuf};

use fastrand::Rng;
use merchant_edge::sim::dataset::synthetic_id;
use serde_json::{json, Value};

use crate::keys::{unknown_id, Keys, UNKNOWN_SHARE};

const MALFORMED_SHARE: f64 = 0.01;
const BATCH_SIZE: usize = 100;

fn lookups(ids: impl Iterator<Item = String>) -> Value {
    Value::Array(ids.map(|id| json!({ "merchant_id": id })).collect())
}

/// Writes every data file into `out`; returns each file with its request count.
pub fn write_all(out: &Path, merchants: u64, requests: usize, seed: u64) -> std::io::Result<Vec<(PathBuf, usize)>> {
    if merchants == 0 || requests == 0 {
        return Err(std::io::Error::other("--merchants and --requests must be at least 1"));
    }
    std::fs::create_dir_all(out)?;
    let mut random = Rng::with_seed(seed);
    let hits = lookups((0..requests).map(|_| synthetic_id(random.u64(0..merchants))));
    let mut mix = Keys::zipf(merchants, seed + 1);
    let realistic = lookups((0..requests).map(|_| mix.next_id(UNKNOWN_SHARE, MALFORMED_SHARE)));
    let mut random = Rng::with_seed(seed + 2);
    let flood = lookups((0..requests).map(|_| unknown_id(&mut random)));
    let batches = (requests / BATCH_SIZE).max(1);
    let batch = Value::Array(
        (0..batches)
            .map(|_| json!({ "merchant_ids": (0..BATCH_SIZE).map(|_| mix.next_id(UNKNOWN_SHARE, 0.0)).collect::<Vec<_>>() }))
            .collect(),
    );
    let mut written = Vec::new();
    for (name, value, count) in [
        ("hits.json", hits, requests),
        ("mix.json", realistic, requests),
        ("negative-flood.json", flood, requests),
        ("batch.json", batch, batches),
    ] {
        let path = out.join(name);
        std::fs::write(&path, serde_json::to_string(&value).map_err(std::io::Error::other)?)?;
        written.push((path, count));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_files_are_what_the_documented_command_writes() {
        let dir = std::env::temp_dir().join(format!("merchant-loadgen-committed-{}", std::process::id()));
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        for (path, _) in write_all(&dir, 100_000, 10_000, 7).unwrap() {
            let name = path.file_name().unwrap();
            let fresh = std::fs::read(&path).unwrap();
            assert!(fresh == std::fs::read(committed.join(name)).unwrap(), "{name:?} is stale: rerun the data command");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_deterministic_and_have_the_documented_shares() {
        let dir = std::env::temp_dir().join(format!("merchant-loadgen-{}", std::process::id()));
        write_all(&dir, 100_000, 10_000, 7).unwrap();
        let first = std::fs::read(dir.join("mix.json")).unwrap();
        write_all(&dir, 100_000, 10_000, 7).unwrap();
        assert_eq!(first, std::fs::read(dir.join("mix.json")).unwrap(), "same seed, same file");
        let mix: Vec<Value> = serde_json::from_slice(&first).unwrap();
        let rule = merchant_edge::merchant_id::IdRule::default();
        let ids: Vec<&str> = mix.iter().map(|r| r["merchant_id"].as_str().unwrap()).collect();
        let malformed = ids.iter().filter(|id| rule.normalise(id).is_err()).count();
        let unknown = ids.iter().filter(|id| id.starts_with("897") && rule.normalise(id).is_ok()).count();
        assert!((50..150).contains(&malformed), "about 1% malformed: {malformed}");
        assert!((400..600).contains(&unknown), "about 5% unknown: {unknown}");
        let batch: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join("batch.json")).unwrap()).unwrap();
        assert_eq!((batch.len(), batch[0]["merchant_ids"].as_array().unwrap().len()), (100, 100));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
