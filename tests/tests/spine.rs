//! The spine, end to end: the real coordinator binary on SQLite and on PostgreSQL, driven through
//! the real `trainyard` CLI. No agents yet: jobs wait as Pending, and stops end them.

use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, example, example_json};
use trainyard_testkit::PgServer;

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_json(dir: &std::path::Path, name: &str, value: &Value) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec_pretty(value).expect("json")).expect("write");
    file
}

/// The whole user journey on one coordinator.
fn round_trip(c: &Coordinator) {
    let tuning = example("tuning-job.json");
    // The health service answers (no token needed).
    let health = c.cli_as("", &["health"]);
    health.assert_success();
    assert_eq!(health.stdout().trim(), "SERVING");

    // Create prints the ARN; the name can be overridden.
    let created = c.cli(&["tuning-jobs", "create", "--file", path(&tuning), "--name", "round-trip"]);
    created.assert_success();
    assert_eq!(created.stdout().trim(), "arn:aws:sagemaker:local:000000000000:hyper-parameter-tuning-job/round-trip");

    // Describe returns SageMaker's shape with the request as sent.
    let described = c.json(&["tuning-jobs", "describe", "round-trip"]);
    assert_eq!(described["HyperParameterTuningJobStatus"], "InProgress");
    // Two trials (MaxParallelTrainingJobs) are launched and wait for an agent.
    let described =
        c.wait_json(&["tuning-jobs", "describe", "round-trip"], |d| d["TrainingJobStatusCounters"]["InProgress"] == 2);
    let sent: Value = serde_json::from_str(&std::fs::read_to_string(&tuning).expect("read")).expect("json");
    assert_eq!(described["HyperParameterTuningJobConfig"], sent["HyperParameterTuningJobConfig"]);
    assert_eq!(
        described["TrainingJobDefinition"], sent["TrainingJobDefinition"],
        "every field of the definition is stored"
    );

    // A taken name is AlreadyExists (exit 5), an unknown one NotFound (exit 4).
    let again = c.cli(&["tuning-jobs", "create", "--file", path(&tuning), "--name", "round-trip"]);
    assert_eq!(again.code(), 5, "{}", again.stderr());
    assert!(again.stderr().contains("already exists"), "{}", again.stderr());
    let missing = c.cli(&["tuning-jobs", "describe", "no-such-job"]);
    assert_eq!(missing.code(), 4, "{}", missing.stderr());

    // The table lists it; JSON lists it with its counters and strategy.
    let table = c.cli(&["tuning-jobs", "list"]);
    table.assert_success();
    assert!(table.stdout().contains("round-trip") && table.stdout().contains("Random"), "{}", table.stdout());
    let listed = c.json(&["tuning-jobs", "list", "--name-contains", "ROUND"]);
    assert_eq!(listed["HyperParameterTuningJobSummaries"][0]["HyperParameterTuningJobName"], "round-trip");
    assert_eq!(listed["HyperParameterTuningJobSummaries"][0]["Strategy"], "Random");
    let trials = c.json(&["tuning-jobs", "trials", "round-trip"]);
    let trials = trials["TrainingJobSummaries"].as_array().expect("trials").clone();
    assert_eq!(trials.len(), 2);
    assert!(trials.iter().all(|t| t["TrainingJobStatus"] == "InProgress" && t["ObjectiveStatus"] == "Pending"));
    assert!(trials[0]["TunedHyperParameters"]["learning_rate"].is_string());

    // Stop: Stopping, then Stopped (nothing runs yet); stopping again is a validation error.
    c.cli(&["tuning-jobs", "stop", "round-trip"]).assert_success();
    let stopped =
        c.wait_json(&["tuning-jobs", "describe", "round-trip"], |d| d["HyperParameterTuningJobStatus"] == "Stopped");
    assert!(stopped["HyperParameterTuningEndTime"].is_number());
    assert_eq!(stopped["TrainingJobStatusCounters"]["Stopped"], 2, "its trials were stopped too");
    let again = c.cli(&["tuning-jobs", "stop", "round-trip"]);
    assert_eq!(again.code(), 3, "{}", again.stderr());
    assert!(again.stderr().contains("has already ended (Stopped)"), "{}", again.stderr());

    // Training jobs: created, waiting for an agent, stopped.
    let training = example("training-job.json");
    c.cli(&["training-jobs", "create", "-f", path(&training)]).assert_success();
    let job =
        c.wait_json(&["training-jobs", "describe", "blobs-logreg-baseline"], |d| d["SecondaryStatus"] == "Pending");
    assert_eq!(job["TrainingJobStatus"], "InProgress");
    assert_eq!(job["HyperParameters"]["optimizer"], "momentum");
    assert_eq!(job["SecondaryStatusTransitions"][0]["Status"], "Starting");
    let waiting = job["SecondaryStatusTransitions"][1]["StatusMessage"].as_str().unwrap_or_default();
    assert!(waiting.contains("position 1 of 1 in the queue"), "a queued job says where it stands: {waiting}");
    // No agent, so no room: it was stored waiting in its create, not at a later tick.
    assert_eq!(job["SecondaryStatusTransitions"][1]["StartTime"], job["CreationTime"], "{job:#}");
    c.cli(&["training-jobs", "stop", "blobs-logreg-baseline"]).assert_success();
    let job =
        c.wait_json(&["training-jobs", "describe", "blobs-logreg-baseline"], |d| d["TrainingJobStatus"] == "Stopped");
    let statuses: Vec<&str> = job["SecondaryStatusTransitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["Status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(statuses, ["Starting", "Pending", "Stopping", "Stopped"]);
}

#[test]
fn the_cli_round_trip_works_on_sqlite() {
    let c = Coordinator::start();
    round_trip(&c);
    assert!(c.data_dir().join("trainyard.db").exists(), "the SQLite file is created in the data directory");
}

#[test]
fn the_cli_round_trip_works_on_postgres() {
    let pg = PgServer::start();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    round_trip(&c);
}

#[test]
fn invalid_requests_list_every_violation_and_store_nothing() {
    let c = Coordinator::start();
    let mut request: Value = example_json("tuning-job.json");
    request["HyperParameterTuningJobName"] = json!("bad_name");
    request["HyperParameterTuningJobConfig"]["Strategy"] = json!("Grid");
    request["TrainingJobDefinition"]["InputDataConfig"][1]["ChannelName"] = json!("no spaces");
    request["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!("ftp://x/y");
    request["TrainingJobDefinition"]["StaticHyperParameters"]["batch_size"] = json!("1".repeat(300));
    request["TrainingJobDefinition"]["ResourceConfig"]["InstanceType"] = json!("ml.nope.large");
    let file = write_json(c.dir.path(), "bad.json", &request);

    let out = c.cli(&["tuning-jobs", "create", "--file", path(&file)]);
    assert_eq!(out.code(), 3, "stdout: {}\nstderr: {}", out.stdout(), out.stderr());
    let err = out.stderr();
    for expected in [
        "HyperParameterTuningJobName: value 'bad_name' must satisfy regular expression pattern",
        "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0]: the Grid strategy accepts categorical ranges only",
        "TrainingJobDefinition.InputDataConfig[1].ChannelName: value 'no spaces' must satisfy regular expression pattern",
        "TrainingJobDefinition.InputDataConfig[0].DataSource.S3DataSource.S3Uri: value 'ftp://x/y'",
        "TrainingJobDefinition.StaticHyperParameters['batch_size']: must have length less than or equal to 256 (got 300)",
        "TrainingJobDefinition.ResourceConfig.InstanceType: value 'ml.nope.large' is not an instance type",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // Nothing was stored.
    let listed = c.json(&["tuning-jobs", "list"]);
    assert_eq!(listed["HyperParameterTuningJobSummaries"], json!([]));

    // An oversized request (a 5 MiB environment value) is refused whole, with the limit named.
    let mut huge: Value = example_json("training-job.json");
    huge["TrainingJobName"] = json!("huge");
    huge["Environment"] = json!({"BLOB": "x".repeat(5 * 1024 * 1024)});
    let file = write_json(c.dir.path(), "huge.json", &huge);
    let out = c.cli(&["training-jobs", "create", "--file", path(&file)]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("message length too large"), "{}", out.stderr());
    assert_eq!(c.cli(&["training-jobs", "describe", "huge"]).code(), 4, "nothing of it was stored");

    // A file that is not a request at all is refused before it reaches the coordinator.
    let typo = write_json(c.dir.path(), "typo.json", &json!({"HyperParameterTuningJobNam": "x"}));
    let out = c.cli(&["tuning-jobs", "create", "--file", path(&typo)]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("unknown field `HyperParameterTuningJobNam`"), "{}", out.stderr());

    // An unreachable coordinator is its own exit code.
    let out = std::process::Command::new(trainyard_testkit::binary("trainyard"))
        .args(["--coordinator", "127.0.0.1:1", "--insecure", "tuning-jobs", "list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn list_pages_with_next_token_and_all() {
    let c = Coordinator::start();
    let training = example("training-job.json");
    for i in 0..13 {
        c.cli(&["training-jobs", "create", "-f", path(&training), "--name", &format!("page-{i:02}")]).assert_success();
    }
    let first = c.json(&["training-jobs", "list", "--sort-by", "Name", "--max-results", "5"]);
    let names: Vec<&str> = first["TrainingJobSummaries"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["TrainingJobName"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["page-00", "page-01", "page-02", "page-03", "page-04"]);
    let token = first["NextToken"].as_str().expect("a next token");
    let second = c.json(&["training-jobs", "list", "--sort-by", "Name", "--max-results", "5", "--next-token", token]);
    assert_eq!(second["TrainingJobSummaries"][0]["TrainingJobName"], "page-05");
    // A token used with other filters is refused.
    let misuse = c.cli(&["training-jobs", "list", "--sort-by", "CreationTime", "--next-token", token]);
    assert_eq!(misuse.code(), 3, "{}", misuse.stderr());
    let all = c.json(&["training-jobs", "list", "--max-results", "4", "--all"]);
    assert_eq!(all["TrainingJobSummaries"].as_array().map(Vec::len), Some(13));
    assert!(all.get("NextToken").is_none());
}

#[test]
fn jobs_survive_restarts_and_a_stop_interrupted_by_a_crash_completes() {
    let mut c = Coordinator::start();
    let tuning = example("tuning-job.json");
    c.cli(&["tuning-jobs", "create", "--file", path(&tuning), "--name", "survivor"]).assert_success();

    // Graceful: SIGTERM drains and exits 0.
    let status = c.restart(trainyard_testkit::SIGTERM).expect("the coordinator exits on SIGTERM");
    assert!(status.success(), "SIGTERM exit status {status}");
    assert_eq!(c.json(&["tuning-jobs", "describe", "survivor"])["HyperParameterTuningJobStatus"], "InProgress");

    // A crash (SIGKILL) right after a stop was accepted: the stop is finished at the next start.
    // The stop is written to the database directly, as the coordinator writes it before acting.
    let db = format!("sqlite://{}", c.data_dir().join("trainyard.db").display());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    c.daemon.signal(trainyard_testkit::SIGKILL);
    c.daemon.wait_exit(Duration::from_secs(10)).expect("killed");
    runtime.block_on(async {
        let store = trainyard_store::connect(&db).await.expect("open the coordinator's database");
        let mut job = store.get_tuning_job("survivor").await.expect("read").expect("stored");
        job.value.request_stop(trainyard_model::Timestamp::from_millis(1)).expect("stop");
        store.update_tuning_job(&job.value, job.version).await.expect("write");
    });
    c.restart(trainyard_testkit::SIGKILL);
    let job =
        c.wait_json(&["tuning-jobs", "describe", "survivor"], |d| d["HyperParameterTuningJobStatus"] == "Stopped");
    assert_eq!(job["HyperParameterTuningJobName"], "survivor");
    assert!(c.daemon.log().contains("reconciling unfinished jobs"), "{}", c.daemon.log());
}
