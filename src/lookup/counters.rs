//! Counters written on every lookup, sharded by thread: each thread adds to its own 128-byte slot, so
//! two cores never write the same cache line per request (one shared atomic would bounce its line
//! between the serving cores on every hit), and a scrape sums the slots, so totals stay exact.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots per counter. Threads take slots in turn as they first count, so up to this many threads
/// count without sharing a line; beyond it two threads share a slot, which is still exact (each add is
/// atomic), only no longer free of contention. The serving runtimes plus the main runtime's workers
/// stay far below it on the machines the edge runs on.
const SHARDS: usize = 64;

/// One slot on its own pair of cache lines: 128 bytes, because adjacent-line prefetching on x86 pulls
/// lines in pairs, so 64-byte padding still lets neighbours interfere.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// Which slot this thread adds to, assigned on its first count.
fn slot_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SLOT.with(|slot| *slot)
}

/// A monotonic counter whose adds stay on the adding thread's own cache line (cloning shares it).
#[derive(Clone)]
pub struct ShardedCounter(Arc<[Slot; SHARDS]>);

impl Default for ShardedCounter {
    fn default() -> Self {
        Self(Arc::new(std::array::from_fn(|_| Slot::default())))
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl ShardedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `count`.
    pub fn inc_by(&self, count: u64) {
        self.0[slot_of_this_thread()].0.fetch_add(count, Ordering::Relaxed);
    }

    /// The total over every thread (each slot read once; adds racing the read land in the next one).
    pub fn get(&self) -> u64 {
        self.0.iter().map(|slot| slot.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let counter = ShardedCounter::default();
        // More threads than slots, so some share one.
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 8 {
                let counter = counter.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        counter.inc();
                    }
                    counter.inc_by(5);
                });
            }
        });
        assert_eq!(counter.get(), (SHARDS as u64 + 8) * 1005);
    }

    #[test]
    fn slots_sit_on_their_own_cache_line_pair() {
        assert_eq!(std::mem::size_of::<Slot>(), 128);
        assert_eq!(std::mem::align_of::<Slot>(), 128);
    }
}
