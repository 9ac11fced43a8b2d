//! A host program's own /sys (runc gives containers theirs). The host's /sys lists every network
//! interface of the host (other instances' veths among them) and, under /sys/fs/cgroup, every
//! instance's cgroup: other jobs' names, memory and processes. The instance gets instead:
//!
//! * a sysfs mounted anew in its network namespace, so /sys/class/net lists its own interfaces
//!   (an instance in the host's network namespace keeps the host's sysfs);
//! * at /sys/fs/cgroup only its own cgroup, where a container has it: on v1 a read-only tmpfs with
//!   a dir per hierarchy it is in (`memory`, `cpu,cpuacct` and its links `cpu` and `cpuacct`, ...),
//!   each its own cgroup bound read-only; on v2 its cgroup bound read-only at /sys/fs/cgroup.
//!   Tools that size themselves by their limits (joblib, the JVM, Go's runtime) read them there.
//!
//! What goes where is decided before the fork, as data ([`layout`]); [`OwnSys`] holds what the
//! forked child needs to build it with syscalls alone.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::process::{c_string, mount, mount_setattr};

/// Where the host mounts its cgroup hierarchies (a v1 hierarchy mounted elsewhere is left out).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Mount attributes of everything the instance sees under /sys: nothing there is a program, a
/// device node or set-user-ID, and nothing is written.
const SEALED: u64 =
    libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;

/// What the instance sees at /sys/fs/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: a dir per hierarchy (its name under /sys/fs/cgroup) holding the instance's
    /// cgroup of that hierarchy, and the links a host has for hierarchies mounted together
    /// (`cpu` → `cpu,cpuacct`).
    Hierarchies { binds: Vec<(String, PathBuf)>, links: Vec<(String, String)> },
    /// cgroup v2: the instance's cgroup is the whole of it.
    Unified(PathBuf),
    /// No cgroup of its own (an agent without cgroups): nothing.
    Empty,
}

/// The layout for an instance whose cgroup is `dirs` (one per v1 hierarchy, or the one v2 dir).
pub fn layout(dirs: &[PathBuf], unified: bool) -> Layout {
    if unified {
        return match dirs.first() {
            Some(dir) => Layout::Unified(dir.clone()),
            None => Layout::Empty,
        };
    }
    let mut binds = Vec::new();
    let mut links = Vec::new();
    for dir in dirs {
        let Some(hierarchy) = dir.strip_prefix(CGROUP_ROOT).ok().and_then(|rest| rest.iter().next()) else {
            continue;
        };
        let name = hierarchy.to_string_lossy().into_owned();
        if name.contains(',') {
            links.extend(name.split(',').map(|part| (part.to_string(), name.clone())));
        }
        binds.push((name, dir.clone()));
    }
    // A link never hides a hierarchy of that name, nor another link.
    links.retain(|(link, _)| !binds.iter().any(|(name, _)| name == link));
    links.sort();
    links.dedup_by(|a, b| a.0 == b.0);
    if binds.is_empty() { Layout::Empty } else { Layout::Hierarchies { binds, links } }
}

/// Everything the forked child needs to give the instance its /sys, prepared before the fork.
pub struct OwnSys {
    sys: CString,
    cgroup_root: CString,
    /// (source, target) of each bound cgroup dir.
    binds: Vec<(CString, CString)>,
    /// The child's detached copy of each source (`open_tree`), -1 until taken.
    held: Vec<libc::c_int>,
    /// (link, what it points to), under /sys/fs/cgroup.
    links: Vec<(CString, CString)>,
    /// A tmpfs is mounted at /sys/fs/cgroup first (v1, or nothing to show).
    tmpfs: bool,
    /// A sysfs is mounted anew: the instance has a network namespace of its own. (In the host's,
    /// it would be the host's sysfs, which the kernel will not mount again where it is: EBUSY.)
    fresh_sysfs: bool,
}

impl OwnSys {
    pub fn prepare(layout: &Layout, own_network: bool) -> OwnSys {
        let root = Path::new(CGROUP_ROOT);
        let (binds, links, tmpfs) = match layout {
            Layout::Hierarchies { binds, links } => (
                binds.iter().map(|(name, dir)| (c_string(dir), c_string(root.join(name)))).collect(),
                links.iter().map(|(link, target)| (c_string(root.join(link)), c_string(target))).collect(),
                true,
            ),
            Layout::Unified(dir) => (vec![(c_string(dir), c_string(root))], Vec::new(), false),
            Layout::Empty => (Vec::new(), Vec::new(), true),
        };
        OwnSys {
            sys: c_string("/sys"),
            cgroup_root: c_string(root),
            held: vec![-1; binds.len()],
            binds,
            links,
            tmpfs,
            fresh_sysfs: own_network,
        }
    }

