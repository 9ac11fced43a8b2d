//! Managed spot training on our own hosts: a job that is not spot interrupts spot jobs when it
//! cannot start otherwise; the interrupted job writes a checkpoint in its grace period, waits, and
//! resumes from it; MaxWaitTimeInSeconds ends a spot job that waited too long. And priorities
//! (`trainyard:priority`): served first, bounded by the operator. Real coordinator, real agent,
//! real programs, on both backends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, example_json, http_get, on_both_backends};

/// Counts to `$TARGET` in steps of 0.2 s, keeping its step in `$SM_CHECKPOINT_DIR/step`: it starts
/// from there, and writes it (and a partial model) when SIGTERM asks it to stop.
const COUNTER: &str = r#"#!/bin/sh
ck="$SM_CHECKPOINT_DIR/step"
step=0
if [ -f "$ck" ]; then step=$(cat "$ck"); echo "resumed at step=$step"; fi
trap 'echo "$step" > "$ck"; echo "$step" > /opt/ml/model/partial; echo "checkpoint written at step=$step"; exit 143' TERM
while [ "$step" -lt "$TARGET" ]; do
  step=$((step + 1))
  echo "step=$step"
  sleep 0.2 & wait $!
done
echo "$step" > "$ck"
echo "$step" > /opt/ml/model/steps
echo "finished at step=$step"
"#;

/// Holds its place for `$SECONDS_TO_RUN` seconds.
const SLEEPER: &str = "#!/bin/sh\necho \"on-demand work\"\nsleep \"$SECONDS_TO_RUN\"\necho done\n";

/// One agent with room for exactly one ml.m5.large (2 vCPUs, 8 GiB) at a time.
fn one_slot_cluster(backend: Backend) -> (Coordinator, trainyard_testkit::Daemon) {
    let c = Coordinator::start_on(backend);
    let agent = c.start_agent(
        "one-slot",
        &["--advertise-vcpus", "2", "--advertise-memory-mib", "8192", "--stop-grace-seconds", "10"],
        &[],
    );
    (c, agent)
}

fn request(c: &Coordinator, name: &str, program: &str, environment: Value) -> Value {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "step", "Regex": "step=([0-9]+)"}]);
    r["OutputDataConfig"]["S3OutputPath"] = json!("s3://trainyard-output/models/");
    r["Environment"] = environment;
    r["StoppingCondition"] = json!({"MaxRuntimeInSeconds": 300});
    let _ = c;
    r
}

fn spot(mut r: Value, name: &str, max_runtime: u32, max_wait: u32) -> Value {
    r["EnableManagedSpotTraining"] = json!(true);
    r["StoppingCondition"] = json!({"MaxRuntimeInSeconds": max_runtime, "MaxWaitTimeInSeconds": max_wait});
    r["CheckpointConfig"] = json!({"S3Uri": format!("s3://trainyard-output/checkpoints/{name}/")});
    r
}

fn ended(c: &Coordinator, name: &str, within: Duration) -> Value {
    c.wait_json_for(within, &["training-jobs", "describe", name], |d| {
        !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress" | "Stopping"))
    })
}

fn statuses(described: &Value) -> Vec<String> {
    described["SecondaryStatusTransitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["Status"].as_str().map(str::to_string))
        .collect()
}

/// The number after the last `prefix` in `text`.
fn last_number_after(text: &str, prefix: &str) -> u32 {
    text.rsplit(prefix)
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix} in {text}"))
}

