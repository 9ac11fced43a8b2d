//! The host's share of the nftables rules ([`plan::host_ruleset`]): one table for every agent on
//! the host (two simulated hosts on one machine share it), so the first agent to start installs it
//! and the last to stop removes it.
//!
//! Who is still running is told by a registry directory: each agent holds an exclusive lock on its
//! own entry for as long as it runs, so an entry nobody locks was left by an agent that died (the
//! kernel drops a dead process's locks). Joining and leaving take the registry's lock, so that an
//! agent starting while the last one stops either finds the table removed and installs it again,
//! or keeps it.

use std::fs::File;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use super::{apply_rules, plan};

/// Where agents on this host register while they use the host's rules.
pub const REGISTRY: &str = "/run/trainyard/host-network";

/// This agent's place among the host's users of the host rules; [`HostRules::leave`] at stop.
pub struct HostRules {
    registry: PathBuf,
    entry: PathBuf,
    /// Locked while this agent runs (the lock is the entry's meaning; the file's name only finds it).
    _held: File,
    /// The network namespace that stands for the host (`None`: the host's own; tests use another).
    namespace: Option<String>,
}

impl HostRules {
    /// Registers this agent and installs (or refreshes) the host's rules.
    pub async fn join(registry: &Path, namespace: Option<&str>) -> Result<HostRules, String> {
        let registry = registry.to_path_buf();
        let namespace = namespace.map(str::to_string);
        let (registry_lock, host) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&registry).map_err(|e| format!("creating {}: {e}", registry.display()))?;
            let registry_lock = lock_registry(&registry)?;
            // Entries of agents that died (killed, not stopped) go now, not only when the last
            // agent leaves: on a host whose agents are never all stopped at once they would pile up.
            let running = live_entries(&registry);
            debug!(running, "other agents on this host use its nftables rules");
            let entry = registry.join(format!("{}-{}", std::process::id(), rand::random::<u32>()));
            let held = open_entry(&entry)?;
            held.try_lock().map_err(|e| format!("locking {}: {e}", entry.display()))?;
            Ok::<_, String>((registry_lock, HostRules { registry, entry, _held: held, namespace }))
        })
        .await
        .map_err(|e| e.to_string())??;
        let installed = apply_rules(host.namespace.as_deref(), plan::host_ruleset()).await;
        drop(registry_lock);
        installed.map(|()| host)
    }

    /// Unregisters this agent; the last one removes the host's rules. Whether it did.
    pub async fn leave(self) -> bool {
        let HostRules { registry, entry, _held: held, namespace } = self;
        let locked = tokio::task::spawn_blocking(move || {
            let registry_lock = lock_registry(&registry)?;
            let _ = std::fs::remove_file(&entry);
            drop(held);
            Ok::<_, String>((registry_lock, live_entries(&registry)))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|locked| locked);
        let (registry_lock, others) = match locked {
            Ok(locked) => locked,
            Err(e) => {
                info!(error = %e, "the host's nftables rules are left in place");
                return false;
            }
        };
        if others > 0 {
            debug!(others, "other agents on this host use its nftables rules: kept");
            return false;
        }
        let removed = apply_rules(namespace.as_deref(), plan::host_ruleset_removal()).await;
        drop(registry_lock);
        match removed {
            Ok(()) => {
                debug!("the last agent on this host removed its nftables rules");
                true
            }
            Err(e) => {
                info!(error = %e, "could not remove the host's nftables rules");
                false
            }
        }
    }
}

/// The registry's own lock, held while an agent joins or leaves.
fn lock_registry(registry: &Path) -> Result<File, String> {
    let path = registry.join(".lock");
    let file = open_entry(&path)?;
    file.lock().map_err(|e| format!("locking {}: {e}", path.display()))?;
    Ok(file)
}

fn open_entry(path: &Path) -> Result<File, String> {
    crate::lock_files::open(path).map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Entries whose agent still runs; entries of agents that died are removed on the way.
fn live_entries(registry: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(registry) else { return 0 };
    let mut live = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == ".lock" {
            continue;
        }
        match open_entry(&path).map(|f| f.try_lock().is_ok()) {
            Ok(true) => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(false) => live += 1,
            Err(_) => live += 1, // unknown: keep the rules rather than cut someone off
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::HostRules;
    use crate::network::test_support::{TestNamespace, ip};

    /// In a namespace standing for the host: the table stays while any agent holds on, an entry
    /// of an agent that died does not count, and the last agent out removes the table.
    #[tokio::test]
    async fn the_last_agent_on_a_host_to_stop_removes_the_hosts_rules() {
        let namespace = TestNamespace::new("host");
        let name = namespace.0.clone();
        let has_table = || ip(&["netns", "exec", &name, "nft", "list", "table", "ip", super::plan::TABLE]);
        let registry = tempfile::tempdir().expect("tempdir");

        let first = HostRules::join(registry.path(), Some(&name)).await.expect("first agent");
        assert!(has_table(), "installed by the first agent");
        let second = HostRules::join(registry.path(), Some(&name)).await.expect("second agent");
        // An agent that died: its entry exists, nobody locks it.
        std::fs::write(registry.path().join("1-1"), "").expect("dead entry");

        assert!(!first.leave().await, "another agent still runs");
        assert!(has_table(), "kept for the second agent");
        assert!(second.leave().await, "the last one removes the rules");
        assert!(!has_table(), "gone with the last agent");
        let left: Vec<_> = std::fs::read_dir(registry.path())
            .expect("registry")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".lock")
            .collect();
        assert!(left.is_empty(), "entries left: {left:?}");

        // A new agent after that installs the rules again, and sweeps the entry of one that died.
        std::fs::write(registry.path().join("2-2"), "").expect("dead entry");
        let again = HostRules::join(registry.path(), Some(&name)).await.expect("next agent");
        assert!(has_table());
        assert!(!registry.path().join("2-2").exists(), "a dead agent's entry is swept when another joins");
        assert!(again.leave().await);
    }
}