    /// In the child, in its own mount namespace and its network namespace, before anything is
    /// mounted under /sys: takes a detached copy of each cgroup dir (the host's /sys/fs/cgroup is
    /// hidden once the new sysfs is mounted), mounts the sysfs, then builds /sys/fs/cgroup (over
    /// the host's cgroup file systems, where the sysfs is the host's).
    /// Only syscalls on what `prepare` made.
    pub fn mount_in_child(&mut self) -> std::io::Result<()> {
        for ((source, _), held) in self.binds.iter().zip(self.held.iter_mut()) {
            // SAFETY: a NUL-terminated path prepared before the fork.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    source.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *held = fd as libc::c_int;
            seal(*held)?;
        }
        let no_programs = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if self.fresh_sysfs {
            mount(Some(c"sysfs"), &self.sys, Some(c"sysfs"), no_programs | libc::MS_RDONLY, None)?;
        }
        if self.tmpfs {
            mount(Some(c"tmpfs"), &self.cgroup_root, Some(c"tmpfs"), no_programs, Some(c"mode=0755,size=64k"))?;
        }
        for ((_, target), held) in self.binds.iter().zip(&self.held) {
            if self.tmpfs {
                // SAFETY: a NUL-terminated path prepared before the fork.
                if unsafe { libc::mkdir(target.as_ptr(), 0o755) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // SAFETY: a descriptor open_tree returned and a NUL-terminated path.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    *held,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for (link, target) in &self.links {
            // SAFETY: NUL-terminated strings prepared before the fork.
            if unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if self.tmpfs {
            mount(None, &self.cgroup_root, None, libc::MS_REMOUNT | no_programs | libc::MS_RDONLY, None)?;
        }
        Ok(())
    }
}

/// Makes the detached mount `fd` (and what is mounted below it) read-only, with no programs.
fn seal(fd: libc::c_int) -> std::io::Result<()> {
    mount_setattr(fd, c"", libc::AT_EMPTY_PATH | libc::AT_RECURSIVE, SEALED, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(paths: &[&str]) -> Vec<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn on_v1_each_hierarchy_is_a_dir_of_its_own_and_those_mounted_together_get_links() {
        let instance = "trainyard-a-1234/job.algo-1";
        let given = dirs(&[
            &format!("/sys/fs/cgroup/cpu,cpuacct/{instance}"),
            &format!("/sys/fs/cgroup/memory/system.slice/agent.service/{instance}"),
            &format!("/sys/fs/cgroup/pids/{instance}"),
            // A hierarchy mounted somewhere else is left out.
            &format!("/cgroups/freezer/{instance}"),
        ]);
        let Layout::Hierarchies { binds, links } = layout(&given, false) else { panic!("hierarchies") };
        let names: Vec<&str> = binds.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["cpu,cpuacct", "memory", "pids"]);
        assert_eq!(binds[1].1, given[1], "the instance's own dir, wherever the agent sits");
        assert_eq!(
            links,
            [("cpu".to_string(), "cpu,cpuacct".to_string()), ("cpuacct".to_string(), "cpu,cpuacct".to_string())]
        );
    }

    #[test]
    fn on_v2_the_instances_cgroup_is_the_whole_tree_and_without_one_nothing_is_shown() {
        let dir = PathBuf::from("/sys/fs/cgroup/system.slice/agent.service/trainyard-a/job.algo-2");
        assert_eq!(layout(std::slice::from_ref(&dir), true), Layout::Unified(dir));
        assert_eq!(layout(&[], true), Layout::Empty);
        assert_eq!(layout(&[], false), Layout::Empty);
        assert_eq!(layout(&dirs(&["/elsewhere/memory/job.algo-1"]), false), Layout::Empty);
    }

    #[test]
    fn what_the_child_mounts_is_prepared_from_the_layout() {
        let layout = Layout::Hierarchies {
            binds: vec![("cpu,cpuacct".into(), "/sys/fs/cgroup/cpu,cpuacct/x/j.algo-1".into())],
            links: vec![("cpu".into(), "cpu,cpuacct".into())],
        };
        let sys = OwnSys::prepare(&layout, true);
        assert!(sys.tmpfs && sys.fresh_sysfs);
        assert_eq!(sys.binds[0].1.as_c_str(), c"/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(sys.links[0], (c"/sys/fs/cgroup/cpu".to_owned(), c"cpu,cpuacct".to_owned()));
        assert_eq!(sys.held, [-1]);
        let unified = OwnSys::prepare(&Layout::Unified("/sys/fs/cgroup/a/j.algo-1".into()), false);
        assert!(!unified.tmpfs && !unified.fresh_sysfs);
        assert_eq!(unified.binds[0].1.as_c_str(), c"/sys/fs/cgroup");
    }
}
