//! Placement as data: agents and a queue in, decisions out, invariants checked after every round.

use std::collections::{BTreeMap, BTreeSet};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn agent(id: &str, vcpus: u32, memory_gib: u64, gpus: u32) -> Agent {
    Agent {
        id: id.into(),
        vcpus_total: vcpus,
        memory_total_mib: memory_gib * 1024,
        disk_total_mib: 100 * 1024,
        gpus_total: gpus,
        vcpus_free: vcpus,
        memory_free_mib: memory_gib * 1024,
        disk_free_mib: 100 * 1024,
        gpus_free: (0..gpus).map(|g| format!("GPU-{id}-{g}")).collect(),
        network_isolation: true,
        containers: false,
        host_programs: true,
        cordoned: false,
    }
}

fn demand(job: &str, group: Option<&str>, count: u32, vcpus: u32, memory_gib: u64, gpus: u32, at: i64) -> Demand {
    Demand {
        job: job.into(),
        group: group.map(Into::into),
        instance_count: count,
        vcpus,
        memory_mib: memory_gib * 1024,
        disk_mib: 1024,
        gpus,
        needs_isolation: false,
        needs_containers: false,
        queued_at: at,
        spot: false,
        priority: 0,
        user: String::new(),
    }
}

/// Checks what must hold after any round: nothing over-committed, GPUs exclusive, gangs on
/// distinct agents and complete, each job decided at most once.
fn sanity_check(before: &[Agent], after: &[Agent], queue: &[Demand], decisions: &[Decision]) {
    let mut used: BTreeMap<&str, (u32, u64, u64)> = BTreeMap::new();
    let mut gpus_seen = BTreeSet::new();
    let mut jobs = BTreeSet::new();
    for d in decisions {
        let job = match d {
            Decision::Place { job, .. } | Decision::Unplaceable { job, .. } => job,
        };
        assert!(jobs.insert(job.clone()), "{job} decided twice");
        let Decision::Place { job, instances } = d else { continue };
        let demand = queue.iter().find(|q| &q.job == job).expect("placed job was queued");
        assert_eq!(instances.len() as u32, demand.instance_count, "{job}: gang complete");
        let agents: BTreeSet<_> = instances.iter().map(|i| i.agent.as_str()).collect();
        assert_eq!(agents.len(), instances.len(), "{job}: instances on distinct agents");
        for i in instances {
            assert_eq!(i.gpu_uuids.len() as u32, demand.gpus, "{job}: GPU count");
            for g in &i.gpu_uuids {
                assert!(g.starts_with(&format!("GPU-{}-", i.agent)), "{g} belongs to {}", i.agent);
                assert!(gpus_seen.insert(g.clone()), "{g} assigned twice");
            }
            let u = used.entry(i.agent.as_str()).or_default();
            u.0 += demand.vcpus;
            u.1 += demand.memory_mib;
            u.2 += demand.disk_mib;
        }
    }
    for (b, a) in before.iter().zip(after) {
        let u = used.get(b.id.as_str()).copied().unwrap_or_default();
        assert!(u.0 <= b.vcpus_free && u.1 <= b.memory_free_mib && u.2 <= b.disk_free_mib, "{} over-committed", b.id);
        assert_eq!(a.vcpus_free, b.vcpus_free - u.0, "{}: free vCPUs accounted", b.id);
        assert_eq!(a.memory_free_mib, b.memory_free_mib - u.1);
    }
}

fn run(agents: Vec<Agent>, queue: Vec<Demand>, running: &[(&str, u32)]) -> (Vec<Agent>, Vec<Decision>) {
    let mut problem = Problem {
        agents: agents.clone(),
        queue: queue.clone(),
        running_per_group: running.iter().map(|(g, n)| (g.to_string(), *n)).collect(),
        ..Default::default()
    };
    let decisions = place(&mut problem);
    sanity_check(&agents, &problem.agents, &queue, &decisions);
    (problem.agents, decisions)
}

