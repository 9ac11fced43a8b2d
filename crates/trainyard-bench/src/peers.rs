//! The peers suite: throughput and latency of the traffic between a distributed job's instances,
//! over the path every job uses (instance → its agent → the peer's agent → peer instance), plain
//! and with `EnableInterContainerTrafficEncryption` (mutual TLS between the agents), against a
//! direct connection between the same two simulated hosts (veth and bridge, no agents), first with
//! Python at both ends, then with iperf3 (native endpoints, several streams: the path's own limit);
//! then the same three paths under PyTorch DDP's collective, an all-reduce over gloo, launched by `torchrun`
//! on each host as SageMaker's `torch_distributed` launches it.
//!
//! Hosts are network namespaces on this machine (needs root). Each host's processes are pinned to a
//! CPU of their own (as two machines would have), unless TRAINYARD_BENCH_UNPINNED is set; either
//! way the ratios are what this measures, not wire speed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use trainyard_testkit::netns::{Host, Lan};
use trainyard_testkit::{Daemon, binary, poll_until, wait_until};

const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");
const TUNING: &str = include_str!("../../../deploy/examples/tuning-job.json");
/// An agent keeps this many ended instances' namespaces for the next ones (the agent's
/// `IDLE_NAMESPACES`).
const IDLE_PER_AGENT: usize = 4;

/// Instances run one after another through the same two agents to look for leaked namespaces.
const LEAK_RUNS: u32 = 1_000;

/// Server: echo (latency), then sink (throughput). Client: N round trips of 64 bytes, then M MiB.
const PROGRAM: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, time
ROUND_TRIPS, MEBIBYTES = int(os.environ["ROUND_TRIPS"]), int(os.environ["MEBIBYTES"])

def accept(server):
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert conn.recv(1) == b"H"
    conn.sendall(b"H")
    return conn

def serve(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen()
    conn = accept(server)
    while True:
        data = conn.recv(64)
        if not data:
            break
        conn.sendall(data)
    conn.close()
    conn = accept(server)
    received = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        received += len(data)
    conn.sendall(b"%d\n" % received)
    conn.close()

def connect(host, port):
    deadline = time.time() + 60
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"H")
            if conn.recv(1) == b"H":
                return conn
            conn.close()
        except OSError:
            if time.time() > deadline:
                raise
        time.sleep(0.1)

