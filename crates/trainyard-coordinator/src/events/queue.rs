//! The queue and placement: jobs waiting for capacity, the placement pass (the pure scheduler
//! decides; this persists and sends), and where a queued job stands.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tracing::info;
use trainyard_model::DomainError;
use trainyard_model::images::TrainingImage;
use trainyard_model::jobs::{PlacedInstance, TrainingJob};
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus};
use trainyard_proto::pb;
use trainyard_proto::pb::coordinator_message::Body as Down;
use trainyard_scheduler::{Agent as Capacity, Decision, Demand, Held, Preemptible, Preemption, Problem};

use super::{AgentEntry, Allocation, Loop, Queued, Running, send};
use crate::core::now;
use crate::inbox::PENDING_MESSAGE;

impl Loop {
    /// A job the store says is placed but the loop does not track: its resources are held on its
    /// agents and their reports are awaited (an agent that no longer runs it says so when it
    /// registers; one that never comes back is declared lost).
    pub(super) fn adopt_placed(&mut self, job: &TrainingJob) -> Result<(), DomainError> {
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
        let placed_at = job.runs.started.unwrap_or(job.last_modified_time).millis();
        self.running.insert(
            job.name.clone(),
            Running {
                attempt: job.attempt,
                instances,
                spot: demand.spot,
                placed_at,
                priority: demand.priority,
                user: demand.user,
                last_progress: None,
            },
        );
        if let Some(other) = &job.runs.interrupting_for {
            self.interrupting.insert(job.name.clone(), other.clone());
        }
        self.track_spot(job);
        Ok(())
    }

    /// Remembers when a spot job's MaxWaitTimeInSeconds runs out.
    fn track_spot(&mut self, job: &TrainingJob) {
        if let Some(deadline) = job.max_wait_deadline() {
            self.wait_deadlines.insert(job.name.clone(), deadline.millis());
        }
    }

    /// What may be placed this pass: everything due, except that a tuning job never runs more
    /// trials than MaxParallelTrainingJobs. Only a tuning job with more unfinished trials than that
    /// can reach it (interrupted trials do not count while they wait, so others were launched
    /// meanwhile); its oldest trials go first.
    fn placeable(&self) -> Vec<Demand> {
        let now = tokio::time::Instant::now();
        let due = self.queue.values().filter(|q| q.not_before.is_none_or(|t| t <= now)).map(|q| &q.demand);
        let mut room: BTreeMap<&str, usize> = self
            .tuning
            .iter()
            .filter(|(_, run)| run.active.len() as u64 > run.max_parallel)
            .map(|(name, run)| {
                let running = run.active.iter().filter(|t| self.running.contains_key(*t)).count();
                (name.as_str(), (run.max_parallel as usize).saturating_sub(running))
            })
            .collect();
        if room.is_empty() {
            return due.cloned().collect();
        }
        let mut due: Vec<&Demand> = due.collect();
        due.sort_by_key(|d| (d.queued_at, &d.job));
        due.into_iter()
            .filter(|d| match d.group.as_deref().and_then(|g| room.get_mut(g)) {
                Some(0) => false,
                Some(left) => {
                    *left -= 1;
                    true
                }
                None => true,
            })
            .cloned()
            .collect()
    }

