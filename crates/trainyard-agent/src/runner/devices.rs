//! The /dev a host program's instance sees: a tmpfs of its own holding copies (same numbers, mode
//! and owner) of the host's nodes every program needs (`null`, `zero`, `full`, `random`,
//! `urandom`, `tty`), a pseudo-terminal instance, its own
//! `/dev/shm` (and `/dev/mqueue`), the nodes of *its* GPUs and what the operator shares
//! (`--instance-device`). Nothing else of the host's /dev: a node anyone may open there
//! (`/dev/nvidia*` are 0666 on most GPU hosts, `/dev/fuse`, ...) would otherwise be any job's,
//! another instance's GPUs among them. Containers get the same from runc and their device cgroup.
//!
//! Which nodes is decided here, before the fork, as data ([`instance_devices`]); [`PrivateDev`]
//! holds what the forked child needs to build the /dev with syscalls alone.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::Settings;
use super::process::{c_string, mount};

/// The nodes every instance gets, from the host's /dev (the OCI runtime spec's defaults).
pub const DEFAULT_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// The nodes NVIDIA's driver makes for the whole machine (given with any GPU, where present), as
/// `nvidia-container-cli` gives them when no CDI spec describes the GPUs.
const NVIDIA_CONTROL_NODES: [&str; 4] = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];
/// The links every Linux /dev has.
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// A host node or dir, seen by the instance at `inside` (a path under /dev).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBind {
    pub host: PathBuf,
    pub inside: PathBuf,
}

impl DeviceBind {
    fn same(path: impl Into<PathBuf>) -> DeviceBind {
        let path = path.into();
        DeviceBind { host: path.clone(), inside: path }
    }
}

