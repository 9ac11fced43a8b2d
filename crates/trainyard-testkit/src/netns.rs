//! Simulated hosts on one machine: a LAN is a network namespace holding a bridge; each host is a
//! namespace with one veth into it; the test's own (root) namespace joins too, as the LAN's
//! gateway, so the coordinator and the test's servers can run there. Needs root and `ip`.
//! Everything is removed on drop.
//!
//! Addresses: the LAN is `10.77.<n>.0/24` (gateway `.1`, hosts from `.2`); `outside` is a
//! `198.18.<n>.1` address on the gateway that stands for the internet. `n` (1–250) is taken with
//! a lock file held for the LAN's life, so that LANs of tests running side by side in processes
//! of their own never share a subnet or a name.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the LANs' numbers are taken: a lock file for each.
const LAN_NUMBERS: &str = "/run/trainyard-test-lans";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Whether `program` is found on the PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether this machine can simulate hosts (root, iproute2).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

pub struct Lan {
    tag: String,
    /// Holds the LAN's number (released last, after everything named by it is gone).
    _number: std::fs::File,
    pub namespace: String,
    /// The root namespace's address on the LAN.
    pub gateway: Ipv4Addr,
    /// An address outside the LAN (on the gateway) that hosts route to: "the internet".
    pub outside: Ipv4Addr,
    gateway_link: String,
    hosts: Vec<String>,
}

pub struct Host {
    pub namespace: String,
    pub address: Ipv4Addr,
}

impl Lan {
    pub fn new() -> Lan {
        let (subnet, number) = take_lan_number();
        let tag = subnet.to_string();
        let namespace = format!("tylan-{tag}");
        let gateway_link = format!("tyg{tag}");
        // Whatever a killed test left under this number (no live one holds it) goes first.
        remove_namespaces(|name| name == namespace || name.starts_with(&format!("tyhost-{tag}-")));
        let _ = Command::new("ip").args(["link", "del", &gateway_link]).output();
        ip(&["netns", "add", &namespace]);
        ip(&["-n", &namespace, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &namespace, "link", "set", "br0", "up"]);
        let lan = Lan {
            tag,
            _number: number,
            namespace,
            gateway: Ipv4Addr::new(10, 77, subnet, 1),
            outside: Ipv4Addr::new(198, 18, subnet, 1),
            gateway_link,
            hosts: Vec::new(),
        };
        lan.plug(&lan.gateway_link, 0);
        ip(&["addr", "add", &format!("{}/24", lan.gateway), "dev", &lan.gateway_link]);
        ip(&["addr", "add", &format!("{}/32", lan.outside), "dev", &lan.gateway_link]);
        ip(&["link", "set", &lan.gateway_link, "up"]);
        lan
    }

    /// A veth from the root namespace into the bridge; its root end is `name`.
    fn plug(&self, name: &str, index: usize) {
        let port = format!("p{index}");
        ip(&["link", "add", name, "type", "veth", "peer", "name", &port, "netns", &self.namespace]);
        ip(&["-n", &self.namespace, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.namespace, "link", "set", &port, "up"]);
    }

    /// A new host on the LAN, with a default route through the gateway.
    pub fn add_host(&mut self) -> Host {
        let index = self.hosts.len() + 1;
        let namespace = format!("tyhost-{}-{index}", self.tag);
        ip(&["netns", "add", &namespace]);
        let link = format!("tyh{}-{index}", self.tag);
        self.plug(&link, index);
        ip(&["link", "set", &link, "netns", &namespace]);
        let octets = self.gateway.octets();
        let address = Ipv4Addr::new(octets[0], octets[1], octets[2], 1 + index as u8);
        ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        ip(&["-n", &namespace, "link", "set", &link, "name", "eth0"]);
        ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
        ip(&["-n", &namespace, "route", "add", "default", "via", &self.gateway.to_string()]);
        self.hosts.push(namespace.clone());
        Host { namespace, address }
    }

