//! Coordinators that share a PostgreSQL database: one leads, the others stand by and take over
//! when its lease runs out; the agents and the CLI, given every coordinator's address, follow the
//! leader. The leader is killed (SIGKILL) at random moments of a tuning job, and paused (SIGSTOP)
//! past its lease, cut off from PostgreSQL, and PostgreSQL itself restarts under them: nothing is
//! lost or run twice, and a leader that comes back after another took over writes nothing and
//! exits. A data directory serves one coordinator, on either backend.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, PeerCoordinator, Random, example_json, on_both_backends};
use trainyard_testkit::{PgServer, free_port, wait_until};

/// Each run appends its job name to `$RUNS` (one short O_APPEND write: atomic), works a moment,
/// and reports a score.
const PROGRAM: &str = r#"#!/bin/sh
echo "$TRAINING_JOB_NAME" >> "$RUNS"
sleep 0.5
echo "score=0.$$"
mkdir -p "$SM_MODEL_DIR"
"#;

/// What agents say while the leader changes: their stream breaks, a standby sends them on.
const AGENTS_DURING_FAILOVER: &[&str] =
    &["coordinator unreachable or stream ended; instances keep running", "cannot join yet"];

on_both_backends!(a_data_directory_serves_one_coordinator);

fn a_data_directory_serves_one_coordinator(backend: Backend) {
    let c = Coordinator::start_on(backend);
    let second = std::process::Command::new(trainyard_testkit::binary("trainyard-coordinator"))
        .arg("--data-dir")
        .arg(c.data_dir())
        .args(c.database_args())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", trainyard_testkit::free_port()))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run a second coordinator");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second coordinator started on the same data directory: {said}");
    assert!(said.contains("another coordinator (pid") && said.contains("already serves the data directory"), "{said}");
    // The first one is untouched.
    c.cli(&["agents", "list"]).assert_success();
}

/// Which of `addresses` leads: the one whose health check answers (standbys answer UNAVAILABLE).
fn leader_of(c: &Coordinator, addresses: &[&str]) -> Option<usize> {
    addresses.iter().position(|address| {
        let out = std::process::Command::new(trainyard_testkit::binary("trainyard"))
            .args(["--coordinator", address, "--ca-file"])
            .arg(c.ca_file())
            .args(["--token", &c.token, "health"])
            .output()
            .expect("run trainyard health");
        out.status.success()
    })
}

