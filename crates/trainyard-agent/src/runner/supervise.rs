//! Supervising a launched instance, whatever runs it: its output becomes log batches (cut at
//! 64 KiB a line, a bounded backlog) and metric samples, `MaxRuntimeInSeconds` and stop requests
//! become SIGTERM, a grace period and SIGKILL, fencing kills at once, and so does storing more
//! than `VolumeSizeInGB` (measured every second and at the end); the instance ends when its
//! program has exited, everything it started is killed and its output is read to the end.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use trainyard_proto::pb::{self, InstanceState};

use super::shared_inputs::FileId;
use super::{
    Control, FENCED, InstanceSpec, Launched, Outcome, Report, Reporter, Settings, StopReason, WritableLayer, now_millis,
};
use crate::confined::Confined;

/// Stderr lines kept for a FailureReason when the job writes no `output/failure`.
const STDERR_TAIL: usize = 10;
const LOG_BATCH: usize = 200;
const LOG_BATCH_BYTES: usize = 1024 * 1024;
/// Longest log line kept; longer ones are cut (the coordinator stores every line).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines read from a job but not yet handled, at most (with MAX_LINE_BYTES: 64 MiB at worst).
const LINE_BACKLOG: usize = 1024;

/// Compiled patterns kept at most; past it the cache starts again (a pattern's text is at most
/// 500 characters, each job has at most 40).
const MAX_METRIC_PATTERNS: usize = 64;

/// `MetricDefinitions` patterns compiled once per agent, by their text: the trials of a tuning job
/// share theirs, and compiling them anew for each instance (the regex crate builds automata) was
/// a sixteenth of the agent's CPU per trial. A `Regex` shares its matching state between clones,
/// safely across tasks.
#[derive(Default)]
pub struct MetricPatterns(std::sync::Mutex<std::collections::HashMap<String, Option<Regex>>>);

impl MetricPatterns {
    /// The compiled pattern; None if it does not compile (the coordinator refuses such a job,
    /// so only an older coordinator's would get here: its metric is not collected).
    pub fn compiled(&self, pattern: &str) -> Option<Regex> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(compiled) = kept.get(pattern) {
            return compiled.clone();
        }
        let compiled = Regex::new(pattern).ok();
        if kept.len() >= MAX_METRIC_PATTERNS {
            kept.clear();
        }
        kept.insert(pattern.to_string(), compiled.clone());
        compiled
    }
}

/// How a FailureReason starts when an instance stored more than its `VolumeSizeInGB`: such an
/// instance's outputs are not uploaded and its work dir is not kept.
pub(super) const VOLUME_FULL: &str = "ClientError: the instance's volume is full";
/// How often an instance's work dir is measured against its volume at most; a measurement that
/// takes long (a dataset of many files) is spaced out to 20 times its own length, up to a minute,
/// so the agent spends at most a twentieth of a core per instance on it.
const VOLUME_CHECK_EVERY: Duration = Duration::from_secs(1);
const VOLUME_CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// How soon a volume filling fast is measured again at the soonest.
const VOLUME_CHECK_SOONEST: Duration = Duration::from_millis(100);

/// An instance's volume: what may be stored, and where.
#[derive(Clone)]
struct Volume {
    dir: std::path::PathBuf,
    /// A container's writable root file system, besides the work dir.
    layer: Option<WritableLayer>,
    /// The input cache's files linked into the work dir: not charged.
    shared: Arc<HashSet<FileId>>,
    limit: u64,
    gb: u64,
}

/// What a measurement of a volume found.
enum Measured {
    /// Within its limit, holding this many bytes.
    Within(u64),
    /// Over its limit (or not measurable, as nested too deep): the FailureReason.
    Over(String),
    /// The measurement failed (an I/O error): tried again later.
    Failed(String),
}

