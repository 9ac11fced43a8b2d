//! Before an instance runs: its work dir laid out like `/opt/ml`, the config files SageMaker
//! writes, its channels staged (File mode) or fed through FIFOs (Pipe mode), checkpoints restored,
//! and the `SM_*` environment of the SageMaker training toolkit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::shared_inputs::SharedInputs;
use super::{InstanceSpec, OPT_ML, PRIVATE_TMP, PRIVATE_VAR_TMP, Settings};
use crate::storage;

/// A Pipe-mode channel: a FIFO the job reads, fed from the staged files.
pub(super) struct Pipe {
    pub fifo: PathBuf,
    /// In the order SageMaker would stream them (key order, or shuffled with ShuffleConfig).
    files: Vec<PathBuf>,
    gzip: bool,
}

pub(super) struct Prepared {
    pub env: BTreeMap<String, String>,
    pub pipes: Vec<Pipe>,
    /// Staged files that are links to the input cache.
    pub shared: SharedInputs,
}

/// Lays out the work dir, writes the config files, stages the channels. Returns the environment.
pub(super) async fn prepare(spec: &InstanceSpec, settings: &Settings, dir: &Path) -> Result<Prepared, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // What the inputs may take of the instance's volume; none given, no bound.
    let mut room = super::volume_bytes(&spec.request).unwrap_or(u64::MAX);
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("clearing the work dir", e))?;
    }
    for sub in [
        "input/config",
        "input/data",
        "model",
        "output/data",
        "output/intermediate",
        "checkpoints",
        PRIVATE_TMP,
        PRIVATE_VAR_TMP,
    ] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io("creating the work dir", e))?;
    }
    // Its job's user's alone (given to the role's user before the program starts).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| io("making the work dir private", e))?;
    let r = &spec.request;
    // Where the program sees its work dir: /opt/ml itself when the agent can mount it there.
    let seen = if settings.opt_ml { PathBuf::from(OPT_ML) } else { dir.to_path_buf() };
    let mut hyperparameters = r.hyper_parameters.clone().unwrap_or_default();
    let mut shared = SharedInputs::default();
    // Script mode's code, where the SageMaker SDK uploaded an estimator's `source_dir`: staged like
    // a channel (the agent's credentials, the role's prefixes checked at submission), and the job
    // is told the local copy instead, so that its code needs neither credentials nor a network.
    if let Some(uri) = trainyard_model::uris::submit_directory(r.hyper_parameters.as_ref()).map(str::to_string) {
        let name = uri.rsplit('/').next().unwrap_or_default().to_string();
        let staged = settings
            .storage
            .stage(&uri, &dir.join("input/code"), storage::Selection::default(), &mut room)
            .await
            .map_err(|e| format!("{}: {e}", trainyard_model::uris::SUBMIT_DIRECTORY))?;
        shared.note(&staged);
        if !staged.iter().any(|f| f.file_name().is_some_and(|n| n == name.as_str())) {
            return Err(format!("{}: no object at {uri}", trainyard_model::uris::SUBMIT_DIRECTORY));
        }
        let local = seen.join("input/code").join(&name).display().to_string();
        hyperparameters.insert(trainyard_model::uris::SUBMIT_DIRECTORY.into(), json!(local).to_string());
    }
    let mut hosts = spec.hosts.clone();
    hosts.sort();
    let host = format!("algo-{}", spec.instance);
    let instance_type = r.resource_config.as_ref().and_then(|c| c.instance_type.clone()).unwrap_or_default();
    let resource_config = json!({
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": "eth0",
    });
    let channels = r.input_data_config.clone().unwrap_or_default();
    let default_mode =
        r.algorithm_specification.as_ref().and_then(|a| a.training_input_mode.clone()).unwrap_or("File".into());
    let mut input_config = serde_json::Map::new();
    for c in &channels {
        let name = c.channel_name.clone().unwrap_or_default();
        let s3 = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref());
        input_config.insert(
            name,
            json!({
                "ContentType": c.content_type,
                "TrainingInputMode": c.input_mode.clone().unwrap_or(default_mode.clone()),
                "S3DistributionType": s3.and_then(|s| s.s3_data_distribution_type.clone()).unwrap_or("FullyReplicated".into()),
                "RecordWrapperType": c.record_wrapper_type.clone().unwrap_or("None".into()),
            }),
        );
    }
    let write = |name: &str, value: &Value| {
        std::fs::write(dir.join("input/config").join(name), serde_json::to_vec_pretty(value).unwrap_or_default())
            .map_err(|e| io(name, e))
    };
    write("hyperparameters.json", &json!(hyperparameters))?;
    write("resourceconfig.json", &resource_config)?;
    write("inputdataconfig.json", &Value::Object(input_config.clone()))?;

    // Channels are staged before the job starts, so an isolated job needs no network.
    let mut pipes = Vec::new();
    for c in &channels {
        let name = c.channel_name.clone().unwrap_or_default();
        let Some(uri) = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref()).and_then(|s| s.s3_uri.clone())
        else {
            continue;
        };
        let mode = c.input_mode.clone().unwrap_or(default_mode.clone());
        let dest = if mode == "Pipe" {
            dir.join("input/data").join(format!(".{name}-staged"))
        } else {
            dir.join("input/data").join(&name)
        };
        let s3 = c.data_source.as_ref().and_then(|d| d.s3_data_source.as_ref());
        let selection = storage::Selection {
            shard: (s3.and_then(|s| s.s3_data_distribution_type.as_deref()) == Some("ShardedByS3Key"))
                .then(|| (spec.instance as usize - 1, spec.hosts.len().max(1))),
            shuffle_seed: c.shuffle_config.as_ref().and_then(|s| s.seed),
            private: false,
        };
        let room_before = room;
        let staged = settings
            .storage
            .stage(&uri, &dest, selection, &mut room)
            .await
            .map_err(|e| format!("channel {name}: {e}"))?;
        shared.note(&staged);
        let files = staged.len();
        // What the channel took of the volume is its staged size (counted once, by `stage`).
        settings.metrics.staged_bytes.inc_by(room_before - room);
        if files == 0 {
            return Err(format!("channel {name}: no data found at {uri}"));
        }
        if mode == "Pipe" {
            // SageMaker's Pipe mode: the job reads `<channel>_0`, a FIFO.
            let fifo = dir.join("input/data").join(format!("{name}_0"));
            make_fifo(&fifo).map_err(|e| format!("channel {name}: creating {}: {e}", fifo.display()))?;
            pipes.push(Pipe { fifo, files: staged, gzip: c.compression_type.as_deref() == Some("Gzip") });
        }
    }
    // Checkpoints of an earlier run (or of this job before an interruption) are restored, as
    // SageMaker restores them into a new job: as the job's own files, which it overwrites.
    if let Some(uri) = r.checkpoint_config.as_ref().and_then(|c| c.s3_uri.clone()) {
        settings
            .storage
            .stage(
                &uri,
                &dir.join("checkpoints"),
                storage::Selection { private: true, ..Default::default() },
                &mut room,
            )
            .await
            .map_err(|e| format!("restoring checkpoints: {e}"))?;
    }

    let mut env = BTreeMap::new();
    let path = |sub: &str| seen.join(sub).display().to_string();
    let names: Vec<String> = channels.iter().filter_map(|c| c.channel_name.clone()).collect();
    env.insert("SAGEMAKER_BASE_DIR".into(), seen.display().to_string());
    env.insert("TRAINING_JOB_NAME".into(), spec.job.clone());
    env.insert("TRAINING_JOB_ARN".into(), spec.arn.clone());
    env.insert("SM_MODEL_DIR".into(), path("model"));
    env.insert("SM_INPUT_DIR".into(), path("input"));
    env.insert("SM_INPUT_CONFIG_DIR".into(), path("input/config"));
    env.insert("SM_INPUT_DATA_DIR".into(), path("input/data"));
    env.insert("SM_OUTPUT_DIR".into(), path("output"));
    env.insert("SM_OUTPUT_DATA_DIR".into(), path("output/data"));
    env.insert("SM_OUTPUT_INTERMEDIATE_DIR".into(), path("output/intermediate"));
    env.insert("SM_CHECKPOINT_DIR".into(), path("checkpoints"));
    env.insert("SM_CHANNELS".into(), json!(names).to_string());
    for name in &names {
        env.insert(
            format!("SM_CHANNEL_{}", name.to_uppercase()),
            seen.join("input/data").join(name).display().to_string(),
        );
    }
    env.insert("SM_HPS".into(), json!(hyperparameters).to_string());
    for (k, v) in &hyperparameters {
        env.insert(format!("SM_HP_{}", k.to_uppercase()), v.clone());
    }
    env.insert("SM_CURRENT_HOST".into(), host.clone());
    env.insert("SM_CURRENT_INSTANCE_TYPE".into(), instance_type);
    env.insert("SM_HOSTS".into(), json!(hosts).to_string());
    env.insert("SM_NUM_GPUS".into(), spec.gpu_uuids.len().to_string());
    env.insert("SM_NUM_CPUS".into(), settings.vcpus.to_string());
    env.insert("SM_NETWORK_INTERFACE_NAME".into(), "eth0".into());
    env.insert("SM_RESOURCE_CONFIG".into(), resource_config.to_string());
    env.insert("SM_INPUT_DATA_CONFIG".into(), Value::Object(input_config).to_string());
    env.insert("SM_USER_ENTRY_POINT".into(), String::new());
    // GPUs are exclusive to this instance; name them by UUID, which survives re-enumeration.
    env.insert("CUDA_VISIBLE_DEVICES".into(), spec.gpu_uuids.join(","));
    env.insert(
        "NVIDIA_VISIBLE_DEVICES".into(),
        if spec.gpu_uuids.is_empty() { "void".into() } else { spec.gpu_uuids.join(",") },
    );
    for (k, v) in r.environment.clone().unwrap_or_default() {
        env.insert(k, v);
    }
    Ok(Prepared { env, pipes, shared })
}

pub(super) fn make_fifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Writes every staged file of a Pipe channel into its FIFO (decompressing Gzip), then closes it,
/// which the job sees as the end of the epoch. Blocks until the job opens the FIFO.
pub(super) fn feed_pipe(pipe: &Pipe) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new().write(true).open(&pipe.fifo)?;
    for f in &pipe.files {
        let file = std::fs::File::open(f)?;
        if pipe.gzip {
            std::io::copy(&mut flate2::read::GzDecoder::new(file), &mut out)?;
        } else {
            std::io::copy(&mut std::io::BufReader::new(file), &mut out)?;
        }
    }
    out.flush()
}

/// Unblocks a feeder still waiting for a reader, once the job has ended.
pub(super) fn release_pipe(pipe: &Pipe) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&pipe.fifo);
}
