//! Instance networking: a network namespace per instance, a veth pair to the host, nftables rules
//! inside (see [`plan`]), and the peer forwarder ([`forwarder`]) that carries a distributed job's
//! traffic between agents. Needs root, `ip` (iproute2) and `nft` (nftables); an agent without them
//! runs instances in the host's network and says so at registration, and the coordinator never
//! gives it a job that asks for isolation.
//!
//! Every namespace and veth the agent creates is recorded under `<work_root>/network/` before it
//! exists, so an agent that crashed removes what it left behind when it starts again.

pub mod forwarder;
pub mod host;
mod peer_tls;
pub mod plan;
pub mod resolver;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::process::Command;
use tracing::{debug, info, warn};

use self::plan::{Egress, Net};

/// Where `ip netns` keeps named namespaces (on a mount of its own, which host programs' instances
/// detach: `runner::foreign_mounts`).
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// The agent's ability to give instances their own network.
pub struct Network {
    namespace_prefix: String,
    state_dir: PathBuf,
    next_slot: AtomicU32,
    /// Namespaces of ended instances, kept for the next ones: creating a namespace and, above all,
    /// removing one (which holds the kernel's RTNL lock while it waits) cost more than resetting.
    idle: std::sync::Mutex<Vec<InstanceNetwork>>,
    /// Ended instances' namespaces still being checked for reuse: a new instance waits for them
    /// rather than create one (a release takes a few milliseconds; a new namespace ten times that).
    releasing: AtomicUsize,
    released: tokio::sync::Notify,
    /// The warm-up's task, waited for at shutdown (so that nothing it creates outlives the agent).
    warming: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set at shutdown: the warm-up stops after the namespace it is making.
    closing: std::sync::atomic::AtomicBool,
    /// The host's rules, removed at shutdown by the last agent on the host to stop.
    host_rules: std::sync::Mutex<Option<host::HostRules>>,
}

/// How long a new instance waits for a namespace being released before it creates one.
const RELEASE_WAIT: Duration = Duration::from_millis(100);

/// Idle namespaces kept at most; more are removed.
pub const IDLE_NAMESPACES: usize = 4;

