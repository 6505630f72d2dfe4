//! Measures the local snapshot with the real code: write and load time and file size for N synthetic
//! merchants (`cargo run --release --example snapshot_bench -- 1000000 /var/tmp/snapshot.bin`).
//! docs/snapshot-bench.sh runs it together with the restart measurements on the real binary.
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use merchant_edge::cache::{Cache, CacheConfig, CacheMetrics};
use merchant_edge::feed::FeedState;
use merchant_edge::live;
use merchant_edge::merchant_id::IdRule;
use merchant_edge::sim::dataset::synthetic_merchant;
use merchant_edge::snapshot::{SnapshotConfig, SnapshotMetrics, SnapshotParts, Snapshots};
use merchant_edge::wire::ListedMerchants;

/// As the binary does (src/main.rs): the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn snapshots(cache: &Arc<Cache>, feed: &Arc<FeedState>, path: &std::path::Path) -> Snapshots {
    let settings = SnapshotConfig { path: path.to_owned(), ..SnapshotConfig::default() };
    Snapshots::new(SnapshotParts {
        settings: live::fixed(settings),
        id_rule: live::fixed(IdRule::default()),
        cache: cache.clone(),
        feed: feed.clone(),
        metrics: SnapshotMetrics::default(),
    })
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let merchants: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let path = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp/merchant-edge-bench.bin".into()));
    let config = CacheConfig {
        positive_capacity: NonZeroU64::new(merchants.max(1)).expect("non-zero"),
        ..CacheConfig::default()
    };
    let cache = Arc::new(Cache::new(live::fixed(config.clone()), CacheMetrics::default()));
    let filling = Instant::now();
    let page: u64 = 10_000;
    for start in (0..merchants).step_by(page as usize) {
        let batch: Vec<_> = (start..(start + page).min(merchants)).map(synthetic_merchant).collect();
        let batch = ListedMerchants::encode(&batch);
        cache.install_snapshot_page(batch, 0, true).await;
    }
    println!("filled {merchants} merchants in {:?}", filling.elapsed());
    let feed = Arc::new(FeedState::new());
    feed.set_incarnation(Some("bench"));
    let writing = Instant::now();
    let written = snapshots(&cache, &feed, &path).write().await.expect("write").expect("snapshots on");
    let write_time = writing.elapsed();
    println!(
        "write: {} merchants, {} bytes ({:.1} bytes/merchant) in {write_time:?}",
        written.merchants,
        written.bytes,
        written.bytes as f64 / written.merchants.max(1) as f64
    );
    drop(cache);
    let verifying = Instant::now();
    let verified = merchant_edge::snapshot::inspect::verify(&path).expect("a valid snapshot");
    println!(
        "verify alone (read, decode, checksum; no stores): {} merchants in {:?}",
        verified.merchants,
        verifying.elapsed()
    );
    let fresh = Arc::new(Cache::new(live::fixed(config), CacheMetrics::default()));
    let loading = Instant::now();
    let restored = snapshots(&fresh, &Arc::new(FeedState::new()), &path).restore().await.expect("a valid snapshot");
    println!("load: {} merchants in {:?}", restored.merchants, loading.elapsed());
    let _ = std::fs::remove_file(&path);
}
