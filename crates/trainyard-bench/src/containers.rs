//! The containers suite: a real containerd (the bench's own), a real coordinator and agent, and a
//! busybox image already in the store. Each program announces that it runs by connecting to a TCP
//! listener of the bench (through its instance's network, the host's gateway), so that "running"
//! is measured the same way for the agent's containers and for `ctr run`.
//!
//! * submit → running in a container, p50/p99, jobs one after another (the image cached);
//! * the floor: `ctr run --rm` of the same image, from the command to the program running;
//! * trials per second: a tuning job of containers that exit at once, and the same of host
//!   programs, in the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use trainyard_proto::pb;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_proto::pb::training_client::TrainingClient;
use trainyard_testkit::containerd::Containerd;

use crate::agents::{cluster, now_ms, training_request, tuning_request, wait_training, wait_tuning};

const IMAGE: &str = "localhost/trainyard-bench/announce:1";

/// Connects to the bench at `$ANNOUNCE_PORT` on `$ANNOUNCE_HOST` (in the host's network) or its
/// network's gateway (an instance's namespace), and says who it is.
const ANNOUNCE: &str = r#"#!/bin/sh
host=${ANNOUNCE_HOST:-$(ip route 2>/dev/null | awk '/^default/ {print $3}')}
echo "${TRAINING_JOB_NAME:-$ANNOUNCE_AS}" | nc "$host" "$ANNOUNCE_PORT"
mkdir -p /opt/ml/model 2>/dev/null
exit 0
"#;

/// When each announced name arrived.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<String, Instant>>>);

impl Arrivals {
    async fn wait(&self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                bail!("{name} never announced itself");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn listen() -> anyhow::Result<(u16, Arrivals)> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    let arrivals = Arrivals::default();
    let recorded = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut line = String::new();
                if tokio::io::BufReader::new(stream).read_line(&mut line).await.is_ok() {
                    recorded
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(line.trim().to_string(), Instant::now());
                }
            });
        }
    });
    Ok((port, arrivals))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

pub async fn run() -> anyhow::Result<()> {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/announce.sh"], &[("/announce.sh", ANNOUNCE, 0o755)]);
    let (port, arrivals) = listen().await?;
    let socket = containerd.socket.display().to_string();
    let mut c = cluster(&["--containerd-socket", &socket]).await?;
    let mut training = TrainingClient::new(c.channel.clone());
    let mut tuning = HyperParameterTuningClient::new(c.channel.clone());

    // Submit → running in a container.
    let mut latencies = Vec::new();
    for i in 0..70 {
        let name = format!("container-{i}");
        let mut request = training_request(&name, IMAGE)?;
        request.environment = Some([("ANNOUNCE_PORT".to_string(), port.to_string())].into());
        let submitted = Instant::now();
        training.create_training_job(pb::CreateTrainingJobRequest::from(request)).await?;
        let running = arrivals.wait(&name, Duration::from_secs(60)).await?;
        let d = wait_training(&mut training, &name).await?;
        if d.training_job_status.as_deref() != Some("Completed") {
            bail!("{name} ended {:?}: {:?}", d.training_job_status, d.failure_reason);
        }
        if i >= 10 {
            latencies.push(running.duration_since(submitted).as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);

    // The floor: ctr run --rm of the same image, in the host's network.
    let mut floor = Vec::new();
    for i in 0..40 {
        let name = format!("ctr-{i}");
        let started = Instant::now();
        let env = [format!("ANNOUNCE_AS={name}"), format!("ANNOUNCE_PORT={port}"), "ANNOUNCE_HOST=127.0.0.1".into()];
        let out = containerd.ctr(&[
            "run",
            "--rm",
            "--net-host",
            "--env",
            &env[0],
            "--env",
            &env[1],
            "--env",
            &env[2],
            IMAGE,
            &name,
            "/bin/sh",
            "/announce.sh",
        ]);
        if !out.status.success() {
            bail!("ctr run: {}", String::from_utf8_lossy(&out.stderr));
        }
        let running = arrivals.wait(&name, Duration::from_secs(10)).await?;
        if i >= 5 {
            floor.push(running.duration_since(started).as_secs_f64() * 1e3);
        }
    }
    floor.sort_by(f64::total_cmp);

    // containerd's own ceiling for trials here: 100 `ctr run --rm` of the image, 10 at a time.
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..10 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 100 {
                        break;
                    }
                    let name = format!("ctr-parallel-{i}");
                    let out = containerd.ctr(&["run", "--rm", "--net-host", IMAGE, &name, "/bin/true"]);
                    if !out.status.success() {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let ctr_rate = 100.0 / started.elapsed().as_secs_f64();
    if failures.into_inner() > 0 {
        bail!("ctr run --rm failed in parallel");
    }

    // Trials per second: containers, then host programs, alike otherwise.
    let mut rates = Vec::new();
    let host_program = c.program_dir.join("quick").display().to_string();
    for (name, image) in [("containers", IMAGE.to_string()), ("processes", host_program)] {
        let mut request = tuning_request(name, &image, 100, 10)?;
        if let Some(d) = request.training_job_definition.as_mut() {
            d.environment = Some([("ANNOUNCE_PORT".to_string(), port.to_string())].into());
        }
        let started = now_ms();
        tuning.create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(request)).await?;
        let ended = wait_tuning(&mut tuning, name).await?;
        let d = tuning
            .describe_hyper_parameter_tuning_job(pb::DescribeHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(name.to_string()),
            })
            .await?
            .into_inner();
        let completed = d.training_job_status_counters.and_then(|c| c.completed).context("status counters")?;
        if completed != 100 {
            bail!("{name}: {completed} of 100 trials completed");
        }
        rates.push(100.0 / ((ended - started) as f64 / 1e3));
    }

    println!("{:<52} {:>12}", "containers suite (image cached)", "result");
    println!("{:<52} {:>9.1} ms", "submit -> process running in a container, p50", percentile(&latencies, 0.5));
    println!("{:<52} {:>9.1} ms", "submit -> process running in a container, p99", percentile(&latencies, 0.99));
    println!("{:<52} {:>9.1} ms", "ctr run --rm -> process running (the floor), p50", percentile(&floor, 0.5));
    println!("{:<52} {:>9.1} ms", "ctr run --rm -> process running (the floor), p99", percentile(&floor, 0.99));
    println!(
        "{:<52} {:>11.2}x",
        "p99 against ctr run's (aim: at most 1.5x)",
        percentile(&latencies, 0.99) / percentile(&floor, 0.99)
    );
    println!("{:<52} {:>12.1}", "trials per second, containers (100 trials, 10 parallel)", rates[0]);
    println!("{:<52} {:>12.1}", "trials per second, host processes (the same)", rates[1]);
    println!("{:<52} {:>12.1}", "ctr run --rm per second, 10 at a time (the floor)", ctr_rate);
    println!("{:<52} {:>10.0} %", "containers against ctr run's rate", rates[0] / ctr_rate * 100.0);
    println!("{:<52} {:>10.0} %", "containers against processes (aim: at least 50 %)", rates[0] / rates[1] * 100.0);
    c.coordinator.daemon.assert_running();
    Ok(())
}
