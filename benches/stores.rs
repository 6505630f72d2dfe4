//! The answer stores alone: a hit, a negative hit, migrating entries to new capacities (what a
//! capacity reload costs), and the cost of a hit in a store of 10,000 merchants against one of
//! 10,000,000 (the whole merchant table). Run: `cargo bench --bench stores`; the size comparison alone
//! (it builds a 10M store, about 1.1 GB and 30 s): `cargo bench --bench stores -- "hit by size"`.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use merchant_edge::metrics::Metrics;
use merchant_edge::sim::dataset::{synthetic_id, synthetic_merchant};
use merchant_edge::store::{Capacities, NegativeEntry, Origin, PositiveEntry, Stored, Stores};
use merchant_edge::wire::EncodedMerchant;
use tokio::time::Instant;

// The server's allocator, so that stores are laid out in memory as the edge lays them out (mimalloc
// backs its arenas with transparent huge pages, which decides how often a hit in a 10M store misses
// the TLB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TTL: Duration = Duration::from_secs(600);

fn filled(entries: u64) -> Stores {
    let capacities = Capacities { positive: 2 * entries, negative: 2 * entries };
    let stores = Stores::new(capacities, &Arc::new(Metrics::default()));
    let now = Instant::now();
    for index in 0..entries {
        let merchant = EncodedMerchant::encode(&synthetic_merchant(index));
        let entry = PositiveEntry { merchant, as_of_sequence: 0, learned_at: now, ttl: TTL };
        stores.put_positive(synthetic_id(index).into(), entry, None);
        let negative = NegativeEntry { as_of_sequence: 0, learned_at: now, ttl: TTL, origin: Origin::CoreRead };
        stores.put_negative(format!("899{index:012}").into(), negative, None);
    }
    stores.entry_counts();
    stores
}

fn stores(c: &mut Criterion) {
    let stores = filled(100_000);
    let (hit, negative) = (synthetic_id(42_424), "899000000042424".to_owned());
    c.bench_function("store/positive hit", |b| b.iter(|| stores.fresh_positive(&hit, Instant::now(), TTL)));
    c.bench_function("store/negative hit", |b| b.iter(|| stores.fresh_negative(&negative, Instant::now(), TTL)));

    let mut group = c.benchmark_group("store/migrate");
    group.sample_size(10).throughput(Throughput::Elements(200_000));
    group.bench_function("100k merchants + 100k not-founds", |b| {
        let bigger = Capacities { positive: 400_000, negative: 400_000 };
        b.iter_with_large_drop(|| Stores::migrated(bigger, &Arc::new(Metrics::default()), &stores))
    });
    group.finish();
}

/// Stores holding merchants `0..entries` and no not-founds, at exactly their capacity (as a warm
/// start of the whole table with `positive_capacity` equal to it would leave them).
fn merchants(entries: u64) -> Stores {
    let stores = Stores::new(Capacities { positive: entries, negative: 1024 }, &Arc::new(Metrics::default()));
    let now = Instant::now();
    for index in 0..entries {
        let merchant = EncodedMerchant::encode(&synthetic_merchant(index));
        let entry = PositiveEntry { merchant, as_of_sequence: 0, learned_at: now, ttl: TTL };
        // "Already positive": no not-found to forget, so building 10M does not wait on moka.
        stores.put_positive(synthetic_id(index).into(), entry, Some(Stored::Positive(0)));
    }
    stores
}

/// A hit in a small store against one holding the whole table, side by side. "1024 IDs" cycles
/// through 1,024 merchants spread evenly over the store (a working set of busy merchants: what a
/// terminal fleet's traffic looks like); "uniform" picks each from all of them (every hit a cache
/// miss at 10M: the memory latency floor, not the store's own cost).
fn hits_by_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("store/hit by size");
    for (label, entries) in [("10k", 10_000u64), ("10M", 10_000_000)] {
        // Built when the first of its benchmarks runs, so a filter that skips both skips the build.
        let stores = OnceLock::new();
        let stores = &stores;
        group.bench_function(format!("{label}, 1024 IDs"), |b| {
            let stores = stores.get_or_init(|| merchants(entries));
            let ids: Vec<String> = (0..1024).map(|i| synthetic_id(i * (entries / 1024))).collect();
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % ids.len();
                stores.fresh_positive(&ids[next], Instant::now(), TTL)
            })
        });
        group.bench_function(format!("{label}, uniform"), |b| {
            let stores = stores.get_or_init(|| merchants(entries));
            let mut random = fastrand::Rng::with_seed(7);
            let ids: Vec<String> = (0..65_536).map(|_| synthetic_id(random.u64(..entries))).collect();
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % ids.len();
                stores.fresh_positive(&ids[next], Instant::now(), TTL)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stores, hits_by_size);
criterion_main!(benches);
