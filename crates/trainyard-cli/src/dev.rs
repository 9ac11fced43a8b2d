//! `trainyard dev`: a coordinator (SQLite) and an agent on this machine, started from the binaries
//! next to this one, with the example buckets mapped to local directories. With `--run FILE` it
//! submits that tuning job, watches it to the end and prints the best trial; otherwise it runs until
//! Ctrl-C. Plain-text gRPC on loopback only: this is for one machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trainyard_proto::model::images::TrainingImage;

pub struct DevArgs {
    pub data_dir: PathBuf,
    pub port: u16,
    pub examples: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// The example data and trainer, built in, so that `trainyard dev` works from any directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("data/blobs/train/train.csv", include_str!("../../../deploy/examples/data/blobs/train/train.csv")),
    (
        "data/blobs/validation/validation.csv",
        include_str!("../../../deploy/examples/data/blobs/validation/validation.csv"),
    ),
    ("trainer/train.py", include_str!("../../../deploy/examples/trainer/train.py")),
];

/// Where the example requests' relative TrainingImage points (from the repository root).
const EXAMPLE_TRAINER: &str = "deploy/examples/trainer/train.py";

/// The directory served as s3://trainyard-examples/: the one given; else the repository's, when
/// run from its root; else the built-in copy, written under the data dir.
pub fn examples_dir(given: Option<PathBuf>, data_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        if !dir.is_dir() {
            bail!("--examples {} is not a directory", dir.display());
        }
        return Ok(dir);
    }
    let repository = PathBuf::from("deploy/examples/data");
    if repository.is_dir() {
        return Ok(repository);
    }
    Ok(write_embedded(data_dir)?.join("data"))
}

/// Writes the built-in examples under `<data-dir>/examples` (readable by every instance's uid).
fn write_embedded(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = std::path::absolute(data_dir.join("examples"))?;
    // SAFETY: geteuid(2) has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root && (root.starts_with("/tmp") || root.starts_with("/var/tmp")) {
        bail!(
            "the built-in examples would be written under {}, which instances cannot see (each has a \
             /tmp and /var/tmp of its own): pass a --data-dir elsewhere, or --examples",
            root.display()
        );
    }
    for (relative, text) in EMBEDDED {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let mode = if relative.ends_with(".py") { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(root)
}

/// A TrainingImage that is a relative path to a program, made absolute: against the current
/// directory; else the request file's directory and its parents (the examples name their trainer
/// from the repository root); else, for the examples' trainer, the built-in copy. Anything else is
/// left as it is (an image reference, an absolute path, or a path the agent will report missing).
pub fn resolve_program(image: &str, request_file: &Path, data_dir: &Path) -> anyhow::Result<String> {
    if image.starts_with('/') || !matches!(TrainingImage::of(image), TrainingImage::HostProgram) {
        return Ok(image.to_string());
    }
    let absolute = |p: PathBuf| std::path::absolute(&p).map(|a| a.display().to_string());
    if Path::new(image).is_file() {
        return Ok(absolute(PathBuf::from(image))?);
    }
    let start = std::path::absolute(request_file)?;
    for dir in start.ancestors().skip(1) {
        let candidate = dir.join(image);
        if candidate.is_file() {
            return Ok(candidate.display().to_string());
        }
    }
    if image == EXAMPLE_TRAINER {
        return Ok(absolute(write_embedded(data_dir)?.join("trainer/train.py"))?);
    }
    Ok(image.to_string())
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
    // stdout and stderr share one open file (one offset): two opens of the same path would each
    // write over what the other wrote.
    let log = |name: &str| -> anyhow::Result<(Stdio, Stdio)> {
        let file = std::fs::File::create(data.join("logs").join(format!("{name}.log")))?;
        Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
    };
    let mut cluster = Cluster { children: Vec::new(), address: address.clone(), data_dir: data.clone() };
    let (stdout, stderr) = log("coordinator")?;
    let coordinator = Command::new(sibling("trainyard-coordinator")?)
        .arg("--data-dir")
        .arg(data.join("coordinator"))
        .arg("--listen")
        .arg(&address)
        .arg("--insecure")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .context("starting trainyard-coordinator")?;
    cluster.children.push(("coordinator".into(), coordinator));
    wait_for_port(&address, Duration::from_secs(20)).with_context(|| {
        format!("the coordinator did not start: see {}", data.join("logs/coordinator.log").display())
    })?;

    let (stdout, stderr) = log("agent")?;
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
        .arg("--advertise-memory-mib")
        .arg(args.memory_mib.to_string())
        .arg("--bucket")
        .arg(format!("trainyard-examples={}", args.examples.display()))
        .arg("--bucket")
        .arg(format!("trainyard-output={}", data.join("output").display()))
        .arg("--stop-grace-seconds")
        .arg("10")
        .stdout(stdout)
        .stderr(stderr)
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
