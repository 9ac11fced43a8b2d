//! Preemption: which running spot jobs to interrupt so that a job that is not spot starts now.
//!
//! The policy, exactly:
//! - Only a job that is not spot preempts, only spot jobs of its priority or lower are preempted,
//!   and only when the job does not fit as the cluster is but would fit once some are gone.
//! - A spot job is interrupted whole: every instance of a gang, wherever it runs, never a part.
//! - Victims are chosen lowest priority first, then fewest instances, then least work lost (how
//!   long they have run since they last started), then by name; a victim that turns out not to be
//!   needed is spared again.
//! - Spot jobs already being interrupted count as gone, and the capacity they free is reserved for
//!   the waiting jobs in queue order (highest priority, then oldest first), so that one arrival
//!   never interrupts twice the work it needs, and a second arrival does not take the first one's
//!   place.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::{Agent, Demand, capable, choose, never_fits, take};

/// What one instance of a running job holds on its agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub agent: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub gpu_uuids: Vec<String>,
}

/// A running spot job, which may be interrupted.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemptible {
    pub job: String,
    pub instances: Vec<Held>,
    /// The work an interruption now would lose, in milliseconds (its run so far: its checkpoints
    /// may keep some of it, which the scheduler cannot know).
    pub lost_work_ms: i64,
    /// It is being interrupted already: what it holds is as good as free.
    pub interrupting: bool,
    /// Its priority: only a job of this priority or higher interrupts it.
    pub priority: i32,
}

/// Interrupt `victims` so that `job` can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub job: String,
    pub victims: Vec<String>,
}

/// The interruptions that let the waiting jobs start. `agents` is the cluster after this round's
/// placements; `waiting` what is still queued (spot jobs among it are ignored: they never
/// preempt); `running` the spot jobs that run.
pub fn preemptions(agents: &[Agent], waiting: &[&Demand], running: &[Preemptible]) -> Vec<Preemption> {
    let mut cluster = agents.to_vec();
    let index: HashMap<String, usize> = cluster.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
    for victim in running.iter().filter(|r| r.interrupting) {
        release(&mut cluster, &index, victim);
    }
    let mut order: Vec<&Demand> = waiting.iter().copied().filter(|d| !d.spot).collect();
    order.sort_by(|x, y| (Reverse(x.priority), x.queued_at, &x.job).cmp(&(Reverse(y.priority), y.queued_at, &y.job)));

    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut decided = Vec::new();
    for demand in order {
        if never_fits(agents, demand).is_some() {
            continue;
        }
        if let Some(chosen) = choose(&cluster, demand) {
            // It fits once what is being interrupted is gone: that capacity is its own.
            for i in chosen {
                take(&mut cluster[i], demand);
            }
            continue;
        }
        let mut candidates: Vec<&Preemptible> = running
            .iter()
            .filter(|r| !r.interrupting && r.priority <= demand.priority && !taken.contains(r.job.as_str()))
            .filter(|r| {
                r.instances
                    .iter()
                    .any(|h| index.get(&h.agent).is_some_and(|&i| capable(&cluster[i], demand) && !cluster[i].cordoned))
            })
            .collect();
        candidates.sort_by(|x, y| {
            (x.priority, x.instances.len(), x.lost_work_ms, &x.job).cmp(&(
                y.priority,
                y.instances.len(),
                y.lost_work_ms,
                &y.job,
            ))
        });
        let Some(victims) = fewest_victims(&cluster, &index, demand, &candidates) else { continue };
        for victim in &victims {
            release(&mut cluster, &index, victim);
            taken.insert(victim.job.as_str());
        }
        if let Some(chosen) = choose(&cluster, demand) {
            for i in chosen {
                take(&mut cluster[i], demand);
            }
        }
        decided.push(Preemption { job: demand.job.clone(), victims: victims.iter().map(|v| v.job.clone()).collect() });
    }
    decided
}

/// The cheapest prefix of `candidates` (in their order) after which the demand fits, with every
/// victim it does not need spared again (the costliest tried first). None if even all do not do.
fn fewest_victims<'a>(
    cluster: &[Agent],
    index: &HashMap<String, usize>,
    demand: &Demand,
    candidates: &[&'a Preemptible],
) -> Option<Vec<&'a Preemptible>> {
    let fits_without = |victims: &[&Preemptible]| {
        let mut trial = cluster.to_vec();
        for v in victims {
            release(&mut trial, index, v);
        }
        choose(&trial, demand).is_some()
    };
    let mut trial = cluster.to_vec();
    let mut picked: Vec<&Preemptible> = Vec::new();
    for candidate in candidates {
        release(&mut trial, index, candidate);
        picked.push(candidate);
        if choose(&trial, demand).is_some() {
            break;
        }
    }
    if !fits_without(&picked) {
        return None;
    }
    for i in (0..picked.len()).rev() {
        let mut fewer = picked.clone();
        fewer.remove(i);
        if fits_without(&fewer) {
            picked = fewer;
        }
    }
    Some(picked)
}

/// Gives back to the agents what the job's instances hold (agents not in the cluster are skipped:
/// a lost agent's capacity is not offered anyway).
fn release(cluster: &mut [Agent], index: &HashMap<String, usize>, job: &Preemptible) {
    for held in &job.instances {
        let Some(&i) = index.get(&held.agent) else { continue };
        let agent = &mut cluster[i];
        agent.vcpus_free = (agent.vcpus_free + held.vcpus).min(agent.vcpus_total);
        agent.memory_free_mib = (agent.memory_free_mib + held.memory_mib).min(agent.memory_total_mib);
        agent.disk_free_mib = (agent.disk_free_mib + held.disk_mib).min(agent.disk_total_mib);
        for gpu in &held.gpu_uuids {
            if !agent.gpus_free.contains(gpu) {
                agent.gpus_free.push(gpu.clone());
            }
        }
    }
}
