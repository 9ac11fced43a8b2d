//! The job boundary, attacked by real jobs: a training program running as an execution role's
//! unprivileged user tries to make the root agent read, upload or overwrite what it must not, and
//! requests try to leave their buckets. Each test asserts the attack failed.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, example_json, number_after};
use trainyard_testkit::nvml::fake_device_node;
use trainyard_testkit::wait_until;

const ROLE: &str = "arn:aws:iam::123456789012:role/TrainyardExecution";

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A coordinator with one role, reading the examples and writing outputs.
fn with_role() -> (Coordinator, tempfile::TempDir) {
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    let role = format!(
        "[[roles]]\narn = \"{ROLE}\"\nread = [\"s3://trainyard-examples/\"]\n\
         write = [\"s3://trainyard-output/\"]\nusers = [\"ana\"]\n"
    );
    std::fs::write(&config, role).expect("write");
    (Coordinator::start_with_args(&["--config", path(&config)]), config_dir)
}

/// Plants links to `$SECRET` (a root-only file) everywhere the agent reads after the run, a link
/// at the agent's old temporary archive path and at the job's log to `$VICTIM` (a root-owned file
/// it must not overwrite), a FIFO in `model/` (reading it would block the agent), then fails.
const PLANTER: &str = r#"#!/bin/sh
base="$SAGEMAKER_BASE_DIR"
mkdir -p "$SM_MODEL_DIR" "$base/output/data" "$base/checkpoints"
echo weights > "$SM_MODEL_DIR/weights.bin"
ln -s "$SECRET" "$SM_MODEL_DIR/key.pem"
ln -s "$(dirname "$SECRET")" "$SM_MODEL_DIR/host-dir"
mkfifo "$SM_MODEL_DIR/pipe"
ln -s "$SECRET" "$base/output/data/leak.txt"
ln -s "$SECRET" "$base/checkpoints/leak.pem"
echo step=1 > "$base/checkpoints/state.txt"
ln -s "$VICTIM" "$base/output/.model.tar.gz"
rm -f "$base/output/training.log"; ln -s "$VICTIM" "$base/output/training.log"
ln -s "$SECRET" "$base/output/failure"
echo "planted as uid $(id -u)"
echo "the job fails on purpose" >&2
exit 1
"#;

#[test]
fn links_a_job_plants_are_never_followed_by_the_agent() {
    let (c, _config) = with_role();
    let agent = c.start_agent("boundary", &["--advertise-vcpus", "8"], &[]);
    agent.expect_log("links and special files in");

    // A root-only secret and a root-owned file, both outside anything the job may reach.
    let host = tempfile::Builder::new().prefix("trainyard-host-").tempdir().expect("dir");
    let secret = host.path().join("secret.pem");
    std::fs::write(&secret, "-----BEGIN PRIVATE KEY----- top-secret-6c1f").expect("write");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let victim = host.path().join("victim.conf");
    std::fs::write(&victim, "untouched\n").expect("write");

    let program = c.install_program("planter.sh", PLANTER);

    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("planter");
    r["RoleArn"] = json!(ROLE);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["OutputDataConfig"]["S3OutputPath"] = json!("s3://trainyard-output/models/");
    r["CheckpointConfig"] = json!({"S3Uri": "s3://trainyard-output/checkpoints/planter/"});
    r["Environment"] = json!({"SECRET": path(&secret), "VICTIM": path(&victim)});
    let file = c.write("planter.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", path(&file)]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "planter"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    let logs = c.logs("planter");
    assert!(logs.contains("planted as uid") && !logs.contains("planted as uid 0"), "it ran unprivileged: {logs}");

    // FailureReason: not the linked secret; the stderr tail instead.
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(!reason.contains("top-secret"), "the secret leaked through FailureReason: {reason}");
    assert!(reason.contains("the job fails on purpose"), "{reason}");

    // model.tar.gz: the file as a file, links as links (empty), no FIFO, no secret anywhere.
    let model = c.output_dir().join("models/planter/output/model.tar.gz");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&model).expect("model")));
    let mut seen = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut contents = String::new();
        let _ = entry.read_to_string(&mut contents);
        assert!(!contents.contains("top-secret"), "{name} carries the secret");
        seen.push((name, entry.header().entry_type()));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("host-dir".to_string(), tar::EntryType::Symlink),
            ("key.pem".to_string(), tar::EntryType::Symlink),
            ("weights.bin".to_string(), tar::EntryType::Regular),
        ],
        "no FIFO, links not followed"
    );
    let data = c.output_dir().join("models/planter/output/output.tar.gz");
    if data.exists() {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&data).expect("data")).read_to_end(&mut bytes).expect("read");
        assert!(!String::from_utf8_lossy(&bytes).contains("top-secret"), "output.tar.gz carries the secret");
    }

    // Checkpoints: the real one synced, the link not.
    let checkpoints = c.output_dir().join("checkpoints/planter");
    assert_eq!(std::fs::read_to_string(checkpoints.join("state.txt")).expect("checkpoint"), "step=1\n");
    assert!(!checkpoints.join("leak.pem").exists(), "a linked checkpoint was copied");

    // The root-owned file was neither overwritten by an archive nor appended to by the log.
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "untouched\n");
    assert!(std::fs::symlink_metadata(&victim).expect("victim").file_type().is_file());
    // Nothing was archived where the job could reach it.
    assert!(std::fs::read_dir(c.dir.path().join("agents/boundary/staging")).expect("staging").next().is_none());
}

#[test]
fn uris_that_leave_their_bucket_are_refused_at_submission() {
    let (c, _config) = with_role();
    let base: Value = example_json("training-job.json");
    let attempts = [
        ("/InputDataConfig/0/DataSource/S3DataSource/S3Uri", "s3://trainyard-examples//etc/", "empty path segment"),
        ("/InputDataConfig/0/DataSource/S3DataSource/S3Uri", "s3://trainyard-examples/%2e%2e/x", "percent-encoding"),
        ("/OutputDataConfig/S3OutputPath", "s3://trainyard-output//root/", "empty path segment"),
        ("/OutputDataConfig/S3OutputPath", "s3://trainyard-output/a/../../b", "'.' or '..'"),
    ];
    for (i, (pointer, uri, reason)) in attempts.iter().enumerate() {
        let mut r = base.clone();
        let name = format!("escape-{i}");
        r["TrainingJobName"] = json!(name);
        r["RoleArn"] = json!(ROLE);
        *r.pointer_mut(pointer).expect("field") = json!(uri);
        let file = c.write(&format!("{name}.json"), &r.to_string());
        let out = c.cli(&["training-jobs", "create", "--file", path(&file)]);
        assert_eq!(out.code(), 3, "{uri}: {}", out.stderr());
        let field = pointer.trim_start_matches('/').replace("/0/", "[0].").replace('/', ".");
        assert!(out.stderr().contains(&format!("{field}: '{uri}'")), "{uri}: {}", out.stderr());
        assert!(out.stderr().contains(reason), "{uri}: {}", out.stderr());
        assert_eq!(c.cli(&["training-jobs", "describe", &name]).code(), 4, "nothing stored for {uri}");
    }
    // A checkpoint location is checked the same way.
    let mut r = base.clone();
    r["TrainingJobName"] = json!("escape-checkpoint");
    r["RoleArn"] = json!(ROLE);
    r["CheckpointConfig"] = json!({"S3Uri": "s3://trainyard-output//etc/cron.d/"});
    let file = c.write("escape-checkpoint.json", &r.to_string());
    let out = c.cli(&["training-jobs", "create", "--file", path(&file)]);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr().contains(
            "CheckpointConfig.S3Uri: 's3://trainyard-output//etc/cron.d/' must not contain an empty path segment"
        ),
        "{}",
        out.stderr()
    );
}

