//! `trainyard-agent`: reports this host to the coordinator over one bidirectional stream and runs
//! the instances it is assigned. It reconnects with backoff; running instances go on while the
//! coordinator is away, and every (re)registration lists them with their latest state, so nothing
//! that happened meanwhile is lost. An instance's final state is re-sent until the coordinator says
//! it has stored it (`ForgetInstance`).

mod cache;
mod cdi;
mod cgroup;
mod config;
mod confined;
mod containerd;
mod gpu;
mod identity;
mod image_cache;
mod inventory;
mod lock_files;
mod network;
mod outbound;
mod registry;
mod runner;
mod seccomp;
mod storage;
mod telemetry;
mod uids;
mod users;
mod workdirs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trainyard_proto::client::Coordinators;
use trainyard_proto::pb::agent_message::Body as Up;
use trainyard_proto::pb::agents_client::AgentsClient;
use trainyard_proto::pb::coordinator_message::Body as Down;
use trainyard_proto::pb::{self, InstanceState};

use crate::config::{Config, Flags};
use crate::inventory::Host;
use crate::outbound::Outbound;
use crate::runner::{InstanceSpec, Report, Settings, StopReason};

/// An instance: its training job and its number in the job.
pub(crate) type Key = (String, u32);

/// What the agent knows about each instance it was given.
struct Instance {
    latest: pb::InstanceUpdate,
    stop: watch::Sender<Option<StopReason>>,
    /// When its final state was last sent (None while it runs): sent again every
    /// [`FINAL_RESEND`] until the coordinator says it stored it, as a coordinator that could not
    /// store it (its database was away) waits for it on a stream that stays up.
    final_sent: Option<tokio::time::Instant>,
}

/// How often an instance's final state is sent again until the coordinator forgets the instance.
const FINAL_RESEND: Duration = Duration::from_secs(10);

