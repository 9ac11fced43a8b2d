//! `trainyard-bench`: create-request throughput of the real coordinator over real gRPC, with
//! concurrent clients, on SQLite and on PostgreSQL. Each run starts a fresh coordinator (and, for
//! PostgreSQL, a throwaway server), measures, and prints one table row; `--json` writes them all.
//!
//! Run it with `scripts/bench` (release build). A create is validated in full and persisted before
//! it is answered, so this measures validation plus a durable write per request; and then how long
//! the event loop takes to queue every job the run made, the CPU per create counted until then.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_proto::pb::training_client::TrainingClient;
use trainyard_testkit::{Daemon, PgServer, binary, free_port, wait_until};

#[derive(Parser)]
#[command(about = "Create-request throughput of the coordinator over gRPC, SQLite vs PostgreSQL")]
struct Flags {
    /// Concurrent clients (each its own HTTP/2 connection).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests per measurement (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// Which suites: creates (API throughput), agents (jobs run by a real agent), containers (the
    /// same through containerd, against `ctr run`; needs root), peers (a
    /// distributed job's traffic between simulated hosts; needs root), tls (the peer path's cipher
    /// alone, per crypto provider: aws-lc-rs, and ring when built with `--features ring`), load (simulated agents
    /// heartbeating while clients submit and describe), slurm (the agents suite's workloads on a
    /// private Slurm cluster, installed from Debian's packages if missing, beside the agents
    /// suite's figures when both run; needs root), tuner (the Bayesian tuner through a real
    /// coordinator and agent, beside the offline tuner bench and Optuna's TPE; not by default).
    #[arg(long, value_delimiter = ',', default_value = "creates,agents,slurm,containers,tls,peers,load")]
    suites: Vec<String>,
    /// Load suite: simulated agents.
    #[arg(long, default_value_t = 3_000)]
    load_agents: usize,
    /// Load suite: concurrent clients, each creating then describing jobs.
    #[arg(long, default_value_t = 16)]
    load_clients: usize,
    /// Load suite: how long the clients run.
    #[arg(long, default_value_t = 20)]
    load_seconds: u64,
    /// Load suite: as deployed — every simulated agent joins (a join token), gets its own
    /// certificate and holds its own mutual-TLS connection; clients use TLS and a token. Without
    /// it, plain text with a hundred agents per connection (the coordinator's own cost).
    #[arg(long)]
    load_tls: bool,
    /// Tuner suite (not in the default list: ~6 minutes; `all`: ~30): the problems, from the
    /// tuner bench's set, or `all`.
    #[arg(long, value_delimiter = ',', default_value = tuner::DEFAULT_PROBLEMS)]
    tuner_problems: Vec<String>,
    /// Tuner suite: seeds per problem and batch size (40, as the offline bench and its TPE cache).
    #[arg(long, default_value_t = 40)]
    tuner_seeds: u64,
    /// Run as a tuner-suite trial: print the objective of the problem so named at the
    /// hyperparameters in `SM_HPS`, and exit.
    #[arg(long, hide = true)]
    objective: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    TrainingJob,
    TuningJob,
}

struct Row {
    backend: String,
    kind: &'static str,
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU per request (µs) until every job is queued (the event loop's work included): the
    /// coordinator's, the database server's (PostgreSQL; SQLite's is the coordinator's), the
    /// clients' (this process).
    coordinator_cpu_us: f64,
    database_cpu_us: f64,
    clients_cpu_us: f64,
    /// The share of the machine's CPU time the hypervisor gave to other guests meanwhile: runs
    /// of the same code differ by as much as a fifth on a shared VM, and this says which.
    steal_percent: f64,
    /// From the first create until the event loop had queued every job the run made (a tuning
    /// job's first MaxParallelTrainingJobs trials), and jobs queued per second over that time:
    /// under a burst the loop falls behind the API, and this is when it has caught up.
    queued_seconds: f64,
    queued_per_second: f64,
}

const TUNING: &str = include_str!("../../../deploy/examples/tuning-job.json");
const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");

mod agents;
mod containers;
mod load;
mod peers;
mod slurm;
mod tls;
mod tuner;

/// A coordinator started for a suite, and what its clients need.
struct BenchCoordinator {
    daemon: Daemon,
    port: u16,
    /// None: it runs with `--insecure` (plain text, no tokens).
    ca_pem: Option<String>,
    /// An admin token (empty with `--insecure`).
    token: String,
    /// For agents (empty with `--insecure`).
    join_token: String,
}

impl BenchCoordinator {
    /// A client connection: TLS and the admin token, or plain text.
    async fn connect(&self) -> anyhow::Result<trainyard_proto::client::Transport> {
        let token = (!self.token.is_empty()).then_some(self.token.as_str());
        Ok(trainyard_proto::client::connect(&format!("127.0.0.1:{}", self.port), self.ca_pem.as_deref(), token).await?)
    }

