//! Service-manager notifications (`sd_notify(3)`) for a `Type=notify` systemd unit
//! (`deploy/systemd/merchant-edge.service`): `READY=1` the first time the edge turns ready (when
//! `/readyz` first answers 200, so `systemctl start` and units ordered after it wait for a warm cache),
//! `STOPPING=1` when the drain starts, and `WATCHDOG=1` at half of `WATCHDOG_USEC` when the unit sets
//! `WatchdogSec` (pings come from a task on the runtime, so a wedged runtime stops them and systemd
//! restarts the edge).
//!
//! Every function is a no-op without `NOTIFY_SOCKET`: outside systemd (a shell, Kubernetes, the tests)
//! nothing is sent and no task is spawned. Deliberately independent of the rest of the crate: callers
//! hand in the readiness as a future.
use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

/// Whether a service manager listens for notifications.
fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `states`; a failure is logged, never fatal: the edge serves the same with or without a
/// listening service manager (systemd itself reports a unit that never sent READY=1).
fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, ?states, "cannot notify the service manager");
    }
}

/// Sends `READY=1` once `became_ready` completes with `true` (it completes with `false` when the edge
/// stopped without ever becoming ready: then nothing is sent).
pub fn notify_ready_when(became_ready: impl Future<Output = bool> + Send + 'static) {
    if !supervised() {
        return;
    }
    tokio::spawn(async move {
        if became_ready.await {
            send(&[NotifyState::Ready, NotifyState::Status("ready: serving lookups")]);
            tracing::info!("notified the service manager: READY=1");
        }
    });
}

/// Sends `STOPPING=1`: call when the drain starts, so systemd shows the unit as deactivating and
/// applies `TimeoutStopSec` from now.
pub fn notify_stopping() {
    if supervised() {
        send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }
}

/// How often to ping for a watchdog timeout: half of it, as `sd_watchdog_enabled(3)` recommends, so one
/// late ping does not trip it.
pub fn watchdog_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// Starts pinging `WATCHDOG=1` when the service manager asked for it (`WATCHDOG_USEC`, and
/// `WATCHDOG_PID` unset or this process); `None` otherwise. The pings stop when the handle is aborted
/// or the runtime ends.
pub fn spawn_watchdog() -> Option<JoinHandle<()>> {
    if !supervised() {
        return None;
    }
    let interval = watchdog_interval(sd_notify::watchdog_enabled()?);
    tracing::info!(?interval, "pinging the service manager's watchdog");
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        // After a stall, one ping is enough; a burst of catch-up pings would hide nothing and say nothing.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout() {
        assert_eq!(watchdog_interval(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(watchdog_interval(Duration::from_micros(1)), Duration::from_millis(1), "never a zero interval");
    }

    #[tokio::test]
    async fn nothing_happens_without_a_notify_socket() {
        // The test process is not a systemd service (if it ever runs as one, there is nothing to check).
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(spawn_watchdog().is_none());
            let awaited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = awaited.clone();
            notify_ready_when(async move {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            });
            notify_stopping();
            tokio::task::yield_now().await;
            assert!(!awaited.load(std::sync::atomic::Ordering::SeqCst), "no task waits for the readiness");
        }
    }
}