/// Prints 300 lines of 16 KiB (a 4.8 MB log: more than one response may carry), then a metric
/// 200,000 times as fast as it can.
const FLOOD: &str = r#"#!/usr/bin/env python3
import os, sys
for i in range(300):
    print(f"{i:04d} " + "x" * 16_000)
out = sys.stdout
for i in range(200_000):
    out.write("loss=0.5\n")
out.flush()
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

#[test]
fn floods_and_idle_connections_are_bounded() {
    let c = Coordinator::start();
    // A flood of log lines on a busy machine may take the store longer than the agent's stream
    // waits for it: the coordinator then holds the lines (and says so) and stores them later.
    // The log still has to come back whole below.
    c.expect_log("log lines not stored yet");
    let _agent = c.start_agent("flood", &["--advertise-vcpus", "8"], &[]);
    let program = c.install_program("flood.py", FLOOD);
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("flood");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "loss", "Regex": "loss=([0-9.]+)"}]);
    let file = c.write("flood.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", path(&file)]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(120), &["training-jobs", "describe", "flood"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");

    // The log comes back whole, page by page: no page is larger than a client decodes.
    let logs = c.cli(&["training-jobs", "logs", "flood"]);
    logs.assert_success();
    let text = logs.stdout();
    let long: Vec<&str> = text.lines().filter(|l| l.len() > 16_000).collect();
    assert_eq!(long.len(), 300, "every long line arrived");
    assert!(
        long.first().is_some_and(|l| l.starts_with("0000 ")) && long.last().is_some_and(|l| l.starts_with("0299 "))
    );

    // 200,000 samples in a few seconds are stored at one a second.
    let url = format!("sqlite://{}", c.data_dir().join("trainyard.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let samples = runtime.block_on(async {
        let store = trainyard_store::connect(&url).await.expect("store");
        store.read_metrics("flood").await.expect("metrics")
    });
    let seconds = done["TrainingTimeInSeconds"].as_u64().unwrap_or(60);
    assert!(!samples.is_empty() && samples.len() as u64 <= seconds + 2, "{} samples stored", samples.len());
    assert_eq!(done["FinalMetricDataList"][0]["Value"], 0.5, "the final value is the latest sample");

    // The data dir and the database are the coordinator's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&c.data_dir()), 0o700);
    assert_eq!(mode(&c.data_dir().join("trainyard.db")), 0o600);

    // A connection that never starts TLS is closed by the coordinator.
    let mut idle = std::net::TcpStream::connect(&c.address).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let closed = matches!(std::io::Read::read(&mut idle, &mut byte), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_secs(20), "closed after {:?}", started.elapsed());
}

#[test]
fn only_the_users_a_role_names_may_pass_it() {
    let (c, _config) = with_role();
    let ana = c.admin(&["tokens", "create", "--user", "ana", "--scope", "submit"]);
    let eve = c.admin(&["tokens", "create", "--user", "eve", "--scope", "submit"]);
    let mut r: Value = example_json("training-job.json");
    r["RoleArn"] = json!(ROLE);
    r["TrainingJobName"] = json!("passed-by-eve");
    let file = c.write("eve.json", &r.to_string());
    let out = c.cli_as(&eve, &["training-jobs", "create", "--file", path(&file)]);
    assert_eq!(out.code(), 8, "{}", out.stderr());
    assert!(out.stderr().contains(&format!("user 'eve' may not pass role '{ROLE}'")), "{}", out.stderr());
    assert_eq!(c.cli(&["training-jobs", "describe", "passed-by-eve"]).code(), 4, "nothing stored");
    // A tuning job's definitions are checked the same way.
    let mut tuning: Value = example_json("tuning-job.json");
    tuning["TrainingJobDefinition"]["RoleArn"] = json!(ROLE);
    let file = c.write("eve-tuning.json", &tuning.to_string());
    assert_eq!(c.cli_as(&eve, &["tuning-jobs", "create", "--file", path(&file)]).code(), 8);
    // The role's own user may.
    r["TrainingJobName"] = json!("passed-by-ana");
    let file = c.write("ana.json", &r.to_string());
    c.cli_as(&ana, &["training-jobs", "create", "--file", path(&file)]).assert_success();
}

/// Leaves two processes behind, each in a session of its own: one holds stdout (a job used to stay
/// Stopping for as long as it lived), one does not (a job used to complete with it still running).
const ESCAPER: &str = r#"#!/bin/sh
setsid -f sh -c 'while true; do echo still-here; sleep 0.2; done' escaper-7f3a
setsid sh -c 'sleep 600' escaper-7f3a > /dev/null 2>&1 < /dev/null &
mkdir -p "$SM_MODEL_DIR"
echo main-ends
"#;

