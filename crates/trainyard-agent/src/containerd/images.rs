//! Images in containerd's store: reading one (its config and unpacked snapshot), storing what a pull
//! fetched (content written under a lease, labelled so that containerd's garbage collector keeps
//! what an image needs and nothing else), unpacking layers into snapshots, and the image records
//! the agent's cache manages (when each was last used, how large it is).

use std::collections::{HashMap, HashSet};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteImageRequest,
    DeleteRequest as DeleteLeaseRequest, GetImageRequest, Info, InfoRequest, ListContainersRequest, ListImagesRequest,
    ReadContentRequest, Resource, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse, containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
};
use containerd_client::tonic::{Code, Request, Status, Streaming};
use containerd_client::types::Descriptor;
use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;

use super::{Containerd, SNAPSHOTTER, chain_id, rpc};

/// Manifests, indexes and image configs are small; anything larger is not one.
pub const MAX_METADATA_BYTES: usize = 4 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// A sink that counts what is written to it and refuses (`FileTooLarge`) past `limit` bytes.
struct BoundedCount {
    bytes: u64,
    limit: u64,
}

impl std::io::Write for BoundedCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len() as u64;
        if self.bytes > self.limit {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Blobs go to containerd in messages of this size (gRPC's limit is 4 MiB).
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// How long a write waits for another to let go of a blob's ingest (another pull downloading the
/// same layer holds it for as long as its download takes).
const INGEST_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// A blob's ingest, opened: the stream to write to and containerd's answers, and what it holds
/// already.
struct OpenIngest {
    tx: futures::channel::mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
    held: u64,
}
/// Image labels the agent's cache keeps: seconds since the epoch of the last use, and the bytes
/// the image takes (its blobs and its unpacked layers). Images without them (imported by an
/// operator) are never collected.
pub const LAST_USED_LABEL: &str = "trainyard.last-used";
pub const BYTES_LABEL: &str = "trainyard.bytes";

/// What an image says about how to run it (its config), and the snapshot its layers make.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub reference: String,
    /// Its Cmd is not kept: SageMaker replaces it with `train`.
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The committed snapshot of all its layers (the chain id of its diff ids).
    pub chain_id: String,
    /// When an instance last used it (seconds since the epoch; its record's label).
    pub last_used: Option<u64>,
    /// The user its config names (`USER` of its Dockerfile; empty: root, as Docker runs it).
    pub user: String,
    /// What its record points at (a manifest or an index): what its registry's tag is compared to.
    pub digest: String,
}

impl Image {
    /// Whether Docker would run it as root: its config names no user, or root.
    pub fn runs_as_root(&self) -> bool {
        matches!(self.user.split(':').next().unwrap_or_default().trim(), "" | "root" | "0")
    }
}

/// A blob as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Blob {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

impl Blob {
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// A manifest or an index (an index has `manifests`, a manifest `config` and `layers`).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Blob>,
    pub config: Option<Blob>,
    #[serde(default)]
    pub layers: Vec<Blob>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        !self.manifests.is_empty() || self.config.is_none()
    }

    /// The index entry this host runs (linux/amd64), or its first.
    pub fn this_platform(&self) -> Option<&Blob> {
        self.manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
            .or_else(|| self.manifests.first())
    }

    /// Labels that make containerd's collector keep what this manifest or index refers to.
    pub fn gc_labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::new();
        for (i, m) in self.manifests.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), m.digest.clone());
        }
        if let Some(config) = &self.config {
            labels.insert("containerd.io/gc.ref.content.config".into(), config.digest.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
        }
        labels
    }
}

#[derive(Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

/// An image record in the agent's namespace.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// Why a blob could not be written, and whether its download can go on where it stopped.
#[derive(Debug)]
pub struct WriteFailure {
    pub reason: String,
    /// The data stream failed (not containerd): the ingest holds this many bytes of the blob.
    pub resume_at: Option<u64>,
}

/// Content and snapshots made while a lease exists are kept until it is deleted, whatever the
/// collector thinks of them; a lease an agent did not delete (it died mid-pull) expires.
pub struct Lease(String);

