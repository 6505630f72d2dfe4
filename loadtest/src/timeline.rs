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

/// Answers that arrived in one second of the run.
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
    /// Requests answered per second of the run this point covers (the last may cover more or less
    /// than a second).
    pub rps: f64,
    pub p50: u64,
    pub p99: u64,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        let inner = Inner { seconds: Vec::new(), requests: 0, errors: 0, ok_latencies: histogram() };
        Self { started, inner: Mutex::new(inner) }
    }

    /// Counts an answer in the second of the run it arrived in.
    pub fn record(&self, answered: Instant, latency: Duration, ok: bool) {
        let mut inner = self.inner.lock().expect("timeline lock");
        let index = answered.saturating_duration_since(self.started).as_secs() as usize;
        if inner.seconds.len() <= index {
            inner.seconds.resize_with(index + 1, || Second { requests: 0, errors: 0, ok_latencies: histogram() });
        }
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

    /// The seconds of a run that took `total`. The run's last moments, where answers to the last
    /// requests arrive, are a partial second; one shorter than [`SHORT_TAIL`] is counted with the
    /// second before it, since a rate over a few milliseconds would be noise on the chart.
    pub fn points(&self, total: Duration) -> Vec<Point> {
        let inner = self.inner.lock().expect("timeline lock");
        let mut seconds = inner.seconds.clone();
        // Seconds at the end without answers (a stuck edge) are points too, at zero.
        let total = total.as_secs_f64().max(seconds.len().saturating_sub(1) as f64 + 0.001);
        let buckets = (total.ceil() as usize).max(seconds.len()).max(1);
        seconds.resize_with(buckets, || Second { requests: 0, errors: 0, ok_latencies: histogram() });
        let mut last_span = total - (buckets - 1) as f64;
        if seconds.len() >= 2 && last_span < SHORT_TAIL {
            let tail = seconds.pop().expect("two seconds");
            let before = seconds.last_mut().expect("one second");
            before.requests += tail.requests;
            before.errors += tail.errors;
            let _ = before.ok_latencies.add(&tail.ok_latencies);
            last_span += 1.0;
        }
        let count = seconds.len();
        seconds
            .iter()
            .enumerate()
            .map(|(index, second)| {
                let span = if index + 1 == count { last_span } else { 1.0 };
                Point {
                    second: index as u64,
                    requests: second.requests,
                    errors: second.errors,
                    rps: second.requests as f64 / span.max(0.001),
                    p50: quantile(&second.ok_latencies, 0.5),
                    p99: quantile(&second.ok_latencies, 0.99),
                }
            })
            .collect()
    }
}

/// A last partial second shorter than this is folded into the one before.
const SHORT_TAIL: f64 = 0.25;

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
    async fn answers_land_in_the_second_they_arrive_in() {
        let started = Instant::now();
        let timeline = Timeline::new(started);
        let ms = Duration::from_millis;
        timeline.record(started + ms(100), ms(1), true);
        timeline.record(started + ms(900), ms(3), false);
        timeline.record(started + ms(1500), ms(2), true);
        timeline.record(started + ms(2400), ms(4), true);
        timeline.record(started + ms(2450), ms(8), true);
        let points = timeline.points(ms(2500));
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

    #[tokio::test(start_paused = true)]
    async fn a_short_tail_counts_with_the_second_before() {
        let started = Instant::now();
        let timeline = Timeline::new(started);
        let ms = Duration::from_millis;
        for at in [100, 1100, 1200, 2010] {
            timeline.record(started + ms(at), ms(1), true);
        }
        let points = timeline.points(ms(2020));
        assert_eq!(points.iter().map(|p| p.requests).collect::<Vec<_>>(), [1, 3]);
        assert!((points[1].rps - 3.0 / 1.02).abs() < 1e-9, "{points:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_without_answers_has_no_latency() {
        let started = Instant::now();
        let timeline = Timeline::new(started);
        timeline.record(started + Duration::from_millis(1500), Duration::from_millis(1), false);
        let points = timeline.points(Duration::from_millis(3500));
        assert_eq!(points.iter().map(|p| (p.requests, p.p50)).collect::<Vec<_>>(), [(0, 0), (1, 0), (0, 0), (0, 0)]);
        assert_eq!(points[1].rps, 1.0);
        assert_eq!(Timeline::new(started).so_far(), SoFar { requests: 0, errors: 0, p50: 0, p99: 0 });
    }
}
