//! Agent configuration: a TOML file, overridden by environment variables, overridden by flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

use crate::network::plan::Net;
use crate::storage::S3Settings;
use crate::uids::UidRange;
use std::net::SocketAddr;

#[derive(Debug, Parser)]
#[command(name = "trainyard-agent", version, about = "Trainyard agent: runs training jobs on this host")]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "TRAINYARD_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Coordinator address (HOST:PORT; TLS unless --insecure), or every coordinator's
    /// (HOST:PORT,HOST:PORT,...): the agent finds the one that leads.
    #[arg(long, env = "TRAINYARD_COORDINATOR")]
    pub coordinator: Option<String>,
    /// A join token (`trainyard-coordinator join-token`): needed once, on the first start; the
    /// agent keeps the certificate it receives in its identity directory. Prefer
    /// TRAINYARD_JOIN_TOKEN or --join-token-file: every local user can read a command line.
    #[arg(long, env = "TRAINYARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (read once, at the first start).
    #[arg(long, env = "TRAINYARD_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Where the agent keeps its certificate and key (default: WORK_ROOT/identity).
    #[arg(long, env = "TRAINYARD_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Talk to a coordinator started with --insecure: plain text, no certificate.
    #[arg(long, env = "TRAINYARD_INSECURE")]
    pub insecure: bool,
    /// This agent's id (default: the host name).
    #[arg(long, env = "TRAINYARD_AGENT_ID")]
    pub id: Option<String>,
    /// Where instances' work dirs live.
    #[arg(long, env = "TRAINYARD_WORK_ROOT")]
    pub work_root: Option<PathBuf>,
    /// Path of libnvidia-ml.so (default: the system's).
    #[arg(long, env = "TRAINYARD_NVML_LIBRARY")]
    pub nvml_library: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, env = "TRAINYARD_STOP_GRACE_SECONDS")]
    pub stop_grace_seconds: Option<u64>,
    /// How long the work dir of a failed instance is kept for debugging (0700, its job's user
    /// only); others are removed as soon as their outputs are uploaded. Default: one day.
    #[arg(long, env = "TRAINYARD_KEEP_FAILED_WORK_DIRS_SECONDS")]
    pub keep_failed_work_dirs_seconds: Option<u64>,
    /// Processes and threads one instance may have at most (its cgroup's pids limit).
    #[arg(long, env = "TRAINYARD_INSTANCE_PIDS_MAX")]
    pub instance_pids_max: Option<u32>,
    /// Run TrainingImages that are programs on this host (not container images). Off by default:
    /// a program on the host sees the host's files and software; images see only themselves.
    #[arg(long, env = "TRAINYARD_HOST_PROGRAMS")]
    pub host_programs: bool,
    /// The uids instances run as, one each while it runs (FIRST-LAST; default 61184-65519, systemd's
    /// dynamic range). Each instance's gid is its uid.
    #[arg(long, env = "TRAINYARD_INSTANCE_UIDS")]
    pub instance_uids: Option<String>,
    /// Where every agent on this host locks the uids it hands out (one directory per host).
    #[arg(long, env = "TRAINYARD_UID_LOCKS")]
    pub uid_locks: Option<PathBuf>,
    /// Run instances as the agent's own user instead of a uid each: as root, jobs then run as
    /// root and share everything. For single-user development machines only.
    #[arg(long)]
    pub jobs_run_as_agent_user: bool,
    /// Staged inputs are kept once per version in WORK_ROOT/cache, read-only, and linked into
    /// every instance that reads them; objects no instance uses are removed beyond this size
    /// (MiB; default 20480; 0: no cache, every instance gets copies).
    #[arg(long, env = "TRAINYARD_INPUT_CACHE_MIB")]
    pub input_cache_mib: Option<u64>,
    /// containerd's socket: images run as containers when it answers.
    #[arg(long, env = "TRAINYARD_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// The containerd namespace the agent's images and containers live in (never another's).
    #[arg(long, env = "TRAINYARD_CONTAINERD_NAMESPACE")]
    pub containerd_namespace: Option<String>,
    /// Registry credentials: a Docker `config.json` (its `auths`; an ECR token is the password of
    /// user AWS).
    #[arg(long, env = "TRAINYARD_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// CA certificates (PEM) to trust for registries, besides the system's (a registry with a
    /// certificate of a private CA).
    #[arg(long, env = "TRAINYARD_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// A registry (HOST:PORT) reached over plain HTTP instead of HTTPS (repeatable), as Docker's
    /// insecure-registries.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Where the CDI specs of GPUs are (repeatable; default /etc/cdi and /var/run/cdi; YAML or
    /// JSON, as `nvidia-ctk cdi generate` writes them).
    #[arg(long = "cdi-spec-dir")]
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Images that run as root (their config names no user, or root) run as root in their
    /// container, without capabilities and without gaining privileges, instead of as the instance's
    /// own uid. For images that write where only root may; the job boundary is weaker.
    #[arg(long, env = "TRAINYARD_ROOT_IMAGES")]
    pub root_images: bool,
    /// Pulled images beyond this size (MiB, blobs and unpacked layers; default 102400) are
    /// deleted, least recently used first, never one in use.
    #[arg(long, env = "TRAINYARD_IMAGE_CACHE_MIB")]
    pub image_cache_mib: Option<u64>,
    /// An image whose layers and config (compressed, as its registry lists them) exceed this many
    /// MiB is not pulled: the job fails with a ClientError. Default: the image cache's size.
    #[arg(long, env = "TRAINYARD_MAX_IMAGE_MIB")]
    pub max_image_mib: Option<u64>,
    /// An image whose layers unpack to more than this many MiB fails its job with a ClientError
    /// (gzip layers are measured before anything is written). Default: the image cache's size.
    #[arg(long, env = "TRAINYARD_MAX_IMAGE_UNPACKED_MIB")]
    pub max_image_unpacked_mib: Option<u64>,
    /// Serve Prometheus metrics, /healthz and /readyz (plain HTTP, no token) on this address.
    #[arg(long, env = "TRAINYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// vCPUs to offer instead of the host's count (to oversubscribe a development machine).
    #[arg(long)]
    pub advertise_vcpus: Option<u32>,
    /// Memory to offer instead of the host's, in MiB.
    #[arg(long)]
    pub advertise_memory_mib: Option<u64>,
    /// A bucket served from a local directory: NAME=DIR (repeatable).
    #[arg(long = "bucket", value_parser = parse_bucket)]
    pub buckets: Vec<(String, PathBuf)>,
    /// An S3-compatible endpoint for buckets not mapped to a directory (credentials: AWS_* variables).
    #[arg(long, env = "TRAINYARD_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "TRAINYARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Do not mount work dirs at /opt/ml even as root (programs use $SAGEMAKER_BASE_DIR).
    #[arg(long)]
    pub no_opt_ml: bool,
    /// A host dir instances' programs may write (repeatable; e.g. a shared scratch file system).
    /// The rest of the host is read-only to them, but for their own /opt/ml, /tmp, /var/tmp and
    /// /dev.
    #[arg(long = "instance-writable-path")]
    pub instance_writable_paths: Vec<PathBuf>,
    /// A host device node or dir under /dev every host program's instance is given (repeatable;
    /// e.g. /dev/infiniband for RDMA). Instances see no other node of the host's /dev but the
    /// usual ones (null, zero, urandom, ...) and their own GPUs'.
    #[arg(long = "instance-device")]
    pub instance_devices: Vec<PathBuf>,
    /// The resolver configuration (a resolv.conf) instances get. Default: the host's
    /// /etc/resolv.conf without the resolvers an instance in its own network namespace cannot
    /// reach (loopback, IPv6); where that leaves none, systemd-resolved's upstream servers.
    #[arg(long)]
    pub instance_resolv_conf: Option<PathBuf>,
    /// Let instances make user namespaces of their own (rootless container tools such as
    /// Apptainer or bubblewrap need them). Default: refused (`unshare`/`clone` with
    /// CLONE_NEWUSER fail with EPERM), as Docker's default seccomp profile does: in one, a job
    /// holds every capability over the network namespaces and mounts it makes, the kernel code
    /// most container escapes went through.
    #[arg(long)]
    pub instance_user_namespaces: bool,
    /// Run instances in the host's network instead of a namespace each (no isolation, no peers).
    #[arg(long)]
    pub no_network_namespaces: bool,
    /// Network namespaces made ready at start, before any instance asks (for `algo-1` of a job
    /// without isolation), so the first instances start as fast as later ones. At most 4.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=4))]
    pub ready_namespaces: Option<u32>,
    /// Where other agents reach this one for distributed jobs' peer traffic (default 0.0.0.0:0,
    /// any free port).
    #[arg(long, env = "TRAINYARD_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// The address other agents should dial (default: this host's address towards the coordinator,
    /// with the listener's port).
    #[arg(long, env = "TRAINYARD_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// What a VpcConfig subnet or security group lets an instance reach: NAME=CIDR[,CIDR...]
    /// (repeatable).
    #[arg(long = "vpc-network", value_parser = parse_vpc_network)]
    pub vpc_networks: Vec<(String, Vec<Net>)>,
}