    /// Environment for `trainyard` and `trainyard-agent` processes talking to it.
    fn env(&self) -> Vec<(&'static str, String)> {
        match &self.ca_pem {
            None => vec![("TRAINYARD_INSECURE", "true".into())],
            Some(_) => vec![("TRAINYARD_TOKEN", self.token.clone()), ("TRAINYARD_JOIN_TOKEN", self.join_token.clone())],
        }
    }
}

/// Installs Debian's `packages` unless every one of `commands` is already on the PATH (a suite's
/// own tools; the suites that need them run as root).
fn apt_install(commands: &[&str], packages: &[&str]) -> anyhow::Result<()> {
    let present = commands.iter().all(|c| {
        Command::new("sh").arg("-c").arg(format!("command -v {c}")).output().is_ok_and(|o| o.status.success())
    });
    if present {
        return Ok(());
    }
    println!("installing {} from Debian's packages...", packages.join(", "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get (needs root)")?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

/// A daemon's Prometheus page (its `--metrics-listen` address); empty when it does not answer.
fn metrics_page(address: &str) -> String {
    use std::io::{Read, Write};
    let mut page = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(address) {
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let _ = stream.read_to_string(&mut page);
    }
    page
}

/// A histogram's totals on a metrics page: (sum of its observations, their count); 0 when absent.
fn histogram(page: &str, name: &str) -> (f64, f64) {
    let sample = |suffix: &str| {
        let prefix = format!("{name}_{suffix} ");
        page.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok()).unwrap_or_default()
    };
    (sample("sum"), sample("count"))
}

/// Writes an executable program `name` (every user may run it) into `dir`; its path.
fn install_program(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Where the benchmarks' training programs live: readable and executable by every user (each
/// instance runs as a uid of its own) and outside /tmp and /var/tmp (instances see their own).
fn programs_dir() -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let parent = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-programs"));
    std::fs::create_dir_all(parent)?;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
    let dir = tempfile::Builder::new().prefix("programs-").tempdir_in(parent)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Starts a coordinator listening on `host` (a free port), its data in `dir`, with `args` added,
/// once it accepts connections. `secure`: TLS with an admin token and a join token made for the
/// suite (as deployed); otherwise `--insecure` (loopback only).
fn start_coordinator(
    dir: &std::path::Path,
    host: &str,
    args: &[&std::ffi::OsStr],
    secure: bool,
) -> anyhow::Result<BenchCoordinator> {
    let port = free_port();
    let data = dir.join("data");
    let mut cmd = Command::new(binary("trainyard-coordinator"));
    cmd.arg("--listen").arg(format!("{host}:{port}")).arg("--data-dir").arg(&data).args(args);
    if !secure {
        cmd.arg("--insecure");
    }
    // As deployed: the default level, every job's lines written.
    cmd.env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn("coordinator", cmd, dir);
    if !wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        daemon.assert_running();
        bail!("the coordinator did not start:\n{}", daemon.log());
    }
    if !secure {
        return Ok(BenchCoordinator { daemon, port, ca_pem: None, token: String::new(), join_token: String::new() });
    }
    let admin = |sub: &[&str]| -> anyhow::Result<String> {
        let out =
            Command::new(binary("trainyard-coordinator")).arg("--data-dir").arg(&data).args(args).args(sub).output()?;
        if !out.status.success() {
            bail!("trainyard-coordinator {sub:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let token = admin(&["tokens", "create", "--user", "bench", "--scope", "admin"])?;
    let join_token = admin(&["join-token", "--uses", "1000"])?;
    let ca_pem = std::fs::read_to_string(data.join("pki/ca.pem"))?;
    Ok(BenchCoordinator { daemon, port, ca_pem: Some(ca_pem), token, join_token })
}

/// The database a suite's coordinator runs on: a SQLite file in a temp dir, or a throwaway
/// PostgreSQL server (stopped when dropped).
pub struct Database {
    pub backend: String,
    dir: tempfile::TempDir,
    postgres: Option<PgServer>,
}

impl Database {
    pub fn start(backend: &str) -> anyhow::Result<Database> {
        let postgres = match backend {
            "postgres" => Some(PgServer::start()),
            "sqlite" => None,
            other => bail!("unknown backend {other}: use sqlite or postgres"),
        };
        Ok(Database { backend: backend.to_string(), dir: tempfile::tempdir()?, postgres })
    }

    /// A fresh database on every call for PostgreSQL; the one file for SQLite.
    pub fn url(&self) -> String {
        match &self.postgres {
            Some(pg) => pg.fresh_database(),
            None => format!("sqlite://{}", self.dir.path().join("bench.db").display()),
        }
    }
}

/// The fields of `/proc/<pid>/stat` after the command's closing parenthesis (the command may hold
/// spaces): state is [0], ppid [1], utime [11], stime [12], cutime [13], cstime [14].
fn proc_stat(pid: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
}

/// Field `i` of [`proc_stat`] as a number (0 when absent).
fn stat_number(fields: &[String], i: usize) -> u64 {
    fields.get(i).and_then(|v| v.parse().ok()).unwrap_or_default()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU seconds (user + system) a process, and with `descendants` its descendants, have used so
/// far, from /proc. Descendants that already exited are not counted (a database's backends live
/// as long as its connections, which outlive a measurement).
fn cpu_seconds(root: u32, descendants: bool) -> f64 {
    let mut parents = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(pid) = name.parse::<u32>() else { continue };
        let f = proc_stat(&name);
        parents.insert(pid, stat_number(&f, 1) as u32);
        ticks.insert(pid, stat_number(&f, 11) + stat_number(&f, 12));
    }
    let in_tree = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        if !descendants {
            return false;
        }
        match parents.get(&pid) {
            Some(&parent) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    };
    ticks.iter().filter(|(pid, _)| in_tree(**pid)).map(|(_, t)| *t as f64).sum::<f64>() / ticks_per_second()
}

/// CPU seconds (user + system) of a process itself, and of its children it has waited for (the
/// exited ones [`cpu_seconds`] cannot see), from /proc.
fn own_and_reaped_cpu_seconds(pid: u32) -> (f64, f64) {
    let f = proc_stat(&pid.to_string());
    let seconds = |a: usize, b: usize| (stat_number(&f, a) + stat_number(&f, b)) as f64 / ticks_per_second();
    (seconds(11, 12), seconds(13, 14))
}

/// The machine's CPU time so far, in ticks: (stolen by the hypervisor, all), from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .map(|cpu| cpu.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is in user's.
    let all = ticks.iter().take(8).sum();
    (ticks.get(7).copied().unwrap_or_default(), all)
}

/// Percent of the machine's CPU time stolen between two [`machine_ticks`] readings.
fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 { 0.0 } else { after.0.saturating_sub(before.0) as f64 * 100.0 / all as f64 }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the daemons do: one provider for every TLS connection this process makes (built with
    // `--features ring`, rustls has two and would otherwise refuse to pick).
    trainyard_pki::install_crypto_provider();
    let flags = Flags::parse();
    if let Some(problem) = &flags.objective {
        return tuner::objective(problem);
    }
    // Stopped by Ctrl-C or SIGTERM, the bench drops the suite it runs at its next await, which
    // stops what the suite started (daemons, databases, an agent's network namespaces and
    // cgroups) as a suite that ends does; killed outright, it used to leave all of that behind.
    tokio::select! {
        result = run_suites(&flags) => result,
        signal = stop_signal() => bail!("stopped by {signal}; what the running suite started is removed"),
    }
}

/// The first SIGINT or SIGTERM, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

async fn run_suites(flags: &Flags) -> anyhow::Result<()> {
    if flags.suites.iter().any(|s| s == "creates") {
        creates(flags).await?;
    }
    let mut ours = None;
    if flags.suites.iter().any(|s| s == "agents") {
        println!();
        ours = Some(agents::run().await?);
    }
    if flags.suites.iter().any(|s| s == "slurm") {
        println!();
        slurm::run(ours).await?;
    }
    if flags.suites.iter().any(|s| s == "containers") {
        println!();
        containers::run().await?;
    }
    if flags.suites.iter().any(|s| s == "tls") {
        println!();
        tls::run()?;
    }
    if flags.suites.iter().any(|s| s == "peers") {
        println!();
        peers::run().await?;
    }
    if flags.suites.iter().any(|s| s == "tuner") {
        println!();
        tuner::run(&tuner::Settings { problems: flags.tuner_problems.clone(), seeds: flags.tuner_seeds }).await?;
    }
    if flags.suites.iter().any(|s| s == "load") {
        println!();
        let load = load::Load {
            agents: flags.load_agents,
            clients: flags.load_clients,
            seconds: flags.load_seconds,
            tls: flags.load_tls,
        };
        for (i, backend) in flags.backends.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let database = Database::start(backend)?;
            load::run(&load, &database).await?;
        }
    }
    Ok(())
}

async fn creates(flags: &Flags) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for backend in &flags.backends {
        for kind in [Kind::TuningJob, Kind::TrainingJob] {
            let database = Database::start(backend)?;
            let dir = tempfile::tempdir()?;
            let url = database.url();
            // Tuning-job creates would hit the default limit of 100 running tuning jobs.
            let config = dir.path().join("coordinator.toml");
            std::fs::write(&config, "[limits]\nmax_concurrent_tuning_jobs = 100000000\n")?;
            let metrics = format!("127.0.0.1:{}", free_port());
            let args = [
                "--config".as_ref(),
                config.as_os_str(),
                "--database-url".as_ref(),
                url.as_ref(),
                "--metrics-listen".as_ref(),
                metrics.as_ref(),
            ];
            let mut coordinator = start_coordinator(dir.path(), "127.0.0.1", &args, true)?;
            let database_pid = database.postgres.as_ref().and_then(PgServer::postmaster_pid);
            let row = measure(flags, backend, kind, &coordinator, database_pid, &metrics).await?;
            coordinator.daemon.assert_running();
            print_row(&row, rows.is_empty());
            rows.push(row);
        }
    }
    if let Some(path) = &flags.json {
        let value: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"backend": r.backend, "operation": r.kind, "clients": flags.clients, "requests": r.requests,
                       "seconds": r.seconds, "per_second": r.requests as f64 / r.seconds, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                       "coordinator_cpu_us": r.coordinator_cpu_us, "database_cpu_us": r.database_cpu_us,
                       "clients_cpu_us": r.clients_cpu_us, "steal_percent": r.steal_percent,
                       "queued_seconds": r.queued_seconds, "queued_per_second": r.queued_per_second})
            })
            .collect();
        std::fs::write(path, serde_json::to_vec_pretty(&value)?)?;
    }
    Ok(())
}

