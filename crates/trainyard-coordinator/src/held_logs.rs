//! Log lines the store could not take (it was away), held in memory until it can, oldest first and
//! within a bound: a long outage under chatty jobs must not grow the coordinator without limit.
//! Each line keeps the sequence number it was given, so stored late it still reads in place; the
//! store ignores a line stored twice (a batch whose write did reach it).

use std::collections::VecDeque;

use trainyard_store::LogRecord;

/// Bytes of log text held at most; past it the oldest batches are dropped (and counted).
pub const MAX_HELD_LOG_BYTES: usize = 32 * 1024 * 1024;

#[derive(Default)]
pub struct HeldLogs {
    batches: VecDeque<(String, Vec<LogRecord>)>,
    bytes: usize,
    /// Lines dropped to stay within the bound since the store was last reached.
    pub dropped: u64,
}

fn size(records: &[LogRecord]) -> usize {
    records.iter().map(|r| r.text.len() + r.stream.len() + 32).sum()
}

impl HeldLogs {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Holds a job's batch; the oldest batches go if the bytes held would pass `limit`.
    pub fn hold(&mut self, job: &str, records: Vec<LogRecord>, limit: usize) {
        self.bytes += size(&records);
        self.batches.push_back((job.to_string(), records));
        while self.bytes > limit {
            let Some((_, oldest)) = self.batches.pop_front() else { break };
            self.bytes -= size(&oldest);
            self.dropped += oldest.len() as u64;
        }
    }

    /// The oldest batch, to be stored; [`HeldLogs::put_back`] it if that fails.
    pub fn take_oldest(&mut self) -> Option<(String, Vec<LogRecord>)> {
        let batch = self.batches.pop_front()?;
        self.bytes -= size(&batch.1);
        Some(batch)
    }

    /// A batch taken that could not be stored after all: first again.
    pub fn put_back(&mut self, job: String, records: Vec<LogRecord>) {
        self.bytes += size(&records);
        self.batches.push_front((job, records));
    }

    #[cfg(test)]
    pub fn lines(&self) -> usize {
        self.batches.iter().map(|b| b.1.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use trainyard_model::Timestamp;

    use super::*;

    fn lines(from: i64, count: i64, text: &str) -> Vec<LogRecord> {
        (from..from + count)
            .map(|seq| LogRecord {
                seq,
                instance: 1,
                stream: "stdout".into(),
                timestamp: Timestamp::from_millis(seq),
                text: text.into(),
            })
            .collect()
    }

    /// Batches come back oldest first, a failed one first again; past the bound the oldest go,
    /// counted, and what is held never exceeds it.
    #[test]
    fn held_lines_come_back_in_order_within_the_bound() {
        let mut held = HeldLogs::default();
        let line_size = size(&lines(1, 1, "0123456789"));
        let limit = 10 * line_size;
        held.hold("a", lines(1, 4, "0123456789"), limit);
        held.hold("b", lines(1, 4, "0123456789"), limit);
        assert_eq!((held.lines(), held.dropped), (8, 0));
        // A third batch passes the bound: the oldest (job a's) goes.
        held.hold("a", lines(5, 4, "0123456789"), limit);
        assert_eq!((held.lines(), held.dropped), (8, 4));
        assert!(held.bytes <= limit);

        let (job, batch) = held.take_oldest().expect("b");
        assert_eq!((job.as_str(), batch[0].seq), ("b", 1));
        held.put_back(job, batch);
        let order: Vec<(String, i64)> =
            std::iter::from_fn(|| held.take_oldest()).map(|(job, batch)| (job, batch[0].seq)).collect();
        assert_eq!(order, vec![("b".to_string(), 1), ("a".to_string(), 5)]);
        assert!(held.is_empty());
        assert_eq!(held.bytes, 0);

        // One batch larger than the bound is not held at all.
        held.hold("c", lines(1, 20, "0123456789"), limit);
        assert!(held.is_empty());
        assert_eq!(held.dropped, 24);
    }
}