impl Network {
    /// Checks that this agent can create namespaces, veths and rules, and prepares the host
    /// (forwarding on, the masquerade rule). `Err` says why not, for operators and the coordinator.
    pub async fn detect(agent_id: &str, work_root: &Path) -> Result<Network, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the agent does not run as root, so it cannot create network namespaces".into());
        }
        for (program, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            let found = Command::new(program).arg("-V").output().await.is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("`{program}` is missing (install the {package} package)"));
            }
        }
        // Instances without isolation reach the outside through the host.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("cannot enable IPv4 forwarding: {e}"))?;
        let host_rules = host::HostRules::join(Path::new(host::REGISTRY), None).await?;
        let state_dir = work_root.join("network");
        std::fs::create_dir_all(&state_dir).map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
        let sanitized: String =
            agent_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(40).collect();
        let network = Network {
            namespace_prefix: format!("ty-{sanitized}-"),
            state_dir,
            next_slot: AtomicU32::new(rand::random::<u32>() % plan::SLOTS),
            idle: std::sync::Mutex::new(Vec::new()),
            releasing: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
            warming: std::sync::Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
            host_rules: std::sync::Mutex::new(Some(host_rules)),
        };
        network.remove_recorded().await;
        Ok(network)
    }

    /// Removes every namespace and veth on record: at start, those an earlier run left; at
    /// shutdown, those whose removal in the background had not finished.
    pub async fn remove_recorded(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear(); // on record too: removed below
        }
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else { return };
        let mut removed = 0;
        for entry in entries.flatten() {
            let namespace = entry.file_name().to_string_lossy().to_string();
            let veth = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if remove_with_record(&namespace, veth.trim(), &entry.path()).await {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "removed network namespaces on record (left by an earlier run, or not yet removed)");
        }
    }

    /// Namespaces made ready ahead of the first instances (for instance `algo-1` of a job without
    /// isolation, the most common kind): the first jobs start as fast as later ones. In the background.
    pub fn warm_up(self: &Arc<Self>, count: usize) {
        if count == 0 {
            return;
        }
        let network = self.clone();
        let task = tokio::spawn(async move {
            for _ in 0..count.min(IDLE_NAMESPACES) {
                if network.closing.load(Ordering::Acquire) {
                    return;
                }
                match network.create_fresh(1, &Egress::Open).await {
                    Ok(mut ready) => {
                        drop(ready.forwarder.take());
                        network.begin_release();
                        network.release(ready, true).await; // nothing ever ran in it
                    }
                    Err(e) => {
                        // Not a warning: instances create their own then, and report what fails.
                        // (A SIGTERM to the agent's process group at start-up ends `nft` too.)
                        info!(error = %e, "no network namespace made ready ahead of instances");
                        return;
                    }
                }
            }
            debug!(namespaces = count, "network namespaces ready ahead of instances");
        });
        if let Ok(mut warming) = self.warming.lock() {
            *warming = Some(task);
        }
    }

    /// At the agent's end: the warm-up stopped, then every namespace on record removed.
    pub async fn shut_down(&self) {
        let warming = self.warming.lock().ok().and_then(|mut w| w.take());
        self.closing.store(true, Ordering::Release);
        if let Some(task) = warming {
            // Not aborted: an `ip` it started would finish after the removal below.
            let _ = task.await;
        }
        self.remove_recorded().await;
        let host_rules = self.host_rules.lock().ok().and_then(|mut h| h.take());
        if let Some(host_rules) = host_rules {
            host_rules.leave().await;
        }
    }

    /// Creates the namespace of one instance, ready for its process: an idle one when there is
    /// (one already set up for this instance and egress first: then nothing needs changing), else
    /// a new one.
    pub async fn create(&self, own: u32, egress: &Egress) -> Result<InstanceNetwork, String> {
        let waiting_since = tokio::time::Instant::now();
        loop {
            // Registered before looking, so that a release finishing in between still wakes us.
            let released = self.released.notified();
            let reusable = self.idle.lock().ok().and_then(|mut idle| {
                let fitting = idle.iter().position(|n| n.fits(own, egress));
                match fitting {
                    Some(i) => Some(idle.swap_remove(i)),
                    None => idle.pop(),
                }
            });
            if let Some(mut network) = reusable {
                match network.reuse(own, egress).await {
                    Ok(listener) => {
                        network.forwarder = Some(listener);
                        return Ok(network);
                    }
                    Err(e) => {
                        warn!(namespace = %network.namespace, error = %e, "an idle namespace could not be reused; removing it");
                        network.destroy().await;
                        continue;
                    }
                }
            }
            let waited = waiting_since.elapsed();
            if self.releasing.load(Ordering::Acquire) == 0 || waited >= RELEASE_WAIT {
                break;
            }
            let _ = tokio::time::timeout(RELEASE_WAIT - waited, released).await;
        }
        self.create_fresh(own, egress).await
    }

    /// A new namespace and veth pair, configured for instance `own`.
    ///
    /// A slot is free when both its names are: the namespace's (machine-wide: another agent, in
    /// another host namespace as in the tests' simulated hosts, may hold it) and the host-side
    /// veth's (per host namespace: creating it is the lock among agents sharing a host). The veth's
    /// far end is created inside the namespace: moving a link between namespaces costs ~25 ms.
    async fn create_fresh(&self, own: u32, egress: &Egress) -> Result<InstanceNetwork, String> {
        let mut last = String::new();
        for _ in 0..64 {
            let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % plan::SLOTS;
            let veth = plan::veth_name(slot);
            let namespace = format!("{}{slot}", self.namespace_prefix);
            // Recorded before it exists, so that a crash between the two leaves nothing unknown.
            let record = self.state_dir.join(&namespace);
            if let Err(e) = std::fs::write(&record, &veth) {
                return Err(format!("recording {}: {e}", record.display()));
            }
            if let Err(e) = run_ip(&["netns", "add", &namespace], None).await {
                if e.contains("File exists") {
                    // Another agent's (the name is machine-wide): not ours to remove.
                    let _ = std::fs::remove_file(&record);
                    last = e;
                    continue;
                }
                // `ip` may have created it and then died (a SIGTERM to the agent's process group
                // at shutdown ends it too): what it created is ours.
                remove_with_record(&namespace, "", &record).await;
                return Err(e);
            }
            let link = ["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace];
            if let Err(e) = run_ip(&link, None).await {
                // On "File exists" the veth's name is another agent's: only the namespace goes.
                remove_with_record(&namespace, "", &record).await;
                if e.contains("File exists") {
                    last = e;
                    continue;
                }
                return Err(e);
            }
            let mut network = InstanceNetwork { namespace, veth, record, slot, forwarder: None, armed_for: None };
            return match network.configure(slot, own, egress).await {
                Ok(listener) => {
                    network.forwarder = Some(listener);
                    network.armed_for = Some((own, egress.clone()));
                    Ok(network)
                }
                Err(e) => {
                    network.destroy().await;
                    Err(e)
                }
            };
        }
        Err(format!("no free network slot on this host: {last}"))
    }

    /// Counts a namespace about to be released (before its instance's end is reported), so that
    /// the next instance waits for it instead of creating one.
    pub fn begin_release(&self) {
        self.releasing.fetch_add(1, Ordering::AcqRel);
    }

    /// After its instance (counted by [`Network::begin_release`] first): kept for the next one when
    /// nothing of the instance is left inside (no process; sockets die with their processes) and
    /// fewer than [`IDLE_NAMESPACES`] are idle; removed otherwise. `left_nothing`: the instance's
    /// cgroup, which held every process it started, was seen empty. Otherwise every process of
    /// the host is looked at, which costs in proportion to how many the host runs (a fifth of
    /// the agent's CPU per trial on a host of a few hundred).
    pub async fn release(&self, network: InstanceNetwork, left_nothing: bool) {
        let keep = match self.idle.lock() {
            Ok(idle) => idle.len() < IDLE_NAMESPACES,
            Err(_) => false,
        };
        let reusable = keep && (left_nothing || !occupied(&network.path())) && !has_connections(&network.path());
        if reusable && let Ok(mut idle) = self.idle.lock() {
            idle.push(network);
        } else {
            network.destroy().await;
        }
        self.releasing.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_waiters();
    }
}

