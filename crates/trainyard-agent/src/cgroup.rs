//! Every instance in a cgroup of its own (cgroups-rs; v1 and v2), nested under the agent's own
//! cgroup so that whatever supervises the agent (systemd, a test suite) still holds every process
//! a job starts. The cgroup is what the agent signals, stops and kills: a child that left the
//! job's process group (`setsid`) is still in it. It carries the instance's limits: the memory and
//! vCPUs of its instance type and a number of processes; an out-of-memory kill is counted in it.
//!
//! On cgroup v2 a cgroup whose children have controllers may hold no process itself, so the agent
//! first moves itself out of the cgroup it was started in (systemd's `Delegate=yes` hands that
//! cgroup to it) into a leaf beside its instances' parent:
//!
//! ```text
//! <agent's cgroup>/trainyard-<agent>.self      the agent
//! <agent's cgroup>/trainyard-<agent>/<job>.algo-<n>  each instance (memory, cpu, pids)
//! ```
//!
//! An agent that cannot create cgroups (not root, no cgroup file system) runs instances without
//! one, signalling their process group instead, and says so at start.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::freezer::FreezerController;
use cgroups_rs::hierarchies::{V1, V2};
use cgroups_rs::memory::MemController;
use cgroups_rs::{Cgroup, Controller, MaxValue};

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
/// Where the unified (v2) hierarchy is mounted on a host that runs v2 only.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";
/// The controllers an instance's limits need.
const LIMIT_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The v1 hierarchies an instance's cgroup is made in: its limits', and the freezer, which holds
/// it still while it is killed. Not the others (blkio, cpuset, devices, systemd's, ...): each would
/// cost a directory made, joined and removed per instance, for nothing the agent uses; there the
/// instance stays in the agent's own cgroup, as a service's processes do.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "freezer"];

/// This agent's place in the cgroup hierarchies, found (and on v2 prepared) once at start.
#[derive(Debug, Clone)]
pub struct AgentCgroups {
    /// The agent's id and the hash of its work root (see [`agent_cgroup_name`]).
    name: String,
    version: Version,
}

#[derive(Debug, Clone)]
enum Version {
    /// Each v1 hierarchy: instances go under the agent's cgroup of that hierarchy. Where the
    /// hierarchies are mounted and where the agent sits in each are read once, at start: read at
    /// every instance's start (cgroups-rs parses /proc/self/mountinfo for each handle it makes,
    /// three times an instance) they were a twentieth of the agent's CPU per trial.
    V1 { mounts: V1, own_paths: HashMap<String, String> },
    /// The unified hierarchy: instances go under `parent` (relative to its root), where
    /// `controllers` are enabled (those of [`LIMIT_CONTROLLERS`] delegated to the agent).
    V2 { parent: String, controllers: Vec<String> },
}

impl Version {
    /// The file a child writes "0" to, to join an instance's cgroup before it runs the program.
    ///
    /// On v1, `tasks`: it moves the writing thread only, and the child has one thread (a fork
    /// copies only the forking one), so the whole child moves, and everything it later starts is
    /// born inside. The kernel moves the calling thread without its global threadgroup lock,
    /// whereas `cgroup.procs` takes that lock for writing, and on a hierarchy mounted without
    /// `favordynmods` that waits for an RCU grace period: 8.2 ms against 0.2 ms for four
    /// hierarchies measured here, most of an instance's launch. On v2 a thread can only move
    /// within a threaded subtree, so there it is `cgroup.procs`.
    fn join_file(&self) -> &'static str {
        match self {
            Version::V1 { .. } => "tasks",
            Version::V2 { .. } => "cgroup.procs",
        }
    }
}