struct Agent {
    config: Config,
    settings: Arc<Settings>,
    host: Mutex<Host>,
    instances: Mutex<BTreeMap<Key, Instance>>,
    /// Why instances run in the host's network, when they do.
    network_note: Option<String>,
    /// Why images cannot run as containers, when they cannot.
    containers_note: Option<String>,
    /// Ready while its stream to the coordinator is up.
    readiness: trainyard_telemetry::Readiness,
    /// The port of the peer listener (0: none).
    peer_port: u16,
    /// The stream of the current connection, if any, and the log lines waiting for one.
    outbound: Mutex<Outbound>,
    /// The certificate it joined with (None with `--insecure`).
    identity: Option<identity::Identity>,
    /// When the coordinator last renewed this agent's lease, and for how long (None: no lease yet,
    /// or it ran out and the instances were fenced).
    lease: std::sync::Mutex<Option<(tokio::time::Instant, Duration)>>,
    /// The coordinators it may reach (one leads), and the one to try next.
    coordinators: std::sync::Mutex<Coordinators>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::load(Flags::parse())?;
    init_tracing(config.json_logs);
    // One TLS provider for the process, before any TLS configuration is built.
    trainyard_pki::install_crypto_provider();
    std::fs::create_dir_all(&config.work_root)
        .with_context(|| format!("creating the work root {}", config.work_root.display()))?;
    // Jobs run in their own work dirs: every path they are given must be absolute.
    config.work_root = std::fs::canonicalize(&config.work_root)?;
    // Work dirs of an earlier run (its instances died with it) go; failed ones are kept a while.
    workdirs::sweep(&config.work_root, config.keep_failed_work_dirs, true);
    {
        let (root, keep) = (config.work_root.clone(), config.keep_failed_work_dirs);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(600));
            loop {
                every.tick().await;
                workdirs::sweep(&root, keep, false);
            }
        });
    }
    // Archives are built here, out of every job's reach.
    let staging = config.work_root.join(runner::STAGING);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making {} private", staging.display()))?;
    // Jobs cannot read them (an inaccessible file is bound over each), but every other user of
    // the host may.
    for file in &config.private_files {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
            warn!(file = %file.display(), "a file that may hold secrets is readable by every user of this host: make it the agent's alone (chmod 600)");
        }
    }
    // (Beside staging, which holds only archives being built.)
    let inaccessible_file = config.work_root.join("inaccessible");
    std::fs::write(&inaccessible_file, b"")
        .and_then(|()| {
            std::fs::set_permissions(&inaccessible_file, std::os::unix::fs::PermissionsExt::from_mode(0o000))
        })
        .with_context(|| format!("making {}", inaccessible_file.display()))?;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            cancel.cancel();
        });
    }
    let identity = if config.insecure {
        warn!("--insecure: plain text to the coordinator, no certificate");
        None
    } else {
        match join(&config, config.coordinators.clone(), &cancel).await? {
            Some(identity) => Some(identity),
            None => return Ok(()), // stopped while waiting for the coordinator
        }
    };
    for dir in config.buckets.values_mut() {
        std::fs::create_dir_all(&*dir).with_context(|| format!("creating the bucket directory {}", dir.display()))?;
        *dir = std::fs::canonicalize(&*dir)?;
    }
    let host = Host::open(
        &config.work_root,
        config.nvml_library.as_deref(),
        config.advertise_vcpus,
        config.advertise_memory_mib,
    )?;
    if !host.gpus.note().is_empty() {
        info!(note = host.gpus.note(), "no GPUs");
    }
    let vcpus =
        config.advertise_vcpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    // As root, each instance sees its work dir at /opt/ml (a mount point that must exist).
    // SAFETY: geteuid has no preconditions.
    let opt_ml =
        !config.no_opt_ml && unsafe { libc::geteuid() } == 0 && std::fs::create_dir_all(runner::OPT_ML).is_ok();
    info!(opt_ml, "instances see their work dir at /opt/ml: {opt_ml}");
    let private_run = opt_ml
        && match runner::private_run_possible(&config.instance_writable_paths) {
            Ok(()) => true,
            Err(why) => {
                warn!(reason = %why, "host programs' instances share the host's /run (its daemons' sockets among it)");
                false
            }
        };
    if opt_ml {
        info!(shared = ?config.instance_devices, "host programs' instances get a /dev of their own: the usual nodes, their GPUs' and these");
        if runner::read_only_host_supported() {
            info!(writable = ?config.instance_writable_paths, "the host is read-only to instances but for their own dirs and these");
        } else {
            warn!(
                "this kernel has no mount_setattr (Linux 5.12): the host stays writable to instances, a file one leaves in a world-writable dir of the host outlives it, and their /proc lists every process of the host"
            );
        }
    }
    let network = if config.network_namespaces {
        network::Network::detect(&config.id, &config.work_root).await
    } else {
        Err("network namespaces are turned off (--no-network-namespaces)".to_string())
    };
    let (network, network_note) = match network {
        Ok(n) => {
            let network = Arc::new(n);
            network.warm_up(config.ready_namespaces as usize);
            if config.instance_resolv_conf.is_none() {
                warn_if_instances_cannot_resolve();
            }
            (Some(network), None)
        }
        Err(note) => {
            warn!(%note, "instances run in the host's network: no isolation, no distributed peers");
            (None, Some(note))
        }
    };
    // Each instance in a cgroup of its own (its limits; nothing it starts outlives it), under one
    // of this agent's: named by its id and its work root, as two agents on one host may share an id
    // (in two clusters) but never a work root.
    let cgroup_name = cgroup::agent_cgroup_name(&config.id, &config.work_root);
    // Recorded for whoever cleans up after an agent that was killed (a test harness, an operator).
    let _ = std::fs::write(config.work_root.join("cgroup"), format!("trainyard-{cgroup_name}\n"));
    let cgroups = match cgroup::AgentCgroups::set_up(&cgroup_name) {
        Ok(cgroups) => {
            let unenforced = cgroups.unenforced();
            if !unenforced.is_empty() {
                warn!(
                    ?unenforced,
                    "cgroup v2: these controllers are not delegated to the agent's cgroup, so instances run without those limits (systemd: Delegate=yes)"
                );
            }
            Some(Arc::new(cgroups))
        }
        Err(note) => {
            warn!(%note, "instances run without a cgroup: no memory, CPU or process limits, and processes that leave their process group are not stopped with them");
            None
        }
    };
    // Each instance runs as a uid of its own, unless the operator says otherwise.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uids = if config.jobs_run_as_agent_user {
        warn!(
            root,
            "--jobs-run-as-agent-user: instances run as the agent's user and share it (and everything it may reach) with each other"
        );
        None
    } else if !root {
        warn!("the agent is not root: instances run as its user and share it with each other");
        None
    } else {
        let pool = uids::UidPool::new(config.instance_uids, &config.uid_locks).map_err(anyhow::Error::msg)?;
        info!(uids = %config.instance_uids, locks = %config.uid_locks.display(), "each instance runs as a uid of its own");
        Some(Arc::new(pool))
    };
    let input_cache = match config.input_cache_mib {
        0 => None,
        mib => Some(
            cache::InputCache::open(&config.work_root.join("cache"), mib * 1024 * 1024)
                .context("opening the input cache")?,
        ),
    };
    // Images run as containers when containerd answers; what an earlier run of this agent left
    // there (killed with -9, nothing of it supervised any more) is removed first.
    let (containerd, containers_note) = match containerd::Containerd::connect(
        &config.containerd_socket,
        &config.containerd_namespace,
    )
    .await
    {
        Ok(client) => {
            for id in client.containers_of(&config.id).await.unwrap_or_default() {
                warn!(container = %id, "removing a container an earlier run of this agent left");
                client.remove(&id).await;
            }
            info!(runtime = %client.version, namespace = %config.containerd_namespace, "container images run through containerd");
            (Some(Arc::new(client)), None)
        }
        Err(note) => {
            info!(%note, "no container runtime: only host programs run here");
            (None, Some(note))
        }
    };
    let container_cgroups = Arc::new(runner::ContainerCgroups::new(&cgroup_name));
    let credentials = match &config.registry_auth {
        Some(path) => {
            let credentials = registry::Credentials::load(path).map_err(|e| anyhow::anyhow!("--registry-auth {e}"))?;
            info!(registries = credentials.len(), "registry credentials loaded");
            credentials
        }
        None => registry::Credentials::default(),
    };
    // Each GPU's NVML index by UUID: CDI specs name GPUs by either.
    let gpu_inventory = host.gpus.inventory();
    let gpu_indexes: BTreeMap<String, u32> = gpu_inventory.gpus.iter().map(|g| (g.uuid.clone(), g.index)).collect();
    if containerd.is_some() {
        // The stale containers of an earlier run are gone: so may their cgroups' parent.
        container_cgroups.remove_parent();
        let (specs, skipped) = cdi::Registry::load(&config.cdi_spec_dirs);
        for line in skipped {
            warn!(%line, "a CDI spec was not read");
        }
        if !gpu_indexes.is_empty() && !specs.has_any(cdi::GPU_KIND) {
            warn!(dirs = ?config.cdi_spec_dirs, "this host has GPUs and no CDI spec gives them to containers: jobs with GPUs in containers will fail (nvidia-ctk cdi generate)");
        }
    }
    let registry_ca = match &config.registry_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("--registry-ca {}", path.display()))?),
        None => None,
    };
    let images = containerd.as_ref().map(|client| {
        let registries = registry::Registries::new(credentials, &config.insecure_registries, registry_ca.clone())
            .with_max_image_bytes(config.max_image_mib.saturating_mul(1024 * 1024))
            .with_max_unpacked_bytes(config.max_image_unpacked_mib.saturating_mul(1024 * 1024));
        image_cache::ImageCache::new(client.clone(), registries, config.image_cache_mib * 1024 * 1024)
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = telemetry::Metrics::register(&mut registry);
    let readiness = trainyard_telemetry::Readiness::new("not connected to the coordinator yet");
    trainyard_telemetry::spawn(config.metrics_listen, registry, readiness.clone(), cancel.clone());
    let forwarder = Arc::new(network::forwarder::Forwarder::default());
    let mut peer_port = 0;
    if network.is_some() {
        let listener = tokio::net::TcpListener::bind(config.peer_listen)
            .await
            .with_context(|| format!("listening for peers on {}", config.peer_listen))?;
        peer_port = listener.local_addr()?.port();
        info!(address = %listener.local_addr()?, "peer forwarder listening");
        tokio::spawn(forwarder.clone().serve(listener));
    }
    let settings = Arc::new(Settings {
        opt_ml,
        work_root: config.work_root.clone(),
        storage: storage::Storage::new(config.buckets.clone(), config.s3.clone(), input_cache),
        stop_grace: config.stop_grace,
        vcpus,
        network,
        forwarder,
        vpc_networks: config.vpc_networks.clone(),
        cgroups,
        pids_max: config.instance_pids_max,
        uids,
        containerd,
        images,
        container_cgroups: container_cgroups.clone(),
        root_images: config.root_images,
        cdi_dirs: config.cdi_spec_dirs.clone(),
        gpu_indexes,
        gpu_minors: gpu_inventory.minor_numbers,
        host_programs: config.host_programs,
        instance_writable_paths: config.instance_writable_paths.clone(),
        secret_files: config.secret_files.clone(),
        inaccessible_file,
        private_run,
        instance_devices: config.instance_devices.clone(),
        instance_resolv_conf: config.instance_resolv_conf.clone(),
        instance_user_namespaces: config.instance_user_namespaces,
        agent_id: config.id.clone(),
        work_dirs_in_use: Default::default(),
        metric_patterns: Default::default(),
        metrics,
    });
    let agent = Arc::new(Agent {
        coordinators: std::sync::Mutex::new(config.coordinators.clone()),
        config,
        settings,
        host: Mutex::new(host),
        instances: Mutex::new(BTreeMap::new()),
        network_note,
        containers_note,
        readiness: readiness.clone(),
        peer_port,
        outbound: Mutex::new(Outbound::default()),
        identity,
        lease: std::sync::Mutex::new(None),
    });
    tokio::spawn(fence_when_the_lease_runs_out(agent.clone()));
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        match session(&agent, &cancel).await {
            Ok(()) => backoff = Duration::from_millis(100),
            // A standby named the leader: go there at once.
            Err(SessionError::Standby(address)) => {
                info!(leader = %address, "the coordinator dialled is a standby: following it to the leader");
                continue;
            }
            Err(SessionError::Other(e)) => {
                warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable or stream ended; instances keep running");
            }
        }
        agent.outbound.lock().await.disconnect();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(jittered(backoff)) => {}
        }
        // Capped low: after a failover the agents should find the new leader within seconds.
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    // Shutdown: stop taking work, stop what runs (it still uploads), and wait for it to end.
    info!("shutting down: stopping running instances");
    let stops: Vec<_> = agent.instances.lock().await.values().map(|i| i.stop.clone()).collect();
    for stop in stops {
        let _ = stop.send(Some(StopReason::Requested));
    }
    let deadline = tokio::time::Instant::now() + agent.config.stop_grace + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline && agent.instances.lock().await.values().any(|i| !is_final(&i.latest))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Containers are removed in the background as instances end: what is left goes now.
    if let Some(containerd) = &agent.settings.containerd {
        for id in containerd.containers_of(&agent.config.id).await.unwrap_or_default() {
            containerd.remove(&id).await;
        }
        agent.settings.container_cgroups.remove_parent();
    }
    if let Some(network) = &agent.settings.network {
        network.shut_down().await;
    }
    if let Some(cgroups) = &agent.settings.cgroups {
        cgroups.remove();
    }
    info!("agent stopped");
    Ok(())
}

