//! Runs one training-job instance with SageMaker's container contract, so that training code written
//! for SageMaker runs unchanged. An instance goes through five steps, each in its own file:
//!
//! 1. `prepare`: a work dir laid out like `/opt/ml` (`input/config/*.json`, `input/data/<channel>/`,
//!    `model/`, `output/`, `checkpoints/`), channels staged (links to the input cache, noted in
//!    `shared_inputs`), the `SM_*` environment;
//! 2. the network: its own namespace, reachable by its peers (`crate::network`);
//! 3. a runtime launches the program (`process`: a program on the host, `<TrainingImage> train`);
//!    what it hands back is the program's output, its end, and a [`Control`] to signal or kill
//!    everything the instance started;
//! 4. `supervise`: logs and metrics stream, stop/MaxRuntimeInSeconds = SIGTERM, a grace period,
//!    SIGKILL; exit 0 = Completed, else Failed with `output/failure` or the last stderr lines;
//! 5. `upload`: `model/` and `output/data/` packed and uploaded, checkpoints synced, the work dir
//!    removed (kept for a while when the instance failed).

mod container;
mod devices;
mod foreign_mounts;
mod own_sys;

pub use container::ContainerCgroups;
mod prepare;
mod process;
pub use process::{private_run_possible, read_only_host_supported};
mod shared_inputs;
use shared_inputs::SharedInputs;
mod supervise;
mod upload;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use trainyard_model::images::TrainingImage;
use trainyard_proto::model::api;
use trainyard_proto::pb::{self, InstanceState};

use crate::network::forwarder::Forwarder;
use crate::network::plan::{Egress, Net};
use crate::network::{InstanceNetwork, Network};
use crate::storage::Storage;
use crate::workdirs;

pub use upload::STAGING;

/// Everything an instance needs to run, from its assignment.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub job: String,
    pub arn: String,
    pub instance: u32,
    pub attempt: u32,
    pub hosts: Vec<String>,
    pub request: api::CreateTrainingJobRequest,
    pub gpu_uuids: Vec<String>,
    /// Instance → the peer address of its agent (every instance of the job).
    pub peers: BTreeMap<u32, String>,
    /// The job's certificate when its peer traffic is encrypted.
    pub credential: Option<pb::JobCredential>,
    /// The execution role's user and group (None: the agent's own user).
    pub run_as: Option<pb::RunAs>,
    /// The instance type's memory and vCPUs (the cgroup's limits; 0: none).
    pub memory_mib: u64,
    pub vcpus: u32,
}

/// What the runner reports, in order.
#[derive(Debug)]
pub enum Report {
    Update(pb::InstanceUpdate),
    Logs(pb::LogBatch),
}

/// Why an instance is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Requested,
    /// Fencing: the coordinator has not been heard from for longer than its lease (it may be
    /// running this instance elsewhere by now), or it says the instance is no longer this agent's.
    /// Killed at once, nothing uploaded.
    Fence,
}

/// Why a fenced instance failed.
pub const FENCED: &str = "InternalServerError: killed by its agent (fencing): the coordinator could not be reached \
                          within its lease, or gave the job to another agent; a retry never runs at the same time";

