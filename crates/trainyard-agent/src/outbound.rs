//! What an agent reports, on its way to the coordinator: the current connection's stream, and
//! between connections (a coordinator restarting, a failover) what must wait for the next one.

use std::collections::{BTreeMap, VecDeque};

use tokio::sync::mpsc;
use tracing::info;
use trainyard_proto::pb;
use trainyard_proto::pb::agent_message::Body as Up;

use crate::Key;

/// Bytes of log lines kept while no coordinator is connected (a restart, a failover); past it the
/// oldest batches go. The instance's `output/training.log` keeps everything either way.
pub const MAX_UNSENT_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Metric samples kept per instance while no coordinator is connected; past it the oldest go.
pub const MAX_UNSENT_SAMPLES: usize = 10_000;

/// Where reports go: the current connection's stream, or, between connections, log batches wait
/// (oldest first, bounded) and are sent first on the next one, and metric samples wait per
/// instance and travel with the instance's state in the next registration (the coordinator
/// records an update's samples before its state: a trial that ended meanwhile keeps its last
/// objective). States need no waiting: every registration repeats each instance's latest.
#[derive(Default)]
pub struct Outbound {
    pub stream: Option<mpsc::UnboundedSender<pb::AgentMessage>>,
    unsent_logs: VecDeque<pb::LogBatch>,
    unsent_bytes: usize,
    dropped_lines: u64,
    unsent_samples: BTreeMap<Key, Vec<pb::MetricSample>>,
    /// Per instance: samples dropped to stay within the bound since a registration took a copy
    /// (they were at the front: among those it carried).
    trimmed: BTreeMap<Key, usize>,
}

fn log_batch_bytes(batch: &pb::LogBatch) -> usize {
    batch.lines.iter().map(|l| l.text.len() + l.stream.len() + 16).sum::<usize>() + batch.training_job_name.len()
}

impl Outbound {
    pub fn hold(&mut self, batch: pb::LogBatch) {
        self.unsent_bytes += log_batch_bytes(&batch);
        self.unsent_logs.push_back(batch);
        while self.unsent_bytes > MAX_UNSENT_LOG_BYTES {
            let Some(oldest) = self.unsent_logs.pop_front() else { break };
            self.unsent_bytes -= log_batch_bytes(&oldest);
            self.dropped_lines += oldest.lines.len() as u64;
        }
    }

    pub fn hold_samples(&mut self, key: Key, samples: Vec<pb::MetricSample>) {
        let kept = self.unsent_samples.entry(key.clone()).or_default();
        kept.extend(samples);
        let excess = kept.len().saturating_sub(MAX_UNSENT_SAMPLES);
        kept.drain(..excess);
        *self.trimmed.entry(key).or_default() += excess;
    }

    /// The samples waiting for `key`'s instance, to go with its state in a registration.
    pub fn samples_for(&mut self, key: &Key) -> Vec<pb::MetricSample> {
        self.trimmed.remove(key);
        self.unsent_samples.get(key).cloned().unwrap_or_default()
    }

    /// A new connection's stream, whose registration carried `sent` samples of each instance: the
    /// log batches that waited for it go first.
    pub fn connect(&mut self, stream: mpsc::UnboundedSender<pb::AgentMessage>, sent: &BTreeMap<Key, usize>) {
        for (key, count) in sent {
            let count = count.saturating_sub(self.trimmed.remove(key).unwrap_or_default());
            if let Some(kept) = self.unsent_samples.get_mut(key) {
                kept.drain(..count.min(kept.len()));
                if kept.is_empty() {
                    self.unsent_samples.remove(key);
                }
            }
        }
        let (batches, lines) = (self.unsent_logs.len(), self.unsent_logs.iter().map(|b| b.lines.len()).sum::<usize>());
        for batch in self.unsent_logs.drain(..) {
            let _ = stream.send(pb::AgentMessage { body: Some(Up::Logs(batch)) });
        }
        if batches > 0 {
            info!(batches, lines, dropped = self.dropped_lines, "log lines written while disconnected are sent");
        }
        self.unsent_bytes = 0;
        self.dropped_lines = 0;
        self.stream = Some(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(job: &str, bytes: usize) -> pb::LogBatch {
        pb::LogBatch {
            training_job_name: job.into(),
            instance: 1,
            lines: vec![pb::LogLine { stream: "stdout".into(), text: "x".repeat(bytes), ..Default::default() }],
        }
    }

    /// Between connections log batches wait, oldest first and within the bound (the oldest go,
    /// counted); the next connection gets them first, in order, before anything newer.
    #[test]
    fn log_batches_wait_for_the_next_connection_within_the_bound() {
        let mut outbound = Outbound::default();
        let big = MAX_UNSENT_LOG_BYTES / 3;
        for job in ["a", "b", "c", "d"] {
            outbound.hold(batch(job, big));
        }
        assert!(outbound.unsent_bytes <= MAX_UNSENT_LOG_BYTES);
        assert_eq!((outbound.unsent_logs.len(), outbound.dropped_lines), (2, 2), "a and b made room");
        let (tx, mut rx) = mpsc::unbounded_channel();
        outbound.connect(tx, &BTreeMap::new());
        let sent: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.body {
                Some(Up::Logs(b)) => Some(b.training_job_name),
                _ => None,
            })
            .collect();
        assert_eq!(sent, ["c", "d"]);
        assert!(outbound.unsent_logs.is_empty() && outbound.stream.is_some());
        assert_eq!((outbound.unsent_bytes, outbound.dropped_lines), (0, 0));
    }

    /// Metric samples wait per instance (the newest within the bound); a registration that carried
    /// some takes only those: samples that came after it was built wait for the next.
    #[test]
    fn metric_samples_wait_for_the_next_registration() {
        let sample = |value: f64| pb::MetricSample { name: "score".into(), value, ..Default::default() };
        let key: Key = ("job".into(), 1);
        let mut outbound = Outbound::default();
        outbound.hold_samples(key.clone(), (0..MAX_UNSENT_SAMPLES + 5).map(|v| sample(v as f64)).collect());
        let carried = outbound.samples_for(&key);
        assert_eq!(carried.len(), MAX_UNSENT_SAMPLES);
        assert_eq!(carried[0].value, 5.0, "the oldest went");
        outbound.hold_samples(key.clone(), vec![sample(-1.0)]); // after the registration was built
        let (tx, _rx) = mpsc::unbounded_channel();
        outbound.connect(tx, &BTreeMap::from([(key.clone(), carried.len())]));
        let left: Vec<f64> = outbound.samples_for(&key).iter().map(|s| s.value).collect();
        assert_eq!(left, [-1.0]);
    }
}
