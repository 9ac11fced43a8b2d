//! Every instance in a cgroup of its own (cgroups-rs; v1 and v2), nested under the agent's own
//! cgroup so that whatever supervises the agent (systemd, a test suite) still holds every process
//! a job starts. The cgroup is what the agent signals, stops and kills: a child that left the
//! job's process group (`setsid`) is still in it. It carries the instance's limits: the memory and
//! vCPUs of its instance type and a number of processes; an out-of-memory kill is counted in it.
//!
//! An agent that cannot create cgroups (not root, no cgroup file system) runs instances without
//! one, signalling their process group instead, and says so at start.

use std::collections::HashMap;
use std::ffi::CString;
use std::time::Duration;

use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::MemController;
use cgroups_rs::{Cgroup, MaxValue};

/// What an instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mib: Option<u64>,
    /// vCPUs, as a CFS quota (so many CPUs' worth of time per period).
    pub vcpus: Option<u32>,
    /// Processes and threads at most (a fork bomb stops here).
    pub pids: u32,
}

/// Processes and threads an instance may have at most, unless configured.
pub const DEFAULT_PIDS: u32 = 16_384;
const CPU_PERIOD_US: u64 = 100_000;

/// One instance's cgroup.
pub struct InstanceCgroup {
    cgroup: Cgroup,
    /// `cgroup.procs` of each hierarchy, for the child to join before it runs the program.
    procs_files: Vec<CString>,
}

/// The cgroup of `<agent>/<job>.algo-<instance>` under the agent's own.
fn name(agent: &str, job: &str, instance: u32) -> String {
    format!("trainyard-{agent}/{job}.algo-{instance}")
}

impl InstanceCgroup {
    /// Creates the instance's cgroup with its limits. An earlier one of the same name (a crashed
    /// agent's) is emptied and replaced.
    pub fn create(agent: &str, job: &str, instance: u32, limits: Limits) -> Result<InstanceCgroup, String> {
        let path = name(agent, job, instance);
        let stale = load(&path);
        if stale.exists() {
            drop(InstanceCgroup { cgroup: stale, procs_files: Vec::new() }); // emptied and removed
        }
        let mut resources = cgroups_rs::Resources::default();
        resources.pid.maximum_number_of_processes = Some(MaxValue::Value(i64::from(limits.pids)));
        if let Some(mib) = limits.memory_mib {
            resources.memory.memory_hard_limit =
                Some(i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
            // (Swap is not limited: memsw accounting is off on many kernels.)
        }
        if let Some(vcpus) = limits.vcpus.filter(|v| *v > 0) {
            resources.cpu.period = Some(CPU_PERIOD_US);
            resources.cpu.quota = Some(i64::try_from(u64::from(vcpus) * CPU_PERIOD_US).unwrap_or(i64::MAX));
        }
        let cgroup = Cgroup::new_with_relative_paths(cgroups_rs::hierarchies::auto(), &path, own_paths())
            .map_err(|e| format!("creating cgroup {path}: {e}"))?;
        if let Err(e) = cgroup.apply(&resources) {
            drop(InstanceCgroup { cgroup, procs_files: Vec::new() }); // removed
            return Err(format!("limiting cgroup {path}: {e}"));
        }
        let procs_files = cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join("cgroup.procs"))
            .filter(|p| p.exists())
            .filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
            .collect::<Vec<_>>();
        if procs_files.is_empty() {
            drop(InstanceCgroup { cgroup, procs_files }); // removed
            return Err(format!(
                "no cgroup file system is mounted under /sys/fs/cgroup (cgroup {path} cannot be joined)"
            ));
        }
        Ok(InstanceCgroup { cgroup, procs_files })
    }

