//! A local S3-compatible server for tests: moto's server mode (from PyPI, installed once into a
//! virtualenv under the target directory), and its boto3 for the test's own S3 calls.

use std::path::PathBuf;
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

fn ensure_installed() -> PathBuf {
    crate::python::venv_with("moto", &["moto[server]==5.*"])
}

/// The AWS CLI (`awscli` from PyPI), in a virtualenv of its own.
pub fn aws_cli() -> PathBuf {
    crate::python::venv_with("awscli", &["awscli"]).join("bin/aws")
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