fn placed(decisions: &[Decision]) -> Vec<(String, Vec<String>)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Place { job, instances } => {
                Some((job.clone(), instances.iter().map(|i| i.agent.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn gpu_jobs_take_the_tightest_gpu_host_and_cpu_jobs_avoid_gpu_hosts() {
    let agents = vec![agent("big", 64, 512, 8), agent("small", 8, 64, 1), agent("cpu", 16, 64, 0)];
    let queue = vec![demand("gpu-job", None, 1, 4, 16, 1, 1), demand("cpu-job", None, 1, 4, 16, 0, 2)];
    let (_, d) = run(agents, queue, &[]);
    assert_eq!(
        placed(&d),
        [("gpu-job".to_string(), vec!["small".to_string()]), ("cpu-job".to_string(), vec!["cpu".to_string()])]
    );
}

#[test]
fn gangs_are_all_or_nothing_on_distinct_agents() {
    let agents = vec![agent("a", 8, 32, 0), agent("b", 8, 32, 0)];
    let queue = vec![demand("three", None, 3, 4, 8, 0, 1), demand("two", None, 2, 8, 32, 0, 2)];
    let (after, d) = run(agents, queue, &[]);
    assert_eq!(d.len(), 2);
    assert!(
        matches!(&d[0], Decision::Unplaceable { job, reason } if job == "three" && reason.contains("distinct agents"))
    );
    assert_eq!(placed(&d), [("two".to_string(), vec!["a".to_string(), "b".to_string()])]);
    assert!(after.iter().all(|a| a.vcpus_free == 0));
}

#[test]
fn a_job_that_can_never_fit_is_reported_and_one_that_waits_is_not() {
    let agents = vec![agent("a", 4, 16, 0)];
    let queue = vec![
        demand("too-big", None, 1, 8, 16, 0, 1),
        demand("needs-gpu", None, 1, 1, 1, 1, 2),
        demand("fits", None, 1, 4, 16, 0, 3),
        demand("waits", None, 1, 4, 16, 0, 4),
    ];
    let (_, d) = run(agents, queue, &[]);
    let unplaceable: Vec<&str> = d
        .iter()
        .filter_map(|d| match d {
            Decision::Unplaceable { job, .. } => Some(job.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(unplaceable, ["too-big", "needs-gpu"]);
    assert_eq!(placed(&d), [("fits".to_string(), vec!["a".to_string()])]);
    // No agent at all is waiting, not "never".
    let (_, d) = run(vec![], vec![demand("early", None, 1, 1, 1, 0, 1)], &[]);
    assert!(d.is_empty());
}

#[test]
fn isolation_needs_a_capable_agent() {
    let mut plain = agent("plain", 8, 32, 0);
    plain.network_isolation = false;
    let mut q = demand("isolated", None, 1, 1, 1, 0, 1);
    q.needs_isolation = true;
    let (_, d) = run(vec![plain.clone()], vec![q.clone()], &[]);
    assert!(matches!(&d[0], Decision::Unplaceable { reason, .. } if reason.contains("network isolation")));
    let (_, d) = run(vec![plain, agent("capable", 8, 32, 0)], vec![q], &[]);
    assert_eq!(placed(&d), [("isolated".to_string(), vec!["capable".to_string()])]);
}

#[test]
fn container_images_go_only_to_agents_with_a_container_runtime() {
    let mut q = demand("image", None, 1, 1, 1, 0, 1);
    q.needs_containers = true;
    let (_, d) = run(vec![agent("processes-only", 8, 32, 0)], vec![q.clone()], &[]);
    assert!(
        matches!(&d[0], Decision::Unplaceable { reason, .. } if reason.contains("no agent has a container runtime")),
        "{d:?}"
    );
    let mut runtime = agent("containerd", 8, 32, 0);
    runtime.containers = true;
    runtime.network_isolation = false;
    q.needs_isolation = true;
    let (_, d) = run(vec![agent("processes-only", 8, 32, 0), runtime.clone()], vec![q.clone()], &[]);
    assert!(matches!(&d[0], Decision::Unplaceable { reason, .. } if reason.contains("no agent has both")), "{d:?}");
    q.needs_isolation = false;
    let (_, d) = run(vec![agent("processes-only", 8, 32, 0), runtime.clone()], vec![q], &[]);
    assert_eq!(placed(&d), [("image".to_string(), vec!["containerd".to_string()])]);

    // A program on the host goes only where host programs are allowed.
    let mut containers_only = runtime;
    containers_only.host_programs = false;
    let program = demand("program", None, 1, 1, 1, 0, 2);
    let (_, d) = run(vec![containers_only.clone()], vec![program.clone()], &[]);
    assert!(
        matches!(&d[0], Decision::Unplaceable { reason, .. } if reason.contains("no agent runs host programs")),
        "{d:?}"
    );
    let (_, d) = run(vec![containers_only, agent("processes-only", 8, 32, 0)], vec![program], &[]);
    assert_eq!(placed(&d), [("program".to_string(), vec!["processes-only".to_string()])]);
}

#[test]
fn cordoned_agents_get_nothing_new_and_the_job_says_why_it_waits() {
    let mut maintenance = agent("maintenance", 8, 32, 0);
    maintenance.cordoned = true;
    let q = demand("queued", None, 1, 1, 1, 0, 1);
    let (_, d) = run(vec![maintenance.clone()], vec![q.clone()], &[]);
    assert!(matches!(&d[0], Decision::Unplaceable { reason, .. } if reason.contains("cordoned")), "{d:?}");
    let (_, d) = run(vec![maintenance, agent("open", 8, 32, 0)], vec![q], &[]);
    assert_eq!(placed(&d), [("queued".to_string(), vec!["open".to_string()])]);
}

#[test]
fn tuning_jobs_are_served_fairly_and_big_jobs_do_not_block_small_ones() {
    // Room for four 1-vCPU trials. Tuning job A queued ten trials before B queued its two, and A
    // already runs two: B must get its trials now.
    let agents = vec![agent("a", 4, 64, 0)];
    let mut queue: Vec<Demand> = (0..10).map(|i| demand(&format!("A-{i}"), Some("A"), 1, 1, 1, 0, i)).collect();
    queue.push(demand("B-0", Some("B"), 1, 1, 1, 0, 100));
    queue.push(demand("B-1", Some("B"), 1, 1, 1, 0, 101));
    let (_, d) = run(agents.clone(), queue, &[("A", 2)]);
    let jobs: Vec<String> = placed(&d).into_iter().map(|(j, _)| j).collect();
    assert_eq!(jobs, ["B-0", "B-1", "A-0", "A-1"]);

    // A job too big for the free space now does not stop a smaller one behind it.
    let queue = vec![demand("huge", None, 1, 4, 64, 0, 1), demand("tiny", None, 1, 1, 1, 0, 2)];
    let mut partly_used = agents[0].clone();
    partly_used.vcpus_free = 2;
    let (_, d) = run(vec![partly_used], queue, &[]);
    assert_eq!(placed(&d), [("tiny".to_string(), vec!["a".to_string()])]);
}

#[test]
fn random_clusters_never_break_the_invariants() {
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let agents: Vec<Agent> = (0..rng.random_range(0..12))
            .map(|i| {
                let mut a =
                    agent(&format!("a{i}"), rng.random_range(1..64), rng.random_range(1..256), rng.random_range(0..9));
                a.vcpus_free = rng.random_range(0..=a.vcpus_total);
                a.network_isolation = rng.random_bool(0.7);
                a
            })
            .collect();
        let queue: Vec<Demand> = (0..rng.random_range(0..40))
            .map(|i| {
                let group = ["g1", "g2", "g3"][rng.random_range(0..3)];
                let mut d = demand(
                    &format!("j{i}"),
                    rng.random_bool(0.8).then_some(group),
                    rng.random_range(1..4),
                    rng.random_range(1..16),
                    rng.random_range(1..64),
                    rng.random_range(0..4),
                    rng.random_range(0..1000),
                );
                d.needs_isolation = rng.random_bool(0.2);
                d
            })
            .collect();
        run(agents, queue, &[("g1", rng.random_range(0..5))]);
    }
}

// ----- spot jobs and preemption -----

fn spot(mut d: Demand) -> Demand {
    d.spot = true;
    d
}

/// A running spot job: one instance per agent named, each holding `vcpus` (and 1 GiB).
fn running(job: &str, agents: &[&str], vcpus: u32, lost_work_ms: i64) -> Preemptible {
    Preemptible {
        job: job.into(),
        instances: agents
            .iter()
            .map(|a| Held { agent: a.to_string(), vcpus, memory_mib: 1024, disk_mib: 1024, gpu_uuids: Vec::new() })
            .collect(),
        lost_work_ms,
        interrupting: false,
        priority: 0,
    }
}

/// The agents with what the running jobs hold taken.
fn occupied(mut agents: Vec<Agent>, jobs: &[&Preemptible]) -> Vec<Agent> {
    for job in jobs {
        for h in &job.instances {
            let a = agents.iter_mut().find(|a| a.id == h.agent).expect("agent of the job");
            a.vcpus_free -= h.vcpus;
            a.memory_free_mib -= h.memory_mib;
            a.disk_free_mib -= h.disk_mib;
            a.gpus_free.retain(|g| !h.gpu_uuids.contains(g));
        }
    }
    agents
}

fn victims(agents: &[Agent], waiting: &[Demand], running: &[Preemptible]) -> Vec<(String, Vec<String>)> {
    let waiting: Vec<&Demand> = waiting.iter().collect();
    preemptions(agents, &waiting, running).into_iter().map(|p| (p.job, p.victims)).collect()
}

#[test]
fn spot_jobs_are_served_after_every_other_even_when_older() {
    let mut problem = Problem {
        agents: vec![agent("a", 2, 8, 0)],
        queue: vec![spot(demand("old-spot", None, 1, 2, 1, 0, 1)), demand("new", None, 1, 2, 1, 0, 50)],
        ..Default::default()
    };
    let decisions = place(&mut problem);
    assert!(
        matches!(&decisions[0], Decision::Place { job, .. } if job == "new"),
        "the job that is not spot takes the only place: {decisions:?}"
    );
}

#[test]
fn a_job_that_does_not_fit_interrupts_the_fewest_instances_then_the_least_work() {
    let gang = running("gang", &["a", "b"], 2, 1);
    let long = running("long", &["a"], 2, 90_000);
    let short = running("short", &["b"], 2, 5_000);
    let agents = occupied(vec![agent("a", 4, 8, 0), agent("b", 4, 8, 0)], &[&gang, &long, &short]);
    let waiting = [demand("urgent", None, 1, 2, 1, 0, 10)];
    assert_eq!(
        victims(&agents, &waiting, &[gang, long, short]),
        vec![("urgent".to_string(), vec!["short".to_string()])],
        "one instance rather than a gang of two, and of two single ones the one that ran less"
    );
}

#[test]
fn a_gang_is_interrupted_whole_and_only_when_single_instances_do_not_do() {
    // Only 4 free vCPUs on one agent do: on "a" that means both jobs there, the gang included.
    let gang = running("gang", &["a", "b"], 2, 1);
    let single = running("single", &["a"], 2, 1);
    let other = running("other", &["b"], 1, 1);
    let agents = occupied(vec![agent("a", 4, 8, 0), agent("b", 4, 8, 0)], &[&gang, &single, &other]);
    let waiting = [demand("big", None, 1, 4, 1, 0, 10)];
    let decided = preemptions(&agents, &[&waiting[0]], &[gang.clone(), single, other]);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert!(decided[0].victims.contains(&"gang".to_string()), "{decided:?}");
    // The gang's instance on "b" goes with it: there is no way to name an instance here, only the
    // job, so a gang cannot be cut in parts; "b" then has 3 free and needs nothing else.
    let mut names = decided[0].victims.clone();
    names.sort();
    assert!(names == ["gang", "single"] || names == ["gang", "other"], "{names:?}");
}

#[test]
fn spot_jobs_never_preempt_and_nothing_is_interrupted_in_vain() {
    let victim = running("victim", &["a"], 2, 1);
    let agents = occupied(vec![agent("a", 2, 8, 0)], &[&victim]);
    assert!(victims(&agents, &[spot(demand("spot", None, 1, 2, 1, 0, 1))], std::slice::from_ref(&victim)).is_empty());
    // Even with the spot job gone it would not fit (the rest of the agent is not spot): no victim.
    let too_big = demand("too-big", None, 1, 3, 1, 0, 1);
    let mut agents = vec![agent("a", 4, 8, 0)];
    agents[0].vcpus_free = 2;
    let agents = occupied(agents, &[&victim]);
    assert!(victims(&agents, &[too_big], std::slice::from_ref(&victim)).is_empty());
    // It could never fit at all: nothing either.
    let never = demand("never", None, 1, 64, 1, 0, 1);
    assert!(victims(&occupied(vec![agent("a", 2, 8, 0)], &[&victim]), &[never], &[victim]).is_empty());
}

#[test]
fn victims_that_are_not_needed_are_spared() {
    // The cheapest candidate is on the CPU host; only the GPU host's job frees a GPU.
    let mut on_gpu_host = running("on-gpu-host", &["g"], 1, 100_000);
    on_gpu_host.instances[0].gpu_uuids = vec!["GPU-g-0".into(), "GPU-g-1".into()];
    let on_cpu_host = running("on-cpu-host", &["c"], 4, 1);
    let agents = occupied(vec![agent("g", 8, 8, 2), agent("c", 4, 8, 0)], &[&on_gpu_host, &on_cpu_host]);
    let waiting = [demand("gpu", None, 1, 1, 1, 1, 1)];
    assert_eq!(
        victims(&agents, &waiting, &[on_cpu_host, on_gpu_host]),
        vec![("gpu".to_string(), vec!["on-gpu-host".to_string()])]
    );
}

#[test]
fn what_is_being_interrupted_is_reserved_for_the_oldest_waiting_job() {
    let first = running("first", &["a"], 2, 1);
    let second = running("second", &["a"], 2, 50);
    let agents = occupied(vec![agent("a", 4, 8, 0)], &[&first, &second]);
    let one = demand("one", None, 1, 2, 1, 0, 10);
    let two = demand("two", None, 1, 2, 1, 0, 20);
    // The first pass interrupts the cheaper job for the older arrival only.
    assert_eq!(
        victims(&agents, std::slice::from_ref(&one), &[first.clone(), second.clone()]),
        vec![("one".to_string(), vec!["first".to_string()])]
    );
    // While "first" stops, "one" needs nothing more, and "two" gets a victim of its own.
    let mut stopping = first.clone();
    stopping.interrupting = true;
    assert_eq!(
        victims(&agents, &[one.clone(), two.clone()], &[stopping.clone(), second.clone()]),
        vec![("two".to_string(), vec!["second".to_string()])]
    );
    // With both stopping, nothing else is interrupted.
    let mut both = second;
    both.interrupting = true;
    assert!(victims(&agents, &[one, two], &[stopping, both]).is_empty());
}

// ----- priorities and users -----

fn of(mut d: Demand, user: &str, priority: i32) -> Demand {
    d.user = user.into();
    d.priority = priority;
    d
}

fn placed_jobs(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Place { job, .. } => Some(job.clone()),
            Decision::Unplaceable { .. } => None,
        })
        .collect()
}

#[test]
fn higher_priorities_go_first_even_younger_and_spot() {
    let (_, decisions) = run(
        vec![agent("a", 2, 8, 0)],
        vec![
            of(demand("old-normal", None, 1, 1, 1, 0, 1), "ana", 0),
            of(spot(demand("young-urgent-spot", None, 1, 1, 1, 0, 50)), "bo", 10),
            of(demand("background", None, 1, 1, 1, 0, 0), "cy", -5),
        ],
        &[],
    );
    assert_eq!(placed_jobs(&decisions), ["young-urgent-spot", "old-normal"]);
}

#[test]
fn users_of_equal_priority_share_the_cluster_whatever_their_job_counts() {
    // Ana queued twenty single jobs and a tuning job before Bo queued two; Bo already runs one
    // instance, Ana none. Six places: Bo gets his two, Ana four (3 + 3 with Bo's running one).
    let mut queue: Vec<Demand> =
        (0..20).map(|i| of(demand(&format!("ana-{i:02}"), None, 1, 1, 1, 0, i), "ana", 0)).collect();
    queue.extend((0..5).map(|i| of(demand(&format!("ana-t{i}"), Some("ana-tuning"), 1, 1, 1, 0, i), "ana", 0)));
    queue.extend((0..2).map(|i| of(demand(&format!("bo-{i}"), None, 1, 1, 1, 0, 100 + i), "bo", 0)));
    let mut problem = Problem {
        agents: vec![agent("a", 6, 64, 0)],
        queue,
        running_per_user: BTreeMap::from([("bo".to_string(), 1)]),
        ..Default::default()
    };
    let decisions = place(&mut problem);
    let jobs = placed_jobs(&decisions);
    assert_eq!(jobs.iter().filter(|j| j.starts_with("bo-")).count(), 2, "{jobs:?}");
    let ana = jobs.iter().filter(|j| j.starts_with("ana")).count();
    assert_eq!(ana, 4, "{jobs:?}");
    // Within Ana's share her two groups alternate, as tuning jobs always did.
    assert!(jobs.iter().any(|j| j.starts_with("ana-t")) && jobs.iter().any(|j| j.starts_with("ana-0")), "{jobs:?}");
}

#[test]
fn spot_jobs_of_a_higher_priority_are_not_interrupted_for_a_lower_one() {
    let mut precious = running("precious", &["a"], 2, 1);
    precious.priority = 5;
    let mut cheap = running("cheap", &["a"], 2, 1_000_000);
    cheap.priority = -1;
    let agents = occupied(vec![agent("a", 4, 8, 0)], &[&precious, &cheap]);
    // A normal job takes the low-priority spot job's place, though it ran far longer.
    assert_eq!(
        victims(&agents, &[demand("normal", None, 1, 2, 1, 0, 1)], &[precious.clone(), cheap.clone()]),
        vec![("normal".to_string(), vec!["cheap".to_string()])]
    );
    // One that needs both places cannot have the precious one: nothing is interrupted in vain.
    assert!(victims(&agents, &[demand("big", None, 1, 4, 1, 0, 1)], &[precious.clone(), cheap.clone()]).is_empty());
    // A job of priority 5 may.
    let mut urgent = demand("urgent", None, 1, 4, 1, 0, 1);
    urgent.priority = 5;
    let decided = victims(&agents, &[urgent], &[precious, cheap]);
    assert_eq!(decided.len(), 1);
    let mut names = decided[0].1.clone();
    names.sort();
    assert_eq!(names, ["cheap", "precious"]);
}

/// `no_room`: true only when not even the smallest instance could start anywhere.
#[test]
fn no_room_only_when_the_smallest_instance_fits_nowhere() {
    let (vcpus, memory_mib) = (2, 4 * 1024);
    assert!(no_room(&[], vcpus, memory_mib), "no agent");
    let idle = agent("a", 8, 32, 0);
    assert!(!no_room(std::slice::from_ref(&idle), vcpus, memory_mib));
    let cpus_taken = Agent { vcpus_free: 1, ..idle.clone() };
    let memory_taken = Agent { memory_free_mib: 4 * 1024 - 1, ..idle.clone() };
    let cordoned = Agent { cordoned: true, ..idle.clone() };
    assert!(no_room(&[cpus_taken.clone(), memory_taken.clone(), cordoned.clone()], vcpus, memory_mib));
    // One agent with room is enough, whatever the others.
    let just_enough = Agent { vcpus_free: 2, memory_free_mib: 4 * 1024, ..idle };
    assert!(!no_room(&[cpus_taken, memory_taken, cordoned, just_enough], vcpus, memory_mib));
    // After a round that fills the cluster, nothing more could start.
    let mut problem = Problem {
        agents: vec![agent("b", 2, 8, 0), agent("c", 4, 4, 0)],
        queue: vec![demand("j", None, 2, 2, 4, 0, 1)],
        ..Problem::default()
    };
    assert!(!no_room(&problem.agents, vcpus, memory_mib));
    let decisions = place(&mut problem);
    assert!(matches!(decisions.as_slice(), [Decision::Place { .. }]), "{decisions:?}");
    assert!(no_room(&problem.agents, vcpus, memory_mib));
}