impl AgentCgroups {
    /// Finds (v1) or makes (v2) this agent's parent cgroup, removes what an earlier run of the
    /// agent left in it, and proves an instance's cgroup can be made and limited. `Err` says why
    /// instances will run without cgroups.
    pub fn set_up(name: &str) -> Result<AgentCgroups, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the agent does not run as root, so it cannot create cgroups".into());
        }
        let version = if cgroups_rs::hierarchies::is_cgroup2_unified_mode() {
            delegate_v2(name)?
        } else {
            Version::V1 { mounts: V1::new(), own_paths: own_v1_paths() }
        };
        let cgroups = AgentCgroups { name: name.to_string(), version };
        // Instances of an earlier run of this agent (it crashed): what is left of them is killed.
        // On v1 they are looked for in every hierarchy: an earlier version made instances'
        // cgroups in all of them, and those this one does not use are removed once emptied.
        let parent = cgroups.parent_path();
        let every = cgroups.load_everywhere(&parent);
        let mut stale_names = std::collections::BTreeSet::new();
        for dir in every.subsystems().iter().map(|s| s.to_controller().path().to_path_buf()) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stale_names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        for name in stale_names {
            let path = format!("{parent}/{name}");
            let stale = cgroups.load(&path);
            tracing::info!(cgroup = %path, left = stale.procs().len(), "removing an earlier run's instance cgroup");
            drop(InstanceCgroup { cgroup: stale, join_files: Vec::new() });
            let _ = cgroups.load_everywhere(&path).delete();
        }
        drop(cgroups.create("probe", 0, Limits { memory_mib: Some(64), vcpus: Some(1), pids: 16 })?);
        Ok(cgroups)
    }

    /// The limits the kernel will not enforce here (controllers not delegated to the agent).
    pub fn unenforced(&self) -> Vec<&'static str> {
        match &self.version {
            Version::V1 { .. } => Vec::new(),
            Version::V2 { controllers, .. } => {
                LIMIT_CONTROLLERS.into_iter().filter(|c| !controllers.iter().any(|have| have == c)).collect()
            }
        }
    }

    /// Creates the instance's cgroup with its limits. An earlier one of the same name (a crashed
    /// agent's) is emptied and replaced.
    pub fn create(&self, job: &str, instance: u32, limits: Limits) -> Result<InstanceCgroup, String> {
        let path = format!("{}/{job}.algo-{instance}", self.parent_path());
        let stale = self.load(&path);
        if stale.exists() {
            drop(InstanceCgroup { cgroup: stale, join_files: Vec::new() }); // emptied and removed
        }
        let mut resources = cgroups_rs::Resources::default();
        let enforced = |controller: &str| !self.unenforced().contains(&controller);
        if enforced("pids") {
            resources.pid.maximum_number_of_processes = Some(MaxValue::Value(i64::from(limits.pids)));
        }
        if let Some(mib) = limits.memory_mib.filter(|_| enforced("memory")) {
            resources.memory.memory_hard_limit =
                Some(i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
            // (Swap is not limited: memsw accounting is off on many kernels.)
        }
        if let Some(vcpus) = limits.vcpus.filter(|v| *v > 0 && enforced("cpu")) {
            resources.cpu.period = Some(CPU_PERIOD_US);
            resources.cpu.quota = Some(i64::try_from(u64::from(vcpus) * CPU_PERIOD_US).unwrap_or(i64::MAX));
        }
        let created = match &self.version {
            Version::V1 { mounts, own_paths } => {
                Cgroup::new_with_relative_paths(Box::new(InstanceV1(mounts.clone())), &path, own_paths.clone())
                    .map(drop)
            }
            // Only the delegated controllers: cgroups-rs enables them on every level above, where
            // the agent's own cgroup already has them.
            Version::V2 { controllers, .. } => {
                Cgroup::new_with_specified_controllers(Box::new(V2::new()), &path, Some(controllers.clone())).map(drop)
            }
        };
        created.map_err(|e| format!("creating cgroup {path}: {e}"))?;
        let cgroup = self.load(&path);
        if let Err(e) = cgroup.apply(&resources) {
            drop(InstanceCgroup { cgroup, join_files: Vec::new() }); // removed
            return Err(format!("limiting cgroup {path}: {e}"));
        }
        let mut join_files = cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join(self.version.join_file()))
            .filter(|p| p.exists())
            .filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
            .collect::<Vec<_>>();
        // (On v2 every controller names the one directory.)
        join_files.sort();
        join_files.dedup();
        if join_files.is_empty() {
            drop(InstanceCgroup { cgroup, join_files }); // removed
            return Err(format!(
                "no cgroup file system is mounted under /sys/fs/cgroup (cgroup {path} cannot be joined)"
            ));
        }
        Ok(InstanceCgroup { cgroup, join_files })
    }

    /// Removes the agent's parent cgroup, at shutdown (its instances' are gone by then).
    pub fn remove(&self) {
        let _ = self.load_everywhere(&self.parent_path()).delete();
    }

    /// The parent of this agent's instances' cgroups: relative to the agent's own cgroup on v1,
    /// to the hierarchy's root on v2.
    fn parent_path(&self) -> String {
        match &self.version {
            Version::V1 { .. } => format!("trainyard-{}", self.name),
            Version::V2 { parent, .. } => parent.clone(),
        }
    }

    /// A handle on the cgroup at `path` in every v1 hierarchy mounted, those the agent does not
    /// use included (on v2, as [`AgentCgroups::load`]).
    fn load_everywhere(&self, path: &str) -> Cgroup {
        match &self.version {
            Version::V1 { mounts, own_paths } => {
                Cgroup::load_with_relative_paths(Box::new(mounts.clone()), path, own_paths.clone())
            }
            Version::V2 { .. } => self.load(path),
        }
    }

    /// A handle on the cgroup at `path` (it may not exist yet).
    fn load(&self, path: &str) -> Cgroup {
        match &self.version {
            Version::V1 { mounts, own_paths } => {
                Cgroup::load_with_relative_paths(Box::new(InstanceV1(mounts.clone())), path, own_paths.clone())
            }
            Version::V2 { .. } => Cgroup::load(Box::new(V2::new()), path),
        }
    }
}