    pub(super) fn demand_of(&self, job: &TrainingJob) -> Result<Demand, DomainError> {
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
            spot: job.is_spot(),
            priority: trainyard_model::priority::of(job.request.tags.as_ref()),
            user: job.owner.clone(),
        })
    }

    pub(super) async fn enqueue(&mut self, name: &str) -> Result<(), DomainError> {
        // As this process last wrote it (the leader is the only writer; a job changed since, by a
        // stop say, is kept changed or, once ended, not kept): a create is queued without a read.
        let job = match self.c.last_written(name) {
            Some(job) => job,
            None => self.c.training_job(name).await?.value,
        };
        self.enqueue_job(&job).await
    }

    /// [`Loop::enqueue`] of a job already read (or just created: a trial's start saves a read).
    pub(super) async fn enqueue_job(&mut self, job: &TrainingJob) -> Result<(), DomainError> {
        let name = job.name.as_str();
        if job.status != TrainingJobStatus::InProgress || !job.placement.is_empty() {
            return Ok(());
        }
        let demand = self.demand_of(job)?;
        let max_pending = job
            .request
            .stopping_condition
            .as_ref()
            .and_then(|s| s.max_pending_time_in_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        // A job just created (its only transition Starting) waits for the end of this pass: if
        // the pass places it, it goes from Starting to Starting on an agent, and its Pending is
        // never written. One created while there was no room has it stored already. Any other (a
        // retry, a resumed spot job) says at once that it waits.
        let just_created = job.transitions.len() == 1 && job.secondary_status == SecondaryStatus::Starting;
        if just_created {
            self.pending_unstored.push(name.to_string());
        } else if job.secondary_status != SecondaryStatus::Pending {
            self.store_pending(name).await?;
        }
        let resumes = job.runs.interruptions > 0;
        self.c.queue_order().push(name);
        self.queue
            .insert(name.to_string(), Queued { demand, queued_at: now(), max_pending, not_before: None, resumes });
        self.queued_since_pass.push(name.to_string());
        self.track_spot(job);
        Ok(())
    }

    pub(super) fn capacities(&self) -> Vec<Capacity> {
        self.agents.iter().filter_map(|(id, a)| self.capacity_of(id, a)).collect()
    }

    /// What agent `id` has free for placement; None when it cannot take work (lost, no stream).
    pub(super) fn capacity_of(&self, id: &str, a: &AgentEntry) -> Option<Capacity> {
        if a.lost || a.outbound.is_none() {
            return None;
        }
        let used = a
            .allocations
            .values()
            .fold((0u32, 0u64, 0u64), |acc, x| (acc.0 + x.vcpus, acc.1 + x.memory_mib, acc.2 + x.disk_mib));
        let held: BTreeSet<&String> = a.allocations.values().flat_map(|x| &x.gpus).collect();
        Some(Capacity {
            id: id.to_string(),
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
        })
    }

    /// The job's `Pending` transition, unless it has one (or it was stopped meanwhile).
    async fn store_pending(&mut self, name: &str) -> Result<(), DomainError> {
        self.update_job(name, mark_pending).await?;
        Ok(())
    }

    /// Stores `Pending` for the new jobs queued since the last tick that are still waiting (the
    /// rest were placed, stopped or ended meanwhile), together, with the progress each has not
    /// stored. At each tick (or once a few hundred wait) rather than after each pass: a burst of
    /// creates is written hundreds of jobs to a statement instead of a few, and a job placed
    /// within half a second is never written `Pending` at all. What a failure leaves is stored
    /// on the next try.
    pub(super) async fn store_waiting(&mut self) -> Result<(), DomainError> {
        let names: Vec<String> =
            std::mem::take(&mut self.pending_unstored).into_iter().filter(|n| self.queue.contains_key(n)).collect();
        if names.is_empty() {
            return Ok(());
        }
        let written = self.updated_jobs(&names, mark_pending).await;
        let mut first_error = None;
        for (name, outcome) in written {
            if let Err(e) = outcome {
                self.pending_unstored.push(name);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Places what fits; records why the rest cannot run when no agent could ever hold it (that
    /// the rest waits is stored at the next tick: [`Loop::store_waiting`]).
    pub(super) async fn schedule(&mut self) -> Result<(), DomainError> {
        self.place().await
    }

    async fn place(&mut self) -> Result<(), DomainError> {
        if self.queue.is_empty() {
            // Nothing waits, nothing to place. What the last full pass found of the room holds
            // (whatever makes room clears it), unless the agents are gone.
            if !self.agents.values().any(|a| !a.lost && a.outbound.is_some()) {
                self.c.set_no_room(true);
            }
            self.queued_since_pass.clear();
            return Ok(());
        }
        // A pass that could place nothing is skipped: no instance could start after the last
        // full pass and none can since (every change that makes room, an instance's end, an agent
        // that joins or comes back, a lifted cordon, clears `no_room`), the agents are the ones it
        // saw, and no spot job runs that an on-demand one could preempt. Only the jobs queued
        // since are looked at, for a reason they can never be placed. A full cluster with a long
        // queue (the load suite: 171,000 jobs, 39 ms a pass) no longer copies the whole queue
        // into a problem at every event.
        // (The agents are summed only while there is no room: a pass with room is never skipped.)
        if self.c.no_room()
            && self.last_pass_agents.is_some_and(|seen| seen == self.agents_seen())
            && !self.running.values().any(|r| r.spot)
        {
            return self.explain_newly_queued().await;
        }
        self.queued_since_pass.clear();
        self.last_pass_agents = None;
        // With no agent to place on, the queue is not copied into a problem: under a burst of
        // creates that copy (every waiting job, every pass) was a tenth of the coordinator's CPU.
        let agents = self.capacities();
        if agents.is_empty() {
            self.c.set_no_room(true);
            self.last_pass_agents = Some(self.agents_seen());
            return Ok(());
        }
        let mut problem = Problem {
            agents,
            queue: self.placeable(),
            running_per_group: self.tuning.iter().map(|(n, t)| (n.clone(), t.active.len() as u32)).collect(),
            running_per_user: self.running_per_user(),
        };
        let pass = std::time::Instant::now();
        let decisions = trainyard_scheduler::place(&mut problem);
        let preemptions = self.preemptions(&problem, &decisions);
        self.metrics.placement_seconds.observe(pass.elapsed().as_secs_f64());
        for preemption in preemptions {
            self.preempt(preemption).await?;
        }
        let mut placed = Vec::new();
        let mut unplaceable = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Place { job, instances } => {
                    if let Some(q) = self.queue.get(&job) {
                        let waited = now().millis().saturating_sub(q.queued_at.millis()).max(0);
                        self.metrics.queue_wait_seconds.observe(waited as f64 / 1000.0);
                    }
                    placed.push((job, instances));
                }
                Decision::Unplaceable { job, reason } => unplaceable.push((job, reason)),
            }
        }
        self.start_all(placed).await?;
        for (job, reason) in unplaceable {
            self.unplaceable(&job, reason).await?;
        }
        // Room left in the problem is room left. No room in it is checked against what was
        // allocated: a placed job that did not start (its role refused, stopped meanwhile) leaves
        // its room free, and later passes must see it.
        let (smallest_vcpus, smallest_memory_mib) = self.c.catalog.smallest();
        let no_room = trainyard_scheduler::no_room(&problem.agents, smallest_vcpus, smallest_memory_mib)
            && trainyard_scheduler::no_room(&self.capacities(), smallest_vcpus, smallest_memory_mib);
        self.c.set_no_room(no_room);
        if no_room {
            self.last_pass_agents = Some(self.agents_seen());
        }
        Ok(())
    }

    /// A queued job no agent could ever hold says why, on its Pending transition (stored with it
    /// if this pass queued it): one write, and none when the reason is the one it has.
    async fn unplaceable(&mut self, job: &str, reason: String) -> Result<(), DomainError> {
        // Kept where describes read it; unchanged (or not queued): nothing to write.
        if !self.c.queue_order().set_reason(job, &reason) {
            return Ok(());
        }
        let message = format!("Cannot be placed: {reason}");
        self.update_job(job, |j| {
            if stopped_since_queued(j) {
                return Ok(false);
            }
            let queued_now = mark_pending(j)?;
            Ok(j.set_status_message(message.clone(), now()) || queued_now)
        })
        .await?;
        Ok(())
    }

    /// A skipped pass's part ([`Loop::place`]): each job queued since the last pass that is due
    /// (not waiting out a retry's delay, which keeps it for a later pass) and that no agent could
    /// ever hold says why, as a full pass would have said.
    async fn explain_newly_queued(&mut self) -> Result<(), DomainError> {
        if self.queued_since_pass.is_empty() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<String>, Vec<String>) = std::mem::take(&mut self.queued_since_pass)
            .into_iter()
            .filter(|job| self.queue.contains_key(job))
            .partition(|job| self.queue.get(job).is_some_and(|q| q.not_before.is_none_or(|t| t <= now)));
        self.queued_since_pass = later;
        if due.is_empty() {
            return Ok(());
        }
        let agents = self.capacities();
        for job in due {
            let reason = self.queue.get(&job).and_then(|q| trainyard_scheduler::never_fits(&agents, &q.demand));
            if let Some(reason) = reason {
                self.unplaceable(&job, reason).await?;
            }
        }
        Ok(())
    }

    /// What of the agents a placement pass depends on beyond their free room: which are there
    /// and can take work, how large, with what capabilities.
    fn agents_seen(&self) -> AgentsSeen {
        let mut seen = AgentsSeen::default();
        for (id, a) in self.agents.iter().filter(|(_, a)| !a.lost && a.outbound.is_some()) {
            seen.live += 1;
            seen.cordoned += u64::from(self.cordons.contains_key(id));
            seen.vcpus += u64::from(a.inventory.cpu_count);
            seen.memory_mib += a.inventory.memory_total_mib;
            seen.disk_mib += a.inventory.disk_free_mib;
            seen.gpus += a.inventory.gpus.len() as u64;
            seen.isolating += u64::from(a.capabilities.network_isolation);
            seen.containers += u64::from(!a.capabilities.container_runtime.is_empty());
            seen.host_programs += u64::from(a.capabilities.host_programs);
        }
        seen
    }

    /// Instances each user runs (fairness between users).
    fn running_per_user(&self) -> BTreeMap<String, u32> {
        let mut per_user = BTreeMap::new();
        for run in self.running.values() {
            let live = run.instances.values().filter(|(_, ended)| ended.is_none()).count() as u32;
            *per_user.entry(run.user.clone()).or_default() += live;
        }
        per_user
    }

    /// The spot jobs to interrupt so that jobs this pass could not place start (the pure
    /// scheduler's policy); nothing when no spot job runs or nothing that is not spot waits.
    fn preemptions(&self, problem: &Problem, decisions: &[Decision]) -> Vec<Preemption> {
        // The common case costs one look at what runs: no spot job, nothing to decide.
        if !self.running.values().any(|r| r.spot) {
            return Vec::new();
        }
        let decided: BTreeSet<&str> = decisions
            .iter()
            .map(|d| match d {
                Decision::Place { job, .. } | Decision::Unplaceable { job, .. } => job.as_str(),
            })
            .collect();
        let waiting: Vec<&Demand> =
            problem.queue.iter().filter(|d| !d.spot && !decided.contains(d.job.as_str())).collect();
        if waiting.is_empty() {
            return Vec::new();
        }
        let now = now().millis();
        let running: Vec<Preemptible> = self
            .running
            .iter()
            .filter(|(_, r)| r.spot)
            .map(|(job, r)| Preemptible {
                job: job.clone(),
                instances: r
                    .instances
                    .iter()
                    .filter(|(_, (_, ended))| ended.is_none())
                    .filter_map(|(i, (agent, _))| {
                        let held = self.agents.get(agent)?.allocations.get(&(job.clone(), *i))?;
                        Some(Held {
                            agent: agent.clone(),
                            vcpus: held.vcpus,
                            memory_mib: held.memory_mib,
                            disk_mib: held.disk_mib,
                            gpu_uuids: held.gpus.clone(),
                        })
                    })
                    .collect(),
                lost_work_ms: now - r.placed_at,
                interrupting: self.interrupting.contains_key(job),
                priority: r.priority,
            })
            .collect();
        trainyard_scheduler::preemptions(&problem.agents, &waiting, &running)
    }

    /// Interrupts spot jobs for a job that cannot start otherwise: the intent is stored first, then
    /// their instances are stopped as a StopTrainingJob would (SIGTERM, the grace period to write a
    /// checkpoint, SIGKILL; checkpoints synced); their end sends them back to the queue.
    async fn preempt(&mut self, preemption: Preemption) -> Result<(), DomainError> {
        let Preemption { job, victims } = preemption;
        for victim in &victims {
            let message = format!("Interrupting: training job {job} needs its place (managed spot training)");
            let marked = self
                .update_job(victim, |j| {
                    if j.status != TrainingJobStatus::InProgress || j.runs.interrupting_for.is_some() {
                        return Ok(false);
                    }
                    j.runs.interrupting_for = Some(job.clone());
                    j.set_status_message(message.clone(), now());
                    Ok(true)
                })
                .await?;
            if marked {
                info!(training_job = %victim, for_job = %job, "interrupting a spot job");
                self.metrics.interruptions.inc();
                self.interrupting.insert(victim.clone(), job.clone());
                self.stop_running_instances(victim);
            }
        }
        let message = format!("Waiting for spot training job(s) {} to give up their place", victims.join(", "));
        self.update_job(&job, |j| Ok(j.set_status_message(message.clone(), now()))).await?;
        Ok(())
    }

    /// Starts the jobs a pass placed: each one's placement (and who it runs as) is written in
    /// one statement for all of them, then each instance is assigned to its agent. One write per
    /// job made the loop fall tens of seconds behind a burst of creates onto an empty cluster
    /// (the load suite: 150 starts a second against 2,000 creates). The jobs whose write failed
    /// are caught up from the store (the first error is returned once the others started).
    pub(super) async fn start_all(
        &mut self,
        placed: Vec<(String, Vec<trainyard_scheduler::InstancePlacement>)>,
    ) -> Result<(), DomainError> {
        struct Start {
            queued: Queued,
            placement: Vec<PlacedInstance>,
            message: String,
        }
        let mut starts = HashMap::with_capacity(placed.len());
        let mut names = Vec::with_capacity(placed.len());
        for (name, instances) in placed {
            let Some(queued) = self.dequeue(&name) else { continue };
            let placement: Vec<PlacedInstance> = instances
                .iter()
                .map(|i| PlacedInstance {
                    instance: i.instance,
                    agent: i.agent.clone(),
                    gpu_uuids: i.gpu_uuids.clone(),
                })
                .collect();
            let agents: Vec<&str> = placement.iter().map(|p| p.agent.as_str()).collect();
            let message = format!("Launching on {}", agents.join(", "));
            names.push(name.clone());
            starts.insert(name, Start { queued, placement, message });
        }
        if names.is_empty() {
            return Ok(());
        }
        // Who it runs as is decided in the same write that places it: a role removed from the
        // configuration since the job was accepted fails it instead.
        let mut run_as: HashMap<String, Option<pb::RunAs>> = HashMap::new();
        let mut refused: HashMap<String, String> = HashMap::new();
        let c = self.c.clone();
        let roles = &c.roles;
        let written = self
            .updated_jobs(&names, |j| {
                let Some(start) = starts.get(&j.name) else { return Ok(false) };
                if stopped_since_queued(j) {
                    return Ok(false);
                }
                match roles.run_as(j.request.role_arn.as_deref()) {
                    Ok(role) => {
                        let role = role.map(|r| pb::RunAs { group: r.group.unwrap_or_default(), ..Default::default() });
                        run_as.insert(j.name.clone(), role);
                    }
                    Err(reason) => {
                        refused.insert(j.name.clone(), format!("ClientError: RoleArn: {reason}"));
                        return Ok(false);
                    }
                }
                j.placement = start.placement.clone();
                j.transition(SecondaryStatus::Starting, start.message.clone(), now())?;
                // A job placed in the pass that queued it is Starting already: the message says where.
                j.set_status_message(start.message.clone(), now());
                Ok(true)
            })
            .await;
        let mut first_error = None;
        for (name, outcome) in written {
            let Some(start) = starts.remove(&name) else { continue };
            let started = match (outcome, refused.remove(&name)) {
                (Ok(_), Some(reason)) => {
                    self.finish(&name, SecondaryStatus::Failed, "Failed", Some(reason), None).await
                }
                (Ok(Some(job)), None) => {
                    let run_as = run_as.remove(&name).flatten();
                    self.assign(job, start.queued, start.placement, run_as)
                }
                (Ok(None), None) => Ok(()),
                // Caught up from the store; its progress is kept for its next write.
                (Err(e), _) => Err(e),
            };
            if let Err(e) = started {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends a job just written as placed to its agents, and records it as running there.
    fn assign(
        &mut self,
        job: TrainingJob,
        queued: Queued,
        placement: Vec<PlacedInstance>,
        run_as: Option<pb::RunAs>,
    ) -> Result<(), DomainError> {
        let name = job.name.as_str();
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
        let mut run = Running {
            attempt: job.attempt,
            instances: BTreeMap::new(),
            spot: d.spot,
            placed_at: now().millis(),
            priority: d.priority,
            user: d.user.clone(),
            last_progress: None,
        };
        // MaxRuntimeInSeconds bounds its training over all its runs: a resumed spot job gets the rest.
        let mut request = job.request.clone();
        if let (Some(rest), Some(sc)) = (job.remaining_runtime_seconds(), request.stopping_condition.as_mut()) {
            sc.max_runtime_in_seconds = Some(rest);
        }
        let request: pb::CreateTrainingJobRequest = request.into();
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
                    request: Some(request.clone()),
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
        let agents: Vec<&str> = placement.iter().map(|p| p.agent.as_str()).collect();
        info!(training_job = name, agents = ?agents, waited_ms = now().millis() - queued.queued_at.millis(), "placed");
        self.running.insert(name.to_string(), run);
        Ok(())
    }

    /// The certificate a job's agents present to each other. It outlives the job's longest possible
    /// run (MaxRuntimeInSeconds, or SageMaker's one-day default) by a day.
    pub(super) fn job_credential(&self, job: &TrainingJob) -> Result<pb::JobCredential, DomainError> {
        let runtime = job
            .request
            .stopping_condition
            .as_ref()
            .and_then(|s| s.max_runtime_in_seconds)
            .unwrap_or(trainyard_model::jobs::DEFAULT_MAX_RUNTIME_SECONDS);
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

    /// Takes a job off the queue (placed, stopped, ended, expired): what it waited with.
    pub(super) fn dequeue(&mut self, name: &str) -> Option<Queued> {
        let queued = self.queue.remove(name)?;
        self.c.queue_order().remove(name);
        Some(queued)
    }
}

/// The agents a placement pass saw, summed ([`Loop::agents_seen`]): a pass is skipped only when
/// they are unchanged (their free room aside, which `no_room` covers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AgentsSeen {
    live: u64,
    cordoned: u64,
    vcpus: u64,
    memory_mib: u64,
    disk_mib: u64,
    gpus: u64,
    isolating: u64,
    containers: u64,
    host_programs: u64,
}

/// A queued job the API stopped after the loop queued it, whose event has not reached the loop
/// yet (that event takes it out of the queue): it is neither marked waiting nor started.
fn stopped_since_queued(job: &TrainingJob) -> bool {
    job.status != TrainingJobStatus::InProgress
}

/// Gives a queued job its `Pending` transition: true when it changed (false when it has one, or
/// was stopped since it was queued).
fn mark_pending(job: &mut TrainingJob) -> Result<bool, DomainError> {
    if job.secondary_status == SecondaryStatus::Pending || stopped_since_queued(job) {
        return Ok(false);
    }
    job.transition(SecondaryStatus::Pending, PENDING_MESSAGE, now())?;
    Ok(true)
}
