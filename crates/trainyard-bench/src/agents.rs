//! The agents suite: a real coordinator (SQLite) and a real agent on this machine run trivial
//! programs, and we measure what the scheduler adds around them.
//!
//! * submit → running: from the CreateTrainingJob call to the moment the program runs (it prints
//!   its own start time), for jobs submitted one after another to a warm agent;
//! * trials per second: a tuning job of programs that exit at once;
//! * overhead: a tuning job of 1-second programs, wall time against the ideal
//!   (trials / parallel × 1 s);
//! * lost agent: how long after `kill -9` the coordinator reports the agent lost (default settings);
//! * preemption: on a cluster full of spot jobs, from the CreateTrainingJob call of a job that is
//!   not spot to the moment its program runs (a spot job interrupted for it first).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use trainyard_proto::client::Transport;
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::agents_client::AgentsClient;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_proto::pb::training_client::TrainingClient;
use trainyard_testkit::{Daemon, binary, free_port};

const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");
const TUNING: &str = include_str!("../../../deploy/examples/tuning-job.json");

pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    _programs: tempfile::TempDir,
    pub coordinator: crate::BenchCoordinator,
    pub agent: Option<Daemon>,
    pub channel: Transport,
    pub program_dir: std::path::PathBuf,
    /// Where the agent serves its Prometheus metrics.
    pub agent_metrics: String,
    /// Where the coordinator serves its Prometheus metrics.
    pub coordinator_metrics: String,
}

impl Drop for Cluster {
    /// The agent is stopped as an operator would (SIGTERM: it removes its namespaces, cgroups and,
    /// the last on the host, the host's nftables table); killed if it takes longer than 10 s, and
    /// whatever it recorded and left is removed here.
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.signal(libc::SIGTERM);
            agent.wait_exit(Duration::from_secs(10));
        }
        trainyard_testkit::netns::remove_agents_leftovers(self._dir.path());
        trainyard_testkit::netns::remove_agents_cgroups(self._dir.path());
    }
}

/// Nanoseconds since the epoch, as the trivial programs print their start.
pub(crate) fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

/// A coordinator and one agent (`agent_args` added to its command line).
pub(crate) async fn cluster(agent_args: &[&str]) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let coordinator = crate::start_coordinator(
        dir.path(),
        "127.0.0.1",
        &["--metrics-listen".as_ref(), coordinator_metrics.as_ref()],
        true,
    )?;
    let address = format!("127.0.0.1:{}", coordinator.port);
    let programs = crate::programs_dir()?;
    let program_dir = programs.path().to_path_buf();
    // Trivial programs: print the start time (ns), optionally sleep, exit 0; "held" runs until it
    // is stopped, and stops at once.
    let held = "trap 'exit 143' TERM\nsleep 600 & wait $!\n";
    for (name, body) in [("quick", ""), ("second", "sleep 1\n"), ("held", held)] {
        let text = format!("#!/bin/sh\necho \"started=$(date +%s%N)\"\n{body}mkdir -p \"$SM_MODEL_DIR\"\n");
        crate::install_program(&program_dir, name, &text)?;
    }
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = Command::new(binary("trainyard-agent"));
    agent
        .arg("--metrics-listen")
        .arg(&agent_metrics)
        .arg("--coordinator")
        .arg(&address)
        .arg("--id")
        .arg("bench-agent")
        .arg("--work-root")
        .arg(dir.path().join("agent"))
        .arg("--host-programs")
        .arg("--bucket")
        .arg(format!("trainyard-examples={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples/data")))
        .arg("--bucket")
        .arg(format!("trainyard-output={}", dir.path().join("output").display()))
        .args(agent_args)
        // Room for everything, unless the caller says how much.
        .args(if agent_args.contains(&"--advertise-vcpus") {
            &[][..]
        } else {
            &["--advertise-vcpus", "256", "--advertise-memory-mib", "4194304"][..]
        })
        .envs(coordinator.env())
        .env("RUST_LOG", "warn");
    let agent = Daemon::spawn("agent", agent, dir.path());
    let channel = coordinator.connect().await?;
    let mut agents = AgentsClient::new(channel.clone());
    let started = Instant::now();
    loop {
        let list = agents.list_agents(pb::ListAgentsRequest::default()).await?.into_inner();
        if list.agents.iter().any(|a| a.state == "ready") {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the agent did not register:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Cluster {
        _dir: dir,
        _programs: programs,
        coordinator,
        agent: Some(agent),
        channel,
        program_dir,
        agent_metrics,
        coordinator_metrics,
    })
}

