//! Distributed jobs, network isolation and encrypted peer traffic, proven on a simulated network:
//! each host is a network namespace with its own agent process, on a LAN (a bridge in another
//! namespace) whose gateway is the test's namespace, where the coordinator runs. A packet capture on
//! the LAN's bridge sees every byte that travels between hosts.

use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, example_json, netns};

/// One program for every job here, steered by hyperparameters:
/// * `exchange`: algo-2 sends a marker (`$MARKER_SEED` reversed, upper case) to algo-1 (port
///   5555), which answers `ACK <marker>`;
/// * `probe`: tries a TCP connection to each `host:port` of `targets` and prints `reach T=ok|fail`
///   (`gateway` is its own host, at the host's end of its veth), after the interfaces that have
///   an IPv6 address in its namespace (`ipv6-on=lo`);
/// * `serve`: listens on 6000 for `seconds` seconds and prints its own address;
/// * `fail`: the named host exits 3 at once, the others sleep a minute;
/// * `resolve`: prints its /etc/resolv.conf (lines joined by `|`) and the IPv4 address each of
///   `names` resolves to.
const NETWORK_PROGRAM: &str = r#"#!/usr/bin/env python3
import ipaddress, json, os, socket, sys, time
hp = json.load(open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json")))
me = os.environ["SM_CURRENT_HOST"]
hosts = json.loads(os.environ["SM_HOSTS"])
# The marker crosses only the peer path: the job definition and the logs travel to the agents
# and back through the coordinator's channel, so they carry a seed it is derived from instead.
marker = os.environ.get("MARKER_SEED", "no-seed-given")[::-1].upper()

def say(*words):
    print(me, *words, flush=True)

if hp.get("mode") == "serve":
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("198.18.0.1", 9))
    say("address=" + probe.getsockname()[0])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 6000))
    server.listen()
    server.settimeout(float(hp.get("seconds", "60")))
    try:
        while True:
            conn, _ = server.accept()
            conn.sendall(b"hello from another job\n")
            conn.close()
    except socket.timeout:
        sys.exit(0)

if hp.get("mode") == "resolve":
    say("resolver " + open("/etc/resolv.conf").read().strip().replace("\n", "|"))
    for name in hp["names"].split(","):
        try:
            say(f"resolved {name}={socket.gethostbyname(name)}")
        except OSError as e:
            say(f"resolved {name} failed: {e}")
    sys.exit(0)

if hp.get("fail"):
    if me == hp["fail"]:
        say("failing on purpose")
        sys.exit(3)
    time.sleep(60)
    sys.exit(0)

if len(hosts) > 1 and hp.get("exchange", "yes") == "yes":
    if me == "algo-1":
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 5555))
        server.listen()
        server.settimeout(60)
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        conn.sendall(b"ACK " + data)
        conn.close()
        say("received-marker=" + str(data.decode().strip() == marker))
    else:
        deadline = time.time() + 60
        while True:
            try:
                conn = socket.create_connection(("algo-1", 5555), timeout=5)
                conn.sendall(marker.encode() + b"\n")
                reply = conn.recv(4096)
                conn.close()
                if reply.startswith(b"ACK"):
                    say("acknowledged=" + str(reply.decode().strip() == "ACK " + marker))
                    break
            except OSError as e:
                if time.time() > deadline:
                    say("peer unreachable:", e)
                    sys.exit(1)
            time.sleep(0.2)

def own_address():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("198.18.0.1", 9))
    return probe.getsockname()[0]

if hp.get("targets"):
    # Every IPv6 address in its namespace, by interface.
    with open("/proc/net/if_inet6") as addresses:
        say("ipv6-on=" + ",".join(sorted({line.split()[-1] for line in addresses})))

for target in filter(None, hp.get("targets", "").split(",")):
    host, port = target.rsplit(":", 1)
    if host == "gateway":
        # Its own host, at the host's end of its veth (the instance's default gateway).
        host = str(ipaddress.ip_address(own_address()) - 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        say("reach " + target + "=ok")
    except OSError as e:
        say("reach " + target + "=fail", e)
"#;

fn program(c: &Coordinator) -> String {
    c.install_program("network.py", NETWORK_PROGRAM)
}

fn job(c: &Coordinator, name: &str, instances: u32, hyperparameters: Value) -> Value {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program(c));
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([]);
    r["HyperParameters"] = hyperparameters;
    r["ResourceConfig"]["InstanceCount"] = json!(instances);
    r["StoppingCondition"] = json!({"MaxRuntimeInSeconds": 120});
    r
}

fn finished(c: &Coordinator, name: &str) -> Value {
    c.wait_json_for(Duration::from_secs(90), &["training-jobs", "describe", name], |j| {
        matches!(j["TrainingJobStatus"].as_str(), Some("Completed" | "Failed" | "Stopped"))
    })
}

/// Simulated hosts need root; on a machine without it the suite says so instead of passing.
fn lan_or_explain() -> netns::Lan {
    assert!(netns::available(), "these tests need root and iproute2 (they create network namespaces)");
    netns::Lan::new()
}

