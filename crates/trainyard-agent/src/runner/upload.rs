//! After an instance ran: `model/` (and `output/data/`) packed and uploaded, checkpoints synced,
//! everything read from the work dir without following a link the job planted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::{InstanceSpec, Settings};
use crate::confined::Confined;
use crate::storage;

/// Packs `model/` (and `output/data/` when it has files) under `<S3OutputPath>/<job>/output/` and
/// syncs the checkpoints written since `since`; returns the model's URI.
pub(super) async fn upload(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &Path,
    since: SystemTime,
) -> Result<String, String> {
    let output = spec
        .request
        .output_data_config
        .as_ref()
        .and_then(|o| o.s3_output_path.clone())
        .ok_or("OutputDataConfig.S3OutputPath is missing")?;
    // Everything beneath the work dir was written by the job: read without following links.
    let work = Arc::new(Confined::open(dir).map_err(|e| format!("opening the work dir: {e}"))?);
    let uri = storage::artifact_uri(&output, &spec.job, "model.tar.gz");
    pack_and_put(spec, settings, &work, "model", &uri).await.map_err(|e| format!("{e} (the model)"))?;
    if work.walk(Path::new("output/data")).is_ok_and(|entries| !entries.is_empty()) {
        let data_uri = storage::artifact_uri(&output, &spec.job, "output.tar.gz");
        pack_and_put(spec, settings, &work, "output/data", &data_uri)
            .await
            .map_err(|e| format!("{e} (output data)"))?;
    }
    put_checkpoints(spec, settings, &work, since).await?;
    Ok(uri)
}

/// Whether the job keeps checkpoints (CheckpointConfig).
pub(super) fn has_checkpoints(spec: &InstanceSpec) -> bool {
    spec.request.checkpoint_config.as_ref().and_then(|c| c.s3_uri.as_ref()).is_some()
}

/// Syncs the instance's checkpoints only (those written since `since`): what every instance but
/// algo-1 uploads.
pub(super) async fn sync_checkpoints(
    spec: &InstanceSpec,
    settings: &Settings,
    dir: &Path,
    since: SystemTime,
) -> Result<(), String> {
    let work = Confined::open(dir).map_err(|e| format!("opening the work dir: {e}"))?;
    put_checkpoints(spec, settings, &work, since).await
}

async fn put_checkpoints(
    spec: &InstanceSpec,
    settings: &Settings,
    work: &Confined,
    since: SystemTime,
) -> Result<(), String> {
    if let Some(checkpoints) = spec.request.checkpoint_config.as_ref().and_then(|c| c.s3_uri.clone()) {
        let (_, skipped) = settings
            .storage
            .put_tree(work, Path::new("checkpoints"), &checkpoints, Some(since))
            .await
            .map_err(|e| format!("syncing checkpoints to {checkpoints}: {e}"))?;
        warn_skipped(spec, "checkpoints", &skipped);
    }
    Ok(())
}

/// Packs `dir` of the work dir into a tar.gz at `uri`: straight into the object's place in a
/// local bucket, or into the agent's own staging dir (no job can reach it) for a store. On a
/// blocking thread, as compressing a model takes seconds the agent's other instances must not
/// wait for.
async fn pack_and_put(
    spec: &InstanceSpec,
    settings: &Settings,
    work: &Arc<Confined>,
    dir_name: &str,
    uri: &str,
) -> Result<(), String> {
    let (work, dir) = (Arc::clone(work), PathBuf::from(dir_name));
    let staging = settings.work_root.join(STAGING);
    let (skipped, bytes) = settings
        .storage
        .put_written(uri, &staging, move |archive| {
            let skipped = storage::pack(&work, &dir, archive).map_err(|e| format!("packing: {e}"))?;
            Ok((skipped, archive.metadata().map(|m| m.len()).unwrap_or_default()))
        })
        .await?;
    warn_skipped(spec, dir_name, &skipped);
    settings.metrics.uploaded_bytes.inc_by(bytes);
    Ok(())
}

/// The agent's own directory under the work root for archives being built (0700, root's).
pub const STAGING: &str = "staging";

/// What an upload left out (links, FIFOs, devices): said in the agent's log and the job's.
fn warn_skipped(spec: &InstanceSpec, what: &str, skipped: &[PathBuf]) {
    if !skipped.is_empty() {
        let names: Vec<String> = skipped.iter().take(10).map(|p| p.display().to_string()).collect();
        warn!(job = %spec.job, count = skipped.len(), first = ?names, "links and special files in {what}/ were not uploaded");
    }
}