/// Whether TCP connections of an ended instance linger in the namespace at `path` (TIME_WAIT and
/// the like, for a minute): the next instance there could not bind their ports. Only listeners
/// (the agent's forwarder) may be left.
fn has_connections(path: &Path) -> bool {
    // The namespace's own socket counts first: a few counters, where listing its connections walks
    // the host's whole TCP hash table (every namespace's connections share it), a millisecond or
    // more with thousands of TIME_WAITs on the host. Only when something is counted (the
    // forwarder's listener not closed yet, say) is the list read to tell listeners apart.
    if counts_no_tcp_sockets(path) {
        return false;
    }
    let listed = in_namespace(path, || {
        let mut text = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        text.push_str(&std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default());
        Ok(text)
    });
    let Ok(text) = listed else { return true };
    // `sl local_address rem_address st ...`: st 0A is LISTEN.
    text.lines().filter_map(|line| line.split_whitespace().nth(3)).any(|state| state != "st" && state != "0A")
}

/// Whether the namespace at `path` counts no TCP socket of its own ([`no_tcp_sockets`]); false
/// when its counters cannot be read.
fn counts_no_tcp_sockets(path: &Path) -> bool {
    let counted = in_namespace(path, || {
        let v4 = std::fs::read_to_string("/proc/thread-self/net/sockstat")?;
        let v6 = std::fs::read_to_string("/proc/thread-self/net/sockstat6").unwrap_or_default();
        Ok((v4, v6))
    });
    counted.is_ok_and(|(v4, v6)| no_tcp_sockets(&v4, &v6))
}

/// Whether a namespace's `sockstat` and `sockstat6` (`TCP: inuse N orphan N tw N ...`,
/// `TCP6: inuse N`) count no TCP socket of it: none open in any state (`inuse`, per namespace) and
/// none in TIME_WAIT (`tw`, per namespace for IPv4 and IPv6 alike). Anything unreadable counts.
fn no_tcp_sockets(sockstat: &str, sockstat6: &str) -> bool {
    let field = |text: &str, protocol: &str, name: &str| -> Option<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(protocol))?;
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == name {
                return words.next()?.parse().ok();
            }
        }
        None
    };
    field(sockstat, "TCP:", "inuse") == Some(0)
        && field(sockstat, "TCP:", "tw") == Some(0)
        && field(sockstat6, "TCP6:", "inuse").unwrap_or(0) == 0
}

