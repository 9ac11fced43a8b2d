//! What an agent reports, on its way to the coordinator: the current connection's stream, and
//! between connections (a coordinator restarting, a failover) what must wait for the next one.

use std::collections::{BTreeMap, VecDeque};

use tokio::sync::mpsc;
use tracing::info;
use trainyard_proto::pb;
use trainyard_proto::pb::agent_message::Body as Up;

use crate::Key;

/// Bytes of log lines kept, sent but not confirmed stored yet or waiting for a connection (a
/// restart, a failover); past it the oldest batches go. The instance's `output/training.log`
/// keeps everything either way.
pub const MAX_KEPT_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Metric samples kept per instance until they are confirmed stored; past it the oldest go.
pub const MAX_KEPT_SAMPLES: usize = 10_000;

/// Where reports go: the current connection's stream, or, between connections, log batches wait
/// (oldest first, bounded) and are sent first on the next one. States need no waiting: every
/// registration repeats each instance's latest.
///
/// What is sent is kept until the coordinator says it stored it (`LogsStored`, `SamplesStored`):
/// a coordinator that dies, or stops answering, before storing what it was sent (its host gone,
/// the lines in its socket) would otherwise lose it. When the connection ends, log batches wait
/// with the unsent ones, before them, and the next coordinator gets them again; an instance's
/// samples travel with its state in every registration (the coordinator records an update's
/// samples before its state: a trial that ended meanwhile keeps its last objective). Lines and
/// samples are numbered per instance: one stored already is not stored again.
#[derive(Default)]
pub struct Outbound {
    pub stream: Option<mpsc::UnboundedSender<pb::AgentMessage>>,
    /// Sent on the current stream, not confirmed yet; oldest first.
    unconfirmed: VecDeque<pb::LogBatch>,
    /// Waiting for a stream; oldest first.
    unsent_logs: VecDeque<pb::LogBatch>,
    /// The bytes of both queues.
    log_bytes: usize,
    dropped_lines: u64,
    /// Per instance, its samples not confirmed stored (sent or not).
    samples: BTreeMap<Key, KeptSamples>,
}

/// An instance's samples, numbered from `first` on: the newest [`MAX_KEPT_SAMPLES`].
#[derive(Default)]
struct KeptSamples {
    first: u64,
    samples: VecDeque<pb::MetricSample>,
}

fn log_batch_bytes(batch: &pb::LogBatch) -> usize {
    batch.lines.iter().map(|l| l.text.len() + l.stream.len() + 16).sum::<usize>() + batch.training_job_name.len()
}

/// The number of a batch's last line.
fn last_line(batch: &pb::LogBatch) -> u64 {
    batch.first_line + (batch.lines.len() as u64).saturating_sub(1)
}

impl Outbound {
    /// Sends a batch on the current stream and keeps it until it is confirmed; without a stream
    /// it waits for the next one.
    pub fn send_logs(&mut self, batch: pb::LogBatch) {
        self.log_bytes += log_batch_bytes(&batch);
        match &self.stream {
            Some(tx) => {
                let _ = tx.send(pb::AgentMessage { body: Some(Up::Logs(batch.clone())) });
                self.unconfirmed.push_back(batch);
            }
            None => self.unsent_logs.push_back(batch),
        }
        self.trim_logs();
    }

    /// Past the bound the oldest batches go: unconfirmed ones first (most of those were stored).
    fn trim_logs(&mut self) {
        while self.log_bytes > MAX_KEPT_LOG_BYTES {
            let Some(oldest) = self.unconfirmed.pop_front().or_else(|| self.unsent_logs.pop_front()) else { break };
            self.log_bytes -= log_batch_bytes(&oldest);
            self.dropped_lines += oldest.lines.len() as u64;
        }
    }

    /// The coordinator stored the instance's lines up to `through_line`.
    pub fn logs_stored(&mut self, stored: &pb::LogsStored) {
        self.confirmed(|b| {
            b.training_job_name == stored.training_job_name
                && b.instance == stored.instance
                && last_line(b) <= stored.through_line
        });
    }

    /// The coordinator forgot the instance (it stored its end): its samples are stored, and lines
    /// of it still unconfirmed were held by a coordinator whose store was away, and are stored
    /// from there.
    pub fn forget(&mut self, key: &Key) {
        self.samples.remove(key);
        self.confirmed(|b| b.training_job_name == key.0 && b.instance == key.1);
    }

    /// Lets go of the unconfirmed batches that `done` says are stored.
    fn confirmed(&mut self, done: impl Fn(&pb::LogBatch) -> bool) {
        let mut freed = 0;
        self.unconfirmed.retain(|b| {
            let stored = done(b);
            if stored {
                freed += log_batch_bytes(b);
            }
            !stored
        });
        self.log_bytes -= freed;
    }

