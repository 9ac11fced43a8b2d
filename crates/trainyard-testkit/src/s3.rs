//! A local S3-compatible server for tests: moto's server mode (from PyPI, installed once into a
//! virtualenv under the target directory), and its boto3 for the test's own S3 calls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Daemon, free_port, wait_until};

pub struct S3Server {
    pub endpoint: String,
    venv: PathBuf,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// Credentials the server accepts (moto accepts any).
pub const ACCESS_KEY: &str = "trainyard-test";
pub const SECRET_KEY: &str = "trainyard-test-secret";

/// A virtualenv under the target directory (or `TRAINYARD_<NAME>_VENV`) with `packages`
/// installed from PyPI, created once per machine; concurrent tests wait on a lock file.
pub fn venv_with(name: &str, packages: &[&str], probe: &str) -> PathBuf {
    let venv = match std::env::var_os(format!("TRAINYARD_{}_VENV", name.to_uppercase())) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let target =
                exe.ancestors().find(|p| p.ends_with("target")).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
            target.join(format!("{name}-venv"))
        }
    };
    if venv.join(probe).exists() {
        return venv;
    }
    std::fs::create_dir_all(venv.parent().expect("parent")).expect("dir");
    let lock = std::fs::File::create(venv.with_extension("lock")).expect("lock file");
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    if !venv.join(probe).exists() {
        // The system's interpreter where there is one: jobs (each a uid of its own) run programs
        // from these virtualenvs, and an interpreter under a 0700 home is out of their reach.
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let status = Command::new(python).args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(status.success(), "creating the {name} virtualenv failed");
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .output()
            .expect("pip install");
        assert!(
            out.status.success(),
            "installing {packages:?} from PyPI failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    venv
}

fn ensure_installed() -> PathBuf {
    venv_with("moto", &["moto[server]==5.*"], "bin/moto_server")
}

/// The AWS CLI (`awscli` from PyPI), in a virtualenv of its own.
pub fn aws_cli() -> PathBuf {
    venv_with("awscli", &["awscli"], "bin/aws").join("bin/aws")
}

impl S3Server {
    pub fn start() -> S3Server {
        let venv = ensure_installed();
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let mut cmd = Command::new(venv.join("bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut daemon = Daemon::spawn("s3", cmd, dir.path());
        let address = format!("127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(&address).is_ok());
        daemon.assert_running();
        assert!(up, "moto did not start:\n{}", daemon.log());
        S3Server { endpoint: format!("http://{address}"), venv, _daemon: daemon, _dir: dir }
    }

    /// Environment for a client of this server (an agent, or boto3).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// Runs a Python snippet with `s3` bound to a boto3 client of this server; returns stdout.
    pub fn python(&self, code: &str) -> String {
        let script = format!("import boto3\ns3 = boto3.client('s3')\n{code}\n");
        let out = Command::new(self.venv.join("bin/python"))
            .arg("-c")
            .arg(script)
            .envs(self.env())
            .output()
            .expect("run python");
        assert!(out.status.success(), "boto3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A Python with boto3 (the virtualenv moto brings it in), for tests that drive AWS clients.
pub fn boto3_python() -> PathBuf {
    ensure_installed().join("bin/python")
}
