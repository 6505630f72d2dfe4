//! Request mixes over the simulator's ID scheme (`898` + 12-digit index):
//! - hits: merchants drawn uniformly from the data set;
//! - mix: a realistic fleet, hot merchants drawn from a Zipf distribution (s = 1), 5% IDs unknown to
//!   the core and 1% malformed (wrong length, a letter, inner spaces);
//! - negative flood: distinct well-formed IDs that no core knows (prefix `897`, outside the scheme);
//! - batch: BatchLookup requests of 100 IDs drawn like the mix (without malformed ones).
//!
//! Zipf ranks are spread over the data set by a fixed bijection (rank r is merchant `(r * 7919 + 13)
//! mod merchants` when 7919 does not divide the count), so hot merchants are not just the first few.
use std::path::{Path, PathBuf};

use fastrand::Rng;
use merchant_edge::sim::dataset::synthetic_id;
use serde_json::{json, Value};

const UNKNOWN_SHARE: f64 = 0.05;
const MALFORMED_SHARE: f64 = 0.01;
const BATCH_SIZE: usize = 100;
const ZIPF_EXPONENT: f64 = 1.0;

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn sample(&self, random: &mut Rng) -> u64 {
        let target = random.f64() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < target) as u64
    }
}

/// Spreads Zipf ranks over the data set.
fn merchant_for_rank(rank: u64, merchants: u64) -> u64 {
    if merchants.is_multiple_of(7919) {
        rank
    } else {
        (rank * 7919 + 13) % merchants
    }
}

fn unknown_id(random: &mut Rng) -> String {
    format!("897{:012}", random.u64(0..1_000_000_000_000))
}

fn malformed_id(random: &mut Rng) -> String {
    let valid = synthetic_id(random.u64(0..1000));
    match random.u8(0..3) {
        0 => valid[..14].to_owned(),
        1 => format!("{}X{}", &valid[..7], &valid[8..]),
        _ => format!("{} {}", &valid[..7], &valid[7..]),
    }
}

struct Mix {
    random: Rng,
    zipf: Zipf,
    merchants: u64,
}

impl Mix {
    fn next_id(&mut self, malformed_share: f64) -> String {
        let roll = self.random.f64();
        if roll < malformed_share {
            malformed_id(&mut self.random)
        } else if roll < malformed_share + UNKNOWN_SHARE {
            unknown_id(&mut self.random)
        } else {
            synthetic_id(merchant_for_rank(self.zipf.sample(&mut self.random), self.merchants))
        }
    }
}

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
    let mut mix = Mix { random: Rng::with_seed(seed + 1), zipf: Zipf::new(merchants, ZIPF_EXPONENT), merchants };
    let realistic = lookups((0..requests).map(|_| mix.next_id(MALFORMED_SHARE)));
    let mut random = Rng::with_seed(seed + 2);
    let flood = lookups((0..requests).map(|_| unknown_id(&mut random)));
    let batches = (requests / BATCH_SIZE).max(1);
    let batch = Value::Array(
        (0..batches)
            .map(|_| json!({ "merchant_ids": (0..BATCH_SIZE).map(|_| mix.next_id(0.0)).collect::<Vec<_>>() }))
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
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(1000, 1.0);
        let mut random = Rng::with_seed(1);
        let samples: Vec<u64> = (0..20_000).map(|_| zipf.sample(&mut random)).collect();
        assert!(samples.iter().all(|&rank| rank < 1000));
        let top_ten = samples.iter().filter(|&&rank| rank < 10).count() as f64 / samples.len() as f64;
        // H(10)/H(1000) = 2.93 / 7.49: the ten hottest take about 39% of the traffic.
        assert!((0.35..0.43).contains(&top_ten), "{top_ten}");
    }

    #[test]
    fn ranks_map_to_distinct_merchants() {
        let merchants = 100_000;
        let mapped: std::collections::HashSet<u64> = (0..merchants).map(|r| merchant_for_rank(r, merchants)).collect();
        assert_eq!(mapped.len() as u64, merchants);
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
