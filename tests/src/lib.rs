//! Helpers for the end-to-end tests: a coordinator started from the built binary in its own temp
//! dir, and the `trainyard` CLI pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;
pub use trainyard_testkit::netns;

use trainyard_testkit::{Daemon, LogCheck, PgServer, binary, wait_until};

/// The store a coordinator runs on. Scenarios that touch the store run on both (`on_both_backends!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named scenario `fn name(backend: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::Backend::Sqlite) })+
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::Backend::Postgres) })+
        }
    };
}

/// The number that follows the first `prefix` in `text` (e.g. `uid=` in a job's log).
pub fn number_after(text: &str, prefix: &str) -> u32 {
    text.split(prefix)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix} in {text}"))
}

/// The uids agents give instances by default (systemd's dynamic range).
pub const INSTANCE_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// The repository root (for the examples under deploy/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("deploy/examples").join(name)
}

/// An example request from `deploy/examples`, parsed, for a test to adapt.
pub fn example_json(name: &str) -> serde_json::Value {
    let path = example(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A running coordinator: TLS, an admin token for the CLI (user `e2e`), and a join token for the
/// agents started through it. Dropping it kills the process group; its log stays in `dir`.
/// Agents started through it are dropped before it (they are declared after it); it then removes
/// the network namespaces they were killed too abruptly to remove.
pub struct Coordinator {
    pub address: String,
    /// Where the daemon listens (`address`, or all interfaces for simulated hosts).
    listen: String,
    pub daemon: Daemon,
    database_url: Option<String>,
    args: Vec<String>,
    /// An admin API token, passed to every `cli` call.
    pub token: String,
    /// The join token agents started through this coordinator use.
    pub join_token: String,
    /// The judge of the coordinator's log, across restarts; frozen when the first agent is dropped.
    log_check: Arc<LogCheck>,
    /// The judges of the agents' logs, by agent id.
    agent_checks: Mutex<HashMap<String, Arc<LogCheck>>>,
    /// The throwaway PostgreSQL server of [`Coordinator::start_on`], stopped after the daemon.
    _postgres: Option<PgServer>,
    /// Training programs ([`Coordinator::install_program`]).
    programs: TempDir,
    /// What the CLI dials, when not `address` ([`Coordinator::use_coordinators`]).
    cli_coordinators: Mutex<Option<String>>,
    /// The log checks of its peers ([`Coordinator::start_peer`]), frozen with its own.
    peer_checks: Mutex<Vec<Arc<LogCheck>>>,
    /// Dropped last: the daemons' logs, read when they are dropped, live here.
    pub dir: TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // Agents' work roots: under the temp dir, or under the programs dir (outside /tmp).
        for agents in [self.dir.path().join("agents"), self.programs_dir().join("agents")] {
            netns::remove_agents_leftovers(&agents);
            netns::remove_agents_cgroups(&agents);
        }
    }
}

/// The arguments of an agent that runs the tests' programs (`--host-programs`), whose instances
/// may write the shared files of `shared` (the rest of the host is read-only to them).
fn with_host_programs(shared: &Path, args: &[&str]) -> Vec<String> {
    let shared = shared.display().to_string();
    ["--host-programs", "--instance-writable-path", &shared]
        .into_iter()
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn coordinator_dir() -> TempDir {
    tempfile::Builder::new().prefix("trainyard-e2e-").tempdir().expect("temp dir")
}

/// Where a test's training programs live: readable and executable by every user (instances run as
/// uids of their own), as deployed programs are, and outside /tmp, which instances see a private
/// one of.
fn programs_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let parent = repo_root().join("target/e2e-programs");
    std::fs::create_dir_all(&parent).expect("programs dir");
    let dir = tempfile::Builder::new().prefix("programs-").tempdir_in(&parent).expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::create_dir(dir.path().join(SHARED)).expect("shared dir");
    dir
}

/// The dir of the programs dir whose files jobs may write (see `shared_file`).
const SHARED: &str = "shared";

impl Coordinator {
    /// On SQLite in a fresh data dir.
    pub fn start() -> Coordinator {
        let dir = coordinator_dir();
        Self::start_in(dir, None)
    }

    /// On SQLite, or on a throwaway PostgreSQL server of its own.
    pub fn start_on(backend: Backend) -> Coordinator {
        match backend {
            Backend::Sqlite => Self::start(),
            Backend::Postgres => {
                let server = PgServer::start();
                let mut c = Self::start_with_database(&server.fresh_database());
                c._postgres = Some(server);
                c
            }
        }
    }

    /// On the given database (e.g. a throwaway PostgreSQL).
    pub fn start_with_database(url: &str) -> Coordinator {
        let dir = coordinator_dir();
        Self::start_in(dir, Some(url.to_string()))
    }

    /// On SQLite, with extra flags (e.g. `--agent-lost-after-seconds 2`).
    pub fn start_with_args(args: &[&str]) -> Coordinator {
        Self::start_listening("127.0.0.1", None, args)
    }

    /// On either backend, with extra flags.
    pub fn start_on_with_args(backend: Backend, args: &[&str]) -> Coordinator {
        match backend {
            Backend::Sqlite => Self::start_with_args(args),
            Backend::Postgres => {
                let server = PgServer::start();
                let mut c = Self::start_listening("127.0.0.1", Some(server.fresh_database()), args);
                c._postgres = Some(server);
                c
            }
        }
    }

    /// Listening on every interface, so that agents in simulated hosts reach it at the LAN's
    /// gateway address; the CLI still uses loopback.
    pub fn start_for_lan(args: &[&str]) -> Coordinator {
        Self::start_listening("0.0.0.0", None, args)
    }

    /// `database`: a URL, or None for SQLite in the data dir (named by flag).
    fn start_listening(host: &str, database: Option<String>, args: &[&str]) -> Coordinator {
        let dir = coordinator_dir();
        // Port 0: the coordinator binds a free one and says which (see `wait_ready`). A port
        // picked here could be taken by another test's daemon before the coordinator binds it.
        let address = String::new();
        let listen = format!("{host}:0");
        let database =
            database.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("data/trainyard.db").display()));
        let mut extra: Vec<String> = vec!["--database-url".into(), database];
        extra.extend(args.iter().map(|a| a.to_string()));
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let log_check = Self::log_check(dir.path());
        let daemon = Self::spawn(dir.path(), &listen, None, &extra, &log_check);
        let mut c = Coordinator {
            dir,
            address,
            listen,
            daemon,
            database_url: None,
            args: extra,
            token: String::new(),
            join_token: String::new(),
            log_check,
            agent_checks: Mutex::default(),
            _postgres: None,
            programs: programs_dir(),
            cli_coordinators: Mutex::default(),
            peer_checks: Mutex::default(),
        };
        c.wait_ready(0);
        c.make_tokens();
        c
    }

    fn start_in(dir: TempDir, database_url: Option<String>) -> Coordinator {
        let address = String::new();
        let listen = "127.0.0.1:0".to_string();
        let log_check = Self::log_check(dir.path());
        let daemon = Self::spawn(dir.path(), &listen, database_url.as_deref(), &[], &log_check);
        let mut c = Coordinator {
            dir,
            address,
            listen,
            daemon,
            database_url,
            args: Vec::new(),
            token: String::new(),
            join_token: String::new(),
            log_check,
            agent_checks: Mutex::default(),
            _postgres: None,
            programs: programs_dir(),
            cli_coordinators: Mutex::default(),
            peer_checks: Mutex::default(),
        };
        c.wait_ready(0);
        c.make_tokens();
        c
    }

    fn make_tokens(&mut self) {
        self.token = self.admin(&["tokens", "create", "--user", "e2e", "--scope", "admin"]);
        // One token for every agent a test starts (a join token is single-use by default).
        self.join_token = self.admin(&["join-token", "--uses", "100"]);
    }

    /// Runs `trainyard-coordinator SUBCOMMAND...` on this coordinator's data and database (no
    /// server: `tokens ...`, `join-token`); asserts success and returns its standard output, trimmed.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.admin_command(args);
        assert!(
            out.status.success(),
            "trainyard-coordinator {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn admin_command(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("trainyard-coordinator"));
        cmd.args(&self.args).arg("--data-dir").arg(self.data_dir());
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(args).env("RUST_LOG", "warn").output().expect("run trainyard-coordinator")
    }

    /// The coordinator's CA certificate (what `--ca-file` names).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join("pki/ca.pem")
    }

    /// The coordinator's log check. The harness configures no execution roles, so the start-up
    /// warning about that is expected; tests that configure roles see it disappear.
    fn log_check(dir: &Path) -> Arc<LogCheck> {
        let check = LogCheck::new(dir.join("coordinator.log"));
        check.expect("no [[roles]] configured");
        check
    }

    fn spawn(dir: &Path, address: &str, database_url: Option<&str>, args: &[String], check: &Arc<LogCheck>) -> Daemon {
        let mut cmd = Command::new(binary("trainyard-coordinator"));
        cmd.args(args);
        // The listen address travels by environment, the data dir by flag: both paths are exercised.
        cmd.env("TRAINYARD_LISTEN", address).arg("--data-dir").arg(dir.join("data")).env("RUST_LOG", "info");
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        Daemon::spawn("coordinator", cmd, dir).checked_by(check.clone())
    }

    /// Declares a `WARN`/`ERROR` line of the coordinator's log (containing `pattern`) that the test
    /// causes on purpose; any other fails the test. The log is judged up to the moment the test
    /// drops its first agent (what follows is the teardown's).
    pub fn expect_log(&self, pattern: &str) {
        self.log_check.expect(pattern);
    }

    /// Waits until the daemon (just spawned; its log past byte `from` is its own) has bound its
    /// address, and learns the port.
    fn wait_ready(&mut self, from: usize) {
        let port = bound_port(&mut self.daemon, from);
        let host = self.listen.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host).to_string();
        self.listen = format!("{host}:{port}");
        self.address = format!("127.0.0.1:{port}");
    }

    /// Stops the daemon with `signal` and starts a new one on the same data and address.
    pub fn restart(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let status = self.stop(signal);
        self.respawn();
        status
    }

    /// Stops the daemon with `signal`; returns once it no longer listens.
    pub fn stop(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        self.daemon.signal(signal);
        let status = self.daemon.wait_exit(Duration::from_secs(20));
        let address = self.address.clone();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_err()),
            "the old coordinator still listens"
        );
        status
    }

    /// Starts the daemon again on the same data and address (after [`Coordinator::stop`]).
    pub fn respawn(&mut self) {
        let from = self.daemon.log().len();
        self.daemon =
            Self::spawn(self.dir.path(), &self.listen, self.database_url.as_deref(), &self.args, &self.log_check);
        self.wait_ready(from);
    }

    /// Another coordinator on this one's database, as a second host runs it: a data directory
    /// of its own holding a copy of this one's `pki/` (its CA and sealing key), its own address.
    /// It stands by while this one leads. Its log is checked like this one's.
    pub fn start_peer(&self, args: &[&str]) -> PeerCoordinator {
        self.start_peer_with(self.database_args(), args)
    }

    /// [`Coordinator::start_peer`], reaching the same database by another URL.
    pub fn start_peer_on(&self, database_url: &str, args: &[&str]) -> PeerCoordinator {
        self.start_peer_with(vec!["--database-url".into(), database_url.to_string()], args)
    }

    /// [`Coordinator::start_peer`], listening on `address` (e.g. another loopback address with this
    /// one's port, as a second host behind one DNS name would).
    pub fn start_peer_at(&self, address: &str, args: &[&str]) -> PeerCoordinator {
        self.start_peer_listening(address.to_string(), self.database_args(), args)
    }

    fn start_peer_with(&self, database_args: Vec<String>, args: &[&str]) -> PeerCoordinator {
        self.start_peer_listening("127.0.0.1:0".to_string(), database_args, args)
    }

    fn start_peer_listening(&self, address: String, database_args: Vec<String>, args: &[&str]) -> PeerCoordinator {
        let dir = coordinator_dir();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("pki")).expect("data dir");
        for entry in std::fs::read_dir(self.data_dir().join("pki")).expect("pki") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), data.join("pki").join(entry.file_name())).expect("copy pki");
        }
        let mut extra: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        extra.extend(database_args);
        let log_check = Self::log_check(dir.path());
        self.peer_checks.lock().unwrap_or_else(|e| e.into_inner()).push(log_check.clone());
        let daemon = Self::spawn(dir.path(), &address, None, &extra, &log_check);
        let mut peer = PeerCoordinator { address, args: extra, daemon, log_check, dir };
        peer.wait_listening(0);
        peer
    }

    /// The flags that name this coordinator's database (none: SQLite in its data directory).
    pub fn database_args(&self) -> Vec<String> {
        match (&self.database_url, self.args.iter().position(|a| a == "--database-url")) {
            (Some(url), _) => vec!["--database-url".into(), url.clone()],
            (None, Some(i)) => self.args[i..=i + 1].to_vec(),
            (None, None) => Vec::new(),
        }
    }

    /// The CLI dials `list` (e.g. every coordinator's address, comma-separated) from now on.
    pub fn use_coordinators(&self, list: &str) {
        *self.cli_coordinators.lock().unwrap_or_else(|e| e.into_inner()) = Some(list.to_string());
    }

    /// An agent given `coordinators` (a comma-separated list) rather than this one's address.
    pub fn start_agent_via(&self, coordinators: &str, id: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let args = with_host_programs(&self.shared_dir(), args);
        self.start_agent_with(Command::new(binary("trainyard-agent")), coordinators, id, &as_strs(&args), env)
    }

    /// Starts an agent connected to this coordinator, with its work root and buckets
    /// (`examples` = the repository's example data, `output` = `<dir>/output`) in this temp dir.
    /// It runs host programs (`--host-programs`): the tests' training programs are.
    pub fn start_agent(&self, id: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let args = with_host_programs(&self.shared_dir(), args);
        self.start_agent_with(Command::new(binary("trainyard-agent")), &self.address, id, &as_strs(&args), env)
    }

    /// An agent started by `launcher` (a command that ends by running the agent with the
    /// arguments appended to it, e.g. `unshare ... sh -c '...; exec "$@"' sh <agent>`), given
    /// `coordinators`.
    pub fn start_agent_through(&self, launcher: Command, coordinators: &str, id: &str, args: &[&str]) -> Daemon {
        let args = with_host_programs(&self.shared_dir(), args);
        self.start_agent_with(launcher, coordinators, id, &as_strs(&args), &[])
    }

    /// An agent as production runs it: container images only, no programs on the host.
    pub fn start_agent_for_images_only(&self, id: &str, args: &[&str]) -> Daemon {
        self.start_agent_for_images_only_with_env(id, args, &[])
    }

    pub fn start_agent_for_images_only_with_env(&self, id: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.start_agent_with(Command::new(binary("trainyard-agent")), &self.address, id, args, env)
    }

    /// Starts an agent inside a simulated host; it reaches this coordinator through the LAN.
    /// (`ip netns exec` mounts the namespace's own /sys, without the cgroup file systems: agents in
    /// simulated hosts run instances without cgroups, and say so.)
    pub fn start_agent_on(&self, host: &netns::Host, lan: &netns::Lan, id: &str, args: &[&str]) -> Daemon {
        let args = with_host_programs(&self.shared_dir(), args);
        self.start_agent_on_for_images_only(host, lan, id, &as_strs(&args))
    }

    /// As `start_agent_on`, for an agent that runs images only (containers get their cgroups
    /// from containerd, outside the simulated host).
    pub fn start_agent_on_for_images_only(
        &self,
        host: &netns::Host,
        lan: &netns::Lan,
        id: &str,
        args: &[&str],
    ) -> Daemon {
        let port = self.address.rsplit(':').next().unwrap_or_default();
        let address = format!("{}:{port}", lan.gateway);
        self.agent_check(id).expect("instances run without a cgroup");
        self.start_agent_with(host.command(binary("trainyard-agent")), &address, id, args, &[])
    }

    fn start_agent_with(
        &self,
        cmd: Command,
        coordinator: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut agent = self.spawn_agent_with(cmd, coordinator, id, args, env).checked_by(self.agent_check(id));
        let registered = wait_until(Duration::from_secs(20), || {
            self.json(&["agents", "list"])["Agents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["AgentId"] == id && x["State"] == "ready"))
        });
        agent.assert_running();
        assert!(registered, "agent {id} did not register; its log:\n{}", agent.log());
        agent
    }

    /// The judge of agent `id`'s log: one per id, as an agent restarted under its id appends to
    /// the same log.
    fn agent_check(&self, id: &str) -> Arc<LogCheck> {
        self.agent_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_insert_with(|| LogCheck::new(self.dir.path().join(format!("agent-{id}.log"))))
            .clone()
    }

    /// Starts an agent without waiting for it to register (for agents that must not: their
    /// refusals are in their logs, which the test reads; the logs are not checked).
    pub fn spawn_agent(&self, id: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.spawn_agent_with(
            Command::new(binary("trainyard-agent")),
            &self.address,
            id,
            &as_strs(&with_host_programs(&self.shared_dir(), args)),
            env,
        )
    }

    fn spawn_agent_with(
        &self,
        mut cmd: Command,
        coordinator: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        cmd.arg("--coordinator").arg(coordinator).arg("--id").arg(id);
        // Under this coordinator's temp dir unless the test gives one (instances see a private
        // /tmp, which hides a work root there from them; one outside it goes under
        // `programs_dir()/agents/<id>`, where the leftovers of a killed agent are looked for).
        if !args.contains(&"--work-root") {
            cmd.arg("--work-root").arg(self.dir.path().join("agents").join(id));
        }
        cmd.arg("--bucket")
            .arg(format!("trainyard-examples={}", repo_root().join("deploy/examples/data").display()))
            .arg("--bucket")
            .arg(format!("trainyard-output={}", self.output_dir().display()))
            .args(args)
            .env("TRAINYARD_JOIN_TOKEN", &self.join_token)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut agent = Daemon::spawn(&format!("agent-{id}"), cmd, self.dir.path()).freezes(self.log_check.clone());
        for peer in self.peer_checks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            agent = agent.freezes(peer.clone());
        }
        agent
    }

    /// Where `s3://trainyard-output/` is served from.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.path().join("output")
    }

    /// Writes a file into this coordinator's temp dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// [`Coordinator::write`] for a file that holds secrets (a join token, registry credentials):
    /// readable by its owner alone, as deployed (agents warn of one every user may read).
    pub fn write_private(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(name, contents);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Creates the training job `request` describes (its TrainingJobName names its file) through
    /// the CLI; asserts success.
    pub fn create_training_job(&self, request: &serde_json::Value) {
        let name = request["TrainingJobName"].as_str().expect("TrainingJobName");
        let file = self.write(&format!("{name}.json"), &request.to_string());
        self.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    }

    /// The dir agents started here let instances write (`--instance-writable-path`).
    fn shared_dir(&self) -> PathBuf {
        self.programs.path().join(SHARED)
    }

    /// Where training programs go: every user may read and run what is in it.
    pub fn programs_dir(&self) -> &Path {
        self.programs.path()
    }

    /// An empty file every job may append to (jobs run as uids of their own, and see a /tmp of
    /// their own): how a test's programs tell it what they did.
    pub fn shared_file(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.shared_dir().join(name);
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        path
    }

    /// Writes an executable program into this test's programs dir, once, and returns its path.
    /// Written under another name and renamed: rewriting a program while an agent starts it would
    /// make that start fail with "text file busy".
    pub fn install_program(&self, name: &str, text: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.programs.path().join(name);
        if !path.exists() {
            let staging = self.programs.path().join(format!("{name}.new"));
            std::fs::write(&staging, text).expect("write");
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::fs::rename(&staging, &path).expect("rename");
        }
        path.display().to_string()
    }

    /// `trainyard training-jobs logs JOB`, asserted to succeed.
    pub fn logs(&self, job: &str) -> String {
        let out = self.cli(&["training-jobs", "logs", job]);
        out.assert_success();
        out.stdout()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `trainyard ARGS` against this coordinator, with the admin token.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_as(&self.token, args)
    }

    /// Runs `trainyard ARGS` with another API token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> CliOutput {
        let dialled = self.cli_coordinators.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let output = Command::new(binary("trainyard"))
            .env("TRAINYARD_COORDINATOR", dialled.as_deref().unwrap_or(&self.address))
            .env("TRAINYARD_CA_FILE", self.ca_file())
            .env("TRAINYARD_TOKEN", token)
            .args(args)
            .output()
            .expect("run trainyard");
        CliOutput(output)
    }

    /// `trainyard --output json ARGS` with another token, asserted to succeed.
    pub fn json_as(&self, token: &str, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.cli_as(token, &full);
        out.assert_success();
        serde_json::from_str(&out.stdout()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", out.stdout()))
    }

    /// Runs `trainyard --output json ARGS`, asserts success, and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        out.assert_success();
        serde_json::from_str(&out.stdout()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", out.stdout()))
    }

    /// Polls `trainyard --output json ARGS` until `check` holds.
    pub fn wait_json(&self, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
        self.wait_json_for(Duration::from_secs(30), args, check)
    }

    pub fn wait_json_for(&self, timeout: Duration, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let held = wait_until(timeout, || {
            last = self.json(args);
            check(&last)
        });
        assert!(held, "{args:?} never satisfied the condition; last answer:\n{last:#}");
        last
    }
}