fn parse_vpc_network(raw: &str) -> Result<(String, Vec<Net>), String> {
    let (name, cidrs) = raw.split_once('=').ok_or_else(|| format!("'{raw}' is not NAME=CIDR[,CIDR...]"))?;
    let nets = cidrs.split(',').filter(|c| !c.trim().is_empty()).map(str::parse).collect::<Result<Vec<Net>, _>>()?;
    Ok((name.to_string(), nets))
}

/// A dir instances may write, as given by the operator: absolute, existing, and not one every
/// instance has its own of (the instance would see its own instead).
fn writable_path(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    let path = path.canonicalize().map_err(|e| format!("{shown}: {e}"))?;
    if !path.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    if path == Path::new("/") {
        return Err("/ would make the whole host writable to jobs".into());
    }
    for own in ["/tmp", "/var/tmp", "/dev", "/opt/ml"] {
        if path.starts_with(own) {
            return Err(format!("{shown} is under {own}, of which every instance has its own"));
        }
    }
    Ok(path)
}

/// A device node or dir of the host's /dev to give every instance, checked: it exists under /dev
/// (links resolved) and is not one of the places each instance has its own of.
fn device_path(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let path = path.canonicalize().map_err(|e| format!("{shown}: {e}"))?;
    let dev = Path::new("/dev");
    if !path.starts_with(dev) || path == dev {
        return Err(format!("{shown} is not a node or dir under /dev"));
    }
    for own in ["/dev/shm", "/dev/pts", "/dev/mqueue"] {
        if path.starts_with(own) {
            return Err(format!("{shown} is under {own}, of which every instance has its own"));
        }
    }
    Ok(path)
}

