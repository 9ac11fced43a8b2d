//! What a daemon tells operators over plain HTTP on its `--metrics-listen` address:
//!
//! * `GET /metrics`: its metrics in the Prometheus text format (`prometheus-client`);
//! * `GET /healthz`: 200 while the process serves at all (liveness);
//! * `GET /readyz`: 200 when it can do its work (the coordinator: its store answers; an agent: its
//!   stream to the coordinator is up), else 503 with the reason.
//!
//! No token: what it shows is counts and timings, never job contents; bind it to an address only
//! the monitoring network reaches.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use prometheus_client;

/// Whether the daemon is ready, and if not, why (kept current by the daemon).
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// Not ready until told otherwise.
    pub fn new(why: &str) -> Readiness {
        Readiness(Arc::new(Mutex::new(Some(why.to_string()))))
    }

    pub fn ready(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn not_ready(&self, why: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    fn why_not(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Serves them in the background when the daemon was given an address; a failure is logged (the
/// daemon's work does not depend on being watched).
pub fn spawn(listen: Option<SocketAddr>, registry: Registry, readiness: Readiness, cancel: CancellationToken) {
    let Some(address) = listen else { return };
    tokio::spawn(async move {
        if let Err(e) = serve(address, Arc::new(registry), readiness, cancel).await {
            warn!(%address, error = %e, "the metrics endpoint failed");
        }
    });
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until cancelled.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(address = %listener.local_addr()?, "metrics, /healthz and /readyz served");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { registry, readiness });
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    match shared.readiness.why_not() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