/// Whether any process still lives in the network namespace at `path`.
fn occupied(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(namespace) = std::fs::metadata(path).map(|m| m.ino()) else { return true };
    let wanted = format!("net:[{namespace}]");
    let Ok(processes) = std::fs::read_dir("/proc") else { return true };
    processes
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .any(|p| std::fs::read_link(p.path().join("ns/net")).is_ok_and(|link| link.to_string_lossy() == wanted))
}

/// One instance's namespace.
#[derive(Debug)]
pub struct InstanceNetwork {
    pub namespace: String,
    veth: String,
    record: PathBuf,
    slot: u32,
    /// The forwarder's listener inside the namespace, taken by the forwarder.
    forwarder: Option<std::net::TcpListener>,
    /// The instance and egress its addresses and rules are set up for (None: unknown, e.g. a
    /// change failed halfway).
    armed_for: Option<(u32, Egress)>,
}

impl InstanceNetwork {
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.namespace)
    }

    /// Whether its addresses and rules are those of instance `own` with `egress` already.
    fn fits(&self, own: u32, egress: &Egress) -> bool {
        self.armed_for.as_ref().is_some_and(|(armed, armed_egress)| *armed == own && armed_egress == egress)
    }

    pub fn take_forwarder_listener(&mut self) -> Option<std::net::TcpListener> {
        self.forwarder.take()
    }

    /// A namespace an earlier instance used, for instance `own`: its own `algo-N` address on
    /// loopback and the rules replaced in one transaction, unless they already are what `own` and
    /// `egress` need (nothing in the namespace can change them: instances' processes hold no
    /// CAP_NET_ADMIN); a new forwarder listener.
    async fn reuse(&mut self, own: u32, egress: &Egress) -> Result<std::net::TcpListener, String> {
        if self.fits(own, egress) {
            let listener = self.listen().await?;
            debug!(namespace = %self.namespace, slot = self.slot, "idle instance network reused as it was");
            return Ok(listener);
        }
        self.armed_for = None;
        run_ip(
            &["-n", &self.namespace, "-batch", "-"],
            Some(&format!("addr flush dev eth0\n{}", addresses(self.slot, own))),
        )
        .await?;
        let listener = self.arm(own, egress).await?;
        self.armed_for = Some((own, egress.clone()));
        debug!(namespace = %self.namespace, slot = self.slot, ?egress, "idle instance network reused");
        Ok(listener)
    }

    /// The forwarder's listener inside the namespace, at [`plan::FORWARDER_PORT`]. The previous
    /// instance's listener may be a moment from closing (its task is being aborted): a few tries.
    async fn listen(&self) -> Result<std::net::TcpListener, String> {
        let mut tries = 0;
        loop {
            let bound =
                in_namespace(&self.path(), || std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, plan::FORWARDER_PORT)));
            match bound {
                Ok(listener) => return Ok(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(format!("opening the peer forwarder in {}: {e}", self.namespace)),
            }
        }
    }

    /// The last step for a fresh namespace and a reused one alike: the instance's rules
    /// (redirecting peer traffic to the forwarder) in one transaction, and the forwarder's listener.
    async fn arm(&self, own: u32, egress: &Egress) -> Result<std::net::TcpListener, String> {
        apply_rules(Some(&self.namespace), plan::instance_ruleset(own, egress)).await?;
        self.listen().await
    }

    /// Addresses both ends of the veth and loads the rules; returns the forwarder's listener.
    async fn configure(&self, slot: u32, own: u32, egress: &Egress) -> Result<std::net::TcpListener, String> {
        let (host_ip, _) = plan::slot_addresses(slot);
        // No IPv6 on either end (no link-local address is made): the instance's rules and the
        // host's are IPv4 ones, and over link-local IPv6 an instance would reach every service of
        // the host listening on `::`, isolated or not. The namespace's own `::1` stays.
        let host_side = format!(
            "addr add {host_ip}/30 dev {veth}\nlink set {veth} addrgenmode none\nlink set {veth} up\n",
            veth = self.veth
        );
        run_ip(&["-batch", "-"], Some(&host_side)).await?;
        let inside =
            format!("link set lo up\nlink set eth0 addrgenmode none\nlink set eth0 up\n{}", addresses(slot, own));
        run_ip(&["-n", &self.namespace, "-batch", "-"], Some(&inside)).await?;
        let listener = self.arm(own, egress).await?;
        debug!(namespace = %self.namespace, slot, ?egress, "instance network ready");
        Ok(listener)
    }

    /// Removes the namespace (its end of the veth, and so the whole pair, goes with it).
    pub async fn destroy(&self) {
        remove_with_record(&self.namespace, &self.veth, &self.record).await;
    }
}

