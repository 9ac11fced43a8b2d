//! The Slurm suite: the agents suite's workloads on a private single-node Slurm cluster on this
//! machine (Debian's slurmctld, slurmd and munge, installed if missing), side by side with
//! Trainyard's figures from the same run.
//!
//! Slurm is tuned as its documentation advises for throughput (`sched/builtin`, no prolog or
//! epilog, no accounting, `batch_sched_delay=0`, `sched_min_interval=0`, process groups for
//! tracking) and given the same room as our agent (256 CPUs advertised through
//! `config_overrides`), so neither system waits for cores the other lacks; "N at a time" is each
//! job asking for 256/N CPUs. Completion is asked of `squeue` four times a second (faster polling
//! slowed slurmctld); start times, and the end times the wall times end at, are read from files
//! the jobs write (our wall times end when the coordinator stored the tuning job's end).
//! Its daemons run as root in a temp dir of their own, with their own munge socket and key, on
//! loopback ports; they are stopped at the end and nothing of them stays.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trainyard_testkit::Daemon;

use crate::agents::now_ns;

/// What the agents suite measured, to print beside Slurm's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub jobs_per_second: f64,
    pub overhead_percent: f64,
}

/// The CPUs the node offers (as the agents suite's agent offers 256 vCPUs).
const NODE_CPUS: u32 = 256;

