//! Agent sessions: an agent connecting (its inventory and what it reports running reconciled with
//! what the store says it holds), drains, an agent lost, and the agents as `agents list` shows them.

use std::collections::BTreeSet;

use tracing::{info, warn};
use trainyard_model::DomainError;
use trainyard_proto::pb;
use trainyard_proto::pb::coordinator_message::Body as Down;

use super::{AgentEntry, FENCING_MARGIN, Loop, send};
use crate::core::now;

impl Loop {
    pub(super) async fn on_agent(
        &mut self,
        session: u64,
        register: pb::Register,
        outbound: crate::inbox::Outbound,
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
        self.c.set_no_room(false);
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
        for (job, instance) in &ours {
            if !reported.contains(&(job.clone(), *instance)) {
                self.instance_lost(job, *instance, &format!("agent {id} restarted and no longer runs it"), None)
                    .await?;
            }
        }
        // A stop decided before a coordinator restart may never have reached the agent: the
        // interruptions and MaxWaitTime stops in the store are asked for again (a second stop of a
        // stopping instance changes nothing).
        if let Some(entry) = self.agents.get(&id) {
            for (job, instance) in ours {
                let unfinished = self.running.get(&job).is_some_and(|r| {
                    r.instances.get(&instance).is_some_and(|(agent, ended)| *agent == id && ended.is_none())
                });
                if unfinished && (self.interrupting.contains_key(&job) || self.wait_exceeded.contains(&job)) {
                    send(entry, Down::Stop(pb::StopInstance { training_job_name: job, instance, kill: false }));
                }
            }
        }
        Ok(())
    }

    /// Drains past their deadline: what still runs on the agent is killed there and handled as
    /// lost (retried elsewhere under its RetryStrategy, else failed with the reason).
    pub(super) async fn enforce_drain_deadlines(&mut self) -> Result<(), DomainError> {
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

    /// An agent that will not report again: its stream is closed and its instances are failed or
    /// retried elsewhere.
    pub(super) async fn declare_lost(&mut self, id: &str, why: &str) -> Result<(), DomainError> {
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

    /// Where an operator took agent `id` out of placement: "cordoned", "draining", "drained", or "".
    pub(super) fn cordon_of(&self, id: &str, a: &AgentEntry) -> &'static str {
        match self.cordons.get(id) {
            None => "",
            Some(c) if !c.drain => "cordoned",
            Some(_) if a.allocations.is_empty() => "drained",
            Some(_) => "draining",
        }
    }

    /// The agents whose ids sort after `after`, enough for a page of `limit` and to tell whether
    /// another follows: at most `limit` + 1 known agents and as many refused ones (the caller
    /// sorts and cuts). A ListAgents page costs its own agents, not all of them (a full listing
    /// of 20,000 agents made 20 pages of 20,000 summaries each, seconds of the loop).
    pub(super) fn summaries_after(&self, after: &str, limit: usize) -> Vec<pb::AgentSummary> {
        use std::ops::Bound;
        let take = limit.saturating_add(1);
        let range = (Bound::Excluded(after), Bound::Unbounded);
        self.agents
            .range::<str, _>(range)
            .take(take)
            .map(|(id, a)| {
                let capacity = self.capacity_of(id, a);
                let cap = capacity.as_ref();
                // Most heartbeats do not reach the loop: the latest is the streams' record.
                let heard = self.liveness.latest(id);
                pb::AgentSummary {
                    agent_id: id.clone(),
                    state: state_of(a).into(),
                    inventory: Some(a.inventory.clone()),
                    last_heartbeat: heard.as_ref().and_then(|h| h.1.clone()).or_else(|| a.heartbeat.clone()),
                    last_heartbeat_millis: heard.as_ref().map_or(a.last_seen_millis, |h| h.0.max(a.last_seen_millis)),
                    vcpus_free: cap.map_or(0, |c| c.vcpus_free),
                    memory_free_mib: cap.map_or(0, |c| c.memory_free_mib),
                    gpus_free: cap.map_or(0, |c| c.gpus_free.len() as u32),
                    running: a.allocations.keys().map(|(j, i)| format!("{j}/algo-{i}")).collect(),
                    capabilities: Some(a.capabilities.clone()),
                    peer_address: a.peer_address.clone(),
                    cordon: self.cordon_of(id, a).into(),
                    cordoned_by: self.cordons.get(id).map(|c| c.by_user.clone()).unwrap_or_default(),
                    version: a.version.clone(),
                    refusal: String::new(),
                }
            })
            .chain(self.refused.range::<str, _>(range).filter(|(id, _)| !self.agents.contains_key(*id)).take(take).map(
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

/// An agent's state as ListAgents shows it.
pub(super) fn state_of(a: &AgentEntry) -> &'static str {
    if a.revoked {
        "revoked"
    } else if a.lost {
        "lost"
    } else if a.outbound.is_some() {
        "ready"
    } else {
        "disconnected"
    }
}