pub struct Settings {
    /// Mount each instance's work dir at `/opt/ml` in a private mount namespace (needs root).
    pub opt_ml: bool,
    pub work_root: PathBuf,
    pub storage: Storage,
    pub stop_grace: Duration,
    pub vcpus: u32,
    /// Set when each instance gets its own network namespace (root, ip, nft).
    pub network: Option<Arc<Network>>,
    pub forwarder: Arc<Forwarder>,
    /// VpcConfig subnet and security-group names → the networks they may reach.
    pub vpc_networks: BTreeMap<String, Vec<Net>>,
    /// Set when each instance gets its own cgroup (root, a cgroup file system).
    pub cgroups: Option<Arc<crate::cgroup::AgentCgroups>>,
    /// Processes and threads an instance may have at most.
    pub pids_max: u32,
    /// Set when each instance runs as a uid of its own (root); else as the agent's user.
    pub uids: Option<Arc<crate::uids::UidPool>>,
    /// Set when images run as containers.
    pub containerd: Option<Arc<crate::containerd::Containerd>>,
    /// Where containers' images come from (set with `containerd`).
    pub images: Option<Arc<crate::image_cache::ImageCache>>,
    /// Images that run as root do so in their containers (`--root-images`).
    pub root_images: bool,
    /// The cgroups of this agent's containers.
    pub container_cgroups: Arc<ContainerCgroups>,
    /// Where the CDI specs that give containers their GPUs are (read at each launch: a driver
    /// upgrade rewrites them).
    pub cdi_dirs: Vec<PathBuf>,
    /// Each GPU's NVML index, by UUID (CDI specs name GPUs by either).
    pub gpu_indexes: BTreeMap<String, u32>,
    /// Each GPU's device node number (`/dev/nvidia<minor>`), by UUID.
    pub gpu_minors: BTreeMap<String, u32>,
    /// It runs programs on its host (`--host-programs`).
    pub host_programs: bool,
    /// Host dirs that instances' programs may write (the rest of the host is read-only to them).
    pub instance_writable_paths: Vec<PathBuf>,
    /// The agent's files that may hold secrets ([`crate::config::Config::secret_files`]): a host
    /// program's instance finds [`Settings::inaccessible_file`] there instead.
    pub secret_files: Vec<PathBuf>,
    /// An empty file no user may read (mode 0000, root's), bound over each secret file, as
    /// systemd's InaccessiblePaths= does.
    pub inaccessible_file: PathBuf,
    /// Each host program's instance gets an empty /run of its own (decided at start:
    /// [`private_run_possible`]).
    pub private_run: bool,
    /// Host device nodes or dirs under /dev every instance is given (`--instance-device`): with
    /// `opt_ml` (as root), each host program's instance gets a /dev of its own, with only the
    /// nodes it needs, its GPUs' and these.
    pub instance_devices: Vec<PathBuf>,
    /// The resolver configuration instances get instead of the host's (`--instance-resolv-conf`).
    pub instance_resolv_conf: Option<PathBuf>,
    /// Instances may make user namespaces of their own (`--instance-user-namespaces`); else a
    /// seccomp filter refuses them ([`crate::seccomp`], and the containers' profile).
    pub instance_user_namespaces: bool,
    /// This agent's id (its containers carry it).
    pub agent_id: String,
    /// One run at a time per work dir: a run the coordinator has already forgotten (fenced, or
    /// placed again after a restart) may still be cleaning up the dir a new run of the same
    /// instance would lay out.
    pub work_dirs_in_use: std::sync::Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    pub metric_patterns: supervise::MetricPatterns,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl Settings {
    fn work_dir_lock(&self, dir: &std::path::Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_use = self.work_dirs_in_use.lock().unwrap_or_else(|e| e.into_inner());
        in_use.entry(dir.to_path_buf()).or_default().clone()
    }

    /// Forgets the lock of a dir no run holds or waits for any more (the map stays small).
    fn release_work_dir(&self, dir: &std::path::Path, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut in_use = self.work_dirs_in_use.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else has it.
        if Arc::strong_count(&lock) <= 2 {
            in_use.remove(dir);
        }
    }
}

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// Where SageMaker's containers find their files.
pub const OPT_ML: &str = "/opt/ml";

/// The instance's own /tmp (and $HOME), in its work dir.
const PRIVATE_TMP: &str = ".tmp";

/// The instance's own /var/tmp, in its work dir.
const PRIVATE_VAR_TMP: &str = ".var-tmp";

/// The instance's own /etc/hosts (`algo-N` of every instance), in its work dir.
const HOSTS_FILE: &str = ".hosts";

/// The instance's own /etc/resolv.conf, in its work dir.
const RESOLVER_FILE: &str = ".resolv.conf";

/// The resolver configuration an instance gets, read at each launch (DHCP may change the host's):
/// the operator's (`--instance-resolv-conf`) as it is; else the host's, without the resolvers an
/// instance in its own network namespace cannot reach ([`crate::network::resolver`]). None when
/// the host has none to read. `Err` is the job's FailureReason.
fn resolver_config(settings: &Settings, own_namespace: bool) -> Result<Option<String>, String> {
    if let Some(path) = &settings.instance_resolv_conf {
        return read_resolver_file(path).map(Some).map_err(|e| {
            format!("InternalServerError: the instances' resolver configuration {}: {e}", path.display())
        });
    }
    if !own_namespace {
        return Ok(read_resolver_file(std::path::Path::new(crate::network::resolver::HOST_RESOLV_CONF)).ok());
    }
    Ok(host_resolver_for_instances().map(|given| given.contents))
}

/// The host's resolver configuration as an instance in its own network namespace gets it
/// ([`crate::network::resolver::for_instances`]); None when the host has none to read.
pub fn host_resolver_for_instances() -> Option<crate::network::resolver::InstanceResolver> {
    use crate::network::resolver;
    let host = read_resolver_file(std::path::Path::new(resolver::HOST_RESOLV_CONF)).ok()?;
    let upstream = read_resolver_file(std::path::Path::new(resolver::RESOLVED_UPSTREAM)).ok();
    Some(resolver::for_instances(&host, upstream.as_deref()))
}

/// A resolver configuration, at most [`crate::network::resolver::MAX_BYTES`] of it.
fn read_resolver_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(crate::network::resolver::MAX_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// Writes the instance's /etc/hosts: the host's, and `algo-N` of every instance (in its own
/// network namespace: at their addresses; without one: only itself, on loopback).
fn write_hosts_file(spec: &InstanceSpec, path: &std::path::Path, own_namespace: bool) -> std::io::Result<()> {
    let base = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let entries = if own_namespace {
        crate::network::plan::hosts_file(&base, spec.hosts.len() as u32)
    } else {
        format!("{}\n127.0.0.1 algo-{n}\n::ffff:127.0.0.1 algo-{n}\n", base.trim_end(), n = spec.instance)
    };
    std::fs::write(path, entries)
}

/// Who the instance's processes are while it runs: a uid of its own (its gid the same), with the
/// execution role's group added. Dropped: the work dir goes back to root (a dir kept for debugging
/// must not be reachable by the uid's next holder), every process left under the uid is killed,
/// and the uid is free again.
struct Identity {
    lease: crate::uids::UidLease,
    /// The instance's own group first, then the role's.
    groups: Vec<u32>,
    dir: PathBuf,
}

impl Identity {
    /// None when the agent runs instances as its own user.
    fn lease(spec: &InstanceSpec, settings: &Settings, dir: &std::path::Path) -> Result<Option<Identity>, String> {
        let Some(pool) = &settings.uids else { return Ok(None) };
        let role_group = match spec.run_as.as_ref().map(|r| r.group.as_str()).filter(|g| !g.is_empty()) {
            Some(group) => Some(crate::users::role_group(group)?),
            None => None,
        };
        let lease = pool.lease().map_err(|reason| format!("InternalServerError: {reason}"))?;
        let uid = lease.uid;
        info!(job = %spec.job, instance = spec.instance, uid, "the instance runs as a uid of its own");
        let identity =
            Identity { lease, groups: std::iter::once(uid).chain(role_group).collect(), dir: dir.to_path_buf() };
        crate::users::give_tree(dir, uid, uid).map_err(|e| format!("giving the work dir to uid {uid}: {e}"))?;
        Ok(Some(identity))
    }

    fn uid(&self) -> u32 {
        self.lease.uid
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        if let Err(e) = std::os::unix::fs::lchown(&self.dir, Some(0), Some(0))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %self.dir.display(), uid = self.lease.uid, error = %e, "could not give an ended instance's work dir back to root");
        }
    }
}