impl Containerd {
    pub(super) fn leased<T>(&self, message: T, lease: &Lease) -> Request<T> {
        let mut request = self.request(message);
        if let Ok(id) = lease.0.parse() {
            request.metadata_mut().insert("containerd-lease", id);
        }
        request
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let request = self.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        let mut stream =
            ContentClient::new(self.channel.clone()).read(request).await.map_err(rpc("read"))?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend(chunk.map_err(rpc("read"))?.data);
            if bytes.len() > MAX_METADATA_BYTES {
                return Err(format!(
                    "{digest} is larger than {MAX_METADATA_BYTES} bytes: not an image manifest or config"
                ));
            }
        }
        Ok(bytes)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T, String> {
        serde_json::from_slice(&self.read_blob(digest).await?).map_err(|e| format!("ClientError: {digest}: {e}"))
    }

    /// The image `reference` (fully qualified) from containerd's store, if it is there and
    /// unpacked. `Err` is a FailureReason.
    pub async fn image(&self, reference: &str) -> Result<Option<Image>, String> {
        let request = self.request(GetImageRequest { name: reference.to_string() });
        let record = match ImagesClient::new(self.channel.clone()).get(request).await {
            Ok(response) => response.into_inner().image,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(rpc("image")(status)),
        };
        let Some((target, labels)) = record.and_then(|i| Some((i.target?, i.labels))) else { return Ok(None) };
        let mut manifest: Manifest = match self.json(&target.digest).await {
            Ok(manifest) => manifest,
            // The record outlived its content (collected): pulled again.
            Err(_) if !self.has_blob(&target.digest).await? => return Ok(None),
            Err(e) => return Err(e),
        };
        if manifest.is_index() {
            let chosen = manifest
                .this_platform()
                .ok_or_else(|| format!("ClientError: {reference} names an index without manifests"))?;
            manifest = self.json(&chosen.digest.clone()).await?;
        }
        let config = manifest.config.ok_or_else(|| format!("ClientError: {reference} has no image config"))?;
        let config: ImageConfig = self.json(&config.digest).await?;
        let chain_id =
            chain_id(&config.rootfs.diff_ids).ok_or_else(|| format!("ClientError: {reference} has no layers"))?;
        if !self.has_snapshot(&chain_id).await? {
            return Ok(None);
        }
        Ok(Some(Image {
            reference: reference.to_string(),
            entrypoint: config.config.entrypoint.unwrap_or_default(),
            env: config.config.env.unwrap_or_default(),
            working_dir: config.config.working_dir.unwrap_or_default(),
            chain_id,
            last_used: labels.get(LAST_USED_LABEL).and_then(|v| v.parse().ok()),
            user: config.config.user.unwrap_or_default(),
            digest: target.digest.clone(),
        }))
    }

