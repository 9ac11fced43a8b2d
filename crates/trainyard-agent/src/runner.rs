//! Runs one training-job instance with SageMaker's container contract, so that training code written
//! for SageMaker runs unchanged:
//!
//! * a work dir laid out like `/opt/ml`: `input/config/{hyperparameters,resourceconfig,
//!   inputdataconfig}.json`, `input/data/<channel>/`, `model/`, `output/{data,failure}`,
//!   `checkpoints/`;
//! * the `SM_*` variables of the SageMaker training toolkit, `TRAINING_JOB_NAME`/`ARN`,
//!   `SAGEMAKER_BASE_DIR`, `CUDA_VISIBLE_DEVICES` and the job's `Environment`;
//! * `<TrainingImage> train` as the command, in its own process group;
//! * stop = SIGTERM to the group, a grace period, then SIGKILL; `MaxRuntimeInSeconds` does the same
//!   and ends the job `MaxRuntimeExceeded`; what the job saved is uploaded either way;
//! * exit 0 = Completed; otherwise Failed with the first 1,024 characters of `output/failure`, or the
//!   last lines of stderr.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use trainyard_proto::model::api;
use trainyard_proto::pb::{self, InstanceState};

use crate::confined::Confined;
use crate::network::forwarder::Forwarder;
use crate::network::plan::{self, Egress, Net};
use crate::network::{InstanceNetwork, Network};
use crate::storage::{self, Storage};
use crate::workdirs;
use std::sync::Arc;

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
    /// Set when each instance gets its own cgroup (root, a cgroup file system): the agent's id.
    pub cgroups: Option<String>,
    /// Processes and threads an instance may have at most.
    pub pids_max: u32,
    /// Set when each instance runs as a uid of its own (root); else as the agent's user.
    pub uids: Option<Arc<crate::uids::UidPool>>,
}

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// Where SageMaker's containers find their files.
pub const OPT_ML: &str = "/opt/ml";

/// The SageMaker default when a job gives no MaxRuntimeInSeconds: one day.
const DEFAULT_MAX_RUNTIME: u64 = 86_400;
/// Stderr lines kept for a FailureReason when the job writes no `output/failure`.
const STDERR_TAIL: usize = 10;
const LOG_BATCH: usize = 200;
const LOG_BATCH_BYTES: usize = 1024 * 1024;
/// Longest log line kept; longer ones are cut (the coordinator stores every line).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines read from a job but not yet handled, at most (with MAX_LINE_BYTES: 64 MiB at worst).
const LINE_BACKLOG: usize = 1024;

struct Reporter<'a> {
    spec: &'a InstanceSpec,
    tx: &'a mpsc::UnboundedSender<Report>,
}