/// Waits (a minute at most) until the job's log holds `text` `times` times.
fn wait_for_log(c: &Coordinator, job: &str, text: &str, times: usize) {
    let started = Instant::now();
    while c.logs(job).matches(text).count() < times {
        assert!(started.elapsed() < Duration::from_secs(60), "no {text:?} in the log of {job}: {}", c.logs(job));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tuning job of `program`'s spot trials, one at a time, maximising `metric` (`<metric>=<n>` in
/// its output), one continuous range that the program ignores.
fn spot_tuning_request(name: &str, program: &str, metric: &str, trials: u32) -> Value {
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!(name);
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": metric});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": trials, "MaxParallelTrainingJobs": 1});
    config["ParameterRanges"] = json!({
        "ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}]
    });
    let def = &mut r["TrainingJobDefinition"];
    def["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    def["AlgorithmSpecification"]["MetricDefinitions"] =
        json!([{"Name": metric, "Regex": format!("{metric}=([0-9]+)")}]);
    def["OutputDataConfig"]["S3OutputPath"] = json!("s3://trainyard-output/models/");
    def["EnableManagedSpotTraining"] = json!(true);
    def["StoppingCondition"] = json!({"MaxRuntimeInSeconds": 300, "MaxWaitTimeInSeconds": 900});
    def["CheckpointConfig"] = json!({"S3Uri": format!("s3://trainyard-output/checkpoints/{name}/")});
    r
}

/// The names of a tuning job's trials in launch order, once there are `count`.
fn trial_names(c: &Coordinator, tuning: &str, count: usize) -> Vec<String> {
    let listed = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "trials", tuning], |t| {
        t["TrainingJobSummaries"].as_array().is_some_and(|a| a.len() >= count)
    });
    let mut names: Vec<String> = listed["TrainingJobSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["TrainingJobName"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn an_on_demand_job_interrupts_a_spot_job_which_resumes_from_its_checkpoint(backend: Backend) {
    let (c, _agent) = one_slot_cluster(backend);
    let counter = c.install_program("counter.sh", COUNTER);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);

    // The spot job fills the cluster and gets going.
    c.create_training_job(&spot(
        request(&c, "spot-counter", &counter, json!({"TARGET": "60"})),
        "spot-counter",
        300,
        900,
    ));
    c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "spot-counter"], |d| {
        d["SecondaryStatus"] == "Training"
    });
    wait_for_log(&c, "spot-counter", "step=5\n", 1);

    // A job that is not spot arrives on the full cluster and starts within seconds.
    let submitted = Instant::now();
    c.create_training_job(&request(&c, "urgent", &sleeper, json!({"SECONDS_TO_RUN": "3"})));
    c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "urgent"], |d| {
        d["SecondaryStatus"] == "Training" || d["TrainingJobStatus"] != "InProgress"
    });
    let waited = submitted.elapsed();
    assert!(waited < Duration::from_secs(15), "the on-demand job waited {waited:?} for its place");
    let interrupted = c.json(&["training-jobs", "describe", "spot-counter"]);
    assert!(
        statuses(&interrupted).contains(&"Interrupted".to_string()),
        "the spot job was interrupted: {interrupted:#}"
    );
    assert_eq!(interrupted["TrainingJobStatus"], "InProgress", "an interrupted job waits to resume: {interrupted:#}");
    let urgent = ended(&c, "urgent", Duration::from_secs(60));
    assert_eq!(urgent["TrainingJobStatus"], "Completed", "{urgent:#}");

    // The spot job resumes once there is room, from where it was, and completes.
    let done = ended(&c, "spot-counter", Duration::from_secs(120));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let logs = c.logs("spot-counter");
    let saved = last_number_after(&logs, "checkpoint written at step=");
    assert!(saved >= 5, "the checkpoint was written in the grace period: {logs}");
    assert_eq!(
        last_number_after(&logs, "resumed at step="),
        saved,
        "the second run restored the checkpoint the first one wrote: {logs}"
    );
    assert!(logs.contains(&format!("step={}\n", saved + 1)), "it went on from there: {logs}");
    assert_eq!(logs.matches("step=1\n").count(), 1, "it did not start over: {logs}");
    assert!(logs.contains("finished at step=60"), "{logs}");
    let checkpoint = c.output_dir().join("checkpoints/spot-counter/step");
    assert_eq!(std::fs::read_to_string(&checkpoint).expect("checkpoint").trim(), "60");

    // Its history: trained, interrupted, waited, trained again, completed.
    let history = statuses(&done);
    let interruption = history.iter().position(|s| s == "Interrupted").expect("Interrupted in the history");
    assert!(history[..interruption].contains(&"Training".to_string()), "{history:?}");
    assert!(history[interruption..].contains(&"Pending".to_string()), "{history:?}");
    assert!(history[interruption..].contains(&"Training".to_string()), "{history:?}");
    assert_eq!(history.last().map(String::as_str), Some("Completed"), "{history:?}");

    // It was billed for the time it trained, not for the time it waited for the urgent job.
    let billable = done["BillableTimeInSeconds"].as_i64().expect("BillableTimeInSeconds");
    let training = done["TrainingTimeInSeconds"].as_i64().expect("TrainingTimeInSeconds");
    assert!(billable >= 12 && billable < training, "billable {billable} s, training {training} s");
    let table = c.cli(&["training-jobs", "describe", "spot-counter"]);
    assert!(table.stdout().contains("Managed spot training savings"), "{}", table.stdout());
    assert_eq!(urgent["BillableTimeInSeconds"], urgent["TrainingTimeInSeconds"], "{urgent:#}");
}