impl Volume {
    /// Measures what the instance stores in its work dir (its whole volume, as on SageMaker:
    /// inputs staged as private copies, model, checkpoints, output, its /tmp) and in its writable
    /// layer, the walk on a blocking thread.
    async fn measure(&self) -> Measured {
        let outside = match &self.layer {
            Some(layer) => layer.bytes().await.unwrap_or_else(|e| {
                tracing::warn!(dir = %self.dir.display(), error = %e, "measuring a container's writable layer failed");
                0
            }),
            None => 0,
        };
        let (at, room, limit, gb) = (self.dir.clone(), self.limit.saturating_sub(outside), self.limit, self.gb);
        let shared = self.shared.clone();
        let measured =
            tokio::task::spawn_blocking(move || Confined::open(&at)?.bytes_beneath(Path::new(""), room, &shared)).await;
        match measured {
            Ok(Ok(bytes)) if bytes.saturating_add(outside) > limit => Measured::Over(format!(
                "{VOLUME_FULL}: it stored more than its VolumeSizeInGB ({gb} GB, {limit} bytes; at least {} found), so it was stopped; nothing was uploaded. Ask for a larger VolumeSizeInGB",
                bytes.saturating_add(outside)
            )),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Measured::Over(format!(
                "{VOLUME_FULL}: it could not be measured ({e}), so it was stopped; nothing was uploaded"
            )),
            Ok(Ok(bytes)) => Measured::Within(bytes.saturating_add(outside)),
            Ok(Err(e)) => Measured::Failed(e.to_string()),
            Err(e) => Measured::Failed(e.to_string()),
        }
    }

    /// Measures the volume until it is over: then the reason goes to the receiver. Dropping the
    /// handle ends the watch.
    fn watch(&self) -> (AbortOnDrop, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(1);
        let volume = self.clone();
        let task = tokio::spawn(async move {
            let mut pause = VOLUME_CHECK_EVERY;
            let mut last: Option<(std::time::Instant, u64)> = None;
            loop {
                tokio::time::sleep(pause).await;
                let started = std::time::Instant::now();
                match volume.measure().await {
                    Measured::Within(used) => {
                        let growth = last.map(|(at, before)| (used.saturating_sub(before), started - at));
                        pause = next_measurement(started.elapsed(), used, volume.limit, growth);
                        last = Some((started, used));
                    }
                    Measured::Failed(e) => {
                        tracing::warn!(dir = %volume.dir.display(), error = %e, "measuring an instance's volume failed; trying again");
                        pause = VOLUME_CHECK_AT_MOST_EVERY.min(pause * 2);
                    }
                    Measured::Over(reason) => {
                        let _ = tx.send(reason).await;
                        return;
                    }
                }
            }
        });
        (AbortOnDrop(task), rx)
    }
}

