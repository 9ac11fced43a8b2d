//! Agents run the jobs, end to end: the real coordinator, real agents (one with a fake NVML library
//! of two GPUs, loaded through nvml-wrapper), real training processes, driven through the CLI.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, TEST_TRAINER, example_json, on_both_backends};
use trainyard_testkit::nvml;

/// The test trainer, written once per coordinator.
fn trainer(c: &Coordinator) -> String {
    c.install_program("trainer.py", TEST_TRAINER)
}

fn tuning_request(c: &Coordinator, name: &str, instance_type: &str, trials: u32, parallel: u32) -> Value {
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!(name);
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": trials, "MaxParallelTrainingJobs": parallel});
    config["ParameterRanges"] = json!({
        "ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}],
        "CategoricalParameterRanges": [{"Name": "sleep", "Values": ["0.6", "0.8"]}]
    });
    let def = &mut r["TrainingJobDefinition"];
    def["AlgorithmSpecification"]["TrainingImage"] = json!(trainer(c));
    def["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    def["StaticHyperParameters"] = json!({"mode": "ok"});
    def["ResourceConfig"]["InstanceType"] = json!(instance_type);
    r
}

fn training_request(c: &Coordinator, name: &str, hyperparameters: Value, max_runtime: u32) -> Value {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(trainer(c));
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    r["HyperParameters"] = hyperparameters;
    r["StoppingCondition"] = json!({"MaxRuntimeInSeconds": max_runtime});
    r
}

fn submit(c: &Coordinator, kind: &str, name: &str, request: &Value) {
    let file = c.write(&format!("{name}.json"), &request.to_string());
    c.cli(&[kind, "create", "--file", file.to_str().expect("utf-8")]).assert_success();
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")))
}

#[test]
fn a_tuning_job_runs_to_completion_on_gpu_and_cpu_agents() {
    let c = Coordinator::start();
    let dir = tempfile::tempdir().expect("dir");
    let library = nvml::build_fake_nvml(dir.path());
    let fake_gpus = nvml::gpus(2, "NVIDIA A10G", 23028);
    let cdi = nvml::fake_cdi(dir.path(), 2);
    let mut cpu_agent = c.start_agent("cpu-host", &["--advertise-vcpus", "8"], &[]);
    let mut gpu_agent = c.start_agent(
        "gpu-host",
        &[
            "--nvml-library",
            library.to_str().expect("utf-8"),
            "--cdi-spec-dir",
            cdi.to_str().expect("utf-8"),
            "--advertise-vcpus",
            "16",
            "--advertise-memory-mib",
            "65536",
        ],
        &[("FAKE_NVML_GPUS", fake_gpus.as_str())],
    );

    // The inventory reaches `agents list` through the real NVML code path.
    let agents = c.json(&["agents", "list"]);
    let gpu = agents["Agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["AgentId"] == "gpu-host")
        .expect("gpu-host")
        .clone();
    assert_eq!(gpu["Gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(gpu["Gpus"][0]["Name"], "NVIDIA A10G");
    assert_eq!(gpu["GpuDriverVersion"], "550.54.15");
    let cpu = agents["Agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["AgentId"] == "cpu-host")
        .expect("cpu-host")
        .clone();
    assert_eq!(cpu["Gpus"], json!([]));
    assert!(cpu["GpuNote"].as_str().unwrap_or_default().contains("NVML unavailable"), "{cpu}");
    let table = c.cli(&["agents", "list"]);
    assert!(table.stdout().contains("2/2 NVIDIA A10G"), "{}", table.stdout());

    // A GPU tuning job (one GPU per trial, two at a time) and a CPU one, side by side.
    submit(&c, "tuning-jobs", "gpu-tuning", &tuning_request(&c, "gpu-tuning", "ml.g5.xlarge", 6, 2));
    submit(&c, "tuning-jobs", "cpu-tuning", &tuning_request(&c, "cpu-tuning", "ml.m5.large", 4, 2));
    let watched = c.cli(&["--output", "json", "tuning-jobs", "watch", "gpu-tuning"]);
    watched.assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "cpu-tuning"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");

    let described: Value = serde_json::from_str(&watched.stdout()).expect("json");
    assert_eq!(described["HyperParameterTuningJobStatus"], "Completed", "{described:#}");
    let trials = c.json(&["tuning-jobs", "trials", "gpu-tuning", "--max-results", "100"]);
    let failures: Vec<String> = trials["TrainingJobSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["FailureReason"].as_str().map(|r| format!("{}: {r}", t["TrainingJobName"])))
        .collect();
    assert_eq!(described["TrainingJobStatusCounters"]["Completed"], 6, "{failures:#?}");
    assert_eq!(described["ObjectiveStatusCounters"]["Succeeded"], 6);

    let trials = trials["TrainingJobSummaries"].as_array().expect("trials").clone();
    assert_eq!(trials.len(), 6, "every trial ran");
    let mut best = (f64::MIN, String::new());
    let mut windows: Vec<(f64, f64, String)> = Vec::new();
    for t in &trials {
        let name = t["TrainingJobName"].as_str().expect("name").to_string();
        assert!(name.starts_with("gpu-tuning-00") && name.len() == "gpu-tuning-001-".len() + 8, "{name}");
        let x: f64 = t["TunedHyperParameters"]["x"].as_str().expect("x").parse().expect("number");
        assert!((0.0..=1.0).contains(&x), "x={x} inside its range");
        assert!(["0.6", "0.8"].contains(&t["TunedHyperParameters"]["sleep"].as_str().expect("sleep")));
        let expected = 1.0 - (x - 0.3) * (x - 0.3);
        let reported = t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("objective");
        assert!((reported - expected).abs() < 1e-5, "{name}: objective {reported} = 1 - (x - 0.3)^2 = {expected}");
        if reported > best.0 {
            best = (reported, name.clone());
        }
        let job = c.json(&["training-jobs", "describe", &name]);
        assert_eq!(job["HyperParameters"]["_tuning_objective_metric"], "score");
        assert_eq!(job["HyperParameters"]["mode"], "ok", "static hyperparameters are passed");
        let model = job["ModelArtifacts"]["S3ModelArtifacts"].as_str().expect("model artifacts");
        assert_eq!(model, format!("s3://trainyard-output/blobs-logreg-random/{name}/output/model.tar.gz"));
        assert!(
            c.output_dir().join(format!("blobs-logreg-random/{name}/output/model.tar.gz")).exists(),
            "{model} written"
        );
        let log = c.logs(&name);
        let visible = field(&log, "visible").expect("the trainer printed its GPUs").to_string();
        let uuids = [nvml::uuid(0), nvml::uuid(1)];
        assert!(uuids.contains(&visible), "{name} got one fake GPU by UUID, got {visible:?}");
        assert_eq!(field(&log, "train_files"), Some("train.csv"), "the train channel was staged");
        let started: f64 = field(&log, "started").expect("started").parse().expect("number");
        let ended: f64 = field(&log, "ended").expect("ended").parse().expect("number");
        windows.push((started, ended, visible));
    }
    assert_eq!(described["BestTrainingJob"]["TrainingJobName"], json!(best.1), "the best job is the best objective");
    // Trials that ran at the same time on the GPU agent had different GPUs.
    let mut overlaps = 0;
    for (i, a) in windows.iter().enumerate() {
        for b in &windows[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                overlaps += 1;
                assert_ne!(a.2, b.2, "overlapping trials shared a GPU: {a:?} {b:?}");
            }
        }
    }
    assert!(overlaps > 0, "two trials ran at once (MaxParallelTrainingJobs = 2): {windows:?}");
    // CPU trials went to the CPU agent (GPU hosts are kept for GPU work).
    let cpu_trials = c.json(&["tuning-jobs", "trials", "cpu-tuning"]);
    for t in cpu_trials["TrainingJobSummaries"].as_array().expect("trials") {
        let name = t["TrainingJobName"].as_str().expect("name");
        let log = c.logs(name);
        assert_eq!(
            field(&log, "visible"),
            Some(""),
            "no GPU for a CPU trial: {name}: {log}\n{:#}",
            c.json(&["training-jobs", "describe", name])
        );
    }
    cpu_agent.assert_running();
    gpu_agent.assert_running();
}

#[test]
fn stops_runtime_limits_and_failures_end_jobs_as_sagemaker_does() {
    let c = Coordinator::start();
    let mut agent = c.start_agent(
        "worker",
        &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536", "--stop-grace-seconds", "1"],
        &[],
    );

    submit(&c, "training-jobs", "fails", &training_request(&c, "fails", json!({"mode": "fail"}), 600));
    submit(&c, "training-jobs", "too-long", &training_request(&c, "too-long", json!({"sleep": "60"}), 2));
    submit(&c, "training-jobs", "stopped", &training_request(&c, "stopped", json!({"sleep": "60"}), 600));
    submit(
        &c,
        "training-jobs",
        "stubborn",
        &training_request(&c, "stubborn", json!({"sleep": "60", "mode": "stubborn"}), 600),
    );
    submit(&c, "training-jobs", "fine", &training_request(&c, "fine", json!({"x": "0.3"}), 600));

    let ended = |d: &Value| !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress") | Some("Stopping"));
    let failed = c.wait_json(&["training-jobs", "describe", "fails"], ended);
    assert_eq!(failed["TrainingJobStatus"], "Failed");
    assert_eq!(failed["FailureReason"], "ValueError: the data is not what it should be", "from output/failure");
    assert!(c.logs("fails").contains("about to fail"), "stderr is kept");

    let fine = c.wait_json(&["training-jobs", "describe", "fine"], ended);
    assert_eq!(fine["TrainingJobStatus"], "Completed");
    let metrics: BTreeMap<String, f64> = fine["FinalMetricDataList"]
        .as_array()
        .expect("final metrics")
        .iter()
        .map(|m| (m["MetricName"].as_str().unwrap_or_default().to_string(), m["Value"].as_f64().unwrap_or_default()))
        .collect();
    assert_eq!(metrics.get("score"), Some(&1.0));
    let statuses: Vec<&str> = fine["SecondaryStatusTransitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["Status"].as_str())
        .collect();
    // Placed in the pass that queued it (the agent had room): it never waited, so no Pending.
    assert_eq!(statuses, ["Starting", "Downloading", "Training", "Uploading", "Completed"], "{fine:#}");
    assert_eq!(fine["SecondaryStatusTransitions"][0]["StatusMessage"], "Launching on worker", "{fine:#}");

    // MaxRuntimeInSeconds: SIGTERM, the model is still uploaded, the job ends Stopped/MaxRuntimeExceeded.
    let long = c.wait_json(&["training-jobs", "describe", "too-long"], ended);
    assert_eq!(
        (long["TrainingJobStatus"].as_str(), long["SecondaryStatus"].as_str()),
        (Some("Stopped"), Some("MaxRuntimeExceeded"))
    );
    assert!(long["ModelArtifacts"]["S3ModelArtifacts"].is_string(), "what it saved is kept: {long:#}");

    // StopTrainingJob while it trains.
    c.wait_json(&["training-jobs", "describe", "stopped"], |d| d["SecondaryStatus"] == "Training");
    c.wait_json(&["training-jobs", "describe", "stubborn"], |d| d["SecondaryStatus"] == "Training");
    c.cli(&["training-jobs", "stop", "stopped"]).assert_success();
    c.cli(&["training-jobs", "stop", "stubborn"]).assert_success();
    let stopped = c.wait_json(&["training-jobs", "describe", "stopped"], ended);
    assert_eq!(
        (stopped["TrainingJobStatus"].as_str(), stopped["SecondaryStatus"].as_str()),
        (Some("Stopped"), Some("Stopped"))
    );
    // A program that ignores SIGTERM is killed after the grace period.
    let stubborn = c.wait_json(&["training-jobs", "describe", "stubborn"], ended);
    assert_eq!(stubborn["TrainingJobStatus"], "Stopped");
    assert!(c.logs("stubborn").contains("ignoring SIGTERM"));
    agent.assert_running();
}

#[test]
fn an_agent_killed_mid_job_fails_its_jobs_or_retries_them_elsewhere() {
    // A lost agent's jobs are retried once its lease has run out (it may only be cut off).
    let c = Coordinator::start_with_args(&["--agent-lost-after-seconds", "2", "--agent-lease-seconds", "3"]);
    let mut doomed = c.start_agent("doomed", &["--advertise-vcpus", "16"], &[]);
    let mut retried = training_request(&c, "retried", json!({"sleep": "3"}), 600);
    retried["RetryStrategy"] = json!({"MaximumRetryAttempts": 1});
    submit(&c, "training-jobs", "retried", &retried);
    submit(&c, "training-jobs", "not-retried", &training_request(&c, "not-retried", json!({"sleep": "30"}), 600));
    c.wait_json(&["training-jobs", "describe", "retried"], |d| d["SecondaryStatus"] == "Training");
    c.wait_json(&["training-jobs", "describe", "not-retried"], |d| d["SecondaryStatus"] == "Training");

    c.expect_log(r#"agent stream broke agent="doomed""#);
    c.expect_log("agent lost: no heartbeat agent=doomed");
    doomed.signal(trainyard_testkit::SIGKILL);
    doomed.wait_exit(Duration::from_secs(10)).expect("the agent died");
    let lost = c.wait_json(&["training-jobs", "describe", "not-retried"], |d| d["TrainingJobStatus"] == "Failed");
    assert!(lost["FailureReason"].as_str().unwrap_or_default().contains("agent doomed was lost"), "{lost:#}");
    let waiting = c.wait_json(&["training-jobs", "describe", "retried"], |d| d["SecondaryStatus"] == "Pending");
    let statuses: Vec<&str> = waiting["SecondaryStatusTransitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["Status"].as_str())
        .collect();
    assert!(statuses.contains(&"Restarting"), "{statuses:?}");
    let agents = c.json(&["agents", "list"]);
    assert_eq!(agents["Agents"][0]["State"], "lost");

    // Another agent joins: the retried job runs there to completion.
    let mut rescuer = c.start_agent("rescuer", &["--advertise-vcpus", "16"], &[]);
    let done = c.wait_json(&["training-jobs", "describe", "retried"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    rescuer.assert_running();
}

#[test]
fn jobs_keep_running_while_the_coordinator_restarts() {
    let mut c = Coordinator::start();
    let mut agent = c.start_agent("steady", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    submit(&c, "training-jobs", "outlives", &training_request(&c, "outlives", json!({"sleep": "4", "x": "0.3"}), 600));
    c.wait_json(&["training-jobs", "describe", "outlives"], |d| d["SecondaryStatus"] == "Training");

    // The coordinator goes away while the job trains, and comes back after it has finished.
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    c.daemon.signal(trainyard_testkit::SIGKILL);
    c.daemon.wait_exit(Duration::from_secs(10)).expect("killed");
    std::thread::sleep(Duration::from_secs(5));
    c.restart(trainyard_testkit::SIGKILL);

    // The agent reconnects, reports what happened meanwhile, and the job ends as it really did.
    let done = c.wait_json(&["training-jobs", "describe", "outlives"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert!(done["ModelArtifacts"]["S3ModelArtifacts"].is_string());
    agent.assert_running();
}

#[test]
fn pipe_mode_and_jobs_that_no_agent_can_hold() {
    let c = Coordinator::start();
    let agent = c.start_agent("small", &["--advertise-vcpus", "4", "--advertise-memory-mib", "16384"], &[]);
    // The program reads its train channel only; the agent says so of the validation channel.
    agent.expect_log("pipe channel ended early fifo=");

    // Pipe mode: the channel is a FIFO `<channel>_0` the program reads to its end.
    let reader = c.install_program(
        "pipe_reader.sh",
        "#!/bin/sh\nlines=$(wc -l < \"$SM_INPUT_DATA_DIR/train_0\")\necho \"pipe_lines=$lines\"\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    let mut piped = training_request(&c, "piped", json!({}), 600);
    piped["AlgorithmSpecification"]["TrainingImage"] = json!(reader);
    piped["AlgorithmSpecification"]["TrainingInputMode"] = json!("Pipe");
    submit(&c, "training-jobs", "piped", &piped);
    let done = c.wait_json(&["training-jobs", "describe", "piped"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert_eq!(field(&c.logs("piped"), "pipe_lines"), Some("400"), "every row of train.csv came through the pipe");

    // A job no agent could ever hold says why, at once, and waits (an agent may still join).
    // (MaxPendingTimeInSeconds would end the wait, but its minimum is 1,800 s.)
    let mut huge = training_request(&c, "huge", json!({}), 600);
    huge["ResourceConfig"]["InstanceType"] = json!("ml.p4d.24xlarge");
    submit(&c, "training-jobs", "huge", &huge);
    let waiting = c.wait_json(&["training-jobs", "describe", "huge"], |d| {
        d["SecondaryStatusTransitions"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(|t| t["StatusMessage"].as_str())
            .is_some_and(|m| m.contains("cannot be placed"))
    });
    let message =
        waiting["SecondaryStatusTransitions"].as_array().and_then(|t| t.last()).map(|t| t["StatusMessage"].clone());
    let message = message.as_ref().and_then(Value::as_str).unwrap_or_default();
    assert!(message.contains("8 GPU") && message.contains("position 1 of 1 in the queue"), "{message}");
    assert_eq!(waiting["TrainingJobStatus"], "InProgress");
    c.cli(&["training-jobs", "stop", "huge"]).assert_success();
    c.wait_json(&["training-jobs", "describe", "huge"], |d| d["TrainingJobStatus"] == "Stopped");
}

// The tuning scenarios read and write objectives, rankings and completion details through the
// store: each runs on SQLite and on PostgreSQL.
fn agents_are_cordoned_and_drained_for_maintenance_across_restarts(backend: Backend) {
    let mut c = Coordinator::start_on(backend);
    let agent = c.start_agent("maint", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let cordon_of = |c: &Coordinator| c.json(&["agents", "list"])["Agents"][0]["Cordon"].clone();
    submit(&c, "training-jobs", "running", &training_request(&c, "running", json!({"sleep": "60"}), 600));
    c.wait_json(&["training-jobs", "describe", "running"], |d| d["SecondaryStatus"] == "Training");

    // Drained: what runs goes on, nothing new starts, and the waiting job says why.
    c.cli(&["agents", "drain", "maint"]).assert_success();
    let agents = c.json(&["agents", "list"]);
    assert_eq!(agents["Agents"][0]["Cordon"], "draining", "{agents:#}");
    assert_eq!(agents["Agents"][0]["CordonedBy"], "e2e", "{agents:#}");
    assert_eq!(agents["Agents"][0]["Version"], env!("CARGO_PKG_VERSION"), "the agent's build: {agents:#}");
    assert!(c.cli(&["agents", "list"]).stdout().contains("ready, draining"));
    submit(&c, "training-jobs", "waits", &training_request(&c, "waits", json!({}), 600));
    let waiting = c.wait_json(&["training-jobs", "describe", "waits"], |d| {
        d["SecondaryStatusTransitions"].to_string().contains("cordoned or draining")
    });
    assert_eq!(waiting["SecondaryStatus"], "Pending", "{waiting:#}");
    assert_eq!(c.json(&["training-jobs", "describe", "running"])["TrainingJobStatus"], "InProgress");

    // Its last instance ends: drained, and so it stays when the coordinator restarts.
    c.cli(&["training-jobs", "stop", "running"]).assert_success();
    c.wait_json(&["training-jobs", "describe", "running"], |d| d["TrainingJobStatus"] == "Stopped");
    assert!(trainyard_testkit::wait_until(Duration::from_secs(10), || cordon_of(&c) == "drained"));
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    c.restart(trainyard_testkit::SIGTERM);
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(20), || cordon_of(&c) == "drained"),
        "{:#}",
        c.json(&["agents", "list"])
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.json(&["training-jobs", "describe", "waits"])["SecondaryStatus"], "Pending");

    // Back in placement: the waiting job runs.
    c.cli(&["agents", "uncordon", "maint"]).assert_success();
    let done = c.wait_json(&["training-jobs", "describe", "waits"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert_eq!(cordon_of(&c), "");
    let again = c.cli(&["agents", "uncordon", "maint"]);
    assert_ne!(again.code(), 0);
    assert!(again.stderr().contains("agent 'maint' is not cordoned"), "{}", again.stderr());
}

fn a_drain_past_its_deadline_moves_jobs_that_may_retry_and_fails_the_others(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _old = c.start_agent("old", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut moved = training_request(&c, "moved", json!({"sleep": "5"}), 600);
    moved["RetryStrategy"] = json!({"MaximumRetryAttempts": 1});
    submit(&c, "training-jobs", "moved", &moved);
    submit(&c, "training-jobs", "stays", &training_request(&c, "stays", json!({"sleep": "60"}), 600));
    for job in ["moved", "stays"] {
        c.wait_json(&["training-jobs", "describe", job], |d| d["SecondaryStatus"] == "Training");
    }
    let _new = c.start_agent("new", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);

    c.cli(&["agents", "drain", "old", "--deadline-seconds", "1"]).assert_success();
    let failed = c.wait_json(&["training-jobs", "describe", "stays"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(failed["TrainingJobStatus"], "Failed", "{failed:#}");
    let reason = failed["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("agent old was drained for maintenance and its deadline passed"), "{reason}");
    let done = c.wait_json(&["training-jobs", "describe", "moved"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert!(done["SecondaryStatusTransitions"].to_string().contains("Retrying (attempt 2 of 2)"), "{done:#}");
    let agents = c.json(&["agents", "list"]);
    let old = agents["Agents"].as_array().into_iter().flatten().find(|a| a["AgentId"] == "old").cloned();
    assert_eq!(old.map(|a| a["Cordon"].clone()), Some(json!("drained")), "{agents:#}");
}

on_both_backends!(
    a_drain_past_its_deadline_moves_jobs_that_may_retry_and_fails_the_others,
    agents_are_cordoned_and_drained_for_maintenance_across_restarts,
    a_bayesian_tuning_job_learns_from_its_trials,
    early_stopping_and_completion_criteria_end_trials_and_jobs,
    hyperband_stops_trials_outside_the_top_of_their_rung,
    warm_start_seeds_a_search_with_its_parents_trials,
    metric_series_are_read_back_by_metric_and_time,
);

/// What a job's MetricDefinitions matched comes back as series, one per metric, in time order
/// (`training-jobs metrics`, the GetTrainingJobMetrics RPC), whole or for one metric.
fn metric_series_are_read_back_by_metric_and_time(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _agent = c.start_agent("worker", &["--advertise-vcpus", "16"], &[]);
    // A second apart: one sample per metric per second is stored.
    let program = c.install_program(
        "curves.sh",
        "#!/bin/sh\necho 'epoch=1 loss=0.9 accuracy=0.1'\nsleep 1.2\necho 'epoch=2 loss=0.5 accuracy=0.4'\nsleep 1.2\n\
         echo 'epoch=3 loss=0.25 accuracy=0.8'\n",
    );
    let mut r = training_request(&c, "curves", json!({}), 600);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([
        {"Name": "train:loss", "Regex": "loss=([0-9.]+)"},
        {"Name": "train:accuracy", "Regex": "accuracy=([0-9.]+)"}
    ]);
    submit(&c, "training-jobs", "curves", &r);
    let done = c.wait_json(&["training-jobs", "describe", "curves"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");

    let metrics = c.json(&["training-jobs", "metrics", "curves"]);
    let series = metrics["Metrics"].as_array().expect("series");
    let names: Vec<&str> = series.iter().filter_map(|s| s["MetricName"].as_str()).collect();
    assert_eq!(names, ["train:accuracy", "train:loss"], "{metrics:#}");
    assert_eq!(series[0]["Values"], json!([0.1, 0.4, 0.8]));
    assert_eq!(series[1]["Values"], json!([0.9, 0.5, 0.25]));
    let times: Vec<f64> = series[1]["Timestamps"].as_array().expect("times").iter().filter_map(Value::as_f64).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 1.0), "a second apart, in order: {times:?}");
    let started = done["TrainingStartTime"].as_f64().expect("start");
    assert!(times[0] >= started - 1.0, "{times:?} after {started}");

    let loss = c.json(&["training-jobs", "metrics", "curves", "--metric", "train:loss"]);
    assert_eq!(loss["Metrics"].as_array().map(Vec::len), Some(1), "{loss:#}");
    assert_eq!(loss["Metrics"][0]["Values"], json!([0.9, 0.5, 0.25]));
    let none = c.json(&["training-jobs", "metrics", "curves", "--metric", "nothing"]);
    assert_eq!(none["Metrics"], json!([]));
    let table = c.cli(&["training-jobs", "metrics", "curves"]);
    table.assert_success();
    assert!(table.stdout().contains("train:loss") && table.stdout().contains("0.25"), "{}", table.stdout());

    // Bad input names the field and the limit; an unknown job is NotFound.
    let long = "m".repeat(256);
    let out = c.cli(&["training-jobs", "metrics", "curves", "--metric", &long]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert!(out.stderr().contains("metric_name") && out.stderr().contains("at most 255"), "{}", out.stderr());
    assert_eq!(c.cli(&["training-jobs", "metrics", "no-such-job"]).code(), 4);
}

/// Trials run one at a time with a fixed seed, so every suggestion is made from the results of all
/// earlier trials, whatever the timing: the sequence of trials is the same on every run. Then ten
/// at once, all suggested before any result is in.
fn a_bayesian_tuning_job_learns_from_its_trials(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _agent = c.start_agent("bayes", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut request = tuning_request(&c, "bayes", "ml.m5.large", 15, 1);
    request["HyperParameterTuningJobConfig"]["Strategy"] = json!("Bayesian");
    request["HyperParameterTuningJobConfig"]["RandomSeed"] = json!(7);
    request["HyperParameterTuningJobConfig"]["ParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    request["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "0.1"});
    submit(&c, "tuning-jobs", "bayes", &request);
    let done = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "describe", "bayes"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    assert_eq!(done["TrainingJobStatusCounters"]["Completed"], 15);
    assert_eq!(done["ObjectiveStatusCounters"]["Succeeded"], 15, "every trial's objective was recorded: {done:#}");
    let best = done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("best");
    assert!(best > 0.995, "the search closes in on x = 0.3 (score 1): {best}");
    // The trials after the space-filling start (ten), chosen by the model, are better on average.
    let trials = c.json(&["tuning-jobs", "trials", "bayes", "--sort-by", "Name", "--max-results", "100"]);
    let scores: Vec<f64> = trials["TrainingJobSummaries"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("objective"))
        .collect();
    let early: f64 = scores[..10].iter().sum::<f64>() / 10.0;
    let late: f64 = scores[10..].iter().sum::<f64>() / 5.0;
    assert!(late > early, "model-guided trials ({late}) beat the space-filling start ({early}): {scores:?}");

    // Each trial is what the strategy suggests, offline, from the seed and the trials before it
    // with their recorded objectives: the system feeds the tuner exactly what its benchmark does
    // (order, objective sign, values to the bit), so the tuner bench's figures hold for real jobs.
    let ranges: trainyard_model::api::ParameterRanges =
        serde_json::from_value(request["HyperParameterTuningJobConfig"]["ParameterRanges"].clone()).expect("ranges");
    let space = trainyard_tuner::SearchSpace::from_ranges(&ranges).expect("space");
    let mut finished: Vec<trainyard_tuner::Finished> = Vec::new();
    for (index, (trial, score)) in
        trials["TrainingJobSummaries"].as_array().expect("trials").iter().zip(&scores).enumerate()
    {
        let ran: BTreeMap<String, String> =
            serde_json::from_value(trial["TunedHyperParameters"].clone()).expect("tuned hyperparameters");
        let suggested = trainyard_tuner::Strategy::Bayesian.suggest(&space, 7, index as u64, Some(15), &finished, &[]);
        assert_eq!(suggested.as_ref(), Some(&ran), "trial {index} is not the strategy's suggestion");
        // Maximize: the strategy maximises the value it is given.
        finished.push(trainyard_tuner::Finished { hyper_parameters: ran, value: *score });
    }

    // The strategy is told the job's budget (MaxNumberOfTrainingJobs). Ten trials at once: all
    // ten are suggested before any result is in, and the last three, which no model pick would
    // follow, come from a design of their own where a search of unknown length has its model
    // pick them.
    let mut batch = request.clone();
    batch["HyperParameterTuningJobName"] = json!("bayes-batch");
    batch["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 10, "MaxParallelTrainingJobs": 10});
    submit(&c, "tuning-jobs", "bayes-batch", &batch);
    let done = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "describe", "bayes-batch"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let trials = c.json(&["tuning-jobs", "trials", "bayes-batch", "--sort-by", "Name", "--max-results", "100"]);
    let ran: Vec<BTreeMap<String, String>> = trials["TrainingJobSummaries"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| serde_json::from_value(t["TunedHyperParameters"].clone()).expect("tuned hyperparameters"))
        .collect();
    assert_eq!(ran.len(), 10);
    let bayesian = |index: u64, budget: Option<u64>| {
        trainyard_tuner::Strategy::Bayesian.suggest(&space, 7, index, budget, &[], &[]).expect("a suggestion")
    };
    for (index, ran) in ran.iter().enumerate() {
        assert_eq!(ran, &bayesian(index as u64, Some(10)), "trial {index} is not the strategy's suggestion");
    }
    assert!((7..10).all(|index| bayesian(index, None) != ran[index as usize]), "{ran:?}");
}

fn early_stopping_and_completion_criteria_end_trials_and_jobs(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _agent = c.start_agent("tuner", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);

    // The median rule: once three trials have finished, a trial whose objective is below the
    // median of their running averages is stopped, keeps its last value and counts as stopped.
    let mut early = tuning_request(&c, "early", "ml.m5.large", 10, 1);
    early["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = json!("Auto");
    early["HyperParameterTuningJobConfig"]["ParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    early["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "1.5"});
    submit(&c, "tuning-jobs", "early", &early);

    // TargetObjectiveMetricValue: the job completes as soon as a trial reaches it.
    let mut target = tuning_request(&c, "target", "ml.m5.large", 30, 1);
    target["HyperParameterTuningJobConfig"]["TuningJobCompletionCriteria"] = json!({"TargetObjectiveMetricValue": 0.9});
    target["HyperParameterTuningJobConfig"]["ParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    target["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "0.1"});
    submit(&c, "tuning-jobs", "target", &target);

    let done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "target"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let best = done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("best");
    assert!(best >= 0.9, "{best}");
    let counters = &done["TrainingJobStatusCounters"];
    let ran = counters["Completed"].as_i64().unwrap_or(0) + counters["Stopped"].as_i64().unwrap_or(0);
    assert!(ran < 30, "it stopped early, after {ran} trials");
    assert!(done["TuningJobCompletionDetails"]["NumberOfTrainingJobsObjectiveNotImproving"].is_number(), "{done:#}");

    let done = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "describe", "early"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let stopped = done["TrainingJobStatusCounters"]["Stopped"].as_i64().unwrap_or(0);
    let completed = done["TrainingJobStatusCounters"]["Completed"].as_i64().unwrap_or(0);
    assert_eq!(stopped + completed, 10);
    assert!(stopped >= 1 && completed >= 3, "stopped {stopped}, completed {completed}");
    let trials = c.json(&["tuning-jobs", "trials", "early", "--status", "Stopped"]);
    for t in trials["TrainingJobSummaries"].as_array().expect("trials") {
        assert!(
            t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].is_number(),
            "a stopped trial keeps its last value: {t}"
        );
        // It says why it stopped, in its status history.
        let name = t["TrainingJobName"].as_str().expect("name");
        let described = c.json(&["training-jobs", "describe", name]);
        let last = described["SecondaryStatusTransitions"].as_array().and_then(|t| t.last()).expect("transitions");
        assert_eq!(last["Status"], "Stopped", "{described:#}");
        assert_eq!(
            last["StatusMessage"],
            "Training job stopped early: its objective was worse than the median of earlier trials",
            "{described:#}"
        );
    }

    // The trials shaped for plotting (GetTuningJobTrials): all ten in launch order, the
    // early-stopped ones marked, the best so far rising to the tuning job's best.
    let results = c.json(&["tuning-jobs", "results", "early"]);
    assert_eq!(results["ObjectiveMetricName"], "score");
    assert_eq!(results["Maximize"], true);
    assert_eq!(results["Ended"], true);
    let numbers: Vec<i64> = results["Number"].as_array().expect("numbers").iter().filter_map(|n| n.as_i64()).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<i64>>(), "{results:#}");
    let statuses = results["Status"].as_array().expect("statuses");
    let marked = results["StoppedEarly"].as_array().expect("marks");
    for (status, early) in statuses.iter().zip(marked) {
        assert_eq!(early.as_bool(), Some(status == "Stopped"), "early stopping ended every stopped trial: {results:#}");
    }
    let best: Vec<f64> = results["BestSoFar"].as_array().expect("best").iter().filter_map(|b| b.as_f64()).collect();
    assert!(best.windows(2).all(|w| w[0] <= w[1]), "the best so far never falls: {best:?}");
    let overall = done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64();
    assert_eq!(best.last().copied(), overall, "{results:#}");
    assert_eq!(results["HyperParameters"]["x"].as_array().map(Vec::len), Some(10), "{results:#}");
    // Three a page, the best so far carried from page to page: the same answer.
    assert_eq!(c.json(&["tuning-jobs", "results", "early", "--page-size", "3"]), results);
    assert_eq!(c.cli(&["tuning-jobs", "results", "no-such-tuning-job"]).code(), 4);
}

fn hyperband_stops_trials_outside_the_top_of_their_rung(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _agent = c.start_agent("bands", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut request = tuning_request(&c, "bands", "ml.m5.large", 12, 3);
    let config = &mut request["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Hyperband");
    config["TrainingJobEarlyStoppingType"] = json!("Off");
    config["StrategyConfig"] = json!({"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}});
    config["ParameterRanges"] = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    request["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "1.2"});
    submit(&c, "tuning-jobs", "bands", &request);
    let done = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "describe", "bands"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let stopped = done["TrainingJobStatusCounters"]["Stopped"].as_i64().unwrap_or(0);
    let completed = done["TrainingJobStatusCounters"]["Completed"].as_i64().unwrap_or(0);
    assert_eq!(stopped + completed, 12);
    assert!(stopped >= 1, "Hyperband stopped the losers at their rungs: {done:#}");
    // The best trial ran to the end.
    let best = done["BestTrainingJob"]["TrainingJobStatus"].clone();
    assert_eq!(best, "Completed");
    // Each stopped trial is marked as stopped by its rung.
    let results = c.json(&["tuning-jobs", "results", "bands"]);
    let marked =
        results["StoppedEarly"].as_array().expect("marks").iter().filter(|m| m.as_bool() == Some(true)).count();
    assert_eq!(marked as i64, stopped, "{results:#}");
    let table = c.cli(&["tuning-jobs", "results", "bands"]);
    table.assert_success();
    assert_eq!(table.stdout().matches("Stopped (early)").count() as i64, stopped, "{}", table.stdout());
}

fn warm_start_seeds_a_search_with_its_parents_trials(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let _agent = c.start_agent("warm", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let ranges = json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    let mut parent = tuning_request(&c, "parent", "ml.m5.large", 6, 3);
    parent["HyperParameterTuningJobConfig"]["ParameterRanges"] = ranges.clone();
    // Six one-second trials, three at a time: the parent runs for at least two seconds.
    parent["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "1"});
    submit(&c, "tuning-jobs", "parent", &parent);

    // A parent still running is refused, as is one with another objective.
    let mut child = tuning_request(&c, "child", "ml.m5.large", 4, 1);
    child["HyperParameterTuningJobConfig"]["Strategy"] = json!("Bayesian");
    child["HyperParameterTuningJobConfig"]["ParameterRanges"] = ranges;
    child["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "0.1"});
    child["WarmStartConfig"] = json!({"WarmStartType": "IdenticalDataAndAlgorithm", "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "parent"}]});
    let early = c.write("child-early.json", &child.to_string());
    let out = c.cli(&["tuning-jobs", "create", "--file", early.to_str().expect("utf-8")]);
    assert_eq!(out.code(), 3, "a warm start from a running parent is refused: {}", out.stderr());
    assert!(out.stderr().contains("must have ended"), "{}", out.stderr());
    let parent_done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "parent"], |d| {
        d["HyperParameterTuningJobStatus"] == "Completed"
    });
    let mut other = child.clone();
    other["HyperParameterTuningJobName"] = json!("other-objective");
    other["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] = json!("Minimize");
    let file = c.write("other.json", &other.to_string());
    let out = c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]);
    assert_eq!(out.code(), 3);
    assert!(out.stderr().contains("same objective metric"), "{}", out.stderr());

    submit(&c, "tuning-jobs", "child", &child);
    let done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "child"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let parent_best = parent_done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        .as_f64()
        .expect("parent best");
    let overall = &done["OverallBestTrainingJob"];
    let overall_value = overall["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("overall best");
    assert!(overall_value >= parent_best, "{overall_value} >= {parent_best}");
    // Six results seed the model, so even the child's first trial is model-guided: near x = 0.3.
    let trials = c.json(&["tuning-jobs", "trials", "child", "--sort-by", "Name"]);
    let first = trials["TrainingJobSummaries"][0]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        .as_f64()
        .expect("value");
    assert!(first > 0.9, "the first warm-started trial already scores {first}");
}

#[test]
fn each_definition_of_a_tuning_job_tunes_its_own_ranges() {
    let c = Coordinator::start();
    let _agent = c.start_agent("defs", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut request = tuning_request(&c, "defs", "ml.m5.large", 6, 2);
    let mut low = request["TrainingJobDefinition"].clone();
    low["DefinitionName"] = json!("low");
    low["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "0.1"});
    low["HyperParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "0.5"}]});
    low["TuningObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    let mut high = low.clone();
    high["DefinitionName"] = json!("high");
    high["HyperParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0.5", "MaxValue": "1"}]});
    let object = request.as_object_mut().expect("object");
    object.remove("TrainingJobDefinition");
    object.insert("TrainingJobDefinitions".into(), json!([low, high]));
    let config = object.get_mut("HyperParameterTuningJobConfig").and_then(Value::as_object_mut).expect("config");
    config.remove("ParameterRanges");
    config.remove("HyperParameterTuningJobObjective");
    submit(&c, "tuning-jobs", "defs", &request);
    let done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "defs"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let trials = c.json(&["tuning-jobs", "trials", "defs", "--sort-by", "Name"]);
    let trials = trials["TrainingJobSummaries"].as_array().expect("trials").clone();
    assert_eq!(trials.len(), 6);
    for (i, t) in trials.iter().enumerate() {
        let definition = if i % 2 == 0 { "low" } else { "high" };
        assert_eq!(t["TrainingJobDefinitionName"], definition, "definitions take turns");
        let x: f64 = t["TunedHyperParameters"]["x"].as_str().expect("x").parse().expect("number");
        let range = if definition == "low" { 0.0..=0.5 } else { 0.5..=1.0 };
        assert!(range.contains(&x), "{definition}: x = {x}");
    }
}

#[test]
fn a_tuning_job_completes_at_its_max_runtime() {
    let c = Coordinator::start();
    let _agent = c.start_agent(
        "clock",
        &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536", "--stop-grace-seconds", "2"],
        &[],
    );
    let mut request = tuning_request(&c, "clock", "ml.m5.large", 500, 2);
    // 120 seconds is the smallest limit the service model allows.
    request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxRuntimeInSeconds"] = json!(120);
    request["TrainingJobDefinition"]["StaticHyperParameters"] = json!({"mode": "ok", "sleep": "7"});
    request["HyperParameterTuningJobConfig"]["ParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]});
    submit(&c, "tuning-jobs", "clock", &request);
    let done = c.wait_json_for(Duration::from_secs(160), &["tuning-jobs", "describe", "clock"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let runtime = done["ConsumedResources"]["RuntimeInSeconds"].as_i64().expect("runtime");
    assert!((120..=135).contains(&runtime), "ended at its limit: {runtime} s");
    let counters = &done["TrainingJobStatusCounters"];
    assert!(counters["Stopped"].as_i64().unwrap_or(0) >= 1, "the trials running at the limit were stopped: {counters}");
    assert_eq!(counters["InProgress"], 0);
}

#[test]
fn data_and_models_travel_through_an_s3_compatible_store() {
    let s3 = trainyard_testkit::s3::S3Server::start();
    let data = trainyard_e2e::repo_root().join("deploy/examples/data/blobs");
    s3.python(&format!(
        "s3.create_bucket(Bucket='datasets')\ns3.create_bucket(Bucket='models')\n\
         s3.upload_file('{train}', 'datasets', 'blobs/train/train.csv')\n\
         s3.upload_file('{validation}', 'datasets', 'blobs/validation/validation.csv')\n\
         s3.put_object(Bucket='datasets', Key='checkpoints/run1/step-1.ckpt', Body=b'restored')",
        train = data.join("train/train.csv").display(),
        validation = data.join("validation/validation.csv").display(),
    ));
    let c = Coordinator::start();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _agent = c.start_agent("cloudy", &["--advertise-vcpus", "8", "--s3-endpoint", &s3.endpoint], &env);

    let mut request: Value = example_json("training-job.json");
    request["TrainingJobName"] = json!("from-s3");
    // The example trainer, after saying what the restored checkpoint holds.
    let trainer = trainyard_e2e::repo_root().join("deploy/examples/trainer/train.py");
    let wrapper = c.install_program(
        "with-checkpoint.sh",
        &format!(
            "#!/bin/sh\necho \"restored=$(cat \"$SM_CHECKPOINT_DIR/step-1.ckpt\")\"\n\
             head -c 20971520 /dev/urandom > \"$SM_CHECKPOINT_DIR/big.ckpt\"\n\
             echo \"big=$(sha256sum \"$SM_CHECKPOINT_DIR/big.ckpt\" | cut -d' ' -f1)\"\n\
             exec python3 {} \"$@\"\n",
            trainer.display()
        ),
    );
    request["AlgorithmSpecification"]["TrainingImage"] = json!(wrapper);
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!("s3://datasets/blobs/train/");
    request["InputDataConfig"][1]["DataSource"]["S3DataSource"]["S3Uri"] = json!("s3://datasets/blobs/validation/");
    request["OutputDataConfig"]["S3OutputPath"] = json!("s3://models/runs/");
    request["CheckpointConfig"] = json!({"S3Uri": "s3://datasets/checkpoints/run1/"});
    submit(&c, "training-jobs", "from-s3", &request);
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "from-s3"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert_eq!(done["ModelArtifacts"]["S3ModelArtifacts"], "s3://models/runs/from-s3/output/model.tar.gz");
    let keys = s3.python("print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='models')['Contents']))");
    assert!(keys.lines().any(|k| k == "runs/from-s3/output/model.tar.gz"), "{keys}");
    let accuracy = done["FinalMetricDataList"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["MetricName"] == "validation:accuracy"))
        .and_then(|m| m["Value"].as_f64())
        .expect("accuracy");
    assert!(accuracy > 0.7, "it trained on the data it read from S3: {accuracy}");
    // The checkpoint was restored into the job before it started, and synced back after; the
    // work dir is gone once the job completed.
    assert!(c.logs("from-s3").contains("restored=restored"), "{}", c.logs("from-s3"));
    assert!(!c.dir.path().join("agents/cloudy/jobs/from-s3").exists(), "the completed job's work dir was removed");
    let ckpt = s3
        .python("print(s3.get_object(Bucket='datasets', Key='checkpoints/run1/step-1.ckpt')['Body'].read().decode())");
    assert_eq!(ckpt.trim(), "restored");
    // A 20 MiB checkpoint went up in 8 MiB parts (S3 names a multipart object's ETag by its part
    // count), so the agent never held the whole file, and arrived whole.
    let big = s3.python(
        "o = s3.get_object(Bucket='datasets', Key='checkpoints/run1/big.ckpt')\n\
         import hashlib\nprint(o['ETag'], hashlib.sha256(o['Body'].read()).hexdigest())",
    );
    let (etag, digest) = big.trim().split_once(' ').expect("etag and digest");
    assert!(etag.ends_with("-3\""), "uploaded in three parts: {etag}");
    let logs = c.logs("from-s3");
    assert_eq!(field(&logs, "big"), Some(digest), "{logs}");
}

#[test]
fn a_two_instance_job_runs_on_two_agents_with_sharded_data() {
    let c = Coordinator::start();
    let _a = c.start_agent("left", &["--advertise-vcpus", "4"], &[]);
    let _b = c.start_agent("right", &["--advertise-vcpus", "4"], &[]);
    // Six objects under one prefix, in a bucket served from a directory.
    let shards = c.output_dir().join("shards/parts");
    std::fs::create_dir_all(&shards).expect("dir");
    for i in 0..6 {
        std::fs::write(shards.join(format!("part-{i}.csv")), format!("{i}\n")).expect("write");
    }
    let lister = c.install_program(
        "lister.sh",
        "#!/bin/sh\necho \"host=$SM_CURRENT_HOST hosts=$SM_HOSTS files=$(ls \"$SM_CHANNEL_TRAIN\" | sort | tr '\\n' ',')\"\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    let mut request = training_request(&c, "pair", json!({}), 600);
    request["AlgorithmSpecification"]["TrainingImage"] = json!(lister);
    request["ResourceConfig"]["InstanceCount"] = json!(2);
    request["InputDataConfig"] = json!([{
        "ChannelName": "train",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://trainyard-output/shards/parts/",
                                         "S3DataDistributionType": "ShardedByS3Key"}}
    }]);
    submit(&c, "training-jobs", "pair", &request);
    let done = c.wait_json(&["training-jobs", "describe", "pair"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let log = c.logs("pair");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("host=")).collect();
    assert_eq!(lines.len(), 2, "both instances ran: {log}");
    let mut seen = Vec::new();
    for line in &lines {
        assert!(line.contains("hosts=[\"algo-1\",\"algo-2\"]"), "{line}");
        seen.extend(field(line, "files").expect("files").split(',').filter(|f| !f.is_empty()).map(str::to_string));
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..6).map(|i| format!("part-{i}.csv")).collect::<Vec<_>>(),
        "each object on exactly one instance"
    );
    let agents = c.json(&["agents", "list"]);
    assert_eq!(agents["Agents"].as_array().map(Vec::len), Some(2));
}

#[test]
fn programs_with_hard_coded_opt_ml_paths_run_unchanged_and_apart() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (mount namespaces), as CI has");
    let c = Coordinator::start();
    let _agent = c.start_agent("optml", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let program = c.install_program(
        "hardcoded.sh",
        "#!/bin/sh\nset -e\ncp /opt/ml/input/config/hyperparameters.json /opt/ml/model/seen.json\n\
         echo \"$TRAINING_JOB_NAME\" > /opt/ml/model/owner.txt\nsleep 1\n\
         echo \"base=$SAGEMAKER_BASE_DIR model=$SM_MODEL_DIR pwd=$(pwd) train=$(ls /opt/ml/input/data/train) owner=$(cat /opt/ml/model/owner.txt)\"\n",
    );
    for name in ["opt-a", "opt-b"] {
        let mut request = training_request(&c, name, json!({"who": name}), 600);
        request["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        submit(&c, "training-jobs", name, &request);
    }
    for name in ["opt-a", "opt-b"] {
        let done = c.wait_json(&["training-jobs", "describe", name], |d| d["TrainingJobStatus"] != "InProgress");
        assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
        let log = c.logs(name);
        assert_eq!(field(&log, "base"), Some("/opt/ml"), "{log}");
        assert_eq!(field(&log, "model"), Some("/opt/ml/model"));
        assert_eq!(field(&log, "pwd"), Some("/opt/ml"));
        assert_eq!(field(&log, "train"), Some("train.csv"));
        assert_eq!(field(&log, "owner"), Some(name), "each instance has its own /opt/ml");
        // What the program wrote to /opt/ml/model is in its model.tar.gz.
        let archive = c.output_dir().join(format!("blobs-logreg-baseline/{name}/output/model.tar.gz"));
        assert!(archive.exists(), "{}", archive.display());
        let listing = Command::new("tar").arg("tzf").arg(&archive).output().expect("tar");
        let names = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(names.contains("seen.json") && names.contains("owner.txt"), "{names}");
    }
    assert!(!std::path::Path::new("/opt/ml/model/owner.txt").exists(), "nothing leaks to the host's /opt/ml");
}

/// A cluster with no room left: the loop's placement passes stop (nothing could start, so the
/// queue is not copied into a problem at every event and tick), yet what changes is seen at once:
/// a job created then is stored waiting in its create, one that no agent could ever hold says so,
/// and the first instance to end lets the next job start.
#[test]
fn a_full_cluster_skips_its_placement_passes_until_room_frees() {
    let metrics = format!("127.0.0.1:{}", trainyard_testkit::free_port());
    let c = Coordinator::start_on_with_args(Backend::Sqlite, &["--metrics-listen", &metrics]);
    // Room for one ml.m5.large (2 vCPUs, 8 GiB) and no more.
    let _agent = c.start_agent("small", &["--advertise-vcpus", "2", "--advertise-memory-mib", "8192"], &[]);
    submit(&c, "training-jobs", "holder", &training_request(&c, "holder", json!({"sleep": "60"}), 600));
    c.wait_json(&["training-jobs", "describe", "holder"], |d| d["SecondaryStatus"] == "Training");
    let passes = || {
        let page = trainyard_e2e::http_get(&metrics, "/metrics").1;
        page.lines()
            .find_map(|l| l.strip_prefix("trainyard_placement_pass_seconds_count ")?.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };

    // Waiters that run until stopped: the test stops them while they train.
    submit(&c, "training-jobs", "waiter-1", &training_request(&c, "waiter-1", json!({"sleep": "60"}), 600));
    let waiting = c.wait_json(&["training-jobs", "describe", "waiter-1"], |d| d["SecondaryStatus"] == "Pending");
    // Stored waiting in its create: its Pending began when it was created.
    assert_eq!(waiting["SecondaryStatusTransitions"][1]["StartTime"], waiting["CreationTime"], "{waiting:#}");
    let before = passes();
    assert!(before >= 1.0, "the passes are counted: {before}");
    submit(&c, "training-jobs", "waiter-2", &training_request(&c, "waiter-2", json!({"sleep": "60"}), 600));
    let mut huge = training_request(&c, "huge", json!({}), 600);
    huge["ResourceConfig"]["InstanceType"] = json!("ml.p4d.24xlarge");
    submit(&c, "training-jobs", "huge", &huge);
    // A job no agent could ever hold says so while the passes are skipped.
    let told = c.wait_json(&["training-jobs", "describe", "huge"], |d| d.to_string().contains("cannot be placed"));
    assert!(told.to_string().contains("8 GPU"), "{told:#}");
    std::thread::sleep(Duration::from_secs(2)); // four of the loop's ticks
    assert_eq!(passes(), before, "no full pass while nothing could start");
    assert_eq!(c.json(&["training-jobs", "describe", "waiter-2"])["SecondaryStatus"], "Pending");
    // Where each stands, in arrival order; the one that can never start says why.
    let standing = |job: &str| {
        let d = c.json(&["training-jobs", "describe", job]);
        let last = d["SecondaryStatusTransitions"].as_array().and_then(|t| t.last().cloned()).unwrap_or_default();
        last["StatusMessage"].as_str().unwrap_or_default().to_string()
    };
    assert!(standing("waiter-1").contains("position 1 of 3 in the queue"), "{}", standing("waiter-1"));
    assert!(standing("waiter-2").contains("position 2 of 3 in the queue"), "{}", standing("waiter-2"));
    let huge_standing = standing("huge");
    assert!(huge_standing.contains("position 3 of 3 in the queue; cannot be placed"), "{huge_standing}");

    // Room again: the oldest waiting job starts.
    c.cli(&["training-jobs", "stop", "holder"]).assert_success();
    let started = c.wait_json(&["training-jobs", "describe", "waiter-1"], |d| d["SecondaryStatus"] == "Training");
    assert_eq!(started["TrainingJobStatus"], "InProgress");
    assert!(passes() > before, "a full pass once room freed");
    assert_eq!(c.json(&["training-jobs", "describe", "waiter-2"])["SecondaryStatus"], "Pending");
    assert!(
        standing("waiter-2").contains("position 1 of 2 in the queue"),
        "the line moved up: {}",
        standing("waiter-2")
    );
    for job in ["waiter-1", "waiter-2", "huge"] {
        c.cli(&["training-jobs", "stop", job]).assert_success();
    }
}