    /// The stream ended: what it was sent and did not confirm waits for the next one, first.
    pub fn disconnect(&mut self) {
        self.stream = None;
        while let Some(batch) = self.unconfirmed.pop_back() {
            self.unsent_logs.push_front(batch);
        }
    }

    /// Keeps an instance's samples, numbered from `first_sample` on, until they are confirmed. A
    /// number that does not follow on (a new attempt's) starts the instance's afresh.
    pub fn keep_samples(&mut self, key: Key, first_sample: u64, samples: Vec<pb::MetricSample>) {
        let kept = self.samples.entry(key).or_default();
        if kept.first + kept.samples.len() as u64 != first_sample {
            *kept = KeptSamples { first: first_sample, samples: VecDeque::new() };
        }
        kept.samples.extend(samples);
        let excess = kept.samples.len().saturating_sub(MAX_KEPT_SAMPLES);
        kept.samples.drain(..excess);
        kept.first += excess as u64;
    }

    /// The coordinator stored the instance's samples up to `through_sample`.
    pub fn samples_stored(&mut self, stored: &pb::SamplesStored) {
        let key = (stored.training_job_name.clone(), stored.instance);
        let Some(kept) = self.samples.get_mut(&key) else { return };
        let done = (stored.through_sample + 1).saturating_sub(kept.first).min(kept.samples.len() as u64);
        kept.samples.drain(..done as usize);
        kept.first += done;
        if kept.samples.is_empty() {
            self.samples.remove(&key);
        }
    }

    /// The samples of `key`'s instance not confirmed yet and the number of the first, to go with
    /// its state in a registration ((0, none) when there are none).
    pub fn samples_for(&self, key: &Key) -> (u64, Vec<pb::MetricSample>) {
        match self.samples.get(key) {
            Some(kept) if !kept.samples.is_empty() => (kept.first, kept.samples.iter().cloned().collect()),
            _ => (0, Vec::new()),
        }
    }

    /// `update` carrying its instance's samples not confirmed yet (a registration's, a final
    /// state sent again).
    pub fn with_kept_samples(&self, update: pb::InstanceUpdate) -> pb::InstanceUpdate {
        let (first_sample, metrics) = self.samples_for(&(update.training_job_name.clone(), update.instance));
        pb::InstanceUpdate { metrics, first_sample, ..update }
    }

