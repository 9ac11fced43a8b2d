//! Instances' work dirs, `<work-root>/jobs/<job>/algo-N`: mode 0700 and their job's user's while
//! they run. A dir is removed once its instance has ended and its outputs are uploaded; a failed
//! (or fenced) instance's dir is kept for debugging for `keep_failed_work_dirs`, recorded in
//! `<work-root>/kept/` (the agent's own, out of every job's reach), and swept at start and every ten
//! minutes. At start every other dir under `jobs/` is an earlier run's leftover (instances die with
//! their agent) and is removed: an agent's disk does not fill up with every trial's input data.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

const JOBS: &str = "jobs";
const KEPT: &str = "kept";

/// Where instance `instance` of `job` works.
pub fn instance_dir(work_root: &Path, job: &str, instance: u32) -> PathBuf {
    work_root.join(JOBS).join(job).join(format!("algo-{instance}"))
}

/// After an instance's end has been reported: its dir is removed, or kept (and recorded) when the
/// instance failed.
pub fn finished(work_root: &Path, job: &str, instance: u32, keep: bool) {
    let dir = instance_dir(work_root, job, instance);
    if keep {
        let kept = work_root.join(KEPT);
        let record = kept.join(record_name(job, instance));
        if let Err(e) =
            std::fs::create_dir_all(&kept).and_then(|()| std::fs::write(&record, dir.as_os_str().as_encoded_bytes()))
        {
            warn!(%job, instance, error = %e, "could not record a kept work dir; removing it");
            remove(work_root, job, instance);
        }
        return;
    }
    remove(work_root, job, instance);
}

/// Removes kept dirs older than `keep`, and at start every dir no record keeps.
pub fn sweep(work_root: &Path, keep: Duration, at_start: bool) {
    let kept = work_root.join(KEPT);
    let mut still_kept = std::collections::BTreeSet::new();
    for record in std::fs::read_dir(&kept).into_iter().flatten().flatten() {
        let name = record.file_name().to_string_lossy().into_owned();
        let Some((job, instance)) = parse_record_name(&name) else { continue };
        let age =
            record.metadata().and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|age| age >= keep) {
            remove(work_root, &job, instance);
            let _ = std::fs::remove_file(record.path());
            info!(%job, instance, "removed a failed instance's work dir kept for debugging");
        } else {
            still_kept.insert((job, instance));
        }
    }
    if !at_start {
        return;
    }
    for job in std::fs::read_dir(work_root.join(JOBS)).into_iter().flatten().flatten() {
        let job_name = job.file_name().to_string_lossy().into_owned();
        for dir in std::fs::read_dir(job.path()).into_iter().flatten().flatten() {
            let instance = dir.file_name().to_string_lossy().strip_prefix("algo-").and_then(|n| n.parse::<u32>().ok());
            match instance {
                Some(i) if still_kept.contains(&(job_name.clone(), i)) => {}
                Some(i) => remove(work_root, &job_name, i),
                None => {}
            }
        }
        let _ = std::fs::remove_dir(job.path()); // only when empty
    }
}

fn remove(work_root: &Path, job: &str, instance: u32) {
    let dir = instance_dir(work_root, job, instance);
    // remove_dir_all neither follows links nor is fooled by one swapped in while it runs.
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "could not remove a work dir");
    }
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent); // only when empty: another instance may still work there
    }
}

/// `<job>.algo-N`: job names have no dots.
fn record_name(job: &str, instance: u32) -> String {
    format!("{job}.algo-{instance}")
}

fn parse_record_name(name: &str) -> Option<(String, u32)> {
    let (job, instance) = name.rsplit_once(".algo-")?;
    Some((job.to_string(), instance.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_dirs_go_failed_ones_stay_until_swept_and_leftovers_go_at_start() {
        let root = tempfile::tempdir().expect("dir");
        let make = |job: &str, i: u32| {
            let dir = instance_dir(root.path(), job, i);
            std::fs::create_dir_all(dir.join("input/data")).expect("mkdir");
            std::fs::write(dir.join("input/data/big.csv"), "data").expect("write");
            dir
        };
        let done = make("done", 1);
        let failed = make("failed", 1);
        let leftover = make("crashed-run", 2);
        finished(root.path(), "done", 1, false);
        finished(root.path(), "failed", 1, true);
        assert!(!done.exists() && !root.path().join("jobs/done").exists());
        assert!(failed.exists());
        sweep(root.path(), Duration::from_secs(3600), true);
        assert!(failed.exists(), "kept for an hour");
        assert!(!leftover.exists(), "an earlier run's dir goes at start");
        sweep(root.path(), Duration::ZERO, false);
        assert!(!failed.exists(), "removed once its time is up");
        assert_eq!(std::fs::read_dir(root.path().join("kept")).expect("kept").count(), 0);
        assert_eq!(parse_record_name(&record_name("a-b-1", 12)), Some(("a-b-1".to_string(), 12)));
    }
}
