//! The answer stores alone: a hit, a negative hit, and migrating entries to new capacities (what a
//! capacity reload costs). Run: `cargo bench --bench stores`.
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use merchant_edge::metrics::Metrics;
use merchant_edge::sim::dataset::{synthetic_id, synthetic_merchant};
use merchant_edge::store::{Capacities, NegativeEntry, Origin, PositiveEntry, Stores};
use merchant_edge::wire::EncodedMerchant;
use tokio::time::Instant;

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

criterion_group!(benches, stores);
criterion_main!(benches);