#[test]
fn peers_talk_through_their_agents_and_encryption_hides_the_bytes_on_the_wire() {
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let agent_a = c.start_agent_on(&a, &lan, "host-a", &["--advertise-vcpus", "8"]);
    let agent_b = c.start_agent_on(&b, &lan, "host-b", &["--advertise-vcpus", "8"]);

    for (name, encrypted) in [("peers-plain", false), ("peers-encrypted", true)] {
        let seed = format!("c9a3f5-{name}-rekram");
        let marker: String = seed.chars().rev().collect::<String>().to_uppercase();
        let mut request = job(&c, name, 2, json!({"mode": "exchange"}));
        request["Environment"] = json!({"MARKER_SEED": seed});
        request["EnableInterContainerTrafficEncryption"] = json!(encrypted);
        let capture_file = c.dir.path().join(format!("{name}.pcap"));
        let mut capture = lan.capture(&capture_file);
        c.create_training_job(&request);
        let described = finished(&c, name);
        capture.stop();
        let text = c.logs(name);
        assert_eq!(described["TrainingJobStatus"], "Completed", "{described:#}\n{text}");
        assert!(text.contains("algo-1 received-marker=True"), "{text}");
        assert!(text.contains("algo-2 acknowledged=True"), "{text}");
        // Both instances ran at once, on different hosts.
        let on_wire = netns::file_contains(&capture_file, marker.as_bytes());
        let bytes = std::fs::metadata(&capture_file).map(|m| m.len()).unwrap_or_default();
        assert!(
            bytes > 1000,
            "the capture recorded the LAN's traffic ({bytes} bytes)\n{}\n{}\n{described:#}",
            agent_a.log(),
            agent_b.log()
        );
        // The ClientHello names the job's certificate (SNI): the hop was TLS exactly when asked for.
        assert_eq!(netns::file_contains(&capture_file, b".jobs.trainyard"), encrypted, "TLS on the wire");
        if encrypted {
            assert!(!on_wire, "the marker crossed the LAN in plaintext although the job asked for encryption");
        } else {
            assert!(on_wire, "the plain job's marker should be visible on the LAN: is the capture working?");
        }
    }
}

/// A TCP listener in the test's namespace (the LAN's gateway, and "the internet" address): accepts
/// and closes connections until the test ends.
fn listen_everywhere() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    port
}

/// The lines one instance (`algo-N`) printed, from a job's logs.
fn lines_of(log: &str, instance: &str) -> String {
    log.lines().filter(|l| l.contains(&format!("{instance} "))).collect::<Vec<_>>().join("\n")
}

/// The `reach` lines of a job's logs: target → whether it connected.
fn reached(text: &str) -> std::collections::BTreeMap<String, bool> {
    text.lines()
        .filter_map(|l| l.split("reach ").nth(1))
        .filter_map(|rest| {
            let word = rest.split_whitespace().next()?;
            let (target, outcome) = word.rsplit_once('=')?;
            Some((target.to_string(), outcome == "ok"))
        })
        .collect()
}

/// A DNS server for one name, on `address` port 53 (UDP), until the test ends: `name` has the
/// IPv4 address `answer`, no IPv6 one; any other name does not exist.
fn serve_one_name(address: std::net::Ipv4Addr, name: &str, answer: std::net::Ipv4Addr) {
    let socket = std::net::UdpSocket::bind((address, 53)).expect("bind port 53 on the LAN's gateway");
    // The name as a query spells it: length-prefixed labels, then a zero.
    let mut wire: Vec<u8> = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend(label.as_bytes());
    }
    wire.push(0);
    std::thread::spawn(move || {
        let mut query = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut query) {
            // Header (12 bytes), then the question: the name, its type and class (4 bytes).
            if n < 12 + wire.len() + 4 {
                continue;
            }
            let question = &query[12..n];
            let ours = question[..wire.len()].eq_ignore_ascii_case(&wire);
            let kind = u16::from_be_bytes([question[wire.len()], question[wire.len() + 1]]);
            let answers = u16::from(ours && kind == 1);
            let rcode = if ours { 0 } else { 3 };
            let mut reply = Vec::with_capacity(n + 16);
            reply.extend(&query[..2]);
            reply.extend([0x81, 0x80 | rcode, 0, 1, 0, answers as u8, 0, 0, 0, 0]);
            reply.extend(&question[..wire.len() + 4]);
            if answers == 1 {
                // A pointer to the question's name, A, IN, a minute, four bytes.
                reply.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend(answer.octets());
            }
            let _ = socket.send_to(&reply, from);
        }
    });
}

#[test]
fn instances_resolve_names_through_the_resolver_the_agent_gives_them() {
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let host = lan.add_host();
    // A resolver on the LAN, as a site's own: the instances are told of it by the operator.
    let answer = std::net::Ipv4Addr::new(198, 51, 100, 7);
    serve_one_name(lan.gateway, "data.trainyard.test", answer);
    let resolv_conf = c.write("instance-resolv.conf", &format!("nameserver {}\noptions timeout:2\n", lan.gateway));
    let resolv_conf = resolv_conf.to_str().expect("utf-8");
    let _agent =
        c.start_agent_on(&host, &lan, "resolving", &["--advertise-vcpus", "8", "--instance-resolv-conf", resolv_conf]);
    c.create_training_job(&job(
        &c,
        "resolver",
        1,
        json!({"mode": "resolve", "names": "data.trainyard.test,missing.trainyard.test"}),
    ));
    let done = finished(&c, "resolver");
    let log = c.logs("resolver");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{log}");
    assert!(log.contains(&format!("resolver nameserver {}|options timeout:2", lan.gateway)), "{log}");
    assert!(log.contains("resolved data.trainyard.test=198.51.100.7"), "{log}");
    assert!(log.contains("resolved missing.trainyard.test failed"), "{log}");
}