fn max_wait_time_ends_a_spot_job_that_waited_and_ran_too_long(backend: Backend) {
    let (c, _agent) = one_slot_cluster(backend);
    let counter = c.install_program("counter.sh", COUNTER);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);

    // The spot job waits about 5 s behind a job that is not spot (spot jobs never preempt), then
    // runs; 20 s after it was created it has to stop, although its runtime is not over.
    c.create_training_job(&request(&c, "blocker", &sleeper, json!({"SECONDS_TO_RUN": "5"})));
    c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "blocker"], |d| {
        d["SecondaryStatus"] == "Training"
    });
    c.create_training_job(&spot(request(&c, "patient", &counter, json!({"TARGET": "100000"})), "patient", 20, 20));
    let waiting = c.json(&["training-jobs", "describe", "patient"]);
    assert_eq!(waiting["TrainingJobStatus"], "InProgress");
    // One that may wait only 2 s in all ends while it waits, never having started.
    c.create_training_job(&spot(request(&c, "impatient", &counter, json!({"TARGET": "1"})), "impatient", 2, 2));
    let impatient = ended(&c, "impatient", Duration::from_secs(30));
    assert_eq!(impatient["SecondaryStatus"], "MaxWaitTimeExceeded", "{impatient:#}");
    assert!(impatient.get("TrainingStartTime").is_none(), "it never started: {impatient:#}");
    assert_eq!(
        c.json(&["training-jobs", "describe", "blocker"])["TrainingJobStatus"],
        "InProgress",
        "it ended while the blocker still ran"
    );
    let blocker = ended(&c, "blocker", Duration::from_secs(60));
    assert_eq!(blocker["TrainingJobStatus"], "Completed", "a spot job never preempts: {blocker:#}");

    let done = ended(&c, "patient", Duration::from_secs(60));
    assert_eq!(done["TrainingJobStatus"], "Stopped", "{done:#}");
    assert_eq!(done["SecondaryStatus"], "MaxWaitTimeExceeded", "{done:#}");
    let logs = c.logs("patient");
    assert!(logs.contains("checkpoint written at step="), "it was stopped with a grace period: {logs}");
    // The last model and the checkpoints are kept.
    assert!(
        done["ModelArtifacts"]["S3ModelArtifacts"].as_str().is_some_and(|m| m.ends_with("model.tar.gz")),
        "{done:#}"
    );
    assert!(c.output_dir().join("checkpoints/patient/step").exists());
    let created = done["CreationTime"].as_f64().expect("CreationTime");
    let ended_at = done["TrainingEndTime"].as_f64().expect("TrainingEndTime");
    assert!((20.0..40.0).contains(&(ended_at - created)), "ended {} s after it was created", ended_at - created);
}

/// The counter, with a checkpoint directory per trial (trials of one definition share its
/// CheckpointConfig).
fn trial_counter() -> String {
    COUNTER.replace(
        r#"ck="$SM_CHECKPOINT_DIR/step""#,
        r#"mkdir -p "$SM_CHECKPOINT_DIR/$TRAINING_JOB_NAME"; ck="$SM_CHECKPOINT_DIR/$TRAINING_JOB_NAME/step""#,
    )
}

