//! What operators scrape and probe: both daemons' Prometheus metrics, `/healthz` and `/readyz` on
//! their `--metrics-listen` addresses, read over real HTTP while a job runs through them.

use std::time::Duration;

use serde_json::json;
use trainyard_e2e::{Backend, Coordinator, TEST_TRAINER, example_json, http_get as get, on_both_backends};
use trainyard_testkit::{free_port, nvml, wait_until};

/// Debian's Prometheus server, scraping the given targets (job name, address) every second, its
/// data in a temp dir.
struct Prometheus {
    address: String,
    _daemon: trainyard_testkit::Daemon,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, address) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("config");
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = std::process::Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"));
        let daemon = trainyard_testkit::Daemon::spawn("prometheus", command, dir.path());
        let up = wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(&address).is_ok());
        assert!(up, "prometheus did not start (scripts/setup installs it): {}", daemon.log());
        Prometheus { address, _daemon: daemon, _dir: dir }
    }

    /// The answer of the HTTP API to an instant query (a PromQL of letters, digits and `_`).
    fn query(&self, promql: &str) -> serde_json::Value {
        serde_json::from_str(&get(&self.address, &format!("/api/v1/query?query={promql}")).1)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// The value of the sample `name` (with its labels, as written) in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

on_both_backends!(
    both_daemons_serve_metrics_health_and_readiness,
    ended_jobs_leave_after_their_retention_and_ended_tuning_jobs_can_be_deleted
);

fn both_daemons_serve_metrics_health_and_readiness(backend: Backend) {
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let mut c = Coordinator::start_on_with_args(backend, &["--metrics-listen", &coordinator_metrics]);
    let dir = tempfile::tempdir().expect("dir");
    let library = nvml::build_fake_nvml(dir.path());
    let agent = c.start_agent(
        "scraped",
        &[
            "--advertise-vcpus",
            "16",
            "--metrics-listen",
            &agent_metrics,
            "--nvml-library",
            library.to_str().expect("utf-8"),
        ],
        &[("FAKE_NVML_GPUS", nvml::gpus(1, "NVIDIA A10G", 23028).as_str())],
    );
    for address in [&coordinator_metrics, &agent_metrics] {
        assert!(
            wait_until(Duration::from_secs(30), || get(address, "/readyz").0 == 200),
            "{address}: {:?}\ncoordinator's log:\n{}\nagent's log:\n{}",
            get(address, "/readyz"),
            c.daemon.log(),
            agent.log()
        );
        assert_eq!(get(address, "/healthz"), (200, "ok\n".to_string()));
    }

    let mut r: serde_json::Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("scraped-job");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(c.install_program("trainer.py", TEST_TRAINER));
    let file = c.write("scraped-job.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let done = c.wait_json(&["training-jobs", "describe", "scraped-job"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");

    let scraped = || get(&coordinator_metrics, "/metrics").1;
    // The gauges are refreshed by the coordinator's periodic pass (twice a second), so a job this
    // short may end before they first show the agent.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let page = scraped();
            sample(&page, "trainyard_jobs_running") == Some(0.0)
                && sample(&page, "trainyard_agents{state=\"ready\"}") == Some(1.0)
        }),
        "{}",
        scraped()
    );
    let page = scraped();
    assert_eq!(sample(&page, "trainyard_queue_length"), Some(0.0), "{page}");
    assert_eq!(sample(&page, "trainyard_instances_ended_total{state=\"Completed\"}"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "trainyard_queue_wait_seconds_count"), Some(1.0), "{page}");
    // The API's latency, by method and status code.
    assert_eq!(
        sample(&page, "trainyard_rpc_seconds_count{method=\"CreateTrainingJob\",code=\"Ok\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(!c.cli(&["training-jobs", "describe", "no-such-job"]).0.status.success());
    let page = scraped();
    assert_eq!(
        sample(&page, "trainyard_rpc_seconds_count{method=\"DescribeTrainingJob\",code=\"NotFound\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(sample(&page, "trainyard_placement_pass_seconds_count").is_some_and(|n| n >= 1.0), "{page}");
    // The store's latency, by operation: the one job was created once, and read since.
    assert_eq!(
        sample(&page, "trainyard_store_seconds_count{operation=\"create_training_jobs\",outcome=\"ok\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(
        sample(&page, "trainyard_store_seconds_count{operation=\"get_training_job\",outcome=\"ok\"}")
            .is_some_and(|n| n >= 1.0),
        "{page}"
    );

    let coordinator_page = page.clone();
    let page = get(&agent_metrics, "/metrics").1;
    assert_eq!(sample(&page, "trainyard_agent_instances_running"), Some(0.0), "{page}");
    // The Grafana dashboard in deploy/ queries only what the two daemons export.
    let exported: std::collections::BTreeSet<String> = [coordinator_page.as_str(), page.as_str()]
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/trainyard.json"))
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (at, _) in expr.match_indices("trainyard_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let unknown: Vec<&String> = queried.iter().filter(|q| !exported.contains(*q)).collect();
    assert!(unknown.is_empty(), "the dashboard queries metrics nobody exports: {unknown:?}\n{exported:?}");
    assert_eq!(sample(&page, "trainyard_agent_staging_seconds_count"), Some(1.0), "{page}");
    // Its start, step by step: the namespace (one made ready ahead), then the launch.
    assert_eq!(sample(&page, "trainyard_agent_network_setup_seconds_count"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "trainyard_agent_launch_seconds_count"), Some(1.0), "{page}");
    assert!(sample(&page, "trainyard_agent_launch_seconds_sum").is_some_and(|s| s > 0.0), "{page}");
    // The example's two channels (train.csv, validation.csv) and the model archive, in bytes.
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/data/blobs");
    let channel_bytes: u64 = ["train", "validation"]
        .iter()
        .flat_map(|c| std::fs::read_dir(format!("{data}/{c}")).expect("channel dir").flatten())
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or_default())
        .sum();
    assert_eq!(sample(&page, "trainyard_agent_staged_bytes_total"), Some(channel_bytes as f64), "{page}");
    assert!(sample(&page, "trainyard_agent_uploaded_bytes_total").is_some_and(|b| b > 0.0), "{page}");
    assert_eq!(sample(&page, "trainyard_agent_upload_seconds_count"), Some(1.0), "{page}");
    let gpu = format!("trainyard_agent_gpu_memory_used_mib{{uuid=\"{}\",name=\"NVIDIA A10G\"}}", nvml::uuid(0));
    assert!(sample(&page, &gpu).is_some(), "the fake GPU, through NVML: {page}");

    // A real Prometheus server scrapes both and answers queries over what it scraped.
    let prometheus = Prometheus::start(&[("coordinator", &coordinator_metrics), ("agent", &agent_metrics)]);
    let scraped_up = wait_until(Duration::from_secs(30), || {
        let up = prometheus.query("up");
        let results = up["data"]["result"].as_array().cloned().unwrap_or_default();
        results.len() == 2 && results.iter().all(|r| r["value"][1] == "1")
    });
    assert!(scraped_up, "both targets up: {:#}", prometheus.query("up"));
    let ended = prometheus.query("trainyard_instances_ended_total");
    assert_eq!(ended["data"]["result"][0]["metric"]["state"], "Completed", "{ended:#}");
    assert_eq!(ended["data"]["result"][0]["value"][1], "1", "{ended:#}");
    let staged = prometheus.query("trainyard_agent_staged_bytes_total");
    assert_eq!(staged["data"]["result"][0]["value"][1], channel_bytes.to_string(), "{staged:#}");

    // Without its coordinator an agent is alive but not ready.
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    c.daemon.signal(trainyard_testkit::SIGKILL);
    c.daemon.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(wait_until(Duration::from_secs(10), || get(&agent_metrics, "/readyz").0 == 503));
    assert_eq!(get(&agent_metrics, "/readyz").1, "not ready: not connected to the coordinator\n");
    assert_eq!(get(&agent_metrics, "/healthz").0, 200);
    c.restart(trainyard_testkit::SIGKILL);
    assert!(wait_until(Duration::from_secs(20), || get(&agent_metrics, "/readyz").0 == 200), "it reconnects");
}

/// The units in deploy/systemd load without a warning, and the coordinator's sandbox is tight
/// (`systemd-analyze security` rates it; the agent must run as root and cannot be).
/// The coordinator turns transparent huge pages off for itself (its allocator asks for them, and
/// zeroing them cost a seventh of its CPU under a burst of creates: see `main.rs`).
#[test]
fn the_coordinator_runs_without_transparent_huge_pages() {
    let c = Coordinator::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.daemon.pid())).expect("status");
    assert!(status.contains("THP_enabled:\t0"), "{status}");
}

#[test]
fn the_systemd_units_verify_and_sandbox_the_coordinator() {
    let dir = tempfile::tempdir().expect("dir");
    let binaries = trainyard_testkit::binary("trainyard-coordinator");
    let binaries = binaries.parent().expect("target dir").display().to_string();
    let mut units = Vec::new();
    for name in ["trainyard-coordinator.service", "trainyard-agent.service"] {
        let text = std::fs::read_to_string(trainyard_e2e::repo_root().join("deploy/systemd").join(name)).expect("unit");
        // As installed, with the binaries this suite built where the units expect them.
        let unit = dir.path().join(name);
        std::fs::write(&unit, text.replace("/usr/local/bin", &binaries)).expect("write");
        units.push(unit);
    }
    let verify =
        std::process::Command::new("systemd-analyze").arg("verify").args(&units).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && stderr.trim().is_empty(), "{stderr}");

    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&units[0])
        .output()
        .expect("systemd-analyze");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("trainyard-coordinator.service: ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}"));
    assert!(exposure <= 2.0, "the coordinator's exposure is {exposure}: {report}");
}