#[test]
fn isolated_jobs_reach_their_peers_and_nothing_else() {
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let outside = format!("subnet-outside={}/32", lan.outside);
    let args = ["--advertise-vcpus", "8", "--vpc-network", &outside, "--vpc-network", "sg-any="];
    let _agent_a = c.start_agent_on(&a, &lan, "host-a", &args);
    let _agent_b = c.start_agent_on(&b, &lan, "host-b", &args);

    // Things an isolated job must not reach: the coordinator, a server on the coordinator's host,
    // "the internet", the hosts (their own included) and another job's instance.
    let port = listen_everywhere();
    let coordinator_port = c.address.rsplit(':').next().expect("port").to_string();
    // A service on each host, on every address: daemons, killed with their process groups when
    // the test ends, also when it fails.
    let _host_services: Vec<trainyard_testkit::Daemon> = [("a", &a), ("b", &b)]
        .into_iter()
        .map(|(name, host)| {
            let mut server = host.command("python3");
            server.args([
                "-c",
                "import socket\ns=socket.socket()\ns.bind(('0.0.0.0',7000))\ns.listen()\nwhile True: s.accept()[0].close()",
            ]);
            trainyard_testkit::Daemon::spawn(&format!("server-on-host-{name}"), server, c.dir.path())
        })
        .collect();
    // The other job has an instance on each host: an instance's address is routable on its own
    // host only, and every probing job shares a host with one of them.
    c.create_training_job(&job(&c, "neighbour", 2, json!({"mode": "serve", "seconds": "60"})));
    let mut neighbours: Vec<String> = Vec::new();
    let started = trainyard_testkit::wait_until(Duration::from_secs(30), || {
        neighbours = c
            .logs("neighbour")
            .split("address=")
            .skip(1)
            .filter_map(|r| r.split_whitespace().next().map(|a| format!("{a}:6000")))
            .collect();
        neighbours.len() == 2
    });
    assert!(started, "the neighbour job did not start: {neighbours:?}");
    // ... nor the agents' own listeners (their peer forwarders).
    let agents = c.json(&["agents", "list"]);
    let peer_listeners: Vec<String> = agents["Agents"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["PeerAddress"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    assert_eq!(peer_listeners.len(), 2, "{agents:#}");
    let peer_listener_of = |id: &str| -> String {
        agents["Agents"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["AgentId"] == id))
            .and_then(|x| x["PeerAddress"].as_str())
            .expect("the agent's peer address")
            .to_string()
    };
    let mut targets = vec![
        format!("{}:{coordinator_port}", lan.gateway),
        format!("{}:{port}", lan.gateway),
        format!("{}:{port}", lan.outside),
        format!("{}:7000", a.address),
        format!("{}:7000", b.address),
        "gateway:7000".to_string(),
    ];
    targets.extend(neighbours.iter().cloned());
    targets.extend(peer_listeners);
    let hyperparameters = json!({"mode": "probe", "targets": targets.join(",")});

    let mut isolated = job(&c, "isolated", 2, hyperparameters.clone());
    isolated["EnableNetworkIsolation"] = json!(true);
    // Two instances: one on each host (a job's instances go to distinct agents).
    let mut open = job(&c, "open", 2, hyperparameters.clone());
    open["HyperParameters"]["exchange"] = json!("no");
    open["EnableNetworkIsolation"] = json!(false);
    let mut vpc = job(&c, "in-a-vpc", 1, hyperparameters);
    vpc["VpcConfig"] = json!({"Subnets": ["subnet-outside"], "SecurityGroupIds": ["sg-any"]});
    for request in [&isolated, &open, &vpc] {
        c.create_training_job(request);
    }
    for name in ["isolated", "open", "in-a-vpc"] {
        let described = finished(&c, name);
        assert_eq!(described["TrainingJobStatus"], "Completed", "{name}: {described:#}\n{}", c.logs(name));
    }

    // Isolated: its peers, and nothing else (each instance tried every target).
    let text = c.logs("isolated");
    assert!(text.contains("algo-1 received-marker=True") && text.contains("algo-2 acknowledged=True"), "{text}");
    let isolated_reached = reached(&text);
    assert_eq!(isolated_reached.len(), targets.len(), "{text}");
    assert!(isolated_reached.values().all(|ok| !ok), "an isolated job reached something: {isolated_reached:?}");

    // Without isolation: what the host reaches, but nothing of its own host (a service on any of
    // the host's addresses, its agent's peer listener) and no instance of another job.
    let open_log = c.logs("open");
    let mut hosts_seen = Vec::new();
    for instance in ["algo-1", "algo-2"] {
        let open_reached = reached(&lines_of(&open_log, instance));
        assert_eq!(open_reached.len(), targets.len(), "{open_log}");
        // Which host it ran on: the one whose service it could not reach.
        let own = [("host-a", a.address), ("host-b", b.address)]
            .into_iter()
            .find(|(_, address)| open_reached.get(&format!("{address}:7000")) == Some(&false));
        let Some((own_id, own_address)) = own else {
            panic!(
                "{instance} of the open job reached the services of both hosts, its own among them: {open_reached:?}"
            )
        };
        hosts_seen.push(own_id);
        let unreachable = [format!("{own_address}:7000"), "gateway:7000".to_string(), peer_listener_of(own_id)];
        let expected: std::collections::BTreeMap<String, bool> =
            targets.iter().map(|t| (t.clone(), !unreachable.contains(t) && !neighbours.contains(t))).collect();
        assert_eq!(open_reached, expected, "{instance} of the open job, on {own_id}");
    }
    hosts_seen.sort_unstable();
    assert_eq!(hosts_seen, ["host-a", "host-b"], "the open job's two instances ran on one host");
    // The hosts' ends of the instances' veths (kept for the next instances) have no IPv6 address
    // either.
    let ip_in = |namespace: &str, args: &[&str]| -> String {
        let out = std::process::Command::new("ip").args(["-n", namespace]).args(args).output().expect("ip");
        assert!(out.status.success(), "ip -n {namespace} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for host in [&a, &b] {
        assert!(ip_in(&host.namespace, &["-o", "link", "show"]).contains(": tyv"), "no veth on {}", host.namespace);
        let addresses = ip_in(&host.namespace, &["-6", "-o", "addr", "show"]);
        assert!(!addresses.contains(": tyv"), "{}: {addresses}", host.namespace);
    }
    // No instance has an IPv6 address but its loopback's (none on its veth): nothing to reach the
    // host with over IPv6, where the rules above (IPv4 ones) would not hold.
    for (name, text) in [("isolated", &text), ("open", &open_log)] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("ipv6-on=")).collect();
        assert_eq!(lines.len(), 2, "{name}: {text}");
        assert!(lines.iter().all(|l| l.trim_end().ends_with("ipv6-on=lo")), "{name}: {lines:?}");
    }

    // With a VpcConfig: its subnet's allow-list only.
    let vpc_reached = reached(&c.logs("in-a-vpc"));
    let expected: std::collections::BTreeMap<String, bool> =
        targets.iter().map(|t| (t.clone(), t.starts_with(&lan.outside.to_string()))).collect();
    assert_eq!(vpc_reached, expected);
}

