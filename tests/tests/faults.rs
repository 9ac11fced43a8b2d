//! Faults injected for real: the coordinator is killed (SIGKILL) at random moments while a tuning
//! job of a few hundred short trials runs on three agents. Nothing may be lost or run twice.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, example};

/// Each run appends its job name to `$RUNS` (one short O_APPEND write: atomic), works a moment,
/// and reports a score.
const PROGRAM: &str = r#"#!/bin/sh
echo "$TRAINING_JOB_NAME" >> "$RUNS"
sleep 0.3
echo "score=0.$$"
mkdir -p "$SM_MODEL_DIR"
"#;

/// A small deterministic generator (xorshift), so that a failing run can be repeated from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn killing_the_coordinator_at_random_moments_loses_no_trial_and_runs_none_twice() {
    const TRIALS: u64 = 200;
    let mut c = Coordinator::start();
    let program = c.dir.path().join("trial.sh");
    std::fs::write(&program, PROGRAM).expect("program");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let runs = c.dir.path().join("runs.log");
    let _agents: Vec<_> =
        (1..=3).map(|i| c.start_agent(&format!("host-{i}"), &["--advertise-vcpus", "8"], &[])).collect();

    let mut r: Value =
        serde_json::from_str(&std::fs::read_to_string(example("tuning-job.json")).expect("read")).expect("json");
    r["HyperParameterTuningJobName"] = json!("survives-crashes");
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Random");
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": TRIALS, "MaxParallelTrainingJobs": 12});
    config["TrainingJobEarlyStoppingType"] = json!("Off");
    let definition = &mut r["TrainingJobDefinition"];
    definition["AlgorithmSpecification"]["TrainingImage"] = json!(program.display().to_string());
    definition["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    definition["Environment"] = json!({"RUNS": runs.display().to_string()});
    let file = c.write("job.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("seed {seed}");
    let mut random = Random(seed);
    let started = Instant::now();
    let mut kills = 0;
    let status = |c: &Coordinator| c.json(&["tuning-jobs", "describe", "survives-crashes"]);
    loop {
        let pause = Duration::from_millis(300 + random.next() % 2_700);
        std::thread::sleep(pause);
        let now = status(&c);
        if now["HyperParameterTuningJobStatus"] != "InProgress" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(400), "seed {seed}: not done after 400 s: {now:#}");
        if kills < 8 {
            c.restart(trainyard_testkit::SIGKILL);
            kills += 1;
        }
    }
    let done = c.wait_json_for(Duration::from_secs(120), &["tuning-jobs", "describe", "survives-crashes"], |j| {
        j["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert!(kills >= 3, "seed {seed}: the job ended before the coordinator was killed three times");
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "seed {seed}: {done:#}");
    let counters = &done["TrainingJobStatusCounters"];
    assert_eq!(counters["Completed"], json!(TRIALS), "seed {seed}: {counters:#}");
    assert_eq!(counters["RetryableError"], json!(0), "seed {seed}: {counters:#}");
    assert_eq!(counters["NonRetryableError"], json!(0), "seed {seed}: {counters:#}");

    // Every trial ran exactly once: no trial lost, none started twice.
    let log = std::fs::read_to_string(&runs).expect("runs");
    let mut started_runs: Vec<&str> = log.lines().collect();
    started_runs.sort();
    let total = started_runs.len();
    started_runs.dedup();
    assert_eq!(started_runs.len() as u64, TRIALS, "seed {seed}: distinct trials that ran");
    assert_eq!(total as u64, TRIALS, "seed {seed}: some trial ran twice");

    // No process of a trial is left on any host.
    let leftovers = std::process::Command::new("pgrep").args(["-f", &program.display().to_string()]).output();
    let left = leftovers.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert!(left.is_empty(), "seed {seed}: trial processes left running: {left}");
    println!("seed {seed}: {kills} coordinator kills, {TRIALS} trials, {:.0} s", started.elapsed().as_secs_f64());
}
