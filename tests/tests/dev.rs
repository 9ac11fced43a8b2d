//! `trainyard dev` as a newcomer runs it: from any directory, with the example request copied
//! anywhere, the example tuning job runs to the end at the parallelism it asks for.

use std::process::Command;

use serde_json::{Value, json};
use trainyard_e2e::example_json;
use trainyard_testkit::{binary, free_port};

#[test]
fn trainyard_dev_runs_the_example_from_any_directory_at_the_parallelism_asked_for() {
    // Outside /tmp (instances see a /tmp of their own) and outside the repository: nothing
    // relative to the repository root resolves from here or from the request's directory.
    let home = tempfile::Builder::new().prefix("trainyard-e2e-dev-").tempdir_in("/opt").expect("dir");
    std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut request: Value = example_json("tuning-job.json");
    request["HyperParameterTuningJobName"] = json!("from-anywhere");
    request["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 4});
    std::fs::write(home.path().join("job.json"), request.to_string()).expect("write");

    // Four ml.m5.large (8 GiB each) at once on a machine that may have less: dev offers 64 GiB.
    let out = Command::new(binary("trainyard"))
        .current_dir(home.path())
        .args(["--output", "json", "dev", "--data-dir", "data", "--port", &free_port().to_string()])
        .args(["--run", "job.json"])
        .output()
        .expect("trainyard dev");
    let log = std::fs::read_to_string(home.path().join("data/logs/coordinator.log")).unwrap_or_default();
    let agent_log = std::fs::read_to_string(home.path().join("data/logs/agent.log")).unwrap_or_default();
    // What a failure shows, kept short enough to survive a truncated CI log: how each trial and
    // instance ended, and every warning or error of both daemons.
    let logs: Vec<&str> = log
        .lines()
        .chain(agent_log.lines())
        .filter(|l| l.contains(" ended") || l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let logs = logs.join("\n");
    assert!(
        out.status.success(),
        "{}\n{}\n{logs}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let described: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let counters = &described["TrainingJobStatusCounters"];
    assert_eq!(described["HyperParameterTuningJobStatus"], "Completed", "{counters}\n{logs}");
    assert_eq!(counters["Completed"], 4, "{counters}\n{logs}");
    // All four were placed before the first one ended.
    let lines: Vec<&str> = log.lines().collect();
    let first_end = lines.iter().position(|l| l.contains("training job ended")).expect("an end");
    let placed_before = lines[..first_end].iter().filter(|l| l.contains(" placed ")).count();
    assert_eq!(placed_before, 4, "{log}");
    // The built-in examples were used: the data and the trainer, written under the data dir.
    assert!(home.path().join("data/examples/trainer/train.py").is_file());
}