#[test]
fn a_vpc_name_the_agent_does_not_know_fails_the_job_with_the_field_named() {
    let c = Coordinator::start();
    let _agent = c.start_agent("plain-host", &["--advertise-vcpus", "8"], &[]);
    let mut request = job(&c, "unknown-subnet", 1, json!({"mode": "probe"}));
    request["VpcConfig"] = json!({"Subnets": ["subnet-nowhere"], "SecurityGroupIds": ["sg-1"]});
    c.create_training_job(&request);
    let described = finished(&c, "unknown-subnet");
    assert_eq!(described["TrainingJobStatus"], "Failed");
    let reason = described["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("VpcConfig.Subnets[0] 'subnet-nowhere'"), "{reason}");
}

#[test]
fn an_agent_without_namespaces_never_gets_an_isolated_job() {
    let c = Coordinator::start();
    let plain = c.start_agent("no-namespaces", &["--advertise-vcpus", "8", "--no-network-namespaces"], &[]);
    plain.expect_log("instances run in the host's network: no isolation, no distributed peers");
    let agents = c.json(&["agents", "list"]);
    let entry = &agents["Agents"][0];
    assert_eq!(entry["NetworkIsolation"], false, "{agents:#}");
    assert!(
        entry["NetworkIsolationNote"].as_str().unwrap_or_default().contains("--no-network-namespaces"),
        "{agents:#}"
    );

    let mut isolated = job(&c, "needs-isolation", 1, json!({"mode": "probe"}));
    isolated["EnableNetworkIsolation"] = json!(true);
    c.create_training_job(&isolated);
    // A job without isolation runs on that agent meanwhile: the queue is not blocked.
    c.create_training_job(&job(&c, "no-isolation", 1, json!({"mode": "probe"})));
    assert_eq!(finished(&c, "no-isolation")["TrainingJobStatus"], "Completed");
    let pending = c.json(&["training-jobs", "describe", "needs-isolation"]);
    assert_eq!(pending["TrainingJobStatus"], "InProgress", "{pending:#}");
    assert_eq!(pending["SecondaryStatus"], "Pending", "{pending:#}");
    let message =
        pending["SecondaryStatusTransitions"].as_array().and_then(|t| t.last()).map(|t| t["StatusMessage"].to_string());
    assert!(message.unwrap_or_default().contains("network isolation"), "{pending:#}");

    // An agent that can isolate picks it up.
    let _capable = c.start_agent("with-namespaces", &["--advertise-vcpus", "8"], &[]);
    assert_eq!(finished(&c, "needs-isolation")["TrainingJobStatus"], "Completed");
}

#[test]
fn when_one_instance_fails_the_job_fails_and_the_others_are_stopped() {
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let _agent_a = c.start_agent_on(&a, &lan, "host-a", &["--advertise-vcpus", "8", "--stop-grace-seconds", "2"]);
    let _agent_b = c.start_agent_on(&b, &lan, "host-b", &["--advertise-vcpus", "8", "--stop-grace-seconds", "2"]);
    let started = std::time::Instant::now();
    c.create_training_job(&job(&c, "one-fails", 2, json!({"fail": "algo-2"})));
    let described = finished(&c, "one-fails");
    assert_eq!(described["TrainingJobStatus"], "Failed", "{described:#}");
    assert!(started.elapsed() < Duration::from_secs(40), "algo-1 was not stopped: it slept on");
    // Both instances are over: the agents hold nothing.
    let agents = c.wait_json(&["agents", "list"], |a| {
        a["Agents"]
            .as_array()
            .is_some_and(|list| list.iter().all(|x| x["Running"].as_array().is_some_and(|r| r.is_empty())))
    });
    assert!(agents["Agents"].as_array().is_some_and(|a| a.len() == 2), "{agents:#}");
}

/// The network namespaces agent `id` holds on this machine (named `ty-<id>-<slot>`).
fn namespaces_of_agent(id: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("ty-{id}-")))
        .collect()
}

