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

/// Packs `dir` of the work dir into a tar.gz at `uri`. The archive is built in the agent's own
/// staging dir, which no job can reach, and removed afterwards; on a blocking thread, as
/// compressing a model takes seconds the agent's other instances must not wait for.
async fn pack_and_put(
    spec: &InstanceSpec,
    settings: &Settings,
    work: &Arc<Confined>,
    dir: &str,
    uri: &str,
) -> Result<(), String> {
    let name = dir.replace('/', "-");
    let archive = settings.work_root.join(STAGING).join(format!("{}-{}-{name}.tar.gz", spec.job, spec.instance));
    let packed = {
        let (work, dir, archive) = (Arc::clone(work), PathBuf::from(dir), archive.clone());
        tokio::task::spawn_blocking(move || storage::pack(&work, &dir, &archive))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    let uploaded = match packed {
        Ok(skipped) => {
            warn_skipped(spec, dir, &skipped);
            let bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or_default();
            let put = settings.storage.put_file(&archive, uri).await.map_err(|e| format!("uploading: {e}"));
            if put.is_ok() {
                settings.metrics.uploaded_bytes.inc_by(bytes);
            }
            put
        }
        Err(e) => Err(format!("packing: {e}")),
    };
    let _ = std::fs::remove_file(&archive);
    uploaded
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