fn is_final(u: &pb::InstanceUpdate) -> bool {
    matches!(
        u.state(),
        InstanceState::Completed | InstanceState::Failed | InstanceState::Stopped | InstanceState::MaxRuntimeExceeded
    )
}

/// Fencing: when the coordinator has not renewed the lease in time (a partition, or a coordinator
/// down for longer than the lease), it may already have given this agent's instances to another
/// agent, so they are killed here. The coordinator retries them only after the lease has run out.
async fn fence_when_the_lease_runs_out(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let expired = match agent.lease.lock() {
            Ok(mut lease) => match *lease {
                Some((renewed, valid_for)) if renewed.elapsed() > valid_for => {
                    *lease = None;
                    Some(valid_for)
                }
                _ => None,
            },
            Err(_) => None,
        };
        let Some(valid_for) = expired else { continue };
        let instances = agent.instances.lock().await;
        let running: Vec<&Instance> = instances.values().filter(|i| !is_final(&i.latest)).collect();
        if running.is_empty() {
            continue;
        }
        warn!(
            lease_s = valid_for.as_secs(),
            instances = running.len(),
            "no word from the coordinator for longer than the lease: stopping every instance (fencing)"
        );
        for instance in running {
            let _ = instance.stop.send(Some(StopReason::Fence));
        }
    }
}