/// An agent makes namespaces ready before any instance asks; ended instances' namespaces are kept
/// for the next ones (a few, empty) and the next instance runs in one of them; those of a killed
/// agent are removed when it starts again (it records them before creating them).
#[test]
fn namespaces_are_recycled_empty_and_do_not_outlive_a_crashed_agent() {
    let c = Coordinator::start();
    let id = "leaky-host";
    let namespaces = || namespaces_of_agent(id);
    let mut agent = c.start_agent(id, &["--advertise-vcpus", "8"], &[]);
    let idle_at_most = 4;
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(20), || namespaces().len() == idle_at_most),
        "no namespaces made ready ahead of instances: {:?}",
        namespaces()
    );
    for i in 0..12 {
        c.create_training_job(&job(&c, &format!("short-{i}"), 1, json!({"mode": "probe"})));
    }
    for i in 0..12 {
        assert_eq!(finished(&c, &format!("short-{i}"))["TrainingJobStatus"], "Completed");
    }
    // Ended instances' namespaces are kept for the next ones, a few at most, and empty.
    let pids = |namespace: &str| {
        let out = std::process::Command::new("ip").args(["netns", "pids", namespace]).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).split_whitespace().count()
    };
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || namespaces().len() <= idle_at_most),
        "{:?}",
        namespaces()
    );
    assert!(namespaces().iter().all(|n| pids(n) == 0), "an idle namespace holds a process");
    let idle = namespaces();

    c.create_training_job(&job(&c, "long", 1, json!({"mode": "serve", "seconds": "60"})));
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(30), || namespaces().iter().filter(|n| pids(n) > 0).count()
            == 1),
        "no namespace holds the running job"
    );
    let holding: Vec<String> = namespaces().into_iter().filter(|n| pids(n) > 0).collect();
    assert!(idle.contains(&holding[0]), "the job got a new namespace {holding:?}, not an idle one of {idle:?}");
    let left = namespaces();
    c.expect_log(&format!("agent stream broke agent=\"{id}\""));
    agent.signal(trainyard_testkit::SIGKILL);
    let _ = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(namespaces(), left, "a killed agent cannot clean up: its namespace is still there");
    // Restarted without namespaces made ahead, so that whatever is left is the killed run's.
    let _agent = c.start_agent(id, &["--advertise-vcpus", "8", "--ready-namespaces", "0"], &[]);
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || namespaces().is_empty()),
        "left behind: {:?}",
        namespaces()
    );
}

/// `ip` dies after creating a namespace (as a SIGTERM to the agent's process group at shutdown
/// ends it): the agent removes what it made instead of forgetting it, and still runs jobs.
#[test]
fn a_namespace_whose_ip_died_after_making_it_is_removed() {
    use std::os::unix::fs::PermissionsExt;
    let c = Coordinator::start();
    let id = "half-made-host";
    let namespaces = || namespaces_of_agent(id);
    let real_ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("ip (iproute2)");
    let wrappers = c.dir.path().join("wrappers");
    std::fs::create_dir_all(&wrappers).expect("dir");
    let made = c.dir.path().join("first-netns-add");
    // The first `netns add` makes the namespace, then its `ip` dies of a SIGTERM.
    let wrapper = format!(
        "#!/bin/sh\nif [ \"$1\" = netns ] && [ \"$2\" = add ] && mkdir {made} 2>/dev/null; then\n  {real_ip} \"$@\"\n  kill -TERM $$\nfi\nexec {real_ip} \"$@\"\n",
        made = made.display()
    );
    std::fs::write(wrappers.join("ip"), wrapper).expect("write");
    std::fs::set_permissions(wrappers.join("ip"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", wrappers.display(), std::env::var("PATH").unwrap_or_default());
    let mut agent = c.start_agent(id, &["--advertise-vcpus", "8"], &[("PATH", path.as_str())]);
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(20), || made.exists()
            && agent.log().contains("no network namespace made ready ahead of instances")),
        "the wrapper's first `netns add` did not happen:\n{}",
        agent.log()
    );
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || namespaces().is_empty()),
        "the namespace its dead `ip` made was forgotten: {:?}",
        namespaces()
    );
    c.create_training_job(&job(&c, "after-a-dead-ip", 1, json!({"mode": "probe"})));
    assert_eq!(finished(&c, "after-a-dead-ip")["TrainingJobStatus"], "Completed");
    agent.signal(trainyard_testkit::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", agent.log());
    assert_eq!(namespaces(), Vec::<String>::new(), "a stopped agent leaves no namespace");
}

