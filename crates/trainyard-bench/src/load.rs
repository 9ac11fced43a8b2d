//! The load suite: a real coordinator (SQLite, then PostgreSQL) with thousands of simulated agents holding their
//! streams open and heartbeating, while concurrent clients submit training jobs and describe them.
//! Reports per-operation latency, errors (expected: none), agents still "ready" at the end (none
//! may be declared lost under load), and the coordinator's peak memory.
//!
//! Simulated agents are streams from this process, as a real agent opens them: Register, then a
//! Heartbeat every interval the coordinator asks for. They accept assignments and never run them,
//! so every submitted job ends up placed on one of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::agent_message::Body as Up;
use trainyard_proto::pb::agents_client::AgentsClient;
use trainyard_proto::pb::training_client::TrainingClient;

const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");
/// Streams per HTTP/2 connection, as many agents would share a NAT or a proxy.
const AGENTS_PER_CONNECTION: usize = 100;

pub struct Load {
    pub agents: usize,
    pub clients: usize,
    pub seconds: u64,
}

pub async fn run(load: &Load, database: &crate::Database) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Plain text: a hundred simulated agents share each connection, which mutual TLS (one
    // certificate per agent) forbids by design; the numbers are the coordinator's, not TLS's.
    let url = database.url();
    let args = ["--database-url".as_ref(), url.as_ref()];
    let coordinator = crate::start_coordinator(dir.path(), "127.0.0.1", &args, false)?;
    let port = coordinator.port;
    let address = format!("127.0.0.1:{port}");
    let url = format!("http://{address}");
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeats = Arc::new(AtomicU64::new(0));
    let agent_errors = Arc::new(AtomicU64::new(0));

    // The agents, a hundred streams per connection.
    let started = Instant::now();
    let mut agent_tasks = Vec::new();
    for group in 0..load.agents.div_ceil(AGENTS_PER_CONNECTION) {
        let channel = Channel::from_shared(url.clone())?.connect().await.context("connecting")?;
        for i in 0..AGENTS_PER_CONNECTION.min(load.agents - group * AGENTS_PER_CONNECTION) {
            let id = format!("sim-{:05}", group * AGENTS_PER_CONNECTION + i);
            let (channel, stop, heartbeats, errors) =
                (channel.clone(), stop.clone(), heartbeats.clone(), agent_errors.clone());
            agent_tasks.push(tokio::spawn(async move {
                if let Err(e) = simulated_agent(channel, id.clone(), stop, heartbeats).await
                    && errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("first agent stream error ({id}): {e:#}");
                }
            }));
        }
    }
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut agents = AgentsClient::new(channel.clone());
    loop {
        let ready = agents.list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents.len();
        if ready >= load.agents {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {} simulated agents registered", load.agents);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registered_in = started.elapsed();

    // Memory of the coordinator, sampled while the clients run.
    let pid = coordinator.daemon.pid();
    let peak_rss = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampler = {
        let (peak, stop) = (peak_rss.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The clients: create a job, describe it, until the time is up.
    let deadline = Instant::now() + Duration::from_secs(load.seconds);
    let template: api::CreateTrainingJobRequest = serde_json::from_str(TRAINING)?;
    let mut client_tasks = Vec::new();
    for c in 0..load.clients {
        let channel = Channel::from_shared(url.clone())?.connect().await?;
        let template = template.clone();
        client_tasks.push(tokio::spawn(async move {
            let mut client = TrainingClient::new(channel);
            let (mut creates, mut describes, mut errors) = (Vec::new(), Vec::new(), 0u64);
            let mut i = 0;
            while Instant::now() < deadline {
                let name = format!("load-{c}-{i}");
                i += 1;
                let mut request = template.clone();
                request.training_job_name = Some(name.clone());
                let t = Instant::now();
                match client.create_training_job(pb::CreateTrainingJobRequest::from(request)).await {
                    Ok(_) => creates.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                let t = Instant::now();
                let describe = pb::DescribeTrainingJobRequest { training_job_name: Some(name) };
                match client.describe_training_job(describe).await {
                    Ok(_) => describes.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (creates, describes, errors)
        }));
    }
    let (mut creates, mut describes, mut client_errors) = (Vec::new(), Vec::new(), 0);
    for task in client_tasks {
        let (c, d, e) = task.await?;
        creates.extend(c);
        describes.extend(d);
        client_errors += e;
    }
    let listed = agents.list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents;
    let ready = listed.iter().filter(|a| a.state == "ready").count();
    let placed: usize = listed.iter().map(|a| a.running.len()).sum();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    for task in agent_tasks {
        task.abort();
    }

    println!(
        "load on {}: {} simulated agents ({} per connection, registered in {:.1} s), {} clients for {} s",
        database.backend,
        load.agents,
        AGENTS_PER_CONNECTION,
        registered_in.as_secs_f64(),
        load.clients,
        load.seconds
    );
    println!("{:<22} {:>9} {:>9} {:>9} {:>9} {:>9}", "operation", "count", "errors", "p50 ms", "p99 ms", "max ms");
    for (name, latencies) in [("CreateTrainingJob", &mut creates), ("DescribeTrainingJob", &mut describes)] {
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "{:<22} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2}",
            name,
            latencies.len(),
            client_errors,
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    println!(
        "heartbeats {}, agent stream errors {}, agents ready at the end {ready}/{}, jobs placed on them {placed}, \
         coordinator peak RSS {:.0} MiB",
        heartbeats.load(Ordering::Relaxed),
        agent_errors.load(Ordering::Relaxed),
        load.agents,
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0
    );
    Ok(())
}

/// One simulated agent: registers with an inventory, then heartbeats at the interval the
/// coordinator asks for, and reads (and ignores) what it is sent.
async fn simulated_agent(
    channel: Channel,
    id: String,
    stop: Arc<AtomicBool>,
    heartbeats: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut client = AgentsClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    let inventory = pb::Inventory {
        hostname: id.clone(),
        os: "linux".into(),
        cpu_count: 8,
        memory_total_mib: 32 * 1024,
        memory_available_mib: 32 * 1024,
        disk_free_mib: 100 * 1024,
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        body: Some(Up::Register(pb::Register {
            agent_id: id,
            inventory: Some(inventory),
            capabilities: Some(pb::Capabilities::default()),
            ..Default::default()
        })),
    })?;
    let mut inbound = client.session(UnboundedReceiverStream::new(rx)).await?.into_inner();
    let mut every = Duration::from_secs(2);
    // Spread the heartbeats of many agents over the interval, as independent hosts would.
    tokio::time::sleep(Duration::from_millis(rand_millis(every))).await;
    let mut ticker = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = ticker.tick() => {
                tx.send(pb::AgentMessage { body: Some(Up::Heartbeat(pb::Heartbeat {
                    memory_available_mib: 32 * 1024, disk_free_mib: 100 * 1024, ..Default::default() })) })?;
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            message = inbound.message() => {
                match message? {
                    Some(pb::CoordinatorMessage { body: Some(pb::coordinator_message::Body::Registered(r)) })
                        if r.heartbeat_interval_ms > 0 => {
                        every = Duration::from_millis(r.heartbeat_interval_ms.into());
                        ticker = tokio::time::interval(every);
                    }
                    Some(_) => {}
                    None => bail!("stream closed"),
                }
            }
        }
    }
    Ok(())
}

fn rand_millis(every: Duration) -> u64 {
    rand::random::<u64>() % every.as_millis().max(1) as u64
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