struct Cluster {
    dir: tempfile::TempDir,
    _munge: Daemon,
    _controller: Daemon,
    _node: Daemon,
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A Slurm client command with this cluster's configuration.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.conf());
        command
    }

    /// `sbatch`es `count` jobs running `script`, each taking 256 / `parallel` of the node's CPUs
    /// so that at most `parallel` run at once (one job each: job arrays with a `%N` limit were
    /// twice as slow here).
    fn submit(&self, script: &str, count: u32, parallel: u32) -> anyhow::Result<()> {
        let cpus = (NODE_CPUS / parallel).max(1).to_string();
        for _ in 0..count {
            let out = self
                .command("sbatch")
                .args(["--parsable", "--ntasks", "1", "--cpus-per-task", &cpus, "--output", "/dev/null", "--wrap"])
                .arg(script)
                .output()
                .context("sbatch")?;
            if !out.status.success() {
                bail!("sbatch: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Waits until no job is queued or running. Asked four times a second: slurmctld answers
    /// `squeue` under the locks its scheduler takes, and asking every 20 ms doubled its
    /// submit-to-start latency here.
    fn wait_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let out = self.command("squeue").args(["-h", "-o", "%i"]).output().context("squeue")?;
            if out.status.success() && out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("Slurm's queue did not empty in {timeout:?}: {}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Seconds from `started` (ns since the epoch) to the last of the `count` end stamps in `ends`.
fn seconds_until_last(ends: &std::path::Path, started: u128, count: usize) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(ends).with_context(|| format!("reading {}", ends.display()))?;
    let stamps: Vec<u128> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if stamps.len() != count {
        bail!("{} of {count} Slurm jobs stamped their end in {}", stamps.len(), ends.display());
    }
    let last = stamps.into_iter().max().unwrap_or(started);
    Ok(last.saturating_sub(started) as f64 / 1e9)
}

fn hostname() -> anyhow::Result<String> {
    let out = Command::new("hostname").arg("-s").output().context("hostname")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs Slurm and munge from Debian's packages when they are missing.
fn install() -> anyhow::Result<()> {
    crate::apt_install(&["slurmctld", "slurmd", "sbatch", "munged"], &["slurmctld", "slurmd", "slurm-client", "munge"])
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > timeout {
            bail!("{what} did not come up in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn start(dir: tempfile::TempDir) -> anyhow::Result<Cluster> {
    let d = dir.path();
    for sub in ["state", "spool", "out"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    // munge: a key of its own (munged refuses a key others may read) and its own socket.
    let mut key = vec![0u8; 1024];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let key_path = d.join("munge.key");
    std::fs::write(&key_path, key)?;
    std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
    let socket = d.join("munge.socket");
    let mut munge = Command::new("munged");
    munge
        .args(["--foreground", "--force", "--num-threads", "4"])
        .arg("--key-file")
        .arg(&key_path)
        .arg("--socket")
        .arg(&socket)
        .arg(format!("--pid-file={}", d.join("munged.pid").display()))
        .arg(format!("--log-file={}", d.join("munged.log").display()))
        .arg(format!("--seed-file={}", d.join("munged.seed").display()));
    let munge = Daemon::spawn("munged", munge, d);
    wait_for("munged", Duration::from_secs(10), || socket.exists())?;

    let host = hostname()?;
    let (controller_port, node_port) = (trainyard_testkit::free_port(), trainyard_testkit::free_port());
    let conf = format!(
        "ClusterName=trainyard-bench\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
         SlurmctldPort={controller_port}\nSlurmdPort={node_port}\nAuthType=auth/munge\nCredType=cred/munge\n\
         AuthInfo=socket={socket}\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\n\
         SlurmdLogFile={d}/slurmd.log\nSlurmctldDebug=error\nSlurmdDebug=error\nProctrackType=proctrack/pgid\n\
         TaskPlugin=task/none\nSchedulerType=sched/builtin\n\
         SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000\n\
         SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSlurmdParameters=config_overrides\n\
         JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nMpiDefault=none\n\
         ReturnToService=2\nMaxJobCount=100000\nMaxArraySize=100000\nMinJobAge=2\nKillWait=5\n\
         NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=4194304 State=UNKNOWN\n\
         PartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
        socket = socket.display(),
        d = d.display(),
    );
    std::fs::write(d.join("slurm.conf"), conf)?;
    let mut controller = Command::new("slurmctld");
    controller.args(["-D", "-i", "-f"]).arg(d.join("slurm.conf")).env("SLURM_CONF", d.join("slurm.conf"));
    let controller = Daemon::spawn("slurmctld", controller, d);
    let mut node = Command::new("slurmd");
    node.args(["-D", "-N", &host, "-f"]).arg(d.join("slurm.conf")).env("SLURM_CONF", d.join("slurm.conf"));
    let node = Daemon::spawn("slurmd", node, d);
    let cluster = Cluster { dir, _munge: munge, _controller: controller, _node: node };
    wait_for("Slurm's node", Duration::from_secs(60), || {
        cluster
            .command("sinfo")
            .args(["-h", "-o", "%T"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
    })
    .with_context(|| {
        let log = |name: &str| std::fs::read_to_string(cluster.dir.path().join(name)).unwrap_or_default();
        format!("slurmctld:\n{}\nslurmd:\n{}", log("slurmctld.log"), log("slurmd.log"))
    })?;
    Ok(cluster)
}

/// Milliseconds from `sbatch` to the job's program running, for jobs submitted one at a time to an
/// idle node (each waited for before the next).
fn latencies(cluster: &Cluster, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let stamp = cluster.dir.path().join(format!("out/started-{i}"));
        let submitted = now_ns();
        let out = cluster
            .command("sbatch")
            .args(["--parsable", "--ntasks", "1", "--cpus-per-task", "1", "--output", "/dev/null", "--wrap"])
            .arg(format!("date +%s%N > {}", stamp.display()))
            .output()
            .context("sbatch")?;
        if !out.status.success() {
            bail!("sbatch: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The stamp file is watched, not Slurm: no RPC competes with the job's start.
        let mut started = None;
        wait_for("a Slurm job", Duration::from_secs(60), || {
            started = std::fs::read_to_string(&stamp).ok().and_then(|t| t.trim().parse::<u128>().ok());
            started.is_some()
        })?;
        latencies.push(started.unwrap_or_default().saturating_sub(submitted) as f64 / 1e6);
        cluster.wait_idle(Duration::from_secs(60))?;
    }
    Ok(latencies)
}

pub async fn run(ours: Option<Figures>) -> anyhow::Result<()> {
    install()?;
    let cluster = start(tempfile::Builder::new().prefix("trainyard-slurm-").tempdir()?)?;

    let mut latency = latencies(&cluster, 40)?;
    latency.drain(..10);
    latency.sort_by(f64::total_cmp);
    let pct = |p: f64| latency[((latency.len() - 1) as f64 * p) as usize];

    // Trivial jobs: 300, 10 at a time; and with room for all at once. Each job's last act is to
    // stamp its end, as our programs' end is stamped by the coordinator: the wall times end
    // there, not at the poll that saw the queue empty (a quarter of a second apart at worst).
    let trivial = |ends: &std::path::Path| format!("date +%s%N >> {}", ends.display());
    let ends = cluster.dir.path().join("out/ends-trivial");
    let started = now_ns();
    cluster.submit(&trivial(&ends), 300, 10)?;
    cluster.wait_idle(Duration::from_secs(600))?;
    let per_second = 300.0 / seconds_until_last(&ends, started, 300)?;
    let ends = cluster.dir.path().join("out/ends-unconstrained");
    let started = now_ns();
    cluster.submit(&trivial(&ends), 300, NODE_CPUS)?;
    cluster.wait_idle(Duration::from_secs(600))?;
    let unconstrained = 300.0 / seconds_until_last(&ends, started, 300)?;

    // 1-second jobs: 40, 4 at a time.
    let ends = cluster.dir.path().join("out/ends-second");
    let started = now_ns();
    cluster.submit(&format!("sleep 1; date +%s%N >> {}", ends.display()), 40, 4)?;
    cluster.wait_idle(Duration::from_secs(600))?;
    let wall = seconds_until_last(&ends, started, 40)?;
    let overhead = (wall - 10.0) / 10.0 * 100.0;
    let slurm = Figures {
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        jobs_per_second: per_second,
        overhead_percent: overhead,
    };
    print(&slurm, ours.as_ref());
    println!("{:<44} {:>12.1}", "Slurm, trivial jobs per second, all at once", unconstrained);
    drop(cluster);
    Ok(())
}

fn print(slurm: &Figures, ours: Option<&Figures>) {
    let version = Command::new("slurmctld")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("{:<44} {:>12} {:>12} {:>10}", format!("Slurm suite ({version})"), "Slurm", "Trainyard", "ratio");
    let row = |label: &str, s: f64, t: Option<f64>, unit: &str, higher_is_better: bool| {
        let (ours, ratio) = match t {
            Some(t) => {
                let ratio = if higher_is_better { t / s } else { s / t };
                (format!("{t:.1}{unit}"), format!("{ratio:.1}x"))
            }
            None => ("-".into(), "-".into()),
        };
        println!("{label:<44} {:>12} {ours:>12} {ratio:>10}", format!("{s:.1}{unit}"));
    };
    row("submit -> process running, p50", slurm.latency_p50_ms, ours.map(|o| o.latency_p50_ms), " ms", false);
    row("submit -> process running, p99", slurm.latency_p99_ms, ours.map(|o| o.latency_p99_ms), " ms", false);
    row(
        "trivial jobs per second (300, 10 at a time)",
        slurm.jobs_per_second,
        ours.map(|o| o.jobs_per_second),
        "",
        true,
    );
    row(
        "overhead, 1-second jobs (40, 4 at a time)",
        slurm.overhead_percent,
        ours.map(|o| o.overhead_percent),
        " %",
        false,
    );
}