def client(host, port):
    conn = connect(host, port)
    samples = []
    message = b"x" * 64
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter_ns()
        conn.sendall(message)
        got = 0
        while got < 64:
            got += len(conn.recv(64 - got))
        samples.append((time.perf_counter_ns() - start) / 1000)
    conn.close()
    samples.sort()
    conn = connect(host, port)
    block = b"\0" * (1 << 20)
    start = time.perf_counter()
    for _ in range(MEBIBYTES):
        conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)
    received = int(conn.recv(100).decode().strip())
    seconds = time.perf_counter() - start
    assert received == MEBIBYTES << 20, received
    print("PEERS " + json.dumps({"p50_us": samples[len(samples) // 2], "p99_us": samples[len(samples) * 99 // 100],
                               "mib_per_s": MEBIBYTES / seconds}), flush=True)

if len(sys.argv) > 1 and sys.argv[1] == "serve":
    serve(int(sys.argv[2]))
elif len(sys.argv) > 1 and sys.argv[1] == "client":
    client(sys.argv[2], int(sys.argv[3]))
elif os.environ["SM_CURRENT_HOST"] == "algo-1":
    serve(5555)
else:
    client("algo-1", 5555)
"#;

/// Native endpoints, so that the path and not the programs at its ends is what is measured:
/// iperf3 (Debian's) with `STREAMS` parallel streams for `SECONDS`. algo-1 serves one test;
/// algo-2 runs it, trying again until the server listens.
const IPERF: &str = r#"#!/usr/bin/env python3
import json, os, subprocess, sys, time

def client(host):
    deadline = time.time() + 60
    while True:
        run = subprocess.run(["iperf3", "--client", host, "--port", "5201", "--parallel", os.environ["STREAMS"],
                              "--time", os.environ["SECONDS"], "--json"], capture_output=True, text=True)
        # Through the agents the connection is accepted at once, by the agent's forwarder, and
        # closed when the server does not listen yet: a run without results is tried again too.
        try:
            end = json.loads(run.stdout)["end"]
            if run.returncode == 0 and "sum_received" in end:
                break
        except (ValueError, KeyError):
            pass
        if time.time() > deadline:
            sys.exit("iperf3 failed: " + run.stdout + run.stderr)
        time.sleep(0.1)
    print("IPERF " + json.dumps({"mib_per_s": end["sum_received"]["bits_per_second"] / 8 / 2**20,
                                 "retransmits": end["sum_sent"].get("retransmits", 0)}), flush=True)

if len(sys.argv) > 1 and sys.argv[1] == "client":
    client(sys.argv[2])
elif len(sys.argv) > 1 and sys.argv[1] == "serve" or os.environ.get("SM_CURRENT_HOST") == "algo-1":
    os.execvp("iperf3", ["iperf3", "--server", "--one-off", "--port", "5201"])
else:
    client("algo-1")
"#;
const STREAMS: u32 = 4;
const IPERF_SECONDS: u32 = 5;

/// DDP's collective: every step ends with an all-reduce of the gradients, here one tensor of
/// `TENSOR_MIB` summed across the ranks `ROUNDS` times. Rank 0 prints the result as one line; the
/// sums are checked (each round doubles every element of a tensor of ones on two ranks).
const ALL_REDUCE: &str = r#"import json, os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
mib, rounds = int(os.environ["TENSOR_MIB"]), int(os.environ["ROUNDS"])
tensor = torch.ones(mib * (1 << 20) // 4)
dist.all_reduce(tensor)
seconds = []
for _ in range(rounds):
    dist.barrier()
    start = time.perf_counter()
    dist.all_reduce(tensor)
    seconds.append(time.perf_counter() - start)
assert tensor[0].item() == dist.get_world_size() ** (rounds + 1), tensor[0].item()
if dist.get_rank() == 0:
    seconds.sort()
    print("ALL-REDUCE " + json.dumps({"mib_per_s": mib * rounds / sum(seconds), "p50_ms": seconds[len(seconds) // 2] * 1000,
          "max_ms": seconds[-1] * 1000}), flush=True)
dist.destroy_process_group()
"#;
const TENSOR_MIB: u32 = 64;
const ROUNDS: u32 = 10;

const ROUND_TRIPS: u32 = 5_000;
const MEBIBYTES: u32 = 1_024;

struct Measured {
    path: &'static str,
    p50_us: f64,
    p99_us: f64,
    mib_per_s: f64,
}

pub async fn run() -> anyhow::Result<()> {
    if !trainyard_testkit::netns::available() {
        println!("peers: skipped (needs root and iproute2 to simulate hosts)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // Declared before the agents, so dropped after them: removes the namespaces they recorded
    // (kept idle, or in flight) once they have been killed.
    let _leftovers = Leftovers(dir.path().to_path_buf());
    let programs = crate::programs_dir()?;
    let program = crate::install_program(programs.path(), "peerbench.py", PROGRAM)?;
    let mut lan = Lan::new();
    let (a, b) = (lan.add_host(), lan.add_host());

    let mut rows = vec![direct(&a, &b, &program)?];

    let coordinator = crate::start_coordinator(dir.path(), "0.0.0.0", &[], true)?;
    let port = coordinator.port;
    let ca_file = dir.path().join("data/pki/ca.pem");
    let agents: Vec<Daemon> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let mut cmd = on_cpu(host, i, binary("trainyard-agent"));
            cmd.arg("--coordinator")
                .arg(format!("{}:{port}", lan.gateway))
                .arg("--id")
                .arg(format!("bench-host-{i}"))
                .arg("--work-root")
                .arg(dir.path().join(format!("agent-{i}")))
                .arg("--host-programs")
                .arg("--advertise-vcpus")
                .arg("8")
                .arg("--bucket")
                .arg(format!(
                    "trainyard-examples={}",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples/data")
                ))
                .arg("--bucket")
                .arg(format!("trainyard-output={}", dir.path().join("output").display()))
                .envs(coordinator.env())
                .env("RUST_LOG", "warn");
            Daemon::spawn(&format!("agent-{i}"), cmd, dir.path())
        })
        .collect();
    let cli_text = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(binary("trainyard"))
            .env("TRAINYARD_COORDINATOR", format!("127.0.0.1:{port}"))
            .env("TRAINYARD_CA_FILE", &ca_file)
            .envs(coordinator.env())
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("trainyard {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cli = |args: &[&str]| -> anyhow::Result<Value> {
        let text = cli_text(&[&["--output", "json"], args].concat())?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let ready = wait_until(Duration::from_secs(30), || {
        cli(&["agents", "list"]).is_ok_and(|v| v["Agents"].as_array().is_some_and(|a| a.len() == 2))
    });
    if !ready {
        bail!("the agents did not register");
    }
    // Runs a two-instance job of `image` with `environment` to its end.
    let run_job = |name: &str, image: &Path, encrypted: bool, environment: Value| -> anyhow::Result<()> {
        let mut r: Value = serde_json::from_str(TRAINING)?;
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(image.display().to_string());
        r["ResourceConfig"]["InstanceCount"] = json!(2);
        r["EnableInterContainerTrafficEncryption"] = json!(encrypted);
        r["StoppingCondition"] = json!({"MaxRuntimeInSeconds": 1800});
        r["Environment"] = environment;
        let file = dir.path().join(format!("{name}.request.json"));
        std::fs::write(&file, r.to_string())?;
        cli(&["training-jobs", "create", "--file", &file.display().to_string()])?;
        // Asked twice a second: each question starts the CLI (a process, a TLS connection to the
        // coordinator), whose CPU the measured programs would share. Asked every 20 ms, as
        // `wait_until` does, it took a sixth to a quarter off DDP's all-reduce.
        let mut status = Value::Null;
        poll_until(Duration::from_secs(1800), Duration::from_millis(500), || {
            status = cli(&["training-jobs", "describe", name]).unwrap_or(Value::Null);
            matches!(status["TrainingJobStatus"].as_str(), Some("Completed" | "Failed" | "Stopped"))
        });
        if status["TrainingJobStatus"] != "Completed" {
            bail!("{name} did not complete: {status:#}\n{}", cli_text(&["training-jobs", "logs", name])?);
        }
        Ok(())
    };
    for (path, encrypted) in [("agents, plain TCP", false), ("agents, mutual TLS", true)] {
        let name = if encrypted { "bench-encrypted" } else { "bench-plain" };
        let environment = json!({
            "ROUND_TRIPS": ROUND_TRIPS.to_string(),
            "MEBIBYTES": MEBIBYTES.to_string(),
        });
        run_job(name, &program, encrypted, environment)?;
        rows.push(read_result(path, &cli_text(&["training-jobs", "logs", name])?)?);
    }
    print_table(&rows);

    // The same paths with native endpoints.
    crate::apt_install(&["iperf3"], &["iperf3"])?;
    let iperf = crate::install_program(programs.path(), "iperf.py", IPERF)?;
    let mut native = vec![direct_iperf(&a, &b, &iperf)?];
    for (path, encrypted) in [("agents, plain TCP", false), ("agents, mutual TLS", true)] {
        let name = if encrypted { "iperf-encrypted" } else { "iperf-plain" };
        let environment = json!({"STREAMS": STREAMS.to_string(), "SECONDS": IPERF_SECONDS.to_string()});
        run_job(name, &iperf, encrypted, environment)?;
        native.push(iperf_result(path, &cli_text(&["training-jobs", "logs", name])?)?);
    }
    print_iperf_table(&native);

    // The same paths under DDP's all-reduce.
    let venv = trainyard_testkit::python::pytorch();
    let script = programs.path().join("all_reduce.py");
    std::fs::write(&script, ALL_REDUCE)?;
    let launcher = format!(
        "#!/bin/sh\nrank=$(( ${{SM_CURRENT_HOST#algo-}} - 1 ))\nexec {venv}/bin/torchrun --nnodes 2 --node-rank $rank \
         --nproc-per-node 1 --master-addr algo-1 --master-port 29500 {script}\n",
        venv = venv.display(),
        script = script.display()
    );
    let launcher = crate::install_program(programs.path(), "torchrun.sh", &launcher)?;
    let mut collective = vec![direct_all_reduce(&a, &b, &venv, &script)?];
    for (path, encrypted) in [("agents, plain TCP", false), ("agents, mutual TLS", true)] {
        let name = if encrypted { "all-reduce-encrypted" } else { "all-reduce-plain" };
        let environment = json!({"TENSOR_MIB": TENSOR_MIB.to_string(), "ROUNDS": ROUNDS.to_string()});
        run_job(name, &launcher, encrypted, environment)?;
        collective.push(all_reduce_result(path, &cli_text(&["training-jobs", "logs", name])?)?);
    }
    print_all_reduce_table(&collective);
    leaks(&cli, dir.path(), &[&a, &b], &agents)?;
    Ok(())
}

/// Runs LEAK_RUNS trivial instances (a Random tuning job), then counts what is left on the hosts:
/// host-side veths, namespaces in the agents' view, and the agents' records of them. Each agent
/// keeps up to `IDLE_PER_AGENT` ended instances' namespaces for reuse; more is a leak.
fn leaks(
    cli: &dyn Fn(&[&str]) -> anyhow::Result<Value>,
    dir: &Path,
    hosts: &[&Host],
    agents: &[Daemon],
) -> anyhow::Result<()> {
    let programs = crate::programs_dir()?;
    let program = crate::install_program(programs.path(), "quick.sh", "#!/bin/sh\necho score=0.5\n")?;
    let mut r: Value = serde_json::from_str(TUNING)?;
    r["HyperParameterTuningJobName"] = json!("leak-check");
    let config = &mut r["HyperParameterTuningJobConfig"];
    config["Strategy"] = json!("Random");
    config["HyperParameterTuningJobObjective"] = json!({"Type": "Maximize", "MetricName": "score"});
    config["ResourceLimits"] = json!({"MaxNumberOfTrainingJobs": LEAK_RUNS, "MaxParallelTrainingJobs": 8});
    config["TrainingJobEarlyStoppingType"] = json!("Off");
    let definition = &mut r["TrainingJobDefinition"];
    definition["AlgorithmSpecification"]["TrainingImage"] = json!(program.display().to_string());
    definition["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    let file = dir.join("leak-check.json");
    std::fs::write(&file, r.to_string())?;
    let started = std::time::Instant::now();
    cli(&["tuning-jobs", "create", "--file", &file.display().to_string()])?;
    let mut status = Value::Null;
    wait_until(Duration::from_secs(1800), || {
        status = cli(&["tuning-jobs", "describe", "leak-check"]).unwrap_or(Value::Null);
        matches!(status["HyperParameterTuningJobStatus"].as_str(), Some("Completed" | "Failed" | "Stopped"))
    });
    let seconds = started.elapsed().as_secs_f64();
    let counters = &status["TrainingJobStatusCounters"];
    let mut veths = 0;
    let mut namespaces = 0;
    let mut records = 0;
    for (i, (host, agent)) in hosts.iter().zip(agents).enumerate() {
        let links = Command::new("ip").args(["-n", &host.namespace, "-o", "link", "show"]).output()?;
        veths += String::from_utf8_lossy(&links.stdout).lines().filter(|l| l.contains(": tyv")).count();
        // The agent's namespaces are mounted in its own mount namespace (ip netns exec made one).
        let listed =
            Command::new("nsenter").args(["-t", &agent.pid().to_string(), "-m", "ls", "/run/netns"]).output()?;
        let prefix = format!("ty-bench-host-{i}-");
        namespaces += String::from_utf8_lossy(&listed.stdout).lines().filter(|l| l.starts_with(&prefix)).count();
        records += std::fs::read_dir(dir.join(format!("agent-{i}/network")))?.count();
    }
    println!();
    println!(
        "leak check: {LEAK_RUNS} instances on 2 agents in {seconds:.1} s ({:.1}/s), status {}, completed {}; \
         left (idle for reuse, at most {IDLE_PER_AGENT} per agent): {veths} veths, {namespaces} namespaces, \
         {records} records",
        f64::from(LEAK_RUNS) / seconds,
        status["HyperParameterTuningJobStatus"],
        counters["Completed"],
    );
    let allowed = IDLE_PER_AGENT * hosts.len();
    if veths > allowed || namespaces > allowed || records > allowed {
        bail!("instances left network state behind (beyond the {allowed} kept idle for reuse)");
    }
    Ok(())
}

/// A command inside `host`, pinned to one CPU per host (host i on CPU i) when the machine has two:
/// each simulated host then has a core of its own, as separate machines would, instead of every
/// process of both hosts competing for both cores. `TRAINYARD_BENCH_UNPINNED=1` turns it off.
fn on_cpu(host: &Host, index: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || std::env::var_os("TRAINYARD_BENCH_UNPINNED").is_some() {
        return host.command(program);
    }
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &(index % cpus).to_string(), "ip", "netns", "exec", &host.namespace]).arg(program);
    cmd
}

/// Runs `program` straight between the two hosts, no agent in the path: with `server_args` on
/// `a`, with `client_args` (after `client ADDRESS`) on `b`; the client's output. The server ends
/// after its client; one the client never reached is killed rather than waited for.
fn direct_run(
    a: &Host,
    b: &Host,
    program: &Path,
    server_args: &[&str],
    client_args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<String> {
    let env = env.iter().map(|(k, v)| (*k, v.as_str()));
    let mut server =
        on_cpu(a, 0, program).args(server_args).envs(env.clone()).stdout(std::process::Stdio::null()).spawn()?;
    let client = on_cpu(b, 1, program).args(["client", &a.address.to_string()]).args(client_args).envs(env).output()?;
    if !wait_until(Duration::from_secs(5), || server.try_wait().is_ok_and(|s| s.is_some())) {
        let _ = server.kill();
        let _ = server.wait();
    }
    if !client.status.success() {
        bail!("the direct run of {} failed: {}", program.display(), String::from_utf8_lossy(&client.stderr));
    }
    Ok(String::from_utf8_lossy(&client.stdout).into_owned())
}

const DIRECT: &str = "direct (veth + bridge, no agents)";

/// The baseline: the same program straight between the two hosts.
fn direct(a: &Host, b: &Host, program: &Path) -> anyhow::Result<Measured> {
    let env = [("ROUND_TRIPS", ROUND_TRIPS.to_string()), ("MEBIBYTES", MEBIBYTES.to_string())];
    read_result(DIRECT, &direct_run(a, b, program, &["serve", "5555"], &["5555"], &env)?)
}

/// iperf3 straight between the two hosts.
fn direct_iperf(a: &Host, b: &Host, program: &Path) -> anyhow::Result<Iperf> {
    let env = [("STREAMS", STREAMS.to_string()), ("SECONDS", IPERF_SECONDS.to_string())];
    iperf_result(DIRECT, &direct_run(a, b, program, &["serve"], &[], &env)?)
}

struct Iperf {
    path: &'static str,
    mib_per_s: f64,
    retransmits: f64,
}

fn iperf_result(path: &'static str, output: &str) -> anyhow::Result<Iperf> {
    let v = result_line(path, "IPERF ", output)?;
    let number = |k: &str| v[k].as_f64().unwrap_or_default();
    Ok(Iperf { path, mib_per_s: number("mib_per_s"), retransmits: number("retransmits") })
}

fn print_iperf_table(rows: &[Iperf]) {
    println!();
    print_paths(
        &format!(
            "peer traffic, native endpoints: iperf3, {STREAMS} streams for {IPERF_SECONDS} s (each host pinned as above)"
        ),
        &["retransmits"],
        &rows.iter().map(|r| (r.path, r.mib_per_s, vec![format!("{:.0}", r.retransmits)])).collect::<Vec<_>>(),
    );
}

/// The paths side by side: throughput, against plain TCP through the agents and against the
/// direct path (the first row), then `extra` columns.
fn print_paths(title: &str, extra: &[&str], rows: &[(&str, f64, Vec<String>)]) {
    let direct = rows.first().map_or(1.0, |r| r.1);
    let plain = rows.iter().find(|r| r.0.contains("plain")).map_or(1.0, |r| r.1);
    println!("{title}");
    let headers: String = extra.iter().map(|h| format!(" {h:>11}")).collect();
    println!("{:<36} {:>10} {:>9} {:>10}{headers}", "path", "MiB/s", "vs plain", "vs direct");
    for (path, mib_per_s, cells) in rows {
        let cells: String = cells.iter().map(|c| format!(" {c:>11}")).collect();
        println!(
            "{path:<36} {mib_per_s:>10.0} {:>8.0}% {:>9.0}%{cells}",
            100.0 * mib_per_s / plain,
            100.0 * mib_per_s / direct
        );
    }
}

/// The all-reduce straight between the two hosts: `torchrun` in each, gloo on their LAN interface.
fn direct_all_reduce(a: &Host, b: &Host, venv: &Path, script: &Path) -> anyhow::Result<AllReduce> {
    let torchrun = venv.join("bin/torchrun");
    let run = |host: &Host, rank: usize| {
        let mut cmd = on_cpu(host, rank, &torchrun);
        cmd.args(["--nnodes", "2", "--node-rank", &rank.to_string(), "--nproc-per-node", "1"])
            .args(["--master-addr", &a.address.to_string(), "--master-port", "29500"])
            .arg(script)
            .env("GLOO_SOCKET_IFNAME", "eth0")
            .env("TENSOR_MIB", TENSOR_MIB.to_string())
            .env("ROUNDS", ROUNDS.to_string());
        cmd
    };
    let other = run(b, 1).stdout(std::process::Stdio::null()).spawn()?;
    let first = run(a, 0).output()?;
    let second = other.wait_with_output()?;
    if !first.status.success() || !second.status.success() {
        bail!("the direct all-reduce failed: {}", String::from_utf8_lossy(&first.stderr));
    }
    all_reduce_result(DIRECT, &String::from_utf8_lossy(&first.stdout))
}

struct AllReduce {
    path: &'static str,
    mib_per_s: f64,
    p50_ms: f64,
    max_ms: f64,
}

/// The line rank 0 printed.
fn all_reduce_result(path: &'static str, output: &str) -> anyhow::Result<AllReduce> {
    let v = result_line(path, "ALL-REDUCE ", output)?;
    let number = |k: &str| v[k].as_f64().unwrap_or_default();
    Ok(AllReduce { path, mib_per_s: number("mib_per_s"), p50_ms: number("p50_ms"), max_ms: number("max_ms") })
}

fn print_all_reduce_table(rows: &[AllReduce]) {
    println!();
    print_paths(
        &format!(
            "DDP all-reduce: a {TENSOR_MIB} MiB float32 tensor summed across 2 ranks, {ROUNDS} times (torch gloo, torchrun on each host)"
        ),
        &["p50 ms", "max ms"],
        &rows
            .iter()
            .map(|r| (r.path, r.mib_per_s, vec![format!("{:.1}", r.p50_ms), format!("{:.1}", r.max_ms)]))
            .collect::<Vec<_>>(),
    );
}

/// The JSON a program printed after `prefix` (on a line of its own, or of a job's log).
fn result_line(path: &str, prefix: &str, output: &str) -> anyhow::Result<Value> {
    let line = output
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, json)| json.to_string()))
        .with_context(|| format!("{path}: no result in the output:\n{output}"))?;
    Ok(serde_json::from_str(&line)?)
}

fn read_result(path: &'static str, output: &str) -> anyhow::Result<Measured> {
    let v = result_line(path, "PEERS ", output)?;
    let number = |k: &str| v[k].as_f64().unwrap_or_default();
    Ok(Measured { path, p50_us: number("p50_us"), p99_us: number("p99_us"), mib_per_s: number("mib_per_s") })
}

fn print_table(rows: &[Measured]) {
    let pinned = std::env::var_os("TRAINYARD_BENCH_UNPINNED").is_none();
    print_paths(
        &format!(
            "peer traffic: {ROUND_TRIPS} round trips of 64 bytes, then {MEBIBYTES} MiB one way (Python on both ends; {})",
            if pinned { "each host pinned to its own CPU" } else { "both hosts share every CPU" }
        ),
        &["p50 µs", "p99 µs"],
        &rows
            .iter()
            .map(|r| (r.path, r.mib_per_s, vec![format!("{:.0}", r.p50_us), format!("{:.0}", r.p99_us)]))
            .collect::<Vec<_>>(),
    );
}

/// Removes, when dropped, the network namespaces that the agents under a directory recorded and
/// could not remove themselves (the bench kills them).
struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        trainyard_testkit::netns::remove_agents_leftovers(&self.0);
    }
}
