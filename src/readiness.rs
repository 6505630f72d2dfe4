//! Readiness, reported the same way to gRPC health checks and to the admin `/readyz`.
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::wire::merchant_lookup_server::SERVICE_NAME as LOOKUP_SERVICE;

/// The gRPC health-check name under which the change feed's state is reported.
pub const FEED_HEALTH_SERVICE: &str = "merchant.v1.ChangeFeed";

/// The feed's state is reported under `merchant.v1.ChangeFeed.<source>` too (`.core`, `.nats`), so a
/// probe can tell which source an edge follows; the other source's name answers NOT_FOUND.
fn feed_source_service(source: &str) -> String {
    format!("{FEED_HEALTH_SERVICE}.{source}")
}

#[derive(Clone)]
/// Whether the edge takes traffic, for `/readyz` and gRPC health alike.
pub struct Readiness {
    ready: watch::Sender<bool>,
    /// Once true, nothing makes the edge ready again (a warm start finishing mid-drain must not), and
    /// long-lived streams wind down.
    draining: watch::Sender<bool>,
    /// Whether the change feed has been following the core at any time (until then, an edge that
    /// restored a local snapshot serves only what the snapshot held).
    feed_followed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    health: HealthReporter,
    /// Where the feed reads notices from, once the feed says.
    feed_source: std::sync::Arc<std::sync::OnceLock<&'static str>>,
}

impl Readiness {
    /// Starts not ready.
    pub fn new(health: HealthReporter) -> Self {
        Self {
            ready: watch::Sender::new(false),
            draining: watch::Sender::new(false),
            feed_followed: Default::default(),
            health,
            feed_source: Default::default(),
        }
    }

    /// Whether the change feed has been connected to the core since the edge started.
    pub fn feed_has_followed(&self) -> bool {
        self.feed_followed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `/readyz` answers 200 now.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes once the edge starts draining: streams that would stay open indefinitely end then,
    /// so that the drain does not wait for them until the grace period runs out.
    pub fn drain_started(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            // An error means the readiness is gone, which only happens at the end of shutdown.
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }

    /// Completes with `true` the first time the edge is ready (at once if it already is), or `false`
    /// if the edge stopped without ever becoming ready. For the service manager's READY=1.
    pub fn became_ready(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let mut ready = self.ready.subscribe();
        async move { ready.wait_for(|ready| *ready).await.is_ok() }
    }

    /// Names the feed's notice source (once; the source takes a restart to change).
    pub fn set_feed_source(&self, source: &'static str) {
        let _ = self.feed_source.set(source);
    }

    /// Reports the change feed as its own health-check service, so probes can tell "serving, but the
    /// feed is down" from "not serving".
    pub async fn set_feed(&self, connected: bool) {
        if connected {
            self.feed_followed.store(true, std::sync::atomic::Ordering::Release);
        }
        if self.is_draining() {
            return;
        }
        let status = if connected { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status(FEED_HEALTH_SERVICE, status).await;
        if let Some(source) = self.feed_source.get() {
            self.health.set_service_status(feed_source_service(source), status).await;
        }
    }

    /// Becomes ready (unless draining) or not ready.
    pub async fn set(&self, ready: bool) {
        if ready && self.is_draining() {
            return;
        }
        self.ready.send_replace(ready);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status("", status).await;
        self.health.set_service_status(LOOKUP_SERVICE, status).await;
    }

    /// For good: reports NOT_SERVING everywhere, then ends health Watch streams (load balancers hold
    /// them open, and a drain would otherwise wait for them until the grace period runs out). Checks
    /// after this answer NOT_FOUND, which probes treat as not serving.
    pub async fn begin_draining(&self) {
        self.draining.send_replace(true);
        self.ready.send_replace(false);
        let mut health = self.health.clone();
        let mut services = vec!["".to_owned(), LOOKUP_SERVICE.to_owned(), FEED_HEALTH_SERVICE.to_owned()];
        services.extend(self.feed_source.get().map(|source| feed_source_service(source)));
        for service in &services {
            health.set_service_status(service, ServingStatus::NotServing).await;
        }
        for service in &services {
            health.clear_service_status(service).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_makes_a_draining_edge_ready_again() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter);
        readiness.set(true).await;
        assert!(readiness.is_ready());
        readiness.begin_draining().await;
        readiness.set(true).await;
        readiness.set_feed(true).await;
        assert!(!readiness.is_ready(), "a warm start finishing mid-drain must not undo it");
    }
}
