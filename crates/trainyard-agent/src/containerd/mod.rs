//! The agent's containerd client: containers and their tasks here, images in `images`, all in a containerd namespace of the agent's own (default `trainyard`; Docker's `moby` and
//! Kubernetes' `k8s.io` are never touched). Every container the agent creates carries the label
//! `trainyard.agent=<agent id>`, which is how a restarted agent finds what it left behind.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, UsageRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, KillRequest,
    ListContainersRequest, StartRequest, WaitRequest, containers_client::ContainersClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::Mount;
use sha2::{Digest, Sha256};

mod images;
pub use images::{
    BYTES_LABEL, Blob, Image, ImageConfig, ImageRecord, LAST_USED_LABEL, Lease, MAX_METADATA_BYTES, Manifest,
    WriteFailure,
};

pub(crate) const SNAPSHOTTER: &str = "overlayfs";
const RUNTIME: &str = "io.containerd.runc.v2";
/// The label that says which agent made a container.
pub const AGENT_LABEL: &str = "trainyard.agent";

pub struct Containerd {
    channel: Channel,
    namespace: String,
    /// "containerd 1.6.20": what `trainyard agents list` shows.
    pub version: String,
}

pub(crate) fn rpc(what: &str) -> impl Fn(containerd_client::tonic::Status) -> String + '_ {
    move |status| format!("containerd {what}: {}", status.message())
}

impl Containerd {
    /// Connects and asks for containerd's version (a socket nobody answers on is no runtime).
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, String> {
        if !socket.exists() {
            return Err(format!("no containerd socket at {}", socket.display()));
        }
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| format!("connecting to containerd at {}: {e}", socket.display()))?;
        let version = VersionClient::new(channel.clone()).version(()).await.map_err(rpc("version"))?.into_inner();
        Ok(Containerd { channel, namespace: namespace.to_string(), version: format!("containerd {}", version.version) })
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(namespace) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", namespace);
        }
        request
    }

    /// Creates container `id` from `image` with the OCI runtime `spec`; returns its root file
    /// system's mounts (a fresh writable snapshot on top of the image's).
    pub async fn create(
        &self,
        id: &str,
        image: &Image,
        spec: &serde_json::Value,
        agent: &str,
    ) -> Result<Vec<Mount>, String> {
        // The container's record first: it names the snapshot (not made yet), which keeps the
        // snapshot from the collector from the moment it exists (no lease to write and delete).
        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([(AGENT_LABEL.to_string(), agent.to_string())]),
            image: image.reference.clone(),
            runtime: Some(Runtime { name: RUNTIME.into(), options: None }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(spec).map_err(|e| e.to_string())?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        let create = self.request(CreateContainerRequest { container: Some(container) });
        ContainersClient::new(self.channel.clone()).create(create).await.map_err(rpc("container"))?;
        let prepare = self.request(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_string(),
            parent: image.chain_id.clone(),
            ..Default::default()
        });
        match SnapshotsClient::new(self.channel.clone()).prepare(prepare).await {
            Ok(prepared) => Ok(prepared.into_inner().mounts),
            Err(status) => {
                self.remove(id).await;
                Err(rpc("snapshot")(status))
            }
        }
    }

    /// Creates and starts container `id`'s task, its output going to the two FIFOs.
    pub async fn start(&self, id: &str, rootfs: Vec<Mount>, stdout: &Path, stderr: &Path) -> Result<(), String> {
        let create = self.request(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            ..Default::default()
        });
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks.create(create).await.map_err(rpc("task"))?;
        tasks
            .start(self.request(StartRequest { container_id: id.to_string(), ..Default::default() }))
            .await
            .map_err(rpc("start"))?;
        Ok(())
    }

    /// Waits for the task's init to exit; its exit status.
    pub async fn wait(&self, id: &str) -> Result<u32, String> {
        let request = self.request(WaitRequest { container_id: id.to_string(), ..Default::default() });
        let response = TasksClient::new(self.channel.clone()).wait(request).await.map_err(rpc("wait"))?;
        Ok(response.into_inner().exit_status)
    }

    /// Signals every process of the task (`all`), or its init.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), String> {
        let request = self.request(KillRequest {
            container_id: id.to_string(),
            signal: signal as u32,
            all,
            ..Default::default()
        });
        match TasksClient::new(self.channel.clone()).kill(request).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(rpc("kill")(status)),
        }
    }

    /// What snapshot `key` (a container's writable layer) holds, in bytes, as its snapshotter
    /// counts it (overlayfs: the blocks of its upper dir).
    pub async fn snapshot_usage(&self, key: &str) -> Result<u64, String> {
        let request = UsageRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        let usage = SnapshotsClient::new(self.channel.clone())
            .usage(self.request(request))
            .await
            .map_err(rpc("snapshot usage"))?
            .into_inner();
        Ok(u64::try_from(usage.size).unwrap_or(0))
    }

    /// Removes the task, the container and its snapshot; what is already gone is no error.
    pub async fn remove(&self, id: &str) {
        // A running task cannot be deleted: killed, then waited for.
        if self.kill(id, libc::SIGKILL, true).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.wait(id)).await;
        }
        let delete = self.request(DeleteTaskRequest { container_id: id.to_string() });
        if let Err(status) = TasksClient::new(self.channel.clone()).delete(delete).await
            && status.code() != Code::NotFound
        {
            tracing::warn!(container = id, error = %status.message(), "deleting a task failed");
        }
        let delete = self.request(DeleteContainerRequest { id: id.to_string() });
        if let Err(status) = ContainersClient::new(self.channel.clone()).delete(delete).await
            && status.code() != Code::NotFound
        {
            tracing::warn!(container = id, error = %status.message(), "deleting a container failed");
        }
        self.remove_snapshot(id).await;
    }

    /// The containers `agent` made (in this namespace).
    pub async fn containers_of(&self, agent: &str) -> Result<Vec<String>, String> {
        let filter = format!("labels.\"{AGENT_LABEL}\"=={agent}");
        let request = self.request(ListContainersRequest { filters: vec![filter] });
        let listed = ContainersClient::new(self.channel.clone()).list(request).await.map_err(rpc("list"))?;
        Ok(listed.into_inner().containers.into_iter().map(|c| c.id).collect())
    }
}

/// The chain id of layers with these diff ids: the id of the snapshot they make, as containerd
/// names committed snapshots (`chain(n) = sha256(chain(n-1) + " " + diff(n))`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for diff in ids {
        chain =
            format!("sha256:{}", trainyard_model::hex::encode(&Sha256::digest(format!("{chain} {diff}").as_bytes())));
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_image_runs_as_root_unless_its_config_names_another_user() {
        let image = |user: &str| super::Image { user: user.to_string(), ..Default::default() };
        for root in ["", "root", "0", "root:root", "0:1000"] {
            assert!(image(root).runs_as_root(), "{root:?}");
        }
        for other in ["1000", "trainer", "1000:0", "nobody:nogroup"] {
            assert!(!image(other).runs_as_root(), "{other:?}");
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let diffs: Vec<String> = ["sha256:aaa", "sha256:bbb"].map(String::from).to_vec();
        assert_eq!(super::chain_id(&diffs[..1]), Some("sha256:aaa".to_string()));
        // sha256("sha256:aaa sha256:bbb")
        let expected = format!(
            "sha256:{}",
            trainyard_model::hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(b"sha256:aaa sha256:bbb"))
        );
        assert_eq!(super::chain_id(&diffs), Some(expected));
        assert_eq!(super::chain_id(&[]), None);
    }
}
