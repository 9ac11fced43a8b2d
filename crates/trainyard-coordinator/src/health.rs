//! The standard gRPC health service (`grpc.health.v1.Health`, no token needed, as load balancers
//! and probes call it): SERVING while the store answers, NOT_SERVING while it does not, for the
//! whole server (`""`) and each of its services. The store is asked every [`CHECK_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};
use trainyard_store::Store;

pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The services whose status is reported, besides the whole server's.
const SERVICES: &[&str] =
    &["trainyard.v1.HyperParameterTuning", "trainyard.v1.Training", "trainyard.v1.Agents", "trainyard.v1.Access"];

/// Keeps the reported status in step with the store until cancelled.
pub async fn watch(
    store: Arc<dyn Store>,
    reporter: HealthReporter,
    readiness: trainyard_telemetry::Readiness,
    cancel: CancellationToken,
) {
    let mut serving: Option<bool> = None;
    loop {
        // Bounded: a pool waiting for a database that is down would otherwise hold the answer
        // for its whole acquire timeout.
        let answer = tokio::time::timeout(CHECK_EVERY, store.count_active_tuning_jobs()).await;
        let now_serving = match answer {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                if serving != Some(false) {
                    warn!(error = %e, "health: the store does not answer; reporting NOT_SERVING");
                }
                false
            }
            Err(_) => {
                if serving != Some(false) {
                    warn!(within_s = CHECK_EVERY.as_secs(), "health: the store does not answer; reporting NOT_SERVING");
                }
                false
            }
        };
        if serving != Some(now_serving) {
            let status = if now_serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in std::iter::once("").chain(SERVICES.iter().copied()) {
                reporter.set_service_status(service, status).await;
            }
            if now_serving && serving.is_some() {
                info!("health: the store answers again; reporting SERVING");
            }
            serving = Some(now_serving);
            if now_serving {
                readiness.ready();
            } else {
                readiness.not_ready("the store does not answer");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