impl Reporter<'_> {
    fn update(&self, state: InstanceState, message: &str, metrics: Vec<pb::MetricSample>) {
        let _ = self.tx.send(Report::Update(pb::InstanceUpdate {
            training_job_name: self.spec.job.clone(),
            instance: self.spec.instance,
            state: state as i32,
            message: message.to_string(),
            at_millis: now_millis(),
            metrics,
            attempt: self.spec.attempt,
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
    let reporter = Reporter { spec: &spec, tx: &tx };
    let dir = workdirs::instance_dir(&settings.work_root, &spec.job, spec.instance);
    reporter.update(InstanceState::Downloading, "Downloading input data", Vec::new());

    let outcome = match prepare(&spec, settings, &dir).await {
        Err(reason) => Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None },
        Ok(prepared) => {
            let pipes = std::sync::Arc::new(prepared.pipes);
            for i in 0..pipes.len() {
                let pipes = pipes.clone();
                std::thread::spawn(move || {
                    if let Err(e) = feed_pipe(&pipes[i]) {
                        warn!(fifo = %pipes[i].fifo.display(), error = %e, "pipe channel ended early");
                    }
                });
            }
            let outcome = match join_network(&spec, settings).await {
                Err(reason) => Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None },
                Ok(network) => {
                    let namespace = network.as_ref().map(|n| n.network.path());
                    let outcome = execute(&spec, settings, &dir, prepared.env, namespace, &reporter, &mut stop).await;
                    if let Some(network) = network {
                        leave_network(&spec, settings, network).await;
                    }
                    outcome
                }
            };
            pipes.iter().for_each(release_pipe);
            outcome
        }
    };

    // Upload what the job saved, whatever the outcome (a stopped job keeps its model); not after
    // fencing, when a retry elsewhere owns the job's outputs.
    let mut model_artifacts = None;
    let mut failure = outcome.failure.clone();
    let mut state = outcome.state;
    let fenced = *stop.borrow() == Some(StopReason::Fence);
    if dir.join("model").exists() && spec.instance == 1 && !fenced {
        reporter.update(InstanceState::Uploading, "Uploading generated training model", Vec::new());
        match upload(&spec, settings, &dir).await {
            Ok(uri) => model_artifacts = Some(uri),
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
    };
    let _ = tx.send(Report::Update(final_update.clone()));
    info!(job = %spec.job, instance = spec.instance, state = ?state, "instance ended");
    // Its outputs are uploaded (or a retry elsewhere owns them): the dir goes, unless it failed.
    let keep = !matches!(state, InstanceState::Completed | InstanceState::Stopped);
    workdirs::finished(&settings.work_root, &spec.job, spec.instance, keep);
    final_update
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
}

/// A Pipe-mode channel: a FIFO the job reads, fed from the staged files.
struct Pipe {
    fifo: PathBuf,
    /// In the order SageMaker would stream them (key order, or shuffled with ShuffleConfig).
    files: Vec<PathBuf>,
    gzip: bool,
}

struct Prepared {
    env: BTreeMap<String, String>,
    pipes: Vec<Pipe>,
}

/// Lays out the work dir, writes the config files, stages the channels. Returns the environment.
async fn prepare(spec: &InstanceSpec, settings: &Settings, dir: &Path) -> Result<Prepared, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("clearing the work dir", e))?;
    }
    for sub in ["input/config", "input/data", "model", "output/data", "output/intermediate", "checkpoints", PRIVATE_TMP]
    {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io("creating the work dir", e))?;
    }
    // Its job's user's alone (given to the role's user before the program starts).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| io("making the work dir private", e))?;
    let r = &spec.request;
    let hyperparameters = r.hyper_parameters.clone().unwrap_or_default();
    let mut hosts = spec.hosts.clone();
    hosts.sort();
    let host = format!("algo-{}", spec.instance);
    let instance_type = r.resource_config.as_ref().and_then(|c| c.instance_type.clone()).unwrap_or_default();
    let resource_config = json!({
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": "eth0",
    });
    let channels = r.input_data_config.clone().unwrap_or_default();
    let default_mode =
        r.algorithm_specification.as_ref().and_then(|a| a.training_input_mode.clone()).unwrap_or("File".into());
    let mut input_config = serde_json::Map::new();
    for c in &channels {
        let name = c.channel_name.clone().unwrap_or_default();
        let s3 = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref());
        input_config.insert(
            name,
            json!({
                "ContentType": c.content_type,
                "TrainingInputMode": c.input_mode.clone().unwrap_or(default_mode.clone()),
                "S3DistributionType": s3.and_then(|s| s.s3_data_distribution_type.clone()).unwrap_or("FullyReplicated".into()),
                "RecordWrapperType": c.record_wrapper_type.clone().unwrap_or("None".into()),
            }),
        );
    }
    let write = |name: &str, value: &Value| {
        std::fs::write(dir.join("input/config").join(name), serde_json::to_vec_pretty(value).unwrap_or_default())
            .map_err(|e| io(name, e))
    };
    write("hyperparameters.json", &json!(hyperparameters))?;
    write("resourceconfig.json", &resource_config)?;
    write("inputdataconfig.json", &Value::Object(input_config.clone()))?;

    // Channels are staged before the job starts, so an isolated job needs no network.
    let mut pipes = Vec::new();
    for c in &channels {
        let name = c.channel_name.clone().unwrap_or_default();
        let Some(uri) = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref()).and_then(|s| s.s3_uri.clone())
        else {
            continue;
        };
        let mode = c.input_mode.clone().unwrap_or(default_mode.clone());
        let dest = if mode == "Pipe" {
            dir.join("input/data").join(format!(".{name}-staged"))
        } else {
            dir.join("input/data").join(&name)
        };
        let s3 = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref());
        let selection = storage::Selection {
            shard: (s3.and_then(|s| s.s3_data_distribution_type.as_deref()) == Some("ShardedByS3Key"))
                .then(|| (spec.instance as usize - 1, spec.hosts.len().max(1))),
            shuffle_seed: c.shuffle_config.as_ref().and_then(|s| s.seed),
        };
        let staged =
            settings.storage.stage(&uri, &dest, selection).await.map_err(|e| format!("channel {name}: {e}"))?;
        let files = staged.len();
        if files == 0 {
            return Err(format!("channel {name}: no data found at {uri}"));
        }
        if mode == "Pipe" {
            // SageMaker's Pipe mode: the job reads `<channel>_0`, a FIFO.
            let fifo = dir.join("input/data").join(format!("{name}_0"));
            make_fifo(&fifo).map_err(|e| format!("channel {name}: creating {}: {e}", fifo.display()))?;
            pipes.push(Pipe { fifo, files: staged, gzip: c.compression_type.as_deref() == Some("Gzip") });
        }
    }
    // Checkpoints of an earlier run are restored, as SageMaker restores them into a new job.
    if let Some(uri) = r.checkpoint_config.as_ref().and_then(|c| c.s3_uri.clone()) {
        settings
            .storage
            .stage(&uri, &dir.join("checkpoints"), storage::Selection::default())
            .await
            .map_err(|e| format!("restoring checkpoints: {e}"))?;
    }

    let mut env = BTreeMap::new();
    // Where the program sees its work dir: /opt/ml itself when the agent can mount it there.
    let seen = if settings.opt_ml { PathBuf::from(OPT_ML) } else { dir.to_path_buf() };
    let path = |sub: &str| seen.join(sub).display().to_string();
    let names: Vec<String> = channels.iter().filter_map(|c| c.channel_name.clone()).collect();
    env.insert("SAGEMAKER_BASE_DIR".into(), seen.display().to_string());
    env.insert("TRAINING_JOB_NAME".into(), spec.job.clone());
    env.insert("TRAINING_JOB_ARN".into(), spec.arn.clone());
    env.insert("SM_MODEL_DIR".into(), path("model"));
    env.insert("SM_INPUT_DIR".into(), path("input"));
    env.insert("SM_INPUT_CONFIG_DIR".into(), path("input/config"));
    env.insert("SM_INPUT_DATA_DIR".into(), path("input/data"));
    env.insert("SM_OUTPUT_DIR".into(), path("output"));
    env.insert("SM_OUTPUT_DATA_DIR".into(), path("output/data"));
    env.insert("SM_OUTPUT_INTERMEDIATE_DIR".into(), path("output/intermediate"));
    env.insert("SM_CHECKPOINT_DIR".into(), path("checkpoints"));
    env.insert("SM_CHANNELS".into(), json!(names).to_string());
    for name in &names {
        env.insert(
            format!("SM_CHANNEL_{}", name.to_uppercase()),
            seen.join("input/data").join(name).display().to_string(),
        );
    }
    env.insert("SM_HPS".into(), json!(hyperparameters).to_string());
    for (k, v) in &hyperparameters {
        env.insert(format!("SM_HP_{}", k.to_uppercase()), v.clone());
    }
    env.insert("SM_CURRENT_HOST".into(), host.clone());
    env.insert("SM_CURRENT_INSTANCE_TYPE".into(), instance_type);
    env.insert("SM_HOSTS".into(), json!(hosts).to_string());
    env.insert("SM_NUM_GPUS".into(), spec.gpu_uuids.len().to_string());
    env.insert("SM_NUM_CPUS".into(), settings.vcpus.to_string());
    env.insert("SM_NETWORK_INTERFACE_NAME".into(), "eth0".into());
    env.insert("SM_RESOURCE_CONFIG".into(), resource_config.to_string());
    env.insert("SM_INPUT_DATA_CONFIG".into(), Value::Object(input_config).to_string());
    env.insert("SM_USER_ENTRY_POINT".into(), String::new());
    // GPUs are exclusive to this instance; name them by UUID, which survives re-enumeration.
    env.insert("CUDA_VISIBLE_DEVICES".into(), spec.gpu_uuids.join(","));
    env.insert(
        "NVIDIA_VISIBLE_DEVICES".into(),
        if spec.gpu_uuids.is_empty() { "void".into() } else { spec.gpu_uuids.join(",") },
    );
    for (k, v) in r.environment.clone().unwrap_or_default() {
        env.insert(k, v);
    }
    Ok(Prepared { env, pipes })
}