/// The v1 hierarchies of [`V1_CONTROLLERS`] (cgroups-rs's `V1` offers every mounted one).
#[derive(Debug)]
struct InstanceV1(V1);

impl cgroups_rs::Hierarchy for InstanceV1 {
    fn subsystems(&self) -> Vec<cgroups_rs::Subsystem> {
        let wanted = |s: &cgroups_rs::Subsystem| V1_CONTROLLERS.contains(&s.controller_name().as_str());
        self.0.subsystems().into_iter().filter(wanted).collect()
    }

    fn root(&self) -> PathBuf {
        self.0.root()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(InstanceV1(self.0.clone())), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or_else(|| Path::new(""));
        Cgroup::load(Box::new(InstanceV1(self.0.clone())), parent)
    }

    fn v2(&self) -> bool {
        false
    }
}

/// One instance's cgroup.
pub struct InstanceCgroup {
    cgroup: Cgroup,
    /// The file of each hierarchy the child writes to join the cgroup before it runs the program
    /// (see [`Version::join_file`]).
    join_files: Vec<CString>,
}

impl InstanceCgroup {
    /// Moves the calling process into the cgroup (every hierarchy). For `pre_exec`: only
    /// open/write/close on paths prepared before the fork, so everything the program starts is born
    /// inside. The caller has one thread (a child between fork and exec): on v1 only the writing
    /// thread moves (see [`Version::join_file`]).
    pub fn join_self(join_files: &[CString]) -> std::io::Result<()> {
        for file in join_files {
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

    pub fn join_files(&self) -> Vec<CString> {
        self.join_files.clone()
    }

    /// The instance's cgroup dirs: one per v1 hierarchy, or the one v2 dir.
    pub fn dirs(&self) -> Vec<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let as_path = |file: &CString| Path::new(std::ffi::OsStr::from_bytes(file.as_bytes())).to_path_buf();
        self.join_files.iter().filter_map(|file| as_path(file).parent().map(Path::to_path_buf)).collect()
    }

    /// Whether it is a cgroup of the unified (v2) hierarchy.
    pub fn unified(&self) -> bool {
        self.cgroup.v2()
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

    /// Kills every process in the cgroup and waits (at most a few seconds) until it is empty;
    /// whether it is. Frozen first where the freezer controller exists, so that none forks
    /// meanwhile; a fork bomb is bounded by the pids limit either way.
    pub async fn kill_all(&self) -> bool {
        for _ in 0..100 {
            // Empty already, as when a program leaves nothing behind: no freezing (on v1 the
            // first frozen cgroup and the last thawed one patch the kernel's code on every CPU).
            if self.pids().is_empty() {
                return true;
            }
            self.kill_round();
            if self.pids().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(cgroup = self.cgroup.path(), left = ?self.pids(), "processes survived SIGKILL");
        false
    }

    fn kill_all_blocking(&self) {
        for _ in 0..100 {
            if self.pids().is_empty() {
                return;
            }
            self.kill_round();
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_round(&self) {
        // v2 (Linux 5.14+): the kernel kills the whole cgroup, forks in flight included.
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
        if self.cgroup.v2() {
            // (cgroups-rs reads v1's memory.oom_control only.)
            let events = Path::new(UNIFIED_ROOT).join(self.cgroup.path()).join("memory.events");
            return count_oom_kills(&std::fs::read_to_string(events).unwrap_or_default());
        }
        // memory.oom_control alone: cgroups-rs's memory_stat() reads a dozen files for it.
        let memory: Option<&MemController> = self.cgroup.controller_of();
        memory.map_or(0, |m| {
            count_oom_kills(&std::fs::read_to_string(m.path().join("memory.oom_control")).unwrap_or_default())
        })
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

/// `oom_kill N` of a v2 `memory.events` file (v1's `memory.oom_control` has the same line).
pub fn count_oom_kills(events: &str) -> u64 {
    events.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
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

/// The agent's own cgroup in each v1 hierarchy (controller → path), under which instances' go.
fn own_v1_paths() -> HashMap<String, String> {
    cgroups_rs::cgroup::get_cgroups_relative_paths().unwrap_or_default()
}

/// The agent's cgroup in the unified hierarchy (`0::/path` of /proc/self/cgroup), without the
/// leading `/` ("" for the root).
fn own_v2_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim().trim_start_matches('/').to_string())
}

/// Prepares the v2 layout (see the module's doc): the agent leaves its cgroup for a leaf of its
/// own, so that its cgroup may hand the limit controllers down to the instances' parent.
/// Controllers the agent's cgroup was not given are left out, and [`AgentCgroups::unenforced`]
/// names them.
fn delegate_v2(name: &str) -> Result<Version, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| own_v2_path(&text))
        .ok_or("/proc/self/cgroup names no cgroup v2 path")?;
    let root = Path::new(UNIFIED_ROOT);
    let own_dir = root.join(&own);
    let join = |leaf: String| if own.is_empty() { leaf } else { format!("{own}/{leaf}") };
    // The root cgroup is exempt from "no processes where controllers are handed down".
    if !own.is_empty() {
        let leaf = own_dir.join(format!("trainyard-{name}.self"));
        make_dir(&leaf)?;
        std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("moving the agent into {}: {e}", leaf.display()))?;
    }
    let parent = join(format!("trainyard-{name}"));
    let parent_dir = root.join(&parent);
    make_dir(&parent_dir)?;
    let delegated = std::fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in LIMIT_CONTROLLERS.into_iter().filter(|c| delegated.split_whitespace().any(|d| d == *c)) {
        for dir in [&own_dir, &parent_dir] {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")) {
                // EBUSY: processes other than the agent's are in its cgroup.
                tracing::warn!(controller, cgroup = %dir.display(), error = %e, "could not hand a controller down");
            }
        }
    }
    let enabled = std::fs::read_to_string(parent_dir.join("cgroup.subtree_control")).unwrap_or_default();
    let controllers =
        enabled.split_whitespace().filter(|c| LIMIT_CONTROLLERS.contains(c)).map(str::to_string).collect::<Vec<_>>();
    tracing::info!(cgroup = %parent, ?controllers, "cgroup v2: instances' cgroups go under the agent's");
    Ok(Version::V2 { parent, controllers })
}

fn make_dir(dir: &PathBuf) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("creating cgroup {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// An instance cgroup an earlier version left in every v1 hierarchy (it crashed) is gone from
    /// all of them when the agent starts, its process killed; so is the agent's at its stop.
    #[tokio::test]
    async fn an_earlier_versions_instance_cgroups_go_from_every_hierarchy() {
        assert!(root(), "this test needs root (as the suite runs on CI)");
        if cgroups_rs::hierarchies::is_cgroup2_unified_mode() {
            return; // one hierarchy: nothing to leave elsewhere
        }
        let name = format!("unit-upgrade-{}", std::process::id());
        let path = format!("trainyard-{name}/old.algo-1");
        let old = Cgroup::new_with_relative_paths(Box::new(V1::new()), &path, own_v1_paths()).expect("old cgroup");
        let dirs: Vec<PathBuf> = old.subsystems().iter().map(|s| s.to_controller().path().to_path_buf()).collect();
        let files: Vec<CString> = dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok())
            .collect();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        // SAFETY: join_self only opens and writes files prepared before the fork.
        unsafe {
            cmd.pre_exec(move || InstanceCgroup::join_self(&files));
        }
        let mut child = cmd.spawn().expect("spawn");

        let agent = AgentCgroups::set_up(&name).expect("cgroups");
        assert!(child.wait().is_ok_and(|s| !s.success()), "the earlier run's process was killed");
        let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        agent.remove();
        let parents: Vec<PathBuf> = dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect();
        assert!(parents.iter().all(|p| !p.exists()), "the agent's cgroup outlived its stop: {parents:?}");
    }

    /// A process that escapes its process group and session is still in the cgroup, and dies
    /// with it.
    #[tokio::test]
    async fn escaped_processes_are_found_and_killed_and_limits_hold() {
        assert!(root(), "this test needs root (as the suite runs on CI)");
        let limits = Limits { memory_mib: Some(256), vcpus: Some(1), pids: 64 };
        let agent = AgentCgroups::set_up("unit-test").expect("cgroups");
        let cgroup = agent.create(&format!("escape-{}", std::process::id()), 1, limits).expect("cgroup");
        let files = cgroup.join_files();
        let hierarchies_joined = files.len();
        if !cgroups_rs::hierarchies::is_cgroup2_unified_mode() {
            // Only the hierarchies the agent uses (a mount may hold several: "cpu,cpuacct").
            let hierarchies: Vec<String> = files
                .iter()
                .filter_map(|f| f.to_str().ok()?.strip_prefix("/sys/fs/cgroup/")?.split('/').next().map(String::from))
                .collect();
            assert!(
                !hierarchies.is_empty()
                    && hierarchies.iter().all(|h| h.split(',').any(|c| V1_CONTROLLERS.contains(&c))),
                "{hierarchies:?}"
            );
        }
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
        // Each of them in every hierarchy the instance's cgroup is made in, not only in the one
        // its pids are read from (on v1 the child joins by moving its one thread).
        let leaf = format!("/escape-{}.algo-1", std::process::id());
        // (Not `setsid -f`'s parent once it has exited: on v1 a zombie may still be listed, its
        // /proc/PID/cgroup already the root's.)
        let zombie = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        };
        for pid in cgroup.pids().into_iter().filter(|pid| !zombie(*pid)) {
            let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let used: Vec<&str> = lines
                .lines()
                .filter(|line| {
                    let controllers = line.split(':').nth(1).unwrap_or("");
                    (controllers.is_empty() && cgroups_rs::hierarchies::is_cgroup2_unified_mode())
                        || controllers.split(',').any(|c| V1_CONTROLLERS.contains(&c))
                })
                .collect();
            assert_eq!(used.len(), hierarchies_joined, "process {pid}: {lines}");
            assert!(used.iter().all(|line| line.ends_with(&leaf)), "process {pid} outside {leaf}: {lines}");
        }
        cgroup.kill_all().await;
        assert!(cgroup.pids().is_empty());
        let _ = child.wait();
        drop(cgroup);

        // A fork bomb stops at the pids limit.
        let bomb = agent.create(&format!("bomb-{}", std::process::id()), 1, limits).expect("cgroup");
        let files = bomb.join_files();
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
        agent.remove();
    }

    #[test]
    fn the_agents_v2_cgroup_is_read_from_proc_self_cgroup() {
        let hybrid = "4:memory:/process_api/982f\n1:cpu:/\n0::/system.slice/trainyard-agent.service\n";
        assert_eq!(own_v2_path(hybrid).as_deref(), Some("system.slice/trainyard-agent.service"));
        assert_eq!(own_v2_path("0::/\n").as_deref(), Some(""));
        assert_eq!(own_v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn oom_kills_are_read_from_v2_memory_events() {
        assert_eq!(count_oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n"), 2);
        assert_eq!(count_oom_kills(""), 0);
    }
}
