//! The event loop: the one place that decides what happens to jobs after the API accepted a change.
//! API handlers persist intent (a new job, a stop request) and send an [`Event`]; agents' streams
//! send theirs. The loop owns the derived state (agents and what they hold, the queue, running
//! instances, tuning jobs' progress), asks the pure placement crate and the tuner what to do,
//! persists each decision, and only then sends it to agents.
//!
//! At start-up it reconciles from the store: queued jobs are queued again, placed ones wait for their
//! agents to reconnect (and fail or retry if they do not), tuning jobs resume.
//!
//! One module per concern, each a part of [`Loop`]'s methods: `queue` (queueing and placement),
//! `agents` (agent sessions, drains, lost agents), `instances` (instance updates, ends, stops),
//! `tuning` (trials, early stopping, completion). This module holds the state and dispatches
//! events and ticks. Imports go one way: `core` sends [`crate::inbox::Event`]s, the loop reads the
//! store through `core`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trainyard_model::jobs::TrainingJob;
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus, TuningJobStatus};
use trainyard_model::{DomainError, Timestamp};
use trainyard_proto::pb::coordinator_message::Body as Down;
use trainyard_proto::pb::{self, InstanceState};
use trainyard_scheduler::Demand;
use trainyard_tuner::hyperband::Hyperband;
use trainyard_tuner::stopping::{self, Criteria};
use trainyard_tuner::{Finished, SearchSpace, Strategy};

use crate::core::{Coordinator, now};
use crate::inbox::Event;

mod agents;
mod instances;
mod queue;
mod tuning;

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
    outbound: Option<crate::inbox::Outbound>,
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
    /// Not placed before this: a retry waits until the lost agent's copy has surely stopped.
    not_before: Option<tokio::time::Instant>,
    /// An interrupted job waiting to resume: a tuning job's MaxParallelTrainingJobs does not count it.
    resumes: bool,
}

/// A placed job: its instances, where, and how each ended.
struct Running {
    attempt: u32,
    instances: BTreeMap<u32, (String, Option<pb::InstanceUpdate>)>,
    /// A spot job, which a job that is not spot may interrupt.
    spot: bool,
    /// When it was placed (milliseconds): the work an interruption would lose grows from there.
    placed_at: i64,
    /// Its `trainyard:priority`.
    priority: i32,
    /// Who owns it (fairness between users).
    user: String,
    /// The last progress report taken from its instances (step and message): one the same again
    /// (each batch of metric samples comes as a report of the step the instance is in) is not
    /// stored again, as deciding that there is nothing to write costs a read of the job.
    last_progress: Option<(SecondaryStatus, String)>,
}

struct TuningRun {
    /// One search space per training-job definition (each may tune its own ranges).
    spaces: Vec<SearchSpace>,
    strategy: Strategy,
    seed: u64,
    max_trials: u64,
    /// MaxNumberOfTrainingJobs as asked (`max_trials` also stops a Grid at its last combination):
    /// a strategy may spend a small budget differently.
    budget: Option<u64>,
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

/// New jobs left waiting by the passes since the last tick whose `Pending` is stored at once,
/// without waiting for the tick ([`Loop::store_waiting`]): under a burst of creates the jobs to
/// write stay among those the coordinator keeps as written (else each would be read first).
const WAITING_WRITTEN_TOGETHER: usize = 256;

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
    /// Spot jobs being interrupted → the job each makes room for (also in the store:
    /// `Runs::interrupting_for`).
    interrupting: BTreeMap<String, String>,
    /// Spot jobs past MaxWaitTimeInSeconds whose instances were told to stop.
    wait_exceeded: BTreeSet<String>,
    /// Spot jobs with MaxWaitTimeInSeconds → when it runs out (milliseconds).
    wait_deadlines: HashMap<String, i64>,
    /// New jobs queued whose `Pending` is not stored yet: it is only if the pass that queued them
    /// cannot place them (one write fewer for every job that starts at once).
    pending_unstored: Vec<String>,
    /// Progress reports (Downloading, Training, Uploading) of jobs, not stored yet: each job's go
    /// in its next write, made by the event that follows in the same pass (its end, say) or at the
    /// pass's end ([`Loop::store_progress`]); one write instead of one each.
    progress_unstored: BTreeMap<String, Vec<Progress>>,
    /// Set when an event or a tick failed (e.g. the database was away): the loop then compares
    /// its state with the store on the next ticks until that succeeds.
    resync_needed: bool,
    /// Jobs queued since the last full placement pass: a pass skipped because nothing could
    /// start still says of each of them why it can never be placed, if so ([`Loop::place`]).
    queued_since_pass: Vec<String>,
    /// The agents as the last full placement pass saw them ([`queue::AgentsSeen`]), when it
    /// found no room (only then may a pass be skipped).
    last_pass_agents: Option<queue::AgentsSeen>,
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
    let mut state = Loop::new(coordinator, metrics, authority, liveness, timing);
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
                // New tuning jobs one after another are driven together: their first trials
                // go to the store in one statement.
                let mut created = Vec::new();
                let mut events = batch.into_iter().peekable();
                while let Some(event) = events.next() {
                    debug!(?event, "event");
                    let result = match event {
                        Event::TuningJobCreated(name) => {
                            created.push(name);
                            if matches!(events.peek(), Some(Event::TuningJobCreated(_))) {
                                continue;
                            }
                            state.created_tuning_jobs(std::mem::take(&mut created)).await
                        }
                        event => state.handle(event).await,
                    };
                    if let Err(e) = result {
                        warn!(error = %e, "event not handled; catching up from the store");
                        state.resync_needed = true;
                    }
                }
                if let Err(e) = state.store_progress().await {
                    warn!(error = %e, "progress not stored; catching up from the store");
                    state.resync_needed = true;
                }
                // A pass that failed midway (the store went away) may have taken a job off the
                // queue without placing it, or placed it without knowing: catch up, as a failed
                // event does.
                if let Err(e) = state.schedule().await {
                    warn!(error = %e, "scheduling failed; catching up from the store");
                    state.resync_needed = true;
                }
                if state.pending_unstored.len() >= WAITING_WRITTEN_TOGETHER
                    && let Err(e) = state.store_waiting().await
                {
                    warn!(error = %e, "waiting jobs not stored; catching up from the store");
                    state.resync_needed = true;
                }
            }
        }
    }
    info!("event loop stopped");
}

