//! Faults injected for real: the coordinator is killed (SIGKILL) at random moments while a tuning
//! job of a few hundred short trials runs on three agents (on SQLite and on PostgreSQL), and once
//! mid-way through a job whose early stopping depends on the trials before the kill; PostgreSQL
//! crashes under load, and stays down while jobs end and write their logs. Nothing may be lost or
//! run twice.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, Random, example_json, on_both_backends};

/// Each run appends its job name to `$RUNS` (one short O_APPEND write: atomic), works a moment,
/// and reports a score.
const PROGRAM: &str = r#"#!/bin/sh
echo "$TRAINING_JOB_NAME" >> "$RUNS"
sleep 0.3
echo "score=0.$$"
mkdir -p "$SM_MODEL_DIR"
"#;

/// What the coordinator says while its database is away: requests fail (the client is told),
/// events and the loop's checks wait for the store to come back, pooled connections are found broken.
const DATABASE_AWAY: &[&str] = &[
    "terminating connection due to immediate shutdown command",
    // Over TLS the server's end often shows as a reset rather than its goodbye message.
    "Connection reset by peer",
    "health: the store does not answer; reporting NOT_SERVING",
    // A connection taken once the database is back, after waiting for it.
    "time to acquire exceeded slow threshold",
    "error occurred while testing the connection on-release",
    r#"request failed operation="CreateTrainingJob" error=storage unavailable"#,
    "event not handled; catching up from the store",
    "periodic checks failed",
    "scheduling failed",
    "progress not stored",
    "waiting jobs not stored",
    // The leader's lease is renewed every 2 s; a single coordinator waits for the store to return.
    "could not renew the leader's lease",
    "renewing the leader's lease took too long",
    // Jobs' output meanwhile, kept in memory until the store is back.
    "log lines not stored yet: the store is away",
];

on_both_backends!(
    killing_the_coordinator_at_random_moments_loses_no_trial_and_runs_none_twice,
    the_median_rule_remembers_earlier_trials_across_a_coordinator_restart,
    log_lines_written_while_the_coordinator_is_down_are_kept,
    log_lines_in_flight_to_a_coordinator_that_dies_are_sent_again
);