fn make_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Writes every staged file of a Pipe channel into its FIFO (decompressing Gzip), then closes it,
/// which the job sees as the end of the epoch. Blocks until the job opens the FIFO.
fn feed_pipe(pipe: &Pipe) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new().write(true).open(&pipe.fifo)?;
    for f in &pipe.files {
        let file = std::fs::File::open(f)?;
        if pipe.gzip {
            std::io::copy(&mut flate2::read::GzDecoder::new(file), &mut out)?;
        } else {
            std::io::copy(&mut std::io::BufReader::new(file), &mut out)?;
        }
    }
    out.flush()
}

/// Unblocks a feeder still waiting for a reader, once the job has ended.
fn release_pipe(pipe: &Pipe) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&pipe.fifo);
}

/// The command line: the image names a program (a path or a command line), invoked with `train`
/// as SageMaker invokes a container; ContainerEntrypoint/Arguments replace it when given.
fn command_line(request: &api::CreateTrainingJobRequest) -> Result<Vec<String>, String> {
    let spec = request.algorithm_specification.as_ref().ok_or("AlgorithmSpecification is missing")?;
    if let Some(entry) = spec.container_entrypoint.clone().filter(|e| !e.is_empty()) {
        let mut argv = entry;
        argv.extend(spec.container_arguments.clone().unwrap_or_default());
        return Ok(argv);
    }
    let image = spec.training_image.as_deref().ok_or("TrainingImage is missing")?;
    let mut argv: Vec<String> = image.split_whitespace().map(str::to_string).collect();
    if argv.is_empty() {
        return Err("TrainingImage is empty".into());
    }
    // A relative program path is relative to the agent's working directory.
    if argv[0].contains('/')
        && !argv[0].starts_with('/')
        && let Ok(cwd) = std::env::current_dir()
    {
        argv[0] = cwd.join(&argv[0]).display().to_string();
    }
    argv.extend(spec.container_arguments.clone().unwrap_or_default());
    argv.push("train".into());
    Ok(argv)
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
async fn leave_network(spec: &InstanceSpec, settings: &Settings, joined: JoinedNetwork) {
    joined.outbound.abort();
    settings.forwarder.remove_instance(&spec.job, spec.instance);
    let network = settings.network.clone();
    tokio::spawn(async move {
        match network {
            Some(network) => network.release(joined.network).await,
            None => joined.network.destroy().await,
        }
    });
}

async fn execute(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &Path,
    env: BTreeMap<String, String>,
    namespace: Option<PathBuf>,
    reporter: &Reporter<'_>,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> Outcome {
    let argv = match command_line(&spec.request) {
        Ok(argv) => argv,
        Err(reason) => return Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None },
    };
    let metrics: Vec<(String, Regex)> = spec
        .request
        .algorithm_specification
        .as_ref()
        .and_then(|a| a.metric_definitions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| Some((d.name?, Regex::new(&d.regex?).ok()?)))
        .collect();

    // A uid of its own owns the work dir and runs the program; the role's group, if it names one,
    // is added to the instance's own group.
    let mut lease = None;
    let mut identity = None;
    if let Some(pool) = &settings.uids {
        let groups = match spec.run_as.as_ref().map(|r| r.group.as_str()).filter(|g| !g.is_empty()) {
            Some(group) => match crate::users::role_group(group) {
                Ok(gid) => vec![gid],
                Err(reason) => return Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None },
            },
            None => Vec::new(),
        };
        let held = match pool.lease() {
            Ok(held) => held,
            Err(reason) => {
                let failure = Some(format!("InternalServerError: {reason}"));
                return Outcome { state: InstanceState::Failed, failure, exit_code: None };
            }
        };
        let uid = held.uid;
        info!(job = %spec.job, instance = spec.instance, uid, "the instance runs as a uid of its own");
        lease = Some(HeldUid { lease: held, dir: dir.to_path_buf() });
        if let Err(e) = crate::users::give_tree(dir, uid, uid) {
            let failure = Some(format!("giving the work dir to uid {uid}: {e}"));
            return Outcome { state: InstanceState::Failed, failure, exit_code: None };
        }
        let mut all_groups = vec![uid];
        all_groups.extend(groups);
        identity = Some((uid, all_groups));
    }

    let mut cmd = Command::new(&argv[0]);
    // Nothing of the agent's own configuration (join token, API token, ...) reaches the job.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRAINYARD_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(&argv[1..])
        .current_dir(dir)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If the agent dies, its jobs die with it instead of running on unsupervised; a restarted
    // agent reports them lost and the coordinator retries or fails them.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Its own cgroup, joined before the program runs: everything it starts is born inside, and
    // the instance's limits hold for all of it.
    let cgroup = match &settings.cgroups {
        None => None,
        Some(agent) => {
            let limits = crate::cgroup::Limits {
                memory_mib: (spec.memory_mib > 0).then_some(spec.memory_mib),
                vcpus: (spec.vcpus > 0).then_some(spec.vcpus),
                pids: settings.pids_max,
            };
            match crate::cgroup::InstanceCgroup::create(agent, &spec.job, spec.instance, limits) {
                Ok(cgroup) => Some(cgroup),
                Err(reason) => return Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code: None },
            }
        }
    };
    if let Some(cgroup) = &cgroup {
        let files = cgroup.procs_files();
        // SAFETY: join_self only opens and writes files prepared before the fork.
        unsafe {
            cmd.pre_exec(move || crate::cgroup::InstanceCgroup::join_self(&files));
        }
    }
    let processes = Processes { cgroup: cgroup.as_ref(), group: None, uid: None };
    // The instance's own network namespace, entered before anything else.
    let namespace_file = match namespace.as_ref().map(std::fs::File::open).transpose() {
        Ok(file) => file,
        Err(e) => {
            let failure = Some(format!("opening the instance's network namespace: {e}"));
            return Outcome { state: InstanceState::Failed, failure, exit_code: None };
        }
    };
    if let Some(file) = &namespace_file {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: setns on a descriptor that stays open until after spawn (namespace_file lives on).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // A private mount namespace per instance: the work dir at /opt/ml, so code with hard-coded
    // /opt/ml paths runs unchanged and no instance sees another's, and a private /etc/hosts where
    // `algo-N` resolve (training toolkits wait for every host in SM_HOSTS to resolve).
    if settings.opt_ml || namespace.is_some() {
        use std::os::unix::ffi::OsStrExt;
        let source = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap_or_default();
        let target = std::ffi::CString::new(OPT_ML).unwrap_or_default();
        let root = std::ffi::CString::new("/").unwrap_or_default();
        let base = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let host_entries = if namespace.is_some() {
            plan::hosts_file(&base, spec.hosts.len() as u32)
        } else {
            format!("{}\n127.0.0.1 algo-{}\n", base.trim_end(), spec.instance)
        };
        let hosts_file = dir.join(".hosts");
        let hosts_ready = std::fs::write(&hosts_file, host_entries).is_ok();
        let hosts_source = std::ffi::CString::new(hosts_file.as_os_str().as_bytes()).unwrap_or_default();
        let etc_hosts = std::ffi::CString::new("/etc/hosts").unwrap_or_default();
        let opt_ml = settings.opt_ml;
        // Its own /tmp (a dir of its work dir, removed with it; only where the work dir is at
        // /opt/ml, as its paths would otherwise lie under the hidden /tmp), its own /dev/shm
        // (charged to its cgroup) and its own System V IPC: nothing an instance leaves there is
        // seen by another, even one that later runs under the same uid.
        let private_tmp = std::ffi::CString::new(dir.join(PRIVATE_TMP).as_os_str().as_bytes()).unwrap_or_default();
        let tmp = std::ffi::CString::new("/tmp").unwrap_or_default();
        let shm = std::ffi::CString::new("/dev/shm").unwrap_or_default();
        let tmpfs = std::ffi::CString::new("tmpfs").unwrap_or_default();
        let shm_options = std::ffi::CString::new("mode=1777").unwrap_or_default();
        let has_shm = Path::new("/dev/shm").is_dir();
        // SAFETY: only syscalls (unshare, mount, chdir) on CStrings prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                if hosts_ready {
                    check(libc::mount(
                        hosts_source.as_ptr(),
                        etc_hosts.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                if opt_ml {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    check(libc::chdir(target.as_ptr()))?;
                    // Last: the sources above may lie under /tmp.
                    check(libc::mount(
                        private_tmp.as_ptr(),
                        tmp.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                if has_shm {
                    check(libc::mount(
                        tmpfs.as_ptr(),
                        shm.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        shm_options.as_ptr().cast(),
                    ))?;
                }
                Ok(())
            });
        }
    }
    if let Some((uid, groups)) = identity {
        // No passwd entry names the uid: these say who it is to tools that ask (getpass, pip).
        let name = format!("trainyard-{uid}");
        let base = if settings.opt_ml { PathBuf::from(OPT_ML) } else { dir.to_path_buf() };
        cmd.env("USER", &name).env("LOGNAME", &name).env("HOME", base.join(PRIVATE_TMP));
        if !settings.opt_ml {
            cmd.env("TMPDIR", base.join(PRIVATE_TMP));
        }
        // SAFETY: registered last, so the steps above run privileged; only syscalls.
        unsafe {
            cmd.pre_exec(move || crate::users::switch_to(uid, uid, &groups));
        }
    }
    // A program being replaced while it starts fails with ETXTBSY for a moment: try again.
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let hint = match (e.raw_os_error(), &lease) {
                    (Some(libc::ENOENT), _) if settings.opt_ml && Path::new(&argv[0]).starts_with("/tmp") => {
                        " (instances have a /tmp of their own: install training programs elsewhere, e.g. under /opt)"
                            .to_string()
                    }
                    (Some(libc::EACCES), Some(held)) => format!(
                        " (the instance runs as uid {}, a user of its own: the program and every directory above it must be readable and executable by every user, e.g. under /opt with mode 0755)",
                        held.lease.uid
                    ),
                    _ => String::new(),
                };
                let failure = Some(format!("ClientError: cannot start {}: {e}{hint}", argv[0]));
                return Outcome { state: InstanceState::Failed, failure, exit_code: None };
            }
        }
    };
    let processes =
        Processes { group: child.id().map(|p| p as i32), uid: lease.as_ref().map(|l| l.lease.uid), ..processes };
    reporter.update(InstanceState::Training, "Training in progress", Vec::new());

    // Lines from both streams, in arrival order. Bounded: a job that prints faster than the agent
    // matches metrics waits on its own stdout, as it would on a slow terminal.
    let (line_tx, mut lines) = mpsc::channel::<(&'static str, String)>(LINE_BACKLOG);
    for (name, stream) in [
        ("stdout", child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        ("stderr", child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ] {
        let Some(stream) = stream else { continue };
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            while let Ok(Some(line)) = next_line(&mut reader, MAX_LINE_BYTES).await {
                if tx.send((name, line)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(line_tx);

    let max_runtime = spec
        .request
        .stopping_condition
        .as_ref()
        .and_then(|s| s.max_runtime_in_seconds)
        .map_or(DEFAULT_MAX_RUNTIME, |s| s.max(1) as u64);
    let deadline = tokio::time::sleep(Duration::from_secs(max_runtime));
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(Duration::from_millis(250));
    // The job can write to output/: the log is appended without following links.
    let mut log_file = Confined::open(dir).and_then(|d| d.append(Path::new("output/training.log"))).ok();

    let mut batch: Vec<pb::LogLine> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut samples: Vec<pb::MetricSample> = Vec::new();
    let mut stderr_tail: VecDeque<String> = VecDeque::new();
    let mut stopping: Option<InstanceState> = None;
    // Fencing may come during a graceful stop too, and then kills at once.
    let (mut fenced, mut stop_closed) = (false, false);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut streams_open = true;
    let mut exited: Option<std::io::Result<std::process::ExitStatus>> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            line = lines.recv(), if streams_open => match line {
                Some((stream, text)) => {
                    let at = now_millis();
                    for (name, regex) in &metrics {
                        if let Some(value) = regex.captures(&text).and_then(|c| c.get(1)).and_then(|m| m.as_str().trim().parse::<f64>().ok()).filter(|v| v.is_finite()) {
                            samples.push(pb::MetricSample { name: name.clone(), value, timestamp_millis: at });
                        }
                    }
                    if stream == "stderr" {
                        stderr_tail.push_back(text.clone());
                        if stderr_tail.len() > STDERR_TAIL { stderr_tail.pop_front(); }
                    }
                    if let Some(f) = log_file.as_mut() {
                        use std::io::Write;
                        let _ = writeln!(f, "{text}");
                    }
                    batch_bytes += text.len();
                    batch.push(pb::LogLine { stream: stream.into(), text, timestamp_millis: at });
                    // Batches stay far below the coordinator's 4 MiB message limit, even of long lines.
                    if batch.len() >= LOG_BATCH || batch_bytes >= LOG_BATCH_BYTES {
                        send_logs(spec, reporter, &mut batch);
                        batch_bytes = 0;
                    }
                }
                None => streams_open = false,
            },
            _ = flush.tick() => {
                send_logs(spec, reporter, &mut batch);
                batch_bytes = 0;
                if !samples.is_empty() {
                    reporter.update(stopping.map_or(InstanceState::Training, |_| InstanceState::Stopping), "Training in progress", std::mem::take(&mut samples));
                }
                if let Some(at) = kill_at && tokio::time::Instant::now() >= at {
                    processes.signal(libc::SIGKILL);
                    kill_at = None;
                }
                // Without a cgroup an escaped child may hold the streams open: stop reading them.
                if exited.is_some() && streams_open && drain_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    streams_open = false;
                }
            }
            // The program has ended: so has the instance. What it started is killed (a cgroup holds
            // all of it), which closes the streams; their last lines are still read.
            status = child.wait(), if exited.is_none() => {
                exited = Some(status);
                processes.kill_all().await;
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            _ = &mut deadline, if stopping.is_none() && exited.is_none() => {
                stopping = Some(InstanceState::MaxRuntimeExceeded);
                reporter.update(InstanceState::Stopping, "MaxRuntimeInSeconds exceeded: stopping", Vec::new());
                processes.signal(libc::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + settings.stop_grace);
            }
            changed = stop.changed(), if !fenced && !stop_closed && exited.is_none() => {
                stop_closed = changed.is_err();
                if *stop.borrow() == Some(StopReason::Fence) {
                    fenced = true;
                    stopping = Some(InstanceState::Failed);
                    processes.signal(libc::SIGKILL);
                    kill_at = None;
                } else if stopping.is_none() && (changed.is_err() || stop.borrow().is_some()) {
                    stopping = Some(InstanceState::Stopped);
                    reporter.update(InstanceState::Stopping, "Stopping the training job", Vec::new());
                    processes.signal(libc::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + settings.stop_grace);
                }
            }
        }
        if let Some(status) = &exited
            && !streams_open
        {
            break status.as_ref().map(|s| *s).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        }
    };
    // Nothing of the instance outlives it.
    processes.kill_all().await;
    let oom_kills = cgroup.as_ref().map_or(0, |c| c.oom_kills());
    drop(cgroup); // removed (empty)
    drop(lease); // nothing runs under its uid any more
    send_logs(spec, reporter, &mut batch);
    if !samples.is_empty() {
        reporter.update(InstanceState::Training, "Training in progress", samples);
    }
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    if fenced {
        return Outcome { state: InstanceState::Failed, failure: Some(FENCED.to_string()), exit_code };
    }
    if let Some(state) = stopping {
        return Outcome { state, failure: None, exit_code };
    }
    match status {
        Ok(s) if s.success() => Outcome { state: InstanceState::Completed, failure: None, exit_code },
        Ok(_) if oom_kills > 0 => {
            let limit = spec.request.resource_config.as_ref().and_then(|r| r.instance_type.clone()).unwrap_or_default();
            let reason = format!(
                "OutOfMemoryError: the instance used all of its {} MiB ({limit}) and the kernel killed {oom_kills} of its processes; choose an instance type with more memory",
                spec.memory_mib
            );
            Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code }
        }
        Ok(s) => {
            // Written by the job: read without following links, at most 4 KiB of it.
            let written = Confined::open(dir)
                .and_then(|d| d.read_prefix(Path::new("output/failure"), 4096))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let reason = if written.trim().is_empty() {
                let tail: Vec<String> = stderr_tail.into_iter().collect();
                format!("AlgorithmError: {s}; last stderr lines: {}", tail.join("\n"))
            } else {
                written.chars().take(1024).collect()
            };
            Outcome { state: InstanceState::Failed, failure: Some(reason), exit_code }
        }
        Err(e) => {
            Outcome { state: InstanceState::Failed, failure: Some(format!("waiting for the job: {e}")), exit_code }
        }
    }
}

/// The next line of a job's output, at most `limit` bytes: a longer one is cut there and the rest
/// of it skipped (a job that prints without newlines must not grow the agent without bound). Not
/// UTF-8 is replaced, not refused. `None` at the end of the stream.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            if line.is_empty() && skipped == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(i) => (&buffer[..i], Some(i + 1)),
            None => (buffer, None),
        };
        let room = limit.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        skipped += chunk.len().saturating_sub(room);
        let consumed = done.unwrap_or(buffer.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if skipped > 0 {
        text.push_str(&format!(" [line cut at {limit} bytes; {skipped} more bytes dropped]"));
    }
    Ok(Some(text))
}

fn send_logs(spec: &InstanceSpec, reporter: &Reporter<'_>, batch: &mut Vec<pb::LogLine>) {
    if batch.is_empty() {
        return;
    }
    let _ = reporter.tx.send(Report::Logs(pb::LogBatch {
        training_job_name: spec.job.clone(),
        instance: spec.instance,
        lines: std::mem::take(batch),
    }));
}

/// An instance's processes: its cgroup when it has one (everything it started, wherever it
/// moved), else every process of its uid when it has one of its own, else its process group.
#[derive(Clone, Copy)]
struct Processes<'a> {
    cgroup: Option<&'a crate::cgroup::InstanceCgroup>,
    /// The program's pid, which is its process group's id (process_group(0) at spawn).
    group: Option<i32>,
    uid: Option<u32>,
}

