//! The process runtime: the training image is a program on the agent's host, started as SageMaker
//! starts a container (`<program> train`), in the instance's cgroup, network namespace and private
//! mount namespace (its work dir at `/opt/ml`, its own `/tmp`, `/dev`, `/run` and `/etc/hosts`), as
//! a uid of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::oneshot;
use trainyard_proto::model::api;

use super::foreign_mounts::ForeignMounts;
use super::{
    Control, Exit, HOSTS_FILE, Identity, Inputs, InstanceSpec, Launched, OPT_ML, PRIVATE_TMP, PRIVATE_VAR_TMP,
    RESOLVER_FILE, Settings, resolver_config, write_hosts_file,
};

/// Starts the instance's program. `Err` is the job's FailureReason.
pub(super) async fn launch(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &Path,
    inputs: Inputs,
    namespace: Option<PathBuf>,
) -> Result<Launched<ProcessControl>, String> {
    let Inputs { env, mut shared } = inputs;
    let argv = command_line(&spec.request)?;
    let lease = Identity::lease(spec, settings, dir)?;
    if lease.is_none() {
        // It runs as the agent's own user, who owns the input cache: copies of its own.
        shared.make_private().await.map_err(|e| format!("copying the staged input: {e}"))?;
    }
    let identity = lease.as_ref().map(|held| (held.uid(), held.groups.clone()));
    let mount_namespace = settings.opt_ml || namespace.is_some();
    // Its own resolver configuration: in its own network namespace, the host's may name resolvers
    // it cannot reach (systemd-resolved's stub on loopback).
    let resolver = if mount_namespace && (namespace.is_some() || settings.instance_resolv_conf.is_some()) {
        resolver_config(settings, namespace.is_some())?
    } else {
        None
    };
    // Its own /dev (as root, where its mount namespace holds /opt/ml): the host's nodes it needs,
    // its GPUs' and what the operator shares.
    let mut private_dev = if settings.opt_ml {
        let cdi = super::devices::cdi_nodes(&spec.gpu_uuids, settings);
        let binds = super::devices::instance_devices(
            &spec.gpu_uuids,
            cdi,
            &settings.gpu_minors,
            &settings.instance_devices,
            Path::exists,
        )?;
        Some(super::devices::PrivateDev::prepare(&binds)?)
    } else {
        None
    };

    let mut cmd = Command::new(&argv[0]);
    // Nothing of the agent's own configuration (join token, API token, ...) reaches the job.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRAINYARD_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(&argv[1..])
        .current_dir(dir)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If the agent dies, its jobs die with it instead of running on unsupervised; a restarted
    // agent reports them lost and the coordinator retries or fails them. The signal comes when
    // the *thread* that forked the program exits, so the fork stays on a runtime worker, which
    // lives as long as the agent: a spawn_blocking thread retires when idle, and so may a worker
    // after block_in_place (tried: instances running past ten seconds were SIGKILLed).
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Its own cgroup, joined before the program runs: everything it starts is born inside, and
    // the instance's limits hold for all of it.
    let cgroup = match &settings.cgroups {
        None => None,
        Some(cgroups) => {
            let limits = crate::cgroup::Limits {
                memory_mib: (spec.memory_mib > 0).then_some(spec.memory_mib),
                vcpus: (spec.vcpus > 0).then_some(spec.vcpus),
                pids: settings.pids_max,
            };
            Some(cgroups.create(&spec.job, spec.instance, limits)?)
        }
    };
    // Its own /sys (where the rest of the host is read-only to it): its network namespace's
    // interfaces, and its own cgroup alone at /sys/fs/cgroup.
    let mut own_sys = settings.opt_ml.then(|| {
        let (dirs, unified) = cgroup.as_ref().map(|c| (c.dirs(), c.unified())).unwrap_or_default();
        super::own_sys::OwnSys::prepare(&super::own_sys::layout(&dirs, unified), namespace.is_some())
    });
    if let Some(cgroup) = &cgroup {
        let files = cgroup.join_files();
        // SAFETY: join_self only opens and writes files prepared before the fork.
        unsafe {
            cmd.pre_exec(move || crate::cgroup::InstanceCgroup::join_self(&files));
        }
    }
    // The instance's own network namespace, entered before anything else.
    let namespace_file = namespace
        .as_ref()
        .map(std::fs::File::open)
        .transpose()
        .map_err(|e| format!("opening the instance's network namespace: {e}"))?;
    if let Some(file) = &namespace_file {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: setns on a descriptor that stays open until after spawn (namespace_file lives on).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // A private mount namespace per instance: the work dir at /opt/ml, so code with hard-coded
    // /opt/ml paths runs unchanged and no instance sees another's, and a private /etc/hosts where
    // `algo-N` resolve (training toolkits wait for every host in SM_HOSTS to resolve); and a UTS
    // namespace whose host name is `algo-N`.
    if mount_namespace {
        let source = c_string(dir);
        let target = c_string(OPT_ML);
        let root = c_string("/");
        let hosts_file = dir.join(HOSTS_FILE);
        let hosts_ready = write_hosts_file(spec, &hosts_file, namespace.is_some()).is_ok();
        let hosts_source = c_string(&hosts_file);
        let etc_hosts = c_string("/etc/hosts");
        let opt_ml = settings.opt_ml;
        // Its own /tmp and /var/tmp (dirs of its work dir, removed with it; only where the work
        // dir is at /opt/ml, as its paths would otherwise lie under the hidden /tmp), its own
        // /dev/shm (charged to its cgroup) and its own System V IPC: nothing an instance leaves
        // there is seen by another, even one that later runs under the same uid.
        let private_tmp = c_string(dir.join(PRIVATE_TMP));
        let private_var_tmp = c_string(dir.join(PRIVATE_VAR_TMP));
        let tmp = c_string("/tmp");
        let var_tmp = c_string("/var/tmp");
        let has_var_tmp = Path::new("/var/tmp").is_dir();
        let shm = c_string("/dev/shm");
        let tmpfs = c_string("tmpfs");
        let shm_options = c_string("mode=1777");
        let has_shm = Path::new("/dev/shm").is_dir();
        // An empty /run of its own: the host's holds its daemons' sockets (D-Bus, journald,
        // a database's, ...), which connect(2) reaches through a read-only mount too. The
        // resolver configuration /etc/resolv.conf may point into it is copied in.
        let private_run = settings.private_run;
        // The agent's work root, where every instance's work dir lies (other jobs' names), its
        // identity and caches: hidden under an empty tmpfs, once its own dir is bound at /opt/ml.
        // Not where the operator shares a path under it, or the program lies there.
        let work_root = &settings.work_root;
        let hidden_work_root = (opt_ml
            && !settings.instance_writable_paths.iter().any(|p| p.starts_with(work_root))
            && !Path::new(&argv[0]).starts_with(work_root))
        .then(|| c_string(work_root));
        let work_root_options = c_string("mode=0755,size=4k");
        let run = c_string(RUN);
        let run_options = c_string("mode=0755,size=1m");
        let resolv = if private_run { resolver_config_under(Path::new(RUN), Path::new(RESOLV_CONF)) } else { None };
        // Where /etc/resolv.conf points into the instance's own /run, the instance's configuration
        // is written there; else its file is bound over /etc/resolv.conf.
        let resolv = resolv.map(|copy| match &resolver {
            Some(contents) => ResolverCopy { contents: contents.clone().into_bytes(), ..copy },
            None => copy,
        });
        let resolver_file = dir.join(RESOLVER_FILE);
        let bind_resolver = match &resolver {
            Some(contents) if resolv.is_none() && Path::new(RESOLV_CONF).exists() => {
                std::fs::write(&resolver_file, contents).map_err(|e| format!("writing /etc/resolv.conf: {e}"))?;
                true
            }
            _ => false,
        };
        let resolver_source = c_string(&resolver_file);
        let etc_resolv = c_string(RESOLV_CONF);
        // The rest of the host is read-only to it (as systemd's DynamicUser= implies
        // ProtectSystem=strict): a uid is lent to one instance at a time, so a file it left in a
        // world-writable dir of the host would outlive the job and be the next holder's.
        // What the operator shares on purpose (`--instance-writable-path`) stays writable.
        let read_only_host = opt_ml;
        let proc_dir = c_string("/proc");
        let proc_fs = c_string("proc");
        let other_users_hidden = c_string("hidepid=invisible");
        let writable = settings.instance_writable_paths.iter().map(c_string).collect::<Vec<_>>();
        // The agent's files that may hold secrets: an empty file no user may read, there instead.
        let inaccessible = c_string(&settings.inaccessible_file);
        let secret_files = settings.secret_files.iter().map(c_string).collect::<Vec<_>>();
        // Its own host name, as on SageMaker: what frameworks resolve to find their own address.
        let hostname = format!("algo-{}", spec.instance).into_bytes();
        // Other instances' namespace files and containers' root filesystems, out of its mount table.
        let mut foreign_mounts = ForeignMounts::new();
        // SAFETY: only syscalls (unshare, mount, mount_setattr, umount2, chdir, mkdir, open, read,
        // symlink) on CStrings, descriptors and room prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                mount(None, &root, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
                // Private first: a detach in a namespace still shared would reach the host's.
                foreign_mounts.detach_in_child()?;
                if let Some(dev) = &mut private_dev {
                    dev.hold_sources_in_child()?;
                }
                // First, so that what is mounted below (bind mounts keep their source's
                // read-only flag) is made writable one by one. A kernel without mount_setattr
                // (before 5.12) leaves the host writable, as the agent says at start.
                let read_only = read_only_host && set_read_only(&root, true, true).is_ok();
                if read_only {
                    // A /proc of its own, where other users' processes do not appear: other
                    // instances' (each has a uid of its own) and the agent's, with their command
                    // lines and states. Writable as before (/proc/self's oom_score_adj, comm).
                    // Each proc mount has options of its own since Linux 5.8 (mount_setattr
                    // working says 5.12 or later): the host's /proc is untouched.
                    mount(Some(&proc_fs), &proc_dir, Some(&proc_fs), NO_PROGRAMS, Some(&other_users_hidden))?;
                    // Its /sys, read-only (open_tree, which it uses, is older than mount_setattr).
                    if let Some(sys) = &mut own_sys {
                        sys.mount_in_child()?;
                    }
                    for path in &writable {
                        mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
                        set_read_only(path, false, true)?;
                    }
                    // (One removed since the agent started is not there to hide.)
                    for path in &secret_files {
                        where_present(mount(Some(&inaccessible), path, None, libc::MS_BIND, None))?;
                    }
                }
                if hosts_ready {
                    mount(Some(&hosts_source), &etc_hosts, None, libc::MS_BIND, None)?;
                }
                if bind_resolver {
                    mount(Some(&resolver_source), &etc_resolv, None, libc::MS_BIND, None)?;
                }
                if opt_ml {
                    mount(Some(&source), &target, None, libc::MS_BIND | libc::MS_REC, None)?;
                    if read_only {
                        set_read_only(&target, false, true)?;
                    }
                    if libc::chdir(target.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Last: the sources above may lie under /tmp.
                    if has_var_tmp {
                        mount(Some(&private_var_tmp), &var_tmp, None, libc::MS_BIND, None)?;
                        if read_only {
                            set_read_only(&var_tmp, false, false)?;
                        }
                    }
                    mount(Some(&private_tmp), &tmp, None, libc::MS_BIND, None)?;
                    if read_only {
                        set_read_only(&tmp, false, false)?;
                    }
                }
                // After the binds above, whose sources may lie under /dev/shm (a work root there).
                match &private_dev {
                    Some(dev) => dev.mount_in_child()?,
                    None if has_shm => {
                        mount(Some(&tmpfs), &shm, Some(&tmpfs), libc::MS_NOSUID | libc::MS_NODEV, Some(&shm_options))?;
                    }
                    None => {}
                }
                // Last: what is bound above may come from under /run (a work root there).
                if private_run {
                    let sealed = NO_PROGRAMS | libc::MS_RDONLY;
                    match &resolv {
                        None => mount(Some(&tmpfs), &run, Some(&tmpfs), sealed, Some(&run_options))?,
                        Some(copy) => {
                            mount(Some(&tmpfs), &run, Some(&tmpfs), NO_PROGRAMS, Some(&run_options))?;
                            copy.write()?;
                            mount(None, &run, None, libc::MS_REMOUNT | sealed, None)?;
                        }
                    }
                }
                // Last of all: the binds above keep their sources. A work root under a dir the
                // instance has its own of (/tmp, /run) is not there to hide (ENOENT).
                if let Some(root) = &hidden_work_root {
                    let sealed = NO_PROGRAMS | libc::MS_RDONLY;
                    where_present(mount(Some(&tmpfs), root, Some(&tmpfs), sealed, Some(&work_root_options)))?;
                }
                Ok(())
            });
        }
    }
    if let Some((uid, groups)) = identity {
        // No passwd entry names the uid: these say who it is to tools that ask (getpass, pip).
        let name = format!("trainyard-{uid}");
        let base = if settings.opt_ml { PathBuf::from(OPT_ML) } else { dir.to_path_buf() };
        cmd.env("USER", &name).env("LOGNAME", &name).env("HOME", base.join(PRIVATE_TMP));
        if !settings.opt_ml {
            cmd.env("TMPDIR", base.join(PRIVATE_TMP));
        }
        // No user namespace of its own (built here: the child only installs it).
        let filter = if settings.instance_user_namespaces { None } else { crate::seccomp::Filter::new() };
        // SAFETY: registered last, so the steps above run privileged; only syscalls.
        unsafe {
            cmd.pre_exec(move || {
                // Its output pipes are its own, so that it can open them again by name
                // (/dev/stdout, /proc/self/fd/1): the agent's are root's, mode 0600.
                for output in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                    if libc::fchown(output, uid, uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                crate::users::switch_to(uid, uid, &groups)?;
                // Last, after every privileged step: what the job does from its exec on is filtered.
                match &filter {
                    Some(filter) => filter.install(),
                    None => Ok(()),
                }
            });
        }
    }
    // A program being replaced while it starts fails with ETXTBSY for a moment: try again.
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let hint = match (e.raw_os_error(), &lease) {
                    (Some(libc::ENOENT), _) if settings.opt_ml && Path::new(&argv[0]).starts_with("/tmp") => {
                        " (instances have a /tmp of their own: install training programs elsewhere, e.g. under /opt)"
                            .to_string()
                    }
                    (Some(libc::EACCES), Some(held)) => format!(
                        " (the instance runs as uid {}, a user of its own: the program and every directory above it must be readable and executable by every user, e.g. under /opt with mode 0755)",
                        held.uid()
                    ),
                    _ => String::new(),
                };
                return Err(format!("ClientError: cannot start {}: {e}{hint}", argv[0]));
            }
        }
    };
    let group = child.id().map(|p| p as i32);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (exited_tx, exited) = oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await.map(|s| Exit { code: s.code(), text: s.to_string() });
        let _ = exited_tx.send(status);
    });
    Ok(Launched {
        stdout: stdout.map(|s| Box::new(s) as super::Output),
        stderr: stderr.map(|s| Box::new(s) as super::Output),
        exited,
        control: ProcessControl { cgroup, group, uid: lease },
        shared: shared.ids(),
    })
}

