//! Per-second buckets of a run, shared by every caller: the live progress display reads them while
//! the run goes on, and the HTML report draws requests/s and p50/p99 over time from them.
//!
//! One mutex for all callers: recording is a few counter bumps and a histogram increment, so the lock
//! is held for tens of nanoseconds, and the open loop already takes a lock per request.
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Two significant digits are plenty for a chart and a progress line, and keep a bucket to a few
/// kilobytes, so a long run's buckets stay small.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// Answers that arrived in one second of the sending window.
#[derive(Clone)]
pub struct Second {
    pub requests: u64,
    pub errors: u64,
    /// Latencies (nanoseconds) of the calls that succeeded, as in the summary's percentiles.
    pub ok_latencies: Histogram<u64>,
}

struct Inner {
    seconds: Vec<Second>,
    requests: u64,
    errors: u64,
    ok_latencies: Histogram<u64>,
}

pub struct Timeline {
    started: Instant,
    duration: Duration,
    inner: Mutex<Inner>,
}

/// The whole run so far, for the progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoFar {
    pub requests: u64,
    pub errors: u64,
    pub p50: u64,
    pub p99: u64,
}

/// One second of the run as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    /// Requests answered per second of sending window covered (the last second may be partial).
    pub rps: f64,
    pub p50: u64,
    pub p99: u64,
}

impl Timeline {
    /// Buckets cover the sending window `duration` from `started`; answers that arrive after it
    /// (requests still in flight at the end) count in the last bucket, since they were sent within it.
    pub fn new(started: Instant, duration: Duration) -> Self {
        let buckets = duration.as_secs_f64().ceil().max(1.0) as usize;
        let second = Second { requests: 0, errors: 0, ok_latencies: histogram() };
        let inner = Inner { seconds: vec![second; buckets], requests: 0, errors: 0, ok_latencies: histogram() };
        Self { started, duration, inner: Mutex::new(inner) }
    }

    pub fn record(&self, answered: Instant, latency: Duration, ok: bool) {
        let mut inner = self.inner.lock().expect("timeline lock");
        let last = inner.seconds.len() - 1;
        let index = (answered.saturating_duration_since(self.started).as_secs() as usize).min(last);
        let nanos = latency.as_nanos().clamp(1_000, 60_000_000_000) as u64;
        let second = &mut inner.seconds[index];
        second.requests += 1;
        if ok {
            let _ = second.ok_latencies.record(nanos);
        } else {
            second.errors += 1;
        }
        inner.requests += 1;
        if ok {
            let _ = inner.ok_latencies.record(nanos);
        } else {
            inner.errors += 1;
        }
    }

    pub fn so_far(&self) -> SoFar {
        let inner = self.inner.lock().expect("timeline lock");
        SoFar {
            requests: inner.requests,
            errors: inner.errors,
            p50: quantile(&inner.ok_latencies, 0.5),
            p99: quantile(&inner.ok_latencies, 0.99),
        }
    }

    pub fn points(&self) -> Vec<Point> {
        let inner = self.inner.lock().expect("timeline lock");
        let window = self.duration.as_secs_f64();
        inner
            .seconds
            .iter()
            .enumerate()
            .map(|(index, second)| {
                let span = (window - index as f64).clamp(0.001, 1.0);
                Point {
                    second: index as u64,
                    requests: second.requests,
                    errors: second.errors,
                    rps: second.requests as f64 / span,
                    p50: quantile(&second.ok_latencies, 0.5),
                    p99: quantile(&second.ok_latencies, 0.99),
                }
            })
            .collect()
    }
}

/// Zero for an empty histogram rather than its lowest bound, so a second without successes draws as
/// no latency instead of a made-up microsecond.
fn quantile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(quantile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_land_in_their_second_and_late_ones_in_the_last() {
        let started = Instant::now();
        let timeline = Timeline::new(started, Duration::from_millis(2500));
        let ms = Duration::from_millis;
        timeline.record(started + ms(100), ms(1), true);
        timeline.record(started + ms(900), ms(3), false);
        timeline.record(started + ms(1500), ms(2), true);
        timeline.record(started + ms(2400), ms(4), true);
        timeline.record(started + ms(9000), ms(8), true);
        let points = timeline.points();
        assert_eq!(points.len(), 3);
        assert_eq!(points.iter().map(|p| p.requests).collect::<Vec<_>>(), [2, 1, 2]);
        assert_eq!(points.iter().map(|p| p.errors).collect::<Vec<_>>(), [1, 0, 0]);
        assert_eq!(points[0].rps, 2.0);
        assert_eq!(points[2].rps, 4.0, "the last half second counts as half a second");
        assert!(points[0].p50.abs_diff(1_000_000) < 20_000, "{:?}", points[0]);
        assert!(points[2].p99.abs_diff(8_000_000) < 100_000, "{:?}", points[2]);
        let so_far = timeline.so_far();
        assert_eq!((so_far.requests, so_far.errors), (5, 1));
        assert!(so_far.p50.abs_diff(2_000_000) < 50_000, "{so_far:?}");
    }

    #[test]
    fn an_empty_second_has_no_latency() {
        let timeline = Timeline::new(Instant::now(), Duration::from_secs(1));
        assert_eq!(timeline.points()[0].p50, 0);
        assert_eq!(timeline.so_far(), SoFar { requests: 0, errors: 0, p50: 0, p99: 0 });
    }
}