    async fn has_snapshot(&self, key: &str) -> Result<bool, String> {
        let stat = self.request(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() });
        match SnapshotsClient::new(self.channel.clone()).stat(stat).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(rpc("snapshot")(status)),
        }
    }

    /// A lease that expires on its own after `expires` (a pull that outlives it loses nothing it
    /// has already recorded in an image).
    pub async fn lease(&self, expires: std::time::Duration) -> Result<Lease, String> {
        let until = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + expires);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), until.to_string())]);
        let request = self.request(CreateLeaseRequest { id: String::new(), labels });
        let created = LeasesClient::new(self.channel.clone()).create(request).await.map_err(rpc("lease"))?;
        let id = created.into_inner().lease.map(|l| l.id).ok_or("containerd lease: no id")?;
        Ok(Lease(id))
    }

    pub async fn end_lease(&self, lease: Lease) {
        let request = self.request(DeleteLeaseRequest { id: lease.0.clone(), sync: false });
        if let Err(status) = LeasesClient::new(self.channel.clone()).delete(request).await {
            tracing::warn!(lease = %lease.0, error = %status.message(), "deleting a lease failed (it expires)");
        }
    }

    pub async fn has_blob(&self, digest: &str) -> Result<bool, String> {
        match ContentClient::new(self.channel.clone()).info(self.request(InfoRequest { digest: digest.into() })).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(rpc("content")(status)),
        }
    }

    /// Keeps a blob already in the store while `lease` exists, and sets its labels.
    pub async fn hold_blob(&self, lease: &Lease, digest: &str, labels: HashMap<String, String>) -> Result<(), String> {
        let resource = Resource { id: digest.to_string(), r#type: "content".into() };
        let request = self.request(AddResourceRequest { id: lease.0.clone(), resource: Some(resource) });
        LeasesClient::new(self.channel.clone()).add_resource(request).await.map_err(rpc("lease"))?;
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = Info { digest: digest.to_string(), labels, ..Default::default() };
        let request = UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
        ContentClient::new(self.channel.clone()).update(self.request(request)).await.map_err(rpc("content"))?;
        Ok(())
    }

    /// Writes `blob` from `data`, which holds its bytes from `start` on, into the content store
    /// under `lease`; containerd checks its size and digest. `written` is told of every chunk. A
    /// blob another pull is writing right now is waited for. When `data` fails, what it delivered
    /// is kept in the ingest and the failure says where to go on from ([`WriteFailure::resume_at`]):
    /// the same lease's next write of the blob from there continues it.
    pub async fn write_blob<S, B>(
        &self,
        lease: &Lease,
        blob: &Blob,
        labels: HashMap<String, String>,
        data: S,
        start: u64,
        written: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), WriteFailure>
    where
        S: Stream<Item = Result<B, String>> + Send + Unpin,
        B: AsRef<[u8]>,
    {
        let store = |reason: String| WriteFailure { reason, resume_at: None };
        let message = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: format!("trainyard-{}", blob.digest),
            total: blob.size,
            expected: blob.digest.clone(),
            offset,
            data,
            labels: HashMap::new(),
        };
        // containerd lets one write at a time hold a blob's ingest, and refuses another at once
        // ("locked": Unavailable): another pull writing the same layer, or this pull's own write
        // that the network cut, whose lock containerd lets go only once it has seen that stream
        // end. Tried again until the holder is done (a blob it stored answers AlreadyExists).
        let waiting_since = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(20);
        let (mut tx, mut responses, held) = loop {
            match self.open_ingest(lease, message(WriteAction::Stat, 0, Vec::new())).await {
                Ok(None) => return Ok(()),
                Ok(Some(OpenIngest { tx, responses, held })) => break (tx, responses, held),
                Err(status)
                    if status.code() == Code::Unavailable
                        && status.message().contains("locked")
                        && waiting_since.elapsed() < INGEST_LOCK_PATIENCE =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(status) => return Err(store(rpc("write")(status))),
            }
        };
        if start != 0 && start != held {
            return Err(WriteFailure {
                reason: format!(
                    "the download of {} resumed at {start}, and containerd holds {held} bytes",
                    blob.digest
                ),
                resume_at: Some(held),
            });
        }
        let mut exchange = async |request: WriteContentRequest| -> Result<bool, String> {
            tx.send(request).await.map_err(|_| "containerd closed the write".to_string())?;
            match responses.message().await {
                Ok(Some(_)) => Ok(true),
                Ok(None) => Err("containerd closed the write".to_string()),
                Err(status) if status.code() == Code::AlreadyExists => Ok(false),
                Err(status) => Err(rpc("write")(status)),
            }
        };
        let mut data = data;
        let (mut offset, mut pending) = (start as i64, Vec::with_capacity(WRITE_CHUNK_BYTES));
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(reason) => {
                    // Keep what arrived: the download goes on from there.
                    let len = pending.len();
                    if len > 0 && exchange(message(WriteAction::Write, offset, pending)).await.unwrap_or(false) {
                        offset += len as i64;
                        written(len as u64);
                    }
                    return Err(WriteFailure { reason, resume_at: Some(offset as u64) });
                }
            };
            // A registry that sends more than the manifest declares is cut off here, before the
            // ingest grows past it (containerd would refuse it only at commit).
            if offset + (pending.len() + chunk.as_ref().len()) as i64 > blob.size {
                return Err(store(format!(
                    "ClientError: the registry sent more than the {} bytes the manifest declares for layer {}",
                    blob.size, blob.digest
                )));
            }
            pending.extend_from_slice(chunk.as_ref());
            if pending.len() >= WRITE_CHUNK_BYTES {
                let len = pending.len();
                if !exchange(message(WriteAction::Write, offset, std::mem::take(&mut pending))).await.map_err(store)? {
                    return Ok(());
                }
                offset += len as i64;
                written(len as u64);
            }
        }
        let len = pending.len();
        let mut commit = message(WriteAction::Commit, offset, pending);
        commit.labels = labels;
        exchange(commit).await.map_err(store)?;
        written(len as u64);
        Ok(())
    }

    /// Opens a blob's ingest with `stat` (its first message): containerd answers once this write
    /// holds the ingest's lock, saying how many bytes it holds already. None: the blob is stored.
    async fn open_ingest(&self, lease: &Lease, stat: WriteContentRequest) -> Result<Option<OpenIngest>, Status> {
        let (mut tx, rx) = futures::channel::mpsc::channel::<WriteContentRequest>(2);
        tx.send(stat).await.map_err(|e| Status::internal(e.to_string()))?;
        let mut responses = match ContentClient::new(self.channel.clone()).write(self.leased(rx, lease)).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::AlreadyExists => return Ok(None),
            Err(status) => return Err(status),
        };
        match responses.message().await {
            Ok(Some(stat)) => Ok(Some(OpenIngest { tx, responses, held: stat.offset.max(0) as u64 })),
            Ok(None) => Err(Status::internal("containerd closed the write")),
            Err(status) if status.code() == Code::AlreadyExists => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// How many bytes the layer `blob` in the content store decompresses to, reading it through;
    /// `Err` as soon as that passes `room`, naming the agent's bound `max_unpacked`. `None` for a
    /// compression this cannot read (zstd): such a layer is measured once unpacked.
    async fn uncompressed_size(
        &self,
        image: &str,
        blob: &Blob,
        room: u64,
        max_unpacked: u64,
    ) -> Result<Option<u64>, String> {
        let gzip = blob.media_type.ends_with("gzip");
        if !gzip && !blob.media_type.ends_with(".tar") {
            return Ok(None);
        }
        let request = self.request(ReadContentRequest { digest: blob.digest.clone(), offset: 0, size: 0 });
        let mut stream =
            ContentClient::new(self.channel.clone()).read(request).await.map_err(rpc("read"))?.into_inner();
        let failed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                format!(
                    "ClientError: {image} unpacks to more than {} MiB (at layer {}), more than this agent unpacks for an image (--max-image-unpacked-mib)",
                    max_unpacked / MIB,
                    blob.digest
                )
            } else {
                format!("ClientError: layer {} is not valid gzip: {e}", blob.digest)
            }
        };
        let counted = BoundedCount { bytes: 0, limit: room };
        if gzip {
            let mut decoder = flate2::write::MultiGzDecoder::new(counted);
            while let Some(chunk) = stream.next().await {
                std::io::Write::write_all(&mut decoder, &chunk.map_err(rpc("read"))?.data).map_err(failed)?;
            }
            Ok(Some(decoder.finish().map_err(failed)?.bytes))
        } else {
            let mut counted = counted;
            while let Some(chunk) = stream.next().await {
                std::io::Write::write_all(&mut counted, &chunk.map_err(rpc("read"))?.data).map_err(failed)?;
            }
            Ok(Some(counted.bytes))
        }
    }

    /// Unpacks `layers` of `image` (whose uncompressed digests are `diff_ids`) into committed snapshots named
    /// by their chain ids; layers already unpacked are skipped. The bytes unpacked: more than
    /// `max_unpacked` fails the pull (a small layer can decompress to fill a disk) — gzip and
    /// plain layers are measured before anything is written, zstd ones as they are applied.
    pub async fn unpack(
        &self,
        image: &str,
        lease: &Lease,
        layers: &[Blob],
        diff_ids: &[String],
        max_unpacked: u64,
    ) -> Result<u64, String> {
        if layers.len() != diff_ids.len() {
            return Err(format!(
                "ClientError: the image has {} layers and its config {} diff ids",
                layers.len(),
                diff_ids.len()
            ));
        }
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let (mut parent, mut unpacked) = (String::new(), 0u64);
        for (i, layer) in layers.iter().enumerate() {
            let chain = chain_id(&diff_ids[..=i]).unwrap_or_default();
            if self.has_snapshot(&chain).await? {
                parent = chain;
                continue;
            }
            let room = max_unpacked.saturating_sub(unpacked);
            self.uncompressed_size(image, layer, room, max_unpacked).await?;
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let key = format!("trainyard-extract-{}-{chain}", nanos.as_nanos());
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            let mounts = snapshots.prepare(self.leased(prepare, lease)).await.map_err(rpc("snapshot"))?.into_inner();
            let apply = ApplyRequest {
                diff: Some(layer.descriptor()),
                mounts: mounts.mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            let applied = DiffClient::new(self.channel.clone()).apply(self.leased(apply, lease)).await;
            let applied = match applied {
                Ok(response) => response.into_inner().applied.unwrap_or_default(),
                Err(status) => {
                    self.remove_snapshot(&key).await;
                    return Err(format!("ClientError: unpacking layer {}: {}", layer.digest, status.message()));
                }
            };
            if applied.digest != diff_ids[i] {
                self.remove_snapshot(&key).await;
                return Err(format!(
                    "ClientError: layer {} unpacks to {}, and the image config says {}",
                    layer.digest, applied.digest, diff_ids[i]
                ));
            }
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            match snapshots.commit(self.leased(commit, lease)).await {
                Ok(_) => {}
                // Another pull unpacked the same layer meanwhile.
                Err(status) if status.code() == Code::AlreadyExists => self.remove_snapshot(&key).await,
                Err(status) => {
                    self.remove_snapshot(&key).await;
                    return Err(rpc("commit")(status));
                }
            }
            unpacked += applied.size.max(0) as u64;
            if unpacked > max_unpacked {
                // A layer that could not be measured before (zstd) turned out too large.
                self.remove_snapshot(&chain).await;
                return Err(format!(
                    "ClientError: {image} unpacks to more than {} MiB (at layer {}), more than this agent unpacks for an image (--max-image-unpacked-mib)",
                    max_unpacked / MIB,
                    layer.digest
                ));
            }
            parent = chain;
        }
        Ok(unpacked)
    }

    pub(super) async fn remove_snapshot(&self, key: &str) {
        let remove = self.request(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() });
        if let Err(status) = SnapshotsClient::new(self.channel.clone()).remove(remove).await
            && status.code() != Code::NotFound
        {
            tracing::warn!(snapshot = key, error = %status.message(), "removing a snapshot failed");
        }
    }

    /// Records image `name` pointing at `target` (replacing an older record of the name).
    pub async fn put_image(&self, name: &str, target: &Blob, labels: HashMap<String, String>) -> Result<(), String> {
        let image = containerd_client::services::v1::Image {
            name: name.to_string(),
            labels,
            target: Some(target.descriptor()),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = self.request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None });
        match images.create(create).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                let update = self.request(UpdateImageRequest { image: Some(image), ..Default::default() });
                images.update(update).await.map(|_| ()).map_err(rpc("image"))
            }
            Err(status) => Err(rpc("image")(status)),
        }
    }

    /// Sets labels of image `name` (the others stay).
    pub async fn label_image(&self, name: &str, labels: HashMap<String, String>) -> Result<(), String> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let image = containerd_client::services::v1::Image { name: name.to_string(), labels, ..Default::default() };
        let update = self.request(UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
            source_date_epoch: None,
        });
        ImagesClient::new(self.channel.clone()).update(update).await.map(|_| ()).map_err(rpc("image"))
    }

    pub async fn images(&self) -> Result<Vec<ImageRecord>, String> {
        let listed = ImagesClient::new(self.channel.clone())
            .list(self.request(ListImagesRequest { filters: Vec::new() }))
            .await
            .map_err(rpc("images"))?;
        Ok(listed.into_inner().images.into_iter().map(|i| ImageRecord { name: i.name, labels: i.labels }).collect())
    }

    /// Deletes image `name`; containerd's collector then removes the content and snapshots no
    /// other image needs.
    pub async fn delete_image(&self, name: &str) -> Result<(), String> {
        let delete = self.request(DeleteImageRequest { name: name.to_string(), sync: true, target: None });
        match ImagesClient::new(self.channel.clone()).delete(delete).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(rpc("delete image")(status)),
        }
    }

    /// The images the namespace's containers (every agent's) were made from.
    pub async fn images_in_use(&self) -> Result<HashSet<String>, String> {
        let request = self.request(ListContainersRequest { filters: Vec::new() });
        let listed = ContainersClient::new(self.channel.clone()).list(request).await.map_err(rpc("list"))?;
        Ok(listed.into_inner().containers.into_iter().map(|c| c.image).collect())
    }
}