/// `trainyard tuning-jobs watch NAME` against every coordinator in `list`, printing the job at its end.
fn watch(c: &Coordinator, list: &str, name: &str) -> std::process::Child {
    std::process::Command::new(trainyard_testkit::binary("trainyard"))
        .env("TRAINYARD_COORDINATOR", list)
        .env("TRAINYARD_CA_FILE", c.ca_file())
        .env("TRAINYARD_TOKEN", &c.token)
        .args(["--output", "json", "tuning-jobs", "watch", name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("watch")
}

fn tuning_job(c: &Coordinator, name: &str, trials: u64, program: &str, runs: &std::path::Path) -> std::path::PathBuf {
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!(name);
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Random");
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": trials, "MaxParallelTrainingJobs": 8});
    config["TrainingJobEarlyStoppingType"] = json!("Off");
    let definition = &mut r["TrainingJobDefinition"];
    definition["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    definition["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    definition["Environment"] = json!({"RUNS": runs.display().to_string()});
    c.write(&format!("{name}.json"), &r.to_string())
}

/// Coordinators and agents that know every one of them.
struct Cluster {
    /// `c`'s address, then each peer's.
    addresses: Vec<String>,
    /// The same, comma-separated: what the CLI and the agents are given.
    list: String,
    agents: Vec<trainyard_testkit::Daemon>,
    /// The trial program, and the file each run appends its job's name to.
    program: String,
    runs: std::path::PathBuf,
}

impl Cluster {
    fn refs(&self) -> Vec<&str> {
        self.addresses.iter().map(String::as_str).collect()
    }
}

/// The CLI and `agents` agents (`host-1`, ...) given every coordinator's address; the trial program.
fn cluster(c: &Coordinator, peers: &[&PeerCoordinator], agents: usize) -> Cluster {
    let addresses: Vec<String> =
        std::iter::once(c.address.clone()).chain(peers.iter().map(|p| p.address.clone())).collect();
    let list = addresses.join(",");
    c.use_coordinators(&list);
    let program = c.install_program("trial.sh", PROGRAM);
    let runs = c.shared_file("runs.log");
    let agents: Vec<_> = (1..=agents)
        .map(|i| c.start_agent_via(&list, &format!("host-{i}"), &["--advertise-vcpus", "8"], &[]))
        .collect();
    for agent in &agents {
        for line in AGENTS_DURING_FAILOVER {
            agent.expect_log(line);
        }
    }
    Cluster { addresses, list, agents, program, runs }
}

/// The CLI and one agent given both coordinators' addresses; the trial program and its runs file.
fn leader_standby_and_agent(
    c: &Coordinator,
    peer: &PeerCoordinator,
) -> (trainyard_testkit::Daemon, String, std::path::PathBuf) {
    let mut cluster = cluster(c, &[peer], 1);
    (cluster.agents.remove(0), cluster.program, cluster.runs)
}

/// Every trial ran exactly once, and ended Completed.
fn assert_each_trial_ran_once(c: &Coordinator, name: &str, trials: u64, runs: &std::path::Path, seed: u64) {
    let done = c.wait_json_for(Duration::from_secs(180), &["tuning-jobs", "describe", name], |j| {
        j["HyperParameterTuningJobStatus"] != "InProgress"
    });
    if done["HyperParameterTuningJobStatus"] == "InProgress" {
        // Say which trials hold it up, and where they stand.
        let stuck = c.json(&["tuning-jobs", "trials", name, "--status", "InProgress"]);
        let described: Vec<Value> = stuck["TrainingJobSummaries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["TrainingJobName"].as_str())
            .map(|trial| c.json(&["training-jobs", "describe", trial]))
            .collect();
        panic!("seed {seed}: still in progress after 180 s: {described:#?}\n{}", c.daemon.log());
    }
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "seed {seed}: {done:#}");
    let counters = &done["TrainingJobStatusCounters"];
    let failed = c.json(&["tuning-jobs", "trials", name, "--status", "Failed"]);
    let reasons: Vec<String> = failed["TrainingJobSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["TrainingJobName"].as_str())
        .map(|trial| format!("{trial}: {}", c.json(&["training-jobs", "describe", trial])["FailureReason"]))
        .collect();
    assert_eq!(counters["Completed"], json!(trials), "seed {seed}: {counters:#}; failed: {reasons:#?}");
    assert_eq!(counters["RetryableError"], json!(0), "seed {seed}: {counters:#}");
    assert_eq!(counters["NonRetryableError"], json!(0), "seed {seed}: {counters:#}");
    assert_eq!(counters["Stopped"], json!(0), "seed {seed}: no trial was stopped: {counters:#}");
    let log = std::fs::read_to_string(runs).expect("runs");
    let mut started: Vec<&str> = log.lines().collect();
    started.sort();
    let total = started.len();
    started.dedup();
    assert_eq!(started.len() as u64, trials, "seed {seed}: distinct trials that ran");
    assert_eq!(total as u64, trials, "seed {seed}: some trial ran twice");
}

/// Three coordinators on one PostgreSQL, two agents that know all three. The leader is killed at
/// random moments of a tuning job; a standby takes over each time (the killed one comes back as a
/// standby once another leads). Measures the failover: kill → the first trial started after it.
#[test]
fn killing_the_leader_at_random_moments_fails_over_and_loses_no_trial() {
    const TRIALS: u64 = 300;
    let mut c = Coordinator::start_on(Backend::Postgres);
    let mut peers: Vec<PeerCoordinator> = (0..2).map(|_| c.start_peer(&[])).collect();
    let Cluster { addresses, list, agents: _agents, program, runs } = cluster(&c, &peers.iter().collect::<Vec<_>>(), 2);
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    assert_eq!(leader_of(&c, &refs), Some(0), "the first coordinator leads");
    let file = tuning_job(&c, "fails-over", TRIALS, &program, &runs);
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    // A user watching the job from the CLI, given every coordinator's address, rides through.
    let watch = watch(&c, &list, "fails-over");

    let (mut random, seed) = Random::from_clock();
    let started = Instant::now();
    let mut failovers: Vec<Duration> = Vec::new();
    // Index of the leader in `addresses`: 0 is `c`, 1.. are the peers.
    let mut leader = 0;
    while failovers.len() < 3 {
        std::thread::sleep(Duration::from_millis(500 + random.next_u64() % 2_500));
        let now = c.json(&["tuning-jobs", "describe", "fails-over"]);
        assert_eq!(
            now["HyperParameterTuningJobStatus"], "InProgress",
            "seed {seed}: ended before 3 failovers: {now:#}"
        );
        let killed_at = Instant::now();
        match leader {
            0 => {
                c.stop(trainyard_testkit::SIGKILL);
            }
            i => {
                peers[i - 1].daemon.signal(trainyard_testkit::SIGKILL);
                peers[i - 1].daemon.wait_exit(Duration::from_secs(10));
            }
        }
        let mut next = None;
        assert!(
            wait_until(Duration::from_secs(60), || {
                next = leader_of(&c, &refs);
                next.is_some()
            }),
            "seed {seed}: no coordinator leads 60 s after the leader was killed"
        );
        let next = next.unwrap_or_default();
        assert_ne!(next, leader, "seed {seed}: a killed coordinator cannot lead");
        // The first trial started once the new leader leads was placed by it (what the old one
        // placed started at once).
        let runs_before = std::fs::read_to_string(&runs).expect("runs").lines().count();
        assert!(
            wait_until(Duration::from_secs(60), || {
                std::fs::read_to_string(&runs).expect("runs").lines().count() > runs_before
            }),
            "seed {seed}: the new leader started no trial within 60 s"
        );
        failovers.push(killed_at.elapsed());
        // The killed one comes back, as a standby now.
        match leader {
            0 => c.respawn(),
            i => peers[i - 1].respawn(),
        }
        leader = next;
    }
    assert_each_trial_ran_once(&c, "fails-over", TRIALS, &runs, seed);
    let watched = watch.wait_with_output().expect("watch ends");
    let said = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "seed {seed}: watch failed across the failovers: {said}");
    let last: Value = serde_json::from_slice(&watched.stdout).expect("watch prints the job");
    assert_eq!(last["HyperParameterTuningJobStatus"], "Completed", "seed {seed}: {last:#}");
    let leftovers = std::process::Command::new("pgrep").args(["-f", &program]).output();
    let left = leftovers.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert!(left.is_empty(), "seed {seed}: trial processes left running: {left}");
    let millis: Vec<u128> = failovers.iter().map(Duration::as_millis).collect();
    println!(
        "seed {seed}: failovers (leader killed -> first trial started by the next leader) {millis:?} ms; {TRIALS} trials in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// What coordinators say while their PostgreSQL restarts: statements fail, the loop catches up,
/// the lease is not renewed for a moment, the health check says NOT_SERVING, and log lines that
/// arrive meanwhile are not stored yet (held in memory until the store is back).
const DATABASE_RESTARTS: &[&str] = &[
    "terminating connection due to immediate shutdown command",
    // A call (the job's watcher polls) that reached the store as it went down; the caller retries.
    "error=storage unavailable",
    "log lines not stored",
    "Connection reset by peer",
    "error occurred while testing the connection on-release",
    "health: the store does not answer; reporting NOT_SERVING",
    "event not handled; catching up from the store",
    "periodic checks failed",
    "scheduling failed",
    "progress not stored",
    "waiting jobs not stored",
    "could not renew the leader's lease",
    "renewing the leader's lease took too long",
    "standby: cannot read who leads",
    "standby: cannot reach the store to take the lead",
    "no longer leads",
    "stepping down",
];

/// Three coordinators and two agents on a PostgreSQL that crashes (`-m immediate`) and comes back
/// twice during a tuning job: whoever leads afterwards, every trial runs exactly once and ends
/// Completed, and the job's watcher sees it through.
#[test]
fn postgresql_restarting_under_three_coordinators_loses_no_trial() {
    const TRIALS: u64 = 120;
    // Commits survive its crash (synchronous commit), as a production server's do.
    let pg = PgServer::start_durable();
    let c = Coordinator::start_with_database(&pg.fresh_database());
    let peers: Vec<PeerCoordinator> = (0..2).map(|_| c.start_peer(&[])).collect();
    for line in DATABASE_RESTARTS {
        c.expect_log(line);
        for peer in &peers {
            peer.expect_log(line);
        }
    }
    let cluster = cluster(&c, &peers.iter().collect::<Vec<_>>(), 2);
    let (refs, list, program, runs) = (cluster.refs(), &cluster.list, &cluster.program, &cluster.runs);
    let file = tuning_job(&c, "through-restarts", TRIALS, program, runs);
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let watch = watch(&c, list, "through-restarts");

    let (mut random, seed) = Random::from_clock();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1_000 + random.next_u64() % 3_000));
        let now = c.json(&["tuning-jobs", "describe", "through-restarts"]);
        assert_eq!(now["HyperParameterTuningJobStatus"], "InProgress", "seed {seed}: ended early: {now:#}");
        pg.restart_immediately();
        assert!(
            wait_until(Duration::from_secs(60), || leader_of(&c, &refs).is_some()),
            "seed {seed}: no coordinator leads after PostgreSQL came back"
        );
    }
    assert_each_trial_ran_once(&c, "through-restarts", TRIALS, runs, seed);
    let watched = watch.wait_with_output().expect("watch ends");
    assert!(watched.status.success(), "seed {seed}: {}", String::from_utf8_lossy(&watched.stderr));
    println!("seed {seed}: the leader after two restarts of PostgreSQL: {:?}", leader_of(&c, &refs));
}

/// A command run where `name` resolves to every address in `addresses` (a private /etc/hosts in a
/// mount namespace of its own, as a DNS name with an address per coordinator): `launcher`, which
/// ends by running the rest of its arguments.
fn resolving(name: &str, addresses: &[&str], dir: &std::path::Path) -> std::process::Command {
    let hosts = dir.join(format!("hosts-{name}"));
    let lines: String = addresses.iter().map(|a| format!("{a} {name}\n")).collect();
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{lines}")).expect("hosts");
    let mut launcher = std::process::Command::new("unshare");
    launcher
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$HOSTS" /etc/hosts && exec "$@""#,
            "sh",
        ])
        .env("HOSTS", hosts);
    launcher
}