/// Mount flags of the file systems an instance gets of its own that hold no programs (/proc, /run).
const NO_PROGRAMS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
const RUN: &str = "/run";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Whether an instance can have a /run of its own: /run is a directory of its own (not a link),
/// nothing the operator shares with instances lies under it, and /dev/shm does not point into
/// it (as on old systems). Otherwise, why not.
pub fn private_run_possible(writable: &[PathBuf]) -> Result<(), String> {
    let run = Path::new(RUN);
    if !std::fs::symlink_metadata(run).is_ok_and(|m| m.is_dir()) {
        return Err("/run is not a directory of its own".into());
    }
    if std::fs::read_link("/dev/shm").is_ok_and(|target| target.starts_with(run)) {
        return Err("/dev/shm points into /run".into());
    }
    match writable.iter().find(|p| p.starts_with(run)) {
        Some(shared) => Err(format!("{} is shared with instances (--instance-writable-path)", shared.display())),
        None => Ok(()),
    }
}

/// The resolver configuration, when `resolv_conf` is a link to a file under `run` (systemd-resolved,
/// resolvconf, NetworkManager): the dirs to make under an empty `run` and the file to write there,
/// so that the link still resolves. None when it does not point there (or is unreadable, or
/// larger than 64 KiB).
fn resolver_config_under(run: &Path, resolv_conf: &Path) -> Option<ResolverCopy> {
    let target = std::fs::canonicalize(resolv_conf).ok()?;
    let run = std::fs::canonicalize(run).ok()?;
    let relative = target.strip_prefix(&run).ok()?;
    let contents = std::fs::read(&target).ok().filter(|c| c.len() <= 64 * 1024)?;
    let mut dirs = Vec::new();
    let mut dir = run.clone();
    for part in relative.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        dirs.push(c_string(&dir));
    }
    Some(ResolverCopy { dirs, file: c_string(&target), contents })
}

