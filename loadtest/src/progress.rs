//! The live progress line of `merchant-loadgen run`, redrawn in place about once a second. The caller
//! decides whether there is a terminal to draw on: on a pipe or a file the line would only be noise
//! ahead of the summary.
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::timeline::{SoFar, Timeline};

/// Erases the terminal line before redrawing, so a shorter line leaves nothing of a longer one.
const REDRAW: &str = "\r\x1b[2K";

pub struct Progress {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Draws once a second until [`Progress::finish`], which draws the final state and ends the line.
pub fn start(timeline: Arc<Timeline>, started: Instant, mut out: impl Write + Send + 'static) -> Progress {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
        // After a stall (a starved runtime), one redraw is enough; a burst of catch-up redraws is not.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut last_at, mut last_requests) = (started, 0);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let (now, so_far) = (Instant::now(), timeline.so_far());
                    let rate = rate(so_far.requests - last_requests, now - last_at);
                    draw(&mut out, &line(now - started, rate, &so_far));
                    (last_at, last_requests) = (now, so_far.requests);
                }
                _ = &mut stopped => {
                    // The final line shows the whole run's rate: the last partial second's would
                    // be noise.
                    let (elapsed, so_far) = (started.elapsed(), timeline.so_far());
                    draw(&mut out, &line(elapsed, rate(so_far.requests, elapsed), &so_far));
                    let _ = writeln!(out);
                    break;
                }
            }
        }
    });
    Progress { stop, task }
}

impl Progress {
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn rate(requests: u64, over: Duration) -> f64 {
    requests as f64 / over.as_secs_f64().max(0.001)
}

/// A terminal that went away is no reason to stop a load run.
fn draw(out: &mut impl Write, line: &str) {
    let _ = write!(out, "{REDRAW}{line}");
    let _ = out.flush();
}

pub fn line(elapsed: Duration, rate: f64, so_far: &SoFar) -> String {
    format!(
        "{:>6.1}s  {:>9.0} req/s  {} requests  {} errors  p50 {:.2} ms  p99 {:.2} ms",
        elapsed.as_secs_f64(),
        rate,
        so_far.requests,
        so_far.errors,
        so_far.p50 as f64 / 1e6,
        so_far.p99 as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_line_has_elapsed_rate_errors_and_percentiles() {
        let so_far = SoFar { requests: 1234, errors: 5, p50: 210_000, p99: 1_300_000 };
        assert_eq!(
            line(Duration::from_millis(3000), 411.4, &so_far),
            "   3.0s        411 req/s  1234 requests  5 errors  p50 0.21 ms  p99 1.30 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn redraws_in_place_each_second_and_ends_the_line() {
        let started = Instant::now();
        let timeline = Arc::new(Timeline::new(started));
        let screen = Screen::default();
        let progress = start(timeline.clone(), started, screen.clone());
        for _ in 0..100 {
            timeline.record(Instant::now(), Duration::from_millis(2), true);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        timeline.record(Instant::now(), Duration::from_millis(2), false);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        progress.finish().await;
        let text = String::from_utf8(screen.0.lock().unwrap().clone()).unwrap();
        let draws: Vec<_> = text.split(REDRAW).skip(1).collect();
        assert_eq!(draws.len(), 3, "two ticks and the final draw: {text:?}");
        assert!(draws[0].contains(" 100 req/s  100 requests  0 errors  p50 2.0"), "{text:?}");
        assert!(draws[1].contains("   1 req/s  101 requests  1 errors"), "{text:?}");
        assert!(draws[2].starts_with("   2.5s"), "{text:?}");
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "one line, redrawn: {text:?}");
    }
}
