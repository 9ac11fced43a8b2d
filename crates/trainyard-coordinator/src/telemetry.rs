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
        };
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
        registry.register("trainyard_instances_ended", "Instances that ended, by how", metrics.instances_ended.clone());
        Arc::new(metrics)
    }
}
