//! The coordinator's Prometheus metrics (served by `trainyard-telemetry` on `--metrics-listen`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    /// The gRPC method (`CreateTrainingJob`).
    pub method: String,
    /// Its status code (`Ok`, `InvalidArgument`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreCall {
    /// The store's operation (`create_training_job`, `append_logs`, ...).
    pub operation: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

pub struct Metrics {
    /// Training jobs (standalone and trials) waiting for placement.
    pub queue_length: Gauge,
    /// Training jobs placed and not yet ended.
    pub jobs_running: Gauge,
    /// Agents by state: ready, disconnected, lost, revoked, cordoned, draining.
    pub agents: Family<State, Gauge>,
    /// How long one placement pass takes.
    pub placement_seconds: Histogram,
    /// How long placed jobs waited in the queue.
    pub queue_wait_seconds: Histogram,
    /// Instances that ended, by how (Completed, Failed, Stopped, MaxRuntimeExceeded).
    pub instances_ended: Family<State, Counter>,
    /// How long the API takes to answer, by method and status code.
    pub rpc_seconds: Family<Rpc, Histogram>,
    /// 1 while this coordinator leads, 0 while it stands by.
    pub leader: Gauge,
    /// How long the store takes, by operation and outcome.
    pub store_seconds: Family<StoreCall, Histogram>,
    /// Spot jobs interrupted so that a job that is not spot could start.
    pub interruptions: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let metrics = Metrics {
            queue_length: Gauge::default(),
            jobs_running: Gauge::default(),
            agents: Family::default(),
            placement_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            queue_wait_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            instances_ended: Family::default(),
            rpc_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 18))),
            leader: Gauge::default(),
            store_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 18))),
            interruptions: Counter::default(),
        };
        registry.register(
            "trainyard_leader",
            "1 while this coordinator leads, 0 while it stands by",
            metrics.leader.clone(),
        );
        registry.register(
            "trainyard_queue_length",
            "Training jobs waiting for placement",
            metrics.queue_length.clone(),
        );
        registry.register(
            "trainyard_jobs_running",
            "Training jobs placed and not yet ended",
            metrics.jobs_running.clone(),
        );
        registry.register("trainyard_agents", "Agents by state", metrics.agents.clone());
        registry.register(
            "trainyard_placement_pass_seconds",
            "How long one placement pass takes",
            metrics.placement_seconds.clone(),
        );
        registry.register(
            "trainyard_queue_wait_seconds",
            "How long placed training jobs waited in the queue",
            metrics.queue_wait_seconds.clone(),
        );
        registry.register(
            "trainyard_rpc_seconds",
            "How long the coordinator's gRPC API takes to answer, by method and status code",
            metrics.rpc_seconds.clone(),
        );
        registry.register("trainyard_instances_ended", "Instances that ended, by how", metrics.instances_ended.clone());
        registry.register(
            "trainyard_store_seconds",
            "How long the store (SQLite or PostgreSQL) takes, by operation and outcome",
            metrics.store_seconds.clone(),
        );
        registry.register(
            "trainyard_spot_interruptions",
            "Spot training jobs interrupted so that a job that is not spot could start",
            metrics.interruptions.clone(),
        );
        Arc::new(metrics)
    }
}

/// Observes how long every unary gRPC call takes to answer, by method and status code (read from the
/// answer's `grpc-status` header, which a refusal carries; an answer without one is `Ok`). The
/// agents' session stream is left out: it lasts as long as the agent stays connected.
#[derive(Clone)]
pub struct RpcLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if method != "Session" {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let label = Rpc { method, code: trainyard_proto::status::code_name(code).to_string() };
                metrics.rpc_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
            }
            Ok(response)
        })
    }
}