/// Touches 512 MiB, more than its instance type gives it.
const HOG: &str = r#"#!/usr/bin/env python3
block = bytearray(512 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("survived", flush=True)
"#;

fn escapers_alive() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("escaper-7f3a"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nothing_a_job_starts_outlives_it_and_its_memory_is_its_instance_types() {
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    // A small instance type, so that a small program can exceed it.
    std::fs::write(&config, "[[instance_types]]\nname = \"ml.m5.large\"\nvcpus = 2\nmemory_mib = 128\n")
        .expect("write");
    let c = Coordinator::start_with_args(&["--config", path(&config)]);
    let _agent = c.start_agent("cgroups", &["--advertise-vcpus", "8"], &[]);
    let request = |name: &str, program: &str| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["ResourceConfig"]["InstanceType"] = json!("ml.m5.large");
        c.write(&format!("{name}.json"), &r.to_string())
    };

    let escaper = c.install_program("escaper.sh", ESCAPER);
    c.cli(&["training-jobs", "create", "--file", path(&request("escaper", &escaper))]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "escaper"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert!(c.logs("escaper").contains("main-ends"));
    // Killed, they may still be exiting for a moment: the cgroup stops listing a process as soon
    // as it starts to exit, before its memory (and /proc/PID/cmdline) is gone. One that escaped
    // would stay.
    let gone = wait_until(Duration::from_secs(10), || escapers_alive().is_empty());
    assert!(gone, "left running: {:?}", escapers_alive());

    let hog = c.install_program("hog.py", HOG);
    c.cli(&["training-jobs", "create", "--file", path(&request("hog", &hog))]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "hog"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("OutOfMemoryError") && reason.contains("128 MiB"), "{reason}");
    assert!(!c.logs("hog").contains("survived"));
}

#[test]
fn a_job_that_stores_more_than_its_volume_is_stopped_and_nothing_of_it_kept() {
    let c = Coordinator::start();
    let _agent = c.start_agent("disks", &["--advertise-vcpus", "8"], &[]);
    // 2 GiB in a volume of 1 GB, at once (a sparse file counts at its full length: packed and
    // uploaded it would be that long), then waiting to be stopped.
    let filler = c.install_program(
        "filler.sh",
        "#!/bin/sh\nmkdir -p \"$SM_MODEL_DIR\"\necho weights > \"$SM_MODEL_DIR/weights.txt\"\n\
         truncate -s 2G \"$SM_MODEL_DIR/huge.bin\"\necho filled\nsleep 120\n",
    );
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("filler");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(filler);
    assert_eq!(r["ResourceConfig"]["VolumeSizeInGB"], 1);
    let ended = |name: &str| {
        c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", name], |d| {
            d["TrainingJobStatus"] != "InProgress"
        })
    };
    let submitted = std::time::Instant::now();
    c.create_training_job(&r);
    let done = ended("filler");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    assert!(submitted.elapsed() < Duration::from_secs(30), "stopped within seconds, not at its end");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ClientError: the instance's volume is full") && reason.contains("VolumeSizeInGB (1 GB"),
        "{reason}"
    );
    assert!(c.logs("filler").contains("filled"));
    // Nothing it stored was uploaded, and its work dir is gone (a failed job's is otherwise kept).
    assert!(done["ModelArtifacts"]["S3ModelArtifacts"].is_null(), "{done:#}");
    let output = c.output_dir().join("blobs-logreg-baseline/filler");
    assert!(!output.exists(), "nothing uploaded under {}", output.display());
    assert!(!c.dir.path().join("agents/disks/jobs/filler").exists(), "the work dir was removed");

    // One that fills it and exits at once, before any periodic measurement: measured at its end,
    // before anything is packed.
    let quick = c.install_program(
        "quick-filler.sh",
        "#!/bin/sh\nmkdir -p \"$SM_MODEL_DIR\"\ntruncate -s 64G \"$SM_MODEL_DIR/huge.bin\"\n",
    );
    r["TrainingJobName"] = json!("quick-filler");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(quick);
    c.create_training_job(&r);
    let done = ended("quick-filler");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("ClientError: the instance's volume is full"), "{reason}");
    assert!(!c.output_dir().join("blobs-logreg-baseline/quick-filler").exists(), "its 64 GiB were not packed");

    // Input data larger than the volume is refused before any of it is fetched.
    let data = c.output_dir().join("huge-data/train");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::File::create(data.join("part-0")).expect("create").set_len(2 << 30).expect("2 GiB, sparse");
    r["TrainingJobName"] = json!("big-input");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(filler);
    r["InputDataConfig"] = json!([{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": "s3://trainyard-output/huge-data/train/"}}}]);
    c.create_training_job(&r);
    let done = ended("big-input");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not fit in the instance's volume") && reason.contains("2147483648 bytes"),
        "{reason}"
    );
    assert!(!c.logs("big-input").contains("filled"), "the program never ran");
}

/// Says which cgroup it is in, then leaves the escapers behind.
const CGROUP_ESCAPER: &str = r#"#!/bin/sh
grep '^0::' /proc/self/cgroup | sed 's/^/in-cgroup /'
grep -qx "$$" /sys/fs/cgroup/cgroup.procs && echo own-cgroup-at-the-root
mkdir /sys/fs/cgroup/escape 2>/dev/null && echo LEAK made a cgroup || echo cgroup-read-only
setsid -f sh -c 'while true; do echo still-here; sleep 0.2; done' escaper-7f3a
setsid sh -c 'sleep 600' escaper-7f3a > /dev/null 2>&1 < /dev/null &
mkdir -p "$SM_MODEL_DIR"
echo main-ends
"#;

/// A cgroup of the unified hierarchy made for one test (the agent's, as systemd makes a
/// service's), removed with what the agent left in it once the agent is gone.
struct TestCgroup {
    /// Where the unified hierarchy is mounted on this host.
    unified: std::path::PathBuf,
    name: String,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let dir = self.unified.join(&self.name);
        let children = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
        for child in children.unwrap_or_default().into_iter().filter(|p| p.is_dir()) {
            for grandchild in std::fs::read_dir(&child).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(grandchild.path());
            }
            let _ = std::fs::remove_dir(child);
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// cgroup v2, as a systemd host with `Delegate=yes` runs the agent: started in a cgroup of its own,
/// it moves itself into a leaf and puts each instance in a cgroup under that one, which is what it
/// kills (the job's processes run as the agent's user here, so that no per-uid kill can be what
/// stops the escapers). On this hybrid host the unified hierarchy (mounted at
/// /sys/fs/cgroup/unified) is bound over /sys/fs/cgroup in the agent's mount namespace, which is
/// what a v2-only host looks like to it; the memory, cpu and pids controllers stay with v1 here,
/// so the agent says those limits are not enforced.
#[test]
fn on_cgroup_v2_instances_nest_under_the_agents_cgroup_and_nothing_outlives_them() {
    let cgroup2 = |p: &str| {
        std::process::Command::new("stat")
            .args(["-f", "-c", "%T", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "cgroup2fs")
    };
    let unified = if cgroup2("/sys/fs/cgroup") {
        "/sys/fs/cgroup"
    } else {
        assert!(cgroup2("/sys/fs/cgroup/unified"), "this test needs a cgroup v2 hierarchy");
        "/sys/fs/cgroup/unified"
    };
    let test_cgroup = TestCgroup { unified: unified.into(), name: format!("trainyard-e2e-{}", std::process::id()) };
    std::fs::create_dir(test_cgroup.unified.join(&test_cgroup.name)).expect("mkdir cgroup");
    let c = Coordinator::start();
    let mut launcher = std::process::Command::new("unshare");
    launcher.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        // A v2-only host, to the agent: the unified hierarchy at /sys/fs/cgroup.
        r#"if [ "$UNIFIED" != /sys/fs/cgroup ]; then mount --bind "$UNIFIED" /sys/fs/cgroup || exit 1; fi
           echo $$ > "/sys/fs/cgroup/$CGROUP/cgroup.procs" || exit 1
           exec "$@""#,
        "sh",
    ]);
    launcher.arg(trainyard_testkit::binary("trainyard-agent"));
    launcher.env("UNIFIED", unified).env("CGROUP", &test_cgroup.name);
    let agent = c.start_agent_through(launcher, &c.address, "unified", &["--jobs-run-as-agent-user"]);
    agent.expect_log("--jobs-run-as-agent-user");
    agent.expect_log("controllers are not delegated");

    // The agent left the cgroup it was started in for a leaf of its own.
    let agent_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid())).expect("agent's cgroup");
    let own = format!("0::/{}/", test_cgroup.name);
    assert!(
        agent_cgroup.lines().any(|l| l.starts_with(&own) && l.ends_with(".self")),
        "the agent is not in a leaf of its cgroup: {agent_cgroup}"
    );

    let program = c.install_program("cgroup-escaper.sh", CGROUP_ESCAPER);
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("nested");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    let file = c.write("nested.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", path(&file)]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(30), &["training-jobs", "describe", "nested"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let logs = c.logs("nested");
    assert!(logs.contains("main-ends"), "{logs}");
    // At /sys/fs/cgroup it sees its own cgroup alone, read-only (it runs as root here).
    assert!(logs.contains("own-cgroup-at-the-root") && logs.contains("cgroup-read-only"), "{logs}");
    assert!(!logs.contains("LEAK"), "{logs}");
    let nested = logs.lines().find_map(|l| l.split("in-cgroup ").nth(1)).expect("the job printed its cgroup");
    assert!(
        nested.starts_with(&format!("0::/{}/trainyard-unified-", test_cgroup.name))
            && nested.ends_with("/nested.algo-1"),
        "the instance's cgroup is not under the agent's: {nested}"
    );
    assert!(escapers_alive().is_empty(), "left running: {:?}", escapers_alive());
    // The instance's cgroup is gone with it.
    let instance_dir = Path::new(unified).join(nested.trim_start_matches("0::/"));
    assert!(!instance_dir.exists(), "{} is left", instance_dir.display());
    drop(agent);
}

/// Holds a secret in its environment, its work dir, /tmp, /var/tmp and /dev/shm, says so, tries
/// to leave it in the host's other world-writable dir (/run/lock) and a shared file the agent lets
/// instances write, and waits.
const SECRET_HOLDER: &str = r#"#!/usr/bin/env python3
import os, time
secret = os.environ["HOLDER_SECRET"]
for path in ["/tmp/holder-secret", "/var/tmp/holder-secret", "/dev/shm/holder-secret", os.environ["SM_MODEL_DIR"] + "/holder-secret"]:
    with open(path, "w") as f:
        f.write(secret)
    os.chmod(path, 0o644)
