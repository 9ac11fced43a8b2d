//! The event loop: the one place that decides what happens to jobs after the API accepted a change.
//! API handlers persist intent (a new job, a stop request) and send an [`Event`]; agents' streams
//! send theirs. The loop owns the derived state (agents and what they hold, the queue, running
//! instances, tuning jobs' progress), asks the pure placement crate and the tuner what to do,
//! persists each decision, and only then sends it to agents.
//!
//! At start-up it reconciles from the store: queued jobs are queued again, placed ones wait for their
//! agents to reconnect (and fail or retry if they do not), tuning jobs resume.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use trainyard_model::images::TrainingImage;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trainyard_model::api;
use trainyard_model::jobs::{PlacedInstance, TrainingJob, TrialOrigin};
use trainyard_model::listing::{Cursor, CursorKey, ListFilter, ListQuery, SortKey, SortOrder};
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus, TuningJobStatus};
use trainyard_model::{DomainError, Timestamp, trials};
use trainyard_proto::pb::coordinator_message::Body as Down;
use trainyard_proto::pb::{self, InstanceState};
use trainyard_scheduler::{Agent as Capacity, Decision, Demand, Problem};
use trainyard_store::MetricSample;
use trainyard_tuner::hyperband::Hyperband;
use trainyard_tuner::stopping::{self, Completion, Criteria};
use trainyard_tuner::{Finished, SearchSpace, Strategy};

use crate::core::{Coordinator, now};

/// Everything the loop reacts to.
#[derive(Debug)]
pub enum Event {
    TuningJobCreated(String),
    TrainingJobCreated(String),
    TuningJobStopRequested(String),
    TrainingJobStopRequested(String),
    AgentConnected {
        session: u64,
        register: Box<pb::Register>,
        outbound: mpsc::UnboundedSender<pb::CoordinatorMessage>,
    },
    AgentHeartbeat {
        session: u64,
        agent: String,
        heartbeat: pb::Heartbeat,
    },
    InstanceUpdate {
        session: u64,
        agent: String,
        update: pb::InstanceUpdate,
    },
    AgentDisconnected {
        session: u64,
        agent: String,
    },
    ListAgents(oneshot::Sender<Vec<pb::AgentSummary>>),
    /// An admin revoked this agent: stop its instances, close its stream, treat it as lost.
    AgentRevoked(String),
    /// An agent's session was refused: it speaks an agent protocol this coordinator does not.
    AgentRefused {
        agent: String,
        version: String,
        reason: String,
    },
    /// An admin cordoned, drained (Some) or uncordoned (None) this agent.
    CordonChanged {
        agent: String,
        cordon: Option<trainyard_store::AgentCordon>,
    },
    /// Where a queued job stands: its position (1-based), the queue's length, and why it waits.
    QueuePosition(String, oneshot::Sender<Option<(usize, usize, Option<String>)>>),
}

pub const PENDING_MESSAGE: &str = "Queued: waiting for an agent with the requested resources";

#[derive(Debug, Clone)]
pub struct Timing {
    pub heartbeat_interval: Duration,
    /// An agent silent this long is lost: its instances fail or are retried.
    pub agent_lost_after: Duration,
    /// An agent that has not heard from the coordinator this long stops its instances itself; a
    /// lost agent's jobs are retried elsewhere only after that (plus a margin), never while its
    /// copy may still run.
    pub agent_lease: Duration,
}

/// Added to the lease before a lost agent's jobs are retried: the lease renewal's trip to the agent
/// and the time it takes to kill its instances.
pub const FENCING_MARGIN: Duration = Duration::from_secs(2);

struct AgentEntry {
    session: u64,
    outbound: Option<mpsc::UnboundedSender<pb::CoordinatorMessage>>,
    inventory: pb::Inventory,
    capabilities: pb::Capabilities,
    /// Where other agents reach this one's peer forwarder (empty: it runs no namespaces).
    peer_address: String,
    /// Its build.
    version: String,
    heartbeat: Option<pb::Heartbeat>,
    last_seen: tokio::time::Instant,
    last_seen_millis: i64,
    lost: bool,
    /// An admin revoked it (until it joins again and registers).
    revoked: bool,
    /// (job, instance) → what it holds.
    allocations: BTreeMap<(String, u32), Allocation>,
}

