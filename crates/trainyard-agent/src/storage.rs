//! Where data comes from and artifacts go. `file:///absolute/path` is a local path; `s3://bucket/key`
//! resolves through the configured buckets (a bucket served from a local directory). S3-compatible
//! endpoints are not wired yet: an unknown bucket is a clear error on the job.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Buckets(pub BTreeMap<String, PathBuf>);

impl Buckets {
    /// The local path a URI names.
    pub fn resolve(&self, uri: &str) -> Result<PathBuf, String> {
        if let Some(path) = uri.strip_prefix("file://") {
            return if path.starts_with('/') {
                Ok(PathBuf::from(path))
            } else {
                Err(format!("'{uri}' is not an absolute file:// URI"))
            };
        }
        let rest = uri
            .strip_prefix("s3://")
            .or_else(|| uri.strip_prefix("https://"))
            .ok_or_else(|| format!("'{uri}' is neither s3://, https:// nor file://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let root = self.0.get(bucket).ok_or_else(|| {
            format!("bucket '{bucket}' of '{uri}' is not configured on this agent (--bucket {bucket}=DIR)")
        })?;
        Ok(root.join(key))
    }
}

/// Copies what an S3 prefix names into `dest`: a directory's whole tree, a single object, or every
/// object whose name starts with the prefix (S3 prefix semantics). Returns the number of files.
pub fn stage(source: &Path, dest: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dest)?;
    if source.is_dir() {
        return copy_tree(source, dest);
    }
    if source.is_file() {
        let name = source.file_name().unwrap_or_default();
        std::fs::copy(source, dest.join(name))?;
        return Ok(1);
    }
    let (Some(parent), Some(prefix)) = (source.parent(), source.file_name().and_then(|p| p.to_str())) else {
        return Ok(0);
    };
    let mut count = 0;
    if parent.is_dir() {
        for entry in std::fs::read_dir(parent)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let path = entry.path();
                if path.is_dir() {
                    count += copy_tree(&path, &dest.join(entry.file_name()))?;
                } else {
                    std::fs::copy(&path, dest.join(entry.file_name()))?;
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}

pub fn copy_tree(source: &Path, dest: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dest)?;
    let mut count = 0;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let target = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            count += copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Packs the contents of `dir` into a gzipped tar at `archive` (its parent is created).
pub fn pack(dir: &Path, archive: &Path) -> io::Result<()> {
    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(archive)?;
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    tar.append_dir_all(".", dir)?;
    tar.into_inner()?.finish()?.sync_all()
}

/// `<output>/<job>/output/<name>` as a URI (for ModelArtifacts) and as a local path.
pub fn artifact(buckets: &Buckets, output_uri: &str, job: &str, name: &str) -> Result<(String, PathBuf), String> {
    let base = output_uri.trim_end_matches('/');
    let uri = format!("{base}/{job}/output/{name}");
    let path = buckets.resolve(&uri)?;
    Ok((uri, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_resolve_through_buckets() {
        let b = Buckets(BTreeMap::from([("data".to_string(), PathBuf::from("/srv/data"))]));
        assert_eq!(b.resolve("s3://data/a/b/").expect("ok"), PathBuf::from("/srv/data/a/b/"));
        assert_eq!(b.resolve("file:///tmp/x").expect("ok"), PathBuf::from("/tmp/x"));
        assert!(b.resolve("s3://other/x").expect_err("unknown").contains("--bucket other=DIR"));
        assert!(b.resolve("ftp://x").is_err());
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

        pack(&src.join("train"), &dir.path().join("out/model.tar.gz")).expect("pack");
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
    }
}
