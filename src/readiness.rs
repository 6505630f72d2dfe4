//! Readiness, reported the same way to gRPC health checks and to the admin `/readyz`.
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::pb::merchant_lookup_server::MerchantLookupServer;
use crate::service::LookupService;

/// The gRPC health-check name under which the change feed's state is reported.
pub const FEED_HEALTH_SERVICE: &str = "merchant.v1.ChangeFeed";

#[derive(Clone)]
pub struct Readiness {
    ready: watch::Sender<bool>,
    health: HealthReporter,
}

impl Readiness {
    /// Starts not ready.
    pub fn new(health: HealthReporter) -> Self {
        Self { ready: watch::Sender::new(false), health }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Reports the change feed as its own health-check service, so probes can tell "serving, but the
    /// feed is down" from "not serving".
    pub async fn set_feed(&self, connected: bool) {
        let status = if connected { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status(FEED_HEALTH_SERVICE, status).await;
    }

    pub async fn set(&self, ready: bool) {
        self.ready.send_replace(ready);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(<MerchantLookupServer<LookupService> as tonic::server::NamedService>::NAME, status)
            .await;
    }
}