/// One of the program's output streams.
type Output = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// How a program ended.
#[derive(Debug)]
struct Exit {
    /// Its exit code; None when a signal ended it.
    code: Option<i32>,
    /// As a person reads it: "exit status: 1", "signal: 9 (SIGKILL)".
    text: String,
}

/// What a runtime hands the supervisor once the program runs.
struct Launched<C> {
    stdout: Option<Output>,
    stderr: Option<Output>,
    /// Sent when the program (not everything it started) has ended.
    exited: oneshot::Receiver<std::io::Result<Exit>>,
    control: C,
    /// The input cache's files in its work dir (none when it was given copies): not charged to
    /// its volume.
    shared: HashSet<shared_inputs::FileId>,
}

/// What an instance starts with: its environment, and the input cache's files staged for it.
struct Inputs {
    env: BTreeMap<String, String>,
    shared: SharedInputs,
}

/// Reaches every process of a running instance, wherever it moved. Dropped once the supervisor
/// has killed them all: whatever the runtime holds for the instance is released then.
trait Control {
    fn signal(&self, signal: i32);
    /// Kills every process of the instance; whether the runtime has seen them all gone (a
    /// cgroup emptied), so that nothing of the instance can be left in its network namespace.
    fn kill_all(&self) -> impl std::future::Future<Output = bool>;
    /// Processes the kernel killed for running out of the instance's memory.
    fn oom_kills(&self) -> u64;
    /// Where the instance can write besides its work dir, counted against its volume.
    fn writable_layer(&self) -> Option<WritableLayer> {
        None
    }
}