impl Processes<'_> {
    fn signal(&self, signal: i32) {
        match (self.cgroup, self.uid, self.group) {
            (Some(cgroup), _, _) => cgroup.signal(signal),
            (None, Some(uid), _) => crate::uids::signal_every_process_of(uid, signal),
            (None, None, Some(pid)) if pid > 1 => {
                // SAFETY: kill(2) has no memory-safety preconditions; the group is the job's own,
                // never ours.
                unsafe {
                    libc::kill(-pid, signal);
                }
            }
            _ => {}
        }
    }

    async fn kill_all(&self) {
        match (self.cgroup, self.uid) {
            (Some(cgroup), _) => cgroup.kill_all().await,
            (None, Some(uid)) => {
                let _ = tokio::task::spawn_blocking(move || crate::uids::kill_every_process_of(uid)).await;
            }
            (None, None) => self.signal(libc::SIGKILL),
        }
    }
}

/// Packs `model/` (and `output/data/` when it has files) under `<S3OutputPath>/<job>/output/` and
/// syncs checkpoints; returns the model's URI.
async fn upload(spec: &InstanceSpec, settings: &Settings, dir: &Path) -> Result<String, String> {
    let output = spec
        .request
        .output_data_config
        .as_ref()
        .and_then(|o| o.s3_output_path.clone())
        .ok_or("OutputDataConfig.S3OutputPath is missing")?;
    // Everything beneath the work dir was written by the job: read without following links.
    let work = Confined::open(dir).map_err(|e| format!("opening the work dir: {e}"))?;
    let uri = storage::artifact_uri(&output, &spec.job, "model.tar.gz");
    pack_and_put(spec, settings, &work, "model", &uri).await.map_err(|e| format!("{e} (the model)"))?;
    if work.walk(Path::new("output/data")).is_ok_and(|entries| !entries.is_empty()) {
        let data_uri = storage::artifact_uri(&output, &spec.job, "output.tar.gz");
        pack_and_put(spec, settings, &work, "output/data", &data_uri)
            .await
            .map_err(|e| format!("{e} (output data)"))?;
    }
    if let Some(checkpoints) = spec.request.checkpoint_config.as_ref().and_then(|c| c.s3_uri.clone()) {
        let (_, skipped) = settings
            .storage
            .put_tree(&work, Path::new("checkpoints"), &checkpoints)
            .await
            .map_err(|e| format!("syncing checkpoints to {checkpoints}: {e}"))?;
        warn_skipped(spec, "checkpoints", &skipped);
    }
    Ok(uri)
}

