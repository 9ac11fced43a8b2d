//! Log lines the store could not take (it was away), held in memory until it can, oldest first and
//! within a bound: a long outage under chatty jobs must not grow the coordinator without limit.
//! Each line keeps the sequence number it was given, so stored late it still reads in place; the
//! store ignores a line stored twice (a batch whose write did reach it).
//!
//! A job whose numbering the coordinator has not read yet (its first lines came while the store
//! was away) has its lines held *unnumbered* — counted from 1 — and numbered once the store says
//! where the job's log stands ([`HeldLogs::number`]), before any of them is stored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use trainyard_store::LogRecord;

/// Bytes of log text held at most; past it the oldest batches are dropped (and counted).
pub const MAX_HELD_LOG_BYTES: usize = 32 * 1024 * 1024;
/// After the store failed to take lines, new ones are held without asking it again for this long:
/// an agent's stream, which carries its heartbeats too, must not wait on a store that is away.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(serde::Serialize, serde::Deserialize)]
struct SpooledBatch {
    job: String,
    lines: Vec<SpooledLine>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SpooledLine {
    instance: u32,
    stream: String,
    timestamp_millis: i64,
    text: String,
    /// (Absent from what an older coordinator spooled.)
    #[serde(default)]
    instance_line: Option<i64>,
}

struct Batch {
    job: String,
    records: Vec<LogRecord>,
    /// False: numbered from 1 within the job's unnumbered lines, not yet in the job's log.
    numbered: bool,
}

#[derive(Default)]
pub struct HeldLogs {
    batches: VecDeque<Batch>,
    /// A copy of the batch last taken to be stored, until the next is taken or it is put back:
    /// its lines are still held (not stored yet) while the store takes them, and kept on disk if
    /// the process ends meanwhile (the store ignores lines it already took).
    in_flight: Option<Batch>,
    bytes: usize,
    /// Lines dropped to stay within the bound since the store was last reached.
    pub dropped: u64,
    /// When the store last failed to take lines (cleared once it takes them).
    failed_at: Option<Instant>,
}

fn size(records: &[LogRecord]) -> usize {
    records.iter().map(|r| r.text.len() + r.stream.len() + 32).sum()
}

impl HeldLogs {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Nothing held and no batch being stored (see [`HeldLogs::take_oldest`]): every line taken
    /// in is stored.
    pub fn idle(&self) -> bool {
        self.batches.is_empty() && self.in_flight.is_none()
    }

    /// Lines held.
    pub fn len(&self) -> usize {
        self.batches.iter().map(|b| b.records.len()).sum()
    }

    /// Whether lines of `job` are held (a batch being stored among them).
    pub fn holds(&self, job: &str) -> bool {
        self.in_flight.as_ref().is_some_and(|b| b.job == job) || self.batches.iter().any(|b| b.job == job)
    }

    /// Holds a job's batch (`numbered`: see [`HeldLogs::number`]); the oldest batches go if the
    /// bytes held would pass `limit`.
    pub fn hold(&mut self, job: &str, records: Vec<LogRecord>, numbered: bool, limit: usize) {
        self.bytes += size(&records);
        self.batches.push_back(Batch { job: job.to_string(), records, numbered });
        while self.bytes > limit {
            let Some(oldest) = self.batches.pop_front() else { break };
            self.bytes -= size(&oldest.records);
            self.dropped += oldest.records.len() as u64;
        }
    }

    /// The oldest batch, to be stored, and whether it is numbered (an unnumbered one must be
    /// [`HeldLogs::number`]ed first); [`HeldLogs::put_back`] it if it cannot be stored now.
    /// The batch counts as held until the next is taken (it was stored, or dropped) or it is put
    /// back.
    pub fn take_oldest(&mut self) -> Option<(String, Vec<LogRecord>, bool)> {
        let Some(batch) = self.batches.pop_front() else {
            self.in_flight = None;
            return None;
        };
        self.bytes -= size(&batch.records);
        self.in_flight =
            Some(Batch { job: batch.job.clone(), records: batch.records.clone(), numbered: batch.numbered });
        Some((batch.job, batch.records, batch.numbered))
    }

    /// A batch taken that could not be stored after all: first again.
    pub fn put_back(&mut self, job: String, records: Vec<LogRecord>, numbered: bool) {
        self.in_flight = None;
        self.bytes += size(&records);
        self.batches.push_front(Batch { job, records, numbered });
    }

    /// Numbers a job's unnumbered lines now that the store's last number for it is known: they
    /// follow it, and whatever of the job is held numbered (lines the store has not seen either).
    /// Lines numbered past `max_seq` are dropped (a job's log is bounded). Returns the number the
    /// first unnumbered line got, less one: what the job's next line numbers from.
    pub fn number(&mut self, job: &str, last_stored: i64, max_seq: i64) -> i64 {
        let base = self
            .batches
            .iter()
            .filter(|b| b.numbered && b.job == job)
            .flat_map(|b| b.records.iter().map(|r| r.seq))
            .fold(last_stored, i64::max);
        for batch in self.batches.iter_mut().filter(|b| !b.numbered && b.job == job) {
            for record in &mut batch.records {
                record.seq += base;
            }
            let (lines, bytes) = (batch.records.len(), size(&batch.records));
            batch.records.retain(|r| r.seq <= max_seq);
            self.dropped += (lines - batch.records.len()) as u64;
            self.bytes -= bytes - size(&batch.records);
            batch.numbered = true;
        }
        base
    }