fn print_row(r: &Row, header: bool) {
    if header {
        println!(
            "{:<10} {:<30} {:>9} {:>8} {:>10} {:>7} {:>7}  {:>12} {:>12} {:>12} {:>7} {:>9} {:>9}",
            "backend",
            "operation",
            "requests",
            "seconds",
            "per second",
            "p50 ms",
            "p99 ms",
            "coord µs/req",
            "db µs/req",
            "client µs/req",
            "steal %",
            "queued s",
            "queued/s"
        );
    }
    println!(
        "{:<10} {:<30} {:>9} {:>8.2} {:>10.0} {:>7.2} {:>7.2}  {:>12.0} {:>12.0} {:>12.0} {:>7.1} {:>9.1} {:>9.0}",
        r.backend,
        r.kind,
        r.requests,
        r.seconds,
        r.requests as f64 / r.seconds,
        r.p50_ms,
        r.p99_ms,
        r.coordinator_cpu_us,
        r.database_cpu_us,
        r.clients_cpu_us,
        r.steal_percent,
        r.queued_seconds,
        r.queued_per_second
    );
}

async fn measure(
    flags: &Flags,
    backend: &str,
    kind: Kind,
    coordinator: &BenchCoordinator,
    database_pid: Option<u32>,
    metrics: &str,
) -> anyhow::Result<Row> {
    let warmup = (flags.requests / 10).max(flags.clients as u64);
    run(flags.clients, warmup, kind, coordinator, "warm").await?;
    // CPU per request is what a change to the path shows; requests per second on a shared VM
    // also show the neighbours.
    let cpu = || {
        (
            cpu_seconds(coordinator.daemon.pid(), true),
            database_pid.map(|pid| cpu_seconds(pid, true)).unwrap_or_default(),
            cpu_seconds(std::process::id(), false),
        )
    };
    let before = cpu();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let mut latencies = run(flags.clients, flags.requests, kind, coordinator, "run").await?;
    let seconds = started.elapsed().as_secs_f64();
    // Every job of the warm-up and the run waits in the queue (no agent runs them): the loop has
    // caught up when the queue holds them all. Its gauge is refreshed twice a second.
    let per_create = match kind {
        Kind::TrainingJob => 1,
        Kind::TuningJob => serde_json::from_str::<api::CreateHyperParameterTuningJobRequest>(TUNING)?
            .hyper_parameter_tuning_job_config
            .and_then(|c| c.resource_limits)
            .and_then(|l| l.max_parallel_training_jobs)
            .unwrap_or(1) as u64,
    };
    let expected = (warmup + flags.requests) * per_create;
    let queued = || {
        metrics_page(metrics)
            .lines()
            .find_map(|l| l.strip_prefix("trainyard_queue_length ")?.trim().parse::<u64>().ok())
            .unwrap_or_default()
    };
    while queued() < expected {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the coordinator queued {} of {expected} jobs in 10 minutes", queued());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued_seconds = started.elapsed().as_secs_f64();
    // CPU until then and the next tick of the loop, which stores that the last of them wait: a
    // create's whole cost, the loop's part included.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cpu();
    let steal = steal_percent(machine_before, machine_ticks());
    let per_request = |a: f64, b: f64| (a - b) * 1e6 / flags.requests as f64;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    Ok(Row {
        backend: backend.to_string(),
        kind: match kind {
            Kind::TrainingJob => "CreateTrainingJob",
            Kind::TuningJob => "CreateHyperParameterTuningJob",
        },
        requests: flags.requests,
        seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        coordinator_cpu_us: per_request(after.0, before.0),
        database_cpu_us: per_request(after.1, before.1),
        clients_cpu_us: per_request(after.2, before.2),
        steal_percent: steal,
        queued_seconds,
        queued_per_second: (flags.requests * per_create) as f64 / queued_seconds,
    })
}

/// `total` creates spread over `clients` connections; returns each request's latency.
async fn run(
    clients: usize,
    total: u64,
    kind: Kind,
    coordinator: &BenchCoordinator,
    prefix: &str,
) -> anyhow::Result<Vec<Duration>> {
    // Encoded once: the clients' own cost is not what this measures.
    let tuning = pb::CreateHyperParameterTuningJobRequest::from(serde_json::from_str::<
        api::CreateHyperParameterTuningJobRequest,
    >(TUNING)?);
    let training = pb::CreateTrainingJobRequest::from(serde_json::from_str::<api::CreateTrainingJobRequest>(TRAINING)?);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = coordinator.connect().await.context("connecting")?;
        let (next, tuning, training, prefix) = (next.clone(), tuning.clone(), training.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut tuning_client = HyperParameterTuningClient::new(channel.clone());
            let mut training_client = TrainingClient::new(channel);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let name = format!("{prefix}-{i}");
                let started = Instant::now();
                match kind {
                    Kind::TuningJob => {
                        let mut request = tuning.clone();
                        request.hyper_parameter_tuning_job_name = Some(name);
                        tuning_client.create_hyper_parameter_tuning_job(request).await?;
                    }
                    Kind::TrainingJob => {
                        let mut request = training.clone();
                        request.training_job_name = Some(name);
                        training_client.create_training_job(request).await?;
                    }
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}