/// Appends `<pid> <time in ns>` to the file `ticks` every 50 ms for `seconds`, then saves a model.
const TICKER: &str = r#"#!/usr/bin/env python3
import json, os, time
hp = json.load(open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json")))
end = time.time() + float(hp["seconds"])
with open(hp["ticks"], "a") as ticks:
    while time.time() < end:
        ticks.write(f"{os.getpid()} {time.time_ns()}\n")
        ticks.flush()
        time.sleep(0.05)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
print("done", flush=True)
"#;

/// Each process's first and last tick, in the order they started.
fn tick_spans(file: &std::path::Path) -> Vec<(u64, u64)> {
    let mut spans: Vec<(String, u64, u64)> = Vec::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let Some((pid, at)) = line.split_once(' ') else { continue };
        let Ok(at) = at.parse::<u64>() else { continue };
        match spans.iter_mut().find(|s| s.0 == pid) {
            Some(span) => span.2 = at,
            None => spans.push((pid.to_string(), at, at)),
        }
    }
    spans.into_iter().map(|(_, first, last)| (first, last)).collect()
}

#[test]
fn a_partitioned_agent_stops_its_work_before_a_retry_runs_elsewhere() {
    let mut lan = lan_or_explain();
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    std::fs::write(&config, "heartbeat_interval_ms = 300\n").expect("write");
    let c = Coordinator::start_for_lan(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--agent-lost-after-seconds",
        "2",
        "--agent-lease-seconds",
        "4",
    ]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let agent_a = c.start_agent_on(&a, &lan, "host-a", &["--advertise-vcpus", "8"]);
    agent_a.expect_log("no word from the coordinator for longer than the lease: stopping every instance (fencing)");
    agent_a.expect_log("coordinator unreachable or stream ended");
    c.expect_log("agent lost: no heartbeat agent=host-a");
    // The agent gives up on its connection (HTTP/2 pings unanswered) and reconnects after the
    // partition; when the old connection's end finally reaches the coordinator it is a broken one.
    c.expect_log("agent stream broke agent=\"host-a\"");
    let ticker = c.install_program("ticker.py", TICKER);
    let request = |name: &str, seconds: &str| {
        let ticks = c.shared_file(&format!("{name}.ticks"));
        let mut r = job(&c, name, 1, json!({"seconds": seconds, "ticks": ticks.display().to_string()}));
        r["AlgorithmSpecification"]["TrainingImage"] = json!(ticker);
        r["RetryStrategy"] = json!({"MaximumRetryAttempts": 1});
        (r, ticks)
    };

    // Shorter than the heartbeat timeout: nothing happens, the job goes on and completes.
    let (steady, _) = request("steady", "3");
    c.create_training_job(&steady);
    c.wait_json(&["training-jobs", "describe", "steady"], |d| d["SecondaryStatus"] == "Training");
    a.partition_from(lan.gateway);
    std::thread::sleep(Duration::from_millis(700));
    a.heal();
    let done = finished(&c, "steady");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let transitions = done["SecondaryStatusTransitions"].to_string();
    assert!(!transitions.contains("Restarting"), "a short partition restarts nothing: {transitions}");

    // Longer than the lease: the coordinator declares host-a lost and retries the job on host-b,
    // but only after host-a has stopped its copy itself. The two copies never run at once.
    let (fenced, ticks) = request("fenced", "8");
    c.create_training_job(&fenced);
    c.wait_json(&["training-jobs", "describe", "fenced"], |d| d["SecondaryStatus"] == "Training");
    let agent_b = c.start_agent_on(&b, &lan, "host-b", &["--advertise-vcpus", "8"]);
    std::thread::sleep(Duration::from_millis(500));
    a.partition_from(lan.gateway);
    let waiting = c.wait_json(&["training-jobs", "describe", "fenced"], |d| {
        d["SecondaryStatusTransitions"].to_string().contains("Restarting")
    });
    let message = waiting["SecondaryStatusTransitions"].to_string();
    assert!(message.contains("once the lost copy has stopped itself: agent host-a was lost"), "{message}");
    let done = finished(&c, "fenced");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let transitions = done["SecondaryStatusTransitions"].to_string();
    assert!(transitions.contains("s for the lost copy to stop itself (fencing)"), "{transitions}");
    assert!(transitions.contains("Launching on host-b"), "{transitions}");
    assert!(agent_a.log().contains("stopping every instance (fencing)"), "{}", agent_a.log());
    let spans = tick_spans(&ticks);
    assert_eq!(spans.len(), 2, "two attempts: {spans:?}");
    assert!(
        spans[0].1 < spans[1].0,
        "the first copy's last tick ({}) comes before the retry's first ({}): never both at once",
        spans[0].1,
        spans[1].0
    );

    // Healed, host-a comes back (its fenced instance reported and forgotten) and takes work again.
    a.heal();
    c.wait_json(&["agents", "list"], |l| {
        l["Agents"].as_array().is_some_and(|a| a.iter().any(|x| x["AgentId"] == "host-a" && x["State"] == "ready"))
    });

    // Longer than the heartbeat timeout, shorter than the lease: declared lost, the retry waits for
    // the lease; host-a comes back first and is told to kill the copy it no longer owns.
    drop(agent_b);
    let (healed, ticks) = request("healed", "6");
    c.create_training_job(&healed);
    c.wait_json(&["training-jobs", "describe", "healed"], |d| d["SecondaryStatus"] == "Training");
    a.partition_from(lan.gateway);
    c.wait_json(&["training-jobs", "describe", "healed"], |d| {
        d["SecondaryStatusTransitions"].to_string().contains("Restarting")
    });
    a.heal();
    let done = finished(&c, "healed");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let spans = tick_spans(&ticks);
    assert_eq!(spans.len(), 2, "two attempts: {spans:?}");
    assert!(spans[0].1 < spans[1].0, "never both at once: {spans:?}");
}