/// This agent's certificate, joining with the join token first if it has none; retried while the
/// coordinator cannot be reached. None when cancelled meanwhile.
async fn join(
    config: &Config,
    mut coordinators: Coordinators,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<identity::Identity>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match identity::load_or_join(config, &coordinators.next_address()).await {
            Ok(identity) => return Ok(Some(identity)),
            Err(identity::JoinError::Fatal(e)) => return Err(e),
            Err(identity::JoinError::Retry(e)) => {
                warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "cannot join yet");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How long opening the stream may take.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Why a session ended early.
enum SessionError {
    /// The coordinator dialled stands by; the leader is at this address (tried next).
    Standby(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Other(e.into())
    }
}

/// One connection: register, then serve until the stream ends.
async fn session(agent: &Arc<Agent>, cancel: &CancellationToken) -> Result<(), SessionError> {
    let address = agent.coordinators.lock().unwrap_or_else(|e| e.into_inner()).next_address();
    // A coordinator that accepts connections but does not answer (paused) is passed over: the
    // channel bounds its connecting, and this the opening of the stream.
    let channel = match &agent.identity {
        Some(identity) => identity::connect(&address, &identity.ca_pem, Some(identity)).await?,
        None => identity::connect_insecure(&address).await?,
    };
    let mut client = AgentsClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    let inventory = agent.host.lock().await.inventory();
    let instances: Vec<pb::InstanceUpdate> = {
        let outbound = agent.outbound.lock().await;
        agent.instances.lock().await.values().map(|i| outbound.with_kept_samples(i.latest.clone())).collect()
    };
    tx.send(pb::AgentMessage {
        body: Some(Up::Register(pb::Register {
            agent_id: agent.config.id.clone(),
            inventory: Some(inventory),
            capabilities: Some(pb::Capabilities {
                network_isolation: agent.network_note.is_none(),
                network_isolation_note: agent.network_note.clone().unwrap_or_default(),
                container_runtime: agent.settings.containerd.as_ref().map(|c| c.version.clone()).unwrap_or_default(),
                container_runtime_note: agent.containers_note.clone().unwrap_or_default(),
                host_programs: agent.settings.host_programs,
            }),
            instances,
            peer_address: peer_address(agent),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: trainyard_proto::AGENT_PROTOCOL,
        })),
    })?;
    let opened = tokio::time::timeout(CONNECT_PATIENCE, client.session(UnboundedReceiverStream::new(rx)))
        .await
        .map_err(|_| anyhow::anyhow!("{address} did not open the stream within {} s", CONNECT_PATIENCE.as_secs()))?;
    let mut inbound = match opened {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            if let Some(leader) = agent.coordinators.lock().unwrap_or_else(|e| e.into_inner()).follow(&status) {
                return Err(SessionError::Standby(leader));
            }
            return Err(anyhow::Error::new(status).context(format!("opening the stream to {address}")).into());
        }
    };
    agent.outbound.lock().await.connect(tx.clone());
    info!(coordinator = %address, id = %agent.config.id, "connected");
    agent.readiness.ready();
    // Not ready again the moment this session ends, however it ends.
    struct Disconnected<'a>(&'a trainyard_telemetry::Readiness);
    impl Drop for Disconnected<'_> {
        fn drop(&mut self) {
            self.0.not_ready("not connected to the coordinator");
        }
    }
    let _disconnected = Disconnected(&agent.readiness);

    let mut heartbeat_every = Duration::from_secs(2);
    let mut ticker = tokio::time::interval(heartbeat_every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let beat = agent.host.lock().await.heartbeat();
                agent.settings.metrics.gpus(&beat.gpus);
                tx.send(pb::AgentMessage { body: Some(Up::Heartbeat(beat)) })?;
                for update in finals_to_send_again(agent).await {
                    info!(job = %update.training_job_name, instance = update.instance, "sending a final state again: the coordinator has not confirmed it");
                    // With the samples it has not confirmed either (its store may have been away).
                    let update = agent.outbound.lock().await.with_kept_samples(update);
                    tx.send(pb::AgentMessage { body: Some(Up::Update(update)) })?;
                }
            }
            message = inbound.message() => {
                let Some(message) = message.context("reading from the coordinator")? else {
                    return Err(anyhow::anyhow!("the coordinator closed the stream").into());
                };
                match message.body {
                    Some(Down::Registered(r))
                        if r.heartbeat_interval_ms > 0
                            && Duration::from_millis(r.heartbeat_interval_ms.into()) != heartbeat_every =>
                    {
                        heartbeat_every = Duration::from_millis(r.heartbeat_interval_ms.into());
                        ticker = tokio::time::interval(heartbeat_every);
                    }
                    Some(Down::Registered(_)) => {}
                    Some(Down::Assignment(a)) => start_instance(agent, a).await,
                    Some(Down::Stop(s)) => {
                        if let Some(i) = agent.instances.lock().await.get(&(s.training_job_name.clone(), s.instance)) {
                            let _ = i.stop.send(Some(if s.kill { StopReason::Fence } else { StopReason::Requested }));
                        }
                    }
                    Some(Down::Forget(f)) => {
                        let key = (f.training_job_name, f.instance);
                        agent.instances.lock().await.remove(&key);
                        agent.outbound.lock().await.forget(&key);
                    }
                    Some(Down::LogsStored(stored)) => agent.outbound.lock().await.logs_stored(&stored),
                    Some(Down::SamplesStored(stored)) => agent.outbound.lock().await.samples_stored(&stored),
                    Some(Down::Lease(l)) => {
                        let renewed = (tokio::time::Instant::now(), Duration::from_millis(l.valid_for_ms.into()));
                        if let Ok(mut lease) = agent.lease.lock() {
                            *lease = Some(renewed);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// `wait` plus up to half of it again, so that the agents of a cluster that lost their coordinator
/// at one moment do not all dial the next one at the same instants. (The clock's nanoseconds differ
/// from host to host and from retry to retry: enough to spread them.)
fn jittered(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    wait.mul_f64(1.0 + f64::from(nanos % 1_000) / 2_000.0)
}

/// The final states the coordinator has not confirmed (no ForgetInstance) for [`FINAL_RESEND`].
async fn finals_to_send_again(agent: &Arc<Agent>) -> Vec<pb::InstanceUpdate> {
    let now = tokio::time::Instant::now();
    let mut instances = agent.instances.lock().await;
    instances
        .values_mut()
        .filter(|i| i.final_sent.is_some_and(|at| now.duration_since(at) >= FINAL_RESEND))
        .map(|i| {
            i.final_sent = Some(now);
            i.latest.clone()
        })
        .collect()
}

/// Records a report and forwards it on the current connection; between connections, what the
/// next one must carry waits in [`Outbound`].
async fn report(agent: &Arc<Agent>, report: Report) {
    match report {
        Report::Update(update) => {
            let key = (update.training_job_name.clone(), update.instance);
            if let Some(i) = agent.instances.lock().await.get_mut(&key) {
                // The latest state without its samples is what re-registration repeats; the samples
                // go with it from where they are kept until confirmed.
                i.latest = pb::InstanceUpdate { metrics: Vec::new(), first_sample: 0, ..update.clone() };
                if is_final(&update) {
                    i.final_sent = Some(tokio::time::Instant::now());
                }
            }
            let mut outbound = agent.outbound.lock().await;
            if !update.metrics.is_empty() {
                outbound.keep_samples(key, update.first_sample, update.metrics.clone());
            }
            if let Some(tx) = &outbound.stream {
                let _ = tx.send(pb::AgentMessage { body: Some(Up::Update(update)) });
            }
        }
        Report::Logs(batch) => agent.outbound.lock().await.send_logs(batch),
    }
}

async fn start_instance(agent: &Arc<Agent>, a: pb::Assignment) {
    let key = (a.training_job_name.clone(), a.instance);
    let (stop_tx, stop_rx) = watch::channel(None);
    {
        let mut instances = agent.instances.lock().await;
        if instances.contains_key(&key) {
            return; // a repeated assignment (after a reconnect): it runs already
        }
        instances.insert(
            key.clone(),
            Instance {
                latest: pb::InstanceUpdate {
                    training_job_name: a.training_job_name.clone(),
                    instance: a.instance,
                    state: InstanceState::Downloading as i32,
                    attempt: a.attempt,
                    at_millis: runner::now_millis(),
                    ..Default::default()
                },
                stop: stop_tx,
                final_sent: None,
            },
        );
    }
    let spec = InstanceSpec {
        job: a.training_job_name,
        arn: a.training_job_arn,
        instance: a.instance,
        attempt: a.attempt,
        hosts: a.hosts,
        request: a.request.map(Into::into).unwrap_or_default(),
        gpu_uuids: a.gpu_uuids,
        peers: a.peers.into_iter().map(|p| (p.instance, p.agent_peer_address)).collect(),
        credential: a.credential,
        run_as: a.run_as,
        memory_mib: a.memory_mib,
        vcpus: a.vcpus,
    };
    let role_group = spec.run_as.as_ref().map(|r| r.group.as_str()).filter(|g| !g.is_empty()).unwrap_or("(none)");
    info!(job = %spec.job, instance = spec.instance, gpus = ?spec.gpu_uuids, role_group, "starting instance");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forwarder = {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                report(&agent, r).await;
            }
        })
    };
    let settings = agent.settings.clone();
    tokio::spawn(async move {
        runner::run(spec, &settings, tx, stop_rx).await;
        let _ = forwarder.await;
    });
}

/// Where other agents reach this one: the configured address, or this host's address towards the
/// coordinator with the peer listener's port.
fn peer_address(agent: &Agent) -> String {
    if agent.peer_port == 0 {
        return String::new();
    }
    if let Some(address) = &agent.config.peer_advertise {
        return address.clone();
    }
    let first = agent.coordinators.lock().unwrap_or_else(|e| e.into_inner()).addresses()[0].clone();
    let ip = network::local_address_towards(&first).unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    std::net::SocketAddr::new(ip, agent.peer_port).to_string()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A registry's untrusted certificate fails that job's pull, which says why in its FailureReason;
    // the verifier's own ERROR line would read as the agent's fault.
    let filter = filter.add_directive("rustls_platform_verifier=off".parse().expect("a valid directive"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json { builder.json().init() } else { builder.init() }
}

/// Says so at start when instances in their own network namespaces would have no resolver they
/// can reach (the host's are all on loopback, and systemd-resolved's upstream list names none).
fn warn_if_instances_cannot_resolve() {
    use network::resolver;
    let given = runner::host_resolver_for_instances().unwrap_or_else(|| resolver::for_instances("", None));
    if given.reachable {
        let servers: Vec<&str> = given.contents.lines().filter(|l| l.starts_with("nameserver")).collect();
        info!(?servers, "the resolvers instances in their own network namespaces are given");
    } else {
        warn!(
            "{} names no resolver an instance's own network namespace can reach (only loopback or IPv6 ones): instances cannot resolve names; give them a resolv.conf with --instance-resolv-conf",
            resolver::HOST_RESOLV_CONF
        );
    }
}
