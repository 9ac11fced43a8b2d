//! `trainyard dev`: a coordinator (SQLite) and an agent on this machine, started from the binaries
//! next to this one, with the example buckets mapped to local directories. With `--run FILE` it
//! submits that tuning job, watches it to the end and prints the best trial; otherwise it runs until
//! Ctrl-C. Plain-text gRPC on loopback only: this is for one machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct DevArgs {
    pub data_dir: PathBuf,
    pub port: u16,
    pub examples: PathBuf,
    pub vcpus: u32,
}

/// The two daemons; dropping this stops them (SIGTERM, then SIGKILL).
pub struct Cluster {
    children: Vec<(String, Child)>,
    pub address: String,
    pub data_dir: PathBuf,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the trainyard binary")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!("{} not found next to {} (build all binaries: cargo build --bins)", name, me.display());
    }
    Ok(path)
}

pub fn start(args: &DevArgs) -> anyhow::Result<Cluster> {
    let data = &args.data_dir;
    std::fs::create_dir_all(data.join("logs"))?;
    let address = format!("127.0.0.1:{}", args.port);
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(Stdio::from(std::fs::File::create(data.join("logs").join(format!("{name}.log")))?))
    };
    let mut cluster = Cluster { children: Vec::new(), address: address.clone(), data_dir: data.clone() };
    let coordinator = Command::new(sibling("trainyard-coordinator")?)
        .arg("--data-dir")
        .arg(data.join("coordinator"))
        .arg("--listen")
        .arg(&address)
        .arg("--insecure")
        .stdout(log("coordinator")?)
        .stderr(log("coordinator")?)
        .spawn()
        .context("starting trainyard-coordinator")?;
    cluster.children.push(("coordinator".into(), coordinator));
    wait_for_port(&address, Duration::from_secs(20)).with_context(|| {
        format!("the coordinator did not start: see {}", data.join("logs/coordinator.log").display())
    })?;

    let agent = Command::new(sibling("trainyard-agent")?)
        .arg("--coordinator")
        .arg(&address)
        .arg("--insecure")
        .arg("--id")
        .arg("dev-agent")
        .arg("--work-root")
        .arg(data.join("agent"))
        .arg("--host-programs")
        .arg("--advertise-vcpus")
        .arg(args.vcpus.to_string())
        .arg("--bucket")
        .arg(format!("trainyard-examples={}", args.examples.display()))
        .arg("--bucket")
        .arg(format!("trainyard-output={}", data.join("output").display()))
        .arg("--stop-grace-seconds")
        .arg("10")
        .stdout(log("agent")?)
        .stderr(log("agent")?)
        .spawn()
        .context("starting trainyard-agent")?;
    cluster.children.push(("agent".into(), agent));
    Ok(cluster)
}

fn wait_for_port(address: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {address}")
}

impl Cluster {
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the {name} exited ({status}): see {}",
                    self.data_dir.join("logs").join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agent first (it stops its instances), then the coordinator.
        for (_, child) in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