/// A copy of the resolver configuration to write into an instance's empty /run.
#[derive(Debug)]
struct ResolverCopy {
    dirs: Vec<std::ffi::CString>,
    file: std::ffi::CString,
    contents: Vec<u8>,
}

impl ResolverCopy {
    /// For `pre_exec`: only syscalls on what was prepared before the fork.
    fn write(&self) -> std::io::Result<()> {
        for dir in &self.dirs {
            // SAFETY: a NUL-terminated path that outlives the call.
            if unsafe { libc::mkdir(dir.as_ptr(), 0o755) } != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: as above; the descriptor is closed below.
        let fd = unsafe {
            libc::open(self.file.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a buffer we own and its length; a tmpfs takes 64 KiB in one write.
        let written = unsafe { libc::write(fd, self.contents.as_ptr().cast(), self.contents.len()) };
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        if written < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// A path or a name as a C string (one with a NUL byte, which no path here has, becomes empty
/// and fails where it is used).
pub(super) fn c_string(text: impl AsRef<std::ffi::OsStr>) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(text.as_ref().as_bytes()).unwrap_or_default()
}

/// mount(2) for `pre_exec`: one syscall on strings prepared before the fork.
pub(super) fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> std::io::Result<()> {
    let pointer = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), std::ffi::CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(pointer(source), target.as_ptr(), pointer(fstype), flags, pointer(data).cast()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A mount onto a target that may be gone: one not there (ENOENT) is nothing to cover.
fn where_present(mounted: std::io::Result<()>) -> std::io::Result<()> {
    match mounted {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// mount_setattr(2) for `pre_exec`: makes the mount at `path` (and, `recursive`, every mount
/// below it) read-only, or writable again.
fn set_read_only(path: &std::ffi::CStr, read_only: bool, recursive: bool) -> std::io::Result<()> {
    let (set, clear) = if read_only { (libc::MOUNT_ATTR_RDONLY, 0) } else { (0, libc::MOUNT_ATTR_RDONLY) };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    mount_setattr(libc::AT_FDCWD, path, flags, set, clear)
}

/// mount_setattr(2) for `pre_exec`: sets the mount attributes `set` and clears `clear` on the
/// mount at `path` relative to `dir` (`flags`: `AT_RECURSIVE`, `AT_EMPTY_PATH` for `dir` itself).
pub(super) fn mount_setattr(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    set: u64,
    clear: u64,
) -> std::io::Result<()> {
    let attr = libc::mount_attr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    // SAFETY: a NUL-terminated path and a mount_attr that outlive the call, and their sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir,
            path.as_ptr(),
            flags,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Whether this kernel has mount_setattr(2) (Linux 5.12): an empty call fails with EINVAL there,
/// with ENOSYS before.
pub fn read_only_host_supported() -> bool {
    // SAFETY: a call with no attributes changes nothing.
    let rc = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, std::ptr::null::<libc::c_char>(), 0, 0, 0) };
    !(rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// The command line: the image names a program (a path or a command line), invoked with `train`
/// as SageMaker invokes a container; ContainerEntrypoint/Arguments replace it when given.
fn command_line(request: &api::CreateTrainingJobRequest) -> Result<Vec<String>, String> {
    let spec = request.algorithm_specification.as_ref().ok_or("AlgorithmSpecification is missing")?;
    if let Some(entry) = spec.container_entrypoint.clone().filter(|e| !e.is_empty()) {
        let mut argv = entry;
        argv.extend(spec.container_arguments.clone().unwrap_or_default());
        return Ok(argv);
    }
    let image = spec.training_image.as_deref().ok_or("TrainingImage is missing")?;
    let mut argv: Vec<String> = image.split_whitespace().map(str::to_string).collect();
    if argv.is_empty() {
        return Err("TrainingImage is empty".into());
    }
    // A relative program path is relative to the agent's working directory.
    if argv[0].contains('/')
        && !argv[0].starts_with('/')
        && let Ok(cwd) = std::env::current_dir()
    {
        argv[0] = cwd.join(&argv[0]).display().to_string();
    }
    argv.extend(spec.container_arguments.clone().unwrap_or_default());
    argv.push("train".into());
    Ok(argv)
}

/// An instance's processes: its cgroup when it has one (everything it started, wherever it
/// moved), else every process of its uid when it has one of its own, else its process group.
/// Dropped after the supervisor has killed them all: the cgroup is removed, the uid freed.
pub(super) struct ProcessControl {
    cgroup: Option<crate::cgroup::InstanceCgroup>,
    /// The program's pid, which is its process group's id (process_group(0) at spawn).
    group: Option<i32>,
    uid: Option<Identity>,
}

impl Control for ProcessControl {
    fn signal(&self, signal: i32) {
        match (&self.cgroup, &self.uid, self.group) {
            (Some(cgroup), _, _) => cgroup.signal(signal),
            (None, Some(held), _) => crate::uids::signal_every_process_of(held.uid(), signal),
            (None, None, Some(pid)) if pid > 1 => {
                // SAFETY: kill(2) has no memory-safety preconditions; the group is the job's own,
                // never ours.
                unsafe {
                    libc::kill(-pid, signal);
                }
            }
            _ => {}
        }
    }

    async fn kill_all(&self) -> bool {
        match (&self.cgroup, &self.uid) {
            (Some(cgroup), held) => {
                let emptied = cgroup.kill_all().await;
                if let Some(held) = held
                    && emptied
                {
                    held.lease.settle();
                }
                emptied
            }
            // Killed, but nothing counts what may have escaped the uid or the process group.
            (None, Some(held)) => {
                let uid = held.uid();
                let _ = tokio::task::spawn_blocking(move || crate::uids::kill_every_process_of(uid)).await;
                false
            }
            (None, None) => {
                self.signal(libc::SIGKILL);
                false
            }
        }
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.oom_kills())
    }
}

#[cfg(test)]
mod tests {
    use super::resolver_config_under;

    /// /etc/resolv.conf as systemd-resolved or resolvconf leave it, a link into /run: the copy
    /// recreates the file where the link points once /run is empty; a plain file needs none.
    #[test]
    fn a_resolver_config_linked_into_run_is_recreated_in_an_empty_one() {
        let root = tempfile::tempdir().expect("dir");
        let run = root.path().join("run");
        let stub = run.join("systemd/resolve/stub-resolv.conf");
        std::fs::create_dir_all(stub.parent().expect("parent")).expect("dirs");
        std::fs::write(&stub, "nameserver 192.0.2.53\n").expect("write");
        let link = root.path().join("resolv.conf");
        std::os::unix::fs::symlink(&stub, &link).expect("link");

        let copy = resolver_config_under(&run, &link).expect("a copy");
        assert_eq!(copy.contents, b"nameserver 192.0.2.53\n");
        // The instance's /run is empty: the copy makes the dirs and the file again.
        std::fs::remove_dir_all(&run).expect("empty it");
        std::fs::create_dir(&run).expect("run");
        copy.write().expect("write the copy");
        assert_eq!(std::fs::read_to_string(&link).expect("through the link"), "nameserver 192.0.2.53\n");

        // A plain file, or a link elsewhere, is left as it is.
        let plain = root.path().join("plain-resolv.conf");
        std::fs::write(&plain, "nameserver 192.0.2.1\n").expect("write");
        assert!(resolver_config_under(&run, &plain).is_none());
    }
}
