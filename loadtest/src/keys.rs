//! Drawing merchant IDs over the simulator's ID scheme (`898` + 12-digit index), for the ghz data
//! files and the load generator alike. Zipf ranks are spread over the data set by a fixed bijection
//! (rank r is merchant `(r * 7919 + 13) mod merchants` when 7919 does not divide the count), so hot
//! merchants are not just the first few.
use std::sync::Arc;

use fastrand::Rng;
use merchant_edge::sim::dataset::synthetic_id;

/// Share of well-formed IDs that no core knows.
pub const UNKNOWN_SHARE: f64 = 0.05;
const ZIPF_EXPONENT: f64 = 1.0;

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s. The table is shared by the
/// callers of one run: at 10,000,000 merchants it is 80 MB and 10,000,000 `powf` to build, which 64
/// closed-loop callers each building their own turned into 5 GB and seconds of the measured time.
#[derive(Clone)]
struct Zipf {
    cumulative: Arc<[f64]>,
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

/// A well-formed ID outside the simulator's scheme: no core knows it.
pub fn unknown_id(random: &mut Rng) -> String {
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

/// Where known merchants are drawn from.
#[derive(Clone)]
enum Popularity {
    Uniform,
    Zipf(Zipf),
}

/// Draws IDs: known merchants by popularity, with shares of unknown and malformed IDs.
pub struct Keys {
    random: Rng,
    popularity: Popularity,
    merchants: u64,
}

impl Keys {
    pub fn zipf(merchants: u64, seed: u64) -> Self {
        Self {
            random: Rng::with_seed(seed),
            popularity: Popularity::Zipf(Zipf::new(merchants, ZIPF_EXPONENT)),
            merchants,
        }
    }

    pub fn uniform(merchants: u64, seed: u64) -> Self {
        Self { random: Rng::with_seed(seed), popularity: Popularity::Uniform, merchants }
    }

    /// The same draws as a `Keys` made with `seed`, sharing this one's Zipf table instead of building
    /// another.
    pub fn reseeded(&self, seed: u64) -> Self {
        Self { random: Rng::with_seed(seed), popularity: self.popularity.clone(), merchants: self.merchants }
    }

    /// The next ID: malformed with probability `malformed_share`, unknown with `unknown_share`.
    pub fn next_id(&mut self, unknown_share: f64, malformed_share: f64) -> String {
        let roll = self.random.f64();
        if roll < malformed_share {
            malformed_id(&mut self.random)
        } else if roll < malformed_share + unknown_share {
            unknown_id(&mut self.random)
        } else {
            let index = match &self.popularity {
                Popularity::Uniform => self.random.u64(0..self.merchants),
                Popularity::Zipf(zipf) => merchant_for_rank(zipf.sample(&mut self.random), self.merchants),
            };
            synthetic_id(index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reseeded_keys_draw_what_fresh_ones_with_that_seed_do() {
        let first = Keys::zipf(10_000, 7);
        let mut reseeded = first.reseeded(8);
        let mut fresh = Keys::zipf(10_000, 8);
        let draws = |keys: &mut Keys| (0..1000).map(|_| keys.next_id(0.05, 0.01)).collect::<Vec<_>>();
        assert_eq!(draws(&mut reseeded), draws(&mut fresh));
        let (mut reseeded, mut fresh) = (Keys::uniform(10_000, 7).reseeded(9), Keys::uniform(10_000, 9));
        assert_eq!(draws(&mut reseeded), draws(&mut fresh));
    }

    #[test]
    fn ranks_map_to_distinct_merchants() {
        let merchants = 100_000;
        let mapped: std::collections::HashSet<u64> = (0..merchants).map(|r| merchant_for_rank(r, merchants)).collect();
        assert_eq!(mapped.len() as u64, merchants);
    }
}