/// What gloo (PyTorch's CPU backend) does to find its peers: each rank resolves its own host name,
/// listens on that address, publishes `address:port` through a store on algo-1, and dials every
/// other rank's published address. Also: the interface in SM_NETWORK_INTERFACE_NAME (gloo's
/// GLOO_SOCKET_IFNAME, NCCL's NCCL_SOCKET_IFNAME) has that address first, reverse lookups of
/// peers answer locally (IPv4 and v4-mapped), and what a client sees at a peer port nobody
/// listens on.
const RENDEZVOUS: &str = r#"#!/usr/bin/env python3
import fcntl, os, socket, struct, sys, time
def say(*a): print(*a, flush=True)
host = socket.gethostname()
me = socket.gethostbyname(host)
ifname = os.environ["SM_NETWORK_INTERFACE_NAME"]
probe = socket.socket()
first = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", ifname.encode()))[20:24])
say(f"{host} resolves={me} interface={first}")
peers = [h for h in os.environ["SM_HOSTS"].strip("[]").replace('"', "").split(",") if h != host]
for peer in peers:
    address = socket.gethostbyname(peer)
    started = time.time()
    names = (socket.gethostbyaddr(address)[0], socket.getnameinfo(("::ffff:" + address, 0), socket.NI_NAMEREQD)[0])
    say(f"{host} reverse {address}={names[0]} mapped={names[1]} seconds={time.time() - started:.2f}")
data = socket.socket()
data.bind((me, 0))
data.listen()
mine = f"{me}:{data.getsockname()[1]}"
def connect(target, attempts=300):
    for _ in range(attempts):
        try:
            return socket.create_connection(target, timeout=5)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{host}: cannot reach {target}")
if host == "algo-1":
    store = socket.socket()
    store.bind(("0.0.0.0", 29500))
    store.listen()
    conn, _ = store.accept()
    theirs = conn.recv(100).decode()
    conn.sendall(mine.encode())
    conn.close()
else:
    # Before algo-1 listens, its agent resets the connection: retried, as store clients do.
    while True:
        try:
            conn = connect(("algo-1", 29500))
            conn.sendall(mine.encode())
            theirs = conn.recv(100).decode()
            conn.close()
            if theirs:
                break
        except ConnectionResetError:
            pass
        time.sleep(0.1)
say(f"{host} published={mine} peer-published={theirs}")
a, p = theirs.rsplit(":", 1)
out = connect((a, int(p)))
out.sendall(f"token-from-{host}".encode())
inbound, _ = data.accept()
say(f"{host} got={inbound.recv(100).decode()}")
out.close()
if host == "algo-2":
    # A peer port nobody listens on.
    try:
        s = socket.create_connection(("algo-1", 1), timeout=5)
        try:
            outcome = "eof" if s.recv(1) == b"" else "data"
        except ConnectionResetError:
            outcome = "reset"
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        # The reset can arrive before the connect call returns.
        outcome = "reset"
    except OSError as e:
        outcome = f"error:{e}"
    say(f"closed-port={outcome}")
"#;