    /// A new connection's stream: the log batches that waited for it go first, those a previous
    /// stream did not confirm ahead of the rest.
    pub fn connect(&mut self, stream: mpsc::UnboundedSender<pb::AgentMessage>) {
        self.disconnect(); // (done already when that stream ended; a no-op then)
        let (batches, lines) = (self.unsent_logs.len(), self.unsent_logs.iter().map(|b| b.lines.len()).sum::<usize>());
        for batch in self.unsent_logs.drain(..) {
            let _ = stream.send(pb::AgentMessage { body: Some(Up::Logs(batch.clone())) });
            self.unconfirmed.push_back(batch);
        }
        if batches > 0 {
            info!(batches, lines, dropped = self.dropped_lines, "log lines not confirmed stored are sent");
        }
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
            first_line: 1,
        }
    }

    fn logs_sent(rx: &mut mpsc::UnboundedReceiver<pb::AgentMessage>) -> Vec<(String, u64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.body {
                Some(Up::Logs(b)) => Some((b.training_job_name, b.first_line)),
                _ => None,
            })
            .collect()
    }

    /// Between connections log batches wait, oldest first and within the bound (the oldest go,
    /// counted); the next connection gets them first, in order, before anything newer.
    #[test]
    fn log_batches_wait_for_the_next_connection_within_the_bound() {
        let mut outbound = Outbound::default();
        let big = MAX_KEPT_LOG_BYTES / 3;
        for job in ["a", "b", "c", "d"] {
            outbound.send_logs(batch(job, big));
        }
        assert!(outbound.log_bytes <= MAX_KEPT_LOG_BYTES);
        assert_eq!((outbound.unsent_logs.len(), outbound.dropped_lines), (2, 2), "a and b made room");
        let (tx, mut rx) = mpsc::unbounded_channel();
        outbound.connect(tx);
        assert_eq!(logs_sent(&mut rx), [("c".to_string(), 1), ("d".to_string(), 1)]);
        assert!(outbound.unsent_logs.is_empty() && outbound.stream.is_some());
        assert_eq!(outbound.dropped_lines, 0);
    }

    /// A batch sent is kept until the coordinator confirms its instance's lines up to its last
    /// (confirmations are cumulative, per instance); what a stream that ended did not confirm is
    /// sent again first on the next, before what waited for it, in order.
    #[test]
    fn sent_log_batches_are_kept_until_confirmed_and_sent_again_on_the_next_stream() {
        let numbered = |job: &str, instance: u32, first_line: u64, lines: usize| pb::LogBatch {
            training_job_name: job.into(),
            instance,
            lines: vec![pb::LogLine { stream: "stdout".into(), text: "x".into(), ..Default::default() }; lines],
            first_line,
        };
        let mut outbound = Outbound::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        outbound.connect(tx);
        outbound.send_logs(numbered("a", 1, 1, 10)); // lines 1-10
        outbound.send_logs(numbered("a", 1, 11, 10)); // 11-20
        outbound.send_logs(numbered("a", 2, 1, 5)); // another instance
        outbound.send_logs(numbered("a", 1, 21, 10)); // 21-30
        assert_eq!(logs_sent(&mut rx).len(), 4, "sent at once");
        let stored = |instance, through_line| pb::LogsStored { training_job_name: "a".into(), instance, through_line };
        outbound.logs_stored(&stored(1, 20));
        let kept: Vec<(u32, u64)> = outbound.unconfirmed.iter().map(|b| (b.instance, b.first_line)).collect();
        assert_eq!(kept, [(2, 1), (1, 21)], "instance 1 up to line 20 confirmed, nothing else");
        outbound.logs_stored(&stored(1, 25));
        assert_eq!(outbound.unconfirmed.len(), 2, "a batch goes when its last line is confirmed");

        // The stream ends; a batch written meanwhile waits behind those it did not confirm.
        outbound.disconnect();
        outbound.send_logs(numbered("b", 1, 1, 3));
        let (tx, mut rx) = mpsc::unbounded_channel();
        outbound.connect(tx);
        assert_eq!(logs_sent(&mut rx), [("a".to_string(), 1), ("a".to_string(), 21), ("b".to_string(), 1)]);
        assert_eq!(outbound.unconfirmed.len(), 3, "kept until confirmed on this stream too");

        // An instance the coordinator forgot (its end is stored) is not sent again.
        outbound.forget(&("a".to_string(), 1));
        outbound.forget(&("a".to_string(), 2));
        outbound.logs_stored(&pb::LogsStored { training_job_name: "b".into(), instance: 1, through_line: 3 });
        assert!(outbound.unconfirmed.is_empty());
        assert_eq!(outbound.log_bytes, 0, "the bytes counted are freed with the batches");
    }

    /// An instance's samples are kept, numbered (the newest within the bound), until the
    /// coordinator confirms them (cumulatively) or forgets the instance: every registration
    /// carries those left, with the number of the first. A new attempt's numbers start afresh.
    #[test]
    fn metric_samples_are_kept_until_confirmed() {
        let sample = |value: f64| pb::MetricSample { name: "score".into(), value, ..Default::default() };
        let key: Key = ("job".into(), 1);
        let mut outbound = Outbound::default();
        outbound.keep_samples(key.clone(), 1, (0..MAX_KEPT_SAMPLES + 5).map(|v| sample(v as f64)).collect());
        let (first, carried) = outbound.samples_for(&key);
        assert_eq!((first, carried.len()), (6, MAX_KEPT_SAMPLES));
        assert_eq!(carried[0].value, 5.0, "the oldest went");
        let (tx, _rx) = mpsc::unbounded_channel();
        outbound.connect(tx);
        outbound.keep_samples(key.clone(), 6 + MAX_KEPT_SAMPLES as u64, vec![sample(-1.0)]);
        assert_eq!(outbound.samples_for(&key).1.len(), MAX_KEPT_SAMPLES, "the bound holds");
        let stored =
            |through_sample| pb::SamplesStored { training_job_name: "job".into(), instance: 1, through_sample };
        outbound.samples_stored(&stored(MAX_KEPT_SAMPLES as u64 + 2));
        let (first, left) = outbound.samples_for(&key);
        assert_eq!(first, MAX_KEPT_SAMPLES as u64 + 3);
        let values: Vec<f64> = left.iter().map(|s| s.value).collect();
        let newest = MAX_KEPT_SAMPLES as f64; // sample number n has value n - 1
        assert_eq!(values, [newest + 2.0, newest + 3.0, newest + 4.0, -1.0]);
        outbound.samples_stored(&stored(3)); // an old confirmation changes nothing
        assert_eq!(outbound.samples_for(&key).1.len(), 4);

        outbound.keep_samples(key.clone(), (1 << 32) + 1, vec![sample(7.0)]); // the next attempt
        assert_eq!(outbound.samples_for(&key), ((1 << 32) + 1, vec![sample(7.0)]));
        outbound.forget(&key);
        assert_eq!(outbound.samples_for(&key), (0, Vec::new()));
        outbound.keep_samples(key.clone(), 1, vec![sample(1.0)]);
        outbound.samples_stored(&stored(1));
        assert!(outbound.samples.is_empty(), "an instance confirmed whole is not kept");
    }
}