/// A container's writable root file system: containerd's snapshot of that key.
#[derive(Clone)]
struct WritableLayer {
    containerd: Arc<crate::containerd::Containerd>,
    key: String,
}

impl WritableLayer {
    async fn bytes(&self) -> Result<u64, String> {
        self.containerd.snapshot_usage(&self.key).await
    }
}

/// The instance's volume (`VolumeSizeInGB`), in bytes; None when the request gives none.
fn volume_bytes(request: &api::CreateTrainingJobRequest) -> Option<u64> {
    let gb = request.resource_config.as_ref()?.volume_size_in_gb.filter(|gb| *gb > 0)?;
    Some((gb as u64).saturating_mul(1 << 30))
}

/// The instance's number for the first log line, or metric sample, of attempt `attempt`: both are
/// numbered per instance across its attempts (a retried instance's output is new, not sent again).
pub(crate) fn first_number_of_attempt(attempt: u32) -> u64 {
    (u64::from(attempt) << 32) + 1
}

struct Reporter<'a> {
    spec: &'a InstanceSpec,
    tx: &'a mpsc::UnboundedSender<Report>,
    /// The number of the next metric sample.
    next_sample: std::sync::atomic::AtomicU64,
}

impl Reporter<'_> {
    fn update(&self, state: InstanceState, message: &str, metrics: Vec<pb::MetricSample>) {
        let count = metrics.len() as u64;
        let first_sample =
            if count == 0 { 0 } else { self.next_sample.fetch_add(count, std::sync::atomic::Ordering::Relaxed) };
        let _ = self.tx.send(Report::Update(pb::InstanceUpdate {
            training_job_name: self.spec.job.clone(),
            instance: self.spec.instance,
            state: state as i32,
            message: message.to_string(),
            at_millis: now_millis(),
            metrics,
            attempt: self.spec.attempt,
            first_sample,
            ..Default::default()
        }));
    }
}