pub(crate) fn training_request(name: &str, image: &str) -> anyhow::Result<api::CreateTrainingJobRequest> {
    let mut r: api::CreateTrainingJobRequest = serde_json::from_str(TRAINING)?;
    r.training_job_name = Some(name.to_string());
    if let Some(a) = r.algorithm_specification.as_mut() {
        a.training_image = Some(image.to_string());
    }
    Ok(r)
}

pub(crate) async fn wait_training(
    client: &mut TrainingClient<Transport>,
    name: &str,
) -> anyhow::Result<api::DescribeTrainingJobResponse> {
    loop {
        let d = client
            .describe_training_job(pb::DescribeTrainingJobRequest { training_job_name: Some(name.to_string()) })
            .await?
            .into_inner();
        let d = api::DescribeTrainingJobResponse::from(d);
        if !matches!(d.training_job_status.as_deref(), Some("InProgress") | Some("Stopping")) {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a tuning job has ended and returns when it ended, as the coordinator stored it
/// (milliseconds since the epoch). Asked ten times a second, as a watching user might: the end
/// comes from the job itself, so the polling neither limits the figure's precision nor loads the
/// machine it measures (asked every 10 ms, the describes cost ~20 store reads a trial).
pub(crate) async fn wait_tuning(client: &mut HyperParameterTuningClient<Transport>, name: &str) -> anyhow::Result<i64> {
    loop {
        let d = client
            .describe_hyper_parameter_tuning_job(pb::DescribeHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(name.to_string()),
            })
            .await?
            .into_inner();
        if d.hyper_parameter_tuning_job_status.as_deref() != Some("InProgress") {
            let d = api::DescribeHyperParameterTuningJobResponse::from(d);
            return d
                .hyper_parameter_tuning_end_time
                .map(|t| t.millis())
                .with_context(|| format!("tuning job {name} ended without an end time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU seconds (user and system) of the suite's processes.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    coordinator: f64,
    agent: f64,
    /// The agent's children it has waited for: the instances' programs and what they started.
    programs: f64,
    client: f64,
}

fn cpu_times(c: &Cluster) -> CpuTimes {
    let coordinator = crate::own_and_reaped_cpu_seconds(c.coordinator.daemon.pid()).0;
    let (agent, programs) = c.agent.as_ref().map_or((0.0, 0.0), |a| crate::own_and_reaped_cpu_seconds(a.pid()));
    CpuTimes { coordinator, agent, programs, client: crate::own_and_reaped_cpu_seconds(std::process::id()).0 }
}

/// Milliseconds since the epoch, on the clock the coordinator stamps jobs with (same host).
pub(crate) fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

pub(crate) fn tuning_request(
    name: &str,
    image: &str,
    trials: i32,
    parallel: i32,
) -> anyhow::Result<api::CreateHyperParameterTuningJobRequest> {
    let mut r: api::CreateHyperParameterTuningJobRequest = serde_json::from_str(TUNING)?;
    r.hyper_parameter_tuning_job_name = Some(name.to_string());
    if let Some(c) = r.hyper_parameter_tuning_job_config.as_mut() {
        c.resource_limits = Some(api::ResourceLimits {
            max_number_of_training_jobs: Some(trials),
            max_parallel_training_jobs: Some(parallel),
            max_runtime_in_seconds: None,
        });
    }
    if let Some(d) = r.training_job_definition.as_mut()
        && let Some(a) = d.algorithm_specification.as_mut()
    {
        a.training_image = Some(image.to_string());
    }
    Ok(r)
}

/// Runs a training job of `image` to its end; an error unless it completed.
async fn run_to_completion(
    training: &mut TrainingClient<Transport>,
    name: &str,
    image: &str,
) -> anyhow::Result<api::DescribeTrainingJobResponse> {
    training.create_training_job(pb::CreateTrainingJobRequest::from(training_request(name, image)?)).await?;
    let d = wait_training(training, name).await?;
    if d.training_job_status.as_deref() != Some("Completed") {
        bail!("{name} ended {:?}: {:?}", d.training_job_status, d.failure_reason);
    }
    Ok(d)
}

/// When a job entered secondary status `status` (ms since the epoch).
fn entered(d: &api::DescribeTrainingJobResponse, status: &str) -> Option<i64> {
    d.secondary_status_transitions
        .iter()
        .flatten()
        .find(|t| t.status.as_deref() == Some(status))
        .and_then(|t| t.start_time)
        .map(|t| t.millis())
}

/// Submits a training job of `image` (a program that prints `started=<ns>` first) and waits for it
/// to complete: milliseconds from the CreateTrainingJob call to the program running.
async fn submit_to_running(training: &mut TrainingClient<Transport>, name: &str, image: &str) -> anyhow::Result<f64> {
    let submitted = now_ns();
    run_to_completion(training, name, image).await?;
    let logs = training
        .get_training_job_logs(pb::GetTrainingJobLogsRequest {
            training_job_name: name.to_string(),
            after_sequence: 0,
            max_lines: 10,
        })
        .await?
        .into_inner();
    let started: u128 = logs
        .lines
        .iter()
        .find_map(|l| l.text.strip_prefix("started=")?.trim().parse().ok())
        .context("the program printed its start time")?;
    Ok(started.saturating_sub(submitted) as f64 / 1e6)
}

/// Runs the suite; what it measured, for the Slurm suite's side-by-side table.
pub async fn run() -> anyhow::Result<crate::slurm::Figures> {
    let mut c = cluster(&[]).await?;
    let mut training = TrainingClient::new(c.channel.clone());
    let mut tuning = HyperParameterTuningClient::new(c.channel.clone());

    // Submit → running, one job at a time on a warm agent.
    let quick = c.program_dir.join("quick").display().to_string();
    let mut latencies = Vec::new();
    for i in 0..120 {
        let latency = submit_to_running(&mut training, &format!("latency-{i}"), &quick).await?;
        if i >= 20 {
            latencies.push(latency);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!("{:<44} {:>12}", "agents suite", "result");
    println!("{:<44} {:>9.1} ms", "submit -> process running, p50", pct(0.5));
    println!("{:<44} {:>9.1} ms", "submit -> process running, p99", pct(0.99));

    // Trials per second with programs that exit at once.
    let started = now_ms();
    tuning
        .create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(tuning_request(
            "throughput",
            &quick,
            300,
            10,
        )?))
        .await?;
    let ended = wait_tuning(&mut tuning, "throughput").await?;
    let per_second = 300.0 / ((ended - started) as f64 / 1e3);
    println!("{:<44} {:>12.1}", "trials per second (300 trials, 10 parallel)", per_second);

    // Overhead on 1-second trials.
    let second = c.program_dir.join("second").display().to_string();
    let (trials, parallel) = (40, 4);
    let phases_before = agent_phases(&c.agent_metrics);
    let machine_before = crate::machine_ticks();
    let store_before = store_operations(&crate::metrics_page(&c.coordinator_metrics));
    let cpu_before = cpu_times(&c);
    let started = now_ms();
    tuning
        .create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(tuning_request(
            "overhead", &second, trials, parallel,
        )?))
        .await?;
    let ended = wait_tuning(&mut tuning, "overhead").await?;
    let cpu_after = cpu_times(&c);
    let wall = (ended - started) as f64 / 1e3;
    let ideal = f64::from(trials / parallel);
    println!("{:<44} {:>9.2} s", "1-second trials: 40 trials, 4 parallel, wall", wall);
    let overhead = (wall - ideal) / ideal * 100.0;
    println!("{:<44} {:>10.1} %", "overhead against the ideal 10 s", overhead);
    let steal = crate::steal_percent(machine_before, crate::machine_ticks());
    println!("{:<44} {:>10.1} %", "  CPU time the hypervisor stole meanwhile", steal);
    // Two cores serve four trials' ends and starts at once: what each process spends is time a
    // freed slot may wait for.
    for (who, before, after) in [
        ("coordinator", cpu_before.coordinator, cpu_after.coordinator),
        ("agent", cpu_before.agent, cpu_after.agent),
        ("the programs (reaped by the agent)", cpu_before.programs, cpu_after.programs),
        ("this client (creates, describes)", cpu_before.client, cpu_after.client),
    ] {
        let per_trial = (after - before).max(0.0) / f64::from(trials) * 1e3;
        println!("{:<44} {:>9.1} ms", format!("  CPU per trial, {who}"), per_trial);
    }
    // The program's own cost beyond its second (a shell, `date`, `sleep`, `mkdir`), which any
    // scheduler running it pays: run bare, one at a time, here.
    let mut bare = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let status = std::process::Command::new(&second)
            .env("SM_MODEL_DIR", c.program_dir.join("bare-model"))
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "the 1-second program failed when run bare: {status}");
        bare.push(started.elapsed().as_secs_f64() - 1.0);
    }
    bare.sort_by(f64::total_cmp);
    println!("{:<44} {:>9.1} ms", "  the program alone, beyond its 1 s, median", bare[2] * 1e3);
    breakdown(&c, "overhead", parallel as usize).await?;
    let phases_after = agent_phases(&c.agent_metrics);
    for ((phase, (sum_after, count_after)), (_, (sum_before, count_before))) in phases_after.iter().zip(&phases_before)
    {
        let count = count_after - count_before;
        if count > 0.0 {
            let mean_ms = (sum_after - sum_before) / count * 1e3;
            println!("{:<44} {:>9.1} ms", format!("  agent: {phase}, mean"), mean_ms);
        }
    }
    // The coordinator's share: the store calls each trial costs (the loop makes them one after
    // another, so their time is time a freed slot waits).
    let store_after = store_operations(&crate::metrics_page(&c.coordinator_metrics));
    for (operation, (sum_after, count_after)) in &store_after {
        let (sum_before, count_before) = store_before.get(operation).copied().unwrap_or_default();
        let count = count_after - count_before;
        if count > 0.0 {
            let per_trial = count / f64::from(trials);
            let mean_ms = (sum_after - sum_before) / count * 1e3;
            println!(
                "{:<44} {:>5.1} x {:.2} ms",
                format!("  store: {operation}, per trial x mean"),
                per_trial,
                mean_ms
            );
        }
    }
    // A model as a trained network leaves one: 256 MiB of float32 weights, packed into
    // model.tar.gz and put in the output bucket before the job can end.
    let weights = c.program_dir.join("weights.bin");
    std::fs::write(&weights, model_weights(256 << 20))?;
    let big_model = crate::install_program(
        &c.program_dir,
        "big-model",
        &format!(
            "#!/bin/sh\necho \"started=$(date +%s%N)\"\nmkdir -p \"$SM_MODEL_DIR\"\ncp {} \"$SM_MODEL_DIR/\"\n",
            weights.display()
        ),
    )?;
    let mut training = TrainingClient::new(c.channel.clone());
    let d = run_to_completion(&mut training, "big-model", &big_model.display().to_string()).await?;
    if let (Some(uploading), Some(ended)) = (entered(&d, "Uploading"), entered(&d, "Completed")) {
        let seconds = (ended - uploading) as f64 / 1e3;
        println!("{:<44} {:>9.2} s", "a 256 MiB model (float32): uploading -> ended", seconds);
    }
    let _ = std::fs::remove_file(&weights);

    let figures = crate::slurm::Figures {
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        jobs_per_second: per_second,
        overhead_percent: overhead,
    };

    // A killed agent is declared lost.
    let mut agents = AgentsClient::new(c.channel.clone());
    if let Some(agent) = c.agent.as_mut() {
        agent.signal(trainyard_testkit::SIGKILL);
        agent.wait_exit(Duration::from_secs(5));
    }
    let killed = Instant::now();
    loop {
        let list = agents.list_agents(pb::ListAgentsRequest::default()).await?.into_inner();
        if list.agents.iter().any(|a| a.state == "lost") {
            break;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("the agent was never declared lost");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{:<44} {:>9.1} s", "kill -9 of an agent -> declared lost", killed.elapsed().as_secs_f64());
    c.coordinator.daemon.assert_running();
    drop(c);
    preemption().await?;
    Ok(figures)
}

/// Where a trial's time goes beyond its program's second, from the stored status history of each
/// trial of `tuning_job` (milliseconds, median over trials): created → training (placement, the
/// agent's set-up, the launch), training → uploading (the program, and its end reaching the
/// coordinator), uploading → ended (the model upload, the store's end), and for trials that took
/// a freed slot, the previous trial's end → this one's creation (the tuning loop's turn).
async fn breakdown(c: &Cluster, tuning_job: &str, parallel: usize) -> anyhow::Result<()> {
    let mut tuning = HyperParameterTuningClient::new(c.channel.clone());
    let mut training = TrainingClient::new(c.channel.clone());
    let list = tuning
        .list_training_jobs_for_hyper_parameter_tuning_job(pb::ListTrainingJobsForHyperParameterTuningJobRequest::from(
            api::ListTrainingJobsForHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(tuning_job.to_string()),
                max_results: Some(100),
                sort_by: Some("CreationTime".into()),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let list = api::ListTrainingJobsForHyperParameterTuningJobResponse::from(list);
    // (created, downloading, training, uploading, ended) of each trial, in creation order.
    let mut trials: Vec<(i64, i64, i64, i64, i64)> = Vec::new();
    for summary in list.training_job_summaries.unwrap_or_default() {
        let name = summary.training_job_name.unwrap_or_default();
        let d = training
            .describe_training_job(pb::DescribeTrainingJobRequest { training_job_name: Some(name) })
            .await?
            .into_inner();
        let d = api::DescribeTrainingJobResponse::from(d);
        let at = |status: &str| entered(&d, status);
        let created = d.creation_time.map(|t| t.millis()).unwrap_or_default();
        if let (Some(downloading), Some(training_at), Some(uploading), Some(ended)) =
            (at("Downloading"), at("Training"), at("Uploading"), at("Completed"))
        {
            trials.push((created, downloading, training_at, uploading, ended));
        }
    }
    if trials.is_empty() {
        return Ok(());
    }
    let median = |mut v: Vec<i64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let ends: Vec<i64> = trials.iter().map(|t| t.4).collect();
    let turns: Vec<i64> = trials
        .iter()
        .skip(parallel)
        .filter_map(|t| ends.iter().filter(|e| **e <= t.0).max().map(|e| t.0 - e))
        .collect();
    println!("{:<44} {:>9} ms", "  created -> training, p50", median(trials.iter().map(|t| t.2 - t.0).collect()));
    println!(
        "{:<44} {:>9} ms",
        "    created -> downloading (placed, told), p50",
        median(trials.iter().map(|t| t.1 - t.0).collect())
    );
    println!(
        "{:<44} {:>9} ms",
        "    downloading -> training (agent set-up), p50",
        median(trials.iter().map(|t| t.2 - t.1).collect())
    );
    println!(
        "{:<44} {:>9} ms",
        "  training -> uploading (the 1 s run), p50",
        median(trials.iter().map(|t| t.3 - t.2).collect())
    );
    println!("{:<44} {:>9} ms", "  uploading -> ended, p50", median(trials.iter().map(|t| t.4 - t.3).collect()));
    if !turns.is_empty() {
        println!("{:<44} {:>9} ms", "  a slot's end -> next trial created, p50", median(turns));
    }
    // How far apart the slots' trials start within a round (trials in creation order, `parallel`
    // to a round): near zero, the slots run in step and each round's ends and starts share the
    // CPU; far apart, they take turns.
    let spreads: Vec<i64> = trials
        .chunks(parallel)
        .skip(1)
        .filter(|round| round.len() == parallel)
        .map(|round| {
            let created = round.iter().map(|t| t.0);
            created.clone().max().unwrap_or_default() - created.min().unwrap_or_default()
        })
        .collect();
    if !spreads.is_empty() {
        println!("{:<44} {:>9} ms", "  the slots' starts within a round, spread p50", median(spreads));
    }
    Ok(())
}

/// `trainyard_store_seconds` on a coordinator's metrics page, by operation (outcomes summed):
/// (sum of seconds, count).
fn store_operations(page: &str) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut operations = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for line in page.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let is_sum = series.starts_with("trainyard_store_seconds_sum{");
        if !is_sum && !series.starts_with("trainyard_store_seconds_count{") {
            continue;
        }
        let Some(operation) = series.split("operation=\"").nth(1).and_then(|rest| rest.split('"').next()) else {
            continue;
        };
        let entry = operations.entry(operation.to_string()).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    operations
}

/// The agent's own account of an instance's start, from its Prometheus histograms: (phase, (sum
/// of seconds, count)) for laying out the work dir, the network namespace, the launch, the end
/// once the program has exited (before the upload), and the upload of the model.
fn agent_phases(address: &str) -> Vec<(&'static str, (f64, f64))> {
    let page = crate::metrics_page(address);
    [
        ("work dir and channels", "staging"),
        ("network namespace", "network_setup"),
        ("launch", "launch"),
        ("end after the exit", "teardown"),
        ("upload of the model", "upload"),
    ]
    .into_iter()
    .map(|(phase, metric)| (phase, crate::histogram(&page, &format!("trainyard_agent_{metric}_seconds"))))
    .collect()
}

/// On an agent full of spot jobs (four ml.m5.large that stop at once on SIGTERM), a job that is not
/// spot is submitted: from the call to its program running, a spot job being interrupted first.
async fn preemption() -> anyhow::Result<()> {
    let mut c =
        cluster(&["--advertise-vcpus", "8", "--advertise-memory-mib", "32768", "--stop-grace-seconds", "30"]).await?;
    let mut training = TrainingClient::new(c.channel.clone());
    let held = c.program_dir.join("held").display().to_string();
    let quick = c.program_dir.join("quick").display().to_string();
    let spots: Vec<String> = (0..4).map(|i| format!("spot-{i}")).collect();
    for name in &spots {
        let mut r = training_request(name, &held)?;
        r.enable_managed_spot_training = Some(true);
        r.stopping_condition = Some(api::StoppingCondition {
            max_runtime_in_seconds: Some(3600),
            max_wait_time_in_seconds: Some(7200),
            ..Default::default()
        });
        training.create_training_job(pb::CreateTrainingJobRequest::from(r)).await?;
    }
    let mut latencies = Vec::new();
    for i in 0..20 {
        // Full again: every spot job trains (the one interrupted last time has resumed).
        let filled = Instant::now();
        loop {
            let mut training_now = 0;
            for name in &spots {
                let d = training
                    .describe_training_job(pb::DescribeTrainingJobRequest { training_job_name: Some(name.clone()) })
                    .await?
                    .into_inner();
                training_now += usize::from(d.secondary_status.as_deref() == Some("Training"));
            }
            if training_now == spots.len() {
                break;
            }
            if filled.elapsed() > Duration::from_secs(60) {
                bail!("the spot jobs did not all train again");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(submit_to_running(&mut training, &format!("on-demand-{i}"), &quick).await?);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!("{:<44} {:>9.1} ms", "full cluster: on-demand submit -> running, p50", pct(0.5));
    println!("{:<44} {:>9.1} ms", "full cluster: on-demand submit -> running, max", pct(1.0));
    c.coordinator.daemon.assert_running();
    Ok(())
}

/// `bytes` of float32 weights as a trained network holds them: small values, roughly normal
/// (a sum of four uniforms), from a fixed seed. Deflate shrinks them by about a tenth, as it does
/// real weights.
fn model_weights(bytes: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = Vec::with_capacity(bytes);
    while out.len() + 4 <= bytes {
        let value = (uniform() + uniform() + uniform() + uniform() - 2.0) * 0.05;
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}