    /// Whether to try the store now: not within [`RETRY_AFTER`] of its last failure.
    pub fn worth_trying(&self, now: Instant) -> bool {
        self.failed_at.is_none_or(|at| now.duration_since(at) >= RETRY_AFTER)
    }

    /// The store failed to take lines (or to say where a job's log stands).
    pub fn store_failed(&mut self, now: Instant) {
        self.failed_at = Some(now);
    }

    /// The store took lines again.
    pub fn store_answered(&mut self) {
        self.failed_at = None;
    }

    /// What is held, to be kept on disk when the process ends (see [`HeldLogs::restore`]), the
    /// batch being stored first: it is the oldest.
    pub fn spool(&self) -> Vec<u8> {
        let batches: Vec<SpooledBatch> = self
            .in_flight
            .iter()
            .chain(&self.batches)
            .map(|b| SpooledBatch {
                job: b.job.clone(),
                lines: b
                    .records
                    .iter()
                    .map(|r| SpooledLine {
                        instance: r.instance,
                        stream: r.stream.clone(),
                        timestamp_millis: r.timestamp.millis(),
                        text: r.text.clone(),
                        instance_line: r.instance_line,
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_vec(&batches).unwrap_or_default()
    }

    /// Holds what an earlier process spooled, before anything newer, every line unnumbered: the
    /// store may have numbered lines of the same jobs since (another coordinator led meanwhile), so
    /// they follow whatever it holds. Returns, per job, how many lines came back (the next
    /// unnumbered line's number is one more).
    pub fn restore(&mut self, spooled: &[u8], limit: usize) -> Result<Vec<(String, i64)>, serde_json::Error> {
        let batches: Vec<SpooledBatch> = serde_json::from_slice(spooled)?;
        let mut counts: Vec<(String, i64)> = Vec::new();
        for batch in batches.into_iter().rev() {
            let records: Vec<LogRecord> = batch
                .lines
                .into_iter()
                .map(|l| LogRecord {
                    seq: 0,
                    instance: l.instance,
                    stream: l.stream,
                    timestamp: trainyard_model::Timestamp::from_millis(l.timestamp_millis),
                    text: l.text,
                    instance_line: l.instance_line,
                })
                .collect();
            self.put_back(batch.job, records, false);
        }
        // Numbered from 1 per job, in the order they were held.
        let mut next: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for held in self.batches.iter_mut().filter(|b| !b.numbered) {
            let n = next.entry(held.job.clone()).or_insert(1);
            for record in &mut held.records {
                record.seq = *n;
                *n += 1;
            }
        }
        counts.extend(next.into_iter().map(|(job, n)| (job, n - 1)));
        while self.bytes > limit {
            let Some(oldest) = self.batches.pop_front() else { break };
            self.bytes -= size(&oldest.records);
            self.dropped += oldest.records.len() as u64;
        }
        Ok(counts)
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
                instance_line: Some(seq),
            })
            .collect()
    }

    /// A batch being stored when the process ends is kept on disk too, first: had its write
    /// reached the store, the store ignores it the second time (it was lost from the spool,
    /// and the agent's copy, sent again later, was stored after newer lines).
    #[test]
    fn a_batch_being_stored_is_kept_on_disk_first() {
        let mut held = HeldLogs::default();
        held.hold("a", lines(1, 2, "first"), true, usize::MAX);
        held.hold("a", lines(3, 2, "second"), true, usize::MAX);
        let (_, taken, _) = held.take_oldest().expect("a batch");
        assert_eq!(taken.len(), 2);
        let mut restored = HeldLogs::default();
        let counts = restored.restore(&held.spool(), usize::MAX).expect("restore");
        assert_eq!(counts, vec![("a".to_string(), 4)]);
        let (_, records, numbered) = restored.take_oldest().expect("a batch");
        assert!(!numbered);
        let texts: Vec<(i64, &str)> = records.iter().map(|r| (r.seq, r.text.as_str())).collect();
        assert_eq!(texts, [(1, "first"), (2, "first")]);
        // Put back or stored, it is no longer in flight.
        held.put_back("a".into(), taken, true);
        assert_eq!(held.len(), 4);
        let spooled: Vec<SpooledBatch> = serde_json::from_slice(&held.spool()).expect("json");
        assert_eq!(spooled.iter().map(|b| b.lines.len()).sum::<usize>(), 4, "once each");
    }

    /// Batches come back oldest first, a failed one first again; past the bound the oldest go,
    /// counted, and what is held never exceeds it.
    #[test]
    fn held_lines_come_back_in_order_within_the_bound() {
        let mut held = HeldLogs::default();
        let line_size = size(&lines(1, 1, "0123456789"));
        let limit = 10 * line_size;
        held.hold("a", lines(1, 4, "0123456789"), true, limit);
        held.hold("b", lines(1, 4, "0123456789"), true, limit);
        assert_eq!((held.len(), held.dropped), (8, 0));
        // A third batch passes the bound: the oldest (job a's) goes.
        held.hold("a", lines(5, 4, "0123456789"), true, limit);
        assert_eq!((held.len(), held.dropped), (8, 4));
        assert!(held.bytes <= limit);

        let (job, batch, numbered) = held.take_oldest().expect("b");
        assert_eq!((job.as_str(), batch[0].seq), ("b", 1));
        held.put_back(job, batch, numbered);
        let order: Vec<(String, i64)> =
            std::iter::from_fn(|| held.take_oldest()).map(|(job, batch, _)| (job, batch[0].seq)).collect();
        assert_eq!(order, vec![("b".to_string(), 1), ("a".to_string(), 5)]);
        assert!(held.is_empty());
        assert_eq!(held.bytes, 0);

        // One batch larger than the bound is not held at all.
        held.hold("c", lines(1, 20, "0123456789"), true, limit);
        assert!(held.is_empty());
        assert_eq!(held.dropped, 24);
    }

    /// A job's unnumbered lines follow the store's last number and whatever of the job is held
    /// numbered; other jobs' lines are untouched; numbers past the job's bound are dropped, counted.
    #[test]
    fn unnumbered_lines_follow_the_store_and_what_is_held() {
        let mut held = HeldLogs::default();
        let limit = usize::MAX;
        held.hold("a", lines(8, 2, "x"), true, limit); // 8, 9: numbered, not stored yet
        held.hold("b", lines(1, 2, "x"), false, limit);
        held.hold("a", lines(1, 3, "x"), false, limit);
        held.hold("a", lines(4, 1, "x"), false, limit);
        let bytes = held.bytes;
        assert_eq!(held.number("a", 5, 11), 9, "after the held 9, not the stored 5");
        let batches: Vec<(String, Vec<i64>, bool)> = std::iter::from_fn(|| held.take_oldest())
            .map(|(job, batch, numbered)| (job, batch.iter().map(|r| r.seq).collect(), numbered))
            .collect();
        assert_eq!(
            batches,
            vec![
                ("a".to_string(), vec![8, 9], true),
                ("b".to_string(), vec![1, 2], false),
                ("a".to_string(), vec![10, 11], true), // 12 is past the bound
                ("a".to_string(), vec![], true),       // 13 too
            ]
        );
        assert_eq!(held.dropped, 2);
        assert_eq!(held.bytes, 0, "the dropped lines' bytes were released ({bytes} held before)");
    }

    /// After a failure the store is left alone for a while, then tried again.
    #[test]
    fn a_failed_store_is_not_asked_again_at_once() {
        let mut held = HeldLogs::default();
        let start = Instant::now();
        assert!(held.worth_trying(start));
        held.store_failed(start);
        assert!(!held.worth_trying(start + RETRY_AFTER / 2));
        assert!(held.worth_trying(start + RETRY_AFTER));
        held.store_answered();
        assert!(held.worth_trying(start));
    }

    /// What a process held comes back in the next, in order and unnumbered (counted from 1 per
    /// job), to follow whatever the store holds of its jobs by then.
    #[test]
    fn held_lines_outlive_the_process() {
        let mut held = HeldLogs::default();
        held.hold("a", lines(8, 2, "a-numbered"), true, usize::MAX);
        held.hold("b", lines(1, 1, "b-unnumbered"), false, usize::MAX);
        held.hold("a", lines(1, 3, "a-unnumbered"), false, usize::MAX);
        let spooled = held.spool();

        let mut next = HeldLogs::default();
        let mut counts = next.restore(&spooled, usize::MAX).expect("restore");
        counts.sort();
        assert_eq!(counts, vec![("a".to_string(), 5), ("b".to_string(), 1)]);
        assert_eq!(next.number("a", 20, i64::MAX), 20, "after the store's last: nothing of a is held numbered");
        let batches: Vec<(String, Vec<i64>, Vec<String>)> = std::iter::from_fn(|| next.take_oldest())
            .map(|(job, batch, _)| {
                (job, batch.iter().map(|r| r.seq).collect(), batch.into_iter().map(|r| r.text).collect())
            })
            .collect();
        assert_eq!(batches[0], ("a".to_string(), vec![21, 22], vec!["a-numbered".to_string(); 2]));
        assert_eq!(batches[1].1, vec![1], "b still unnumbered");
        assert_eq!(batches[2], ("a".to_string(), vec![23, 24, 25], vec!["a-unnumbered".to_string(); 3]));
        assert!(next.restore(b"not json", usize::MAX).is_err());
    }
}