impl AgentEntry {
    /// An agent known by name, with no stream yet: it has `agent_lost_after` from now to connect.
    fn unconnected(session: u64) -> AgentEntry {
        AgentEntry {
            session,
            outbound: None,
            inventory: pb::Inventory::default(),
            capabilities: pb::Capabilities::default(),
            peer_address: String::new(),
            version: String::new(),
            heartbeat: None,
            last_seen: tokio::time::Instant::now(),
            last_seen_millis: now().millis(),
            lost: false,
            revoked: false,
            allocations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Allocation {
    vcpus: u32,
    memory_mib: u64,
    disk_mib: u64,
    gpus: Vec<String>,
}

struct Queued {
    demand: Demand,
    queued_at: Timestamp,
    max_pending: Option<Duration>,
    reason: Option<String>,
    /// Not placed before this: a retry waits until the lost agent's copy has surely stopped.
    not_before: Option<tokio::time::Instant>,
}

/// A placed job: its instances, where, and how each ended.
struct Running {
    attempt: u32,
    instances: BTreeMap<u32, (String, Option<pb::InstanceUpdate>)>,
}

struct TuningRun {
    /// One search space per training-job definition (each may tune its own ranges).
    spaces: Vec<SearchSpace>,
    strategy: Strategy,
    seed: u64,
    max_trials: u64,
    max_parallel: u64,
    launched: u64,
    active: BTreeSet<String>,
    objective: Option<(String, bool)>,
    /// Trials with an objective value (larger is better: a minimised metric is negated).
    finished: Vec<Finished>,
    /// Hyperparameters of the trials still running, for strategies that avoid them.
    pending: BTreeMap<String, BTreeMap<String, String>>,
    criteria: Criteria,
    /// TrainingJobEarlyStoppingType: Auto (the median rule).
    early_stopping: bool,
    /// Objective after each epoch (larger is better) of running trials, and of finished ones.
    curves: HashMap<String, Vec<f64>>,
    finished_curves: Vec<Vec<f64>>,
    stopped_early: BTreeSet<String>,
    /// ResourceLimits.MaxRuntimeInSeconds of the tuning job.
    deadline: Option<Timestamp>,
    /// A completion criterion or the runtime limit holds: no new trials, running ones are stopped.
    completing: bool,
    /// The Hyperband strategy's brackets and rungs (it stops trials itself).
    hyperband: Option<Hyperband>,
    /// How many entries at the start of `finished` came from warm-start parents.
    seeded: usize,
}

impl TuningRun {
    /// Which definition trial `index` uses, and the index its strategy is asked for: Grid runs each
    /// definition's combinations in turn (the index within the definition); the other strategies
    /// alternate definitions (the trial's own index).
    fn definition_of(&self, index: u64) -> (usize, u64) {
        let n = self.spaces.len().max(1);
        if self.strategy == Strategy::Grid {
            let mut rest = index;
            for (d, space) in self.spaces.iter().enumerate() {
                let combos = self.strategy.capacity(space).unwrap_or(0);
                if rest < combos {
                    return (d, rest);
                }
                rest -= combos;
            }
            return (n - 1, u64::MAX);
        }
        // The trial's own index keeps each trial's random stream distinct across definitions.
        ((index % n as u64) as usize, index)
    }
}

/// Events handled before one placement pass (see the loop).
const MAX_EVENTS_PER_PASS: usize = 512;

pub struct Loop {
    c: Arc<Coordinator>,
    metrics: Arc<crate::telemetry::Metrics>,
    authority: Arc<trainyard_pki::Authority>,
    liveness: crate::liveness::Liveness,
    timing: Timing,
    agents: BTreeMap<String, AgentEntry>,
    /// Agents placement leaves alone (cordoned or draining), by id; from the store.
    cordons: BTreeMap<String, trainyard_store::AgentCordon>,
    /// Agents whose last session was refused (incompatible): id → (version, why).
    refused: BTreeMap<String, (String, String)>,
    queue: BTreeMap<String, Queued>,
    running: HashMap<String, Running>,
    tuning: BTreeMap<String, TuningRun>,
    /// What has been stored of each running job's metric samples (a restart starts afresh).
    metric_budgets: HashMap<String, trainyard_model::metrics::SampleBudget>,
    /// Set when an event or a tick failed (e.g. the database was away): the loop then compares
    /// its state with the store on the next ticks until that succeeds.
    resync_needed: bool,
}

pub async fn run(
    coordinator: Arc<Coordinator>,
    metrics: Arc<crate::telemetry::Metrics>,
    authority: Arc<trainyard_pki::Authority>,
    liveness: crate::liveness::Liveness,
    timing: Timing,
    mut events: mpsc::UnboundedReceiver<Event>,
    cancel: CancellationToken,
) {
    let mut state = Loop {
        c: coordinator,
        metrics,
        authority,
        liveness,
        timing,
        agents: BTreeMap::new(),
        cordons: BTreeMap::new(),
        refused: BTreeMap::new(),
        queue: BTreeMap::new(),
        running: HashMap::new(),
        tuning: BTreeMap::new(),
        metric_budgets: HashMap::new(),
        resync_needed: false,
    };
    // At start the loop knows nothing: catching up with the store rebuilds everything.
    if let Err(e) = state.resync().await {
        warn!(error = %e, "start-up reconciliation incomplete; retrying from the store");
        state.resync_needed = true;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                if state.resync_needed {
                    match state.resync().await {
                        Ok(()) => {
                            state.resync_needed = false;
                            info!("caught up with the store after a failure");
                        }
                        Err(e) => debug!(error = %e, "still cannot catch up with the store"),
                    }
                }
                if let Err(e) = state.on_tick().await {
                    warn!(error = %e, "periodic checks failed");
                    state.resync_needed = true;
                }
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                // Events that are already waiting are handled first and placement runs once for
                // all of them: a placement pass costs O(queue x agents), and running it per event
                // made the loop fall minutes behind under a burst of submissions to a full cluster.
                let mut batch = vec![event];
                while batch.len() < MAX_EVENTS_PER_PASS {
                    match events.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                for event in batch {
                    debug!(?event, "event");
                    if let Err(e) = state.handle(event).await {
                        warn!(error = %e, "event not handled; catching up from the store");
                        state.resync_needed = true;
                    }
                }
                if let Err(e) = state.schedule().await {
                    warn!(error = %e, "scheduling failed");
                }
            }
        }
    }
    info!("event loop stopped");
}

fn send(entry: &AgentEntry, body: Down) {
    if let Some(tx) = &entry.outbound {
        let _ = tx.send(pb::CoordinatorMessage { body: Some(body) });
    }
}

fn is_final(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Completed | InstanceState::Failed | InstanceState::Stopped | InstanceState::MaxRuntimeExceeded
    )
}

impl Loop {
    async fn handle(&mut self, event: Event) -> Result<(), DomainError> {
        match event {
            Event::TuningJobCreated(name) => {
                self.load_tuning(&name).await?;
                self.drive_tuning(&name).await
            }
            Event::TrainingJobCreated(name) => self.enqueue(&name).await,
            Event::TrainingJobStopRequested(name) => self.stop_training(&name).await,
            Event::TuningJobStopRequested(name) => self.stop_tuning(&name).await,
            Event::AgentConnected { session, register, outbound } => self.on_agent(session, *register, outbound).await,
            Event::AgentHeartbeat { session, agent, heartbeat } => {
                if let Some(a) = self.agents.get_mut(&agent).filter(|a| a.session == session) {
                    a.heartbeat = Some(heartbeat);
                    a.last_seen = tokio::time::Instant::now();
                    a.last_seen_millis = now().millis();
                    a.lost = false;
                }
                Ok(())
            }
            Event::InstanceUpdate { session, agent, update } => {
                if let Some(a) = self.agents.get_mut(&agent).filter(|a| a.session == session) {
                    a.last_seen = tokio::time::Instant::now();
                    a.last_seen_millis = now().millis();
                }
                self.on_update(&agent, update).await
            }
            Event::AgentDisconnected { session, agent } => {
                if let Some(a) = self.agents.get_mut(&agent).filter(|a| a.session == session) {
                    // Its instances keep running; it has `agent_lost_after` to come back.
                    a.outbound = None;
                    info!(agent, "agent disconnected");
                }
                Ok(())
            }
            Event::ListAgents(reply) => {
                let _ = reply.send(self.summaries());
                Ok(())
            }
            Event::AgentRefused { agent, version, reason } => {
                self.refused.insert(agent, (version, reason));
                Ok(())
            }
            Event::CordonChanged { agent, cordon } => {
                match cordon {
                    Some(cordon) => self.cordons.insert(agent, cordon),
                    None => self.cordons.remove(&agent),
                };
                Ok(())
            }
            Event::AgentRevoked(agent) => {
                if let Some(a) = self.agents.get(&agent) {
                    // Queued before the stream closes, so a connected agent stops what it runs.
                    for (job, instance) in a.allocations.keys() {
                        send(
                            a,
                            Down::Stop(pb::StopInstance {
                                training_job_name: job.clone(),
                                instance: *instance,
                                kill: true,
                            }),
                        );
                    }
                }
                self.declare_lost(&agent, "was revoked").await?;
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.session = 0; // sessions count from 1: whatever the old stream still says is ignored
                    a.revoked = true;
                }
                Ok(())
            }
            Event::QueuePosition(name, reply) => {
                let _ = reply.send(self.position(&name));
                Ok(())
            }
        }
    }

    // ----- start-up -----

    /// A job the store says is placed but the loop does not track: its resources are held on its
    /// agents and their reports are awaited (an agent that no longer runs it says so when it
    /// registers; one that never comes back is declared lost).
    fn adopt_placed(&mut self, job: &TrainingJob) -> Result<(), DomainError> {
        let demand = self.demand_of(job)?;
        let mut instances = BTreeMap::new();
        for p in &job.placement {
            let entry = self.agents.entry(p.agent.clone()).or_insert_with(|| AgentEntry::unconnected(0));
            entry.allocations.insert(
                (job.name.clone(), p.instance),
                Allocation {
                    vcpus: demand.vcpus,
                    memory_mib: demand.memory_mib,
                    disk_mib: demand.disk_mib,
                    gpus: p.gpu_uuids.clone(),
                },
            );
            instances.insert(p.instance, (p.agent.clone(), None));
        }
        self.running.insert(job.name.clone(), Running { attempt: job.attempt, instances });
        Ok(())
    }

    /// Catches up with the store, at start and after a failed event (the database was away, say):
    /// what an event would have done for a job, done from the job's stored state. Jobs placed
    /// before a restart wait for their agents to come back and report. Idempotent.
    async fn resync(&mut self) -> Result<(), DomainError> {
        self.cordons = self.c.store.cordons().await?.into_iter().map(|c| (c.agent_id.clone(), c)).collect();
        let tuning = self.c.store.active_tuning_jobs().await?;
        let training = self.c.store.active_training_jobs(None).await?;
        info!(training_jobs = training.len(), tuning_jobs = tuning.len(), "reconciling unfinished jobs with the store");
        for t in tuning {
            if !self.tuning.contains_key(&t.value.name) {
                self.load_tuning(&t.value.name).await?;
            }
        }
        for t in training {
            let job = t.value;
            if self.queue.contains_key(&job.name) || self.running.contains_key(&job.name) {
                continue;
            }
            if !job.placement.is_empty() {
                self.adopt_placed(&job)?;
            } else if job.status == TrainingJobStatus::Stopping {
                self.finish(&job.name, SecondaryStatus::Stopped, "Stopped before an agent started it", None, None)
                    .await?;
            } else {
                self.enqueue(&job.name).await?;
            }
        }
        let names: Vec<String> = self.tuning.keys().cloned().collect();
        for name in names {
            let stopping = self.c.tuning_job(&name).await?.value.status == TuningJobStatus::Stopping;
            if stopping { self.stop_tuning(&name).await? } else { self.drive_tuning(&name).await? }
        }
        self.schedule().await
    }

