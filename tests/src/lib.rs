//! Helpers for the end-to-end tests: a coordinator started from the built binary in its own temp
//! dir, and the `trainyard` CLI pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use trainyard_testkit::{Daemon, binary, free_port, wait_until};

/// The repository root (for the examples under deploy/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("deploy/examples").join(name)
}

/// A running coordinator. Dropping it kills the process group; its log stays in `dir`.
pub struct Coordinator {
    pub dir: TempDir,
    pub address: String,
    pub daemon: Daemon,
    database_url: Option<String>,
}

impl Coordinator {
    /// On SQLite in a fresh data dir.
    pub fn start() -> Coordinator {
        let dir = tempfile::Builder::new().prefix("trainyard-e2e-").tempdir().expect("temp dir");
        Self::start_in(dir, None)
    }

    /// On the given database (e.g. a throwaway PostgreSQL).
    pub fn start_with_database(url: &str) -> Coordinator {
        let dir = tempfile::Builder::new().prefix("trainyard-e2e-").tempdir().expect("temp dir");
        Self::start_in(dir, Some(url.to_string()))
    }

    fn start_in(dir: TempDir, database_url: Option<String>) -> Coordinator {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let daemon = Self::spawn(dir.path(), &address, database_url.as_deref());
        let mut c = Coordinator { dir, address, daemon, database_url };
        c.wait_ready();
        c
    }

    fn spawn(dir: &Path, address: &str, database_url: Option<&str>) -> Daemon {
        let mut cmd = Command::new(binary("trainyard-coordinator"));
        // The listen address travels by environment, the data dir by flag: both paths are exercised.
        cmd.env("TRAINYARD_LISTEN", address).arg("--data-dir").arg(dir.join("data")).env("RUST_LOG", "info");
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        Daemon::spawn("coordinator", cmd, dir)
    }

    fn wait_ready(&mut self) {
        let address = self.address.clone();
        let ready = wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(&address).is_ok());
        self.daemon.assert_running();
        assert!(ready, "coordinator did not listen on {address}; log:\n{}", self.daemon.log());
    }

    /// Stops the daemon with `signal` and starts a new one on the same data and address.
    pub fn restart(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        self.daemon.signal(signal);
        let status = self.daemon.wait_exit(Duration::from_secs(20));
        let address = self.address.clone();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_err()),
            "the old coordinator still listens"
        );
        self.daemon = Self::spawn(self.dir.path(), &self.address, self.database_url.as_deref());
        self.wait_ready();
        status
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `trainyard ARGS` against this coordinator.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let output = Command::new(binary("trainyard"))
            .env("TRAINYARD_COORDINATOR", &self.address)
            .args(args)
            .output()
            .expect("run trainyard");
        CliOutput(output)
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
        let mut last = Value::Null;
        let held = wait_until(Duration::from_secs(20), || {
            last = self.json(args);
            check(&last)
        });
        assert!(held, "{args:?} never satisfied the condition; last answer:\n{last:#}");
        last
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