/// An instance's progress report, as a job's secondary status.
#[derive(Debug, Clone)]
struct Progress {
    status: SecondaryStatus,
    message: String,
    at: Timestamp,
}

/// Applies progress reports to a job, in order: progress only moves forward (a job of several
/// instances shows its furthest one), and only while the job runs. Whether anything changed.
fn apply_progress(j: &mut TrainingJob, progress: &[Progress]) -> bool {
    let order = |s: SecondaryStatus| match s {
        SecondaryStatus::Downloading => 1,
        SecondaryStatus::Training => 2,
        SecondaryStatus::Uploading => 3,
        _ => 0,
    };
    let mut changed = false;
    for p in progress {
        if j.status != TrainingJobStatus::InProgress || order(p.status) < order(j.secondary_status) {
            continue;
        }
        // Reported at the agent's time: never before the step the job is in began.
        let at = j.transitions.last().map_or(p.at, |t| t.start_time.max(p.at));
        if p.status == j.secondary_status {
            // Progress within a step ("Downloading the training image (12.0 of 40.0 MB)").
            changed |= j.set_status_message(p.message.clone(), at);
        } else {
            changed |= j.transition(p.status, p.message.clone(), at).is_ok();
        }
    }
    changed
}

/// A write that failed because the store was away (not because it was refused): made again later.
fn worth_retrying(e: &DomainError) -> bool {
    matches!(e, DomainError::Unavailable(_))
}

fn send(entry: &AgentEntry, body: Down) {
    if let Some(tx) = &entry.outbound {
        let _ = tx.send(Box::new(pb::CoordinatorMessage { body: Some(body) }));
    }
}

fn is_final(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Completed | InstanceState::Failed | InstanceState::Stopped | InstanceState::MaxRuntimeExceeded
    )
}

impl Loop {
    fn new(
        coordinator: Arc<Coordinator>,
        metrics: Arc<crate::telemetry::Metrics>,
        authority: Arc<trainyard_pki::Authority>,
        liveness: crate::liveness::Liveness,
        timing: Timing,
    ) -> Loop {
        // A loop starts with nothing queued (its catch-up with the store queues what waits).
        *coordinator.queue_order() = trainyard_scheduler::QueueOrder::new();
        Loop {
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
            interrupting: BTreeMap::new(),
            wait_exceeded: BTreeSet::new(),
            wait_deadlines: HashMap::new(),
            pending_unstored: Vec::new(),
            queued_since_pass: Vec::new(),
            last_pass_agents: None,
            progress_unstored: BTreeMap::new(),
            resync_needed: false,
        }
    }

