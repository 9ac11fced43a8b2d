//! Who may use the cluster: TLS on every gRPC connection, API tokens with scopes for clients,
//! join tokens and client certificates for agents, revocation of both. Everything through the real
//! binaries over real sockets.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, INSTANCE_UIDS, TEST_TRAINER, bound_port, example_json, number_after};
use trainyard_testkit::{binary, wait_until};

fn training(c: &Coordinator, name: &str, sleep: &str) -> std::path::PathBuf {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(c.install_program("trainer.py", TEST_TRAINER));
    r["HyperParameters"] = json!({"sleep": sleep});
    c.write(&format!("{name}.json"), &r.to_string())
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Creates an API token through the admin RPC; returns (token, id).
fn token(c: &Coordinator, user: &str, scope: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["tokens", "create", "--user", user, "--scope", scope];
    args.extend_from_slice(extra);
    let created = c.json(&args);
    (created["Token"].as_str().expect("token").to_string(), created["Id"].as_str().expect("id").to_string())
}

fn names(listed: &Value) -> Vec<String> {
    listed["TrainingJobSummaries"]
        .as_array()
        .expect("summaries")
        .iter()
        .filter_map(|s| s["TrainingJobName"].as_str().map(String::from))
        .collect()
}

#[test]
fn tokens_and_scopes_decide_who_sees_creates_and_stops_what() {
    let c = Coordinator::start();
    let _agent = c.start_agent("worker", &["--advertise-vcpus", "16"], &[]);
    let (ana, ana_id) = token(&c, "ana", "submit", &["--description", "ana's laptop"]);
    let (ana_reader, _) = token(&c, "ana", "read", &[]);
    let (bo, _) = token(&c, "bo", "submit", &[]);

    // Without TLS, without a token, with a bad one, or trusting another CA: refused.
    let plain = c.cli(&["--insecure", "training-jobs", "list"]);
    assert_eq!(plain.code(), 6, "plain text against TLS: {}", plain.stderr());
    assert!(plain.stderr().contains("does the coordinator use TLS? Then drop --insecure"), "{}", plain.stderr());
    let anonymous = c.cli_as("", &["training-jobs", "list"]);
    assert_eq!(anonymous.code(), 8, "{}", anonymous.stderr());
    assert!(anonymous.stderr().contains("no API token"), "{}", anonymous.stderr());
    let garbage = c.cli_as("tya_000000000000_0000", &["training-jobs", "list"]);
    assert_eq!(garbage.code(), 8);
    assert!(garbage.stderr().contains("malformed api token"), "{}", garbage.stderr());
    let forged = format!("{}_{}", &ana[..16], "0".repeat(48));
    let out = c.cli_as(&forged, &["training-jobs", "list"]);
    assert_eq!(out.code(), 8, "a right id with a wrong secret: {}", out.stderr());
    let stranger = Coordinator::start();
    let out = Command::new(binary("trainyard"))
        .env("TRAINYARD_COORDINATOR", &c.address)
        .env("TRAINYARD_CA_FILE", stranger.ca_file())
        .env("TRAINYARD_TOKEN", &c.token)
        .args(["training-jobs", "list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "another cluster's CA does not verify this coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("its certificate is not signed by the CA"), "not 'start a coordinator': {stderr}");

    // Each user submits; each sees only their own jobs; the admin sees all.
    let out = c.cli_as(&ana, &["training-jobs", "create", "--file", path(&training(&c, "ana-job", "30"))]);
    out.assert_success();
    c.cli_as(&bo, &["training-jobs", "create", "--file", path(&training(&c, "bo-job", "30"))]).assert_success();
    assert_eq!(names(&c.json_as(&ana, &["training-jobs", "list"])), vec!["ana-job"]);
    assert_eq!(names(&c.json_as(&ana_reader, &["training-jobs", "list"])), vec!["ana-job"]);
    assert_eq!(names(&c.json_as(&bo, &["training-jobs", "list"])), vec!["bo-job"]);
    assert_eq!(names(&c.json(&["training-jobs", "list"])), vec!["ana-job", "bo-job"]);
    // Who did what is in the coordinator's log.
    let log = c.daemon.log();
    for (job, user) in [("ana-job", "ana"), ("bo-job", "bo")] {
        assert!(
            log.lines()
                .any(|l| l.contains("training job created") && l.contains(job) && l.contains(&format!("user={user}"))),
            "{job} by {user} is not in the log"
        );
    }

    // Bo can neither read nor stop Ana's job: for him it does not exist.
    for args in [
        vec!["training-jobs", "describe", "ana-job"],
        vec!["training-jobs", "stop", "ana-job"],
        vec!["training-jobs", "logs", "ana-job"],
        vec!["training-jobs", "metrics", "ana-job"],
    ] {
        let out = c.cli_as(&bo, &args);
        assert_eq!(out.code(), 4, "{args:?}: {}", out.stderr());
        assert!(out.stderr().contains("training job 'ana-job' does not exist"), "{}", out.stderr());
    }
    // A read-only token reads but neither creates nor stops.
    assert_eq!(c.json_as(&ana_reader, &["training-jobs", "describe", "ana-job"])["TrainingJobName"], "ana-job");
    let out = c.cli_as(&ana_reader, &["training-jobs", "stop", "ana-job"]);
    assert_eq!(out.code(), 8);
    assert!(
        out.stderr()
            .contains("StopTrainingJob needs a token with scope 'submit' or more; this token (ana) has scope 'read'"),
        "{}",
        out.stderr()
    );
    let out = c.cli_as(&ana_reader, &["training-jobs", "create", "--file", path(&training(&c, "sneaky", "1"))]);
    assert_eq!(out.code(), 8, "{}", out.stderr());
    assert_eq!(c.cli(&["training-jobs", "describe", "sneaky"]).code(), 4, "nothing was stored");
    // Only admins manage tokens.
    let out = c.cli_as(&ana, &["tokens", "list"]);
    assert_eq!(out.code(), 8);
    assert!(out.stderr().contains("ListTokens needs a token with scope 'admin'"), "{}", out.stderr());
    assert_eq!(c.cli_as(&ana, &["whoami"]).stdout().trim(), "user ana with scope submit");

    // Bo stops his own job; the admin stops Ana's.
    c.cli_as(&bo, &["training-jobs", "stop", "bo-job"]).assert_success();
    c.cli(&["training-jobs", "stop", "ana-job"]).assert_success();
    for job in ["ana-job", "bo-job"] {
        c.wait_json(&["training-jobs", "describe", job], |d| d["TrainingJobStatus"] == "Stopped");
    }

    // Revoked through the API: refused at once. The listing shows when, without secrets.
    c.cli(&["tokens", "revoke", &ana_id]).assert_success();
    let out = c.cli_as(&ana, &["training-jobs", "list"]);
    assert_eq!(out.code(), 8);
    assert!(out.stderr().contains(&format!("api token {ana_id} was revoked")), "{}", out.stderr());
    let tokens = c.json(&["tokens", "list"]);
    let listed = tokens["Tokens"].as_array().expect("tokens");
    let entry = listed.iter().find(|t| t["Id"] == ana_id.as_str()).expect("ana's token is listed");
    assert!(entry["RevocationTime"].is_number(), "{entry:#}");
    assert_eq!(entry["Description"], "ana's laptop");
    assert!(!tokens.to_string().contains(&ana[17..]), "no secret in the listing");

    // Expired tokens are refused; a token revoked offline (another process) within the cache's 5 s.
    let (brief, _) = token(&c, "cy", "read", &["--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(1200));
    let out = c.cli_as(&brief, &["training-jobs", "list"]);
    assert_eq!(out.code(), 8);
    assert!(out.stderr().contains("expired"), "{}", out.stderr());
    let (offline, offline_id) = token(&c, "di", "read", &[]);
    c.cli_as(&offline, &["training-jobs", "list"]).assert_success();
    c.admin(&["tokens", "revoke", &offline_id]);
    assert!(
        wait_until(Duration::from_secs(8), || c.cli_as(&offline, &["training-jobs", "list"]).code() == 8),
        "a token revoked with trainyard-coordinator is refused within the cache's lifetime"
    );
}

#[test]
fn agents_join_once_and_a_revoked_agent_is_refused_and_its_work_ends() {
    let c = Coordinator::start_with_args(&["--agent-lost-after-seconds", "2"]);
    // Every refusal below is logged, as an operator would want it.
    for expected in [
        "join refused agent=intruder error=unauthenticated: unknown join token",
        "agent session refused: wrong agent id certificate_of=revoked-host claims=impostor",
        r#"agent revoked agent="revoked-host""#,
        "agent session refused error=permission denied: agent revoked-host was revoked",
        // The revoked agent is killed below, possibly while it tries a stream again.
        r#"agent stream broke agent="revoked-host""#,
    ] {
        c.expect_log(expected);
    }

    // A made-up join token, or an API token, buys nothing.
    let fingerprint = c.join_token.rsplit('_').next().expect("fingerprint").to_string();
    let made_up = format!("tyj_{}_{}_{fingerprint}", "1".repeat(12), "2".repeat(48));
    let mut intruder = c.spawn_agent("intruder", &[], &[("TRAINYARD_JOIN_TOKEN", &made_up)]);
    assert!(intruder.wait_exit(Duration::from_secs(20)).is_some_and(|s| !s.success()), "{}", intruder.log());
    assert!(intruder.log().contains("refused to let this agent join: unauthenticated: unknown join token"));
    let mut confused = c.spawn_agent("confused", &[], &[("TRAINYARD_JOIN_TOKEN", &c.token)]);
    assert!(confused.wait_exit(Duration::from_secs(20)).is_some());
    assert!(confused.log().contains("this is not a join token"), "{}", confused.log());
    // A join token of another cluster: its CA fingerprint does not match this coordinator.
    let other = Coordinator::start();
    let mut lost = c.spawn_agent("lost", &[], &[("TRAINYARD_JOIN_TOKEN", &other.join_token)]);
    assert!(lost.wait_exit(Duration::from_secs(20)).is_some());
    assert!(lost.log().contains("does not match the fingerprint in the join token"), "{}", lost.log());

    // Joining once is enough: with its join token revoked, the agent restarts on its certificate.
    let mut first = c.start_agent("revoked-host", &["--advertise-vcpus", "16"], &[]);
    let identity = c.dir.path().join("agents/revoked-host/identity");
    let key_mode = std::fs::metadata(identity.join("agent-key.pem")).expect("key").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777, 0o600);
    let join_id = c.join_token.split('_').nth(1).expect("id").to_string();
    c.cli(&["tokens", "revoke", &join_id]).assert_success();
    first.signal(trainyard_testkit::SIGTERM);
    first.wait_exit(Duration::from_secs(20)).expect("stopped");
    let mut agent = c.start_agent("revoked-host", &["--advertise-vcpus", "16"], &[]);
    // Revoked below: its stream is closed and it is refused from then on.
    agent.expect_log("coordinator unreachable or stream ended");

    // A certificate speaks for its own agent only.
    let copy = c.dir.path().join("stolen-identity");
    std::fs::create_dir_all(&copy).expect("dir");
    for file in ["ca.pem", "agent.pem", "agent-key.pem"] {
        std::fs::copy(identity.join(file), copy.join(file)).expect("copy");
    }
    std::fs::write(copy.join("agent-id"), "impostor").expect("write");
    let impostor = c.spawn_agent("impostor", &["--identity-dir", path(&copy)], &[]);
    assert!(
        wait_until(Duration::from_secs(20), || impostor
            .log()
            .contains("belongs to agent 'revoked-host', not to 'impostor'")),
        "{}",
        impostor.log()
    );
    assert!(
        c.json(&["agents", "list"])["Agents"].as_array().expect("agents").iter().all(|a| a["AgentId"] != "impostor")
    );
    impostor.signal(trainyard_testkit::SIGKILL);

    // Revoked while it runs a job: the job ends (failed: its agent is gone), the agent is refused.
    let job = training(&c, "on-revoked", "60");
    c.cli(&["training-jobs", "create", "--file", path(&job)]).assert_success();
    c.wait_json(&["training-jobs", "describe", "on-revoked"], |d| d["SecondaryStatus"] == "Training");
    c.cli(&["agents", "revoke", "revoked-host"]).assert_success();
    let ended = c.wait_json(&["training-jobs", "describe", "on-revoked"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(ended["TrainingJobStatus"], "Failed");
    assert!(
        ended["FailureReason"].as_str().unwrap_or_default().contains("agent revoked-host was revoked"),
        "{ended:#}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || agent.log().contains("agent revoked-host was revoked")),
        "the agent is refused when it reconnects:\n{}",
        agent.log()
    );
    // It killed the job's process (fencing), as told before its stream was closed.
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("instance ended job=on-revoked instance=1 state=Failed")),
        "the revoked agent did not stop its instance:\n{}",
        agent.log()
    );
    let state = c.json(&["agents", "list"])["Agents"][0]["State"].clone();
    assert_eq!(state, "revoked", "a revoked agent holds no work");

    // It may come back only by joining again, with a new join token.
    agent.signal(trainyard_testkit::SIGKILL);
    agent.wait_exit(Duration::from_secs(10)).expect("killed");
    std::fs::remove_dir_all(&identity).expect("forget the old identity");
    let fresh = c.cli(&["join-token", "--agent-id", "revoked-host"]);
    fresh.assert_success();
    let _back =
        c.start_agent("revoked-host", &["--advertise-vcpus", "16"], &[("TRAINYARD_JOIN_TOKEN", fresh.stdout().trim())]);
}

#[test]
fn join_tokens_are_single_use_and_a_connected_agent_cannot_be_displaced() {
    let c = Coordinator::start();
    for expected in [
        "join refused agent=second error=unauthenticated: join token",
        "join refused agent=not-the-one error=unauthenticated: join token",
        r#"a second session for a connected agent was refused agent=first"#,
    ] {
        c.expect_log(expected);
    }
    let exits_saying = |mut agent: trainyard_testkit::Daemon, words: &str| {
        assert!(agent.wait_exit(Duration::from_secs(20)).is_some(), "{}", agent.log());
        assert!(agent.log().contains(words), "{}", agent.log());
    };

    // One join token, one agent.
    let once = c.admin(&["join-token"]);
    let first = c.start_agent("first", &["--advertise-vcpus", "8"], &[("TRAINYARD_JOIN_TOKEN", &once)]);
    exits_saying(c.spawn_agent("second", &[], &[("TRAINYARD_JOIN_TOKEN", &once)]), "has been used (1 of 1)");

    // A token for one agent id joins that id only; read from a file, not the command line.
    let bound = c.admin(&["join-token", "--agent-id", "the-one"]);
    exits_saying(
        c.spawn_agent("not-the-one", &[], &[("TRAINYARD_JOIN_TOKEN", &bound)]),
        "is for agent 'the-one', not 'not-the-one'",
    );
    let token_file = c.write_private("join-token", &bound);
    // (Too small for the job below, which must run on "first".)
    let _the_one = c.start_agent("the-one", &["--join-token-file", path(&token_file), "--advertise-vcpus", "1"], &[]);

    // A second process presenting the first agent's own certificate does not cut it off.
    let copy = c.dir.path().join("copied-identity");
    std::fs::create_dir_all(&copy).expect("dir");
    for file in ["ca.pem", "agent.pem", "agent-key.pem", "agent-id"] {
        std::fs::copy(c.dir.path().join("agents/first/identity").join(file), copy.join(file)).expect("copy");
    }
    let mut cmd = Command::new(binary("trainyard-agent"));
    cmd.args(["--coordinator", &c.address, "--id", "first", "--identity-dir", path(&copy), "--work-root"])
        // Under agents/, where the harness looks for what killed agents leave behind.
        .arg(c.dir.path().join("agents/first-copy"))
        .env("RUST_LOG", "info");
    let copy_agent = trainyard_testkit::Daemon::spawn("agent-first-copy", cmd, c.dir.path());
    assert!(
        wait_until(Duration::from_secs(20), || copy_agent.log().contains("coordinator unreachable or stream ended")),
        "{}",
        copy_agent.log()
    );
    let job = training(&c, "on-first", "0.2");
    c.cli(&["training-jobs", "create", "--file", path(&job)]).assert_success();
    let done = c.wait_json(&["training-jobs", "describe", "on-first"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "the first agent kept its session: {done:#}");
    drop(first);
}

#[test]
fn plain_text_is_only_for_loopback_and_needs_no_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let refused = Command::new(binary("trainyard-coordinator"))
        .args(["--insecure", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("allowed on loopback addresses only"), "{stderr}");

    let mut cmd = Command::new(binary("trainyard-coordinator"));
    cmd.args(["--insecure", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data"));
    let mut daemon = trainyard_testkit::Daemon::spawn("coordinator", cmd, dir.path());
    let port = bound_port(&mut daemon, 0);
    let out = Command::new(binary("trainyard"))
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--insecure", "whoami"])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no authentication (the coordinator runs with --insecure): everyone is an admin"
    );
    // TLS against a plain-text coordinator fails instead of silently falling back.
    let out = Command::new(binary("trainyard"))
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca-file"])
        .arg(dir.path().join("data/pki/ca.pem"))
        .args(["--token", "tya_000000000000_000000000000000000000000000000000000000000000000", "whoami"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    daemon.assert_running();
}

/// A rolling upgrade mixes builds: an agent that speaks an agent protocol the coordinator does not
/// is refused with what to upgrade, and `agents list` shows it and why.
#[test]
fn an_agent_of_a_protocol_the_coordinator_does_not_speak_is_refused_and_listed() {
    use trainyard_proto::pb;
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = Command::new(binary("trainyard-coordinator"));
    cmd.args(["--insecure", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data"));
    let mut daemon = trainyard_testkit::Daemon::spawn("coordinator", cmd, dir.path()).checked();
    daemon.expect_log("--insecure");
    daemon.expect_log("no [[roles]] configured");
    daemon.expect_log("agent session refused: incompatible");
    let port = bound_port(&mut daemon, 0);

    // An agent of a build older than protocols sends none (protocol 0).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let refused = runtime.block_on(async {
        let mut client =
            pb::agents_client::AgentsClient::connect(format!("http://127.0.0.1:{port}")).await.expect("connect");
        let register = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Register(pb::Register {
                agent_id: "ancient".into(),
                version: "0.0.1".into(),
                protocol: 0,
                ..Default::default()
            })),
        };
        client.session(tokio_stream::iter(vec![register])).await.err()
    });
    let status = refused.expect("the session is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("agent build 0.0.1 speaks agent protocol 0"), "{}", status.message());
    assert!(status.message().ends_with("upgrade the agent"), "{}", status.message());

    let out = Command::new(binary("trainyard"))
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--insecure", "--output", "json", "agents", "list"])
        .output()
        .expect("run");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ancient = &listed["Agents"][0];
    assert_eq!(ancient["AgentId"], "ancient", "{listed:#}");
    assert_eq!(ancient["State"], "refused", "{listed:#}");
    assert_eq!(ancient["Version"], "0.0.1", "{listed:#}");
    assert!(ancient["Refusal"].as_str().is_some_and(|r| r.ends_with("upgrade the agent")), "{listed:#}");
}

#[test]
fn execution_roles_decide_what_a_job_may_reach_and_add_their_group() {
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        r#"
[[roles]]
arn = "arn:aws:iam::123456789012:role/TrainyardExecution"
user = "nobody"
group = "nogroup"
read = ["s3://trainyard-examples/blobs"]
write = ["s3://trainyard-output/"]
"#,
    )
    .expect("write");
    let c = Coordinator::start_with_args(&["--config", path(&config)]);
    c.expect_log("the role's `user` is no longer used");
    let _agent = c.start_agent("worker", &["--advertise-vcpus", "8"], &[]);

    let program = c.install_program(
        "whoami.sh",
        "#!/bin/sh\necho \"uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ,) join=${TRAINYARD_JOIN_TOKEN:-none}\"\n\
         cat \"$SM_CHANNEL_TRAIN\"/* > /dev/null && echo data-readable\n\
         mkdir -p \"$SM_MODEL_DIR\" && echo trained > \"$SM_MODEL_DIR/model.txt\"\n",
    );
    let request = |name: &str, role: &str, output: &str| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["RoleArn"] = json!(role);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["OutputDataConfig"]["S3OutputPath"] = json!(output);
        c.write(&format!("{name}.json"), &r.to_string())
    };
    let role = "arn:aws:iam::123456789012:role/TrainyardExecution";

    // Inside its role: runs as a uid of its own (not root, not the `user` the configuration still
    // names), with its own group and the role's; reads its data, writes its model.
    c.cli(&["training-jobs", "create", "--file", path(&request("as-nobody", role, "s3://trainyard-output/r/"))])
        .assert_success();
    let done = c.wait_json(&["training-jobs", "describe", "as-nobody"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs("as-nobody"));
    let logs = c.logs("as-nobody");
    let uid = number_after(&logs, "uid=");
    assert!(INSTANCE_UIDS.contains(&uid), "a uid of the agent's range: {logs}");
    assert!(logs.contains(&format!("gid={uid} groups={uid},65534 ")), "its own group and the role's (nogroup): {logs}");
    assert!(logs.contains("join=none"), "the agent's own secrets do not reach the job: {logs}");
    assert!(logs.contains("data-readable"), "{logs}");
    assert!(c.output_dir().join("r/as-nobody/output/model.tar.gz").is_file());

    // Outside it, or with a role nobody configured: refused at submission, every field named.
    let out = c.cli(&["training-jobs", "create", "--file", path(&request("escapes", role, "s3://elsewhere/out/"))]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert!(
        out.stderr().contains(
            "OutputDataConfig.S3OutputPath: 's3://elsewhere/out/' is outside what role \
             'arn:aws:iam::123456789012:role/TrainyardExecution' may write (s3://trainyard-output/)"
        ),
        "{}",
        out.stderr()
    );
    let unknown = "arn:aws:iam::123456789012:role/Admin";
    let out =
        c.cli(&["training-jobs", "create", "--file", path(&request("no-role", unknown, "s3://trainyard-output/"))]);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr().contains("RoleArn: role 'arn:aws:iam::123456789012:role/Admin' is not configured"),
        "{}",
        out.stderr()
    );
    for name in ["escapes", "no-role"] {
        assert_eq!(c.cli(&["training-jobs", "describe", name]).code(), 4, "nothing stored for {name}");
    }
    let mut tuning: Value = example_json("tuning-job.json");
    tuning["TrainingJobDefinition"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] =
        json!("s3://trainyard-examples/other/");
    let file = c.write("tuning.json", &tuning.to_string());
    let out = c.cli(&["tuning-jobs", "create", "--file", path(&file)]);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr().contains("TrainingJobDefinition.InputDataConfig[0].DataSource.S3DataSource.S3Uri: 's3://trainyard-examples/other/' is outside what role"),
        "{}",
        out.stderr()
    );
}

#[test]
fn every_call_that_changes_something_is_audited_once_with_who_and_how_it_ended() {
    let c = Coordinator::start_with_args(&["--log-format", "json"]);
    let (alice, _) = token(&c, "alice", "submit", &[]);
    let (reader, _) = token(&c, "reader", "read", &[]);
    let request = |name: &str| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        c.write(&format!("{name}.json"), &r.to_string())
    };
    let (audited, bad) = (request("audited"), request("bad name!"));
    c.cli_as(&alice, &["training-jobs", "create", "--file", path(&audited)]).assert_success();
    assert!(!c.cli_as(&alice, &["training-jobs", "create", "--file", path(&audited)]).0.status.success());
    assert!(!c.cli_as(&alice, &["training-jobs", "create", "--file", path(&bad)]).0.status.success());
    assert!(!c.cli_as(&reader, &["training-jobs", "stop", "audited"]).0.status.success());
    assert!(!c.cli_as("not-a-token", &["training-jobs", "stop", "audited"]).0.status.success());
    c.cli_as(&alice, &["training-jobs", "stop", "audited"]).assert_success();
    // Cordoning an agent before it joins is allowed; revoking a token nobody has is not.
    c.cli(&["agents", "cordon", "gpu-7"]).assert_success();
    assert!(!c.cli(&["tokens", "revoke", "no-such-token"]).0.status.success());
    // Reads are not audited.
    c.cli_as(&alice, &["training-jobs", "describe", "audited"]).assert_success();

    let entries: Vec<Value> = c
        .daemon
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "audit")
        .map(|l| l["fields"].clone())
        .collect();
    let seen: Vec<String> = entries
        .iter()
        .map(|e| {
            format!("{} {} {} {} {}", e["user"], e["scope"], e["operation"], e["resource"], e["outcome"])
                .replace('"', "")
        })
        .collect();
    assert_eq!(
        seen,
        [
            "e2e admin CreateToken user alice (submit) ok",
            "e2e admin CreateToken user reader (read) ok",
            "alice submit CreateTrainingJob audited ok",
            "alice submit CreateTrainingJob audited AlreadyExists",
            "alice submit CreateTrainingJob bad name! InvalidArgument",
            "reader read StopTrainingJob audited PermissionDenied",
            "- - StopTrainingJob audited Unauthenticated",
            "alice submit StopTrainingJob audited ok",
            "e2e admin CordonAgent gpu-7 (cordon) ok",
            "e2e admin RevokeToken no-such-token NotFound",
        ],
        "{entries:#?}"
    );
    assert!(entries[4]["error"].as_str().is_some_and(|e| e.contains("TrainingJobName")), "{:#}", entries[4]);
}
