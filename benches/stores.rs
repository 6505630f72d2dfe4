//! The answer stores alone: a hit, a negative hit, migrating entries to new capacities (what a
//! capacity reload costs), and the cost of a hit in a store of 10,000 merchants against one of
//! 10,000,000 (the whole merchant table). Run: `cargo bench --bench stores`; the size comparison alone
//! (it builds a 10M store, about 1.1 GB and a minute): `cargo bench --bench stores -- "hit by size"`.
// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]
use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use merchant_edge::cache::{Cache, CacheConfig, CacheMetrics};
use merchant_edge::live;
use merchant_edge::sim::dataset::{synthetic_id, synthetic_merchant};
use merchant_edge::wire::ListedMerchants;
use tokio::time::Instant;

// The server's allocator, so that stores are laid out in memory as the edge lays them out (mimalloc
// backs its arenas with transparent huge pages, which decides how often a hit in a 10M store misses
// the TLB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TTL: Duration = Duration::from_secs(600);

fn capacities(entries: u64) -> CacheConfig {
    let capacity = NonZeroU64::new(entries).expect("non-zero");
    CacheConfig {
        positive_capacity: capacity,
        negative_capacity: capacity,
        positive_ttl: TTL,
        negative_ttl: TTL,
        ..CacheConfig::default()
    }
}

/// A cache holding `entries` merchants and as many not-founds (written as change notices).
fn filled(runtime: &tokio::runtime::Runtime, entries: u64) -> Cache {
    let cache = Cache::new(live::fixed(capacities(2 * entries)), CacheMetrics::default());
    runtime.block_on(async {
        for index in 0..entries {
            cache.apply_change(&synthetic_id(index), Some(&synthetic_merchant(index)), 1, Duration::MAX).await;
            cache.apply_change(&format!("899{index:012}"), None, 1, Duration::MAX).await;
        }
    });
    cache.stores().entry_counts();
    cache
}

fn stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = filled(&runtime, 100_000);
    let (hit, negative) = (synthetic_id(42_424), "899000000042424".to_owned());
    let stores = cache.stores();
    c.bench_function("store/positive hit", |b| b.iter(|| stores.fresh_positive(&hit, Instant::now(), TTL)));
    c.bench_function("store/negative hit", |b| b.iter(|| stores.fresh_negative(&negative, Instant::now(), TTL)));
    drop(stores);

    let mut group = c.benchmark_group("store/migrate");
    group.sample_size(10).throughput(Throughput::Elements(200_000));
    group.bench_function("100k merchants + 100k not-founds", |b| {
        // Alternates between two sizes that both hold every entry, so each iteration migrates all.
        let (bigger, smaller) = (capacities(400_000), capacities(200_000));
        let mut grow = true;
        b.iter(|| {
            let wanted = if grow { &bigger } else { &smaller };
            grow = !grow;
            runtime.block_on(cache.resize(wanted))
        })
    });
    group.finish();
}

/// A cache holding merchants `0..entries` and no not-founds, at exactly its capacity (as a warm start
/// of the whole table with `positive_capacity` equal to it would leave it).
fn merchants(runtime: &tokio::runtime::Runtime, entries: u64) -> Cache {
    let settings = CacheConfig { positive_capacity: NonZeroU64::new(entries).expect("non-zero"), ..capacities(1024) };
    let cache = Cache::new(live::fixed(settings), CacheMetrics::default());
    runtime.block_on(async {
        for first in (0..entries).step_by(5000) {
            let page: Vec<_> = (first..(first + 5000).min(entries)).map(synthetic_merchant).collect();
            let page = ListedMerchants::encode(&page);
            cache.install_snapshot_page(page, 1, true).await;
        }
    });
    cache
}

/// A hit in a small store against one holding the whole table, side by side. "1024 IDs" cycles
/// through 1,024 merchants spread evenly over the store (a working set of busy merchants: what a
/// terminal fleet's traffic looks like); "uniform" picks each from all of them (every hit a cache
/// miss at 10M: the memory latency floor, not the store's own cost).
fn hits_by_size(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("store/hit by size");
    for (label, entries) in [("10k", 10_000u64), ("10M", 10_000_000)] {
        // Built when the first of its benchmarks runs, so a filter that skips both skips the build.
        let cache = OnceLock::new();
        let cache = &cache;
        group.bench_function(format!("{label}, 1024 IDs"), |b| {
            let stores = cache.get_or_init(|| merchants(&runtime, entries)).stores();
            let ids: Vec<String> = (0..1024).map(|i| synthetic_id(i * (entries / 1024))).collect();
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % ids.len();
                stores.fresh_positive(&ids[next], Instant::now(), TTL)
            })
        });
        group.bench_function(format!("{label}, uniform"), |b| {
            let stores = cache.get_or_init(|| merchants(&runtime, entries)).stores();
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