/// Clients and agents given one DNS name that resolves to every coordinator follow the leader
/// through a failover: each address is tried in turn, and a standby's answer names the leader.
#[test]
fn one_dns_name_for_every_coordinator_is_followed_through_a_failover() {
    let mut c = Coordinator::start_on(Backend::Postgres);
    let port = c.address.rsplit(':').next().expect("port").to_string();
    // The second coordinator on another loopback address, same port: one name, two hosts.
    let peer = c.start_peer_at(&format!("127.0.0.2:{port}"), &[]);
    let name = format!("coordinators.test:{port}");
    let dir = tempfile::tempdir().expect("dir");
    let (ca_file, token) = (c.ca_file(), c.token.clone());
    let cli = |args: &[&str]| {
        let mut cmd = resolving("coordinators.test", &["127.0.0.1", "127.0.0.2"], dir.path());
        cmd.arg(trainyard_testkit::binary("trainyard"))
            .args(["--coordinator", &name, "--ca-file"])
            .arg(&ca_file)
            .args(["--token", &token])
            .args(args);
        cmd.output().expect("run trainyard")
    };
    let launcher = {
        let mut cmd = resolving("coordinators.test", &["127.0.0.2", "127.0.0.1"], dir.path());
        cmd.arg(trainyard_testkit::binary("trainyard-agent"));
        cmd
    };
    let agent = c.start_agent_through(launcher, &name, "by-name", &["--advertise-vcpus", "8"]);
    for line in AGENTS_DURING_FAILOVER {
        agent.expect_log(line);
    }
    let program = c.install_program("trial.sh", PROGRAM);
    let runs = c.shared_file("runs.log");
    let submit = |job: &str| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(job);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["Environment"] = json!({"RUNS": runs.display().to_string()});
        let file = dir.path().join(format!("{job}.json"));
        std::fs::write(&file, r.to_string()).expect("write");
        let out = cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ended = wait_until(Duration::from_secs(60), || {
            let out = cli(&["--output", "json", "training-jobs", "describe", job]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|d| d["TrainingJobStatus"] == "Completed")
        });
        assert!(ended, "{job} did not complete through the name");
    };
    submit("before-failover");

    c.stop(trainyard_testkit::SIGKILL);
    let refs = [c.address.as_str(), peer.address.as_str()];
    assert!(
        wait_until(Duration::from_secs(40), || leader_of(&c, &refs) == Some(1)),
        "the coordinator at 127.0.0.2 did not take over"
    );
    submit("after-failover");
    let log = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["before-failover", "after-failover"], "each ran once");
}

