//! The input files an instance shares with others: hard links to the input cache's one copy of an
//! object (root's, mode 0644), made when its channels were staged. They are not the instance's
//! disk (the cache's own bound covers them), so its volume is not charged for them; and an
//! instance that runs as the cache's owner (a container run as root with `--root-images`, or any
//! instance of an agent without instance uids) could write through them into what other
//! instances read, so such an instance gets private copies instead.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// A file by device and inode: what a link shares with its target.
pub type FileId = (u64, u64);

#[derive(Debug, Default)]
pub struct SharedInputs {
    files: Vec<(PathBuf, FileId)>,
}

impl SharedInputs {
    /// Notes which of the files just staged are links to the cache. Called while the agent alone
    /// has written the work dir (before the job runs), so what a file is now is what the agent made.
    pub fn note(&mut self, staged: &[PathBuf]) {
        use std::os::unix::fs::MetadataExt;
        for path in staged {
            if let Ok(m) = std::fs::symlink_metadata(path)
                && m.is_file()
                && m.nlink() > 1
            {
                self.files.push((path.clone(), (m.dev(), m.ino())));
            }
        }
    }

    /// The files the volume is not charged for.
    pub fn ids(&self) -> HashSet<FileId> {
        self.files.iter().map(|(_, id)| *id).collect()
    }

    /// Replaces each link with a private copy of what it links to (written beside it, renamed over
    /// it), before the instance starts, on a blocking thread (a channel can be gigabytes). Its
    /// volume is charged for the copies, as SageMaker's is for File-mode data.
    pub async fn make_private(&mut self) -> Result<(), String> {
        let files = std::mem::take(&mut self.files);
        if files.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || files.iter().try_for_each(|(path, _)| copy_over(path)))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Replaces the file at `path` by a copy of itself (its mode too) with a link count of one.
fn copy_over(path: &Path) -> Result<(), String> {
    let what = path.display().to_string();
    let copying = |e: io::Error| format!("copying {what}: {e}");
    let mut from = std::fs::File::open(path).map_err(copying)?;
    let permissions = from.metadata().map_err(copying)?.permissions();
    crate::storage::replace_with(path, &what, |copy| {
        io::copy(&mut from, copy).and_then(|_| copy.set_permissions(permissions)).map_err(copying)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[tokio::test]
    async fn links_to_the_cache_are_noted_and_made_private_copies() {
        let dir = tempfile::tempdir().expect("dir");
        let cached = dir.path().join("cached");
        std::fs::write(&cached, "the cache's copy").expect("write");
        let channel = dir.path().join("train");
        std::fs::create_dir(&channel).expect("mkdir");
        let (linked, own) = (channel.join("part-0"), channel.join("part-1"));
        std::fs::hard_link(&cached, &linked).expect("link");
        std::fs::write(&own, "fetched for this instance alone").expect("write");

        let mut shared = SharedInputs::default();
        shared.note(&[linked.clone(), own.clone(), channel.join("gone")]);
        let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).expect("stat");
        assert_eq!(shared.ids(), HashSet::from([id(&cached)]), "only the link to the cache");

        shared.make_private().await.expect("copies");
        assert!(shared.ids().is_empty());
        assert_eq!(std::fs::read_to_string(&linked).expect("read"), "the cache's copy");
        assert_ne!(id(&linked), id(&cached), "a copy of its own");
        std::fs::write(&linked, "changed by the instance").expect("write");
        assert_eq!(std::fs::read_to_string(&cached).expect("read"), "the cache's copy", "the cache is untouched");
        assert_eq!(std::fs::metadata(&cached).expect("stat").nlink(), 1);
        assert_eq!(std::fs::read_dir(&channel).expect("list").count(), 2, "no temporary file left");
    }
}
