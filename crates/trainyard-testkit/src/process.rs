//! The built binaries, daemons with their own log files, and waiting for conditions.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary built by `cargo build` (the test command builds them first).
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (scripts/test does `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon started for a test, with its stdout and stderr in its own log file. Killed (with its
/// process group) when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Daemon {
        use std::os::unix::process::CommandExt;
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon { child, log, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); its log:\n{}", self.name, self.log());
        }
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the daemon's process group, and only to it.
    pub fn signal(&self, signal: i32) {
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        // A process group id of 0 or 1 would address our own group or every process: never send those.
        if pgid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions; a stale group id only yields ESRCH.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    /// Waits for the daemon to exit; its exit status, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
