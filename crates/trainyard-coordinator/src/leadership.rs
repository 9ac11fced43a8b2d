//! One leader among the coordinators that share a database. The lease lives in the store (an
//! epoch, a holder, an expiry on the database's clock; see `trainyard_store`): a coordinator that
//! does not hold it is a standby, which answers every gRPC call with UNAVAILABLE naming the leader
//! and tries to take the lease once a second. The leader renews it every third of its length and
//! steps down (the process exits, for its supervisor to restart it as a standby) the moment a
//! renewal says another has taken over, or when it could not renew in time. Whatever it would still
//! write after that is refused by the store's fencing.
//!
//! A data directory is served by one coordinator at a time (a lock on `<data-dir>/coordinator.lock`):
//! on SQLite that is what makes the lease uncontested.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trainyard_store::Store;

/// The lock held for the life of the process (dropping it releases the data directory).
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

/// Locks `data_dir` for this process, or says which process holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("coordinator.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another coordinator (pid {}) already serves the data directory {}: run one coordinator per data \
                 directory (coordinators sharing a PostgreSQL database each have their own)",
                holder.trim(),
                data_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(DataDirLock(file))
}

/// This coordinator's name as a lease holder: its host, its data directory and a random part kept
/// there. A restart of the same coordinator takes its own lease back at once; a copy of the data
/// directory on another host (or in another directory) is another holder.
pub fn holder_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("coordinator-id");
    let random = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
        _ => {
            let mut bytes = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("the system gave no randomness"))?;
            let text = trainyard_model::hex::encode(&bytes);
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            text
        }
    };
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    Ok(format!("{}:{}:{random}", crate::config::hostname(), dir.display()))
}

/// What this coordinator claims the lease as.
#[derive(Debug, Clone)]
pub struct Claim {
    pub holder: String,
    /// Where clients reach it once it leads.
    pub address: String,
    pub lease: Duration,
}

/// Who leads, as a standby tells its callers.
#[derive(Clone, Default)]
pub struct LeaderHint(Arc<RwLock<Option<String>>>);

impl LeaderHint {
    fn set(&self, address: Option<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = address;
    }

    fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Tries to take the lease until it succeeds (the epoch) or `cancel` fires (None). Meanwhile
/// `hint` names the leader for the standby's answers.
pub async fn campaign(
    store: &Arc<dyn Store>,
    claim: &Claim,
    hint: &LeaderHint,
    cancel: &CancellationToken,
) -> Option<i64> {
    let poll = (claim.lease / 6).max(Duration::from_millis(200));
    let mut said = None;
    loop {
        match store.acquire_leadership(&claim.holder, &claim.address, claim.lease).await {
            Ok(Some(epoch)) => return Some(epoch),
            Ok(None) => match store.leader().await {
                Ok(Some(leader)) => {
                    if said.as_ref() != Some(&leader.address) {
                        info!(leader = %leader.address, epoch = leader.epoch, "standing by: another coordinator leads");
                        said = Some(leader.address.clone());
                    }
                    hint.set(Some(leader.address));
                }
                Ok(None) => hint.set(None),
                Err(e) => warn!(error = %e, "standby: cannot read who leads"),
            },
            Err(e) => warn!(error = %e, "standby: cannot reach the store to take the lead"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Keeps the lease of `epoch`, renewing it every third of its length. Returns Ok when cancelled
/// (an orderly stop: the lease is released for a standby to take at once), and the reason when
/// this coordinator must step down: another took over, or no renewal succeeded for `patience`
/// (None: wait for the store however long; on SQLite nobody else can take over).
///
/// The store refuses an old leader's writes however late it notices, so `patience` is not what
/// keeps the data safe: it bounds how long agents stay connected to a leader cut off from the
/// database, which can place nothing, before it lets them go to the one that took over. It is a
/// few leases long so that a database restart does not cost a failover.
pub async fn hold(
    store: Arc<dyn Store>,
    epoch: i64,
    lease: Duration,
    patience: Option<Duration>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let period = lease / 3;
    // Renewed by the database no earlier than this: the lease runs at least until then + lease.
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Err(e) = store.release_leadership(epoch).await {
                    warn!(error = %e, "could not hand the lead over; standbys take it when the lease runs out");
                }
                return Ok(());
            }
            _ = tokio::time::sleep(period) => {}
        }
        let attempt = tokio::time::Instant::now();
        match tokio::time::timeout(period, store.renew_leadership(epoch, lease)).await {
            Ok(Ok(true)) => renewed_at = attempt,
            Ok(Ok(false)) => anyhow::bail!("another coordinator has taken the lead (this one's epoch was {epoch})"),
            Ok(Err(e)) => warn!(error = %e, "could not renew the leader's lease"),
            Err(_) => warn!(timeout_ms = period.as_millis() as u64, "renewing the leader's lease took too long"),
        }
        if let Some(patience) = patience
            && renewed_at.elapsed() >= patience
        {
            anyhow::bail!(
                "could not renew the leader's lease for {} ms (its length is {} ms): another coordinator may lead",
                renewed_at.elapsed().as_millis(),
                lease.as_millis()
            );
        }
    }
}

/// Answers every call of a standby: UNAVAILABLE, naming the leader (metadata
/// `trainyard-leader`) when one is known, so that clients go there.
#[derive(Clone)]
pub struct StandbyLayer(pub LeaderHint);

impl<S> tower::Layer<S> for StandbyLayer {
    type Service = StandbyService;

    fn layer(&self, _inner: S) -> Self::Service {
        StandbyService(self.0.clone())
    }
}

#[derive(Clone)]
pub struct StandbyService(LeaderHint);

impl<B> tower::Service<http::Request<B>> for StandbyService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<B>) -> Self::Future {
        let status = standby_answer(self.0.get());
        std::future::ready(Ok(status.into_http()))
    }
}

fn standby_answer(leader: Option<String>) -> tonic::Status {
    match leader {
        Some(address) => {
            let mut status =
                tonic::Status::unavailable(format!("this coordinator is a standby; the leader is at {address}"));
            if let Ok(value) = address.parse() {
                status.metadata_mut().insert(trainyard_proto::client::LEADER_HINT, value);
            }
            status
        }
        None => tonic::Status::unavailable("this coordinator is a standby and no coordinator leads yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_names_the_leader_for_clients_to_follow() {
        let answer = standby_answer(Some("10.0.0.2:50051".into()));
        assert_eq!(trainyard_proto::client::leader_hint(&answer).as_deref(), Some("10.0.0.2:50051"));
        assert!(answer.message().contains("standby"), "{}", answer.message());
        assert_eq!(trainyard_proto::client::leader_hint(&standby_answer(None)), None);
    }

    #[test]
    fn a_data_directory_serves_one_coordinator() {
        let dir = tempfile::tempdir().expect("dir");
        let held = lock_data_dir(dir.path()).expect("first");
        let refused = lock_data_dir(dir.path()).err().expect("second refused").to_string();
        assert!(refused.contains(&format!("pid {}", std::process::id())), "{refused}");
        drop(held);
        lock_data_dir(dir.path()).expect("free again");
        let id = holder_id(dir.path()).expect("id");
        assert_eq!(holder_id(dir.path()).expect("again"), id, "stable across restarts");
    }
}