/// Packs `dir` of the work dir into a tar.gz at `uri`. The archive is built in the agent's own
/// staging dir, which no job can reach, and removed afterwards.
async fn pack_and_put(
    spec: &InstanceSpec,
    settings: &Settings,
    work: &Confined,
    dir: &str,
    uri: &str,
) -> Result<(), String> {
    let name = dir.replace('/', "-");
    let archive = settings.work_root.join(STAGING).join(format!("{}-{}-{name}.tar.gz", spec.job, spec.instance));
    let uploaded = match storage::pack(work, Path::new(dir), &archive) {
        Ok(skipped) => {
            warn_skipped(spec, dir, &skipped);
            settings.storage.put_file(&archive, uri).await.map_err(|e| format!("uploading: {e}"))
        }
        Err(e) => Err(format!("packing: {e}")),
    };
    let _ = std::fs::remove_file(&archive);
    uploaded
}

/// The instance's own /tmp (and $HOME), in its work dir.
const PRIVATE_TMP: &str = ".tmp";

/// The instance's uid while it runs. Dropped: its work dir goes back to root (a dir kept for
/// debugging must not be reachable by the uid's next holder), every process left under the uid is
/// killed, and the uid is free again.
struct HeldUid {
    lease: crate::uids::UidLease,
    dir: PathBuf,
}