    /// Every change the loop makes to a training job: compare-and-set (see
    /// [`Coordinator::updated_training_job`]), with the job's progress not stored yet applied
    /// first, in the same write. Returns the job as written, or None when nothing changed.
    pub(super) async fn updated_job(
        &mut self,
        name: &str,
        mut change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Result<Option<TrainingJob>, DomainError> {
        let progress = self.progress_unstored.remove(name).unwrap_or_default();
        let mut refused = false;
        let written = self
            .c
            .updated_training_job(name, |j| {
                let moved = apply_progress(j, &progress);
                let changed = change(j).inspect_err(|_| refused = true)?;
                Ok(changed || moved)
            })
            .await;
        if let Err(e) = &written
            && (refused || worth_retrying(e))
            && !progress.is_empty()
        {
            self.hold_progress(name, progress);
        }
        written
    }

    /// Progress reports not stored after all, put back before any that came since.
    fn hold_progress(&mut self, job: &str, mut progress: Vec<Progress>) {
        let newer = self.progress_unstored.remove(job).unwrap_or_default();
        progress.extend(newer);
        self.progress_unstored.insert(job.to_string(), progress);
    }

    /// [`Loop::updated_job`] of several jobs, written together where they can be (see
    /// [`Coordinator::updated_training_jobs`]): each job's progress not stored yet goes with its
    /// change, and a job whose write failed keeps it for its next one. Each job's outcome, in
    /// the order of `names`.
    pub(super) async fn updated_jobs(
        &mut self,
        names: &[String],
        mut change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Vec<(String, Result<Option<TrainingJob>, DomainError>)> {
        let mut progress: HashMap<String, Vec<Progress>> =
            names.iter().filter_map(|n| Some((n.clone(), self.progress_unstored.remove(n)?))).collect();
        let c = self.c.clone();
        let written = c
            .updated_training_jobs(names, |j| {
                let moved = progress.get(&j.name).is_some_and(|p| apply_progress(j, p));
                let changed = change(j)?;
                Ok(changed || moved)
            })
            .await;
        let mut written: HashMap<String, Result<Option<TrainingJob>, DomainError>> = written.into_iter().collect();
        let mut outcomes = Vec::with_capacity(names.len());
        for name in names {
            let Some(outcome) = written.remove(name) else { continue };
            if outcome.is_err()
                && let Some(p) = progress.remove(name)
            {
                self.hold_progress(name, p);
            }
            outcomes.push((name.clone(), outcome));
        }
        outcomes
    }

    /// [`Loop::updated_job`], saying only whether it wrote.
    pub(super) async fn update_job(
        &mut self,
        name: &str,
        change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Result<bool, DomainError> {
        Ok(self.updated_job(name, change).await?.is_some())
    }

    /// Stores the progress reports of this pass that no other write took along, the jobs' written
    /// together where they can be ([`Coordinator::updated_training_jobs`]: the instances of a
    /// tuning job's trials start and end together). Those the store could not take (it is away)
    /// are kept for the next pass; the first error is returned.
    async fn store_progress(&mut self) -> Result<(), DomainError> {
        let mut progress = std::mem::take(&mut self.progress_unstored);
        if progress.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = progress.keys().cloned().collect();
        let c = self.c.clone();
        let written =
            c.updated_training_jobs(&names, |j| Ok(progress.get(&j.name).is_some_and(|p| apply_progress(j, p)))).await;
        let mut first_error = None;
        for (job, outcome) in written {
            if let Err(e) = outcome {
                if worth_retrying(&e)
                    && let Some(p) = progress.remove(&job)
                {
                    self.hold_progress(&job, p);
                }
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn handle(&mut self, event: Event) -> Result<(), DomainError> {
        match event {
            Event::TuningJobCreated(name) => self.created_tuning_jobs(vec![name]).await,
            Event::TrainingJobCreated(name) => self.enqueue(&name).await,
            Event::TrainingJobStopRequested(name) => self.stop_training(&name).await,
            Event::TuningJobStopRequested(name) => self.stop_tuning(&name).await,
            Event::AgentConnected { session, register, outbound } => self.on_agent(session, *register, outbound).await,
            Event::AgentHeartbeat { session, agent, heartbeat } => {
                if let Some(a) = self.agents.get_mut(&agent).filter(|a| a.session == session) {
                    a.heartbeat = Some(heartbeat);
                    a.last_seen = tokio::time::Instant::now();
                    a.last_seen_millis = now().millis();
                    if a.lost {
                        a.lost = false;
                        self.c.set_no_room(false);
                    }
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
            Event::ListAgents { after, limit, reply } => {
                let _ = reply.send(self.summaries_after(&after, limit));
                Ok(())
            }
            Event::AgentRefused { agent, version, reason } => {
                self.refused.insert(agent, (version, reason));
                Ok(())
            }
            Event::CordonChanged { agent, cordon } => {
                match cordon {
                    Some(cordon) => self.cordons.insert(agent, cordon),
                    None => {
                        self.c.set_no_room(false);
                        self.cordons.remove(&agent)
                    }
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
        }
    }

    // ----- start-up -----

    /// Catches up with the store, at start and after a failed event (the database was away, say):
    /// what an event would have done for a job, done from the job's stored state. Jobs placed
    /// before a restart wait for their agents to come back and report. Idempotent.
    async fn resync(&mut self) -> Result<(), DomainError> {
        // The next placement pass is a full one.
        self.last_pass_agents = None;
        self.cordons = self.c.store.cordons().await?.into_iter().map(|c| (c.agent_id.clone(), c)).collect();
        // Runs loaded before this catch-up may have missed a trial's end; those loaded below are
        // read whole from the store and cannot.
        let known: Vec<String> = self.tuning.keys().cloned().collect();
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
        for name in &known {
            self.reconcile_trials(name).await?;
        }
        let names: Vec<String> = self.tuning.keys().cloned().collect();
        for name in names {
            let stopping = self.c.tuning_job(&name).await?.value.status == TuningJobStatus::Stopping;
            if stopping { self.stop_tuning(&name).await? } else { self.drive_tuning(&name).await? }
        }
        self.schedule().await
    }

    /// Trials a tuning run still counts as running whose end is stored: their end was written but
    /// what followed failed (the store went away between two statements), so the run learns of it
    /// now. Without this the tuning job would wait for them forever.
    async fn reconcile_trials(&mut self, tuning: &str) -> Result<(), DomainError> {
        let Some(run) = self.tuning.get(tuning) else { return Ok(()) };
        let counted: Vec<String> = run.active.iter().cloned().collect();
        let running: BTreeSet<String> = self.c.active_trials(tuning).await?.into_iter().collect();
        for trial in counted.iter().filter(|t| !running.contains(*t)) {
            let stored = match self.c.training_job(trial).await {
                Ok(stored) => stored.value,
                // Counted only once stored, so never; nothing to learn from it if so.
                Err(DomainError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if stored.status.is_terminal() {
                info!(tuning_job = tuning, trial = %trial, "a trial's stored end reached its tuning job late");
                self.record_trial_end(tuning, &stored).await?;
            }
        }
        Ok(())
    }

    // ----- queue and placement -----

    /// The gauges operators scrape: queue, running jobs, agents by state.
    fn update_gauges(&self) {
        self.metrics.queue_length.set(self.queue.len() as i64);
        self.metrics.jobs_running.set(self.running.len() as i64);
        let mut states: BTreeMap<String, i64> =
            ["ready", "disconnected", "lost", "revoked", "refused", "cordoned", "draining", "drained"]
                .into_iter()
                .map(|s| (s.to_string(), 0))
                .collect();
        // Counted without building every agent's summary (tens of ms a tick at 20,000 agents).
        for (id, a) in &self.agents {
            *states.entry(agents::state_of(a).to_string()).or_default() += 1;
            let cordon = self.cordon_of(id, a);
            if !cordon.is_empty() {
                *states.entry(cordon.to_string()).or_default() += 1;
            }
        }
        let refused = self.refused.keys().filter(|id| !self.agents.contains_key(*id)).count();
        *states.entry("refused".to_string()).or_default() += refused as i64;
        for (state, count) in states {
            self.metrics.agents.get_or_create(&crate::telemetry::State { state }).set(count);
        }
    }

    async fn on_tick(&mut self) -> Result<(), DomainError> {
        // Log lines held while the store was away are stored beside the loop, not by it: after
        // an outage that takes as long as the backlog, and while the store is away each try may
        // wait a second, which placements and the rest of the tick must not wait for. (One
        // caller stores them at a time: a tick that finds them being stored leaves it at that.)
        let c = self.c.clone();
        tokio::spawn(async move { c.store_held_logs().await });
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
        // New jobs that still wait (queued by the passes since the last tick, or by the start-up
        // catch-up).
        self.store_waiting().await?;
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
            self.dequeue(&name);
            let reason =
                "CapacityError: the job waited longer than StoppingCondition.MaxPendingTimeInSeconds for an agent";
            self.finish(&name, SecondaryStatus::Failed, "Failed", Some(reason.to_string()), None).await?;
        }
        self.enforce_max_wait().await?;
        self.schedule().await
    }
}

#[cfg(test)]
mod tests {
    use trainyard_model::names::ArnContext;

    use super::*;

    fn job() -> TrainingJob {
        let request =
            serde_json::from_str(include_str!("../../../../deploy/examples/training-job.json")).expect("example");
        TrainingJob::new(request, None, &ArnContext::default(), Timestamp::from_millis(1_000)).expect("job")
    }

    fn progress(status: SecondaryStatus, message: &str, at: i64) -> Progress {
        Progress { status, message: message.to_string(), at: Timestamp::from_millis(at) }
    }

    fn history(j: &TrainingJob) -> Vec<(SecondaryStatus, i64, String)> {
        j.transitions.iter().map(|t| (t.status, t.start_time.millis(), t.message.clone())).collect()
    }

    /// Reports held for one write are applied as they came, each at the time it came; progress
    /// never goes back, and a job no longer running takes none.
    #[test]
    fn progress_is_applied_in_order_forward_only_and_only_while_the_job_runs() {
        let mut j = job();
        let reports = [
            progress(SecondaryStatus::Downloading, "Downloading input data", 2_000),
            progress(SecondaryStatus::Downloading, "Downloading input data (half)", 2_500),
            progress(SecondaryStatus::Training, "Training", 3_000),
            // A slower instance of the same job is behind: the job shows its furthest.
            progress(SecondaryStatus::Downloading, "algo-2 downloading", 3_100),
            progress(SecondaryStatus::Uploading, "Uploading", 4_000),
        ];
        assert!(apply_progress(&mut j, &reports));
        let after: Vec<(SecondaryStatus, i64, String)> = history(&j).into_iter().skip(1).collect();
        assert_eq!(
            after,
            vec![
                (SecondaryStatus::Downloading, 2_000, "Downloading input data (half)".to_string()),
                (SecondaryStatus::Training, 3_000, "Training".to_string()),
                (SecondaryStatus::Uploading, 4_000, "Uploading".to_string()),
            ]
        );
        assert_eq!(j.secondary_status, SecondaryStatus::Uploading);
        // Nothing older changes it again.
        assert!(!apply_progress(&mut j, &[progress(SecondaryStatus::Training, "late", 5_000)]));

        let mut stopping = job();
        stopping.status = TrainingJobStatus::Stopping;
        assert!(!apply_progress(&mut stopping, &[progress(SecondaryStatus::Training, "Training", 2_000)]));
        assert_eq!(stopping.transitions.len(), 1);

        // Reports carry the agent's time: one from a clock behind the coordinator's starts when
        // the job's current step began, not before it.
        let mut behind = job();
        assert!(apply_progress(&mut behind, &[progress(SecondaryStatus::Training, "Training", 400)]));
        assert_eq!(history(&behind)[1], (SecondaryStatus::Training, 1_000, "Training".to_string()));
        assert_eq!(behind.training_start_time, Some(Timestamp::from_millis(1_000)));
    }

    async fn a_loop(store: Arc<dyn trainyard_store::Store>, dir: &std::path::Path) -> Loop {
        let (events, _) = mpsc::unbounded_channel();
        let c = Coordinator::start(
            store,
            trainyard_model::catalog::Catalog::default(),
            trainyard_model::rules::ServiceLimits::default(),
            ArnContext::default(),
            trainyard_model::roles::ExecutionRoles::default(),
            events,
        )
        .await
        .expect("coordinator");
        let metrics = crate::telemetry::Metrics::register(&mut prometheus_client::registry::Registry::default());
        let authority = Arc::new(trainyard_pki::Authority::load_or_create(dir).expect("authority"));
        let timing = Timing {
            heartbeat_interval: Duration::from_secs(1),
            agent_lost_after: Duration::from_secs(10),
            agent_lease: Duration::from_secs(10),
        };
        Loop::new(Arc::new(c), metrics, authority, crate::liveness::Liveness::default(), timing)
    }

    /// A loop on a SQLite store that holds [`job`], and a second connection to that store for the
    /// coordinator that takes the lead from it ([`taken_over`]).
    struct Contested {
        _dir: tempfile::TempDir,
        ours: Arc<dyn trainyard_store::Store>,
        theirs: Arc<dyn trainyard_store::Store>,
        state: Loop,
    }

    async fn contested_loop() -> Contested {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let ours = trainyard_store::connect(&url).await.expect("store");
        let theirs = trainyard_store::connect(&url).await.expect("second store");
        let state = a_loop(ours.clone(), dir.path()).await;
        ours.create_training_job(&job()).await.expect("create");
        Contested { _dir: dir, ours, theirs, state }
    }

    /// Makes `ours` the leader for a moment, then lets `theirs` take over: the store refuses
    /// `ours`'s writes from then on (as when it is away). Returns their epoch.
    async fn taken_over(ours: &Arc<dyn trainyard_store::Store>, theirs: &Arc<dyn trainyard_store::Store>) -> i64 {
        let epoch = ours.acquire_leadership("ours", "a", Duration::from_millis(1)).await.expect("lead");
        assert!(epoch.is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let their_epoch = theirs.acquire_leadership("theirs", "b", Duration::from_secs(60)).await.expect("take over");
        their_epoch.expect("the lease had run out")
    }

    /// `theirs` lets go of the lead and `ours` takes it back: its writes are taken again.
    async fn given_back(ours: &Arc<dyn trainyard_store::Store>, theirs: &Arc<dyn trainyard_store::Store>, epoch: i64) {
        theirs.release_leadership(epoch).await.expect("release");
        assert!(ours.acquire_leadership("ours", "a", Duration::from_secs(60)).await.expect("lead").is_some());
    }

    fn secondary(history: &[(SecondaryStatus, i64, String)]) -> Vec<SecondaryStatus> {
        history.iter().map(|h| h.0).collect()
    }

    /// A job stopped through the API after the loop queued it, before the stop's event reached
    /// the loop: the tick's `Pending` write and a placement pass leave it as the stop left it,
    /// without an error (which used to fail the tick's checks and make the loop catch up with
    /// the store).
    #[tokio::test]
    async fn a_job_stopped_before_the_loop_hears_of_it_is_neither_marked_waiting_nor_placed() {
        let Contested { _dir, ours: _, theirs: _, mut state } = contested_loop().await;
        let name = job().name.clone();
        state.enqueue(&name).await.expect("queued");
        assert!(state.queue.contains_key(&name) && state.pending_unstored.contains(&name));
        let stopping = state.c.update_training_job(&name, |j| j.request_stop(now())).await.expect("stop");
        assert!(stopping);
        state.store_waiting().await.expect("the tick's Pending write");
        let mut agent = AgentEntry::unconnected(1);
        let (tx, _told) = mpsc::unbounded_channel();
        agent.outbound = Some(tx);
        state.agents.insert("host-a".into(), agent);
        state.schedule().await.expect("a placement pass");
        let stored = state.c.training_job(&name).await.expect("read").value;
        assert_eq!(stored.status, trainyard_model::status::TrainingJobStatus::Stopping);
        assert!(stored.placement.is_empty(), "not placed: {:?}", stored.placement);
    }

    /// Progress held for a job's next write is not lost when that write is refused (it is stored
    /// alone at the pass's end) or when the store is away (another coordinator fenced this one
    /// off): it is stored once the store takes writes again.
    #[tokio::test]
    async fn held_progress_outlives_a_refused_or_failed_write() {
        let Contested { _dir, ours, theirs, mut state } = contested_loop().await;
        let name = job().name.clone();

        // Refused: the progress is kept and stored at the pass's end.
        state
            .progress_unstored
            .insert(name.clone(), vec![progress(SecondaryStatus::Downloading, "Downloading", 2_000)]);
        let refused = state.update_job(&name, |_| Err(DomainError::invalid("TrainingJobName", "refused"))).await;
        assert!(matches!(refused, Err(DomainError::Validation(_))), "{refused:?}");
        assert_eq!(state.progress_unstored.get(&name).map(Vec::len), Some(1));
        state.store_progress().await.expect("stored alone");
        assert!(state.progress_unstored.is_empty());
        let stored = state.c.training_job(&name).await.expect("read").value;
        assert_eq!(stored.secondary_status, SecondaryStatus::Downloading);

        // The store away: this coordinator is fenced off by one that took the lead.
        let their_epoch = taken_over(&ours, &theirs).await;
        state.progress_unstored.insert(name.clone(), vec![progress(SecondaryStatus::Training, "Training", 3_000)]);
        let failed = state.update_job(&name, |j| Ok(j.set_status_message("a change", now()))).await;
        assert!(matches!(failed, Err(DomainError::Unavailable(_))), "{failed:?}");
        // A report that came meanwhile stays behind the one put back.
        state.progress_unstored.entry(name.clone()).or_default().push(progress(
            SecondaryStatus::Uploading,
            "Uploading",
            4_000,
        ));
        let failed = state.store_progress().await;
        assert!(matches!(failed, Err(DomainError::Unavailable(_))), "{failed:?}");
        let held = state.progress_unstored.get(&name).map(|p| p.iter().map(|p| p.status).collect::<Vec<_>>());
        assert_eq!(held, Some(vec![SecondaryStatus::Training, SecondaryStatus::Uploading]));

        // Back in the lead: the next pass stores what was held, in order.
        given_back(&ours, &theirs, their_epoch).await;
        state.store_progress().await.expect("stored");
        let stored = state.c.training_job(&name).await.expect("read").value;
        assert_eq!(
            secondary(&history(&stored)),
            vec![
                SecondaryStatus::Starting,
                SecondaryStatus::Downloading,
                SecondaryStatus::Training,
                SecondaryStatus::Uploading
            ]
        );
    }

    /// An ended job's agents are not told to forget its instances while log lines of it wait in
    /// this coordinator's memory for the store (their copies are the only others); once those are
    /// stored, they are.
    #[tokio::test]
    async fn agents_keep_an_instance_while_its_log_lines_wait_for_the_store() {
        let Contested { _dir, ours, theirs, mut state } = contested_loop().await;
        let name = job().name.clone();
        let (tx, mut told) = mpsc::unbounded_channel();
        let mut agent = AgentEntry::unconnected(1);
        agent.outbound = Some(tx);
        state.agents.insert("host-a".into(), agent);
        let forgotten = |told: &mut mpsc::UnboundedReceiver<Box<pb::CoordinatorMessage>>| {
            std::iter::from_fn(|| told.try_recv().ok())
                .filter(|m| matches!(m.body, Some(pb::coordinator_message::Body::Forget(_))))
                .count()
        };
        let line = vec![("stdout".to_string(), 1_000, "a line".to_string())];
        assert!(state.c.record_logs(&name, 1, 1, line.clone()).await.expect("stored"));

        // The store away (another coordinator took the lead): the next line is held.
        let their_epoch = taken_over(&ours, &theirs).await;
        assert!(!state.c.record_logs(&name, 1, 2, line.clone()).await.expect("held"));
        state.forget(&name, vec![(1, "host-a".into())]);
        assert_eq!(forgotten(&mut told), 0, "its agent keeps the instance while a line of it is held");

        given_back(&ours, &theirs, their_epoch).await;
        tokio::time::sleep(crate::held_logs::RETRY_AFTER).await;
        assert!(state.c.store_held_logs().await, "stored once the store is back");
        state.forget(&name, vec![(1, "host-a".into())]);
        assert_eq!(forgotten(&mut told), 1);
    }

    /// The loop's tick does not wait while held log lines are stored: here the store is back but
    /// slow to take them (another connection holds SQLite's write lock, which a try waits on for
    /// up to a second). The tick ends at once, and the lines are stored beside the loop.
    #[tokio::test]
    async fn the_tick_does_not_wait_for_held_log_lines_to_be_stored() {
        use sqlx::Connection;
        let Contested { _dir, ours, theirs, mut state } = contested_loop().await;
        let name = job().name.clone();
        let their_epoch = taken_over(&ours, &theirs).await;
        let line = vec![("stdout".to_string(), 1_000, "a line".to_string())];
        assert!(!state.c.record_logs(&name, 1, 1, line).await.expect("held"));
        given_back(&ours, &theirs, their_epoch).await;
        tokio::time::sleep(crate::held_logs::RETRY_AFTER).await;
        let url = format!("sqlite://{}", _dir.path().join("trainyard.db").display());
        let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("connect");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.expect("take the write lock");
        tokio::time::timeout(Duration::from_millis(500), state.on_tick())
            .await
            .expect("the tick waited for the held lines to be stored")
            .expect("tick");
        assert!(state.c.holds_logs_of(&name), "not stored yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("COMMIT").execute(&mut blocker).await.expect("release the write lock");
        let stored = async {
            while state.c.holds_logs_of(&name) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), stored).await.expect("stored beside the loop");
        let lines: Vec<String> =
            ours.read_logs(&name, 0, 10).await.expect("read").into_iter().map(|l| l.text).collect();
        assert_eq!(lines, vec!["a line"]);
    }

    /// Connects agent `id` to the loop with room for four ml.m5.large instances (8 vCPUs, 32 GiB)
    /// and host programs; what the loop sends it arrives on the receiver returned.
    fn agent_with_room(state: &mut Loop, id: &str) -> mpsc::UnboundedReceiver<Box<pb::CoordinatorMessage>> {
        let (tx, told) = mpsc::unbounded_channel();
        let mut agent = AgentEntry::unconnected(1);
        agent.outbound = Some(tx);
        agent.inventory =
            pb::Inventory { cpu_count: 8, memory_total_mib: 32 * 1024, disk_free_mib: 1 << 20, ..Default::default() };
        agent.capabilities = pb::Capabilities { host_programs: true, ..Default::default() };
        state.agents.insert(id.into(), agent);
        state.c.set_no_room(false);
        told
    }

    /// Jobs queued with no agent say where they stand, in arrival order; one pass then starts
    /// them all (written together) and assigns each to the agent, and they leave the line.
    #[tokio::test]
    async fn a_pass_starts_every_job_it_places_and_the_line_closes_up() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let store = trainyard_store::connect(&url).await.expect("store");
        let mut state = a_loop(store.clone(), dir.path()).await;
        let names: Vec<String> = (0..3).map(|i| format!("job-{i}")).collect();
        for name in &names {
            let mut j = job();
            j.name = name.clone();
            state.c.store_new_training_job(j).await.expect("create");
            state.enqueue(name).await.expect("queued");
        }
        state.schedule().await.expect("a pass with no agent");
        let standing = |state: &Loop, name: &str| state.c.queue_position(name).map(|s| (s.position, s.length));
        assert_eq!(standing(&state, "job-0"), Some((1, 3)));
        assert_eq!(standing(&state, "job-2"), Some((3, 3)));
        state.dequeue("job-0");
        assert_eq!(standing(&state, "job-2"), Some((2, 2)), "the line closes up");
        state
            .c
            .store_new_training_job({
                let mut j = job();
                j.name = "job-0".into();
                j
            })
            .await
            .expect_err("the name is taken");
        state.enqueue("job-0").await.expect("queued again");
        assert_eq!(standing(&state, "job-0"), Some((3, 3)), "back at the end");

        // An agent with room for all three (ml.m5.large: 2 vCPUs, 8 GiB each).
        let mut assignments = agent_with_room(&mut state, "host-a");
        state.schedule().await.expect("a pass");

        let mut assigned = Vec::new();
        while let Ok(message) = assignments.try_recv() {
            if let Some(pb::coordinator_message::Body::Assignment(a)) = message.body {
                assigned.push(a.training_job_name);
            }
        }
        assigned.sort();
        assert_eq!(assigned, names, "each placed job was assigned to the agent");
        for name in &names {
            let stored = store.get_training_job(name).await.expect("read").expect("stored").value;
            assert_eq!(stored.secondary_status, SecondaryStatus::Starting, "{name}");
            assert_eq!(stored.placement.len(), 1, "{name}: stored with where it runs");
            assert_eq!(stored.placement[0].agent, "host-a");
            assert_eq!(standing(&state, name), None, "{name} left the line");
            assert!(state.running.contains_key(name));
        }
        assert!(state.queue.is_empty());
    }

    /// A report of the step an instance is already in (each batch of its metric samples comes as
    /// one) is not stored again; a new step or message is.
    #[tokio::test]
    async fn a_report_of_the_same_step_again_is_not_stored_again() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let store = trainyard_store::connect(&url).await.expect("store");
        let mut state = a_loop(store.clone(), dir.path()).await;
        let name = job().name.clone();
        state.c.store_new_training_job(job()).await.expect("create");
        state.enqueue(&name).await.expect("queued");
        let _assignments = agent_with_room(&mut state, "host-a");
        state.schedule().await.expect("a pass");
        let attempt = state.running.get(&name).expect("placed").attempt;
        let report = |step: InstanceState, message: &str, at: i64| pb::InstanceUpdate {
            training_job_name: name.clone(),
            instance: 1,
            state: step as i32,
            message: message.to_string(),
            at_millis: at,
            attempt,
            ..Default::default()
        };
        let mut taken = Vec::new();
        for (step, message) in [
            (InstanceState::Training, "Training in progress"),
            (InstanceState::Training, "Training in progress"),
            (InstanceState::Training, "Training in progress"),
            (InstanceState::Training, "Training, epoch 2"),
            (InstanceState::Uploading, "Uploading generated training model"),
        ] {
            state.on_update("host-a", report(step, message, 2_000)).await.expect("taken");
            taken.push(state.progress_unstored.contains_key(&name));
            state.store_progress().await.expect("stored");
        }
        assert_eq!(taken, [true, false, false, true, true]);
        let stored = store.get_training_job(&name).await.expect("read").expect("stored").value;
        assert_eq!(stored.secondary_status, SecondaryStatus::Uploading);
        let training = history(&stored).into_iter().find(|(s, _, _)| *s == SecondaryStatus::Training);
        assert_eq!(training.map(|(_, _, m)| m).as_deref(), Some("Training, epoch 2"));
    }

    /// A ListAgents page is built from its own agents: those after the token, at most one more
    /// of each kind (connected or known, refused) than asked for, so that the caller can tell
    /// whether a next page follows.
    #[tokio::test]
    async fn a_page_of_agents_is_built_from_the_agents_after_its_token() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let mut state = a_loop(trainyard_store::connect(&url).await.expect("store"), dir.path()).await;
        for id in ["a", "b", "d", "e"] {
            state.agents.insert(id.into(), AgentEntry::unconnected(1));
        }
        state.refused.insert("c".into(), ("0.0.1".into(), "too old".into()));
        let ids = |after: &str, limit: usize| -> Vec<String> {
            let mut page = state.summaries_after(after, limit);
            page.sort_by(|x, y| x.agent_id.cmp(&y.agent_id));
            page.into_iter().map(|s| s.agent_id).collect()
        };
        // A page of two and one more (to know that a next page follows): a, b, and the refused c.
        assert_eq!(ids("", 2)[..3], ["a", "b", "c"]);
        assert!(ids("", 2).len() <= 6, "at most three of each kind");
        assert_eq!(ids("", 1), ["a", "b", "c"], "a page of one: two of the agents, the first refused one");
        assert_eq!(ids("b", 2), ["c", "d", "e"]);
        assert_eq!(ids("d", 10), ["e"]);
        assert!(ids("e", 10).is_empty());
        assert_eq!(state.summaries_after("", usize::MAX).len(), 5, "the whole list: every agent and the refused one");
        let refused = state.summaries_after("b", 1).into_iter().find(|s| s.agent_id == "c").expect("listed");
        assert_eq!((refused.state.as_str(), refused.refusal.as_str()), ("refused", "too old"));

        // The gauges count the same states without building the summaries.
        state.agents.get_mut("a").expect("a").lost = true;
        state.cordons.insert(
            "b".into(),
            trainyard_store::AgentCordon {
                agent_id: "b".into(),
                drain: true,
                by_user: "ops".into(),
                at: Timestamp::from_millis(1),
                stop_at: None,
            },
        );
        state.update_gauges();
        let gauge = |s: &str| state.metrics.agents.get_or_create(&crate::telemetry::State { state: s.into() }).get();
        let listed = state.summaries_after("", usize::MAX);
        for s in ["lost", "disconnected", "refused", "drained", "ready"] {
            let shown = listed.iter().filter(|a| a.state == s || a.cordon == s).count() as i64;
            assert_eq!(gauge(s), shown, "{s}");
        }
        assert_eq!((gauge("lost"), gauge("disconnected"), gauge("refused"), gauge("drained")), (1, 3, 1, 1));
    }
}
