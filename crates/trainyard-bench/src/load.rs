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
use trainyard_proto::client::{self, ClientIdentity};
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::access_client::AccessClient;
use trainyard_proto::pb::agent_message::Body as Up;
use trainyard_proto::pb::agents_client::AgentsClient;
use trainyard_proto::pb::training_client::TrainingClient;

const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");
/// Streams per HTTP/2 connection, as many agents would share a NAT or a proxy.
const AGENTS_PER_CONNECTION: usize = 100;
/// Agents in the ListAgents page that samples the event loop's lag.
const LAG_SAMPLE_AGENTS: u32 = 100;

pub struct Load {
    pub agents: usize,
    pub clients: usize,
    pub seconds: u64,
    /// Each agent joins and holds a mutual-TLS connection of its own; clients use TLS and a token.
    pub tls: bool,
}

/// Joins in flight at once (each is a certificate the coordinator signs).
const CONCURRENT_JOINS: usize = 64;

pub async fn run(load: &Load, database: &crate::Database) -> anyhow::Result<()> {
    raise_open_files_limit(load.agents);
    let dir = tempfile::tempdir()?;
    let url = database.url();
    let metrics_address = format!("127.0.0.1:{}", trainyard_testkit::free_port());
    let args = ["--database-url".as_ref(), url.as_ref(), "--metrics-listen".as_ref(), metrics_address.as_ref()];
    let coordinator = crate::start_coordinator(dir.path(), "127.0.0.1", &args, load.tls)?;
    let port = coordinator.port;
    let address = format!("127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeats = Arc::new(AtomicU64::new(0));
    let agent_errors = Arc::new(AtomicU64::new(0));
    // The interval the coordinator asks for (2 s until it says).
    let heartbeat_every = Arc::new(AtomicU64::new(2000));

    let started = Instant::now();
    let channels = if load.tls {
        // As deployed: every agent joins, receives its own certificate, and dials with it.
        let identities = join_all(&coordinator, &address, load.agents).await?;
        let joined_in = started.elapsed();
        println!("{} agents joined in {:.1} s", load.agents, joined_in.as_secs_f64());
        let ca = coordinator.ca_pem.clone().unwrap_or_default();
        let mut channels = Vec::with_capacity(load.agents);
        for (certificate_pem, key_pem) in &identities {
            let identity = ClientIdentity { certificate_pem, key_pem };
            channels.push(client::channel(&address, Some(&ca), Some(identity)).await.context("an agent's connection")?);
        }
        channels
    } else {
        // Plain text: a hundred simulated agents share each connection, which mutual TLS (one
        // certificate per agent) forbids by design; the numbers are the coordinator's, not TLS's.
        let mut channels = Vec::with_capacity(load.agents);
        for _ in 0..load.agents.div_ceil(AGENTS_PER_CONNECTION) {
            let channel = Channel::from_shared(format!("http://{address}"))?.connect().await.context("connecting")?;
            channels.extend(std::iter::repeat_n(channel, AGENTS_PER_CONNECTION));
        }
        channels.truncate(load.agents);
        channels
    };
    let mut agent_tasks = Vec::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let id = format!("sim-{i:05}");
        let (stop, heartbeats, errors, every) =
            (stop.clone(), heartbeats.clone(), agent_errors.clone(), heartbeat_every.clone());
        agent_tasks.push(tokio::spawn(async move {
            if let Err(e) = simulated_agent(channel, id.clone(), stop, heartbeats, every).await
                && errors.fetch_add(1, Ordering::Relaxed) == 0
            {
                eprintln!("first agent stream error ({id}): {e:#}");
            }
        }));
    }
    let mut agents = AgentsClient::new(coordinator.connect().await?);
    loop {
        let ready = all_agents(&mut agents).await?.len();
        if ready >= load.agents {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {ready} of {} simulated agents registered", load.agents);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registered_in = started.elapsed();
    let idle_rss = rss_kib(coordinator.daemon.pid());

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
    // How far behind the event loop runs while the clients do, sampled every second: how long it
    // takes to answer a page of ListAgents (answered between other events), and the oldest
    // heartbeat of that page's agents (the coordinator's record of them).
    let loop_lag = {
        let mut agents = AgentsClient::new(coordinator.connect().await?);
        tokio::spawn(async move {
            let (mut slowest_answer, mut oldest_heartbeat) = (Duration::ZERO, 0i64);
            while Instant::now() < deadline {
                let asked = Instant::now();
                let page = pb::ListAgentsRequest { next_token: String::new(), max_results: LAG_SAMPLE_AGENTS };
                if let Ok(listed) = agents.list_agents(page).await {
                    slowest_answer = slowest_answer.max(asked.elapsed());
                    oldest_heartbeat = oldest_heartbeat.max(oldest_heartbeat_of(&listed.into_inner().agents));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (slowest_answer, oldest_heartbeat)
        })
    };
    let mut client_tasks = Vec::new();
    for c in 0..load.clients {
        let channel = coordinator.connect().await?;
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
    let listed = all_agents(&mut agents).await?;
    let ready = listed.iter().filter(|a| a.state == "ready").count();
    let placed: usize = listed.iter().map(|a| a.running.len()).sum();
    let (slowest_answer, oldest_heartbeat) = loop_lag.await?;
    let placement = placement_pass(&metrics_address);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    for task in agent_tasks {
        task.abort();
    }

    println!(
        "load on {}: {} simulated agents ({}, registered in {:.1} s), {} clients for {} s",
        database.backend,
        load.agents,
        if load.tls {
            "each its own certificate and mutual-TLS connection".to_string()
        } else {
            format!("plain text, {AGENTS_PER_CONNECTION} per connection")
        },
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
         coordinator RSS with the agents idle {:.0} MiB ({:.1} KiB per agent), peak {:.0} MiB",
        heartbeats.load(Ordering::Relaxed),
        agent_errors.load(Ordering::Relaxed),
        load.agents,
        idle_rss as f64 / 1024.0,
        idle_rss as f64 / load.agents.max(1) as f64,
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0
    );
    println!(
        "placement passes {} (mean {:.2} ms); under the load, the event loop answered a page of ListAgents in at most {:.0} ms \
         and the oldest heartbeat it held was {} ms old (agents heartbeat every {} ms)",
        placement.1,
        placement.0 * 1e3 / placement.1.max(1) as f64,
        slowest_answer.as_secs_f64() * 1e3,
        oldest_heartbeat,
        heartbeat_every.load(Ordering::Relaxed)
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
    heartbeat_every: Arc<AtomicU64>,
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
            capabilities: Some(pb::Capabilities { host_programs: true, ..Default::default() }),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: trainyard_proto::AGENT_PROTOCOL,
            ..Default::default()
        })),
    })?;
    let mut inbound = client.session(UnboundedReceiverStream::new(rx)).await?.into_inner();
    let mut every = Duration::from_millis(heartbeat_every.load(Ordering::Relaxed));
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
                        heartbeat_every.store(r.heartbeat_interval_ms.into(), Ordering::Relaxed);
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

/// How old the oldest heartbeat in `agents` is, in milliseconds.
fn oldest_heartbeat_of(agents: &[pb::AgentSummary]) -> i64 {
    let now_millis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    agents.iter().map(|a| now_millis - a.last_heartbeat_millis).max().unwrap_or(0)
}

/// Every agent the coordinator lists, page by page.
async fn all_agents(
    client: &mut AgentsClient<trainyard_proto::client::Transport>,
) -> anyhow::Result<Vec<pb::AgentSummary>> {
    let (mut agents, mut next_token) = (Vec::new(), String::new());
    loop {
        let page = client.list_agents(pb::ListAgentsRequest { next_token, max_results: 0 }).await?.into_inner();
        agents.extend(page.agents);
        if page.next_token.is_empty() {
            return Ok(agents);
        }
        next_token = page.next_token;
    }
}

/// Joins `count` agents with the coordinator's join tokens (a token lets in at most 10,000):
/// each agent's certificate and key (PEM).
async fn join_all(
    coordinator: &crate::BenchCoordinator,
    address: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    const PER_TOKEN: usize = 10_000;
    let mut access = AccessClient::new(coordinator.connect().await?);
    let mut tokens = Vec::new();
    for _ in 0..count.div_ceil(PER_TOKEN) {
        let request =
            pb::CreateJoinTokenRequest { uses: PER_TOKEN as u32, description: "load".into(), ..Default::default() };
        tokens.push(access.create_join_token(request).await?.into_inner().token);
    }
    let ca = coordinator.ca_pem.clone().unwrap_or_default();
    let joiner = AgentsClient::new(client::channel(address, Some(&ca), None).await?);
    let mut joined = Vec::with_capacity(count);
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..count {
        if in_flight.len() >= CONCURRENT_JOINS
            && let Some(done) = in_flight.join_next().await
        {
            joined.push(done??);
        }
        let (mut joiner, token) = (joiner.clone(), tokens[i / PER_TOKEN].clone());
        in_flight.spawn(async move {
            let request = pb::JoinRequest { join_token: token, agent_id: format!("sim-{i:05}") };
            let response = joiner.join(request).await.with_context(|| format!("joining sim-{i:05}"))?.into_inner();
            anyhow::Ok((i, response.certificate_pem, response.key_pem))
        });
    }
    while let Some(done) = in_flight.join_next().await {
        joined.push(done??);
    }
    joined.sort_by_key(|(i, ..)| *i);
    Ok(joined.into_iter().map(|(_, certificate, key)| (certificate, key)).collect())
}

/// The coordinator's placement passes so far: (seconds in all, count), from its metrics.
fn placement_pass(metrics_address: &str) -> (f64, u64) {
    let (seconds, count) = crate::histogram(&crate::metrics_page(metrics_address), "trainyard_placement_pass_seconds");
    (seconds, count as u64)
}

/// Every agent is a socket here and one at the coordinator (which inherits the limit): the
/// soft limit of open files is raised to fit (as root, the hard one too).
fn raise_open_files_limit(agents: usize) {
    let wanted = (agents as u64) * 2 + 4096;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_max = limit.rlim_max.max(wanted);
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            eprintln!("could not raise the open-files limit to {wanted}: {}", std::io::Error::last_os_error());
        }
    }
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
