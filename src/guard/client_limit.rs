//! Per-client limits on core-bound lookups: a token bucket per client (peer IP address, or the value
//! of a configured metadata key such as a gateway ID), so one misbehaving terminal or gateway cannot
//! spend the whole core budget. Hits never touch it.
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// Buckets kept before idle ones are swept (each is a few dozen bytes).
const MAX_CLIENTS: usize = 100_000;
/// Client keys are caller-chosen metadata; longer ones are cut so a key cannot cost kilobytes.
const MAX_KEY_LEN: usize = 128;
/// Clients beyond MAX_CLIENTS (after a sweep) share this one bucket: a flood of made-up client keys
/// gets one client's budget, not one each.
const OVERFLOW: &str = "(too many clients)";

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

#[derive(Default)]
pub struct ClientLimits {
    buckets: DashMap<String, Bucket>,
    /// When idle buckets were last swept, so a full map costs one scan per second, not one per call.
    last_sweep: parking_lot::Mutex<Option<Instant>>,
}

impl ClientLimits {
    /// Takes one core-bound lookup from `client`'s bucket (`rate` per second, up to `burst` saved);
    /// when it is empty, how long until the next token.
    pub fn take(&self, client: &str, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let mut client = &client[..client.floor_char_boundary(MAX_KEY_LEN)];
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(client) {
            self.sweep(rate, burst, now);
            if self.buckets.len() >= MAX_CLIENTS {
                client = OVERFLOW;
            }
        }
        let mut bucket = self
            .buckets
            .entry(client.to_owned())
            .or_insert_with(|| Bucket { tokens: f64::from(burst), refilled_at: now });
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / f64::from(rate)))
        }
    }
}

impl ClientLimits {
    /// Drops buckets that have refilled completely (the same as no bucket), at most once a second.
    fn sweep(&self, rate: u32, burst: u32, now: Instant) {
        {
            let mut last = self.last_sweep.lock();
            if last.is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        let full_after = Duration::from_secs_f64(f64::from(burst) / f64::from(rate));
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.refilled_at) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_client_has_its_own_bucket_that_refills_at_the_rate() {
        let limits = ClientLimits::default();
        let now = Instant::now();
        for _ in 0..5 {
            limits.take("10.0.0.1", 10, 5, now).unwrap();
        }
        assert_eq!(limits.take("10.0.0.1", 10, 5, now), Err(Duration::from_millis(100)));
        limits.take("10.0.0.2", 10, 5, now).expect("another client is not affected");
        let later = now + Duration::from_millis(250);
        limits.take("10.0.0.1", 10, 5, later).unwrap();
        limits.take("10.0.0.1", 10, 5, later).unwrap();
        assert!(limits.take("10.0.0.1", 10, 5, later).is_err(), "2.5 tokens refilled, 2 taken");
    }
}
