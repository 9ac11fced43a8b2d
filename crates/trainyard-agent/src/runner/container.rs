//! The container runtime: the training image runs through containerd as SageMaker runs it
//! (`docker run <image> train`: the image's entrypoint with `train` as its argument, or `train` as
//! the command), with the instance's work dir at `/opt/ml`, its `/etc/hosts`, its network namespace,
//! its uid, no capabilities, `no_new_privileges`, and its instance type's memory, CPU and pids limits
//! (in a cgroup runc makes for it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{
    Control, Exit, HOSTS_FILE, Identity, Inputs, InstanceSpec, Launched, OPT_ML, RESOLVER_FILE, Reporter, Settings,
    resolver_config, write_hosts_file,
};
use crate::containerd::{Containerd, Image};
use crate::image_cache::Pinned;
use trainyard_proto::pb::InstanceState;

/// Starts the instance's container. `Err` is the job's FailureReason.
pub(super) async fn launch(
    spec: &InstanceSpec,
    settings: &Settings,
    reference: &str,
    dir: &Path,
    inputs: Inputs,
    namespace: Option<PathBuf>,
    reporter: &Reporter<'_>,
) -> Result<Launched<ContainerControl>, String> {
    let Inputs { env, mut shared } = inputs;
    let (Some(containerd), Some(images)) = (&settings.containerd, &settings.images) else {
        return Err(format!(
            "InternalServerError: {reference} is a container image and this agent has no container runtime"
        ));
    };
    let (image, pinned) = images.get(reference, &mut pull_progress(reporter)).await?;
    // An image that runs as root does so only where the agent allows it; else as the instance's uid.
    let identity = if settings.root_images && image.runs_as_root() {
        tracing::info!(job = %spec.job, instance = spec.instance, image = reference, "the container runs as root (--root-images)");
        None
    } else {
        Identity::lease(spec, settings, dir)?
    };
    if identity.is_none() {
        // Root (or the agent's own user) owns the input cache's copies and could write through
        // the links into what other instances read: copies of its own instead.
        let copying = shared.make_private().await;
        copying.map_err(|e| format!("copying the staged input for an instance run as root: {e}"))?;
    }
    let hosts = dir.join(HOSTS_FILE);
    write_hosts_file(spec, &hosts, namespace.is_some()).map_err(|e| format!("writing /etc/hosts: {e}"))?;
    // The image's own /etc/resolv.conf (often none) would name no resolver it can reach.
    let resolver = match resolver_config(settings, namespace.is_some())? {
        Some(contents) => {
            let path = dir.join(RESOLVER_FILE);
            std::fs::write(&path, contents).map_err(|e| format!("writing /etc/resolv.conf: {e}"))?;
            Some(path)
        }
        None => None,
    };
    let id = format!("{}.algo-{}.{}", spec.job, spec.instance, spec.attempt);
    let cgroup = settings.container_cgroups.slot(&id);
    // runc joins the namespace through this process's descriptor of it: the name `ip netns add`
    // mounted under /run/netns may not be visible to containerd, whose mount namespace is not the
    // agent's (systemd's sandbox, a simulated host) and receives no mounts from it.
    let netns = match &namespace {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?),
        None => None,
    };
    let netns_path = netns.as_ref().map(|f| {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
    });
    let mut runtime = RuntimeSpec {
        image: &image,
        request: &spec.request,
        env: &env,
        hostname: format!("algo-{}", spec.instance),
        work_dir: dir,
        hosts: &hosts,
        resolver: resolver.as_deref(),
        network: netns_path.as_deref(),
        user: identity.as_ref().map(|i| (i.uid(), i.groups.clone())).unwrap_or((0, vec![0])),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        pids: settings.pids_max,
        cgroup: &cgroup.path,
        user_namespaces: settings.instance_user_namespaces,
    }
    .build();
    give_gpus(&mut runtime, &spec.gpu_uuids, settings)?;
    // Its output comes through two FIFOs in the agent's own staging dir, out of every job's reach.
    let staging = settings.work_root.join(super::STAGING);
    std::fs::create_dir_all(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    let (stdout, stderr) = (staging.join(format!("{id}.stdout")), staging.join(format!("{id}.stderr")));
    for fifo in [&stdout, &stderr] {
        let _ = std::fs::remove_file(fifo);
        super::prepare::make_fifo(fifo).map_err(|e| format!("creating {}: {e}", fifo.display()))?;
    }
    // Opened for reading while containerd's shim opens them for writing (each open waits for the
    // other side), so that the end of the program's output is an end of file.
    let readers =
        [stdout.clone(), stderr.clone()].map(|fifo| tokio::task::spawn_blocking(move || std::fs::File::open(fifo)));
    let control = ContainerControl {
        containerd: containerd.clone(),
        id: id.clone(),
        cgroup: Some(cgroup),
        fifos: [stdout.clone(), stderr.clone()],
        identity,
        image: Some(pinned),
    };
    let started = async {
        let mounts = containerd.create(&id, &image, &runtime, &settings.agent_id).await?;
        containerd
            .start(&id, mounts, &stdout, &stderr)
            .await
            .map_err(|e| format!("ClientError: starting {reference}: {e}"))
    }
    .await;
    // Joined (or failed): the descriptor has done its work.
    drop(netns);
    if let Err(reason) = started {
        // No shim will open the FIFOs: the readers waiting for one are let go.
        for fifo in [&stdout, &stderr] {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo);
        }
        return Err(reason);
    }
    let mut streams = Vec::new();
    for reader in readers {
        let file = reader.await.map_err(|e| e.to_string())?.map_err(|e| format!("opening the output FIFO: {e}"))?;
        streams.push(Some(Box::new(tokio::fs::File::from_std(file)) as super::Output));
    }
    let (exited_tx, exited) = oneshot::channel();
    let waiter = containerd.clone();
    let waited = id.clone();
    tokio::spawn(async move {
        let status = waiter
            .wait(&waited)
            .await
            .map_err(std::io::Error::other)
            .map(|code| Exit { code: Some(code as i32), text: format!("exit status: {code}") });
        let _ = exited_tx.send(status);
    });
    let stderr_stream = streams.pop().flatten();
    let stdout_stream = streams.pop().flatten();
    Ok(Launched { stdout: stdout_stream, stderr: stderr_stream, exited, control, shared: shared.ids() })
}