/// A small deterministic generator (xorshift), so that a failing run can be repeated from its seed.
pub struct Random(u64);

impl Random {
    /// Seeded from the clock; the seed is printed (and returned) for the failure messages.
    pub fn from_clock() -> (Random, u64) {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        println!("seed {seed}");
        (Random(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The port a coordinator daemon just spawned has bound, from what it logged past byte `from`
/// (a restarted daemon appends to its predecessor's log): it says "coordinator listening" or
/// "standing by" with the address once its socket is bound. Fails the test if the daemon exits
/// first or says nothing within 20 s. A test that starts a coordinator of its own listens on
/// port 0 and learns the port here: a port picked before the daemon binds it can be taken first.
pub fn bound_port(daemon: &mut Daemon, from: usize) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = daemon.log();
        let said = log.get(from..).unwrap_or_default().lines().find_map(|line| {
            if !(line.contains("coordinator listening") || line.contains("standing by")) {
                return None;
            }
            // `addr=HOST:PORT` as text, `"addr":"HOST:PORT"` with --log-format json.
            let (_, after) = line.split_once("addr=").or_else(|| line.split_once("\"addr\":\""))?;
            let address = after.split(|c: char| c.is_whitespace() || c == '"').next()?;
            address.rsplit_once(':')?.1.parse::<u16>().ok()
        });
        if let Some(port) = said.filter(|p| *p != 0) {
            return port;
        }
        daemon.assert_running();
        assert!(std::time::Instant::now() < deadline, "the coordinator did not say it listens; its log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A coordinator sharing another's database ([`Coordinator::start_peer`]).
pub struct PeerCoordinator {
    pub address: String,
    args: Vec<String>,
    pub daemon: Daemon,
    log_check: Arc<LogCheck>,
    pub dir: TempDir,
}

impl PeerCoordinator {
    fn wait_listening(&mut self, from: usize) {
        let port = bound_port(&mut self.daemon, from);
        let host = self.address.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host).to_string();
        self.address = format!("{host}:{port}");
    }

    /// Starts it again on the same data and address, after it was stopped.
    pub fn respawn(&mut self) {
        let from = self.daemon.log().len();
        self.daemon = Coordinator::spawn(self.dir.path(), &self.address, None, &self.args, &self.log_check);
        self.wait_listening(from);
    }

    /// Declares a `WARN`/`ERROR` line of its log the test causes on purpose.
    pub fn expect_log(&self, pattern: &str) {
        self.log_check.expect(pattern);
    }
}

pub struct CliOutput(pub Output);

impl CliOutput {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    pub fn assert_success(&self) {
        assert_eq!(self.code(), 0, "trainyard failed:\nstdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
    }
}

/// A training program for tests, written for SageMaker's contract. Its hyperparameters say what it
/// does: `mode` = ok (default) | fail | stubborn (ignores SIGTERM); `sleep` seconds of work; `x`, from
/// which it reports `score` = 1 - (x - 0.3)^2 as its objective. It prints the GPUs it was given and
/// when it ran, and saves a model (also when stopped with SIGTERM).
pub const TEST_TRAINER: &str = r#"#!/usr/bin/env python3
import json, os, signal, sys, time
base = os.environ["SAGEMAKER_BASE_DIR"]
hp = json.load(open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json")))
mode = hp.get("mode", "ok")
stopped = []
if mode == "stubborn":
    signal.signal(signal.SIGTERM, lambda s, f: print("ignoring SIGTERM", flush=True))
else:
    signal.signal(signal.SIGTERM, lambda s, f: stopped.append(1))
start = time.time()
print("visible=" + os.environ.get("CUDA_VISIBLE_DEVICES", "") + " hosts=" + os.environ["SM_HOSTS"], flush=True)
print("channels=" + os.environ["SM_CHANNELS"] + " train_files=" + ",".join(sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))), flush=True)
if mode == "fail":
    open(os.path.join(base, "output", "failure"), "w").write("ValueError: the data is not what it should be")
    print("about to fail", file=sys.stderr, flush=True)
    sys.exit(3)
x = float(hp.get("x", "0.5"))
deadline = start + float(hp.get("sleep", "0.2"))
epoch = 0
while time.time() < deadline and not stopped:
    epoch += 1
    print(f"epoch={epoch} score={1 - (x - 0.3) ** 2:.6f}", flush=True)
    time.sleep(0.1)
print(f"epoch={epoch + 1} score={1 - (x - 0.3) ** 2:.6f}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
json.dump({"x": x, "stopped": bool(stopped)}, open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w"))
print(f"started={start:.3f} ended={time.time():.3f}", flush=True)
"#;

/// GET `path` from `address`: the status code and the body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return (0, String::new()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // HTTP/1.0: the answer comes whole (not chunked) and the connection closes after it.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if std::io::Write::write_all(&mut stream, request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