    /// Records every frame crossing the LAN's bridge into `file` (tcpdump) until the capture is
    /// dropped or stopped.
    pub fn capture(&self, file: &Path) -> Capture {
        assert!(on_path("tcpdump"), "tcpdump is not installed (scripts/setup installs the tcpdump package)");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "tcpdump", "--immediate-mode", "-i", "br0", "-U", "-s", "0", "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ip netns exec tcpdump");
        // tcpdump writes the file header once it listens.
        let ready = crate::wait_until(Duration::from_secs(10), || file.metadata().is_ok_and(|m| m.len() > 0));
        if !ready {
            let _ = child.kill();
            let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            panic!("tcpdump did not start capturing within 10 s: {}", out.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
        Capture { child: Some(child) }
    }
}

/// A LAN number (1–250) no other LAN on this host holds, and the lock that holds it.
fn take_lan_number() -> (u8, std::fs::File) {
    std::fs::create_dir_all(LAN_NUMBERS).expect("creating the LAN numbers' dir");
    let start = std::process::id() % 250;
    for i in 0..250 {
        let n = ((start + i) % 250 + 1) as u8;
        let path = Path::new(LAN_NUMBERS).join(n.to_string());
        let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path).expect("lock file");
        if file.try_lock().is_ok() {
            return (n, file);
        }
    }
    panic!("all 250 simulated LAN numbers are in use on this host");
}

/// Deletes the network namespaces whose names `matches`.
fn remove_namespaces(matches: impl Fn(&str) -> bool) {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("running ip");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() && matches(name) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", host]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.gateway_link]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).output();
    }
}

impl Host {
    /// Cuts this host off from `peer` (nftables inside the host: every packet to or from it is
    /// dropped, silently, as a broken link would) until [`Host::heal`].
    pub fn partition_from(&self, peer: Ipv4Addr) {
        let rules = format!(
            "table inet typartition {{\n\
               chain out {{ type filter hook output priority 0; policy accept; ip daddr {peer} drop; }}\n\
               chain in {{ type filter hook input priority 0; policy accept; ip saddr {peer} drop; }}\n\
             }}\n"
        );
        assert!(on_path("nft"), "nft is not installed (scripts/setup installs the nftables package)");
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        use std::io::Write;
        nft.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("write rules");
        let out = nft.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft refused the partition rules: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Ends a [`Host::partition_from`].
    pub fn heal(&self) {
        let out = self.command("nft").args(["delete", "table", "inet", "typartition"]).output().expect("nft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A command that runs inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).arg(program);
        cmd
    }
}

pub struct Capture {
    child: Option<Child>,
}

impl Capture {
    /// Stops tcpdump and waits until it has flushed the file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Frames still on their way to tcpdump are written before it is told to stop.
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `needle` occurs in the bytes of `file` (a capture: packets are stored as they were).
pub fn file_contains(file: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(file).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Removes the namespaces that agents under `agents_dir` (one work root per agent)
/// recorded and could not remove themselves because the test killed them. Agents record each one
/// in `<work-root>/network/<namespace>` before creating it.
pub fn remove_agents_leftovers(agents_dir: &Path) {
    let Ok(agents) = std::fs::read_dir(agents_dir) else { return };
    for agent in agents.flatten() {
        let Ok(records) = std::fs::read_dir(agent.path().join("network")) else { continue };
        for record in records.flatten() {
            let namespace = record.file_name().to_string_lossy().to_string();
            // Deleting the namespace deletes its veth pair too. Veth names are per host namespace,
            // so a name alone could be another test's: they are left alone.
            if Path::new("/run/netns").join(&namespace).exists() {
                let _ = Command::new("ip").args(["netns", "del", &namespace]).output();
            }
            let _ = std::fs::remove_file(record.path());
        }
    }
}

/// Removes the cgroups that agents under `agents_dir` (one work root per agent) left because the
/// test killed them: each agent records its cgroup's name in `<work-root>/cgroup`. Processes still
/// in them are killed first.
pub fn remove_agents_cgroups(agents_dir: &Path) {
    let Ok(agents) = std::fs::read_dir(agents_dir) else { return };
    let names: Vec<String> = agents
        .flatten()
        .filter_map(|a| std::fs::read_to_string(a.path().join("cgroup")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("trainyard-"))
        // Its containers' cgroups have a parent of their own at each hierarchy's root.
        .flat_map(|n| [n.replacen("trainyard-", "trainyard-containers-", 1), n])
        .collect();
    if names.is_empty() {
        return;
    }
    let mut found = Vec::new();
    find_dirs(Path::new("/sys/fs/cgroup"), 0, &names, &mut found);
    for dir in found {
        remove_cgroup_tree(&dir);
    }
}

fn find_dirs(dir: &Path, depth: usize, names: &[String], out: &mut Vec<std::path::PathBuf>) {
    if depth > 4 {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if names.iter().any(|n| entry.file_name().to_string_lossy() == *n) {
            out.push(entry.path());
        } else {
            find_dirs(&entry.path(), depth + 1, names, out);
        }
    }
}

/// Kills what is left in a cgroup and its children, then removes them, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process of a killed agent's cgroup.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}
