//! The read-only input cache: every object an instance stages is kept once per version under
//! `<work-root>/cache/objects/` (root's, 0644, in a 0700 dir no job can reach), named by a digest of
//! where it came from and which version it was (an S3 ETag, or a local file's device, inode, size and
//! modification time). An instance gets a hard link to it in its `input/data/<channel>/`: trials of
//! one tuning job (and every instance of a distributed one) share one copy on disk and stage in the
//! time it takes to link, and no job can change what another reads (the file is root's; a job may
//! only remove its own link).
//!
//! Bounded: after each staging, objects no instance links to any more (a link count of one) are
//! removed, least recently used first, until the cache is within its size.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

const OBJECTS: &str = "objects";
const INCOMING: &str = "incoming";

pub struct InputCache {
    dir: PathBuf,
    limit_bytes: u64,
    incoming: AtomicU64,
}

impl InputCache {
    /// `dir` is created (0700); what an earlier run left half-written is removed.
    pub fn open(dir: &Path, limit_bytes: u64) -> io::Result<InputCache> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join(OBJECTS))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let _ = std::fs::remove_dir_all(dir.join(INCOMING));
        std::fs::create_dir_all(dir.join(INCOMING))?;
        Ok(InputCache { dir: dir.to_path_buf(), limit_bytes, incoming: AtomicU64::new(0) })
    }

    fn entry(&self, version: &str) -> PathBuf {
        self.dir.join(OBJECTS).join(trainyard_model::hex::encode(&Sha256::digest(version.as_bytes())))
    }

    /// Places `version` at `target`: a link to the cached copy, or else `fetch` writes the object
    /// to a path of the cache's, which then takes it in. True when it was fetched (the cache grew:
    /// [`InputCache::trim`] is due). `what` names the object in errors.
    pub async fn place<F, Fut>(&self, version: &str, target: &Path, what: &str, fetch: F) -> Result<bool, String>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let staging = |e: io::Error| format!("staging {what}: {e}");
        if self.link(version, target).map_err(staging)? {
            return Ok(false);
        }
        let incoming = self.incoming();
        if let Err(e) = fetch(incoming.clone()).await {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
        self.admit(version, &incoming, target).map_err(staging)?;
        Ok(true)
    }

    /// Links the cached copy of `version` at `target` when there is one.
    fn link(&self, version: &str, target: &Path) -> io::Result<bool> {
        let entry = self.entry(version);
        match std::fs::hard_link(&entry, target) {
            Ok(()) => {
                // Recently used: trimmed last.
                let _ = std::fs::File::open(&entry).and_then(|f| f.set_modified(SystemTime::now()));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A fresh path to write an object to before [`InputCache::admit`] takes it in.
    fn incoming(&self) -> PathBuf {
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        self.dir.join(INCOMING).join(format!("{}-{n}", std::process::id()))
    }

    /// Takes the object written at `incoming` into the cache as `version`, read-only, and links it
    /// at `target`.
    fn admit(&self, version: &str, incoming: &Path, target: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let entry = self.entry(version);
        std::fs::set_permissions(incoming, std::fs::Permissions::from_mode(0o644))?;
        // The target is linked to this copy, which no one else touches, before the copy is
        // published: two instances may fetch the same object at once, and a link to the cache's
        // name fails ("No such file or directory") when another's copy replaces the file behind
        // that name meanwhile. Published without replacing: the first copy in stays, a later one
        // (the same object) lives on in its instance's link only.
        let linked = std::fs::hard_link(incoming, target);
        let published = match std::fs::hard_link(incoming, &entry) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        };
        let _ = std::fs::remove_file(incoming);
        linked.and(published)
    }

    /// Removes unlinked objects, least recently used first, until the cache fits its size.
    pub fn trim(&self) {
        use std::os::unix::fs::MetadataExt;
        let mut objects: Vec<(SystemTime, u64, u64, PathBuf)> = std::fs::read_dir(self.dir.join(OBJECTS))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), m.nlink(), e.path()))
            })
            .collect();
        let mut total: u64 = objects.iter().map(|o| o.1).sum();
        if total <= self.limit_bytes {
            return;
        }
        objects.sort();
        for (_, size, links, path) in objects {
            if total <= self.limit_bytes {
                break;
            }
            if links > 1 {
                continue; // an instance reads it
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    debug!(object = %path.display(), size, "removed from the input cache");
                }
                Err(e) => warn!(object = %path.display(), error = %e, "could not remove from the input cache"),
            }
        }
        if total > self.limit_bytes {
            warn!(
                total_bytes = total,
                limit_bytes = self.limit_bytes,
                "the input cache is over its size: running instances read all of it"
            );
        }
    }
}