impl Drop for HeldUid {
    fn drop(&mut self) {
        if let Err(e) = std::os::unix::fs::lchown(&self.dir, Some(0), Some(0)) {
            warn!(dir = %self.dir.display(), uid = self.lease.uid, error = %e, "could not give an ended instance's work dir back to root");
        }
    }
}

/// The agent's own directory under the work root for archives being built (0700, root's).
pub const STAGING: &str = "staging";

/// What an upload left out (links, FIFOs, devices): said in the agent's log and the job's.
fn warn_skipped(spec: &InstanceSpec, what: &str, skipped: &[PathBuf]) {
    if !skipped.is_empty() {
        let names: Vec<String> = skipped.iter().take(10).map(|p| p.display().to_string()).collect();
        warn!(job = %spec.job, count = skipped.len(), first = ?names, "links and special files in {what}/ were not uploaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], limit: usize) -> Vec<String> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut reader, limit).await.expect("read") {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_of_them_skipped() {
        let mut input = b"short\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 50));
        input.extend(b"\nafter\nno newline at the end");
        let lines = lines_of(&input, 21).await;
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1], format!("{} [line cut at 21 bytes; 29 more bytes dropped]", "x".repeat(21)));
        assert_eq!(lines[2..], ["after".to_string(), "no newline at the end".to_string()]);
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_refused() {
        assert_eq!(lines_of(b"caf\xe9\n", 100).await, vec!["caf\u{fffd}".to_string()]);
        assert!(lines_of(b"", 100).await.is_empty());
    }
}