/// Gives the container the instance's GPUs through their CDI devices (named by UUID, or by NVML
/// index as `nvidia-ctk`'s default names them), and no other device.
fn give_gpus(runtime: &mut Value, gpus: &[String], settings: &Settings) -> Result<(), String> {
    if gpus.is_empty() {
        return Ok(());
    }
    let (registry, _) = crate::cdi::Registry::load(&settings.cdi_dirs);
    let names = crate::cdi::gpu_names(&registry, gpus, &settings.gpu_indexes);
    let edits = registry.edits_for(crate::cdi::GPU_KIND, &names).map_err(|e| format!("InternalServerError: {e}"))?;
    crate::cdi::apply(runtime, &edits).map_err(|e| format!("InternalServerError: {e}"))
}

/// Reports a pull's progress as the instance's SecondaryStatus message, at most once a second.
fn pull_progress<'a>(reporter: &'a Reporter<'_>) -> impl FnMut(u64, u64) + Send + 'a {
    let mut last: Option<std::time::Instant> = None;
    move |done, total| {
        if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) && done < total {
            return;
        }
        last = Some(std::time::Instant::now());
        let message = if total == 0 {
            "Downloading the training image".to_string()
        } else {
            format!("Downloading the training image ({} of {})", megabytes(done), megabytes(total))
        };
        reporter.update(InstanceState::Downloading, &message, Vec::new());
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// A running container. Dropped: the task, the container and its snapshot are removed (in the
/// background), then the uid is given back.
pub(super) struct ContainerControl {
    containerd: Arc<Containerd>,
    id: String,
    /// runc's cgroup for the container (counted until the container is removed).
    cgroup: Option<CgroupSlot>,
    fifos: [PathBuf; 2],
    identity: Option<Identity>,
    /// Its image is not collected while the container exists.
    image: Option<Pinned>,
}

impl Control for ContainerControl {
    fn signal(&self, signal: i32) {
        let (containerd, id) = (self.containerd.clone(), self.id.clone());
        tokio::spawn(async move {
            if let Err(e) = containerd.kill(&id, signal, true).await {
                tracing::warn!(container = %id, error = %e, "signalling a container failed");
            }
        });
    }

    async fn kill_all(&self) -> bool {
        if let Err(e) = self.containerd.kill(&self.id, libc::SIGKILL, true).await {
            tracing::warn!(container = %self.id, error = %e, "killing a container failed");
        }
        // The signal is sent; the task's end is not awaited here.
        false
    }

    fn writable_layer(&self) -> Option<super::WritableLayer> {
        Some(super::WritableLayer { containerd: self.containerd.clone(), key: self.id.clone() })
    }

    fn oom_kills(&self) -> u64 {
        // runc's cgroup: v1's memory hierarchy, or the unified one (both count `oom_kill N`).
        let relative = self.cgroup.as_ref().map_or("", |c| c.path.trim_start_matches('/'));
        [
            Path::new("/sys/fs/cgroup/memory").join(relative).join("memory.oom_control"),
            Path::new("/sys/fs/cgroup").join(relative).join("memory.events"),
        ]
        .iter()
        .find_map(|file| std::fs::read_to_string(file).ok())
        .map_or(0, |text| crate::cgroup::count_oom_kills(&text))
    }
}

impl Drop for ContainerControl {
    fn drop(&mut self) {
        let (containerd, id) = (self.containerd.clone(), self.id.clone());
        let fifos = self.fifos.clone();
        // The uid goes back only once nothing of the container is left.
        let identity = self.identity.take();
        let image = self.image.take();
        let cgroup = self.cgroup.take();
        tokio::spawn(async move {
            containerd.remove(&id).await;
            for fifo in fifos {
                let _ = std::fs::remove_file(fifo);
            }
            drop(identity);
            drop(image);
            drop(cgroup);
        });
    }
}

/// The cgroups runc makes for this agent's containers, under a parent of the agent's own
/// (`trainyard-containers-<id>-<work root's hash>` at each hierarchy's root: the shims run outside
/// the agent's cgroup). The parent is removed when the agent's last container is, and at start;
/// never while a container is being created in it (the count and the removal share a lock).
pub struct ContainerCgroups {
    parent: String,
    live: std::sync::Mutex<usize>,
}

impl ContainerCgroups {
    /// `agent`: the agent's cgroup name (its id and the hash of its work root).
    pub fn new(agent: &str) -> ContainerCgroups {
        ContainerCgroups { parent: format!("trainyard-containers-{agent}"), live: std::sync::Mutex::new(0) }
    }

    /// The cgroup of container `id`, counted until the slot is dropped (once the container is gone).
    fn slot(self: &Arc<Self>, id: &str) -> CgroupSlot {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        CgroupSlot { cgroups: self.clone(), path: format!("/{}/{id}", self.parent) }
    }

    /// A container counted by `slot` is gone: the parent goes with the last one.
    fn removed(&self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.remove_parent_dirs();
        }
    }

    /// Removes the parent if no container of this agent needs it (an earlier run's are removed
    /// first, at start).
    pub fn remove_parent(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if *live == 0 {
            self.remove_parent_dirs();
        }
    }

    fn remove_parent_dirs(&self) {
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
        for hierarchy in hierarchies {
            // One still in use stays (rmdir of a cgroup with children fails).
            let _ = std::fs::remove_dir(hierarchy.join(&self.parent));
        }
    }
}