fn killing_the_coordinator_at_random_moments_loses_no_trial_and_runs_none_twice(backend: Backend) {
    const TRIALS: u64 = 300;
    let mut c = Coordinator::start_on(backend);
    let program = c.install_program("trial.sh", PROGRAM);
    let runs = c.shared_file("runs.log");
    let agents: Vec<_> =
        (1..=3).map(|i| c.start_agent(&format!("host-{i}"), &["--advertise-vcpus", "8"], &[])).collect();
    for agent in &agents {
        agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    }

    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!("survives-crashes");
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Random");
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": TRIALS, "MaxParallelTrainingJobs": 12});
    config["TrainingJobEarlyStoppingType"] = json!("Off");
    let definition = &mut r["TrainingJobDefinition"];
    definition["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    definition["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    definition["Environment"] = json!({"RUNS": runs.display().to_string()});
    let file = c.write("job.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    let (mut random, seed) = Random::from_clock();
    let started = Instant::now();
    let mut kills = 0;
    let status = |c: &Coordinator| c.json(&["tuning-jobs", "describe", "survives-crashes"]);
    loop {
        let pause = Duration::from_millis(300 + random.next_u64() % 2_700);
        std::thread::sleep(pause);
        let now = status(&c);
        if now["HyperParameterTuningJobStatus"] != "InProgress" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(400), "seed {seed}: not done after 400 s: {now:#}");
        if kills < 12 {
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
    let failed = c.json(&["tuning-jobs", "trials", "survives-crashes", "--status", "Failed"]);
    let reasons: Vec<String> = failed["TrainingJobSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["TrainingJobName"].as_str())
        .map(|name| {
            let d = c.json(&["training-jobs", "describe", name]);
            format!("{name}: {}", d["FailureReason"])
        })
        .collect();
    assert_eq!(counters["Completed"], json!(TRIALS), "seed {seed}: {counters:#}; failed: {reasons:#?}");
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
    let leftovers = std::process::Command::new("pgrep").args(["-f", &program]).output();
    let left = leftovers.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert!(left.is_empty(), "seed {seed}: trial processes left running: {left}");
    println!("seed {seed}: {kills} coordinator kills, {TRIALS} trials, {:.0} s", started.elapsed().as_secs_f64());
}

/// Starts the training job `name`, which runs `program`; with `score_regex`, its metric `score`
/// is read by it.
fn start_writer(c: &Coordinator, name: &str, program: &str, score_regex: Option<&str>) {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    if let Some(regex) = score_regex {
        r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": regex}]);
    }
    c.create_training_job(&r);
}

/// The lines of the job's stored log that say `line N`, as "line N", in the log's order.
fn numbered_lines(c: &Coordinator, job: &str) -> Vec<String> {
    let out = c.cli(&["training-jobs", "logs", job]);
    out.stdout().lines().filter_map(|l| l.trim_end().rsplit_once("line ").map(|(_, n)| format!("line {n}"))).collect()
}

/// Lines 1 to `count` as [`numbered_lines`] gives them.
fn lines_up_to(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("line {i}")).collect()
}

/// The ended job's numbered lines once `count` are stored, or after 10 s: a job's last lines can
/// reach the store after its end does.
fn numbered_lines_once_stored(c: &Coordinator, job: &str, count: usize) -> Vec<String> {
    let mut kept = Vec::new();
    trainyard_testkit::wait_until(Duration::from_secs(10), || {
        kept = numbered_lines(c, job);
        kept.len() >= count
    });
    kept
}

/// A job keeps writing its log and reporting a metric while its coordinator is down (killed,
/// restarted a few seconds later): its agent keeps both and sends them once connected again; the
/// job's log has every line, in order, once, and its final metric is the one reported meanwhile.
fn log_lines_written_while_the_coordinator_is_down_are_kept(backend: Backend) {
    let mut c = Coordinator::start_on(backend);
    let agent = c.start_agent("writer", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    // Lines 1-20, a pause (the coordinator is killed), 21-40 while it is down, a pause, 41-50.
    let program = c.install_program(
        "writer.sh",
        "#!/bin/sh\nfor i in $(seq 1 20); do echo \"line $i\"; done\necho score=0.1\nsleep 4\n\
         for i in $(seq 21 40); do echo \"line $i\"; done\necho score=0.3\nsleep 4\n\
         for i in $(seq 41 50); do echo \"line $i\"; done\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    start_writer(&c, "writer", &program, Some("score=([0-9.]+)"));
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(30), || numbered_lines(&c, "writer").len() >= 20),
        "the first lines: {:?}",
        numbered_lines(&c, "writer")
    );
    c.stop(trainyard_testkit::SIGKILL);
    std::thread::sleep(Duration::from_millis(6500));
    c.respawn();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "writer"], |j| {
        j["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    // Its last metric, reported while the coordinator was down, is its final one.
    assert_eq!(done["FinalMetricDataList"][0]["Value"], 0.3, "{done:#}");
    assert_eq!(numbered_lines_once_stored(&c, "writer", 50), lines_up_to(50), "every line, in order, once");
}

/// A job writes its log and reports a metric steadily while its coordinator stops answering
/// (paused, as a host that vanished: the agent's stream stays open and what it sends piles up
/// unread), then dies and is restarted. What was sent to it was never stored: the agent keeps
/// every line and sample until the coordinator says it stored it and sends the rest again to the
/// next one. The job's log has every line, in order, once, and its metric every sample, once.
fn log_lines_in_flight_to_a_coordinator_that_dies_are_sent_again(backend: Backend) {
    const LINES: usize = 600;
    let mut c = Coordinator::start_on(backend);
    let agent = c.start_agent("steady", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    // A line every ~6 ms, a score every 100 lines (more than the second apart that the
    // coordinator keeps samples of one metric at least).
    let program = c.install_program(
        "steady.sh",
        &format!(
            "#!/bin/sh\nfor i in $(seq 1 {LINES}); do echo \"line $i\"; \
             if [ $((i % 100)) -eq 0 ]; then echo \"score=$i\"; sleep 0.5; fi; sleep 0.005; done\n\
             mkdir -p \"$SM_MODEL_DIR\"\n"
        ),
    );
    start_writer(&c, "steady", &program, Some("score=([0-9]+)"));
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(30), || numbered_lines(&c, "steady").len() >= 50),
        "the first lines: {:?}",
        numbered_lines(&c, "steady")
    );
    // Paused past the first score (~line 100), then killed.
    c.daemon.signal(trainyard_testkit::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2000));
    c.stop(trainyard_testkit::SIGKILL);
    c.respawn();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "steady"], |j| {
        j["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let expected = lines_up_to(LINES);
    let kept = numbered_lines_once_stored(&c, "steady", LINES);
    let missing: Vec<&String> = expected.iter().filter(|l| !kept.contains(l)).collect();
    assert!(missing.is_empty(), "{} lines lost: {missing:?}", missing.len());
    assert_eq!(kept, expected, "every line, in order, once");
    let metrics = c.json(&["training-jobs", "metrics", "steady"]);
    let scores: Vec<f64> = metrics["Metrics"][0]["Values"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    assert_eq!(scores, [100.0, 200.0, 300.0, 400.0, 500.0, 600.0], "every sample, once: {metrics:#}");
    assert_eq!(done["FinalMetricDataList"][0]["Value"], 600.0, "{done:#}");
}

/// The median rule compares a running trial with the curves of the trials that finished before
/// it. Those curves survive the coordinator: killed (SIGKILL) once three good trials have
/// finished, the restarted coordinator still stops the poor trials that follow, as the first one
/// would have.
fn the_median_rule_remembers_earlier_trials_across_a_coordinator_restart(backend: Backend) {
    let mut c = Coordinator::start_on(backend);
    // Trials 1-3 score 0.9 at every step, later ones 0.1: each step a metric point, 6 steps.
    let program = c.install_program(
        "curves.sh",
        "#!/bin/sh\nindex=$(echo \"$TRAINING_JOB_NAME\" | sed 's/^curves-0*\\([0-9]*\\)-.*/\\1/')\n\
         score=0.1\n[ \"$index\" -le 3 ] && score=0.9\n\
         for step in 1 2 3 4 5 6; do echo \"score=$score\"; sleep 0.4; done\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    let agent = c.start_agent("curves", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!("curves");
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Random");
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": 5, "MaxParallelTrainingJobs": 1});
    config["TrainingJobEarlyStoppingType"] = json!("Auto");
    let definition = &mut r["TrainingJobDefinition"];
    definition["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    definition["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    let file = c.write("curves.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "curves"], |d| {
        d["TrainingJobStatusCounters"]["Completed"] == 3
    });
    c.restart(trainyard_testkit::SIGKILL);

    let done = c.wait_json_for(Duration::from_secs(90), &["tuning-jobs", "describe", "curves"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let trials = c.json(&["tuning-jobs", "trials", "curves", "--sort-by", "Name", "--sort-order", "Ascending"]);
    let outcomes: Vec<(String, String)> = trials["TrainingJobSummaries"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| {
            let name = t["TrainingJobName"].as_str().expect("name");
            let described = c.json(&["training-jobs", "describe", name]);
            let last = described["SecondaryStatusTransitions"].as_array().and_then(|t| t.last().cloned());
            let message = last.map(|l| l["StatusMessage"].as_str().unwrap_or_default().to_string());
            (t["TrainingJobStatus"].as_str().unwrap_or_default().to_string(), message.unwrap_or_default())
        })
        .collect();
    let early = "Training job stopped early: its objective was worse than the median of earlier trials";
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(statuses, ["Completed", "Completed", "Completed", "Stopped", "Stopped"], "{outcomes:#?}");
    assert!(outcomes[3..].iter().all(|o| o.1 == early), "{outcomes:#?}");
}

/// PostgreSQL crashes and comes back while clients submit: every request that was answered OK is
/// stored and gets queued, every failed one was reported to its client with a clear error and is
/// either absent or stored whole, and the coordinator serves again without a restart of its own.
#[test]
fn a_postgresql_crash_under_load_loses_no_accepted_request() {
    let pg = trainyard_testkit::PgServer::start_durable();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    for expected in DATABASE_AWAY {
        c.expect_log(expected);
    }
    let template: Value = example_json("training-job.json");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            let template = template.clone();
            let dir = c.dir.path().to_path_buf();
            let address = c.address.clone();
            let (ca_file, token) = (c.ca_file(), c.token.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("load-{t}-{i}");
                    let mut request = template.clone();
                    request["TrainingJobName"] = json!(name);
                    let file = dir.join(format!("{name}.json"));
                    std::fs::write(&file, request.to_string()).expect("write");
                    let out = std::process::Command::new(trainyard_testkit::binary("trainyard"))
                        .env("TRAINYARD_COORDINATOR", &address)
                        .env("TRAINYARD_CA_FILE", &ca_file)
                        .env("TRAINYARD_TOKEN", &token)
                        .args(["training-jobs", "create", "--file"])
                        .arg(&file)
                        .output()
                        .expect("run trainyard");
                    let error = String::from_utf8_lossy(&out.stderr).to_string();
                    outcomes.push((name, out.status.success(), error, Instant::now()));
                    i += 1;
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let crashed_at = Instant::now();
    pg.restart_immediately();
    let back_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes: Vec<_> = clients.into_iter().flat_map(|h| h.join().expect("client")).collect();

    let accepted: Vec<&str> = outcomes.iter().filter(|o| o.1).map(|o| o.0.as_str()).collect();
    let failed: Vec<&(String, bool, String, Instant)> = outcomes.iter().filter(|o| !o.1).collect();
    println!("{} accepted, {} failed while PostgreSQL restarted", accepted.len(), failed.len());
    assert!(outcomes.iter().any(|o| o.1 && o.3 > back_at), "nothing was accepted after PostgreSQL came back");
    assert!(outcomes.iter().any(|o| o.1 && o.3 < crashed_at), "nothing was accepted before the crash");
    for (name, _, error, _) in &failed {
        assert!(!error.trim().is_empty() && !error.contains("panicked"), "{name}: unclear error {error:?}");
        // Absent, or stored whole (a commit whose answer was lost): never half a job.
        let out = c.cli(&["--output", "json", "training-jobs", "describe", name]);
        if out.code() == 0 {
            let job: Value = serde_json::from_str(&out.stdout()).expect("json");
            assert_eq!(job["InputDataConfig"], template["InputDataConfig"], "{name} stored in part");
        } else {
            assert_eq!(out.code(), 4, "{name}: {}", out.stderr());
        }
    }
    // Every accepted job is stored and reaches the queue (no agent runs them here).
    for name in &accepted {
        let job = c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", name], |j| {
            j["SecondaryStatus"] == "Pending"
        });
        assert_eq!(job["TrainingJobStatus"], "InProgress", "{name}: {job:#}");
    }
}

/// The gRPC health service follows the database: NOT_SERVING while PostgreSQL is down (a load
/// balancer or a probe sends no one there), SERVING again when it is back, with no restart.
#[test]
fn health_follows_the_database() {
    let pg = trainyard_testkit::PgServer::start_durable();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    for expected in DATABASE_AWAY.iter().chain(&["health: the store does not answer"]) {
        c.expect_log(expected);
    }
    let health = |c: &Coordinator| c.cli(&["health"]);
    let first = health(&c);
    first.assert_success();
    assert_eq!(first.stdout().trim(), "SERVING");
    pg.stop_immediately();
    let mut last = String::new();
    let down = trainyard_testkit::wait_until(Duration::from_secs(15), || {
        let out = health(&c);
        last = format!("{} {}", out.stdout(), out.stderr());
        out.code() == 1 && out.stdout().trim() == "NOT_SERVING"
    });
    assert!(down, "health while PostgreSQL is down: {last}");
    assert!(last.contains("is its database reachable?"), "{last}");
    // A call that needs the store says it is unavailable in seconds, not after the pool's
    // default 30 s wait for a connection (the loop's events wait as long for theirs).
    let asked = std::time::Instant::now();
    let describe = c.cli(&["training-jobs", "describe", "any-job"]);
    let waited = asked.elapsed();
    assert_eq!(describe.code(), 6, "UNAVAILABLE, after {waited:?}: {}", describe.stderr());
    assert!(describe.stderr().contains("storage unavailable"), "{}", describe.stderr());
    assert!(waited < Duration::from_secs(15), "the describe answered after {waited:?}");
    pg.start_again();
    let up = trainyard_testkit::wait_until(Duration::from_secs(20), || health(&c).code() == 0);
    assert!(up, "health after PostgreSQL came back: {}", health(&c).stdout());
}

/// A job that ends while PostgreSQL is down: the report of its end may not be stored (the store
/// call fails, or waits until the database is back, depending on timing), and the agent's stream
/// stays up, so no re-registration repeats it. The agent sends the final state again until the
/// coordinator confirms it (ForgetInstance): the job completes once the database is back either way.
#[test]
fn a_job_that_ends_while_the_database_is_down_still_completes() {
    let pg = trainyard_testkit::PgServer::start_durable();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    for expected in DATABASE_AWAY {
        c.expect_log(expected);
    }
    let agent = c.start_agent("outage", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    let program =
        c.install_program("ends-during-outage.sh", "#!/bin/sh\nsleep 3\nmkdir -p \"$SM_MODEL_DIR\"\necho done\n");
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("ends-during-outage");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    c.create_training_job(&r);
    c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "ends-during-outage"], |j| {
        j["SecondaryStatus"] == "Training"
    });
    // Down before the program ends (3 s), back well after.
    pg.stop_immediately();
    std::thread::sleep(Duration::from_secs(6));
    pg.start_again();
    let done = c.wait_json_for(Duration::from_secs(40), &["training-jobs", "describe", "ends-during-outage"], |j| {
        j["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
}

/// A job that writes its log while PostgreSQL is down, its first lines among them (the
/// coordinator has never seen this job's log, so it does not know where its numbering stands):
/// every line is in the job's log once the database is back, in order and once each, and the
/// job runs on untouched — its agent is not taken for lost while the coordinator waits for the
/// store, and the job is not started a second time.
#[test]
fn log_lines_written_while_the_database_is_down_are_all_kept() {
    let pg = trainyard_testkit::PgServer::start_durable();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    for expected in DATABASE_AWAY {
        c.expect_log(expected);
    }
    let agent = c.start_agent("chatty", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    // Silent at first (the database goes down before its first line), then a line every 50 ms
    // for 9 s, across the outage.
    let program = c.install_program(
        "chatty.sh",
        "#!/bin/sh\nsleep 2\ni=1\nwhile [ $i -le 180 ]; do echo \"line $i\"; [ $i = 90 ] && echo 'score=0.42'; i=$((i+1)); sleep 0.05; done\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    start_writer(&c, "chatty", &program, Some("score=([0-9.]+)"));
    c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "chatty"], |j| {
        j["SecondaryStatus"] == "Training"
    });
    pg.stop_immediately();
    std::thread::sleep(Duration::from_secs(8));
    pg.start_again();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "chatty"], |j| {
        j["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let expected = lines_up_to(180);
    let kept = numbered_lines_once_stored(&c, "chatty", expected.len());
    // Its one metric, reported while the database was down, is its final metric.
    assert_eq!(done["FinalMetricDataList"][0]["MetricName"], "score", "{done:#}");
    assert_eq!(done["FinalMetricDataList"][0]["Value"], 0.42, "{done:#}");
    assert!(
        kept.len() >= expected.len(),
        "{} of {} lines kept; missing: {:?}",
        kept.len(),
        expected.len(),
        expected.iter().filter(|l| !kept.contains(l)).take(20).collect::<Vec<_>>()
    );
    // (A second run would print its lines again.)
    assert_eq!(kept, expected, "in order, once each");
}

/// PostgreSQL stays down longer than a single coordinator waits for it (three lease periods): the
/// coordinator exits for its supervisor to restart it (here, the test). The log lines it held by
/// then are kept in its data directory and stored by the next start; those written while no
/// coordinator runs wait in the agent. The job's log has every line, in order, once.
#[test]
fn log_lines_held_by_a_coordinator_that_exits_are_kept() {
    let pg = trainyard_testkit::PgServer::start_durable();
    let mut c = Coordinator::start_with_database(&pg.fresh_database());
    for expected in DATABASE_AWAY.iter().chain(&[
        "stepping down: this coordinator no longer leads",
        "log lines the store has not taken yet are kept for the next start",
    ]) {
        c.expect_log(expected);
    }
    let agent = c.start_agent("patient", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    let program = c.install_program(
        "patient.sh",
        "#!/bin/sh\nsleep 2\nfor i in $(seq 1 40); do echo \"line $i\"; sleep 0.1; done\nsleep 28\n\
         for i in $(seq 41 50); do echo \"line $i\"; done\nmkdir -p \"$SM_MODEL_DIR\"\n",
    );
    start_writer(&c, "patient", &program, None);
    c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "patient"], |j| {
        j["SecondaryStatus"] == "Training"
    });
    pg.stop_immediately();
    let status = c.daemon.wait_exit(Duration::from_secs(40));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "the coordinator steps down when its database stays away");
    pg.start_again();
    c.respawn();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "patient"], |j| {
        j["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert_eq!(numbered_lines_once_stored(&c, "patient", 50), lines_up_to(50), "every line, in order, once");
    assert!(!c.data_dir().join("held-logs.json").exists(), "the kept lines were taken in");
}