/// The version of a local file: it names the file and changes when the file is replaced or
/// written to.
pub fn local_version(path: &Path, metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "file\0{}\0{}\0{}\0{}\0{}.{}",
        path.display(),
        metadata.dev(),
        metadata.ino(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )
}

/// The version of an object in an S3-compatible store: its ETag, or else its size and time.
pub fn object_version(store: &str, key: &str, meta: &object_store::ObjectMeta) -> String {
    match &meta.e_tag {
        Some(tag) => format!("s3\0{store}\0{key}\0etag\0{tag}"),
        None => format!("s3\0{store}\0{key}\0{}\0{}", meta.size, meta.last_modified.timestamp_nanos_opt().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn an_object_is_stored_once_linked_read_only_and_trimmed_when_unused() {
        let root = tempfile::tempdir().expect("dir");
        let cache = InputCache::open(&root.path().join("cache"), 10).expect("cache");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        assert!(!cache.link("v1", &a).expect("lookup"), "nothing cached yet");
        let incoming = cache.incoming();
        std::fs::write(&incoming, b"12345678").expect("write");
        cache.admit("v1", &incoming, &a).expect("admit");
        assert!(cache.link("v1", &b).expect("lookup"));
        let meta = std::fs::metadata(&b).expect("meta");
        assert_eq!((meta.nlink(), meta.mode() & 0o777), (3, 0o644), "one copy, read-only for others");
        assert_eq!(std::fs::read(&a).expect("read"), b"12345678");

        // Over the limit, but linked: kept. Unlinked: removed, least recently used first.
        let incoming = cache.incoming();
        std::fs::write(&incoming, b"xxxxxxxx").expect("write");
        let c = root.path().join("c");
        cache.admit("v2", &incoming, &c).expect("admit");
        cache.trim();
        assert!(cache.link("v1", &root.path().join("a2")).expect("lookup"));
        std::fs::remove_file(&c).expect("unlink");
        cache.trim();
        assert!(!cache.link("v2", &root.path().join("c2")).expect("lookup"), "unused and over the limit");
    }

    #[test]
    fn a_rewritten_local_file_is_a_new_version() {
        let root = tempfile::tempdir().expect("dir");
        let file = root.path().join("data.csv");
        std::fs::write(&file, "1\n").expect("write");
        let before = local_version(&file, &std::fs::metadata(&file).expect("meta"));
        std::fs::write(&file, "1\n2\n").expect("write");
        let after = local_version(&file, &std::fs::metadata(&file).expect("meta"));
        assert_ne!(before, after);
        assert_eq!(after, local_version(&file, &std::fs::metadata(&file).expect("meta")));
    }

    /// Instances that fetch the same object at once (parallel trials on a cold cache) each get
    /// it: a copy taken in while another's link to the one before was being made must not take
    /// that link's file away (the link then failed with "No such file or directory").
    #[test]
    fn instances_that_fetch_one_object_at_once_all_get_it() {
        let root = tempfile::tempdir().expect("dir");
        let cache = std::sync::Arc::new(InputCache::open(&root.path().join("cache"), u64::MAX).expect("cache"));
        let (threads, versions) = (6, 300);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                let dir = root.path().join(format!("instance-{t}"));
                std::fs::create_dir_all(&dir).expect("dir");
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    for v in 0..versions {
                        let incoming = cache.incoming();
                        std::fs::write(&incoming, format!("object {v}")).expect("write");
                        let target = dir.join(format!("{v}.csv"));
                        barrier.wait();
                        if let Err(e) = cache.admit(&format!("v{v}"), &incoming, &target) {
                            failures.push(format!("object {v}: {e}"));
                        } else if std::fs::read_to_string(&target).ok() != Some(format!("object {v}")) {
                            failures.push(format!("object {v}: wrong content"));
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures: Vec<String> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
        assert!(
            failures.is_empty(),
            "{} of {} failed: {:?}",
            failures.len(),
            threads * versions,
            &failures[..failures.len().min(5)]
        );
        // Nothing is left in incoming; the cache holds each object once, read-only.
        assert_eq!(std::fs::read_dir(root.path().join("cache").join(INCOMING)).expect("incoming").count(), 0);
        let objects = std::fs::read_dir(root.path().join("cache").join(OBJECTS)).expect("objects").count();
        assert_eq!(objects, versions);
    }
}