/// The [start, end) of each time the job trained, in seconds.
fn training_spans(described: &Value) -> Vec<(f64, f64)> {
    described["SecondaryStatusTransitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["Status"] == "Training")
        .map(|t| (t["StartTime"].as_f64().unwrap_or_default(), t["EndTime"].as_f64().unwrap_or(f64::MAX)))
        .collect()
}

fn trials_of_a_spot_tuning_job_give_way_resume_and_stay_within_max_parallel(backend: Backend) {
    let c = Coordinator::start_on(backend);
    // Room for two ml.m5.large, or one ml.m5.xlarge.
    let _agent = c.start_agent(
        "two-slots",
        &["--advertise-vcpus", "4", "--advertise-memory-mib", "16384", "--stop-grace-seconds", "10"],
        &[],
    );
    let counter = c.install_program("trial-counter.sh", &trial_counter());
    let sleeper = c.install_program("sleeper.sh", SLEEPER);

    let mut r = spot_tuning_request("spot-tuning", &counter, "step", 3);
    r["TrainingJobDefinition"]["Environment"] = json!({"TARGET": "25"});
    let file = c.write("spot-tuning.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    // The first trial counts; a job that needs the whole agent arrives.
    let first = trial_names(&c, "spot-tuning", 1).remove(0);
    let first = first.as_str();
    wait_for_log(&c, first, "step=3\n", 1);
    let mut big = request(&c, "whole-agent", &sleeper, json!({"SECONDS_TO_RUN": "3"}));
    big["ResourceConfig"]["InstanceType"] = json!("ml.m5.xlarge");
    c.create_training_job(&big);
    let big = ended(&c, "whole-agent", Duration::from_secs(60));
    assert_eq!(big["TrainingJobStatus"], "Completed", "{big:#}");

    let tuning = c.wait_json_for(Duration::from_secs(180), &["tuning-jobs", "describe", "spot-tuning"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(tuning["HyperParameterTuningJobStatus"], "Completed", "{tuning:#}");
    assert_eq!(tuning["TrainingJobStatusCounters"]["Completed"], 3, "{tuning:#}");
    assert_eq!(tuning["ObjectiveStatusCounters"]["Succeeded"], 3, "{tuning:#}");

    let names = trial_names(&c, "spot-tuning", 3);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], first);
    let trials: Vec<Value> = names.iter().map(|n| c.json(&["training-jobs", "describe", n])).collect();
    let first_described = &trials[0];
    assert!(statuses(first_described).contains(&"Interrupted".to_string()), "{first_described:#}");
    let logs = c.logs(first);
    assert_eq!(
        last_number_after(&logs, "resumed at step="),
        last_number_after(&logs, "checkpoint written at step="),
        "the trial resumed from its own checkpoint: {logs}"
    );
    assert_eq!(first_described["FinalMetricDataList"][0]["Value"].as_f64(), Some(25.0), "{first_described:#}");
    // MaxParallelTrainingJobs does not count the interrupted trial: the second was launched while
    // the first waited to resume...
    let second_created = trials[1]["CreationTime"].as_f64().expect("CreationTime");
    let resumed = training_spans(first_described).get(1).map(|s| s.0).expect("the first trial trained twice");
    assert!(second_created < resumed, "trial 2 created at {second_created}, trial 1 resumed at {resumed}");
    // ...and yet never more than one trial trained at a time, though the agent had room for two.
    let mut spans: Vec<(f64, f64)> = trials.iter().flat_map(training_spans).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two trials trained at once: {spans:?}\n{}", c.daemon.log());
    }
}

fn a_spot_gang_is_interrupted_whole_and_resumes_whole(backend: Backend) {
    let metrics = format!("127.0.0.1:{}", trainyard_testkit::free_port());
    let c = Coordinator::start_on_with_args(backend, &["--metrics-listen", &metrics]);
    let slot = ["--advertise-vcpus", "2", "--advertise-memory-mib", "8192", "--stop-grace-seconds", "10"];
    let _left = c.start_agent("left", &slot, &[]);
    let _right = c.start_agent("right", &slot, &[]);
    // Each instance keeps its own checkpoint (they share the job's CheckpointConfig).
    let program = COUNTER.replace(
        r#"ck="$SM_CHECKPOINT_DIR/step""#,
        r#"mkdir -p "$SM_CHECKPOINT_DIR/$SM_CURRENT_HOST"; ck="$SM_CHECKPOINT_DIR/$SM_CURRENT_HOST/step""#,
    );
    let counter = c.install_program("gang-counter.sh", &program);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);
    let mut gang = spot(request(&c, "gang", &counter, json!({"TARGET": "40"})), "gang", 300, 900);
    gang["ResourceConfig"]["InstanceCount"] = json!(2);
    c.create_training_job(&gang);
    wait_for_log(&c, "gang", "step=3\n", 2);

    // One instance's place is needed; the whole gang gives way, never half of it.
    c.create_training_job(&request(&c, "single", &sleeper, json!({"SECONDS_TO_RUN": "3"})));
    let single = ended(&c, "single", Duration::from_secs(60));
    assert_eq!(single["TrainingJobStatus"], "Completed", "{single:#}");
    let logs = c.logs("gang");
    assert_eq!(logs.matches("checkpoint written at step=").count(), 2, "both instances were interrupted: {logs}");
    let (status, page) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200, "{page}");
    assert!(page.lines().any(|l| l == "trainyard_spot_interruptions_total 1"), "one interruption counted: {page}");

    let done = ended(&c, "gang", Duration::from_secs(120));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert_eq!(statuses(&done).iter().filter(|s| *s == "Interrupted").count(), 1, "{done:#}");
    let logs = c.logs("gang");
    assert_eq!(logs.matches("resumed at step=").count(), 2, "both instances resumed: {logs}");
    assert_eq!(logs.matches("finished at step=40").count(), 2, "{logs}");
    for host in ["algo-1", "algo-2"] {
        let checkpoint = c.output_dir().join(format!("checkpoints/gang/{host}/step"));
        assert_eq!(std::fs::read_to_string(&checkpoint).expect("checkpoint").trim(), "40", "{host}");
    }
}