fn parse_bucket(raw: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = raw.split_once('=').ok_or_else(|| format!("'{raw}' is not NAME=DIR"))?;
    Ok((name.to_string(), PathBuf::from(dir)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    coordinator: Option<String>,
    join_token: Option<String>,
    join_token_file: Option<PathBuf>,
    identity_dir: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    id: Option<String>,
    work_root: Option<PathBuf>,
    nvml_library: Option<PathBuf>,
    stop_grace_seconds: Option<u64>,
    keep_failed_work_dirs_seconds: Option<u64>,
    instance_pids_max: Option<u32>,
    instance_uids: Option<String>,
    metrics_listen: Option<SocketAddr>,
    host_programs: Option<bool>,
    containerd_socket: Option<PathBuf>,
    containerd_namespace: Option<String>,
    registry_auth: Option<PathBuf>,
    registry_ca: Option<PathBuf>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    image_cache_mib: Option<u64>,
    max_image_mib: Option<u64>,
    max_image_unpacked_mib: Option<u64>,
    root_images: Option<bool>,
    #[serde(default)]
    cdi_spec_dirs: Vec<PathBuf>,
    input_cache_mib: Option<u64>,
    uid_locks: Option<PathBuf>,
    jobs_run_as_agent_user: Option<bool>,
    advertise_vcpus: Option<u32>,
    advertise_memory_mib: Option<u64>,
    log_format: Option<String>,
    /// `s3://NAME/...` resolves to this directory.
    #[serde(default)]
    buckets: BTreeMap<String, PathBuf>,
    /// Other buckets are objects in this S3-compatible store.
    s3: Option<S3File>,
    no_network_namespaces: Option<bool>,
    ready_namespaces: Option<u32>,
    peer_listen: Option<SocketAddr>,
    peer_advertise: Option<String>,
    /// `"subnet-0abc" = ["10.1.0.0/16"]`: what VpcConfig names let an instance reach.
    #[serde(default)]
    vpc_networks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    instance_writable_paths: Vec<PathBuf>,
    #[serde(default)]
    instance_devices: Vec<PathBuf>,
    instance_resolv_conf: Option<PathBuf>,
    instance_user_namespaces: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3File {
    endpoint: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The coordinators (a scheme given by the user is dropped: TLS is decided by `insecure`).
    pub coordinators: trainyard_proto::client::Coordinators,
    pub join_token: Option<String>,
    pub identity_dir: PathBuf,
    pub insecure: bool,
    pub id: String,
    pub work_root: PathBuf,
    pub nvml_library: Option<PathBuf>,
    pub stop_grace: Duration,
    pub keep_failed_work_dirs: Duration,
    pub instance_pids_max: u32,
    pub instance_uids: UidRange,
    pub metrics_listen: Option<SocketAddr>,
    pub host_programs: bool,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub registry_auth: Option<PathBuf>,
    pub registry_ca: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// The agent's files that may hold secrets (its configuration, the join token's file, the
    /// registry credentials): no instance reads them, whatever their mode.
    pub secret_files: Vec<PathBuf>,
    /// Those that do hold secrets (the configuration only when a join token is written in it):
    /// the agent warns of one every user of the host may read.
    pub private_files: Vec<PathBuf>,
    pub image_cache_mib: u64,
    pub max_image_mib: u64,
    pub max_image_unpacked_mib: u64,
    pub root_images: bool,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub input_cache_mib: u64,
    pub uid_locks: PathBuf,
    pub jobs_run_as_agent_user: bool,
    pub advertise_vcpus: Option<u32>,
    pub advertise_memory_mib: Option<u64>,
    pub buckets: BTreeMap<String, PathBuf>,
    /// Set when buckets may live in an S3-compatible store (AWS's, or one at `endpoint`).
    pub s3: Option<S3Settings>,
    pub json_logs: bool,
    pub no_opt_ml: bool,
    /// Host dirs instances may write (checked: absolute, existing, not hidden by their own).
    pub instance_writable_paths: Vec<PathBuf>,
    /// Host device nodes or dirs every instance is given (checked: existing, under /dev).
    pub instance_devices: Vec<PathBuf>,
    /// The resolv.conf instances get (checked: readable).
    pub instance_resolv_conf: Option<PathBuf>,
    /// Instances may make user namespaces (`--instance-user-namespaces`).
    pub instance_user_namespaces: bool,
    pub network_namespaces: bool,
    /// Namespaces made ready at start (`--ready-namespaces`).
    pub ready_namespaces: u32,
    pub peer_listen: SocketAddr,
    pub peer_advertise: Option<String>,
    pub vpc_networks: BTreeMap<String, Vec<Net>>,
}

impl Config {
    pub fn load(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read(path)?,
            None => FileConfig::default(),
        };
        let real = |path: Option<PathBuf>| path.and_then(|p| std::fs::canonicalize(p).ok());
        let config_file = real(flags.config.clone());
        let private_files: Vec<PathBuf> = [
            config_file.clone().filter(|_| file.join_token.is_some()),
            real(flags.join_token_file.clone().or(file.join_token_file.clone())),
            real(flags.registry_auth.clone().or(file.registry_auth.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut secret_files: Vec<PathBuf> = config_file.into_iter().chain(private_files.iter().cloned()).collect();
        secret_files.dedup();
        let mut buckets = file.buckets;
        buckets.extend(flags.buckets);
        let mut vpc_networks = BTreeMap::new();
        for (name, cidrs) in file.vpc_networks {
            let nets = cidrs.iter().map(|c| c.parse()).collect::<Result<Vec<Net>, String>>();
            vpc_networks.insert(name.clone(), nets.map_err(|e| anyhow::anyhow!("vpc_networks.{name}: {e}"))?);
        }
        vpc_networks.extend(flags.vpc_networks);
        let id =
            flags.id.or(file.id).or_else(|| sysinfo::System::host_name().ok()).unwrap_or_else(|| "agent".to_string());
        let coordinator = flags.coordinator.or(file.coordinator).unwrap_or_else(|| "127.0.0.1:50051".into());
        let work_root = flags.work_root.or(file.work_root).unwrap_or_else(|| PathBuf::from(".trainyard/agent"));
        Ok(Config {
            coordinators: trainyard_proto::client::Coordinators::parse(&coordinator)
                .map_err(|e| anyhow::anyhow!("--coordinator: {e}"))?,
            // A file named for the purpose wins over a token in the environment.
            join_token: match flags.join_token_file.or(file.join_token_file) {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("--join-token-file {}: {e}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => flags.join_token.or(file.join_token),
            },
            identity_dir: flags.identity_dir.or(file.identity_dir).unwrap_or_else(|| work_root.join("identity")),
            insecure: flags.insecure || file.insecure,
            id,
            work_root,
            nvml_library: flags.nvml_library.or(file.nvml_library),
            stop_grace: Duration::from_secs(flags.stop_grace_seconds.or(file.stop_grace_seconds).unwrap_or(120)),
            instance_pids_max: flags
                .instance_pids_max
                .or(file.instance_pids_max)
                .unwrap_or(crate::cgroup::DEFAULT_PIDS),
            instance_uids: UidRange::parse(
                flags.instance_uids.or(file.instance_uids).as_deref().unwrap_or(crate::uids::DEFAULT_RANGE),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            host_programs: flags.host_programs || file.host_programs == Some(true),
            containerd_socket: flags
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock")),
            containerd_namespace: flags
                .containerd_namespace
                .or(file.containerd_namespace)
                .unwrap_or_else(|| "trainyard".into()),
            registry_auth: flags.registry_auth.or(file.registry_auth),
            secret_files,
            private_files,
            registry_ca: flags.registry_ca.or(file.registry_ca),
            insecure_registries: [file.insecure_registries, flags.insecure_registries].concat(),
            image_cache_mib: flags.image_cache_mib.or(file.image_cache_mib).unwrap_or(102_400),
            max_image_mib: flags
                .max_image_mib
                .or(file.max_image_mib)
                .unwrap_or_else(|| flags.image_cache_mib.or(file.image_cache_mib).unwrap_or(102_400)),
            max_image_unpacked_mib: flags
                .max_image_unpacked_mib
                .or(file.max_image_unpacked_mib)
                .unwrap_or_else(|| flags.image_cache_mib.or(file.image_cache_mib).unwrap_or(102_400)),
            root_images: flags.root_images || file.root_images == Some(true),
            cdi_spec_dirs: crate::cdi::dirs(&[file.cdi_spec_dirs, flags.cdi_spec_dirs].concat()),
            input_cache_mib: flags.input_cache_mib.or(file.input_cache_mib).unwrap_or(20_480),
            uid_locks: flags.uid_locks.or(file.uid_locks).unwrap_or_else(|| PathBuf::from("/run/trainyard/uids")),
            jobs_run_as_agent_user: flags.jobs_run_as_agent_user || file.jobs_run_as_agent_user == Some(true),
            keep_failed_work_dirs: Duration::from_secs(
                flags.keep_failed_work_dirs_seconds.or(file.keep_failed_work_dirs_seconds).unwrap_or(86_400),
            ),
            advertise_vcpus: flags.advertise_vcpus.or(file.advertise_vcpus),
            advertise_memory_mib: flags.advertise_memory_mib.or(file.advertise_memory_mib),
            buckets,
            s3: match (flags.s3_endpoint, file.s3) {
                (Some(endpoint), file) => Some(S3Settings {
                    endpoint: Some(endpoint),
                    region: file.and_then(|f| f.region).or_else(|| std::env::var("AWS_REGION").ok()),
                }),
                (None, Some(f)) => Some(S3Settings {
                    endpoint: f.endpoint,
                    region: f.region.or_else(|| std::env::var("AWS_REGION").ok()),
                }),
                (None, None) => None,
            },
            no_opt_ml: flags.no_opt_ml,
            instance_writable_paths: [file.instance_writable_paths, flags.instance_writable_paths]
                .concat()
                .into_iter()
                .map(|path| writable_path(&path).map_err(|e| anyhow::anyhow!("--instance-writable-path: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            instance_devices: [file.instance_devices, flags.instance_devices]
                .concat()
                .into_iter()
                .map(|path| device_path(&path).map_err(|e| anyhow::anyhow!("--instance-device: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            instance_resolv_conf: match flags.instance_resolv_conf.or(file.instance_resolv_conf) {
                Some(path) => {
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("--instance-resolv-conf {}: {e}", path.display()))?;
                    Some(path)
                }
                None => None,
            },
            instance_user_namespaces: flags.instance_user_namespaces || file.instance_user_namespaces == Some(true),
            network_namespaces: !(flags.no_network_namespaces || file.no_network_namespaces == Some(true)),
            ready_namespaces: match flags.ready_namespaces.or(file.ready_namespaces) {
                Some(n) if n as usize > crate::network::IDLE_NAMESPACES => {
                    anyhow::bail!("ready_namespaces: {n} is more than {}", crate::network::IDLE_NAMESPACES)
                }
                Some(n) => n,
                None => crate::network::IDLE_NAMESPACES as u32,
            },
            peer_listen: flags.peer_listen.or(file.peer_listen).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            peer_advertise: flags.peer_advertise.or(file.peer_advertise),
            vpc_networks,
            json_logs: flags.log_format.or(file.log_format).as_deref() == Some("json"),
        })
    }
}

fn read(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration reference, and the tables whose keys it must name.
    const EXAMPLE: &str = "/../../deploy/agent.example.toml";
    const TABLES: &[&str] = &["", "[s3]"];

    /// The example file is the configuration reference: it names every key the file may hold.
    #[test]
    fn the_example_names_every_configuration_key() {
        let example = std::fs::read_to_string(format!("{}{EXAMPLE}", env!("CARGO_MANIFEST_DIR"))).expect("example");
        let missing = trainyard_testkit::config_reference::keys_not_named::<FileConfig>(&example, TABLES);
        assert!(missing.is_empty(), "keys the example does not name: {missing:?}");
    }

    #[test]
    fn a_writable_path_must_be_a_dir_the_instance_does_not_have_its_own_of() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("dir");
        assert_eq!(writable_path(dir.path()), Ok(dir.path().canonicalize().expect("canonical")));
        let refused = |path: &str| writable_path(Path::new(path)).unwrap_err();
        assert!(refused("relative/dir").contains("not an absolute path"));
        assert!(refused("/").contains("whole host"));
        assert!(refused("/tmp").contains("under /tmp"));
        assert!(refused("/var/tmp").contains("under /var/tmp"));
        assert!(refused("/nonexistent-trainyard-dir").contains("No such file"));
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert!(writable_path(&file).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn an_instance_device_must_be_under_dev_and_not_one_the_instance_has_its_own_of() {
        assert_eq!(device_path(Path::new("/dev/null")), Ok(PathBuf::from("/dev/null")));
        let refused = |path: &str| device_path(Path::new(path)).unwrap_err();
        assert!(refused("/dev").contains("not a node or dir under /dev"));
        assert!(refused("/etc/passwd").contains("not a node or dir under /dev"));
        // A link is judged by where it leads: /dev/fd is /proc/self/fd.
        assert!(refused("/dev/fd").contains("not a node or dir under /dev"));
        assert!(refused("/dev/shm").contains("under /dev/shm"));
        assert!(refused("/dev/nonexistent-trainyard-node").contains("No such file"));
        assert!(writable_path(Path::new("/dev/shm")).unwrap_err().contains("under /dev"));
    }

    /// The files instances must not read: the configuration, the join token's file and the
    /// registry credentials, wherever each was named (flag or file), by their real paths.
    #[test]
    fn the_files_that_may_hold_secrets_are_known_by_their_real_paths() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("dir");
        let token = dir.path().join("token");
        let credentials = dir.path().join("registry.json");
        std::fs::write(&token, "tyj_x\n").expect("write");
        std::fs::write(&credentials, "{}").expect("write");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, format!("join_token_file = {:?}\n", token.display().to_string())).expect("write");
        let via = dir.path().join("via-a-link.json");
        std::os::unix::fs::symlink(&credentials, &via).expect("link");
        let flags = Flags::parse_from([
            "trainyard-agent",
            "--config",
            &config.display().to_string(),
            "--registry-auth",
            &via.display().to_string(),
        ]);
        let loaded = Config::load(flags).expect("config");
        let real = |p: &Path| p.canonicalize().expect("canonical");
        assert_eq!(loaded.secret_files, [real(&config), real(&token), real(&credentials)]);
        assert_eq!(loaded.join_token.as_deref(), Some("tyj_x"));
        // A configuration without a token in it is hidden all the same, but needs no warning.
        assert_eq!(loaded.private_files, [real(&token), real(&credentials)]);
        std::fs::write(&config, "join_token = \"tyj_y\"\n").expect("write");
        let inline = Config::load(Flags::parse_from(["trainyard-agent", "--config", &config.display().to_string()]))
            .expect("config");
        assert_eq!(inline.private_files, [real(&config)]);
    }

    #[test]
    fn the_example_configuration_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/agent.example.toml");
        let config = Config::load(Flags::parse_from(["trainyard-agent", "--config", example])).expect("example");
        assert_eq!(config.coordinators.addresses(), ["10.0.0.5:50051"]);
        assert!(!config.insecure, "TLS unless asked otherwise");
        assert_eq!(config.peer_listen, "0.0.0.0:50052".parse().expect("address"));
        assert!(config.network_namespaces);
        assert_eq!(config.vpc_networks["sg-0123456789abcdef0"].len(), 2);
        assert_eq!(config.vpc_networks["subnet-0a1b2c3d"][0].prefix, 16);
        assert_eq!(config.buckets.len(), 2, "top-level keys must come before the first [table]");
    }

    #[test]
    fn a_bad_vpc_network_names_its_entry() {
        assert!(parse_vpc_network("subnet-1=10.0.0.0/8,nonsense").unwrap_err().contains("nonsense"));
        assert!(parse_vpc_network("no-equals-sign").unwrap_err().contains("NAME=CIDR"));
        assert_eq!(parse_vpc_network("sg-empty="), Ok(("sg-empty".to_string(), Vec::new())));
    }
}
