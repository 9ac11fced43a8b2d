//! Placement decisions per second of the pure placement crate: 1,000 agents and 100,000 queued
//! instances, one placement round, on one core. Prints a table. Run with
//! `cargo bench -p trainyard-scheduler`.

use std::time::Instant;

use trainyard_scheduler::{Agent, Decision, Demand, Problem, place};

fn cluster(agents: usize) -> Vec<Agent> {
    (0..agents)
        .map(|i| {
            let gpus = if i % 4 == 0 { 8 } else { 0 };
            Agent {
                id: format!("agent-{i:04}"),
                vcpus_total: 96,
                memory_total_mib: 384 * 1024,
                disk_total_mib: 2 * 1024 * 1024,
                gpus_total: gpus,
                vcpus_free: 96,
                memory_free_mib: 384 * 1024,
                disk_free_mib: 2 * 1024 * 1024,
                gpus_free: (0..gpus).map(|g| format!("GPU-{i}-{g}")).collect(),
                network_isolation: true,
                containers: true,
                host_programs: true,
                cordoned: false,
            }
        })
        .collect()
}

fn queue(instances: usize) -> Vec<Demand> {
    // Shapes of common instance types; trials of 500 tuning jobs plus some distributed jobs.
    let shapes = [(2, 8, 0, 1), (4, 16, 0, 1), (8, 32, 1, 1), (16, 64, 0, 1), (48, 192, 4, 2), (4, 16, 1, 1)];
    (0..instances)
        .map(|i| {
            let (vcpus, mem, gpus, count) = shapes[i % shapes.len()];
            Demand {
                job: format!("job-{i:06}"),
                group: Some(format!("tuning-{}", i % 500)),
                instance_count: count,
                vcpus,
                memory_mib: mem * 1024,
                disk_mib: 10 * 1024,
                gpus,
                needs_isolation: i % 10 == 0,
                needs_containers: i % 3 == 0,
                spot: false,
                priority: 0,
                user: String::new(),
                queued_at: i as i64,
            }
        })
        .collect()
}

fn main() {
    println!(
        "{:>7} {:>9} {:>8} {:>11} {:>10} {:>15}",
        "agents", "queued", "placed", "unplaceable", "ms", "decisions/s"
    );
    for (agents, queued) in [(100, 10_000), (1_000, 100_000)] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let mut problem = Problem { agents: cluster(agents), queue: queue(queued), ..Default::default() };
            let started = Instant::now();
            let decisions = place(&mut problem);
            runs.push((started.elapsed(), decisions));
        }
        runs.sort_by_key(|(t, _)| *t);
        let (elapsed, decisions) = &runs[1];
        let placed = decisions.iter().filter(|d| matches!(d, Decision::Place { .. })).count();
        let unplaceable = decisions.len() - placed;
        // Every queued instance was decided on: placed, found unplaceable, or left to wait.
        let per_second = queued as f64 / elapsed.as_secs_f64();
        println!(
            "{agents:>7} {queued:>9} {placed:>8} {unplaceable:>11} {:>10.1} {per_second:>15.0}",
            elapsed.as_secs_f64() * 1000.0
        );
    }
}