fn a_higher_priority_goes_first_within_the_limit_the_operator_set(backend: Backend) {
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    std::fs::write(&config, "[limits]\nmax_job_priority = 10\n").expect("write");
    let c = Coordinator::start_on_with_args(backend, &["--config", config.to_str().expect("utf-8")]);
    let _agent = c.start_agent("one-slot", &["--advertise-vcpus", "2", "--advertise-memory-mib", "8192"], &[]);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);
    let tagged = |name: &str, priority: &str| {
        let mut r = request(&c, name, &sleeper, json!({"SECONDS_TO_RUN": "1"}));
        r["Tags"] = json!([{"Key": "team", "Value": "research"}, {"Key": "trainyard:priority", "Value": priority}]);
        r
    };

    // Above the operator's limit, or not a number: refused, naming the field and the limit.
    for (value, expected) in [("50", "from -100 to 10"), ("urgent", "must be an integer from -100 to 100")] {
        let file = c.write("refused.json", &tagged("refused", value).to_string());
        let out = c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]);
        assert_ne!(out.code(), 0, "{value} accepted");
        assert!(out.stderr().contains("Tags[1].Value") && out.stderr().contains(expected), "{}", out.stderr());
    }
    let listed = c.json(&["training-jobs", "list"]);
    assert_eq!(listed["TrainingJobSummaries"], json!([]), "nothing stored from a refused request");

    // Behind a running job, a normal job and then a high one wait; the high one goes first.
    c.create_training_job(&request(&c, "running", &sleeper, json!({"SECONDS_TO_RUN": "3"})));
    c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "running"], |d| {
        d["SecondaryStatus"] == "Training"
    });
    c.create_training_job(&tagged("normal", "0"));
    c.create_training_job(&tagged("high", "10"));
    let normal = ended(&c, "normal", Duration::from_secs(60));
    let high = ended(&c, "high", Duration::from_secs(60));
    assert_eq!((&normal["TrainingJobStatus"], &high["TrainingJobStatus"]), (&json!("Completed"), &json!("Completed")));
    let (normal_start, high_start) =
        (normal["TrainingStartTime"].as_f64().expect("start"), high["TrainingStartTime"].as_f64().expect("start"));
    assert!(high_start < normal_start, "high started at {high_start}, normal at {normal_start}");
}

