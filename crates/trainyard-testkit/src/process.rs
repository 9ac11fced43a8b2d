//! The built binaries, daemons with their own log files, and waiting for conditions.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// A free TCP port on loopback (bound, then released), for a daemon to listen on.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 and up by
/// default), where the port a listener is given for port 0 also comes from: every outgoing
/// connection of the suite takes its source port from that range, and one could take the port
/// between this call and the daemon's bind (a test then fails with "address in use", or its
/// client reaches another test's daemon). Below it only another caller of this function competes:
/// a random pick among thousands, checked free.
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.saturating_sub(1));
    if high > low + 1000 {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for _ in 0..64 {
            // xorshift: a different port on every try, call and process.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let port = low + (seed % u64::from(high - low)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(20), condition)
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, interval: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// A daemon started for a test, with its stdout and stderr in its own log file. Killed (with its
/// process group) when dropped.
///
/// A checked daemon ([`Daemon::checked`]) also fails the test that drops it if its log holds a
/// `WARN` or `ERROR` line the test did not declare with [`Daemon::expect_log`]: a warning in a log
/// is a result, and a test that caused one without saying so has found something.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    name: String,
    check: Option<Arc<LogCheck>>,
    /// Other daemons' checks, frozen when this one is dropped (see [`Daemon::freezes`]).
    freezes: Vec<Arc<LogCheck>>,
    /// The leader has exited and been reaped: its pid, and so its group's id, may now be another
    /// process's (pids wrap at 32768 here), which a signal to the group would reach.
    reaped: bool,
}

/// What a checked daemon's log is judged against: the lines a test declared, and how much of the
/// log counts. Shared by the daemons one test restarts under the same name (they append to one log).
pub struct LogCheck {
    log: PathBuf,
    expected: Mutex<Vec<String>>,
    /// The log's length when the test began to tear down (set once; lines after it are teardown's).
    judged_until: Mutex<Option<u64>>,
}

impl LogCheck {
    pub fn new(log: PathBuf) -> Arc<LogCheck> {
        Arc::new(LogCheck { log, expected: Mutex::new(Vec::new()), judged_until: Mutex::new(None) })
    }

    /// Declares that log lines containing `pattern` at `WARN` or `ERROR` are expected.
    pub fn expect(&self, pattern: &str) {
        self.expected.lock().unwrap_or_else(|e| e.into_inner()).push(pattern.to_string());
    }

    /// Judges only what the log holds now: what follows is the test tearing down (e.g. the
    /// coordinator's warnings about the agents the test kills as it ends). The first call counts.
    pub fn freeze(&self) {
        let length = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or_default();
        self.judged_until.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(length);
    }

    /// The `WARN` and `ERROR` lines (up to the freeze) that no declared pattern matches.
    pub fn unexpected_lines(&self) -> Vec<String> {
        let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut text = std::fs::read(&self.log).unwrap_or_default();
        if let Some(until) = *self.judged_until.lock().unwrap_or_else(|e| e.into_inner()) {
            text.truncate(usize::try_from(until).unwrap_or(usize::MAX));
        }
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| is_warning_or_error(line))
            .filter(|line| !expected.iter().any(|p| line.contains(p.as_str())))
            .map(str::to_string)
            .collect()
    }
}

impl Daemon {
    /// Starts `cmd` in a process group of its own. Its output is appended to `<log_dir>/<name>.log`,
    /// so a daemon restarted under the same name keeps one log.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Daemon {
        use std::os::unix::process::CommandExt;
        let log = log_dir.join(format!("{name}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon { child, log, name: name.to_string(), check: None, freezes: Vec::new(), reaped: false }
    }

    /// Fails the dropping test on an undeclared `WARN` or `ERROR` line in the log.
    pub fn checked(self) -> Daemon {
        let check = LogCheck::new(self.log.clone());
        self.checked_by(check)
    }

    /// Like [`Daemon::checked`], with a check shared with earlier daemons of the same log.
    pub fn checked_by(mut self, check: Arc<LogCheck>) -> Daemon {
        self.check = Some(check);
        self
    }

    /// When this daemon is dropped, `other`'s log is judged only up to that moment.
    pub fn freezes(mut self, other: Arc<LogCheck>) -> Daemon {
        self.freezes.push(other);
        self
    }

    /// Declares that log lines containing `pattern` at `WARN` or `ERROR` are expected.
    pub fn expect_log(&self, pattern: &str) {
        if let Some(check) = &self.check {
            check.expect(pattern);
        }
    }

    /// The `WARN` and `ERROR` lines of the log that no declared pattern matches.
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        self.check.as_ref().map(|c| c.unexpected_lines()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.reap() {
            panic!("{} exited ({status}); its log:\n{}", self.name, self.log());
        }
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the daemon's process group, and only to it.
    pub fn signal(&self, signal: i32) {
        if self.reaped {
            return;
        }
        let Ok(pgid) = i32::try_from(self.child.id()) else {
            return;
        };
        // A process group id of 0 or 1 would address our own group or every process: never send those.
        if pgid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions. The leader is not reaped yet (a
            // zombie keeps its pid), so the group id is still this daemon's.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    /// The leader's exit status, once it has exited: what is left of its group is killed first,
    /// while the exited leader (not yet reaped) still holds the group's id, then it is reaped.
    /// After that the daemon never signals the group again: the id may be reused.
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        if !self.reaped {
            let pid = libc::pid_t::try_from(self.child.id()).ok()?;
            // SAFETY: waitid on our own child, WNOWAIT: it stays a zombie; `info` is ours.
            let exited = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let rc = libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                rc == 0 && info.si_pid() != 0
            };
            if !exited {
                return None;
            }
            self.signal(libc::SIGKILL);
        }
        let status = self.child.try_wait().ok().flatten();
        self.reaped = status.is_some();
        status
    }

    /// Waits for the daemon to exit; its exit status, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.reap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How much of a daemon's log a failed test prints.
const DAEMON_LOG_LINES_ON_FAILURE: usize = 40;

/// A line of a `tracing` log at WARN or ERROR level (`<time>  WARN <target>: ...`).
fn is_warning_or_error(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next().is_some_and(|time| time.contains('T')) && matches!(words.next(), Some("WARN" | "ERROR"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for other in &self.freezes {
            other.freeze();
        }
        // The whole group, even when its leader has exited: what it started must not outlive the test.
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: what the daemon said last goes with the failure (its temp dir,
            // and so its log, is removed with the test).
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(DAEMON_LOG_LINES_ON_FAILURE)..];
            eprintln!("--- the last {} lines of {}'s log ---\n{}", tail.len(), self.name, tail.join("\n"));
        } else {
            let unexpected = self.unexpected_log_lines();
            assert!(
                unexpected.is_empty(),
                "{} logged {} warning(s) or error(s) the test did not expect (declare them with expect_log):\n{}",
                self.name,
                unexpected.len(),
                unexpected.join("\n")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_warning_or_error;

    #[test]
    fn warnings_and_errors_are_recognised_by_their_level() {
        assert!(is_warning_or_error("2026-12-04T03:38:14.123Z  WARN trainyard_coordinator::events: x"));
        assert!(is_warning_or_error("2026-12-04T03:38:14.123Z ERROR trainyard_agent: y"));
        assert!(!is_warning_or_error("2026-12-04T03:38:14.123Z  INFO trainyard_agent: WARN in a message"));
        assert!(!is_warning_or_error("WARN at the start of a program's own output"));
        assert!(!is_warning_or_error(""));
    }
}
