//! The answer stores alone: a hit, a negative hit, and migrating entries to new capacities (what a
//! capacity reload costs). Run: `cargo bench --bench stores`.
// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]
use std::num::NonZeroU64;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use merchant_edge::cache::{Cache, CacheConfig, CacheMetrics};
use merchant_edge::live;
use merchant_edge::sim::dataset::{synthetic_id, synthetic_merchant};
use tokio::time::Instant;

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

criterion_group!(benches, stores);
criterion_main!(benches);