for path in ["/run/lock/holder-secret", os.environ["WORLD_WRITABLE"] + "/holder-secret", os.environ["SHARED_FILE"]]:
    try:
        with open(path, "a") as f:
            f.write(secret)
        print(f"wrote {path}", flush=True)
    except OSError as e:
        print(f"refused {path}: {e.strerror}", flush=True)
print(f"holding uid={os.getuid()}", flush=True)
time.sleep(120)
"#;

/// Tries every way into another job it knows of, and says what worked (LEAK ...) and who it is.
const PROBE: &str = r#"#!/usr/bin/env python3
import os, signal
me = os.getpid()
secret = b"holder-" + b"secret-4d1c"
print(f"probing uid={os.getuid()} gid={os.getgid()}", flush=True)
for path in ["/tmp/holder-secret", "/var/tmp/holder-secret", "/dev/shm/holder-secret", "/run/lock/holder-secret"]:
    if os.path.exists(path):
        print(f"LEAK {path} exists", flush=True)
signalled = 0
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if secret in f.read():
                print(f"LEAK environ of {pid}", flush=True)
    except OSError:
        pass
    try:
        for name in os.listdir(f"/proc/{pid}/root/opt/ml/model"):
            if name == "holder-secret":
                print(f"LEAK /opt/ml of {pid}", flush=True)
    except OSError:
        pass
    if pid != me:
        try:
            os.kill(pid, 0)
            signalled += 1
            print(f"may signal {pid}: {open(f'/proc/{pid}/cmdline', 'rb').read()!r}", flush=True)
        except OSError:
            pass
# Other users' processes (the holder's, the agent's) are not even listed.
others = 0
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            others += 1
            if b"holder.py" in open(f"/proc/{pid}/cmdline", "rb").read():
                print(f"LEAK command line of {pid}", flush=True)
    except OSError:
        pass
print(f"sees {others} processes of other users", flush=True)
# A set-user-ID root program of the host does not make it root.
import subprocess
print("setuid id says " + subprocess.run([os.environ["SETUID_ID"]], capture_output=True, text=True).stdout.strip(), flush=True)
print("no new privileges " + [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs:")][0], flush=True)
print(f"probe done, may signal {signalled} other processes", flush=True)
"#;

#[test]
fn concurrent_jobs_share_no_uid_and_none_runs_as_root() {
    const UIDS: &str = "70100-70109";
    // No roles configured: the default a scheduler of other people's code starts with.
    let c = Coordinator::start();
    // A range of its own: other tests' agents on this host take freed uids of the shared default
    // range at once, which would read as processes the holder left behind.
    let _agent = c.start_agent("uids", &["--advertise-vcpus", "8", "--instance-uids", UIDS], &[]);
    let request = |name: &str, program: &str, environment: Value| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["Environment"] = environment;
        c.write(&format!("{name}.json"), &r.to_string())
    };
    let holder = c.install_program("holder.py", SECRET_HOLDER);
    let shared = c.shared_file("holder.shared");
    // A dir of the host every user may write to (as /var/crash or /run/lock are), not shared.
    let world_writable = c.programs_dir().join("world-writable");
    std::fs::create_dir(&world_writable).expect("dir");
    std::fs::set_permissions(&world_writable, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
    let environment = json!({"HOLDER_SECRET": "holder-secret-4d1c", "SHARED_FILE": path(&shared),
                             "WORLD_WRITABLE": path(&world_writable)});
    let file = request("holder", &holder, environment);
    c.cli(&["training-jobs", "create", "--file", path(&file)]).assert_success();
    assert!(
        wait_until(Duration::from_secs(30), || c.logs("holder").contains("holding uid=")),
        "the holder did not start: {}\n{:#}",
        c.logs("holder"),
        c.json(&["training-jobs", "describe", "holder"])
    );

    let probe = c.install_program("probe.py", PROBE);
    // `id`, set-user-ID root, where every user may run it, as su or mount are: beside them, on
    // the file system that honours their bit (a checkout may be on one mounted nosuid).
    let setuid_id = set_uid_copy_of("/usr/bin/id");
    let as_nobody =
        std::process::Command::new("runuser").args(["-u", "nobody", "--"]).arg(&setuid_id).output().expect("runuser");
    assert!(
        String::from_utf8_lossy(&as_nobody.stdout).contains("euid=0"),
        "the copy is set-user-ID root: {as_nobody:?}"
    );
    let probe_request = request("probe", &probe, json!({"SETUID_ID": path(&setuid_id)}));
    c.cli(&["training-jobs", "create", "--file", path(&probe_request)]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "probe"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let probed = c.logs("probe");
    assert!(probed.contains("probe done, may signal 0 other processes"), "{probed}");
    assert!(probed.contains("sees 0 processes of other users"), "{probed}");
    assert!(probed.contains("no new privileges 1"), "{probed}");
    let setuid_said = probed.lines().find(|l| l.contains("setuid id says")).unwrap_or_default();
    assert!(setuid_said.contains("uid=") && !setuid_said.contains("euid=0"), "{probed}");
    assert!(!probed.contains("LEAK"), "{probed}");

    let (holder_uid, probe_uid) =
        (number_after(&c.logs("holder"), "holding uid="), number_after(&probed, "probing uid="));
    assert_ne!(holder_uid, probe_uid);
    for uid in [holder_uid, probe_uid] {
        assert!((70_100..=70_109).contains(&uid), "uid {uid} is from the agent's range, never root");
    }
    assert!(probed.contains(&format!("gid={probe_uid}")), "a group of its own: {probed}");

    // The holder was never disturbed; stopped, nothing of its uid is left on the host.
    let holder_state = c.json(&["training-jobs", "describe", "holder"]);
    assert_eq!(holder_state["TrainingJobStatus"], "InProgress", "{holder_state:#}");
    c.cli(&["training-jobs", "stop", "holder"]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "holder"], |d| {
        d["TrainingJobStatus"] != "InProgress" && d["TrainingJobStatus"] != "Stopping"
    });
    assert_eq!(done["TrainingJobStatus"], "Stopped", "{done:#}");
    // The host is read-only to it but for what the agent shares on purpose.
    let held = c.logs("holder");
    // Its /run is its own, empty and read-only; the rest of the host is read-only.
    assert!(held.contains("refused /run/lock/holder-secret: No such file or directory"), "{held}");
    let planted = world_writable.join("holder-secret");
    assert!(held.contains(&format!("refused {}: Read-only file system", path(&planted))), "{held}");
    assert!(!planted.exists());
    assert!(held.contains(&format!("wrote {}", path(&shared))), "{held}");
    assert_eq!(std::fs::read_to_string(&shared).expect("shared file"), "holder-secret-4d1c");
    assert!(!std::path::Path::new("/run/lock/holder-secret").exists());
    assert!(!std::path::Path::new("/tmp/holder-secret").exists(), "its /tmp was its own");
    assert!(!std::path::Path::new("/var/tmp/holder-secret").exists(), "its /var/tmp was its own");
    assert!(!std::path::Path::new("/dev/shm/holder-secret").exists(), "its /dev/shm was its own");
    let processes_of_uid = |uid: u32| {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| std::fs::read_to_string(p.path().join("status")).ok())
            .filter(|s| {
                s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string()))
            })
            .count()
    };
    assert_eq!(processes_of_uid(holder_uid), 0);
}

