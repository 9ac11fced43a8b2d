//! The agent's Prometheus metrics (served by `trainyard-telemetry` on `--metrics-listen`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use trainyard_proto::pb;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub uuid: String,
    pub name: String,
}

pub struct Metrics {
    /// Instances between their assignment and their end (upload included).
    pub instances_running: Gauge,
    /// How long laying out a work dir and staging its channels takes.
    pub staging_seconds: Histogram,
    /// How long giving an instance its network namespace takes (a fresh one or an idle one reused).
    pub network_setup_seconds: Histogram,
    /// How long starting an instance's program takes once its work dir and network are ready
    /// (its cgroup, uid, mounts, the spawn; for a container, the image and the container too).
    pub launch_seconds: Histogram,
    /// How long an instance takes to end once its program has exited (the last output read, what it
    /// left killed, its cgroup removed, its uid freed), before its upload.
    pub teardown_seconds: Histogram,
    /// How long uploading an instance's model, output and checkpoints takes.
    pub upload_seconds: Histogram,
    /// Bytes of channel data laid out in work dirs (from the input cache or the store).
    pub staged_bytes: Counter,
    /// Bytes of model and output archives uploaded.
    pub uploaded_bytes: Counter,
    pub gpu_utilization_percent: Family<GpuLabels, Gauge>,
    pub gpu_memory_used_mib: Family<GpuLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let metrics = Metrics {
            instances_running: Gauge::default(),
            staging_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            upload_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            network_setup_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            launch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 24)),
            teardown_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            staged_bytes: Counter::default(),
            uploaded_bytes: Counter::default(),
            gpu_utilization_percent: Family::default(),
            gpu_memory_used_mib: Family::default(),
        };
        registry.register(
            "trainyard_agent_instances_running",
            "Instances between their assignment and their end",
            metrics.instances_running.clone(),
        );
        registry.register(
            "trainyard_agent_staging_seconds",
            "How long laying out a work dir and staging its channels takes",
            metrics.staging_seconds.clone(),
        );
        registry.register(
            "trainyard_agent_network_setup_seconds",
            "How long giving an instance its network namespace takes",
            metrics.network_setup_seconds.clone(),
        );
        registry.register(
            "trainyard_agent_launch_seconds",
            "How long starting an instance's program takes once its work dir and network are ready",
            metrics.launch_seconds.clone(),
        );
        registry.register(
            "trainyard_agent_teardown_seconds",
            "How long an instance takes to end once its program has exited, before its upload",
            metrics.teardown_seconds.clone(),
        );
        registry.register(
            "trainyard_agent_upload_seconds",
            "How long uploading an instance's model, output and checkpoints takes",
            metrics.upload_seconds.clone(),
        );
        registry.register(
            "trainyard_agent_staged_bytes",
            "Bytes of channel data laid out in instances' work dirs",
            metrics.staged_bytes.clone(),
        );
        registry.register(
            "trainyard_agent_uploaded_bytes",
            "Bytes of model and output archives uploaded",
            metrics.uploaded_bytes.clone(),
        );
        registry.register(
            "trainyard_agent_gpu_utilization_percent",
            "GPU utilisation (NVML)",
            metrics.gpu_utilization_percent.clone(),
        );
        registry.register(
            "trainyard_agent_gpu_memory_used_mib",
            "GPU memory in use (NVML)",
            metrics.gpu_memory_used_mib.clone(),
        );
        Arc::new(metrics)
    }

    /// The GPUs' numbers, from a heartbeat's reading.
    pub fn gpus(&self, gpus: &[pb::Gpu]) {
        for gpu in gpus {
            let labels = GpuLabels { uuid: gpu.uuid.clone(), name: gpu.name.clone() };
            self.gpu_utilization_percent.get_or_create(&labels).set(i64::from(gpu.utilization_percent));
            self.gpu_memory_used_mib.get_or_create(&labels).set(gpu.memory_used_mib as i64);
        }
    }
}