    // ----- queue and placement -----

    fn demand_of(&self, job: &TrainingJob) -> Result<Demand, DomainError> {
        let rc = job.request.resource_config.as_ref();
        let instance_type = rc.and_then(|r| r.instance_type.clone()).unwrap_or_default();
        let spec = self.c.catalog.get(&instance_type).ok_or_else(|| {
            DomainError::invalid("ResourceConfig.InstanceType", format!("'{instance_type}' is not in the catalog"))
        })?;
        Ok(Demand {
            job: job.name.clone(),
            group: job.tuning_job_name().map(str::to_string),
            instance_count: rc.and_then(|r| r.instance_count).unwrap_or(1).max(1) as u32,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            disk_mib: rc.and_then(|r| r.volume_size_in_gb).unwrap_or(0).max(0) as u64 * 1024,
            gpus: spec.gpus,
            needs_isolation: job.request.enable_network_isolation == Some(true),
            needs_containers: matches!(
                TrainingImage::of(
                    job.request
                        .algorithm_specification
                        .as_ref()
                        .and_then(|a| a.training_image.as_deref())
                        .unwrap_or_default()
                ),
                TrainingImage::Container(_)
            ),
            queued_at: job.creation_time.millis(),
        })
    }

    async fn enqueue(&mut self, name: &str) -> Result<(), DomainError> {
        let job = self.c.training_job(name).await?.value;
        if job.status != TrainingJobStatus::InProgress || !job.placement.is_empty() {
            return Ok(());
        }
        let demand = self.demand_of(&job)?;
        let max_pending = job
            .request
            .stopping_condition
            .as_ref()
            .and_then(|s| s.max_pending_time_in_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        self.c
            .update_training_job(name, |j| {
                if j.secondary_status == SecondaryStatus::Pending {
                    return Ok(false);
                }
                j.transition(SecondaryStatus::Pending, PENDING_MESSAGE, now())?;
                Ok(true)
            })
            .await?;
        self.queue
            .insert(name.to_string(), Queued { demand, queued_at: now(), max_pending, reason: None, not_before: None });
        Ok(())
    }

    fn capacities(&self) -> Vec<Capacity> {
        self.agents
            .iter()
            .filter(|(_, a)| !a.lost && a.outbound.is_some())
            .map(|(id, a)| {
                let used = a
                    .allocations
                    .values()
                    .fold((0u32, 0u64, 0u64), |acc, x| (acc.0 + x.vcpus, acc.1 + x.memory_mib, acc.2 + x.disk_mib));
                let held: BTreeSet<&String> = a.allocations.values().flat_map(|x| &x.gpus).collect();
                Capacity {
                    id: id.clone(),
                    vcpus_total: a.inventory.cpu_count,
                    memory_total_mib: a.inventory.memory_total_mib,
                    disk_total_mib: a.inventory.disk_free_mib,
                    gpus_total: a.inventory.gpus.len() as u32,
                    vcpus_free: a.inventory.cpu_count.saturating_sub(used.0),
                    memory_free_mib: a.inventory.memory_total_mib.saturating_sub(used.1),
                    disk_free_mib: a.inventory.disk_free_mib.saturating_sub(used.2),
                    gpus_free: a.inventory.gpus.iter().map(|g| g.uuid.clone()).filter(|u| !held.contains(u)).collect(),
                    network_isolation: a.capabilities.network_isolation,
                    containers: !a.capabilities.container_runtime.is_empty(),
                    host_programs: a.capabilities.host_programs,
                    cordoned: self.cordons.contains_key(id),
                }
            })
            .collect()
    }

    /// Places what fits; records why the rest cannot run when no agent could ever hold it.
    async fn schedule(&mut self) -> Result<(), DomainError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let mut problem = Problem {
            agents: self.capacities(),
            queue: {
                let now = tokio::time::Instant::now();
                self.queue
                    .values()
                    .filter(|q| q.not_before.is_none_or(|t| t <= now))
                    .map(|q| q.demand.clone())
                    .collect()
            },
            running_per_group: self.tuning.iter().map(|(n, t)| (n.clone(), t.active.len() as u32)).collect(),
        };
        if problem.agents.is_empty() {
            return Ok(());
        }
        let pass = std::time::Instant::now();
        let decisions = trainyard_scheduler::place(&mut problem);
        self.metrics.placement_seconds.observe(pass.elapsed().as_secs_f64());
        for decision in decisions {
            match decision {
                Decision::Place { job, instances } => {
                    if let Some(q) = self.queue.get(&job) {
                        let waited = now().millis().saturating_sub(q.queued_at.millis()).max(0);
                        self.metrics.queue_wait_seconds.observe(waited as f64 / 1000.0);
                    }
                    self.start(&job, instances).await?
                }
                Decision::Unplaceable { job, reason } => {
                    let Some(q) = self.queue.get_mut(&job) else { continue };
                    if q.reason.as_deref() != Some(reason.as_str()) {
                        q.reason = Some(reason.clone());
                        let message = format!("Cannot be placed: {reason}");
                        self.c.update_training_job(&job, |j| Ok(j.set_status_message(message.clone(), now()))).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn start(
        &mut self,
        name: &str,
        instances: Vec<trainyard_scheduler::InstancePlacement>,
    ) -> Result<(), DomainError> {
        let Some(queued) = self.queue.remove(name) else { return Ok(()) };
        let placement: Vec<PlacedInstance> = instances
            .iter()
            .map(|i| PlacedInstance { instance: i.instance, agent: i.agent.clone(), gpu_uuids: i.gpu_uuids.clone() })
            .collect();
        let agents: Vec<&str> = placement.iter().map(|p| p.agent.as_str()).collect();
        let message = format!("Launching on {}", agents.join(", "));
        // Who it runs as is decided in the same write that places it: a role removed from the
        // configuration since the job was accepted fails it instead.
        let (mut run_as, mut refused) = (None, None);
        let placed = self
            .c
            .updated_training_job(name, |j| {
                match self.c.roles.run_as(j.request.role_arn.as_deref()) {
                    Ok(role) => {
                        run_as = role.map(|r| pb::RunAs { group: r.group.unwrap_or_default(), ..Default::default() })
                    }
                    Err(reason) => {
                        refused = Some(format!("ClientError: RoleArn: {reason}"));
                        return Ok(false);
                    }
                }
                j.placement = placement.clone();
                j.transition(SecondaryStatus::Starting, message.clone(), now())?;
                Ok(true)
            })
            .await?;
        if let Some(reason) = refused {
            return self.finish(name, SecondaryStatus::Failed, "Failed", Some(reason), None).await;
        }
        let Some(job) = placed else { return Ok(()) };
        let hosts: Vec<String> = (1..=placement.len()).map(|i| format!("algo-{i}")).collect();
        let peers: Vec<pb::PeerInstance> = placement
            .iter()
            .map(|p| pb::PeerInstance {
                instance: p.instance,
                agent_peer_address: self.agents.get(&p.agent).map(|a| a.peer_address.clone()).unwrap_or_default(),
            })
            .collect();
        let credential = match job.request.enable_inter_container_traffic_encryption {
            Some(true) => Some(self.job_credential(&job)?),
            _ => None,
        };
        let d = &queued.demand;
        let mut run = Running { attempt: job.attempt, instances: BTreeMap::new() };
        for p in &placement {
            let Some(agent) = self.agents.get_mut(&p.agent) else { continue };
            agent.allocations.insert(
                (name.to_string(), p.instance),
                Allocation {
                    vcpus: d.vcpus,
                    memory_mib: d.memory_mib,
                    disk_mib: d.disk_mib,
                    gpus: p.gpu_uuids.clone(),
                },
            );
            send(
                agent,
                Down::Assignment(pb::Assignment {
                    training_job_name: name.to_string(),
                    training_job_arn: job.arn.clone(),
                    instance: p.instance,
                    hosts: hosts.clone(),
                    request: Some(job.request.clone().into()),
                    gpu_uuids: p.gpu_uuids.clone(),
                    attempt: job.attempt,
                    peers: peers.clone(),
                    credential: credential.clone(),
                    run_as: run_as.clone(),
                    memory_mib: d.memory_mib,
                    vcpus: d.vcpus,
                }),
            );
            run.instances.insert(p.instance, (p.agent.clone(), None));
        }
        info!(training_job = name, agents = ?agents, waited_ms = now().millis() - queued.queued_at.millis(), "placed");
        self.running.insert(name.to_string(), run);
        Ok(())
    }

    /// The certificate a job's agents present to each other. It outlives the job's longest possible
    /// run (MaxRuntimeInSeconds, or SageMaker's one-day default) by a day.
    fn job_credential(&self, job: &TrainingJob) -> Result<pb::JobCredential, DomainError> {
        let runtime = job.request.stopping_condition.as_ref().and_then(|s| s.max_runtime_in_seconds).unwrap_or(86_400);
        let valid_for = Duration::from_secs(runtime.max(0) as u64 + 86_400);
        let credential = self
            .authority
            .issue_job_credential(&job.name, valid_for)
            .map_err(|e| DomainError::Internal(format!("issuing the job's certificate: {e}")))?;
        Ok(pb::JobCredential {
            ca_pem: credential.ca_pem,
            certificate_pem: credential.certificate_pem,
            key_pem: credential.key_pem,
        })
    }

    // ----- agents -----

    async fn on_agent(
        &mut self,
        session: u64,
        register: pb::Register,
        outbound: mpsc::UnboundedSender<pb::CoordinatorMessage>,
    ) -> Result<(), DomainError> {
        let id = register.agent_id.clone();
        // An agent that is connected keeps its session: a second one for its id (a copied identity,
        // or a rejoin under its name) is refused, not allowed to cut it off. An agent whose old
        // stream died unnoticed gets in once that session is declared lost.
        if let Some(live) = self
            .agents
            .get(&id)
            .filter(|a| a.session != session && !a.lost && a.outbound.as_ref().is_some_and(|o| !o.is_closed()))
        {
            warn!(agent = %id, connected_session = live.session, refused_session = session, "a second session for a connected agent was refused");
            drop(outbound); // ends the new stream
            return Ok(());
        }
        let entry = self.agents.entry(id.clone()).or_insert_with(|| AgentEntry::unconnected(session));
        entry.session = session;
        entry.outbound = Some(outbound);
        entry.inventory = register.inventory.unwrap_or_default();
        entry.capabilities = register.capabilities.unwrap_or_default();
        entry.peer_address = register.peer_address.clone();
        entry.version = register.version.clone();
        self.refused.remove(&id);
        entry.last_seen = tokio::time::Instant::now();
        entry.last_seen_millis = now().millis();
        entry.lost = false;
        entry.revoked = false;
        send(
            entry,
            Down::Registered(pb::Registered {
                heartbeat_interval_ms: self.timing.heartbeat_interval.as_millis() as u32,
            }),
        );
        send(entry, Down::Lease(crate::agents::lease(self.timing.agent_lease)));
        let gpus: Vec<&str> = entry.inventory.gpus.iter().map(|g| g.name.as_str()).collect();
        info!(agent = %id, cpus = entry.inventory.cpu_count, memory_mib = entry.inventory.memory_total_mib, gpus = ?gpus, reported = register.instances.len(), "agent registered");

        // What the agent runs vs what we placed on it.
        let reported: BTreeSet<(String, u32)> =
            register.instances.iter().map(|u| (u.training_job_name.clone(), u.instance)).collect();
        let ours: Vec<(String, u32)> = self
            .running
            .iter()
            .flat_map(|(job, r)| r.instances.iter().filter(|(_, (a, _))| *a == id).map(move |(i, _)| (job.clone(), *i)))
            .collect();
        for update in register.instances {
            self.on_update(&id, update).await?;
        }
        for (job, instance) in ours {
            if !reported.contains(&(job.clone(), instance)) {
                self.instance_lost(&job, instance, &format!("agent {id} restarted and no longer runs it"), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// The gauges operators scrape: queue, running jobs, agents by state.
    fn update_gauges(&self) {
        self.metrics.queue_length.set(self.queue.len() as i64);
        self.metrics.jobs_running.set(self.running.len() as i64);
        let mut states: BTreeMap<String, i64> =
            ["ready", "disconnected", "lost", "revoked", "refused", "cordoned", "draining", "drained"]
                .into_iter()
                .map(|s| (s.to_string(), 0))
                .collect();
        for summary in self.summaries() {
            *states.entry(summary.state).or_default() += 1;
            if !summary.cordon.is_empty() {
                *states.entry(summary.cordon).or_default() += 1;
            }
        }
        for (state, count) in states {
            self.metrics.agents.get_or_create(&crate::telemetry::State { state }).set(count);
        }
    }

    /// Drains past their deadline: what still runs on the agent is killed there and handled as
    /// lost (retried elsewhere under its RetryStrategy, else failed with the reason).
    async fn enforce_drain_deadlines(&mut self) -> Result<(), DomainError> {
        let at = now();
        let overdue: Vec<(String, u32, String)> = self
            .cordons
            .values()
            .filter(|c| c.drain && c.stop_at.is_some_and(|t| t <= at))
            .filter_map(|c| self.agents.get(&c.agent_id).map(|a| (c, a)))
            .flat_map(|(c, a)| a.allocations.keys().map(|(job, i)| (job.clone(), *i, c.agent_id.clone())))
            .collect();
        for (job, instance, agent) in overdue {
            info!(training_job = %job, instance, %agent, "drain deadline passed: stopping the instance");
            if let Some(a) = self.agents.get(&agent) {
                send(a, Down::Stop(pb::StopInstance { training_job_name: job.clone(), instance, kill: true }));
            }
            let why = format!("agent {agent} was drained for maintenance and its deadline passed");
            self.instance_lost(&job, instance, &why, None).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), DomainError> {
        let now_instant = tokio::time::Instant::now();
        let lost: Vec<String> = self
            .agents
            .iter()
            .filter(|(id, a)| {
                // The streams' own record counts too: heartbeats may still wait in this loop's queue.
                let seen = self.liveness.last_seen(id).map_or(a.last_seen, |l| l.max(a.last_seen));
                !a.lost && now_instant.duration_since(seen) > self.timing.agent_lost_after
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            warn!(agent = %id, after_s = self.timing.agent_lost_after.as_secs(), "agent lost: no heartbeat");
            self.declare_lost(&id, "was lost (no heartbeat)").await?;
        }
        self.enforce_drain_deadlines().await?;
        self.update_gauges();
        // Tuning jobs past ResourceLimits.MaxRuntimeInSeconds.
        let overdue: Vec<(String, u32)> = self
            .tuning
            .iter()
            .filter(|(_, r)| !r.completing && r.deadline.is_some_and(|d| now() > d))
            .map(|(n, r)| {
                (n.clone(), stopping::trials_not_improving(&r.finished.iter().map(|f| f.value).collect::<Vec<_>>()))
            })
            .collect();
        for (name, not_improving) in overdue {
            info!(tuning_job = %name, "MaxRuntimeInSeconds of the tuning job reached");
            self.complete_early(&name, None, not_improving).await?;
        }
        // MaxPendingTimeInSeconds.
        let expired: Vec<String> = self
            .queue
            .iter()
            .filter(|(_, q)| {
                q.max_pending.is_some_and(|m| now().millis() - q.queued_at.millis() > m.as_millis() as i64)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.queue.remove(&name);
            let reason =
                "CapacityError: the job waited longer than StoppingCondition.MaxPendingTimeInSeconds for an agent";
            self.finish(&name, SecondaryStatus::Failed, "Failed", Some(reason.to_string()), None).await?;
        }
        self.schedule().await
    }

    /// An agent that will not report again: its stream is closed and its instances are failed or
    /// retried elsewhere.
    async fn declare_lost(&mut self, id: &str, why: &str) -> Result<(), DomainError> {
        // The agent may still run them (a partition): its lease, renewed at most until it was
        // last heard from, must run out before they run anywhere else.
        let last_heard =
            self.agents.get(id).map(|a| self.liveness.last_seen(id).map_or(a.last_seen, |l| l.max(a.last_seen)));
        let fenced_until = last_heard.map(|t| t + self.timing.agent_lease + FENCING_MARGIN);
        let held: Vec<(String, u32)> = match self.agents.get_mut(id) {
            Some(a) => {
                a.lost = true;
                a.outbound = None;
                a.allocations.keys().cloned().collect()
            }
            None => Vec::new(),
        };
        for (job, instance) in held {
            self.instance_lost(&job, instance, &format!("agent {id} {why}"), fenced_until).await?;
        }
        Ok(())
    }

    /// An instance whose agent is gone: retry the job under RetryStrategy, else fail it.
    /// `fenced_until`: when the lost copy has surely stopped (None: it is known to have).
    async fn instance_lost(
        &mut self,
        job: &str,
        instance: u32,
        why: &str,
        fenced_until: Option<tokio::time::Instant>,
    ) -> Result<(), DomainError> {
        let Some(run) = self.running.remove(job) else { return Ok(()) };
        // The rest of the gang is killed, not stopped gracefully: the attempt is over, and a retry
        // must not meet its old copies still running.
        for (i, (agent, _)) in &run.instances {
            if let Some(a) = self.agents.get_mut(agent) {
                a.allocations.remove(&(job.to_string(), *i));
                if *i != instance {
                    send(
                        a,
                        Down::Stop(pb::StopInstance { training_job_name: job.to_string(), instance: *i, kill: true }),
                    );
                }
            }
        }
        let stored = self.c.training_job(job).await?.value;
        let retries =
            stored.request.retry_strategy.as_ref().and_then(|r| r.maximum_retry_attempts).unwrap_or(0).max(0) as u32;
        if stored.status == TrainingJobStatus::InProgress && stored.attempt <= retries {
            let wait =
                fenced_until.map(|t| t.saturating_duration_since(tokio::time::Instant::now())).unwrap_or_default();
            let after = if wait.is_zero() {
                String::new()
            } else {
                format!(" in {} s, once the lost copy has stopped itself", wait.as_secs_f64().ceil() as u64)
            };
            let message = format!("Retrying (attempt {} of {}){after}: {why}", stored.attempt + 1, retries + 1);
            info!(training_job = job, %message, "retrying");
            self.c
                .update_training_job(job, |j| {
                    j.attempt += 1;
                    j.placement.clear();
                    j.transition(SecondaryStatus::Restarting, message.clone(), now())?;
                    Ok(true)
                })
                .await?;
            self.enqueue(job).await?;
            if let Some(queued) = self.queue.get_mut(job)
                && !wait.is_zero()
            {
                queued.not_before = fenced_until;
                let message = format!(
                    "Queued: waiting {} s for the lost copy to stop itself (fencing), then for an agent",
                    wait.as_secs_f64().ceil() as u64
                );
                self.c.update_training_job(job, |j| Ok(j.set_status_message(message.clone(), now()))).await?;
            }
            return Ok(());
        }
        let (status, reason) = if stored.status == TrainingJobStatus::Stopping {
            (SecondaryStatus::Stopped, None)
        } else {
            (SecondaryStatus::Failed, Some(format!("InternalServerError: {why}")))
        };
        self.finish(job, status, why, reason, None).await
    }

    // ----- instance reports -----

    async fn on_update(&mut self, agent: &str, update: pb::InstanceUpdate) -> Result<(), DomainError> {
        let job = update.training_job_name.clone();
        let state = update.state();
        let known = self.running.get(&job).is_some_and(|r| {
            r.attempt == update.attempt && r.instances.get(&update.instance).is_some_and(|(a, _)| a == agent)
        });
        if !known {
            // Not ours (any more): the job ended or was retried elsewhere. The agent can drop it.
            if let Some(a) = self.agents.get(agent) {
                if !is_final(state) {
                    send(
                        a,
                        Down::Stop(pb::StopInstance {
                            training_job_name: job.clone(),
                            instance: update.instance,
                            kill: true,
                        }),
                    );
                } else {
                    send(
                        a,
                        Down::Forget(pb::ForgetInstance { training_job_name: job.clone(), instance: update.instance }),
                    );
                }
            }
            return Ok(());
        }
        // Counted once: only the report of an instance this coordinator placed.
        if is_final(state) {
            let label = crate::telemetry::State { state: format!("{state:?}") };
            self.metrics.instances_ended.get_or_create(&label).inc();
        }
        if !update.metrics.is_empty() {
            self.record_metrics(&job, &update.metrics).await?;
        }
        let secondary = match state {
            InstanceState::Downloading => Some(SecondaryStatus::Downloading),
            InstanceState::Training => Some(SecondaryStatus::Training),
            InstanceState::Uploading => Some(SecondaryStatus::Uploading),
            _ => None,
        };
        if let Some(next) = secondary {
            let message = update.message.clone();
            self.c
                .update_training_job(&job, |j| {
                    // Progress only moves forward; a multi-instance job shows its furthest instance.
                    let order = |s: SecondaryStatus| match s {
                        SecondaryStatus::Downloading => 1,
                        SecondaryStatus::Training => 2,
                        SecondaryStatus::Uploading => 3,
                        _ => 0,
                    };
                    if j.status != TrainingJobStatus::InProgress || order(next) < order(j.secondary_status) {
                        return Ok(false);
                    }
                    if next == j.secondary_status {
                        // Progress within a step ("Downloading the training image (12.0 of 40.0 MB)").
                        return Ok(j.set_status_message(message.clone(), now()));
                    }
                    j.transition(next, message.clone(), now())?;
                    Ok(true)
                })
                .await?;
        }
        if !is_final(state) {
            return Ok(());
        }
        // An instance ended.
        if let Some(a) = self.agents.get_mut(agent) {
            a.allocations.remove(&(job.clone(), update.instance));
        }
        let run = self.running.get_mut(&job).expect("known above");
        if let Some(slot) = run.instances.get_mut(&update.instance) {
            slot.1 = Some(update.clone());
        }
        let ended: Vec<&pb::InstanceUpdate> = run.instances.values().filter_map(|(_, u)| u.as_ref()).collect();
        let failed = ended.iter().find(|u| u.state() == InstanceState::Failed).map(|u| (*u).clone());
        let all_ended = ended.len() == run.instances.len();
        if failed.is_none() && !all_ended {
            return Ok(());
        }
        // The job ends: with the first failure, or when every instance has.
        let others: Vec<(u32, String)> =
            run.instances.iter().filter(|(_, (_, u))| u.is_none()).map(|(i, (a, _))| (*i, a.clone())).collect();
        let model = run.instances.get(&1).and_then(|(_, u)| u.as_ref()).and_then(|u| u.model_artifacts.clone());
        let states: Vec<InstanceState> = ended.iter().map(|u| u.state()).collect();
        for (i, a) in &others {
            if let Some(entry) = self.agents.get_mut(a) {
                entry.allocations.remove(&(job.clone(), *i));
                send(entry, Down::Stop(pb::StopInstance { training_job_name: job.clone(), instance: *i, kill: false }));
            }
        }
        let (status, message, reason) = if let Some(f) = failed {
            let reason = f.failure_reason.clone().unwrap_or_else(|| "AlgorithmError".into());
            let instance = if run.instances.len() > 1 { format!(" (algo-{})", f.instance) } else { String::new() };
            (SecondaryStatus::Failed, "Training job failed".to_string(), Some(format!("{reason}{instance}")))
        } else if states.contains(&InstanceState::MaxRuntimeExceeded) {
            (
                SecondaryStatus::MaxRuntimeExceeded,
                "Training job reached MaxRuntimeInSeconds and was stopped".into(),
                None,
            )
        } else if states.contains(&InstanceState::Stopped) {
            (SecondaryStatus::Stopped, "Training job stopped".into(), None)
        } else {
            (SecondaryStatus::Completed, "Training job completed".into(), None)
        };
        let instances: Vec<(u32, String)> = self
            .running
            .remove(&job)
            .map(|r| r.instances.into_iter().map(|(i, (a, _))| (i, a)).collect())
            .unwrap_or_default();
        self.finish(&job, status, &message, reason, model).await?;
        // Stored: the agents may forget the instances that have ended.
        for (i, a) in instances {
            if let Some(entry) = self.agents.get(&a) {
                send(entry, Down::Forget(pb::ForgetInstance { training_job_name: job.clone(), instance: i }));
            }
        }
        Ok(())
    }

    /// Feeds a trial's objective to the early-stopping policy — Hyperband's rungs, or the median
    /// rule of `TrainingJobEarlyStoppingType: Auto` — and stops the trial if it says so.
    fn early_stop(&mut self, tuning: &str, trial: &str, metric: &str, samples: &[pb::MetricSample]) {
        let Some(run) = self.tuning.get_mut(tuning) else { return };
        let Some((objective, maximize)) = run.objective.clone() else { return };
        if !(run.early_stopping || run.hyperband.is_some()) || objective != metric || run.stopped_early.contains(trial)
        {
            return;
        }
        let bracket = run.hyperband.as_ref().map(|h| h.bracket_of(trials::index_of(tuning, trial).unwrap_or(0)));
        let curve = run.curves.entry(trial.to_string()).or_default();
        let mut stop = false;
        for s in samples.iter().filter(|s| s.name == objective) {
            let value = if maximize { s.value } else { -s.value };
            curve.push(value);
            stop = match (&mut run.hyperband, bracket) {
                (Some(hb), Some(b)) => stop || hb.report(b, curve.len() as u64, value),
                _ => stop || stopping::median_rule(curve, &run.finished_curves),
            };
        }
        if !stop {
            return;
        }
        run.stopped_early.insert(trial.to_string());
        let rule = if run.hyperband.is_some() {
            "outside the top 1/3 of its Hyperband rung"
        } else {
            "worse than the median of earlier trials"
        };
        info!(tuning_job = tuning, trial, epoch = curve.len(), rule, "stopped early");
        self.stop_running_instances(trial);
    }

    async fn record_metrics(&mut self, job: &str, samples: &[pb::MetricSample]) -> Result<(), DomainError> {
        // SageMaker records numbers only: NaN and infinities (a regex that captured "nan" or "inf")
        // are dropped, here as at the agent, so no objective or ranking ever sees one.
        let samples: Vec<pb::MetricSample> = samples.iter().filter(|s| s.value.is_finite()).cloned().collect();
        if samples.is_empty() {
            return Ok(());
        }
        let converted: Vec<MetricSample> = samples
            .iter()
            .map(|s| MetricSample {
                name: s.name.clone(),
                timestamp: Timestamp::from_millis(s.timestamp_millis),
                value: s.value,
            })
            .collect();
        let budget = self.metric_budgets.entry(job.to_string()).or_default();
        let stored: Vec<MetricSample> =
            converted.iter().filter(|m| budget.keep(&m.name, m.timestamp.millis())).cloned().collect();
        self.c.store.append_metrics(job, &stored).await?;
        let stored = self.c.training_job(job).await?.value;
        let tuning = stored.tuning_job_name().map(str::to_string);
        let objective =
            tuning.as_deref().and_then(|t| self.tuning.get(t)).and_then(|t| t.objective.clone()).map(|(m, _)| m);
        if let (Some(tuning), Some(metric)) = (&tuning, &objective) {
            self.early_stop(tuning, job, metric, &samples);
        }
        self.c
            .update_training_job(job, |j| {
                for s in &converted {
                    let data = api::MetricData {
                        metric_name: Some(s.name.clone()),
                        timestamp: Some(s.timestamp),
                        value: Some(s.value),
                    };
                    let existing =
                        j.final_metrics.iter().position(|m| m.metric_name.as_deref() == Some(s.name.as_str()));
                    match existing {
                        Some(i) => j.final_metrics[i] = data,
                        None if j.final_metrics.len() < 40 => j.final_metrics.push(data),
                        None => {}
                    }
                    if objective.as_deref() == Some(s.name.as_str()) {
                        j.objective_value = Some(s.value);
                    }
                }
                j.last_modified_time = now();
                Ok(true)
            })
            .await?;
        Ok(())
    }

    /// Ends a training job (persisted), frees its slot, and lets its tuning job go on.
    async fn finish(
        &mut self,
        job: &str,
        status: SecondaryStatus,
        message: &str,
        failure_reason: Option<String>,
        model_artifacts: Option<String>,
    ) -> Result<(), DomainError> {
        self.c
            .update_training_job(job, |j| {
                if j.status.is_terminal() {
                    return Ok(false);
                }
                if j.status == TrainingJobStatus::Stopping
                    && status != SecondaryStatus::Failed
                    && status != SecondaryStatus::Stopped
                {
                    // A stop raced with the end: SageMaker reports what happened.
                }
                j.failure_reason = failure_reason.clone();
                j.model_artifacts = model_artifacts.clone().or(j.model_artifacts.take());
                j.transition(status, message, now())?;
                Ok(true)
            })
            .await?;
        info!(training_job = job, status = %status, "training job ended");
        self.metric_budgets.remove(job);
        let stored = self.c.training_job(job).await?.value;
        if let Some(tuning) = stored.tuning_job_name().map(str::to_string) {
            let mut completion = None;
            if let Some(run) = self.tuning.get_mut(&tuning) {
                run.active.remove(job);
                let tuned = run.pending.remove(job).unwrap_or_default();
                if let Some(curve) = run.curves.remove(job) {
                    run.finished_curves.push(curve);
                }
                if let Some(v) = stored.objective_value {
                    let maximize = run.objective.as_ref().is_none_or(|(_, m)| *m);
                    run.finished.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
                }
                if !run.completing {
                    let values: Vec<f64> = run.finished[run.seeded..].iter().map(|f| f.value).collect();
                    completion = stopping::complete(&run.criteria, &values)
                        .map(|c| (c, stopping::trials_not_improving(&values)));
                }
            }
            if let Some((reason, not_improving)) = completion {
                self.complete_early(&tuning, Some(reason), not_improving).await?;
            }
            let stopping = self.c.tuning_job(&tuning).await?.value.status == TuningJobStatus::Stopping;
            if stopping { self.stop_tuning(&tuning).await? } else { self.drive_tuning(&tuning).await? }
        }
        Ok(())
    }

    async fn stop_training(&mut self, name: &str) -> Result<(), DomainError> {
        if self.queue.remove(name).is_some() || !self.running.contains_key(name) {
            let job = self.c.training_job(name).await?.value;
            if job.status == TrainingJobStatus::Stopping {
                return self
                    .finish(name, SecondaryStatus::Stopped, "Stopped before an agent started it", None, None)
                    .await;
            }
            return Ok(());
        }
        self.stop_running_instances(name);
        Ok(())
    }

    // ----- tuning jobs -----

    async fn load_tuning(&mut self, name: &str) -> Result<(), DomainError> {
        if self.tuning.contains_key(name) {
            return Ok(());
        }
        let job = self.c.tuning_job(name).await?.value;
        let config = job.request.hyper_parameter_tuning_job_config.clone().unwrap_or_default();
        let strategy_name = config.strategy.clone().unwrap_or_default();
        let strategy = Strategy::from_name(&strategy_name);
        let hyperband = (strategy_name == "Hyperband").then(|| {
            let hb =
                config.strategy_config.as_ref().and_then(|s| s.hyperband_strategy_config.clone()).unwrap_or_default();
            let statics =
                trials::definition(&job.request, 0).and_then(|d| d.static_hyper_parameters.clone()).unwrap_or_default();
            let inferred = trainyard_model::rules::EPOCH_HYPERPARAMETERS
                .iter()
                .find_map(|k| statics.get(*k)?.trim().parse::<u64>().ok());
            let max = hb.max_resource.map(|m| m.max(1) as u64).or(inferred).unwrap_or(1);
            Hyperband::new(hb.min_resource.map_or(1, |m| m.max(1) as u64), max)
        });
        let definitions = trainyard_model::rules::definitions(&job.request).len().max(1);
        let spaces = (0..definitions as u64)
            .map(|d| {
                let definition = trials::definition(&job.request, d).cloned().unwrap_or_default();
                SearchSpace::from_ranges(&trials::ranges(&job.request, &definition))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DomainError::Internal(format!("tuning job {name}: {e}")))?;
        let limits = config.resource_limits.clone().unwrap_or_default();
        // Grid: every definition's combinations, one definition after another.
        let capacity = spaces.iter().map(|s| strategy.capacity(s)).sum::<Option<u64>>();
        let max_trials = limits
            .max_number_of_training_jobs
            .map(|m| m.max(0) as u64)
            .or(capacity)
            .unwrap_or(u64::MAX)
            .min(capacity.unwrap_or(u64::MAX));
        let launched = self.c.store.count_trials(name).await?;
        let sign = |v: f64, maximize: bool| if maximize { v } else { -v };
        let completion = config.tuning_job_completion_criteria.clone().unwrap_or_default();
        let criteria_maximize = trials::objective(&job.request).is_none_or(|(_, m)| m);
        let criteria = Criteria {
            target: completion.target_objective_metric_value.map(|t| sign(t, criteria_maximize)),
            max_not_improving: completion
                .best_objective_not_improving
                .and_then(|b| b.max_number_of_training_jobs_not_improving)
                .map(|n| n.max(0) as u32),
            complete_on_convergence: completion
                .convergence_detected
                .and_then(|c| c.complete_on_convergence)
                .is_some_and(|c| c == "Enabled"),
        };
        let deadline = limits
            .max_runtime_in_seconds
            .map(|s| Timestamp::from_millis(job.creation_time.millis() + i64::from(s) * 1000));
        let objective = trials::objective(&job.request);
        let maximize = objective.as_ref().is_none_or(|(_, m)| *m);
        // What earlier trials found (after a restart, from the store).
        let mut finished = Vec::new();
        let mut pending = BTreeMap::new();
        let early_stopping =
            config.training_job_early_stopping_type.as_deref() == Some("Auto") && strategy_name != "Hyperband";
        let mut curves = HashMap::new();
        let mut finished_curves = Vec::new();
        let mut active = BTreeSet::new();
        for t in &self.trials_of(name).await? {
            let tuned = t.origin.as_ref().map(|o| o.tuned_hyper_parameters.clone()).unwrap_or_default();
            if !t.status.is_terminal() {
                active.insert(t.name.clone());
                pending.insert(t.name.clone(), tuned);
            } else if let Some(v) = t.objective_value {
                finished.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
            }
            if (early_stopping || strategy_name == "Hyperband")
                && let Some((metric, _)) = &objective
            {
                let curve: Vec<f64> = self
                    .c
                    .store
                    .read_metrics(&t.name)
                    .await?
                    .into_iter()
                    .filter(|m| &m.name == metric)
                    .map(|m| if maximize { m.value } else { -m.value })
                    .collect();
                if t.status.is_terminal() {
                    finished_curves.push(curve);
                } else {
                    curves.insert(t.name.clone(), curve);
                }
            }
        }
        // Warm start: the parents' finished trials seed the search (our own come after them, so
        // completion criteria judge this job's trials).
        let mut seeded = Vec::new();
        for parent in job
            .request
            .warm_start_config
            .iter()
            .flat_map(|w| w.parent_hyper_parameter_tuning_jobs.iter().flatten())
            .filter_map(|p| p.hyper_parameter_tuning_job_name.clone())
        {
            for t in self.trials_of(&parent).await? {
                if let Some(v) = t.objective_value {
                    let tuned = t.origin.map(|o| o.tuned_hyper_parameters).unwrap_or_default();
                    seeded.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
                }
            }
        }
        if !seeded.is_empty() {
            info!(tuning_job = name, trials = seeded.len(), "warm start: parents' trials seed the search");
        }
        let seeded_count = seeded.len();
        seeded.extend(finished);
        let finished = seeded;
        // Without a RandomSeed, a seed from the name keeps a restarted job's draws the same.
        let seed = config.random_seed.map(|s| s as u64).unwrap_or_else(|| {
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        });
        self.tuning.insert(
            name.to_string(),
            TuningRun {
                spaces,
                strategy,
                seed,
                max_trials,
                max_parallel: limits.max_parallel_training_jobs.unwrap_or(1).max(1) as u64,
                launched,
                active,
                objective,
                finished,
                pending,
                criteria,
                early_stopping,
                curves,
                finished_curves,
                stopped_early: BTreeSet::new(),
                deadline,
                completing: job.completion.is_some(),
                hyperband,
                seeded: seeded_count,
            },
        );
        Ok(())
    }

    /// Every trial of a tuning job, oldest first.
    async fn trials_of(&self, tuning: &str) -> Result<Vec<TrainingJob>, DomainError> {
        let mut query = ListQuery {
            filter: ListFilter { tuning_job_name: Some(tuning.to_string()), ..Default::default() },
            sort_by: SortKey::CreationTime,
            sort_order: SortOrder::Ascending,
            limit: 1000,
            after: None,
        };
        let mut all = Vec::new();
        loop {
            let page = self.c.store.list_training_jobs(&query).await?;
            let last = page
                .items
                .last()
                .map(|t| Cursor { key: CursorKey::Int(t.creation_time.millis()), name: t.name.clone() });
            all.extend(page.items);
            match (page.next_token, last) {
                (Some(_), Some(cursor)) => query.after = Some(cursor),
                _ => return Ok(all),
            }
        }
    }

    /// Launches trials up to MaxParallelTrainingJobs, and completes the job when all have run.
    async fn drive_tuning(&mut self, name: &str) -> Result<(), DomainError> {
        let job = self.c.tuning_job(name).await?.value;
        if job.status != TuningJobStatus::InProgress {
            return Ok(());
        }
        loop {
            let Some(run) = self.tuning.get(name) else { return Ok(()) };
            if run.completing || run.launched >= run.max_trials || run.active.len() as u64 >= run.max_parallel {
                break;
            }
            let index = run.launched;
            let (d, local) = run.definition_of(index);
            let space = &run.spaces[d];
            // A definition learns from the trials that tuned its hyperparameters.
            let tunes = |h: &BTreeMap<String, String>| space.parameters.iter().all(|p| h.contains_key(&p.name));
            let finished: Vec<Finished> = run.finished.iter().filter(|f| tunes(&f.hyper_parameters)).cloned().collect();
            let pending: Vec<BTreeMap<String, String>> = run.pending.values().filter(|h| tunes(h)).cloned().collect();
            let Some(tuned) = run.strategy.suggest(space, run.seed, local, &finished, &pending) else {
                if let Some(run) = self.tuning.get_mut(name) {
                    run.max_trials = run.launched;
                }
                break;
            };
            let definition = job
                .request
                .training_job_definitions
                .as_ref()
                .and_then(|defs| defs.get(d))
                .or(job.request.training_job_definition.as_ref())
                .cloned()
                .unwrap_or_default();
            let trial = trials::name(name, index);
            let request = trials::request(&job.request, &definition, &trial, &tuned);
            let origin = TrialOrigin {
                tuning_job_name: name.to_string(),
                definition_name: definition.definition_name.clone(),
                tuned_hyper_parameters: tuned.clone(),
            };
            let training = TrainingJob {
                owner: job.owner.clone(),
                ..TrainingJob::new(request, Some(origin), &self.c.arns, now())?
            };
            match self.c.store.create_training_job(&training).await {
                Ok(_) | Err(trainyard_store::StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(run) = self.tuning.get_mut(name) {
                run.launched += 1;
                run.active.insert(trial.clone());
                run.pending.insert(trial.clone(), tuned);
            }
            info!(tuning_job = name, trial = %trial, index = index + 1, "trial launched");
            self.enqueue(&trial).await?;
        }
        let Some(run) = self.tuning.get(name) else { return Ok(()) };
        if (run.completing || run.launched >= run.max_trials) && run.active.is_empty() {
            self.c
                .update_tuning_job(name, |j| {
                    if j.status != TuningJobStatus::InProgress {
                        return Ok(false);
                    }
                    j.transition(TuningJobStatus::Completed, now())?;
                    Ok(true)
                })
                .await?;
            info!(tuning_job = name, trials = run.launched, "tuning job completed");
            self.tuning.remove(name);
        }
        Ok(())
    }

    /// A completion criterion (or the tuning job's runtime limit) holds: record why, launch nothing
    /// more, and stop the trials still running; the job completes when they have ended.
    async fn complete_early(
        &mut self,
        name: &str,
        reason: Option<Completion>,
        not_improving: u32,
    ) -> Result<(), DomainError> {
        let Some(run) = self.tuning.get_mut(name) else { return Ok(()) };
        run.completing = true;
        let active: Vec<String> = run.active.iter().cloned().collect();
        info!(tuning_job = name, reason = ?reason, "completion criteria met: stopping the remaining trials");
        let at = now();
        self.c
            .update_tuning_job(name, |j| {
                j.completion = Some(api::HyperParameterTuningJobCompletionDetails {
                    convergence_detected_time: matches!(reason, Some(Completion::Converged)).then_some(at),
                    number_of_training_jobs_objective_not_improving: Some(not_improving as i32),
                });
                j.last_modified_time = at;
                Ok(true)
            })
            .await?;
        for trial in &active {
            self.stop_trial(trial).await?;
        }
        Box::pin(self.drive_tuning(name)).await
    }

    /// Stops one trial, unless it has ended meanwhile: stopping a trial can end others first (a
    /// queued trial ends at once, and its end drives its tuning job's stop, which stops the rest).
    async fn stop_trial(&mut self, trial: &str) -> Result<(), DomainError> {
        let mut ended = false;
        self.c
            .update_training_job(trial, |j| {
                ended = j.status.is_terminal();
                if ended { Ok(false) } else { j.request_stop(now()) }
            })
            .await?;
        if !ended {
            Box::pin(self.stop_training(trial)).await?;
        }
        Ok(())
    }

    async fn stop_tuning(&mut self, name: &str) -> Result<(), DomainError> {
        let active: Vec<String> = match self.tuning.get(name) {
            Some(run) => run.active.iter().cloned().collect(),
            None => self.c.active_trials(name).await?,
        };
        for trial in &active {
            self.stop_trial(trial).await?;
        }
        let remaining = self.tuning.get(name).map_or(0, |r| r.active.len());
        if remaining == 0 {
            let stopped = self
                .c
                .update_tuning_job(name, |j| {
                    if j.status != TuningJobStatus::Stopping {
                        return Ok(false);
                    }
                    j.transition(TuningJobStatus::Stopped, now())?;
                    Ok(true)
                })
                .await?;
            if stopped {
                info!(tuning_job = name, "tuning job stopped");
                self.tuning.remove(name);
            }
        }
        Ok(())
    }

    /// Asks the agents to stop every instance of `job` that has not ended yet.
    fn stop_running_instances(&self, job: &str) {
        let Some(run) = self.running.get(job) else { return };
        for (i, (agent, ended)) in &run.instances {
            if ended.is_none()
                && let Some(a) = self.agents.get(agent)
            {
                send(a, Down::Stop(pb::StopInstance { training_job_name: job.to_string(), instance: *i, kill: false }));
            }
        }
    }

    /// Queue order is arrival order; placement serves tuning jobs fairly, so this is an estimate.
    fn position(&self, name: &str) -> Option<(usize, usize, Option<String>)> {
        let queued = self.queue.get(name)?;
        let ahead = self
            .queue
            .values()
            .filter(|q| (q.queued_at, &q.demand.job) < (queued.queued_at, &queued.demand.job))
            .count();
        Some((ahead + 1, self.queue.len(), queued.reason.clone()))
    }

    fn summaries(&self) -> Vec<pb::AgentSummary> {
        let capacities: HashMap<String, Capacity> = self.capacities().into_iter().map(|c| (c.id.clone(), c)).collect();
        self.agents
            .iter()
            .map(|(id, a)| {
                let cap = capacities.get(id);
                pb::AgentSummary {
                    agent_id: id.clone(),
                    state: if a.revoked {
                        "revoked".into()
                    } else if a.lost {
                        "lost".into()
                    } else if a.outbound.is_some() {
                        "ready".into()
                    } else {
                        "disconnected".into()
                    },
                    inventory: Some(a.inventory.clone()),
                    last_heartbeat: a.heartbeat.clone(),
                    last_heartbeat_millis: a.last_seen_millis,
                    vcpus_free: cap.map_or(0, |c| c.vcpus_free),
                    memory_free_mib: cap.map_or(0, |c| c.memory_free_mib),
                    gpus_free: cap.map_or(0, |c| c.gpus_free.len() as u32),
                    running: a.allocations.keys().map(|(j, i)| format!("{j}/algo-{i}")).collect(),
                    capabilities: Some(a.capabilities.clone()),
                    peer_address: a.peer_address.clone(),
                    cordon: match self.cordons.get(id) {
                        None => String::new(),
                        Some(c) if !c.drain => "cordoned".into(),
                        Some(_) if a.allocations.is_empty() => "drained".into(),
                        Some(_) => "draining".into(),
                    },
                    cordoned_by: self.cordons.get(id).map(|c| c.by_user.clone()).unwrap_or_default(),
                    version: a.version.clone(),
                    refusal: String::new(),
                }
            })
            .chain(self.refused.iter().filter(|(id, _)| !self.agents.contains_key(*id)).map(
                |(id, (version, reason))| pb::AgentSummary {
                    agent_id: id.clone(),
                    state: "refused".into(),
                    version: version.clone(),
                    refusal: reason.clone(),
                    ..Default::default()
                },
            ))
            .collect()
    }
}