/// Tries the doors of the host's daemons under /run that the test opened (a socket anyone may
/// connect to, a file anyone may read), lists and writes its /run, and prints its resolver
/// configuration (hex).
const RUN_PROBE: &str = r#"#!/usr/bin/env python3
import os, socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(os.environ["HOST_SOCKET"])
    print("LEAK connected to the host's socket", flush=True)
except OSError as e:
    print(f"socket refused: {e.strerror}", flush=True)
try:
    open(os.environ["HOST_NOTE"]).read()
    print("LEAK read the host's note", flush=True)
except OSError as e:
    print(f"note refused: {e.strerror}", flush=True)
print("run holds " + ",".join(sorted(os.listdir("/run"))) + ".", flush=True)
try:
    open("/run/planted", "w").write("x")
    print("LEAK wrote into /run", flush=True)
except OSError as e:
    print(f"run write refused: {e.strerror}", flush=True)
print("resolver " + open("/etc/resolv.conf", "rb").read().hex(), flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

/// A socket anyone may connect to and a file anyone may read, under the host's /run, as its
/// daemons leave them (D-Bus, journald, a database); both removed when dropped.
struct HostDoors {
    socket: tempfile::TempPath,
    note: tempfile::TempPath,
    _listener: std::os::unix::net::UnixListener,
}

impl HostDoors {
    fn open() -> HostDoors {
        use std::os::unix::fs::PermissionsExt;
        let stem = format!("/run/trainyard-test-{}", std::process::id());
        let socket = tempfile::TempPath::try_from_path(format!("{stem}.sock")).expect("an absolute path");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let note = tempfile::TempPath::try_from_path(format!("{stem}.note")).expect("an absolute path");
        std::fs::write(&note, "the host's note").expect("write");
        std::fs::set_permissions(&note, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        HostDoors { socket, note, _listener: listener }
    }
}

#[test]
fn the_hosts_run_dir_and_its_daemons_sockets_are_out_of_reach() {
    let c = Coordinator::start();
    let _agent = c.start_agent("run-dir", &["--advertise-vcpus", "8"], &[]);
    let doors = HostDoors::open();
    // The doors are open: on the host, anyone gets through.
    assert!(std::os::unix::net::UnixStream::connect(&doors.socket).is_ok());
    let program = c.install_program("run-probe.py", RUN_PROBE);
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("run-probe");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["Environment"] = json!({"HOST_SOCKET": path(&doors.socket), "HOST_NOTE": path(&doors.note)});
    c.create_training_job(&r);
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "run-probe"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let log = c.logs("run-probe");
    assert!(!log.contains("LEAK"), "{log}");
    assert!(log.contains("socket refused: No such file or directory"), "{log}");
    assert!(log.contains("note refused: No such file or directory"), "{log}");
    assert!(log.contains("run write refused: Read-only file system"), "{log}");
    // Its /run is empty, but for the resolver configuration when /etc/resolv.conf points there
    // (systemd-resolved, resolvconf): that reads as on the host.
    let resolver = std::fs::canonicalize("/etc/resolv.conf").expect("resolv.conf");
    let expected_run = match resolver.strip_prefix("/run") {
        Ok(inside) => {
            inside.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).unwrap_or_default()
        }
        Err(_) => String::new(),
    };
    assert!(log.contains(&format!("run holds {expected_run}.")), "{log}");
    let host_resolver: String = std::fs::read(&resolver).expect("read").iter().map(|b| format!("{b:02x}")).collect();
    assert!(log.contains(&format!("resolver {host_resolver}")), "{log}");
}

/// Lists the network interfaces its /sys shows and those the kernel (netlink) says its network
/// namespace has, looks for another job's cgroup anywhere under /sys/fs/cgroup, and reads its own
/// limits where a container reads them (cgroup v1 or v2).
const SYS_PROBE: &str = r#"#!/usr/bin/env python3
import os, socket
print("sysfs net " + ",".join(sorted(os.listdir("/sys/class/net"))) + ".", flush=True)
print("netlink net " + ",".join(sorted(name for _, name in socket.if_nameindex())) + ".", flush=True)
for root, dirs, _ in os.walk("/sys/fs/cgroup"):
    for name in dirs:
        if os.environ["HOLDER"] in name:
            print(f"LEAK {root}/{name}", flush=True)
def first(*paths):
    for path in paths:
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return "none"
print("memory limit " + first("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"), flush=True)
print("cpu quota " + first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"), flush=True)
# The agent's work root, where every instance's work dir lies: its path is no secret (the
# source of /opt/ml in /proc/self/mountinfo).
try:
    for root, dirs, files in os.walk(os.environ["WORK_ROOT"]):
        for name in dirs + files:
            print(f"work root shows {os.path.join(root, name)}", flush=True)
            if os.environ["HOLDER"] in name:
                print(f"LEAK {os.path.join(root, name)}", flush=True)
except OSError as e:
    print(f"work root refused: {e.strerror}", flush=True)
# Its mount table: no network namespace bound to a file (other instances' are named by agent and
# slot), no container's root filesystem (named by its job), and not the mount that held the
# namespace files (detached whole, with them).
for line in open("/proc/self/mountinfo"):
    if " - nsfs " in line or os.environ["HOLDER"] in line or line.split()[4] == "/run/netns":
        print(f"LEAK mountinfo: {line.strip()}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

/// A tmpfs mounted on the host for a test, unmounted when dropped.
struct HostMount(std::path::PathBuf);

impl HostMount {
    fn tmpfs(at: std::path::PathBuf) -> HostMount {
        std::fs::create_dir_all(&at).expect("mount point");
        let status = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs", path(&at)]).status();
        assert!(status.is_ok_and(|s| s.success()), "mount {}", at.display());
        HostMount(at)
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Whether a directory whose name contains `needle` lies under `dir`, `depth` levels down at most.
fn dir_named_under(dir: &Path, needle: &str, depth: u32) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|entry| {
        entry.file_type().is_ok_and(|t| t.is_dir())
            && (entry.file_name().to_string_lossy().contains(needle)
                || (depth > 0 && dir_named_under(&entry.path(), needle, depth - 1)))
    })
}

#[test]
fn a_host_program_sees_its_own_network_and_cgroup_in_sys_and_no_other_jobs_work_dir_or_mounts() {
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    std::fs::write(&config, "[[instance_types]]\nname = \"ml.m5.large\"\nvcpus = 2\nmemory_mib = 256\n")
        .expect("write");
    let c = Coordinator::start_with_args(&["--config", path(&config)]);
    // Where a deployed agent keeps it (/var/lib/...): outside /tmp, which instances see their own of.
    let work_root = c.programs_dir().join("agents/own-sys");
    let _agent = c.start_agent("own-sys", &["--advertise-vcpus", "8", "--work-root", path(&work_root)], &[]);
    let request = |name: &str, program: &str| {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["ResourceConfig"]["InstanceType"] = json!("ml.m5.large");
        r["Environment"] = json!({"HOLDER": "sys-holder-3b7e", "WORK_ROOT": path(&work_root)});
        r
    };
    let holder = c.install_program("sys-holder.sh", "#!/bin/sh\necho holding\nexec sleep 120\n");
    c.create_training_job(&request("sys-holder-3b7e", &holder));
    assert!(
        wait_until(Duration::from_secs(30), || c.logs("sys-holder-3b7e").contains("holding")),
        "the holder did not start: {:#}",
        c.json(&["training-jobs", "describe", "sys-holder-3b7e"])
    );
    // On the host its cgroup is there to be found (the pids controller's, on v1 or v2).
    let host_pids = if Path::new("/sys/fs/cgroup/pids").is_dir() { "/sys/fs/cgroup/pids" } else { "/sys/fs/cgroup" };
    assert!(dir_named_under(Path::new(host_pids), "sys-holder-3b7e", 6), "the holder's cgroup is not on the host");
    // And so is its work dir, in a dir any user may list.
    assert!(dir_named_under(&work_root, "sys-holder-3b7e", 2), "the holder's work dir is not on the host");

    // Where containerd's runtime mounts a container's root filesystem, named by its job: one of
    // the holder's name, mounted on the host as containerd would. And the holder's network
    // namespace, bound to a file by the agent: both in the host's mount table.
    let _rootfs = HostMount::tmpfs(
        c.programs_dir().join("containerd/io.containerd.runtime.v2.task/trainyard/sys-holder-3b7e.algo-1.1/rootfs"),
    );
    let host_table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(host_table.contains("sys-holder-3b7e.algo-1.1/rootfs"), "{host_table}");
    assert!(host_table.lines().any(|l| l.contains(" - nsfs ") && l.contains("own-sys")), "{host_table}");
    // The mount `ip netns` keeps them on, which instances get no copy of.
    assert!(host_table.lines().any(|l| l.split(' ').nth(4) == Some("/run/netns")), "{host_table}");

    let probe = c.install_program("sys-probe.py", SYS_PROBE);
    c.create_training_job(&request("sys-probe", &probe));
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "sys-probe"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    let log = c.logs("sys-probe");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{log}");
    assert!(!log.contains("LEAK"), "{log}");
    let listed = |prefix: &str| log.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_default().to_string();
    let (sysfs, netlink) = (listed("sysfs net "), listed("netlink net "));
    assert!(netlink.contains("lo"), "{log}");
    assert_eq!(sysfs, netlink, "its /sys lists the interfaces of its own network namespace: {log}");
    // Its limits where a container finds them, as tools that size themselves read them.
    assert!(log.contains(&format!("memory limit {}", 256u64 << 20)), "{log}");
    assert!(log.contains("cpu quota 200000"), "{log}");
    // The work root shows it nothing: not the holder's dir, not its own by that path.
    assert!(!log.contains("work root shows"), "{log}");
    c.cli(&["training-jobs", "stop", "sys-holder-3b7e"]).assert_success();
}

/// Reads the files named in SECRETS (colon-separated) and says what it got.
const SECRET_FILES_PROBE: &str = r#"#!/usr/bin/env python3
import os
for path in os.environ["SECRETS"].split(":"):
    try:
        print(f"read {path}: {open(path).read()!r}", flush=True)
    except OSError as e:
        print(f"refused {path}: {e.strerror}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

/// The agent's own files that may hold secrets (its configuration, its registry credentials) are
/// out of a host program's reach, even when the operator left them readable by every user.
#[test]
fn the_agents_secret_files_are_out_of_a_jobs_reach_whatever_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let c = Coordinator::start();
    // Outside /tmp (instances see their own), readable by everyone: a careless deployment.
    let secrets = c.programs_dir().join("agent-secrets");
    std::fs::create_dir(&secrets).expect("dir");
    let credentials = secrets.join("registry.json");
    std::fs::write(&credentials, r#"{"auths": {"registry.example": {"auth": "cmVnaXN0cnktc2VjcmV0LTdhOWI6cHc="}}}"#)
        .expect("write");
    let config = secrets.join("agent.toml");
    std::fs::write(&config, "# agent-config-secret-7a9b\njoin_token = \"tyj_not-a-real-one\"\n").expect("write");
    for file in [&credentials, &config] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = c.start_agent(
        "secret-files",
        &["--advertise-vcpus", "8", "--registry-auth", path(&credentials), "--config", path(&config)],
        &[],
    );
    // The operator is told (other users of the host may still read them), of each.
    let warning = "a file that may hold secrets is readable by every user of this host";
    agent.expect_log(warning);
    for file in [&credentials, &config] {
        let canonical = file.canonicalize().expect("canonical");
        assert!(agent.log().lines().any(|l| l.contains(warning) && l.contains(path(&canonical))), "{}", agent.log());
    }
    let program = c.install_program("secret-files-probe.py", SECRET_FILES_PROBE);
    let log = completed(
        &c,
        "secret-files",
        &program,
        json!({"SECRETS": format!("{}:{}", path(&credentials), path(&config))}),
    );
    assert!(!log.contains("cmVnaXN0cnktc2VjcmV0LTdhOWI") && !log.contains("agent-config-secret-7a9b"), "{log}");
    for file in [&credentials, &config] {
        assert!(log.contains(&format!("refused {}: Permission denied", path(file))), "{log}");
    }
}

/// Lists its /dev, tries a node of the host's /dev that anyone may open, reads its GPUs' nodes and
/// the one the operator shares, and uses what every program needs: /dev/null, /dev/urandom, a
/// pseudo-terminal, /dev/shm, /dev/stdout, /dev/fd. Runs two seconds, so that two run at once.
const DEVICE_PROBE: &str = r#"#!/usr/bin/env python3
import os, pty, time
dev = sorted(os.listdir("/dev"))
print("dev holds " + " ".join(dev) + ".", flush=True)
try:
    open(os.environ["HOST_DEVICE"], "rb").read(4)
    print("LEAK opened the host's device", flush=True)
except OSError as e:
    print(f"host device refused: {e.strerror}", flush=True)
print(f"shared read {len(open(os.environ['SHARED_DEVICE'], 'rb').read(4))}", flush=True)
print(f"shared dir read {len(open(os.environ['SHARED_DIR'] + '/node', 'rb').read(4))}", flush=True)
for name in dev:
    if name.startswith("nvidia"):
        print(f"{name} read {len(open('/dev/' + name, 'rb').read(4))}", flush=True)
open("/dev/null", "w").write("discarded")
print(f"urandom read {len(open('/dev/urandom', 'rb').read(16))}", flush=True)
leader, follower = pty.openpty()
os.write(leader, b"typed\n")
print(f"pty {os.ttyname(follower)} got {os.read(follower, 64)!r}", flush=True)
open("/dev/shm/scratch", "w").write("x")
print("shm written", flush=True)
with open("/dev/stdout", "w") as out:
    out.write("stdout by name\n")
print(f"fd lists {len(os.listdir('/dev/fd')) >= 3}", flush=True)
try:
    open("/dev/planted", "w")
    print("LEAK planted a file in /dev", flush=True)
except OSError as e:
    print(f"dev write refused: {e.strerror}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
time.sleep(2)
"#;

/// A character device with /dev/zero's numbers in the host's /dev, open to all (as /dev/nvidia*
/// are on most GPU hosts), removed when dropped.
fn host_device(name: &str) -> tempfile::TempPath {
    let path = tempfile::TempPath::try_from_path(format!("/dev/trainyard-test-{name}-{}", std::process::id()))
        .expect("an absolute path");
    let _ = std::fs::remove_file(&path);
    fake_device_node(&path);
    path
}

/// Starts agent `id` on a GPU host of two fake A10Gs (the real NVML code path, `library`), with
/// `args` and `env` added, runs `program` there as two one-GPU jobs at once (`names`, with
/// `environment`), and returns their logs once both have completed.
#[allow(clippy::too_many_arguments)]
fn two_gpu_jobs_at_once(
    c: &Coordinator,
    id: &str,
    library: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    program: &str,
    environment: Value,
    names: [&str; 2],
) -> Vec<String> {
    let fake_gpus = trainyard_testkit::nvml::gpus(2, "NVIDIA A10G", 23028);
    let mut all_args =
        vec!["--advertise-vcpus", "16", "--advertise-memory-mib", "65536", "--nvml-library", path(library)];
    all_args.extend_from_slice(args);
    let mut all_env = vec![("FAKE_NVML_GPUS", fake_gpus.as_str())];
    all_env.extend_from_slice(env);
    let _agent = c.start_agent(id, &all_args, &all_env);
    for name in names {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
        r["ResourceConfig"]["InstanceType"] = json!("ml.g5.xlarge");
        r["Environment"] = environment.clone();
        c.create_training_job(&r);
    }
    names
        .iter()
        .map(|name| {
            let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", name], |d| {
                d["TrainingJobStatus"] != "InProgress"
            });
            let log = c.logs(name);
            assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{log}");
            log
        })
        .collect()
}

#[test]
fn host_programs_see_only_their_own_devices_and_gpus() {
    let dir = tempfile::tempdir().expect("dir");
    let library = trainyard_testkit::nvml::build_fake_nvml(dir.path());
    let cdi = trainyard_testkit::nvml::fake_cdi(dir.path(), 2);
    let stray = host_device("stray");
    let shared = host_device("shared");
    // A dir of devices (as /dev/infiniband), shared whole.
    let shared_dir = tempfile::Builder::new().prefix("trainyard-test-dir-").tempdir_in("/dev").expect("dir in /dev");
    fake_device_node(&shared_dir.path().join("node"));
    // On the host, anyone opens the stray node.
    assert!(std::fs::File::open(&stray).is_ok());
    let c = Coordinator::start();
    let agent_args = [
        "--cdi-spec-dir",
        path(&cdi),
        "--instance-device",
        path(&shared),
        "--instance-device",
        path(shared_dir.path()),
    ];
    let environment =
        json!({"HOST_DEVICE": path(&stray), "SHARED_DEVICE": path(&shared), "SHARED_DIR": path(shared_dir.path())});
    let program = c.install_program("device-probe.py", DEVICE_PROBE);
    let logs = two_gpu_jobs_at_once(
        &c,
        "devices",
        &library,
        &agent_args,
        &[],
        &program,
        environment,
        ["devices-a", "devices-b"],
    );
    let shared_name = shared.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let shared_dir_name = shared_dir.path().file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let mut gpus_seen = Vec::new();
    for log in logs {
        assert!(!log.contains("LEAK"), "{log}");
        assert!(log.contains("host device refused: No such file or directory"), "{log}");
        // Exactly the usual nodes, its own GPU's and the control node, and the shared one.
        let listed = log.lines().find_map(|l| l.strip_prefix("dev holds ")).unwrap_or_default();
        let gpu = listed.split_whitespace().find(|n| n.starts_with("nvidia") && *n != "nvidiactl").unwrap_or_default();
        gpus_seen.push(gpu.to_string());
        let mut expected = vec![
            "fd",
            "full",
            "null",
            "ptmx",
            "pts",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "tty",
            "urandom",
            "zero",
            "nvidiactl",
            gpu,
            &shared_name,
            &shared_dir_name,
        ];
        if Path::new("/dev/mqueue").is_dir() {
            expected.push("mqueue");
        }
        expected.sort();
        assert_eq!(listed, format!("{}.", expected.join(" ")), "{log}");
        for read in
            ["shared read 4", "shared dir read 4", &format!("{gpu} read 4"), "nvidiactl read 4", "urandom read 16"]
        {
            assert!(log.contains(read), "{read}: {log}");
        }
        // Its pseudo-terminals are its own: the first one is number 0.
        assert!(log.contains("pty /dev/pts/0 got b'typed\\n'"), "{log}");
        for line in ["shm written", "stdout by name", "fd lists True", "dev write refused: Read-only file system"] {
            assert!(log.contains(line), "{line}: {log}");
        }
    }
    gpus_seen.sort();
    assert_eq!(gpus_seen, ["nvidia0", "nvidia1"], "the two ran at once, each with a GPU of its own");
    // The host's /dev is as it was.
    assert!(std::fs::File::open(&stray).is_ok());
    assert!(!Path::new("/dev/planted").exists());
}

/// `MODE=plant`: adds a key to its user, session and user-session keyrings, then fills its uid's
/// key quota. Else: looks for that key in each.
const KEY_PROBE: &str = r#"#!/usr/bin/env python3
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
KEYCTL_SEARCH = 10
rings = {"user": -4, "session": -3, "user-session": -5}
secret = b"the last holder's secret"
for name, ring in rings.items():
    if os.environ["MODE"] == "plant":
        serial = libc.syscall(ctypes.c_long(ADD_KEY), b"user", b"trainyard-left-behind", secret,
                              ctypes.c_long(len(secret)), ctypes.c_long(ring))
        print(f"planted in {name}: {serial > 0}", flush=True)
    else:
        found = libc.syscall(ctypes.c_long(KEYCTL), ctypes.c_long(KEYCTL_SEARCH), ctypes.c_long(ring), b"user",
                             b"trainyard-left-behind", ctypes.c_long(0))
        if found > 0:
            print(f"LEAK found the last holder's key in {name}", flush=True)
        else:
            print(f"not in {name}: {os.strerror(ctypes.get_errno())}", flush=True)
if os.environ["MODE"] == "plant":
    for n in range(100000):
        if libc.syscall(ctypes.c_long(ADD_KEY), b"user", f"filler-{n}".encode(), b"x" * 64, ctypes.c_long(64),
                        ctypes.c_long(rings["user"])) < 0:
            print(f"quota full after {n} keys: {os.strerror(ctypes.get_errno())}", flush=True)
            break
print(f"uid {os.getuid()}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

/// Runs training job `name` of host program `program` with `environment` to its end, which must
/// be Completed; its log.
fn completed(c: &Coordinator, name: &str, program: &str, environment: Value) -> String {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(program);
    r["Environment"] = environment;
    c.create_training_job(&r);
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", name], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    let log = c.logs(name);
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{log}");
    log
}

#[test]
fn a_uid_lent_again_holds_no_key_of_its_last_holder() {
    let c = Coordinator::start();
    // One uid: every job gets it, one after the other.
    let _agent = c.start_agent("keyrings", &["--advertise-vcpus", "8", "--instance-uids", "70200-70200"], &[]);
    let program = c.install_program("key-probe.py", KEY_PROBE);
    let mut logs = Vec::new();
    for (name, mode) in [("keys-plant", "plant"), ("keys-look", "look")] {
        let log = completed(&c, name, &program, json!({"MODE": mode}));
        assert!(log.contains("uid 70200"), "{log}");
        logs.push(log);
    }
    // The first spent its uid's key quota: the next holder starts all the same (above).
    assert!(logs[0].contains("quota full after"), "{}", logs[0]);
    for ring in ["user", "session", "user-session"] {
        assert!(logs[0].contains(&format!("planted in {ring}: True")), "{}", logs[0]);
        assert!(logs[1].contains(&format!("not in {ring}: Required key not available")), "{}", logs[1]);
    }
    assert!(!logs[1].contains("LEAK"), "{}", logs[1]);
}

/// Tries to make a user namespace every way a program can (`unshare`, a raw `clone`, `clone3`,
/// the util-linux tool) and starts a thread and a process, which must still work.
const USER_NAMESPACE_PROBE: &str = r#"#!/usr/bin/env python3
import ctypes, os, platform, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
CLONE, CLONE3 = {"x86_64": (56, 435), "aarch64": (220, 435)}[platform.machine()]
def outcome(rc):
    return "made" if rc >= 0 else os.strerror(ctypes.get_errno())
print(f"uid {os.getuid()}", flush=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(f"seccomp mode {status['Seccomp'].strip()}", flush=True)
# A child that a raw clone made leaves at once.
pid = libc.syscall(ctypes.c_long(CLONE), ctypes.c_long(CLONE_NEWUSER | SIGCHLD), *[ctypes.c_long(0)] * 4)
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
print(f"clone: {outcome(pid)}", flush=True)
# With no arguments clone3 is refused as invalid, unless a filter answers first.
print(f"clone3: {outcome(libc.syscall(ctypes.c_long(CLONE3), ctypes.c_long(0), ctypes.c_long(0)))}", flush=True)
tool = subprocess.run(["unshare", "--user", "id", "-u"], capture_output=True, text=True)
print(f"unshare tool: {tool.returncode} {tool.stdout.strip()} {tool.stderr.strip()}", flush=True)
# While it has one thread (a process of several may not change its user namespace: EINVAL), and
# last but the thread (in one, its uid is mapped to nothing and it may not make another).
print(f"unshare: {outcome(libc.unshare(CLONE_NEWUSER))}", flush=True)
ran = []
thread = threading.Thread(target=lambda: ran.append(True))
thread.start()
thread.join()
print(f"thread ran: {ran == [True]}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
"#;

#[test]
fn a_host_program_makes_no_user_namespace_unless_the_operator_allows_them() {
    let c = Coordinator::start();
    let program = c.install_program("user-namespace-probe.py", USER_NAMESPACE_PROBE);
    let run = |name: &str, extra: &[&str]| {
        let args = [&["--advertise-vcpus", "8", "--instance-uids", "70220-70221"], extra].concat();
        let _agent = c.start_agent(name, &args, &[]);
        let log = completed(&c, name, &program, json!({}));
        assert!(log.contains("uid 7022"), "it ran as a uid of its own: {log}");
        assert!(log.contains("thread ran: True"), "threads start (clone3 refused, clone without the flag): {log}");
        log
    };
    let refused = run("userns-refused", &[]);
    assert!(refused.contains("seccomp mode 2"), "a filter: {refused}");
    for call in ["clone", "unshare"] {
        assert!(refused.contains(&format!("{call}: Operation not permitted")), "{refused}");
    }
    assert!(refused.contains("clone3: Function not implemented"), "{refused}");
    assert!(refused.contains("unshare tool: 1"), "{refused}");
    // The operator's choice (rootless container tools need them): made every way.
    let allowed = run("userns-allowed", &["--instance-user-namespaces"]);
    assert!(allowed.contains("seccomp mode 0"), "no filter: {allowed}");
    for call in ["clone", "unshare"] {
        assert!(allowed.contains(&format!("{call}: made")), "{allowed}");
    }
    assert!(allowed.contains("clone3: Invalid argument"), "{allowed}");
    // In its own user namespace the tool's uid is the overflow uid: nothing is mapped.
    assert!(allowed.contains("unshare tool: 0 65534"), "{allowed}");
}

/// Lists its NVIDIA device nodes; runs two seconds, so that two run at once.
const LIST_GPUS: &str = r#"#!/bin/sh
echo "gpus=$(ls /dev | grep nvidia | tr '\n' ' ')"
echo "read=$(for d in /dev/nvidia*; do head -c 4 "$d"; done | wc -c)"
mkdir -p "$SM_MODEL_DIR"
sleep 2
"#;

#[test]
fn without_a_cdi_spec_host_programs_get_their_gpus_node_by_its_minor_number() {
    // NVML says GPU n's node is /dev/nvidia<40 + n>: made here, in the host's /dev, with the
    // control node (unless the host has one).
    let nodes: Vec<tempfile::TempPath> = ["nvidia40", "nvidia41"]
        .into_iter()
        .chain((!Path::new("/dev/nvidiactl").exists()).then_some("nvidiactl"))
        .map(|name| {
            let path = tempfile::TempPath::try_from_path(format!("/dev/{name}")).expect("an absolute path");
            fake_device_node(&path);
            path
        })
        .collect();
    let dir = tempfile::tempdir().expect("dir");
    let library = trainyard_testkit::nvml::build_fake_nvml(dir.path());
    let c = Coordinator::start();
    let agent_args = ["--cdi-spec-dir", path(dir.path())];
    let env = [("FAKE_NVML_MINOR_OFFSET", "40")];
    let program = c.install_program("list-gpus.sh", LIST_GPUS);
    let logs =
        two_gpu_jobs_at_once(&c, "minors", &library, &agent_args, &env, &program, json!({}), ["minor-a", "minor-b"]);
    let mut seen = Vec::new();
    for log in logs {
        let line = log.lines().find_map(|l| l.strip_prefix("gpus=")).unwrap_or_default().to_string();
        let gpus: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(gpus.len(), 2, "its GPU's node and the control node, no other: {log}");
        assert!(gpus.contains(&"nvidiactl"), "{log}");
        assert!(log.contains("read=8"), "both nodes can be read: {log}");
        seen.push(gpus.into_iter().find(|g| *g != "nvidiactl").unwrap_or_default().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["nvidia40", "nvidia41"], "the two ran at once, each with its GPU's node by minor number");
    drop(nodes);
}

/// A set-user-ID root copy of a program in /usr/local/bin, removed when dropped.
fn set_uid_copy_of(program: &str) -> tempfile::TempPath {
    use std::os::unix::fs::PermissionsExt;
    let copy =
        tempfile::TempPath::try_from_path(format!("/usr/local/bin/trainyard-test-setuid-{}", std::process::id()))
            .expect("an absolute path");
    std::fs::copy(program, &copy).expect("copy");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    copy
}

/// Says which file it was given, whose it is, and whether it could change it.
const INPUT_READER: &str = r#"#!/bin/sh
f=$(find "$SM_CHANNEL_TRAIN" -type f | sort | head -n 1)
echo "input inode=$(stat -c %i "$f") owner=$(stat -c %u "$f") mode=$(stat -c %a "$f") me=$(id -u)"
if (echo tampered >> "$f") 2> /dev/null; then echo "TAMPERED"; fi
if chmod 666 "$f" 2> /dev/null; then echo "TAMPERED mode"; fi
mkdir -p "$SM_MODEL_DIR"
"#;

#[test]
fn staged_inputs_are_one_read_only_copy_shared_between_trials() {
    let c = Coordinator::start();
    let _agent = c.start_agent("cache", &["--advertise-vcpus", "8"], &[]);
    let reader = c.install_program("input-reader.sh", INPUT_READER);
    let source: Vec<(std::path::PathBuf, Vec<u8>)> =
        std::fs::read_dir(trainyard_e2e::repo_root().join("deploy/examples/data/blobs/train"))
            .expect("examples")
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| (e.path(), std::fs::read(e.path()).expect("read")))
            .collect();
    let mut seen = Vec::new();
    for name in ["reader-a", "reader-b"] {
        let mut r: Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(reader);
        let file = c.write(&format!("{name}.json"), &r.to_string());
        c.cli(&["training-jobs", "create", "--file", path(&file)]).assert_success();
        let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", name], |d| {
            d["TrainingJobStatus"] != "InProgress"
        });
        assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
        let logs = c.logs(name);
        assert!(!logs.contains("TAMPERED"), "{logs}");
        let line = logs.lines().find(|l| l.contains("input inode=")).unwrap_or_else(|| panic!("{logs}")).to_string();
        assert!(line.contains("owner=0 mode=644"), "root's and read-only: {line}");
        seen.push(line.split_whitespace().find(|w| w.starts_with("inode=")).map(str::to_string));
    }
    assert_eq!(seen[0], seen[1], "both trials read the one cached copy");
    let objects = c.dir.path().join("agents/cache/cache/objects");
    assert!(std::fs::read_dir(&objects).expect("cache").count() > 0, "{}", objects.display());
    for (path, bytes) in source {
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "{} unchanged", path.display());
    }
}