fn an_interruption_survives_a_coordinator_killed_while_the_job_saves(backend: Backend) {
    let (mut c, agent) = one_slot_cluster(backend);
    // It takes 4 s to save its checkpoint once asked to stop.
    let slow_saver = COUNTER.replace("trap 'echo", "trap 'sleep 4; echo");
    let program = c.install_program("slow-saver.sh", &slow_saver);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);
    c.create_training_job(&spot(request(&c, "slow-saver", &program, json!({"TARGET": "30"})), "slow-saver", 300, 900));
    wait_for_log(&c, "slow-saver", "step=3\n", 1);
    c.create_training_job(&request(&c, "urgent", &sleeper, json!({"SECONDS_TO_RUN": "1"})));
    c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "slow-saver"], |d| {
        d["SecondaryStatusTransitions"]
            .as_array()
            .and_then(|t| t.last())
            .is_some_and(|t| t["StatusMessage"].as_str().is_some_and(|m| m.starts_with("Interrupting")))
    });
    // The decision is stored; the coordinator dies while the program saves, and a new one reads
    // the stopped instance as the interruption it was, not as a stop.
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    c.restart(trainyard_testkit::SIGKILL);
    let urgent = ended(&c, "urgent", Duration::from_secs(60));
    assert_eq!(urgent["TrainingJobStatus"], "Completed", "{urgent:#}");
    let done = ended(&c, "slow-saver", Duration::from_secs(120));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert!(statuses(&done).contains(&"Interrupted".to_string()), "{done:#}");
    let logs = c.logs("slow-saver");
    assert_eq!(
        last_number_after(&logs, "resumed at step="),
        last_number_after(&logs, "checkpoint written at step="),
        "{logs}"
    );
    assert!(logs.contains("finished at step=30"), "{logs}");
}

/// Ten epochs of 0.4 s, resumable (`$SM_CHECKPOINT_DIR/<job>/epoch`). Trials 1–3 score 0 for five
/// epochs, then 100; later trials score 10 throughout.
const EPOCHS: &str = r#"#!/bin/sh
n=$(echo "$TRAINING_JOB_NAME" | sed 's/.*-\([0-9][0-9][0-9]\)-[0-9a-f]*$/\1/')
dir="$SM_CHECKPOINT_DIR/$TRAINING_JOB_NAME"; mkdir -p "$dir"; ck="$dir/epoch"
epoch=0
if [ -f "$ck" ]; then epoch=$(cat "$ck"); echo "resumed at epoch=$epoch"; fi
trap 'echo "$epoch" > "$ck"; echo "checkpoint written at epoch=$epoch"; exit 143' TERM
while [ "$epoch" -lt 10 ]; do
  epoch=$((epoch + 1))
  if [ "$n" -le 3 ]; then if [ "$epoch" -le 5 ]; then v=0; else v=100; fi; else v=10; fi
  echo "epoch=$epoch score=$v"
  sleep 0.4 & wait $!
done
echo finished
"#;

fn the_median_rule_sees_a_resumed_trial_as_one_curve(backend: Backend) {
    let (c, _agent) = one_slot_cluster(backend);
    let program = c.install_program("epochs.sh", EPOCHS);
    let sleeper = c.install_program("sleeper.sh", SLEEPER);
    let mut r = spot_tuning_request("median", &program, "score", 4);
    r["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = json!("Auto");
    let file = c.write("median.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    // Three trials finish; the fourth is interrupted after its third epoch.
    let names = trial_names(&c, "median", 4);
    let fourth = names[3].clone();
    wait_for_log(&c, &fourth, "epoch=3 ", 1);
    c.create_training_job(&request(&c, "urgent", &sleeper, json!({"SECONDS_TO_RUN": "2"})));

    let done = ended(&c, &fourth, Duration::from_secs(120));
    let logs = c.logs(&fourth);
    assert!(statuses(&done).contains(&"Interrupted".to_string()), "{done:#}");
    assert!(logs.contains("resumed at epoch="), "{logs}");
    // The others averaged 0 over five epochs and 16.7 over six: a curve of 10s falls below the
    // median at its sixth epoch. Counted from its resumption instead, it would run to the ninth.
    assert_eq!(done["TrainingJobStatus"], "Stopped", "stopped early: {done:#}\n{logs}");
    let last_epoch = last_number_after(&logs, "epoch=");
    assert!((6..=7).contains(&last_epoch), "stopped at epoch {last_epoch}: {logs}");
}

on_both_backends!(
    the_median_rule_sees_a_resumed_trial_as_one_curve,
    an_interruption_survives_a_coordinator_killed_while_the_job_saves,
    a_higher_priority_goes_first_within_the_limit_the_operator_set,
    a_spot_gang_is_interrupted_whole_and_resumes_whole,
    an_on_demand_job_interrupts_a_spot_job_which_resumes_from_its_checkpoint,
    max_wait_time_ends_a_spot_job_that_waited_and_ran_too_long,
    trials_of_a_spot_tuning_job_give_way_resume_and_stay_within_max_parallel,
);