/// One container's cgroup (relative to each hierarchy's root).
struct CgroupSlot {
    cgroups: Arc<ContainerCgroups>,
    path: String,
}

impl Drop for CgroupSlot {
    fn drop(&mut self) {
        self.cgroups.removed();
    }
}

/// Everything the OCI runtime spec of an instance's container is made of.
struct RuntimeSpec<'a> {
    image: &'a Image,
    request: &'a trainyard_proto::model::api::CreateTrainingJobRequest,
    env: &'a BTreeMap<String, String>,
    hostname: String,
    work_dir: &'a Path,
    hosts: &'a Path,
    /// Its /etc/resolv.conf (None: the image's own).
    resolver: Option<&'a Path>,
    /// The instance's network namespace; None: the host's network.
    network: Option<&'a Path>,
    /// uid, then its groups (the first is its gid).
    user: (u32, Vec<u32>),
    memory_mib: u64,
    vcpus: u32,
    pids: u32,
    cgroup: &'a str,
    /// It may make user namespaces of its own (`--instance-user-namespaces`).
    user_namespaces: bool,
}

impl RuntimeSpec<'_> {
    /// SageMaker's command line: ContainerEntrypoint or the image's entrypoint, then
    /// ContainerArguments or `train`; an image without an entrypoint runs `train`.
    fn args(&self) -> Vec<String> {
        let algorithm = self.request.algorithm_specification.as_ref();
        let entrypoint = algorithm
            .and_then(|a| a.container_entrypoint.clone())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| self.image.entrypoint.clone());
        let arguments = algorithm
            .and_then(|a| a.container_arguments.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| vec!["train".to_string()]);
        entrypoint.into_iter().chain(arguments).collect()
    }

    fn build(&self) -> Value {
        // The image's environment, then the contract's and the job's, which win.
        let mut env: BTreeMap<String, String> = self
            .image
            .env
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("HOME".into(), if self.user.0 == 0 { "/root".into() } else { OPT_ML.into() });
        let (uid, groups) = &self.user;
        let gid = groups.first().copied().unwrap_or(*uid);
        let mut namespaces =
            vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
        if let Some(path) = self.network {
            namespaces.push(json!({"type": "network", "path": path}));
        }
        let bind = |source: &Path, destination: &str, options: &[&str]| json!({"destination": destination, "type": "bind", "source": source, "options": options});
        let mut resources = json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "pids": {"limit": self.pids},
        });
        if self.memory_mib > 0 {
            resources["memory"] = json!({"limit": self.memory_mib * 1024 * 1024});
        }
        if self.vcpus > 0 {
            resources["cpu"] = json!({"quota": i64::from(self.vcpus) * 100_000, "period": 100_000});
        }
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
            bind(self.work_dir, OPT_ML, &["rbind", "rw", "nosuid", "nodev"]),
            bind(self.hosts, "/etc/hosts", &["bind", "ro", "nosuid", "nodev", "noexec"]),
        ];
        if let Some(resolver) = self.resolver {
            mounts.push(bind(resolver, "/etc/resolv.conf", &["bind", "ro", "nosuid", "nodev", "noexec"]));
        }
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid, "additionalGids": groups},
                "args": self.args(),
                "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "cwd": if self.image.working_dir.is_empty() { "/" } else { self.image.working_dir.as_str() },
                // No privileges, whoever the user is.
                "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
                "noNewPrivileges": true,
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": self.hostname,
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": self.cgroup,
                "resources": resources,
                "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
                "seccomp": seccomp_profile(self.user_namespaces),
            },
        })
    }
}