    /// Moves the calling process into the cgroup (every hierarchy). For `pre_exec`: only
    /// open/write/close on paths prepared before the fork, so everything the program starts is born
    /// inside.
    pub fn join_self(procs_files: &[CString]) -> std::io::Result<()> {
        for file in procs_files {
            // SAFETY: open/write/close on a NUL-terminated path owned by the caller.
            unsafe {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    pub fn procs_files(&self) -> Vec<CString> {
        self.procs_files.clone()
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup.procs().into_iter().filter_map(|p| i32::try_from(p.pid).ok()).collect()
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal(&self, signal: i32) {
        for pid in self.pids() {
            if pid > 1 {
                // SAFETY: kill(2) on processes of this instance's cgroup.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        }
    }

    /// Kills every process in the cgroup and waits (at most a few seconds) until it is empty.
    /// Frozen first where the freezer controller exists, so that none forks meanwhile; a fork
    /// bomb is bounded by the pids limit either way.
    /// Whether no process is left in it.
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    pub async fn kill_all(&self) {
        for _ in 0..100 {
            self.kill_round();
            if self.pids().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(cgroup = self.cgroup.path(), left = ?self.pids(), "processes survived SIGKILL");
    }

    fn kill_all_blocking(&self) {
        for _ in 0..100 {
            self.kill_round();
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_round(&self) {
        let v2_kill = self.cgroup.v2() && self.cgroup.kill().is_ok();
        if v2_kill {
            return;
        }
        let freezer: Option<&FreezerController> = self.cgroup.controller_of();
        let frozen = freezer.is_some_and(|f| f.freeze().is_ok());
        self.signal(libc::SIGKILL);
        if frozen && let Some(f) = freezer {
            let _ = f.thaw();
        }
    }

    /// How many processes the kernel killed for running out of the cgroup's memory.
    pub fn oom_kills(&self) -> u64 {
        let memory: Option<&MemController> = self.cgroup.controller_of();
        memory.map_or(0, |m| m.memory_stat().oom_control.oom_kill)
    }

    /// Removes the (empty) cgroup. (The agent's own parent cgroup stays while the agent runs:
    /// removing it when empty would race with the next instance's creation.)
    fn remove(&self) {
        if let Err(e) = self.cgroup.delete() {
            tracing::warn!(cgroup = self.cgroup.path(), error = %e, "could not remove an instance's cgroup");
        }
    }
}

/// Dropped: nothing of the instance is left (killed, waited for), and its cgroup is removed.
impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        self.kill_all_blocking();
        self.remove();
    }
}

/// The name of an agent's cgroup: its id and a fingerprint of its work root (FNV-1a).
pub fn agent_cgroup_name(id: &str, work_root: &std::path::Path) -> String {
    let hash = work_root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("{id}-{:08x}", hash as u32)
}

/// A handle on the cgroup at `path` under the agent's own (it may not exist yet).
fn load(path: &str) -> Cgroup {
    Cgroup::load_with_relative_paths(cgroups_rs::hierarchies::auto(), path, own_paths())
}

/// The agent's own cgroup in each v1 hierarchy (controller → path), under which instances' go.
fn own_paths() -> HashMap<String, String> {
    cgroups_rs::cgroup::get_cgroups_relative_paths().unwrap_or_default()
}

/// Removes the agent's parent cgroup, at shutdown (its instances' are gone by then).
pub fn remove_agent_cgroup(agent: &str) {
    let _ = load(&format!("trainyard-{agent}")).delete();
}

/// Whether this agent can give instances cgroups: `Err` says why not.
pub fn available(agent: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the agent does not run as root, so it cannot create cgroups".into());
    }
    // Instances of an earlier run of this agent (it crashed): what is left of them is killed.
    let parent = format!("trainyard-{agent}");
    let probe = load(&parent);
    let listed = probe.subsystems().first().map(|s| s.to_controller().path().to_path_buf());
    for entry in listed.and_then(|dir| std::fs::read_dir(dir).ok()).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = format!("{parent}/{}", entry.file_name().to_string_lossy());
            let stale = load(&path);
            tracing::info!(cgroup = %path, left = stale.procs().len(), "removing an earlier run's instance cgroup");
            drop(InstanceCgroup { cgroup: stale, procs_files: Vec::new() });
        }
    }
    drop(InstanceCgroup::create(agent, "probe", 0, Limits { memory_mib: Some(64), vcpus: Some(1), pids: 16 })?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A process that escapes its process group and session is still in the cgroup, and dies
    /// with it.
    #[tokio::test]
    async fn escaped_processes_are_found_and_killed_and_limits_hold() {
        assert!(root(), "this test needs root (as the suite runs on CI)");
        let limits = Limits { memory_mib: Some(256), vcpus: Some(1), pids: 64 };
        let cgroup =
            InstanceCgroup::create("unit-test", &format!("escape-{}", std::process::id()), 1, limits).expect("cgroup");
        let files = cgroup.procs_files();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "setsid sleep 600 & setsid -f sleep 600; sleep 600"]).process_group(0);
        // SAFETY: join_self only opens and writes files prepared before the fork.
        unsafe {
            cmd.pre_exec(move || InstanceCgroup::join_self(&files));
        }
        let mut child = cmd.spawn().expect("spawn");
        let ok = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            cgroup.pids().len() >= 4
        });
        assert!(ok, "sh and its three sleeps are in the cgroup: {:?}", cgroup.pids());
        cgroup.kill_all().await;
        assert!(cgroup.pids().is_empty());
        let _ = child.wait();
        drop(cgroup);

        // A fork bomb stops at the pids limit.
        let bomb =
            InstanceCgroup::create("unit-test", &format!("bomb-{}", std::process::id()), 1, limits).expect("cgroup");
        let files = bomb.procs_files();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "for i in $(seq 200); do sleep 600 & done; wait"]);
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(move || InstanceCgroup::join_self(&files));
        }
        let mut child = cmd.spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(1500));
        let count = bomb.pids().len();
        assert!(count <= 64, "{count} processes despite a limit of 64");
        bomb.kill_all().await;
        let _ = child.wait();
        drop(bomb);
        remove_agent_cgroup("unit-test");
    }
}