/// Runs the instance to its end and returns its final update (also sent through `tx`).
pub async fn run(
    spec: InstanceSpec,
    settings: &Settings,
    tx: mpsc::UnboundedSender<Report>,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> pb::InstanceUpdate {
    let next_sample = std::sync::atomic::AtomicU64::new(first_number_of_attempt(spec.attempt));
    let reporter = Reporter { spec: &spec, tx: &tx, next_sample };
    let dir = workdirs::instance_dir(&settings.work_root, &spec.job, spec.instance);
    let dir_lock = settings.work_dir_lock(&dir);
    let held = dir_lock.clone().lock_owned().await;
    settings.metrics.instances_running.inc();
    reporter.update(InstanceState::Downloading, "Downloading input data", Vec::new());

    let staging = std::time::Instant::now();
    let prepared = prepare::prepare(&spec, settings, &dir).await;
    settings.metrics.staging_seconds.observe(staging.elapsed().as_secs_f64());
    // Checkpoints not written since (restored ones, other instances' among them) are not synced
    // back: a stale copy must never overwrite what another instance wrote.
    let restored_before = std::time::SystemTime::now();
    let outcome = match prepared {
        Err(reason) => Outcome::failed(reason),
        Ok(prepared) => {
            let pipes = std::sync::Arc::new(prepared.pipes);
            for i in 0..pipes.len() {
                let pipes = pipes.clone();
                std::thread::spawn(move || {
                    if let Err(e) = prepare::feed_pipe(&pipes[i]) {
                        warn!(fifo = %pipes[i].fifo.display(), error = %e, "pipe channel ended early");
                    }
                });
            }
            let joining = std::time::Instant::now();
            let joined = join_network(&spec, settings).await;
            settings.metrics.network_setup_seconds.observe(joining.elapsed().as_secs_f64());
            let outcome = match joined {
                Err(reason) => Outcome::failed(reason),
                Ok(network) => {
                    let namespace = network.as_ref().map(|n| n.network.path());
                    let inputs = Inputs { env: prepared.env, shared: prepared.shared };
                    let outcome = execute(&spec, settings, &dir, inputs, namespace, &reporter, &mut stop).await;
                    if let Some(network) = network {
                        leave_network(&spec, settings, network, outcome.left_nothing).await;
                    }
                    outcome
                }
            };
            pipes.iter().for_each(prepare::release_pipe);
            outcome
        }
    };

    // Upload what the job saved, whatever the outcome (a stopped job keeps its model); not after
    // fencing, when a retry elsewhere owns the job's outputs.
    let mut model_artifacts = None;
    let mut failure = outcome.failure.clone();
    let mut state = outcome.state;
    let fenced = *stop.borrow() == Some(StopReason::Fence);
    // An instance stopped for storing more than its volume: what it stored is not uploaded (it
    // may be what filled the volume) and its work dir is not kept.
    let over_volume = failure.as_deref().is_some_and(|f| f.starts_with(supervise::VOLUME_FULL));
    // The model and output come from algo-1; checkpoints from every instance, as SageMaker syncs
    // each instance's /opt/ml/checkpoints (a resumed gang needs all of them).
    let uploads_model = spec.instance == 1;
    if dir.join("model").exists() && !fenced && !over_volume && (uploads_model || upload::has_checkpoints(&spec)) {
        let message = if uploads_model { "Uploading generated training model" } else { "Syncing checkpoints" };
        reporter.update(InstanceState::Uploading, message, Vec::new());
        let uploading = std::time::Instant::now();
        let uploaded = if uploads_model {
            upload::upload(&spec, settings, &dir, restored_before).await.map(Some)
        } else {
            upload::sync_checkpoints(&spec, settings, &dir, restored_before).await.map(|()| None)
        };
        settings.metrics.upload_seconds.observe(uploading.elapsed().as_secs_f64());
        match uploaded {
            Ok(uri) => model_artifacts = uri,
            Err(reason) => {
                if state == InstanceState::Completed {
                    state = InstanceState::Failed;
                    failure = Some(reason);
                } else {
                    warn!(job = %spec.job, %reason, "upload after an unsuccessful run failed");
                }
            }
        }
    }
    let final_update = pb::InstanceUpdate {
        training_job_name: spec.job.clone(),
        instance: spec.instance,
        state: state as i32,
        message: final_message(state).to_string(),
        at_millis: now_millis(),
        failure_reason: failure,
        model_artifacts,
        exit_code: outcome.exit_code,
        metrics: Vec::new(),
        attempt: spec.attempt,
        first_sample: 0,
    };
    let _ = tx.send(Report::Update(final_update.clone()));
    info!(job = %spec.job, instance = spec.instance, state = ?state, failure = final_update.failure_reason.as_deref(), "instance ended");
    // Its outputs are uploaded (or a retry elsewhere owns them): the dir goes, unless it failed.
    let keep = !matches!(state, InstanceState::Completed | InstanceState::Stopped) && !over_volume;
    // Off the runtime's workers: a large input channel's removal takes seconds, and when trials
    // end together their removals would hold up the stream that brings the next assignments.
    // (Not at idle priority: under jobs that keep every CPU busy, removals would then lag behind
    // and work dirs pile up on the disk.)
    let (work_root, job, instance) = (settings.work_root.clone(), spec.job.clone(), spec.instance);
    let removed = tokio::task::spawn_blocking(move || {
        workdirs::finished(&work_root, &job, instance, keep);
        drop(held); // the next run of this dir waits until then
    });
    if removed.await.is_err() {
        warn!(job = %spec.job, instance = spec.instance, "removing the work dir panicked");
    }
    settings.release_work_dir(&dir, dir_lock);
    settings.metrics.instances_running.dec();
    final_update
}

/// Launches the instance through the runtime its TrainingImage needs, and supervises it to its end.
async fn execute(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &std::path::Path,
    inputs: Inputs,
    namespace: Option<PathBuf>,
    reporter: &Reporter<'_>,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> Outcome {
    let image = spec.request.algorithm_specification.as_ref().and_then(|a| a.training_image.as_deref());
    // Each arm either runs the instance to its end, or says why it could not start.
    let reason = match (TrainingImage::of(image.unwrap_or_default()), &settings.containerd) {
        (TrainingImage::HostProgram, _) if !settings.host_programs => {
            "InternalServerError: the TrainingImage is a program on the host and this agent does not run host programs (--host-programs)"
                .to_string()
        }
        (TrainingImage::HostProgram, _) => {
            let launching = std::time::Instant::now();
            match process::launch(spec, settings, dir, inputs, namespace).await {
                Ok(launched) => {
                    settings.metrics.launch_seconds.observe(launching.elapsed().as_secs_f64());
                    return supervise::supervise(spec, settings, dir, launched, reporter, stop).await;
                }
                Err(reason) => reason,
            }
        }
        (TrainingImage::Container(reference), Some(_)) => {
            let launching = std::time::Instant::now();
            match container::launch(spec, settings, &reference, dir, inputs, namespace, reporter).await {
                Ok(launched) => {
                    settings.metrics.launch_seconds.observe(launching.elapsed().as_secs_f64());
                    return supervise::supervise(spec, settings, dir, launched, reporter, stop).await;
                }
                Err(reason) => reason,
            }
        }
        (TrainingImage::Container(reference), None) => {
            format!("InternalServerError: {reference} is a container image and this agent has no container runtime")
        }
    };
    Outcome::failed(reason)
}

fn final_message(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Completed => "Training job completed",
        InstanceState::Failed => "Training job failed",
        InstanceState::Stopped => "Training job stopped",
        InstanceState::MaxRuntimeExceeded => "Training job stopped: MaxRuntimeInSeconds exceeded",
        _ => "",
    }
}

