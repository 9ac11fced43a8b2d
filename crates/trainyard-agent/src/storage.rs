//! Where data comes from and artifacts go.
//!
//! * `file:///absolute/path` is a local path;
//! * `s3://bucket/key` is a local directory when the agent maps that bucket (`--bucket NAME=DIR`),
//!   otherwise an object in an S3-compatible store (`--s3-endpoint`, credentials from the usual
//!   `AWS_*` variables), reached through the `object_store` crate.
//!
//! S3 prefix semantics hold for both: `s3://b/train/` names every object under `train/`, and
//! `s3://b/train/part-` every object whose key starts with `train/part-`; staged files keep their
//! path below the prefix's directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;

use crate::cache::{self, InputCache};
use crate::confined::{Confined, Entry};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Which of the objects a prefix names an instance gets, and in what order: `ShardedByS3Key`
/// gives instance i of N every N-th object; `ShuffleConfig.Seed` shuffles the order first (it is
/// the order a Pipe-mode channel feeds them in).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Selection {
    /// (0-based instance, instance count) when sharded by key.
    pub shard: Option<(usize, usize)>,
    pub shuffle_seed: Option<i64>,
    /// Fetched as the job's own copies, never through the shared read-only input cache: files the
    /// job overwrites in place (checkpoints it restores and writes again).
    pub private: bool,
}

impl Selection {
    fn apply<T>(&self, mut items: Vec<T>) -> Vec<T> {
        if let Some(seed) = self.shuffle_seed {
            use rand::SeedableRng;
            use rand::seq::SliceRandom;
            items.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed as u64));
        }
        match self.shard {
            Some((index, count)) if count > 1 => {
                items.into_iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, x)| x).collect()
            }
            _ => items,
        }
    }
}

/// How the agent reaches an S3-compatible store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

pub struct Storage {
    buckets: BTreeMap<String, PathBuf>,
    /// Where staged inputs are kept read-only and shared (None: each instance gets copies).
    cache: Option<InputCache>,
    s3: Option<S3Settings>,
    stores: Mutex<BTreeMap<String, Arc<dyn ObjectStore>>>,
}

/// What a URI names.
pub enum Location {
    Local(PathBuf),
    Remote { store: Arc<dyn ObjectStore>, key: String },
}

impl Storage {
    pub fn new(buckets: BTreeMap<String, PathBuf>, s3: Option<S3Settings>, cache: Option<InputCache>) -> Storage {
        Storage { buckets, cache, s3, stores: Mutex::new(BTreeMap::new()) }
    }