#[test]
fn each_instance_is_its_algo_n_host_and_a_gloo_style_rendezvous_completes() {
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let _agent_a = c.start_agent_on(&a, &lan, "host-a", &["--advertise-vcpus", "8"]);
    let _agent_b = c.start_agent_on(&b, &lan, "host-b", &["--advertise-vcpus", "8"]);
    let program = c.install_program("rendezvous.py", RENDEZVOUS);
    for (name, encrypted, isolated) in
        [("gloo-plain", false, false), ("gloo-encrypted", true, false), ("gloo-isolated", true, true)]
    {
        let mut request = job(&c, name, 2, json!({}));
        request["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        request["EnableInterContainerTrafficEncryption"] = json!(encrypted);
        request["EnableNetworkIsolation"] = json!(isolated);
        c.create_training_job(&request);
        let described = finished(&c, name);
        let text = c.logs(name);
        assert_eq!(described["TrainingJobStatus"], "Completed", "{described:#}\n{text}");
        for (n, other) in [(1, 2), (2, 1)] {
            let address = format!("10.254.0.{n}");
            assert!(text.contains(&format!("algo-{n} resolves={address} interface={address}")), "{text}");
            assert!(
                text.contains(&format!(
                    "algo-{n} reverse 10.254.0.{other}=algo-{other} mapped=algo-{other} seconds=0.0"
                )),
                "{text}"
            );
            assert!(text.contains(&format!("algo-{n} got=token-from-algo-{other}")), "{text}");
        }
        // The local agent accepts at once (it cannot know yet), then resets before any data when
        // the peer's agent finds nothing listening: not an ordinary end of the connection.
        assert!(text.contains("closed-port=reset"), "{text}");
    }
}

/// A DDP training script: 50 steps, then an all-reduce and an all-gather that prove the replicas
/// stayed in sync.
const DDP_SCRIPT: &str = r#"import torch, torch.distributed as dist
dist.init_process_group("gloo")
torch.manual_seed(dist.get_rank())
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(50):
    opt.zero_grad()
    loss = model(torch.randn(32, 64)).pow(2).mean()
    loss.backward()
    opt.step()
total = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(total)
weights = [p.detach().clone() for p in model.parameters()]
gathered = [torch.zeros_like(weights[0]) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, weights[0])
print(f"rank={dist.get_rank()} world={dist.get_world_size()} allreduce={total.item():.0f} in-sync={all(torch.equal(g, gathered[0]) for g in gathered)}", flush=True)
dist.destroy_process_group()
"#;

/// PyTorch DDP over gloo (torch 2.5.1 from PyPI, CPU) on two simulated hosts, launched the two ways
/// a SageMaker user's job launches it: `torchrun` on every host with algo-1 as master (plain,
/// encrypted with gloo told the interface `SM_NETWORK_INTERFACE_NAME` names, and encrypted and
/// isolated); and AWS's PyTorch training toolkit, as the PyTorch image runs it for the SDK's
/// `distribution={"torch_distributed": {"enabled": True}}`: its `train` entry point reads the
/// SageMaker contract (hosts, current host, interface) and starts `torchrun` itself.
#[test]
fn pytorch_ddp_runs_across_two_hosts_as_torch_distributed_launches_it() {
    let venv = trainyard_testkit::python::pytorch();
    let mut lan = lan_or_explain();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let _agent_a = c.start_agent_on(&a, &lan, "host-a", &["--advertise-vcpus", "8"]);
    let _agent_b = c.start_agent_on(&b, &lan, "host-b", &["--advertise-vcpus", "8"]);
    let ddp = c.install_program("ddp.py", DDP_SCRIPT);
    let launcher = c.install_program(
        "torchrun.sh",
        &format!(
            "#!/bin/sh\nrank=$(( ${{SM_CURRENT_HOST#algo-}} - 1 ))\nexec {venv}/bin/torchrun --nnodes 2 --node-rank $rank \
             --nproc-per-node 1 --master-addr algo-1 --master-port 29500 {ddp}\n",
            venv = venv.display()
        ),
    );
    // What the PyTorch training image sets (its ENV) before its entry point, `train`.
    let toolkit_image = c.install_program(
        "pytorch-image.sh",
        &format!(
            "#!/bin/sh\nexport PATH={venv}/bin:$PATH SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main\n\
             exec train\n",
            venv = venv.display()
        ),
    );
    let code = c.programs_dir().join("ddp-code");
    std::fs::create_dir_all(&code).expect("dir");
    std::fs::write(code.join("ddp.py"), DDP_SCRIPT).expect("write");
    for (name, encrypted, isolated, toolkit) in [
        ("ddp-plain", false, false, false),
        ("ddp-encrypted", true, false, false),
        ("ddp-isolated", true, true, false),
        ("ddp-toolkit", true, true, true),
    ] {
        let mut request = job(&c, name, 2, json!({}));
        request["AlgorithmSpecification"]["TrainingImage"] = json!(if toolkit { &toolkit_image } else { &launcher });
        request["EnableInterContainerTrafficEncryption"] = json!(encrypted);
        request["EnableNetworkIsolation"] = json!(isolated);
        request["StoppingCondition"] = json!({"MaxRuntimeInSeconds": 300});
        if toolkit {
            // As the SDK passes them: JSON-encoded strings.
            request["HyperParameters"] = json!({
                "sagemaker_program": "\"ddp.py\"",
                "sagemaker_submit_directory": format!("\"{}\"", code.display()),
                "sagemaker_torch_distributed_enabled": "true",
            });
        } else if encrypted {
            request["Environment"] = json!({"GLOO_SOCKET_IFNAME": "eth0"});
        }
        c.create_training_job(&request);
        let described = c.wait_json_for(Duration::from_secs(300), &["training-jobs", "describe", name], |j| {
            matches!(j["TrainingJobStatus"].as_str(), Some("Completed" | "Failed" | "Stopped"))
        });
        let text = c.logs(name);
        assert_eq!(described["TrainingJobStatus"], "Completed", "{described:#}\n{text}");
        for rank in 0..2 {
            assert!(text.contains(&format!("rank={rank} world=2 allreduce=3 in-sync=True")), "{name}: {text}");
        }
        if toolkit {
            // The toolkit chose its torchrun launcher, with the contract's hosts: not one process.
            assert!(text.contains("--nnodes 2") && text.contains("--master_addr algo-1"), "{text}");
        }
    }
}