/// When to measure a volume next, after a measurement that took `took` and found `used` of
/// `limit` bytes, `growth` (bytes, over how long) more than the one before: spaced to 20 times
/// what a measurement takes, from every second to every minute, so that a large work dir is not
/// walked all the time; but sooner when, growing as fast as it just did, it would pass its limit
/// before then: at a quarter of the time it would take, so that a job filling its volume fast
/// overshoots it by a fraction of a second's writing. Never sooner than 100 ms, nor than four
/// times what a measurement takes.
fn next_measurement(took: Duration, used: u64, limit: u64, growth: Option<(u64, Duration)>) -> Duration {
    let paced = (took * 20).clamp(VOLUME_CHECK_EVERY, VOLUME_CHECK_AT_MOST_EVERY);
    let Some((grew, over)) = growth.filter(|(grew, over)| *grew > 0 && !over.is_zero()) else { return paced };
    let per_second = grew as f64 / over.as_secs_f64();
    let until_full = Duration::from_secs_f64((limit.saturating_sub(used) as f64 / per_second).min(86_400.0));
    let soonest = VOLUME_CHECK_SOONEST.max(took * 4);
    (until_full / 4).clamp(soonest, paced.max(soonest))
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the launched instance to its end.
pub(super) async fn supervise<C: Control>(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &Path,
    launched: Launched<C>,
    reporter: &Reporter<'_>,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> Outcome {
    let metrics: Vec<(String, Regex)> = spec
        .request
        .algorithm_specification
        .as_ref()
        .and_then(|a| a.metric_definitions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| Some((d.name?, settings.metric_patterns.compiled(&d.regex?)?)))
        .collect();
    let Launched { stdout, stderr, exited: mut exited_rx, control, shared } = launched;
    reporter.update(InstanceState::Training, "Training in progress", Vec::new());

    // Lines from both streams, in arrival order. Bounded: a job that prints faster than the agent
    // matches metrics waits on its own stdout, as it would on a slow terminal.
    let (line_tx, mut lines) = mpsc::channel::<(&'static str, String)>(LINE_BACKLOG);
    for (name, stream) in [("stdout", stdout), ("stderr", stderr)] {
        let Some(stream) = stream else { continue };
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            while let Ok(Some(line)) = next_line(&mut reader, MAX_LINE_BYTES).await {
                if tx.send((name, line)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(line_tx);

    let max_runtime = spec
        .request
        .stopping_condition
        .as_ref()
        .and_then(|s| s.max_runtime_in_seconds)
        .map_or(trainyard_model::jobs::DEFAULT_MAX_RUNTIME_SECONDS as u64, |s| s.max(1) as u64);
    let deadline = tokio::time::sleep(Duration::from_secs(max_runtime));
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(Duration::from_millis(250));
    let volume = super::volume_bytes(&spec.request).map(|limit| Volume {
        dir: dir.to_path_buf(),
        layer: control.writable_layer(),
        shared: Arc::new(shared),
        limit,
        gb: limit >> 30,
    });
    let (volume_watch, mut volume_full) = match volume.as_ref().map(Volume::watch) {
        Some((watch, rx)) => (Some(watch), Some(rx)),
        None => (None, None),
    };
    let mut volume_failure: Option<String> = None;
    // The job can write to output/: the log is appended without following links.
    let mut log_file = Confined::open(dir).and_then(|d| d.append(Path::new("output/training.log"))).ok();

    let mut batch: Vec<pb::LogLine> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut next_line = super::first_number_of_attempt(spec.attempt);
    let mut samples: Vec<pb::MetricSample> = Vec::new();
    let mut stderr_tail: VecDeque<String> = VecDeque::new();
    let mut stopping: Option<InstanceState> = None;
    // Fencing may come during a graceful stop too, and then kills at once.
    let (mut fenced, mut stop_closed) = (false, false);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut streams_open = true;
    let mut exited: Option<std::io::Result<super::Exit>> = None;
    let mut exited_at: Option<std::time::Instant> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            line = lines.recv(), if streams_open => match line {
                Some((stream, text)) => {
                    let at = now_millis();
                    for (name, regex) in &metrics {
                        if let Some(value) = regex.captures(&text).and_then(|c| c.get(1)).and_then(|m| m.as_str().trim().parse::<f64>().ok()).filter(|v| v.is_finite()) {
                            samples.push(pb::MetricSample { name: name.clone(), value, timestamp_millis: at });
                        }
                    }
                    if stream == "stderr" {
                        stderr_tail.push_back(text.clone());
                        if stderr_tail.len() > STDERR_TAIL { stderr_tail.pop_front(); }
                    }
                    if let Some(f) = log_file.as_mut() {
                        use std::io::Write;
                        let _ = writeln!(f, "{text}");
                    }
                    batch_bytes += text.len();
                    batch.push(pb::LogLine { stream: stream.into(), text, timestamp_millis: at });
                    // Batches stay far below the coordinator's 4 MiB message limit, even of long lines.
                    if batch.len() >= LOG_BATCH || batch_bytes >= LOG_BATCH_BYTES {
                        send_logs(spec, reporter, &mut batch, &mut next_line);
                        batch_bytes = 0;
                    }
                }
                None => streams_open = false,
            },
            _ = flush.tick() => {
                send_logs(spec, reporter, &mut batch, &mut next_line);
                batch_bytes = 0;
                if !samples.is_empty() {
                    reporter.update(stopping.map_or(InstanceState::Training, |_| InstanceState::Stopping), "Training in progress", std::mem::take(&mut samples));
                }
                if let Some(at) = kill_at && tokio::time::Instant::now() >= at {
                    control.signal(libc::SIGKILL);
                    kill_at = None;
                }
                // Without a cgroup an escaped child may hold the streams open: stop reading them.
                if exited.is_some() && streams_open && drain_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    streams_open = false;
                }
            }
            // The program has ended: so has the instance. What it started is killed (a cgroup holds
            // all of it), which closes the streams; their last lines are still read.
            status = &mut exited_rx, if exited.is_none() => {
                exited = Some(status.unwrap_or_else(|_| Err(std::io::Error::other("the runtime lost the program"))));
                exited_at = Some(std::time::Instant::now());
                control.kill_all().await;
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            // Over its volume: killed at once (on SageMaker its writes would fail instead).
            reason = async { volume_full.as_mut()?.recv().await }, if volume_full.is_some() && volume_failure.is_none() && exited.is_none() => {
                match reason {
                    Some(reason) => {
                        reporter.update(InstanceState::Stopping, "The instance's volume is full: stopping", Vec::new());
                        volume_failure = Some(reason);
                        stopping = Some(InstanceState::Failed);
                        control.signal(libc::SIGKILL);
                        kill_at = None;
                    }
                    None => volume_full = None,
                }
            }
            _ = &mut deadline, if stopping.is_none() && exited.is_none() => {
                stopping = Some(InstanceState::MaxRuntimeExceeded);
                reporter.update(InstanceState::Stopping, "MaxRuntimeInSeconds exceeded: stopping", Vec::new());
                control.signal(libc::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + settings.stop_grace);
            }
            changed = stop.changed(), if !fenced && !stop_closed && exited.is_none() => {
                stop_closed = changed.is_err();
                if *stop.borrow() == Some(StopReason::Fence) {
                    fenced = true;
                    stopping = Some(InstanceState::Failed);
                    control.signal(libc::SIGKILL);
                    kill_at = None;
                } else if stopping.is_none() && (changed.is_err() || stop.borrow().is_some()) {
                    stopping = Some(InstanceState::Stopped);
                    reporter.update(InstanceState::Stopping, "Stopping the training job", Vec::new());
                    control.signal(libc::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + settings.stop_grace);
                }
            }
        }
        if !streams_open && let Some(status) = exited.take() {
            break status;
        }
    };
    // Nothing of the instance outlives it.
    let left_nothing = control.kill_all().await;
    // Measured once more at the end (before its writable layer goes), as the uploads would pack
    // what it left: an instance that fills its volume in the second before it exits (a sparse
    // file of a terabyte) must not have the agent pack it.
    drop(volume_watch);
    if volume_failure.is_none()
        && let Some(volume) = &volume
        && let Measured::Over(reason) = volume.measure().await
    {
        volume_failure = Some(reason);
    }
    let oom_kills = control.oom_kills();
    drop(control); // its cgroup removed (empty), its uid free
    if let Some(at) = exited_at {
        settings.metrics.teardown_seconds.observe(at.elapsed().as_secs_f64());
    }
    send_logs(spec, reporter, &mut batch, &mut next_line);
    if !samples.is_empty() {
        reporter.update(InstanceState::Training, "Training in progress", samples);
    }
    let exit_code = status.as_ref().ok().and_then(|s| s.code);
    let (state, failure) = 'ended: {
        if fenced {
            break 'ended (InstanceState::Failed, Some(FENCED.to_string()));
        }
        if let Some(reason) = volume_failure {
            break 'ended (InstanceState::Failed, Some(reason));
        }
        if let Some(state) = stopping {
            break 'ended (state, None);
        }
        match status {
            Ok(s) if s.code == Some(0) => (InstanceState::Completed, None),
            Ok(_) if oom_kills > 0 => {
                let limit =
                    spec.request.resource_config.as_ref().and_then(|r| r.instance_type.clone()).unwrap_or_default();
                let reason = format!(
                    "OutOfMemoryError: the instance used all of its {} MiB ({limit}) and the kernel killed {oom_kills} of its processes; choose an instance type with more memory",
                    spec.memory_mib
                );
                (InstanceState::Failed, Some(reason))
            }
            Ok(s) => {
                // Written by the job: read without following links, at most 4 KiB of it.
                let written = Confined::open(dir)
                    .and_then(|d| d.read_prefix(Path::new("output/failure"), 4096))
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default();
                let reason = if written.trim().is_empty() {
                    let tail: Vec<String> = stderr_tail.into_iter().collect();
                    format!("AlgorithmError: {}; last stderr lines: {}", s.text, tail.join("\n"))
                } else {
                    written.chars().take(1024).collect()
                };
                (InstanceState::Failed, Some(reason))
            }
            Err(e) => (InstanceState::Failed, Some(format!("waiting for the job: {e}"))),
        }
    };
    Outcome { state, failure, exit_code, left_nothing }
}

/// The next line of a job's output, at most `limit` bytes: a longer one is cut there and the rest
/// of it skipped (a job that prints without newlines must not grow the agent without bound). Not
/// UTF-8 is replaced, not refused. `None` at the end of the stream.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            if line.is_empty() && skipped == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(i) => (&buffer[..i], Some(i + 1)),
            None => (buffer, None),
        };
        let room = limit.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        skipped += chunk.len().saturating_sub(room);
        let consumed = done.unwrap_or(buffer.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if skipped > 0 {
        text.push_str(&format!(" [line cut at {limit} bytes; {skipped} more bytes dropped]"));
    }
    Ok(Some(text))
}

/// Sends the batch of lines numbered from `next_line` on (and moves that on past them).
fn send_logs(spec: &InstanceSpec, reporter: &Reporter<'_>, batch: &mut Vec<pb::LogLine>, next_line: &mut u64) {
    if batch.is_empty() {
        return;
    }
    let first_line = *next_line;
    *next_line += batch.len() as u64;
    let _ = reporter.tx.send(Report::Logs(pb::LogBatch {
        training_job_name: spec.job.clone(),
        instance: spec.instance,
        lines: std::mem::take(batch),
        first_line,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_filling_fast_is_measured_sooner() {
        const GB: u64 = 1 << 30;
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // Not growing, or no measurement before: every second, or 20 times a long walk.
        assert_eq!(next_measurement(ms(2), GB / 2, GB, None), s(1));
        assert_eq!(next_measurement(ms(2), GB / 2, GB, Some((0, s(1)))), s(1));
        assert_eq!(next_measurement(ms(300), GB / 2, GB, None), s(6));
        assert_eq!(next_measurement(s(5), GB / 2, GB, None), s(60));
        // Growing slowly: full in hours, measured as paced.
        assert_eq!(next_measurement(ms(2), GB / 2, GB, Some((1 << 20, s(1)))), s(1));
        // 400 MB a second with 200 MB to go: full in half a second, measured after an eighth.
        assert_eq!(next_measurement(ms(2), 800_000_000, 1_000_000_000, Some((400_000_000, s(1)))), ms(125));
        // Nearly full: not sooner than 100 ms, nor than four times the walk.
        assert_eq!(next_measurement(ms(2), GB - 1, GB, Some((GB / 2, s(1)))), ms(100));
        assert_eq!(next_measurement(ms(300), GB - 1, GB, Some((GB / 2, s(1)))), ms(1200));
        // Past the limit by the time it is measured (a race with the writer): the soonest.
        assert_eq!(next_measurement(ms(2), GB + 1, GB, Some((GB, s(1)))), ms(100));
    }

    async fn lines_of(input: &[u8], limit: usize) -> Vec<String> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut reader, limit).await.expect("read") {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_of_them_skipped() {
        let mut input = b"short\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 50));
        input.extend(b"\nafter\nno newline at the end");
        let lines = lines_of(&input, 21).await;
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1], format!("{} [line cut at 21 bytes; 29 more bytes dropped]", "x".repeat(21)));
        assert_eq!(lines[2..], ["after".to_string(), "no newline at the end".to_string()]);
    }

    #[test]
    fn metric_patterns_are_compiled_once_and_kept_within_the_bound() {
        let patterns = MetricPatterns::default();
        let first = patterns.compiled("loss=([0-9.]+)").expect("compiles");
        let again = patterns.compiled("loss=([0-9.]+)").expect("kept");
        assert_eq!(again.as_str(), first.as_str());
        assert_eq!(again.captures("epoch 3 loss=0.25").and_then(|c| c.get(1)).map(|m| m.as_str()), Some("0.25"));
        assert!(patterns.compiled("loss=([0-9.]+").is_none(), "does not compile");
        assert!(patterns.compiled("loss=([0-9.]+").is_none(), "and is remembered so");
        for i in 0..3 * MAX_METRIC_PATTERNS {
            assert!(patterns.compiled(&format!("m{i}=(\\d+)")).is_some());
            assert!(patterns.0.lock().expect("lock").len() <= MAX_METRIC_PATTERNS);
        }
        let kept = patterns.compiled("m5=(\\d+)").expect("compiled again after the cache started over");
        assert_eq!(kept.captures("m5=42").and_then(|c| c.get(1)).map(|m| m.as_str()), Some("42"));
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_refused() {
        assert_eq!(lines_of(b"caf\xe9\n", 100).await, vec!["caf\u{fffd}".to_string()]);
        assert!(lines_of(b"", 100).await.is_empty());
    }
}