/// Completions and the manual page come from the CLI's own definitions: every subcommand is in them.
#[test]
fn the_cli_prints_shell_completions_and_its_manual_page() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(trainyard_testkit::binary("trainyard")).args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = run(&["completions", "bash"]);
    for word in ["tuning-jobs", "training-jobs", "agents", "drain", "uncordon", "--deadline-seconds"] {
        assert!(bash.contains(word), "{word} is not completed");
    }
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("trainyard.bash");
    std::fs::write(&script, &bash).expect("write");
    let syntax = std::process::Command::new("bash").arg("-n").arg(&script).output().expect("bash");
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    assert!(run(&["completions", "zsh"]).starts_with("#compdef trainyard"));

    let man = run(&["man"]);
    assert!(man.contains(".TH trainyard 1"), "{man}");
    assert!(man.contains("training\\-jobs") && man.contains("agents"), "{man}");
}

/// `tuning-jobs watch` outlives a coordinator restart: it says the coordinator does not answer,
/// waits, and goes on to the job's end.
#[test]
fn watch_waits_for_a_restarted_coordinator() {
    let mut c = Coordinator::start();
    let agent = c.start_agent("watched", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut r: serde_json::Value = example_json("tuning-job.json");
    r["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] =
        json!(trainyard_e2e::repo_root().join("deploy/examples/trainer/train.py").display().to_string());
    r["TrainingJobDefinition"]["StaticHyperParameters"]["epoch_seconds"] = json!("0.2");
    let file = c.write("watched.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let name = r["HyperParameterTuningJobName"].as_str().expect("name").to_string();
    let watch = std::process::Command::new(trainyard_testkit::binary("trainyard"))
        .env("TRAINYARD_COORDINATOR", &c.address)
        .env("TRAINYARD_CA_FILE", c.ca_file())
        .env("TRAINYARD_TOKEN", &c.token)
        .args(["--output", "json", "tuning-jobs", "watch", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("watch");

    std::thread::sleep(Duration::from_secs(1));
    agent.expect_log("coordinator unreachable or stream ended; instances keep running");
    c.daemon.signal(trainyard_testkit::SIGKILL);
    c.daemon.wait_exit(Duration::from_secs(10)).expect("killed");
    std::thread::sleep(Duration::from_secs(3));
    c.restart(trainyard_testkit::SIGKILL);

    let out = watch.wait_with_output().expect("watch ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the coordinator does not answer") && stderr.contains("retrying"), "{stderr}");
    assert!(stderr.contains("the coordinator answers again"), "{stderr}");
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(described["HyperParameterTuningJobStatus"], "Completed", "{described:#}");
}

#[test]
fn a_coordinator_whose_database_is_down_says_why_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("postgres://trainyard:s3cret-password@127.0.0.1:{}/trainyard", trainyard_testkit::free_port());
    let out = std::process::Command::new(trainyard_testkit::binary("trainyard-coordinator"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--database-url", &url])
        .env("TRAINYARD_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Connection refused"), "the real error, not the pool's time-out: {stderr}");
    assert!(!stderr.contains("s3cret-password"), "{stderr}");
}

/// `trainyard-coordinator backup` copies a running coordinator's SQLite database; a coordinator
/// restored from the copy has every job the copy was taken after, and none from later.
#[test]
fn a_running_coordinator_is_backed_up_and_restored_from_the_copy() {
    let mut c = Coordinator::start();
    let agent = c.start_agent("backed-up", &[], &[]);
    agent.expect_log("coordinator unreachable or stream ended");
    let trainer = c.install_program("trainer.py", TEST_TRAINER);
    let request = |name: &str| {
        let mut r: serde_json::Value = example_json("training-job.json");
        r["TrainingJobName"] = json!(name);
        r["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
        c.write(&format!("{name}.json"), &r.to_string())
    };
    let file = request("before-backup");
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "before-backup"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");

    let copy = c.data_dir().parent().expect("dir").join("backup.db");
    let copy_arg = copy.to_str().expect("utf-8").to_string();
    c.admin(&["backup", "--to", &copy_arg]);
    // Refused, not overwritten, the second time.
    let again = c.admin_command(&["backup", "--to", &copy_arg]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"));
    let file = request("after-backup");
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    c.stop(trainyard_testkit::SIGTERM);
    let data = c.data_dir();
    for stale in ["trainyard.db-wal", "trainyard.db-shm"] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    std::fs::copy(&copy, data.join("trainyard.db")).expect("restore the copy");
    c.respawn();
    let restored = c.json(&["training-jobs", "describe", "before-backup"]);
    assert_eq!(restored["TrainingJobStatus"], "Completed", "{restored:#}");
    assert!(c.logs("before-backup").contains("epoch"), "its logs came back too");
    let later = c.cli(&["training-jobs", "describe", "after-backup"]);
    assert_ne!(later.code(), 0, "a job from after the backup is not in it");
}

fn ended_jobs_leave_after_their_retention_and_ended_tuning_jobs_can_be_deleted(backend: Backend) {
    let c = Coordinator::start_on_with_args(backend, &["--job-retention", "8s", "--log-retention", "2s"]);
    let _agent = c.start_agent("keeper", &["--advertise-vcpus", "16"], &[]);
    let trainer = c.install_program("trainer.py", TEST_TRAINER);
    let mut r: serde_json::Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("short-lived");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    let file = c.write("short-lived.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let mut t: serde_json::Value = example_json("tuning-job.json");
    t["HyperParameterTuningJobName"] = json!("deleted-tuning");
    t["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2});
    t["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    let file = c.write("deleted-tuning.json", &t.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    // A tuning job is deleted only once it has ended.
    let refused = c.cli(&["tuning-jobs", "delete", "deleted-tuning"]);
    let tuning = c.json(&["tuning-jobs", "describe", "deleted-tuning"]);
    if tuning["HyperParameterTuningJobStatus"] == "InProgress" {
        assert!(!refused.0.status.success(), "deleted while it ran");
        assert!(refused.stderr().contains("wait for it to end"), "{}", refused.stderr());
    }
    let done = c.wait_json_for(Duration::from_secs(60), &["tuning-jobs", "describe", "deleted-tuning"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let trials = c.json(&["tuning-jobs", "trials", "deleted-tuning"]);
    let trial = trials["TrainingJobSummaries"][0]["TrainingJobName"].as_str().expect("a trial").to_string();
    c.cli(&["tuning-jobs", "delete", "deleted-tuning"]).assert_success();
    assert!(!c.cli(&["tuning-jobs", "describe", "deleted-tuning"]).0.status.success(), "deleted");
    assert!(c.cli(&["training-jobs", "describe", &trial]).0.status.success(), "its trials stay");

    // Logs first, after 2 s; the jobs themselves after 8 s.
    let done = c.wait_json(&["training-jobs", "describe", "short-lived"], |d| d["TrainingJobStatus"] != "InProgress");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    assert!(
        wait_until(Duration::from_secs(20), || c.logs("short-lived").trim().is_empty()),
        "{}",
        c.logs("short-lived")
    );
    assert!(c.cli(&["training-jobs", "describe", "short-lived"]).0.status.success(), "the job outlives its logs");
    assert!(
        wait_until(Duration::from_secs(30), || !c
            .cli(&["training-jobs", "describe", "short-lived"])
            .0
            .status
            .success()),
        "the ended job is deleted after its retention"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !c.cli(&["training-jobs", "describe", &trial]).0.status.success()),
        "so is the deleted tuning job's trial"
    );
}

/// `scripts/package` builds a Debian package per program (here of the debug binaries the test
/// command built): each holds
/// its binary where its unit looks for it, a minimal configuration that loads (a conffile), the
/// full example, and the CLI its manual page and bash completion.
#[test]
fn the_debian_packages_hold_each_program_its_unit_and_a_configuration_that_loads() {
    let out = tempfile::tempdir().expect("dir");
    let built = std::process::Command::new(trainyard_e2e::repo_root().join("scripts/package"))
        .args(["--profile", "debug", "--no-build", "--out"])
        .arg(out.path())
        .output()
        .expect("run scripts/package");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deb = |name: &str| {
        std::fs::read_dir(out.path())
            .expect("out")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_"))))
            .unwrap_or_else(|| panic!("no package {name}"))
    };
    let dpkg_deb = |args: &[&str], package: &std::path::Path| {
        let out = std::process::Command::new("dpkg-deb").args(args).arg(package).output().expect("dpkg-deb");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (name, files) in [
        (
            "trainyard",
            &[
                "./usr/bin/trainyard",
                "./usr/share/man/man1/trainyard.1.gz",
                "./usr/share/bash-completion/completions/trainyard",
            ][..],
        ),
        (
            "trainyard-coordinator",
            &[
                "./usr/bin/trainyard-coordinator",
                "./lib/systemd/system/trainyard-coordinator.service",
                "./etc/trainyard/coordinator.toml",
                "./usr/share/doc/trainyard-coordinator/examples/coordinator.example.toml",
            ][..],
        ),
        (
            "trainyard-agent",
            &[
                "./usr/bin/trainyard-agent",
                "./lib/systemd/system/trainyard-agent.service",
                "./etc/trainyard/agent.toml",
                "./usr/share/doc/trainyard-agent/examples/agent.example.toml",
            ][..],
        ),
    ] {
        let package = deb(name);
        let fields = dpkg_deb(&["--field"], &package);
        assert!(fields.contains(&format!("Package: {name}\n")), "{fields}");
        assert!(fields.contains(&format!("Version: {}\n", env!("CARGO_PKG_VERSION"))), "{fields}");
        let listed = dpkg_deb(&["--contents"], &package);
        for file in files {
            assert!(listed.lines().any(|l| l.ends_with(file)), "{name} lacks {file}:\n{listed}");
        }
    }
    assert!(dpkg_deb(&["--field"], &deb("trainyard-agent")).contains("Depends: iproute2, nftables"));
    let conffiles = std::process::Command::new("dpkg-deb")
        .args(["--ctrl-tarfile"])
        .arg(deb("trainyard-coordinator"))
        .output()
        .expect("dpkg-deb");
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("conffiles"), "the configuration is a conffile");

    // Installed (here: unpacked), each unit finds its binary, the CLI its manual page, and the
    // coordinator's shipped configuration loads.
    let root = tempfile::tempdir().expect("dir");
    for name in ["trainyard", "trainyard-coordinator", "trainyard-agent"] {
        let out = std::process::Command::new("dpkg-deb").arg("-x").arg(deb(name)).arg(root.path()).output().expect("x");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for unit in ["trainyard-coordinator", "trainyard-agent"] {
        let text =
            std::fs::read_to_string(root.path().join(format!("lib/systemd/system/{unit}.service"))).expect("unit");
        assert!(text.contains(&format!("ExecStart=/usr/bin/{unit} ")), "{text}");
    }
    let man = std::process::Command::new("gzip")
        .args(["-dc"])
        .arg(root.path().join("usr/share/man/man1/trainyard.1.gz"))
        .output()
        .expect("gzip");
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH trainyard"), "a roff manual page");
    let data = tempfile::tempdir().expect("dir");
    let loaded = std::process::Command::new(root.path().join("usr/bin/trainyard-coordinator"))
        .arg("--config")
        .arg(root.path().join("etc/trainyard/coordinator.toml"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["tokens", "list"])
        .output()
        .expect("run the packaged coordinator");
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
}