struct Outcome {
    state: InstanceState,
    failure: Option<String>,
    exit_code: Option<i32>,
    /// The runtime saw every process of the instance gone ([`Control::kill_all`]).
    left_nothing: bool,
}

impl Outcome {
    /// An instance that failed before or while it started.
    fn failed(reason: String) -> Outcome {
        Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None, left_nothing: false }
    }
}

/// An instance's namespace and the task carrying its connections to its peers.
struct JoinedNetwork {
    network: InstanceNetwork,
    outbound: tokio::task::JoinHandle<()>,
}

/// What the instance may reach besides its peers: nothing with EnableNetworkIsolation, its VPC's
/// allow-list with a VpcConfig, else what the host reaches.
fn egress_of(spec: &InstanceSpec, settings: &Settings) -> Result<Egress, String> {
    if spec.request.enable_network_isolation == Some(true) {
        return Ok(Egress::Isolated);
    }
    Ok(match crate::network::vpc_egress(spec.request.vpc_config.as_ref(), &settings.vpc_networks)? {
        Some(allowed) => Egress::Only(allowed),
        None => Egress::Open,
    })
}

/// Gives the instance its own network namespace and makes it reachable by its peers. Without
/// namespaces (not root, no nftables) the instance shares the host's network, which only jobs
/// without isolation accept.
async fn join_network(spec: &InstanceSpec, settings: &Settings) -> Result<Option<JoinedNetwork>, String> {
    let egress = egress_of(spec, settings)?;
    let Some(network) = settings.network.as_ref() else {
        if egress != Egress::Open {
            return Err(
                "this agent cannot isolate networks (see `trainyard agents list`), and the job asks for it".into()
            );
        }
        return Ok(None);
    };
    let mut joined = network.create(spec.instance, &egress).await.map_err(|e| format!("network set-up: {e}"))?;
    let tls = match &spec.credential {
        Some(c) => {
            let credential = trainyard_pki::Credential {
                ca_pem: c.ca_pem.clone(),
                certificate_pem: c.certificate_pem.clone(),
                key_pem: c.key_pem.clone(),
            };
            match trainyard_pki::JobTls::new(&spec.job, &credential) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    joined.destroy().await;
                    return Err(format!("the job's certificate: {e}"));
                }
            }
        }
        None => None,
    };
    let listener = joined.take_forwarder_listener().ok_or("the forwarder's listener is missing")?;
    match settings.forwarder.add_instance(&spec.job, spec.instance, joined.path(), listener, spec.peers.clone(), tls) {
        Ok(outbound) => Ok(Some(JoinedNetwork { network: joined, outbound })),
        Err(e) => {
            settings.forwarder.remove_instance(&spec.job, spec.instance);
            joined.destroy().await;
            Err(format!("starting the peer forwarder: {e}"))
        }
    }
}

/// Stops carrying the instance's peer traffic at once; the namespace itself is kept for the next
/// instance or removed, in the background, so that the instance's end is reported without waiting.
async fn leave_network(spec: &InstanceSpec, settings: &Settings, joined: JoinedNetwork, left_nothing: bool) {
    joined.outbound.abort();
    settings.forwarder.remove_instance(&spec.job, spec.instance);
    let network = settings.network.clone();
    if let Some(network) = &network {
        network.begin_release();
    }
    tokio::spawn(async move {
        // The aborted task owns the forwarder's listener: once it is dropped, the namespace counts
        // no socket of the agent's, and the release's check for lingering connections stays cheap.
        let _ = joined.outbound.await;
        match network {
            Some(network) => network.release(joined.network, left_nothing).await,
            None => joined.network.destroy().await,
        }
    });
}