/// What a container may not ask of the kernel; every other call is allowed (runc's and Docker's
/// defaults go further; these two are what our boundary needs):
/// - key management (`add_key`, `keyctl`, `request_key`: EPERM). The kernel's keyrings are not
///   namespaced, and it keeps a uid's user keyring after its last process ends: a uid is lent,
///   so the keys one holder left there would be the next one's (and a container sharing a uid
///   with a host program's instance would reach its keys).
/// - a user namespace of its own, unless the operator allows them (`unshare` or `clone` with
///   `CLONE_NEWUSER`: EPERM; host programs get the same rule from [`crate::seccomp`]). In one, an
///   unprivileged process holds every capability over what it creates (network namespaces and
///   their nftables, mounts): the kernel code most container escapes of recent years went
///   through. `clone3` passes its flags in memory a filter cannot read, so it answers ENOSYS and
///   the C library falls back to `clone`, as Docker's default profile has it.
///
/// The compatibility architectures are listed so that a 32-bit call is filtered too (not killed,
/// as an unlisted architecture is).
fn seccomp_profile(user_namespaces: bool) -> Value {
    let architectures: &[&str] = if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    };
    let new_user = libc::CLONE_NEWUSER as u64;
    let with_new_user = json!([{"index": 0, "value": new_user, "valueTwo": new_user, "op": "SCMP_CMP_MASKED_EQ"}]);
    let mut refused = vec![
        json!({"names": ["add_key", "keyctl", "request_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
    ];
    if !user_namespaces {
        refused.extend([
            json!({"names": ["unshare", "clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": with_new_user}),
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
        ]);
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures, "syscalls": refused})
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_proto::model::api;

    fn spec_for(entrypoint: &[&str], request: api::CreateTrainingJobRequest) -> Value {
        let image = Image {
            reference: "localhost/trainer:1".into(),
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/opt/conda/bin:/bin".into(), "SM_MODEL_DIR=/wrong".into()],
            working_dir: "/code".into(),
            ..Default::default()
        };
        let env = BTreeMap::from([("SM_MODEL_DIR".to_string(), "/opt/ml/model".to_string())]);
        RuntimeSpec {
            image: &image,
            request: &request,
            env: &env,
            hostname: "algo-2".into(),
            work_dir: Path::new("/var/lib/trainyard/jobs/j/algo-2"),
            hosts: Path::new("/var/lib/trainyard/jobs/j/algo-2/.hosts"),
            resolver: Some(Path::new("/var/lib/trainyard/jobs/j/algo-2/.resolv.conf")),
            network: Some(Path::new("/run/netns/ty-a-1")),
            user: (61184, vec![61184, 1001]),
            memory_mib: 8192,
            vcpus: 2,
            pids: 16384,
            cgroup: "/trainyard-containers-a-0123abcd/j.algo-2.1",
            user_namespaces: false,
        }
        .build()
    }

    #[test]
    fn an_operator_may_allow_user_namespaces_and_keys_stay_refused() {
        let profile = seccomp_profile(true);
        let refused: Vec<&Value> = profile["syscalls"].as_array().into_iter().flatten().map(|r| &r["names"]).collect();
        assert_eq!(refused, [&json!(["add_key", "keyctl", "request_key"])]);
        assert_eq!(seccomp_profile(false)["syscalls"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn the_container_runs_as_sagemaker_runs_it_with_nothing_extra() {
        let s = spec_for(&["python", "/code/entry.py"], api::CreateTrainingJobRequest::default());
        assert_eq!(s["process"]["args"], json!(["python", "/code/entry.py", "train"]));
        assert_eq!(s["process"]["user"], json!({"uid": 61184, "gid": 61184, "additionalGids": [61184, 1001]}));
        // Key management fails (the kernel's keyrings are not namespaced); everything else runs.
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["names"], json!(["add_key", "keyctl", "request_key"]));
        assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["errnoRet"], libc::EPERM);
        // No user namespace of its own: unshare and clone refuse CLONE_NEWUSER, clone3 is absent.
        let user_ns = &s["linux"]["seccomp"]["syscalls"][1];
        assert_eq!(user_ns["names"], json!(["unshare", "clone"]));
        assert_eq!(user_ns["args"][0]["value"], json!(0x1000_0000));
        assert_eq!(user_ns["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(s["linux"]["seccomp"]["syscalls"][2]["errnoRet"], libc::ENOSYS);
        assert_eq!(s["process"]["noNewPrivileges"], json!(true));
        assert_eq!(s["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(s["process"]["cwd"], json!("/code"));
        let env: Vec<&str> = s["process"]["env"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert!(env.contains(&"SM_MODEL_DIR=/opt/ml/model"), "the contract wins over the image: {env:?}");
        assert!(env.contains(&"PATH=/opt/conda/bin:/bin"), "the image's PATH stays: {env:?}");
        assert_eq!(s["hostname"], json!("algo-2"));
        let mounts = s["mounts"].as_array().expect("mounts");
        let opt_ml = mounts.iter().find(|m| m["destination"] == "/opt/ml").expect("/opt/ml");
        assert_eq!(opt_ml["source"], json!("/var/lib/trainyard/jobs/j/algo-2"));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts" && m["options"][1] == "ro"));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/resolv.conf"
            && m["source"] == "/var/lib/trainyard/jobs/j/algo-2/.resolv.conf"
            && m["options"][1] == "ro"));
        assert_eq!(s["linux"]["namespaces"][4], json!({"type": "network", "path": "/run/netns/ty-a-1"}));
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], json!(8192u64 * 1024 * 1024));
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], json!(200_000));
        assert_eq!(s["linux"]["resources"]["pids"]["limit"], json!(16384));
    }

    #[test]
    fn no_entrypoint_runs_train_and_the_job_may_replace_both() {
        assert_eq!(spec_for(&[], api::CreateTrainingJobRequest::default())["process"]["args"], json!(["train"]));
        let request = api::CreateTrainingJobRequest {
            algorithm_specification: Some(api::AlgorithmSpecification {
                container_entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
                container_arguments: Some(vec!["echo hi".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(spec_for(&["python"], request)["process"]["args"], json!(["/bin/sh", "-c", "echo hi"]));
    }
}