/// `ip` commands addressing `eth0` inside an instance's namespace: its `algo-N` address first (what
/// frameworks told `SM_NETWORK_INTERFACE_NAME=eth0` find, bind and publish to their peers), then
/// the veth's own /30, which the default route leaves from.
fn addresses(slot: u32, own: u32) -> String {
    let (host_ip, ns_ip) = plan::slot_addresses(slot);
    format!(
        "addr add {peer}/32 dev eth0\naddr add {ns_ip}/30 dev eth0\nroute replace default via {host_ip} src {ns_ip}\n",
        peer = plan::peer_address(own)
    )
}

/// Removes a namespace of this agent's, then its record once it is gone: a namespace whose
/// removal failed stays on record, for the agent's shutdown or next start to remove. Whether it is
/// gone.
async fn remove_with_record(namespace: &str, veth: &str, record: &Path) -> bool {
    remove(namespace, veth).await;
    let gone = !Path::new(NETNS_DIR).join(namespace).exists();
    if gone {
        let _ = std::fs::remove_file(record);
    }
    gone
}

async fn remove(namespace: &str, veth: &str) {
    if Path::new(NETNS_DIR).join(namespace).exists() {
        // The kernel deletes the veth pair with the namespace (asynchronously): deleting the veth
        // ourselves as well would wait for a network-wide synchronisation, tens of milliseconds.
        if let Err(e) = run_ip(&["netns", "del", namespace], None).await {
            warn!(%namespace, error = %e, "could not remove a network namespace");
        }
    } else if !veth.is_empty() && Path::new("/sys/class/net").join(veth).exists() {
        let _ = run_ip(&["link", "del", veth], None).await;
    }
}

async fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut command = Command::new("ip");
    command.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    command.stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("running ip: {e}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes()).await.map_err(|e| format!("writing to ip: {e}"))?;
    }
    let output = child.wait_with_output().await.map_err(|e| format!("running ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Loads a ruleset with `nft`, in the host's namespace or in a named one. For a named one, `nft` is
/// started from a thread that has entered the namespace (a child inherits its namespaces from the
/// thread that forks it), which is cheaper than `ip netns exec`.
async fn apply_rules(namespace: Option<&str>, ruleset: nftables::schema::Nftables<'static>) -> Result<(), String> {
    let loaded = match namespace {
        None => {
            tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&ruleset).map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())?
        }
        Some(ns) => {
            let path = Path::new(NETNS_DIR).join(ns);
            tokio::task::spawn_blocking(move || {
                in_namespace(&path, move || Ok(nftables::helper::apply_ruleset(&ruleset).map_err(|e| e.to_string())))
                    .map_err(|e| e.to_string())?
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    loaded.map_err(|e| format!("loading nftables rules: {e}"))
}

/// Runs `f` on a short-lived thread that has entered the network namespace at `path`: sockets it
/// creates belong to that namespace for their whole life, whichever thread uses them later.
pub fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace file we hold open; it changes only this thread, which ends here.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// The address a connection redirected by nftables was headed for (`SO_ORIGINAL_DST`).
pub fn original_destination(stream: &tokio::net::TcpStream) -> std::io::Result<SocketAddrV4> {
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe a sockaddr_in we own, as the option expects.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut address as *mut libc::sockaddr_in).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)), u16::from_be(address.sin_port)))
}

