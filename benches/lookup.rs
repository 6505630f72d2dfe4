//! The lookup path without the network: a hit (without and with a consistency token the edge has
//! applied, side by side), a negative hit, the bookkeeping of a miss (singleflight
//! slot, publish, fenced install), applying a change notice, ID normalisation, and encoding the answer.
//! Run: `cargo bench --bench lookup`.
// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use merchant_edge::cache::fence::{Filled, Fills, Role};
use merchant_edge::cache::Cache;
use merchant_edge::config::Config;
use merchant_edge::feed::{notice, FeedState};
use merchant_edge::guard::Caller;
use merchant_edge::live;
use merchant_edge::lookup::Resolver;
use merchant_edge::merchant_id::IdRule;
use merchant_edge::metrics::Metrics;
use merchant_edge::pb::{ChangeKind, ChangeNotice};
use merchant_edge::sim::dataset::{synthetic_id, synthetic_merchant};
use merchant_edge::upstream::CoreClient;
use merchant_edge::wire::EncodedMerchant;
use merchant_edge::wire::LookupResponse;
use prost::Message;

fn notice(sequence: u64, index: u64, kind: ChangeKind) -> ChangeNotice {
    ChangeNotice {
        sequence,
        merchant_id: synthetic_id(index),
        kind: kind as i32,
        merchant: (kind == ChangeKind::Upsert).then(|| synthetic_merchant(index)),
        ..Default::default()
    }
}

/// Applies one notice as the feed does: read what it says, then hand it to the cache room.
async fn apply(cache: &Cache, notice: &ChangeNotice) {
    let change = notice::parse(notice).expect("well-formed notice");
    cache.apply_change(&notice.merchant_id, change.merchant(), notice.sequence, Duration::MAX).await;
}

/// A resolver whose stores hold merchants 0..10,000 and not-founds for 10,000..20,000, learned
/// through change notices; its core is never reached.
fn resolver(runtime: &tokio::runtime::Runtime) -> Arc<Resolver> {
    runtime.block_on(async {
        let core = CoreClient::connect_lazy("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let feed = Arc::new(FeedState::new());
        feed.mark_connected();
        let config = Arc::new(ArcSwap::from_pointee(Config::default()));
        let metrics = Metrics::default();
        let cache = Arc::new(Cache::new(live::section(&config, |config| &config.cache), metrics.cache.clone()));
        for index in 0..10_000 {
            apply(&cache, &notice(index + 1, index, ChangeKind::Upsert)).await;
            apply(&cache, &notice(index + 1, index + 10_000, ChangeKind::Delete)).await;
        }
        // As the feed records having applied those notices (a token up to here is satisfied).
        feed.restart_at(10_000);
        Arc::new(Resolver::new(config, cache, core, feed, metrics.lookup.clone(), metrics.guard.clone()))
    })
}

fn lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let resolver = resolver(&runtime);
    let (hit, negative) = (synthetic_id(4242), synthetic_id(14_242));
    let anyone = Caller::default();
    c.bench_function("lookup/hit", |b| b.to_async(&runtime).iter(|| resolver.lookup(&hit, &anyone)));
    // The token costs one load of the applied sequence and a compare on top of the hit.
    c.bench_function("lookup/hit with satisfied token", |b| {
        b.to_async(&runtime).iter(|| resolver.lookup_at_least(&hit, 9_999, &anyone))
    });
    c.bench_function("lookup/negative hit", |b| b.to_async(&runtime).iter(|| resolver.lookup(&negative, &anyone)));

    let mut sequence = 1_000_000;
    c.bench_function("lookup/apply notice", |b| {
        b.to_async(&runtime).iter(|| {
            sequence += 1;
            let change = notice(sequence, sequence % 10_000, ChangeKind::Upsert);
            let resolver = resolver.clone();
            async move { apply(resolver.cache(), &change).await }
        })
    });

    // Notices per second: 1,000 changes of merchants already stored (the common case), built outside
    // the measurement and applied one after another as the feed does.
    let mut group = c.benchmark_group("notices");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("apply 1000 upserts", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                sequence += 1000;
                (0..1000).map(|i| notice(sequence + i, (sequence + i) % 10_000, ChangeKind::Upsert)).collect::<Vec<_>>()
            },
            |notices| {
                let resolver = resolver.clone();
                async move {
                    for notice in &notices {
                        apply(resolver.cache(), notice).await;
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let fills = Fills::default();
    let answer = Filled { merchant: Some(EncodedMerchant::encode(&synthetic_merchant(42))), as_of_sequence: 7 };
    // The slot, sharing the answer with waiters and freeing the slot; the store write itself is what
    // `lookup/apply notice` measures.
    c.bench_function("lookup/miss bookkeeping", |b| {
        b.iter(|| {
            let Role::Started(fill) = fills.join_or_start(&hit, 0) else { unreachable!("no other fill runs") };
            fill.publish(Ok(answer.clone()));
            fills.settle(&hit, &fill, Some(&answer), |_, _| true)
        })
    });

    let rule = IdRule::default();
    let padded = format!("  {hit}\t");
    let full_width: String = hit.chars().map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap()).collect();
    c.bench_function("normalise/plain", |b| b.iter(|| rule.normalise(&hit).is_ok()));
    c.bench_function("normalise/padded", |b| b.iter(|| rule.normalise(&padded).is_ok()));
    c.bench_function("normalise/full-width", |b| b.iter(|| rule.normalise(&full_width).is_ok()));
    c.bench_function("normalise/malformed", |b| b.iter(|| rule.normalise("89800000000O042").is_err()));

    let response: LookupResponse = runtime.block_on(resolver.lookup(&hit, &anyone)).unwrap().into();
    let mut buffer = Vec::with_capacity(256);
    c.bench_function("encode/lookup response", |b| {
        b.iter(|| {
            buffer.clear();
            response.encode(&mut buffer).unwrap();
            buffer.len()
        })
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