/// boto3 against one name for every coordinator's SageMaker endpoint: creates the training job
/// argv[2] (retrying, as botocore's standard mode does, while nobody serves) and waits for it to
/// complete; prints how many attempts the create took.
const BOTO3_THROUGH_A_NAME: &str = r#"
import json, sys, time, boto3, botocore.config
endpoint, name, request_file = sys.argv[1], sys.argv[2], sys.argv[3]
config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 20}, connect_timeout=2, read_timeout=10)
sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1", config=config,
                  aws_access_key_id="AKIATRAINYARDHA", aws_secret_access_key="ha-s3cret")
request = json.load(open(request_file))
request["TrainingJobName"] = name
response = sm.create_training_job(**request)
attempts = response["ResponseMetadata"].get("RetryAttempts", 0) + 1
for _ in range(300):
    status = sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    if status != "InProgress":
        break
    time.sleep(0.2)
print(json.dumps({"status": status, "attempts": attempts}))
"#;

/// The SageMaker-compatible endpoint is served by the leader alone; boto3 given one name for every
/// coordinator reaches whoever leads, and a call made while the leader is down succeeds once the
/// next one leads (botocore retries connection errors; each address is tried in turn).
#[test]
fn boto3_rides_through_a_failover_behind_one_name() {
    let config = tempfile::tempdir().expect("dir");
    let config_file = config.path().join("coordinator.toml");
    std::fs::write(&config_file, "[[access_keys]]\nid = \"AKIATRAINYARDHA\"\nsecret = \"ha-s3cret\"\n").expect("write");
    let port = free_port();
    let args = |host: &str| {
        vec![
            "--config".to_string(),
            config_file.display().to_string(),
            "--sagemaker-listen".to_string(),
            format!("{host}:{port}"),
            "--tls-name".to_string(),
            "coordinators.test".to_string(),
        ]
    };
    let first = args("127.0.0.1");
    let mut c =
        Coordinator::start_on_with_args(Backend::Postgres, &first.iter().map(String::as_str).collect::<Vec<_>>());
    let second = args("127.0.0.2");
    let peer = c.start_peer(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let (_agent, program, runs) = leader_standby_and_agent(&c, &peer);
    let mut request: Value = example_json("training-job.json");
    request["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    request["Environment"] = json!({"RUNS": runs.display().to_string()});
    let request_file = c.write("sagemaker-request.json", &request.to_string());
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = c.ca_file();
    let boto3 = |job: &str| {
        let mut cmd = resolving("coordinators.test", &["127.0.0.1", "127.0.0.2"], dir.path());
        cmd.arg(trainyard_testkit::s3::boto3_python())
            .arg("-c")
            .arg(BOTO3_THROUGH_A_NAME)
            .arg(format!("https://coordinators.test:{port}"))
            .arg(job)
            .arg(&request_file)
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_CA_BUNDLE", &ca_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("run boto3")
    };
    let ended = |child: std::process::Child| {
        let out = child.wait_with_output().expect("boto3 ends");
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    let before = ended(boto3("sagemaker-before"));
    assert_eq!(before["status"], "Completed", "{before}");

    // The call is made while the leader is dead and before the standby leads.
    c.stop(trainyard_testkit::SIGKILL);
    let during = boto3("sagemaker-during");
    let refs = [c.address.as_str(), peer.address.as_str()];
    assert!(wait_until(Duration::from_secs(40), || leader_of(&c, &refs) == Some(1)), "the standby did not lead");
    let during = ended(during);
    assert_eq!(during["status"], "Completed", "{during}");
    assert!(during["attempts"].as_u64().is_some_and(|n| n > 1), "it was retried while nobody served: {during}");
    let log = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["sagemaker-before", "sagemaker-during"], "each ran once");
}

/// The leader is paused past its lease: a standby takes over and places new work; the old leader,
/// resumed, finds it no longer leads, exits, and its writes are refused meanwhile.
#[test]
fn a_paused_leader_that_comes_back_steps_down_without_writing() {
    let mut c = Coordinator::start_on(Backend::Postgres);
    let peer = c.start_peer(&[]);
    let (_agent, program, runs) = leader_standby_and_agent(&c, &peer);
    // What the old leader says when it wakes up: its writes are refused, it steps down.
    for line in [
        "no longer leads",
        "event not handled; catching up from the store",
        "periodic checks failed",
        "agent lost: no heartbeat",
        "still cannot catch up with the store",
        "agent stream broke",
        // A connection it was taking from its pool when paused is taken after the pause: sqlx
        // says the wait was long (once in a few runs, as the pause meets an acquire).
        "time to acquire exceeded slow threshold",
    ] {
        c.expect_log(line);
    }
    let first = tuning_job(&c, "before-pause", 4, &program, &runs);
    c.cli(&["tuning-jobs", "create", "--file", first.to_str().expect("utf-8")]).assert_success();
    assert_each_trial_ran_once(&c, "before-pause", 4, &runs, 0);

    c.daemon.signal(trainyard_testkit::SIGSTOP);
    let paused_at = Instant::now();
    let refs = [c.address.as_str(), peer.address.as_str()];
    let standby_leads = wait_until(Duration::from_secs(30), || leader_of(&c, &refs) == Some(1));
    assert!(standby_leads, "the standby did not take over from the paused leader");
    println!("standby leads {} ms after the leader was paused", paused_at.elapsed().as_millis());
    std::fs::write(&runs, "").expect("reset runs");
    let second = tuning_job(&c, "after-pause", 4, &program, &runs);
    c.cli(&["tuning-jobs", "create", "--file", second.to_str().expect("utf-8")]).assert_success();
    assert_each_trial_ran_once(&c, "after-pause", 4, &runs, 0);

    c.daemon.signal(trainyard_testkit::SIGCONT);
    let status = c.daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "the old leader must step down: {}", c.daemon.log());
    let log = c.daemon.log();
    assert!(log.contains("stepping down"), "{log}");
    // The jobs it knew are as the new leader left them.
    let done = c.json(&["tuning-jobs", "describe", "after-pause"]);
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let before = c.json(&["tuning-jobs", "describe", "before-pause"]);
    assert_eq!(before["HyperParameterTuningJobStatus"], "Completed", "{before:#}");
}

/// What a leader cut off from its database says until it steps down.
const DATABASE_CUT_OFF: &[&str] = &[
    "could not renew the leader's lease",
    "renewing the leader's lease took too long",
    "event not handled; catching up from the store",
    "periodic checks failed",
    "still cannot catch up with the store",
    "scheduling failed",
    "progress not stored",
    "waiting jobs not stored",
    "agent stream broke",
    "error occurred while testing the connection",
    "log lines not stored",
    "health: the store does not answer",
    "stepping down",
];

/// An nftables table of the test's own, deleted when dropped.
struct NftTable(String);

impl NftTable {
    fn add(&self, rule: &str) {
        let out = std::process::Command::new("nft").arg(rule.replace("{table}", &self.0)).output().expect("run nft");
        assert!(out.status.success(), "nft {rule}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "ip", &self.0]).output();
    }
}

/// The leader is cut off from PostgreSQL (it reaches the server through a port of its own, which
/// nftables redirects, and then drops): a standby takes over once the lease runs out and places
/// new work; the old leader cannot renew, lets its agents go and exits.
#[test]
fn a_leader_cut_off_from_postgresql_is_replaced_and_steps_down() {
    let pg = PgServer::start();
    let direct = pg.fresh_database();
    let via = free_port();
    let through_via = direct.replace(&format!(":{}/", pg.port()), &format!(":{via}/"));
    assert_ne!(through_via, direct);
    let table = NftTable(format!("trainyard_cut_{via}"));
    table.add("add table ip {table}");
    table.add("add chain ip {table} nat { type nat hook output priority -100; }");
    table.add(&format!("add rule ip {{table}} nat tcp dport {via} redirect to :{}", pg.port()));
    table.add("add chain ip {table} cut { type filter hook output priority 0; }");

    let mut c = Coordinator::start_with_database(&through_via);
    let peer = c.start_peer_on(&direct, &[]);
    let (_agent, program, runs) = leader_standby_and_agent(&c, &peer);
    for line in DATABASE_CUT_OFF {
        c.expect_log(line);
    }
    let first = tuning_job(&c, "before-cut", 2, &program, &runs);
    c.cli(&["tuning-jobs", "create", "--file", first.to_str().expect("utf-8")]).assert_success();
    assert_each_trial_ran_once(&c, "before-cut", 2, &runs, 0);

    // Both directions of its connections: the packets of the redirected port's connections.
    table.add(&format!("add rule ip {{table}} cut ct original protocol tcp ct original proto-dst {via} drop"));
    let cut_at = Instant::now();
    let refs = [c.address.as_str(), peer.address.as_str()];
    assert!(
        wait_until(Duration::from_secs(40), || leader_of(&c, &refs) == Some(1)),
        "the standby did not take over from the leader cut off from PostgreSQL"
    );
    println!("standby leads {} ms after the leader was cut off", cut_at.elapsed().as_millis());
    std::fs::write(&runs, "").expect("reset runs");
    let second = tuning_job(&c, "after-cut", 2, &program, &runs);
    c.cli(&["tuning-jobs", "create", "--file", second.to_str().expect("utf-8")]).assert_success();
    assert_each_trial_ran_once(&c, "after-cut", 2, &runs, 0);
    println!("the cut-off leader's agent ran new work {} ms after the cut", cut_at.elapsed().as_millis());

    let status = c.daemon.wait_exit(Duration::from_secs(40));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "the cut-off leader must step down: {}", c.daemon.log());
    assert!(c.daemon.log().contains("another coordinator may lead"), "{}", c.daemon.log());
}