/// What the instance's /dev holds from the host, given its GPUs (UUIDs). `cdi` holds the GPUs' CDI
/// device nodes when a spec describes this host's GPUs (the same nodes a container gets); else
/// NVIDIA's conventional nodes are given, `/dev/nvidia<minor>` for each GPU and the control nodes,
/// those `exists` says are there. `Err` is the job's FailureReason.
pub fn instance_devices(
    gpus: &[String],
    cdi: Option<Result<Vec<crate::cdi::DeviceNode>, String>>,
    minors: &BTreeMap<String, u32>,
    shared: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Result<Vec<DeviceBind>, String> {
    let mut binds: Vec<DeviceBind> =
        DEFAULT_NODES.iter().map(|name| DeviceBind::same(Path::new("/dev").join(name))).collect();
    if !gpus.is_empty() {
        match cdi {
            Some(nodes) => {
                for node in nodes.map_err(|e| format!("InternalServerError: {e}"))? {
                    let inside = PathBuf::from(&node.path);
                    let under_dev = inside.starts_with("/dev") && inside != Path::new("/dev");
                    if !under_dev || inside.components().any(|c| c == std::path::Component::ParentDir) {
                        return Err(format!(
                            "InternalServerError: the CDI device node {} is not under /dev, where host programs' GPUs are given",
                            node.path
                        ));
                    }
                    let host = PathBuf::from(node.host_path.as_deref().unwrap_or(&node.path));
                    binds.push(DeviceBind { host, inside });
                }
            }
            None => {
                for name in NVIDIA_CONTROL_NODES {
                    let path = Path::new("/dev").join(name);
                    if exists(&path) {
                        binds.push(DeviceBind::same(path));
                    }
                }
                for uuid in gpus {
                    let Some(minor) = minors.get(uuid) else {
                        return Err(format!("InternalServerError: GPU {uuid} is not one NVML reports on this host"));
                    };
                    let path = PathBuf::from(format!("/dev/nvidia{minor}"));
                    if !exists(&path) {
                        return Err(format!(
                            "InternalServerError: GPU {uuid}'s device node {} is missing (nvidia-modprobe makes it)",
                            path.display()
                        ));
                    }
                    binds.push(DeviceBind::same(path));
                }
            }
        }
    }
    binds.extend(shared.iter().map(DeviceBind::same));
    // One entry per place; a later one (a GPU's, the operator's) wins over a default.
    let mut seen = std::collections::BTreeSet::new();
    let mut unique: Vec<DeviceBind> = binds.into_iter().rev().filter(|b| seen.insert(b.inside.clone())).collect();
    unique.reverse();
    Ok(unique)
}

/// The CDI device nodes of `gpus`, when a CDI spec describes this host's GPUs (None when none
/// does).
pub fn cdi_nodes(gpus: &[String], settings: &Settings) -> Option<Result<Vec<crate::cdi::DeviceNode>, String>> {
    if gpus.is_empty() {
        return None;
    }
    let (registry, _) = crate::cdi::Registry::load(&settings.cdi_dirs);
    if !registry.has_any(crate::cdi::GPU_KIND) {
        return None;
    }
    let names = crate::cdi::gpu_names(&registry, gpus, &settings.gpu_indexes);
    Some(
        registry
            .edits_for(crate::cdi::GPU_KIND, &names)
            .map(|edits| edits.into_iter().flat_map(|e| e.device_nodes).collect()),
    )
}

/// How a host node or dir reaches the instance's /dev, prepared for the child.
enum Entry {
    /// A device node, made anew with the host's numbers, mode and owner: far cheaper than a bind
    /// mount, when the instance starts and when its mount namespace goes (as systemd's
    /// PrivateDevices= makes them).
    Node { target: CString, mode: libc::mode_t, rdev: libc::dev_t, uid: libc::uid_t, gid: libc::gid_t },
    /// Anything else (a dir such as /dev/infiniband): bound, its source held open in the child.
    Bound { host: CString, target: CString, is_dir: bool },
}

/// Everything the forked child needs to give the instance its /dev, prepared before the fork.
pub struct PrivateDev {
    entries: Vec<Entry>,
    /// The child's descriptors of the bound entries' sources, in order (-1 until opened).
    held: Vec<libc::c_int>,
    /// Dirs to make in the new /dev (parents of entries, `pts`, `shm`, `mqueue`), parents first.
    dirs: Vec<CString>,
    links: Vec<(CString, CString)>,
    dev: CString,
    pts: CString,
    shm: CString,
    mqueue: Option<CString>,
}

impl PrivateDev {
    /// Reads what each host node is; `Err` is the job's FailureReason.
    pub fn prepare(binds: &[DeviceBind]) -> Result<PrivateDev, String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dev = Path::new("/dev");
        let mut dirs = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        for bind in binds {
            let meta = std::fs::metadata(&bind.host)
                .map_err(|e| format!("InternalServerError: device {}: {e}", bind.host.display()))?;
            for parent in bind.inside.ancestors().skip(1) {
                if parent.starts_with(dev) && parent != dev {
                    dirs.insert(parent.to_path_buf());
                }
            }
            let target = c_string(&bind.inside);
            let kind = meta.file_type();
            entries.push(if kind.is_char_device() || kind.is_block_device() {
                Entry::Node { target, mode: meta.mode(), rdev: meta.rdev(), uid: meta.uid(), gid: meta.gid() }
            } else {
                Entry::Bound { host: c_string(&bind.host), target, is_dir: meta.is_dir() }
            });
        }
        let mqueue = dev.join("mqueue");
        let has_mqueue = mqueue.is_dir();
        for own in ["pts", "shm"].iter().map(|name| dev.join(name)).chain(has_mqueue.then(|| mqueue.clone())) {
            dirs.insert(own);
        }
        let bound = entries.iter().filter(|e| matches!(e, Entry::Bound { .. })).count();
        Ok(PrivateDev {
            entries,
            held: vec![-1; bound],
            // Sorted, a parent comes before what is under it.
            dirs: dirs.iter().map(c_string).collect(),
            links: LINKS.iter().map(|(name, target)| (c_string(dev.join(name)), c_string(target))).collect(),
            dev: c_string(dev),
            pts: c_string(dev.join("pts")),
            shm: c_string(dev.join("shm")),
            mqueue: has_mqueue.then(|| c_string(mqueue)),
        })
    }

    /// In the child, first thing in its new mount namespace (a bind's source must be a mount
    /// of the caller's namespace, so the parent cannot open them): holds each bound entry's
    /// source (`O_PATH`), so that what is mounted before the binds (its /tmp, where one may lie)
    /// hides none. Only syscalls.
    pub fn hold_sources_in_child(&mut self) -> std::io::Result<()> {
        let sources = self.entries.iter().filter_map(|e| match e {
            Entry::Bound { host, .. } => Some(host),
            Entry::Node { .. } => None,
        });
        for (host, held) in sources.zip(self.held.iter_mut()) {
            // SAFETY: a NUL-terminated path prepared before the fork.
            let fd = unsafe { libc::open(host.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *held = fd;
        }
        Ok(())
    }

    /// In the child, in its own mount (and IPC) namespace: an empty tmpfs over /dev, the nodes
    /// and binds, a new devpts instance, its own /dev/shm and /dev/mqueue, then /dev made
    /// read-only (the nodes stay usable: a read-only mount forbids changing a node, not writing
    /// to the device; and the job, without CAP_MKNOD, could not make one). Only syscalls on what
    /// `prepare` made.
    pub fn mount_in_child(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        let tmpfs = c"tmpfs";
        // Not nodev: the nodes made in it must work.
        let sealed = libc::MS_NOSUID | libc::MS_NOEXEC;
        mount(Some(tmpfs), &self.dev, Some(tmpfs), sealed, Some(c"mode=0755,size=64k"))?;
        for dir in &self.dirs {
            // SAFETY: a NUL-terminated path prepared before the fork.
            check(unsafe { libc::mkdir(dir.as_ptr(), 0o755) })?;
        }
        let mut held = self.held.iter();
        for entry in &self.entries {
            match entry {
                Entry::Node { target, mode, rdev, uid, gid } => {
                    // SAFETY: a NUL-terminated path prepared before the fork; the mode is set
                    // again after, as the umask may have taken bits from it.
                    unsafe {
                        check(libc::mknod(target.as_ptr(), *mode, *rdev))?;
                        check(libc::chmod(target.as_ptr(), *mode & 0o7777))?;
                        check(libc::chown(target.as_ptr(), *uid, *gid))?;
                    }
                }
                Entry::Bound { target, is_dir, .. } => {
                    // SAFETY: NUL-terminated paths prepared before the fork.
                    let made = unsafe {
                        if *is_dir {
                            libc::mkdir(target.as_ptr(), 0o755)
                        } else {
                            let fd =
                                libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                            if fd >= 0 { libc::close(fd) } else { fd }
                        }
                    };
                    if made != 0 {
                        let error = std::io::Error::last_os_error();
                        // A shared dir may also be the parent of a GPU's node (made above).
                        if !(*is_dir && error.raw_os_error() == Some(libc::EEXIST)) {
                            return Err(error);
                        }
                    }
                    let mut buffer = [0u8; 32];
                    let source = fd_path(held.next().copied().unwrap_or(-1), &mut buffer);
                    mount(Some(source), target, None, libc::MS_BIND | libc::MS_REC, None)?;
                }
            }
        }
        // Its own pseudo-terminals: the host's devpts would list (and, 0620 to their owners,
        // let it reach) the host's terminals.
        let devpts = c"devpts";
        mount(
            Some(devpts),
            &self.pts,
            Some(devpts),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        )?;
        mount(Some(tmpfs), &self.shm, Some(tmpfs), libc::MS_NOSUID | libc::MS_NODEV, Some(c"mode=1777"))?;
        if let Some(mqueue) = &self.mqueue {
            // The queues of its own IPC namespace.
            let fs = c"mqueue";
            mount(Some(fs), mqueue, Some(fs), sealed | libc::MS_NODEV, None)?;
        }
        for (link, target) in &self.links {
            // SAFETY: NUL-terminated paths prepared before the fork.
            if unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        mount(None, &self.dev, None, libc::MS_REMOUNT | libc::MS_RDONLY | sealed, None)
    }
}

/// `/proc/self/fd/<fd>`, written into `buffer` (no allocation: it runs in the forked child).
fn fd_path(fd: libc::c_int, buffer: &mut [u8; 32]) -> &std::ffi::CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buffer[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut count) = (fd.max(0) as u32, 0);
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..count].iter().rev().enumerate() {
        buffer[PREFIX.len() + i] = *digit;
    }
    buffer[PREFIX.len() + count] = 0;
    std::ffi::CStr::from_bytes_until_nul(&buffer[..]).unwrap_or(c"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, host: Option<&str>) -> crate::cdi::DeviceNode {
        serde_json::from_value(serde_json::json!({"path": path, "hostPath": host})).expect("node")
    }

    fn insides(binds: &[DeviceBind]) -> Vec<String> {
        binds.iter().map(|b| b.inside.display().to_string()).collect()
    }

    const DEFAULTS: [&str; 6] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

    #[test]
    fn descriptor_paths_are_written_without_allocating() {
        let mut buffer = [0u8; 32];
        assert_eq!(fd_path(7, &mut buffer), c"/proc/self/fd/7");
        assert_eq!(fd_path(0, &mut buffer), c"/proc/self/fd/0");
        assert_eq!(fd_path(i32::MAX, &mut buffer), c"/proc/self/fd/2147483647");
    }

    #[test]
    fn without_gpus_an_instance_gets_the_default_nodes_and_what_the_operator_shares() {
        let binds = instance_devices(&[], None, &BTreeMap::new(), &[PathBuf::from("/dev/infiniband")], |_| true)
            .expect("binds");
        let mut expected = DEFAULTS.to_vec();
        expected.push("/dev/infiniband");
        assert_eq!(insides(&binds), expected);
        assert!(binds.iter().all(|b| b.host == b.inside));
    }

    #[test]
    fn a_cdi_spec_gives_exactly_its_nodes_for_the_instances_gpus() {
        let nodes = vec![node("/dev/nvidiactl", None), node("/dev/nvidia1", Some("/var/fake/nvidia1"))];
        let binds =
            instance_devices(&["GPU-b".into()], Some(Ok(nodes)), &BTreeMap::new(), &[], |_| true).expect("binds");
        assert_eq!(insides(&binds)[6..], ["/dev/nvidiactl", "/dev/nvidia1"]);
        assert_eq!(binds[7].host, Path::new("/var/fake/nvidia1"));
        // A spec's failure (a GPU it does not name) fails the job, saying so.
        let failed =
            instance_devices(&["GPU-c".into()], Some(Err("no CDI device".into())), &BTreeMap::new(), &[], |_| true);
        assert_eq!(failed, Err("InternalServerError: no CDI device".into()));
        // A node a spec would place outside /dev is refused, not mounted over the host's files.
        for path in ["/etc/passwd", "/dev/../etc/passwd", "/dev"] {
            let outside =
                instance_devices(&["GPU-b".into()], Some(Ok(vec![node(path, None)])), &BTreeMap::new(), &[], |_| true);
            assert!(outside.is_err_and(|e| e.contains("not under /dev")), "{path}");
        }
    }

    #[test]
    fn without_a_cdi_spec_the_nodes_are_nvidias_by_minor_number_and_the_control_nodes_present() {
        let minors = BTreeMap::from([("GPU-a".to_string(), 0), ("GPU-b".to_string(), 3)]);
        let present = |p: &Path| p != Path::new("/dev/nvidia-modeset");
        let binds = instance_devices(&["GPU-b".into()], None, &minors, &[], present).expect("binds");
        assert_eq!(
            insides(&binds)[6..],
            ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia3"]
        );
        // A GPU whose node is missing, or one NVML does not know, fails the job, saying which.
        let missing = instance_devices(&["GPU-b".into()], None, &minors, &[], |p| p != Path::new("/dev/nvidia3"));
        assert!(missing.is_err_and(|e| e.contains("/dev/nvidia3 is missing")));
        let unknown = instance_devices(&["GPU-z".into()], None, &minors, &[], |_| true);
        assert!(unknown.is_err_and(|e| e.contains("GPU-z")));
    }

    #[test]
    fn one_bind_per_place_the_later_winning() {
        let nodes = vec![node("/dev/null", Some("/var/fake/null"))];
        let binds =
            instance_devices(&["GPU-a".into()], Some(Ok(nodes)), &BTreeMap::new(), &[], |_| true).expect("binds");
        assert_eq!(binds.len(), 6);
        assert_eq!(
            binds.iter().find(|b| b.inside == Path::new("/dev/null")).map(|b| b.host.clone()),
            Some("/var/fake/null".into())
        );
    }
}