    /// What `uri` names. Only URIs in normal form are served (the coordinator refuses others at
    /// submission; a job stored before it did is refused here): a key joined onto a bucket's
    /// directory then stays beneath it.
    pub fn locate(&self, uri: &str) -> Result<Location, String> {
        trainyard_model::uris::check(uri)?;
        if let Some(path) = uri.strip_prefix("file://") {
            return if path.starts_with('/') {
                Ok(Location::Local(PathBuf::from(path)))
            } else {
                Err(format!("'{uri}' is not an absolute file:// URI"))
            };
        }
        let rest = uri
            .strip_prefix("s3://")
            .or_else(|| uri.strip_prefix("https://"))
            .ok_or_else(|| format!("'{uri}' is neither s3://, https:// nor file://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(root) = self.buckets.get(bucket) {
            return Ok(Location::Local(root.join(key)));
        }
        let Some(s3) = &self.s3 else {
            return Err(format!(
                "bucket '{bucket}' of '{uri}' is neither mapped to a directory (--bucket {bucket}=DIR) nor reachable: no --s3-endpoint"
            ));
        };
        let mut stores = self.stores.lock().map_err(|_| "storage lock poisoned".to_string())?;
        let store = match stores.get(bucket) {
            Some(s) => s.clone(),
            None => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                }
                builder = builder.with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()));
                let store: Arc<dyn ObjectStore> =
                    Arc::new(builder.build().map_err(|e| format!("S3 bucket '{bucket}': {e}"))?);
                stores.insert(bucket.to_string(), store.clone());
                store
            }
        };
        Ok(Location::Remote { store, key: key.to_string() })
    }

    /// Places the objects `uri` names (selected and ordered by `selection`) in `dest`: links to
    /// the read-only input cache when there is one, else copies; returns the files, in order.
    /// `room` is what the instance's volume has left, in bytes: objects that do not fit in it are
    /// refused before any is fetched (as on SageMaker, File-mode data must fit in the volume), and
    /// what they take is taken from it.
    pub async fn stage(
        &self,
        uri: &str,
        dest: &Path,
        selection: Selection,
        room: &mut u64,
    ) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
        let mut written = Vec::new();
        let mut admitted = false;
        match self.locate(uri)? {
            Location::Local(source) => {
                let objects = selection.apply(local_objects(&source).map_err(|e| format!("listing {uri}: {e}"))?);
                let bytes = objects.iter().map(|(path, _)| std::fs::metadata(path).map_or(0, |m| m.len())).sum();
                take_room(room, bytes, uri)?;
                for (path, relative) in objects {
                    let target = dest.join(&relative);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    let what = path.display().to_string();
                    let staging = |e: io::Error| format!("staging {what}: {e}");
                    let version = || Ok(cache::local_version(&path, &std::fs::metadata(&path).map_err(staging)?));
                    let (source, staging) = (&path, &staging);
                    let copy = |to: PathBuf| async move { std::fs::copy(source, &to).map(|_| ()).map_err(staging) };
                    admitted |= self.place(version, &target, &what, copy, selection.private).await?;
                    written.push(target);
                }
            }
            Location::Remote { store, key } => {
                // List the directory of the prefix, keep the keys that start with the prefix.
                let directory = key.rfind('/').map_or("", |i| &key[..=i]);
                let mut listed: Vec<object_store::ObjectMeta> = store
                    .list(Some(&ObjectPath::from(directory.trim_end_matches('/'))))
                    .try_collect()
                    .await
                    .map_err(|e| format!("listing {uri}: {e}"))?;
                listed.retain(|o| o.location.as_ref().starts_with(&key));
                listed.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
                let bucket = uri.split_once("://").map_or(uri, |(_, rest)| rest.split('/').next().unwrap_or(rest));
                let endpoint = self.s3.as_ref().and_then(|s| s.endpoint.clone()).unwrap_or_default();
                let listed = selection.apply(listed);
                take_room(room, listed.iter().map(|meta| meta.size).sum(), uri)?;
                for meta in listed {
                    let name = meta.location.as_ref().to_string();
                    let target = dest.join(&name[directory.len()..]);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    let version = || Ok(cache::object_version(&format!("{endpoint}/{bucket}"), &name, &meta));
                    let (store, object) = (&store, &name);
                    let fetch = |to: PathBuf| async move { download(store, object, &to).await };
                    admitted |= self.place(version, &target, &name, fetch, selection.private).await?;
                    written.push(target);
                }
            }
        }
        // Only what was fetched grows the cache.
        if admitted && let Some(cache) = &self.cache {
            cache.trim();
        }
        Ok(written)
    }

    /// Puts one object at `target`: through the input cache when there is one and the copy need
    /// not be private (true when it was fetched into it), else fetched straight there. `version`
    /// is only asked for with a cache.
    async fn place<F, Fut>(
        &self,
        version: impl FnOnce() -> Result<String, String>,
        target: &Path,
        what: &str,
        fetch: F,
        private: bool,
    ) -> Result<bool, String>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        match &self.cache {
            Some(cache) if !private => cache.place(&version()?, target, what, fetch).await,
            _ => fetch(target.to_path_buf()).await.map(|()| false),
        }
    }

    /// Stores at `uri` what `write` writes into the file it is handed, on a blocking thread. For a
    /// local bucket the file is a temporary one beside the object, renamed into place once `write`
    /// succeeded: the bytes are written once, not written and copied. For a store it is an unnamed
    /// file in `staging` (gone when closed, even if the agent dies), streamed up afterwards.
    /// `write`'s own error comes back as it said it.
    pub async fn put_written<T: Send + 'static>(
        &self,
        uri: &str,
        staging: &Path,
        write: impl FnOnce(&mut std::fs::File) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let writing = |e: io::Error| format!("writing {uri}: {e}");
        let joined = |e: tokio::task::JoinError| e.to_string();
        match self.locate(uri)? {
            Location::Local(target) => {
                let uri = uri.to_string();
                tokio::task::spawn_blocking(move || replace_with(&target, &uri, write)).await.map_err(joined)?
            }
            Location::Remote { store, key } => {
                let (staging, what) = (staging.to_path_buf(), format!("staging {uri}"));
                let (written, file) = tokio::task::spawn_blocking(move || {
                    let mut file = tempfile::tempfile_in(&staging).map_err(|e| format!("{what}: {e}"))?;
                    let written = write(&mut file)?;
                    io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
                    Ok::<_, String>((written, file))
                })
                .await
                .map_err(joined)??;
                upload(store, &key, file).await.map_err(writing)?;
                Ok(written)
            }
        }
    }

    /// Stores every regular file beneath `dir` (a job-writable directory, relative to `work`)
    /// below `uri` (a prefix), keeping relative paths. Links are never followed: a link, a FIFO or
    /// a device is left out and named in the returned list.
    /// With `modified_since`, files not modified since then are left out (not counted either).
    pub async fn put_tree(
        &self,
        work: &Confined,
        dir: &Path,
        uri: &str,
        modified_since: Option<std::time::SystemTime>,
    ) -> Result<(usize, Vec<PathBuf>), String> {
        let base = uri.trim_end_matches('/');
        let (mut count, mut skipped) = (0, Vec::new());
        for entry in work.walk(dir).map_err(|e| format!("listing {}: {e}", dir.display()))? {
            match entry {
                Entry::Directory(_) => {}
                Entry::File { path, .. } => {
                    let file = work.open_file(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                    if let Some(since) = modified_since {
                        let modified = file.metadata().and_then(|m| m.modified());
                        if modified.is_ok_and(|m| m < since) {
                            continue;
                        }
                    }
                    let relative = path.strip_prefix(dir).map_err(|e| e.to_string())?.to_string_lossy().into_owned();
                    self.put_reader(file, &format!("{base}/{relative}")).await?;
                    count += 1;
                }
                Entry::Link { path, .. } | Entry::Other(path) => skipped.push(path),
            }
        }
        Ok((count, skipped))
    }

    /// Stores what `file` holds at `uri`: whole or not at all, and never more than a few parts
    /// of it in the agent's memory, whatever its size.
    async fn put_reader(&self, file: std::fs::File, uri: &str) -> Result<(), String> {
        match self.locate(uri)? {
            Location::Local(target) => {
                let (uri, mut file) = (uri.to_string(), file);
                tokio::task::spawn_blocking(move || {
                    let writing = |e: io::Error| format!("writing {uri}: {e}");
                    replace_with(&target, &uri, |out| io::copy(&mut file, out).map(|_| ()).map_err(writing))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Location::Remote { store, key } => {
                upload(store, &key, file).await.map_err(|e| format!("writing {uri}: {e}"))
            }
        }
    }
}

/// Takes `bytes` from what a volume has left, or says that they do not fit.
fn take_room(room: &mut u64, bytes: u64, uri: &str) -> Result<(), String> {
    if bytes > *room {
        return Err(format!(
            "ClientError: the data at {uri} ({bytes} bytes) does not fit in the instance's volume ({} bytes left of its VolumeSizeInGB); ask for a larger VolumeSizeInGB",
            *room
        ));
    }
    *room -= bytes;
    Ok(())
}

/// The bytes of an upload held in memory per part: S3's parts are at least 5 MiB (the last
/// excepted), and an object smaller than this goes up in one PUT.
const UPLOAD_PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once; with the one being filled, what an upload holds.
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;

/// Writes `target` through `write`, handed a file with a temporary name beside it that is then
/// renamed into place: whoever reads `target` (a user, a job staging its input, a reader holding
/// the old file open) sees the whole old file or the whole new one, never a part, and a failed
/// write leaves the old one as it was. Blocking: a model can take seconds to write. `write`'s own
/// error comes back as it said it; the file's, as writing `uri` (what `target` stands for).
pub(crate) fn replace_with<T>(
    target: &Path,
    uri: &str,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, String>,
) -> Result<T, String> {
    use std::os::unix::fs::PermissionsExt;
    let writing = |e: io::Error| format!("writing {uri}: {e}");
    let parent = target.parent().ok_or_else(|| format!("writing {uri}: an object's path has no directory"))?;
    std::fs::create_dir_all(parent).map_err(writing)?;
    // Readable as `File::create` would have made it (0666 less the umask), not 0600; removed if
    // dropped before it is renamed.
    let mut partial = tempfile::Builder::new()
        .prefix(".trainyard-partial-")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(parent)
        .map_err(writing)?;
    let written = write(partial.as_file_mut())?;
    partial.persist(target).map_err(|e| writing(e.error))?;
    Ok(written)
}

/// Streams `file` into an object: one PUT when it is smaller than a part, else a multipart upload
/// (aborted if reading the file fails, so no part is left behind).
async fn upload(store: Arc<dyn ObjectStore>, key: &str, file: std::fs::File) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut reader = tokio::io::BufReader::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut writer = object_store::buffered::BufWriter::with_capacity(store, ObjectPath::from(key), UPLOAD_PART_BYTES)
        .with_max_concurrency(UPLOAD_PARTS_IN_FLIGHT);
    if let Err(e) = tokio::io::copy_buf(&mut reader, &mut writer).await {
        let _ = writer.abort().await;
        return Err(e);
    }
    // Completing the upload aborts it itself when that fails.
    writer.shutdown().await
}

/// Streams an object into a file (objects may be larger than the agent's memory).
async fn download(store: &Arc<dyn ObjectStore>, name: &str, file: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let reading = |e: object_store::Error| format!("reading s3 object {name}: {e}");
    let writing = |e: io::Error| format!("writing {}: {e}", file.display());
    let mut stream = store.get(&ObjectPath::from(name)).await.map_err(reading)?.into_stream();
    let mut out = tokio::fs::File::create(file).await.map_err(writing)?;
    while let Some(chunk) = stream.try_next().await.map_err(reading)? {
        out.write_all(&chunk).await.map_err(writing)?;
    }
    out.flush().await.map_err(writing)
}

/// The files a local S3 prefix names, with their paths below the prefix's directory, sorted: a
/// directory's whole tree, a single file, or every entry whose name starts with the prefix.
pub fn local_objects(source: &Path) -> io::Result<Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else {
                let relative = path.strip_prefix(base).map_err(io::Error::other)?.to_string_lossy().into_owned();
                out.push((path, relative));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if source.is_dir() {
        walk(source, source, &mut out)?;
    } else if source.is_file() {
        let name = source.file_name().unwrap_or_default().to_string_lossy().into_owned();
        out.push((source.to_path_buf(), name));
    } else if let (Some(parent), Some(prefix)) = (source.parent(), source.file_name().and_then(|p| p.to_str()))
        && parent.is_dir()
    {
        for entry in std::fs::read_dir(parent)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            if path.is_dir() {
                walk(&path, parent, &mut out)?;
            } else {
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Packs what `dir` (a job-writable directory, relative to `work`) holds into a gzipped tar
/// written to `archive` (a file of the agent's own), as SageMaker packs model.tar.gz: paths
/// relative to `dir`, regular files and directories as they are, links stored as links (never
/// followed). FIFOs, sockets and devices are left out; their paths are returned.
///
/// Compressed at level 1: a model is mostly weights, which deflate shrinks by a tenth at any
/// level, and level 1 packs them ~5.7 times as fast as the default 6 (122 against 21 MiB/s on
/// float32 weights here, the same size to a thousandth): seconds instead of minutes per GB before
/// a trial can end. Text compresses less well (0.37 of its size against 0.26).
pub fn pack(work: &Confined, dir: &Path, archive: &mut std::fs::File) -> io::Result<Vec<PathBuf>> {
    let buffered = io::BufWriter::with_capacity(1 << 16, archive);
    let encoder = flate2::write::GzEncoder::new(buffered, flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    let mut skipped = Vec::new();
    for entry in work.walk(dir)? {
        let relative = |path: &Path| path.strip_prefix(dir).map(Path::to_path_buf).map_err(io::Error::other);
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match entry {
            Entry::Directory(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, relative(&path)?, io::empty())?;
            }
            Entry::File { path, mode, .. } => {
                let file = work.open_file(&path)?;
                // The size of what was opened: the walk's may be stale.
                let size = file.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode & 0o777);
                header.set_size(size);
                tar.append_data(&mut header, relative(&path)?, io::Read::take(file, size))?;
            }
            Entry::Link { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, relative(&path)?, &target)?;
            }
            Entry::Other(path) => skipped.push(path),
        }
    }
    // Not synced: a flush protects nothing the rename or the upload needs, and would cost every
    // trial a wait for the disk.
    io::Write::flush(&mut tar.into_inner()?.finish()?)?;
    Ok(skipped)
}

/// `<output>/<job>/output/<name>`, where SageMaker puts a job's artifacts.
pub fn artifact_uri(output_uri: &str, job: &str, name: &str) -> String {
    format!("{}/{job}/output/{name}", output_uri.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies what a local prefix names into `dest` (all of it, in order); the number of files.
    fn stage(source: &Path, dest: &Path) -> io::Result<usize> {
        let objects = local_objects(source)?;
        for (path, relative) in &objects {
            let target = dest.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(path, target)?;
        }
        Ok(objects.len())
    }

    #[test]
    fn uris_resolve_through_buckets() {
        let s = Storage::new(BTreeMap::from([("data".to_string(), PathBuf::from("/srv/data"))]), None, None);
        let local = |uri: &str| match s.locate(uri) {
            Ok(Location::Local(p)) => p,
            Ok(Location::Remote { .. }) => panic!("{uri} should be local"),
            Err(e) => panic!("{uri}: {e}"),
        };
        assert_eq!(local("s3://data/a/b/"), PathBuf::from("/srv/data/a/b/"));
        assert_eq!(local("file:///tmp/x"), PathBuf::from("/tmp/x"));
        assert!(s.locate("s3://other/x").err().unwrap_or_default().contains("--bucket other=DIR"));
        assert!(s.locate("ftp://x").is_err());
        // A key that would leave the bucket's directory is refused, not joined.
        for escape in ["s3://data//etc/", "s3://data/../etc", "s3://data/%2e%2e/etc"] {
            assert!(s.locate(escape).is_err(), "{escape}");
        }
        assert_eq!(artifact_uri("s3://b/out/", "job", "model.tar.gz"), "s3://b/out/job/output/model.tar.gz");
    }

    #[test]
    fn prefixes_stage_like_s3() {
        let dir = tempfile::tempdir().expect("dir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("train/sub")).expect("mkdir");
        std::fs::write(src.join("train/a.csv"), "1").expect("write");
        std::fs::write(src.join("train/sub/b.csv"), "2").expect("write");
        std::fs::write(src.join("part-1.csv"), "3").expect("write");
        std::fs::write(src.join("part-2.csv"), "4").expect("write");
        std::fs::write(src.join("other.csv"), "5").expect("write");
        assert_eq!(stage(&src.join("train"), &dir.path().join("d1")).expect("stage"), 2);
        assert!(dir.path().join("d1/sub/b.csv").exists());
        assert_eq!(stage(&src.join("part-"), &dir.path().join("d2")).expect("stage"), 2);
        assert_eq!(stage(&src.join("other.csv"), &dir.path().join("d3")).expect("stage"), 1);

        // Sharding and shuffling select and order what an instance gets.
        let keys: Vec<u32> = (0..10).collect();
        let shard = |i, seed| Selection { shard: Some((i, 3)), shuffle_seed: seed, private: false }.apply(keys.clone());
        assert_eq!(shard(1, None), [1, 4, 7]);
        let all: std::collections::BTreeSet<u32> = (0..3).flat_map(|i| shard(i, Some(42))).collect();
        assert_eq!(all.len(), 10, "the shards of a shuffled prefix still cover every object once");
        assert_eq!(shard(0, Some(42)), shard(0, Some(42)), "a seed gives the same order every time");
        assert_ne!(Selection { shard: None, shuffle_seed: Some(7), private: false }.apply(keys.clone()), keys);

        let work = Confined::open(&src).expect("open");
        std::os::unix::fs::symlink("/etc/hostname", src.join("train/link")).expect("link");
        std::fs::create_dir_all(dir.path().join("out")).expect("dir");
        let mut archive = std::fs::File::create(dir.path().join("out/model.tar.gz")).expect("create");
        assert!(pack(&work, Path::new("train"), &mut archive).expect("pack").is_empty());
        let file = std::fs::File::open(dir.path().join("out/model.tar.gz")).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .filter_map(|e| e.ok()?.path().ok().map(|p| p.display().to_string()))
            .filter(|n| n.ends_with(".csv"))
            .collect();
        names.sort();
        assert_eq!(names, ["a.csv", "sub/b.csv"], "files at the archive root, as SageMaker packs model.tar.gz");
        // The link went in as a link: its target's contents did not.
        let file = std::fs::File::open(dir.path().join("out/model.tar.gz")).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let link = archive
            .entries()
            .expect("entries")
            .filter_map(Result::ok)
            .find(|e| e.path().is_ok_and(|p| p.ends_with("link")))
            .expect("the link is archived");
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(link.link_name().ok().flatten().map(|l| l.into_owned()), Some(PathBuf::from("/etc/hostname")));
        assert_eq!(link.header().size().ok(), Some(0));
    }

    #[tokio::test]
    async fn an_object_in_a_local_bucket_is_replaced_whole_or_not_at_all() {
        use std::io::{Read, Write};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let bucket = dir.path().join("bucket");
        let storage = Storage::new(BTreeMap::from([("models".to_string(), bucket.clone())]), None, None);
        let uri = "s3://models/run/output/model.tar.gz";
        let object = bucket.join("run/output/model.tar.gz");
        let staging = dir.path().join("staging");
        let put = |text: &'static str| {
            storage.put_written(uri, &staging, move |file| file.write_all(text.as_bytes()).map_err(|e| e.to_string()))
        };
        put("first model").await.expect("first put");
        let made_by_create = dir.path().join("made-by-create");
        std::fs::File::create(&made_by_create).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&object), mode(&made_by_create), "as readable as a file the agent creates");

        // A reader that opened the first model reads all of it while the second is written.
        let mut reader = std::fs::File::open(&object).expect("open");
        put("the second model, longer").await.expect("second put");
        let mut held = String::new();
        reader.read_to_string(&mut held).expect("read");
        assert_eq!(held, "first model", "the old object was replaced, not overwritten in place");
        assert_eq!(std::fs::read(&object).expect("read"), b"the second model, longer");

        // A write that fails part-way leaves the object as it was, and says why.
        let failed = storage
            .put_written(uri, &staging, |file| {
                file.write_all(b"half a mod").map_err(|e| e.to_string())?;
                Err::<(), _>("packing: the job's model vanished".to_string())
            })
            .await;
        assert_eq!(failed, Err("packing: the job's model vanished".to_string()));
        // So does a copy whose source fails to read (a directory reads as an error).
        let unreadable = std::fs::File::open(dir.path()).expect("a directory opens");
        let failed = storage.put_reader(unreadable, uri).await;
        assert!(failed.is_err_and(|e| e.contains(uri)));
        assert_eq!(std::fs::read(&object).expect("read"), b"the second model, longer");
        let names: Vec<_> = std::fs::read_dir(object.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["model.tar.gz"], "no partial copy is left beside the object");
    }

    #[tokio::test]
    async fn data_that_does_not_fit_in_the_volume_is_refused_before_any_is_fetched() {
        let dir = tempfile::tempdir().expect("dir");
        let bucket = dir.path().join("bucket");
        std::fs::create_dir_all(bucket.join("train")).expect("mkdir");
        std::fs::write(bucket.join("train/a.csv"), vec![b'a'; 3000]).expect("write");
        std::fs::write(bucket.join("train/b.csv"), vec![b'b'; 3000]).expect("write");
        let storage = Storage::new(BTreeMap::from([("data".to_string(), bucket)]), None, None);
        let dest = dir.path().join("staged");
        let mut room = 5000;
        let refused = storage.stage("s3://data/train/", &dest, Selection::default(), &mut room).await;
        let reason = refused.expect_err("6,000 bytes in 5,000");
        assert!(
            reason.starts_with("ClientError:") && reason.contains("6000 bytes") && reason.contains("5000"),
            "{reason}"
        );
        assert_eq!(std::fs::read_dir(&dest).expect("list").count(), 0, "nothing was fetched");
        assert_eq!(room, 5000);
        // What fits is staged, and taken from the room.
        let mut room = 10_000;
        let staged = storage.stage("s3://data/train/", &dest, Selection::default(), &mut room).await.expect("stage");
        assert_eq!((staged.len(), room), (2, 4000));
    }
}