/// The local address this host uses to reach `target` (where peers should reach this agent).
pub fn local_address_towards(target: &str) -> Option<std::net::IpAddr> {
    let address: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(target).ok()?.next()?;
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(address).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The networks a job's VpcConfig maps to on this agent; every subnet and security group must be
/// configured (`--vpc-network NAME=CIDR,...`).
pub fn vpc_egress(
    vpc: Option<&trainyard_proto::model::api::VpcConfig>,
    configured: &std::collections::BTreeMap<String, Vec<Net>>,
) -> Result<Option<Vec<Net>>, String> {
    let Some(vpc) = vpc else { return Ok(None) };
    let mut networks = Vec::new();
    let names = [("Subnets", vpc.subnets.clone()), ("SecurityGroupIds", vpc.security_group_ids.clone())];
    for (field, values) in names {
        for (i, name) in values.unwrap_or_default().iter().enumerate() {
            let nets = configured.get(name).ok_or_else(|| {
                format!("VpcConfig.{field}[{i}] '{name}' is not configured on this agent (--vpc-network {name}=CIDR)")
            })?;
            networks.extend(nets.iter().copied());
        }
    }
    Ok(Some(networks))
}

/// Named network namespaces for the unit tests that need a real one (as root, as CI runs them).
#[cfg(test)]
pub(crate) mod test_support {
    /// A namespace `ty-unit-<purpose>-<pid>`, removed when dropped.
    pub struct TestNamespace(pub String);

    impl TestNamespace {
        pub fn new(purpose: &str) -> TestNamespace {
            // SAFETY: geteuid has no preconditions.
            assert!(unsafe { libc::geteuid() } == 0, "this test needs root (as the suite runs on CI)");
            let name = format!("ty-unit-{purpose}-{}", std::process::id());
            assert!(ip(&["netns", "add", &name]), "ip netns add {name}");
            TestNamespace(name)
        }
    }

    impl Drop for TestNamespace {
        fn drop(&mut self) {
            ip(&["netns", "del", &self.0]);
        }
    }

    /// Runs `ip` with `args`, its output discarded: whether it succeeded.
    pub fn ip(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{TestNamespace, ip};
    use super::{counts_no_tcp_sockets, has_connections, in_namespace, no_tcp_sockets};

    const V6_NONE: &str = "TCP6: inuse 0\nUDP6: inuse 0\n";

    #[test]
    fn only_a_namespace_without_tcp_sockets_counts_as_quiet() {
        let quiet = "sockets: used 3\nTCP: inuse 0 orphan 0 tw 0 alloc 5 mem 23\nUDP: inuse 1 mem 0\n";
        assert!(no_tcp_sockets(quiet, V6_NONE));
        // A socket open in any state, or one in TIME_WAIT (orphan and alloc are the host's).
        let listener = "TCP: inuse 1 orphan 0 tw 0 alloc 5 mem 23\n";
        let time_wait = "TCP: inuse 0 orphan 7 tw 2 alloc 5 mem 23\n";
        assert!(!no_tcp_sockets(listener, V6_NONE));
        assert!(!no_tcp_sockets(time_wait, V6_NONE));
        assert!(!no_tcp_sockets(quiet, "TCP6: inuse 1\n"));
        // Without IPv6 there is no sockstat6; without a readable TCP line nothing is known.
        assert!(no_tcp_sockets(quiet, ""));
        assert!(!no_tcp_sockets("", V6_NONE));
        assert!(!no_tcp_sockets("TCP: inuse x orphan 0 tw 0\n", V6_NONE));
        assert!(!no_tcp_sockets("TCP: inuse 0 orphan 0\n", V6_NONE));
    }

    /// In a real namespace: nothing open is quiet; a listener is not (the list then says it is
    /// only a listener); a connection closed into TIME_WAIT is not, while the host's own
    /// connections never count.
    #[test]
    fn a_namespace_with_a_time_wait_is_not_taken_for_an_empty_one() {
        let namespace = TestNamespace::new("sockets");
        let name = &namespace.0;
        assert!(ip(&["-n", name, "link", "set", "lo", "up"]), "lo up");
        let path = std::path::Path::new(super::NETNS_DIR).join(name);
        let quiet = counts_no_tcp_sockets;
        // The host's own connections (this test's process has some, or TIME_WAITs) do not count.
        let _host_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("host listener");
        assert!(quiet(&path) && !has_connections(&path), "a new namespace has no sockets");

        let listener = in_namespace(&path, || std::net::TcpListener::bind("127.0.0.1:7000")).expect("listen");
        assert!(!quiet(&path), "a listener is counted");
        assert!(!has_connections(&path), "a listener alone is no connection");
        // The client closes first: its side goes to TIME_WAIT.
        let client = in_namespace(&path, || std::net::TcpStream::connect("127.0.0.1:7000")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(server);
        drop(listener);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!quiet(&path), "a TIME_WAIT is counted");
        assert!(has_connections(&path), "a TIME_WAIT is a connection that would hold its port");
    }
}
