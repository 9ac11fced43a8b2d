//! Files inside a job's work dir, as the agent (root) reads and writes them: never through a link
//! the job could have planted. Every path is resolved by the kernel beneath a directory opened
//! once, refusing symbolic links in any component, `..` and magic links (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), so that a link swapped in
//! between a check and a use is refused too. Only regular files are read (a FIFO would block the
//! agent), and a walk is bounded in entries and depth.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Entries a walk lists at most (a job could create millions of files to stall the upload).
pub const MAX_ENTRIES: usize = 100_000;
/// Directory depth a walk descends to at most.
pub const MAX_DEPTH: usize = 64;

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Refuses anything but a regular file (a FIFO would block the agent, a device is not data).
fn regular_only(fd: &OwnedFd, relative: &Path) -> io::Result<()> {
    if FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode) != FileType::RegularFile {
        let message = format!("{} is not a regular file", relative.display());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    Ok(())
}

/// A directory a job can write to, opened by the agent.
pub struct Confined {
    root: OwnedFd,
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Directory(PathBuf),
    File {
        path: PathBuf,
        size: u64,
        mode: u32,
    },
    /// A symbolic link and what it points to (never followed).
    Link {
        path: PathBuf,
        target: PathBuf,
    },
    /// A FIFO, socket or device: never read.
    Other(PathBuf),
}

impl Confined {
    /// Opens `dir`. `dir` itself is the agent's own path (the work root's), but its last component
    /// must not be a link.
    pub fn open(dir: &Path) -> io::Result<Confined> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rustix::fs::open(dir, flags, Mode::empty())?;
        Ok(Confined { root })
    }

    fn open_at(&self, relative: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
        Ok(rustix::fs::openat2(&self.root, relative, flags | OFlags::CLOEXEC | OFlags::NOCTTY, mode, resolve())?)
    }

    /// A regular file beneath the directory, for reading. Anything else (a link anywhere on the
    /// way, a FIFO, a directory) is an error.
    pub fn open_file(&self, relative: &Path) -> io::Result<File> {
        let fd = self.open_at(relative, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK, Mode::empty())?;
        regular_only(&fd, relative)?;
        // Reads of a regular file never block; clear O_NONBLOCK anyway for the readers' sake.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok(File::from(fd))
    }

    /// Appends to a regular file beneath the directory, creating it (mode 0644) if needed.
    pub fn append(&self, relative: &Path) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        let fd = self.open_at(relative, flags, Mode::from_raw_mode(0o644))?;
        regular_only(&fd, relative)?;
        Ok(File::from(fd))
    }

    /// At most `limit` bytes from the start of a regular file beneath the directory.
    pub fn read_prefix(&self, relative: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_file(relative)?.take(limit).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Everything beneath `relative` (a directory), depth first, sorted by path, without following
    /// links; at most [`MAX_ENTRIES`] entries and [`MAX_DEPTH`] levels, else an error that says so.
    pub fn walk(&self, relative: &Path) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        self.walk_into(relative, 0, &mut entries)?;
        Ok(entries)
    }

    /// What is stored beneath `relative` (a directory), in bytes: each regular file at its full
    /// length (a sparse one too, as it would be packed and uploaded whole) or its blocks if more,
    /// each directory's blocks, and every entry (links and special files too) at least 4 KiB;
    /// what a link points to is not counted, nor the files `shared` names by device and inode (the
    /// input cache's, linked in when the instance was staged, however many links to them the
    /// instance makes). Stops counting once past `stop_above`. Unlike [`Confined::walk`] it lists
    /// nothing and has no bound on entries (what it costs is the caller's to pace); depth is
    /// bounded by [`MAX_DEPTH`], deeper is an error of kind `InvalidData`.
    pub fn bytes_beneath(&self, relative: &Path, stop_above: u64, shared: &HashSet<(u64, u64)>) -> io::Result<u64> {
        let dir = self.open_at(relative, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())?;
        let mut total = 0;
        bytes_in(&dir, 0, stop_above, shared, &mut total)?;
        Ok(total)
    }

    fn walk_into(&self, relative: &Path, depth: usize, out: &mut Vec<Entry>) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!("{} is nested deeper than {MAX_DEPTH} levels", relative.display())));
        }
        let dir = self.open_at(relative, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            if out.len() >= MAX_ENTRIES {
                return Err(io::Error::other(format!("more than {MAX_ENTRIES} files and directories")));
            }
            let name = OsStr::from_bytes(&name);
            let path = relative.join(name);
            let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    out.push(Entry::Directory(path.clone()));
                    self.walk_into(&path, depth + 1, out)?;
                }
                FileType::RegularFile => {
                    out.push(Entry::File { path, size: stat.st_size as u64, mode: stat.st_mode & 0o7777 })
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
                    out.push(Entry::Link { path, target: PathBuf::from(OsStr::from_bytes(target.as_bytes())) });
                }
                _ => out.push(Entry::Other(path)),
            }
        }
        Ok(())
    }
}

/// Adds what `dir` holds to `total` (see [`Confined::bytes_beneath`]). Entries the job removes or
/// swaps for a link while they are counted are skipped: the next count sees what took their place.
fn bytes_in(
    dir: &OwnedFd,
    depth: usize,
    stop_above: u64,
    shared: &HashSet<(u64, u64)>,
    total: &mut u64,
) -> io::Result<()> {
    use rustix::io::Errno;
    if depth > MAX_DEPTH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("directories nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let gone = |e: &Errno| matches!(*e, Errno::NOENT | Errno::LOOP | Errno::NOTDIR);
    for entry in rustix::fs::Dir::read_from(dir)? {
        if *total > stop_above {
            break;
        }
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let file_type = FileType::from_raw_mode(stat.st_mode);
        // The input cache's copy, shared between instances (bounded by the cache's own size): not
        // this instance's disk. Known by its inode, not by its owner or links: a job run as root
        // makes root's files with other links too.
        if file_type == FileType::RegularFile && shared.contains(&(stat.st_dev, stat.st_ino)) {
            continue;
        }
        let blocks = (stat.st_blocks as u64).saturating_mul(512);
        let length = if file_type == FileType::RegularFile { stat.st_size as u64 } else { 0 };
        // Every entry takes an inode: charged a block at least, so that millions of empty files
        // (which would exhaust the host's inodes) fill a volume too.
        *total = total.saturating_add(length.max(blocks).max(MIN_ENTRY_BYTES));
        if file_type == FileType::Directory {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(dir, name, flags, Mode::empty()) {
                Ok(child) => bytes_in(&child, depth + 1, stop_above, shared, total)?,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// What any file, directory, link or special file is charged at least by [`Confined::bytes_beneath`].
const MIN_ENTRY_BYTES: u64 = 4096;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A work dir as a hostile job leaves it: links to a secret outside, a link in the middle of a
    /// path, a FIFO, and an ordinary file.
    fn hostile() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "the agent's key").expect("write");
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("model/sub")).expect("mkdir");
        std::fs::write(work.join("model/weights.bin"), "weights").expect("write");
        std::fs::write(work.join("model/sub/extra.txt"), "extra").expect("write");
        symlink(&secret, work.join("model/key.pem")).expect("link");
        symlink(dir.path(), work.join("model/outside")).expect("link to a directory");
        std::fs::create_dir_all(work.join("output")).expect("mkdir");
        symlink(&secret, work.join("output/failure")).expect("link");
        symlink(dir.path(), work.join("escape")).expect("link");
        let fifo = std::ffi::CString::new(work.join("model/pipe").as_os_str().as_bytes()).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        (dir, work)
    }

    #[test]
    fn links_are_never_followed_and_only_regular_files_are_read() {
        let (_dir, work) = hostile();
        let c = Confined::open(&work).expect("open");
        assert_eq!(c.read_prefix(Path::new("model/weights.bin"), 100).expect("read"), b"weights");
        assert_eq!(c.read_prefix(Path::new("model/weights.bin"), 3).expect("read"), b"wei");
        for refused in [
            "output/failure",
            "model/key.pem",
            "escape/secret",
            "model/outside/secret",
            "../secret",
            "model/pipe",
            "model",
        ] {
            assert!(c.open_file(Path::new(refused)).is_err(), "{refused} was opened");
        }
        assert!(c.append(Path::new("output/failure")).is_err(), "appending through a link");
        assert!(c.append(Path::new("escape/new")).is_err(), "creating through a linked directory");
        let mut log = c.append(Path::new("output/training.log")).expect("a new file");
        std::io::Write::write_all(&mut log, b"line\n").expect("write");
        assert_eq!(std::fs::read(work.join("output/training.log")).expect("read"), b"line\n");
        assert!(Confined::open(&work.join("escape")).is_err(), "the directory itself must not be a link");
    }

    #[test]
    fn a_walk_lists_links_as_links_and_never_enters_them() {
        let (dir, work) = hostile();
        let c = Confined::open(&work).expect("open");
        let entries = c.walk(Path::new("model")).expect("walk");
        assert_eq!(
            entries,
            vec![
                Entry::Link { path: "model/key.pem".into(), target: dir.path().join("secret") },
                Entry::Link { path: "model/outside".into(), target: dir.path().to_path_buf() },
                Entry::Other("model/pipe".into()),
                Entry::Directory("model/sub".into()),
                Entry::File { path: "model/sub/extra.txt".into(), size: 5, mode: 0o644 },
                Entry::File { path: "model/weights.bin".into(), size: 7, mode: 0o644 },
            ]
        );
        assert!(c.walk(Path::new("escape")).is_err(), "a linked directory is not walked");
    }

    #[test]
    fn what_a_work_dir_stores_is_counted_without_following_links() {
        let (dir, work) = hostile();
        // The secret outside, however large, is reached only through links: not counted.
        std::fs::write(dir.path().join("secret"), vec![7u8; 1 << 20]).expect("write");
        let confined = Confined::open(&work).expect("open");
        let none = HashSet::new();
        let before = confined.bytes_beneath(Path::new(""), u64::MAX, &none).expect("count");
        assert!(before < 64 * 1024, "the files and directories' blocks only: {before}");
        // A sparse file counts at its full length.
        let sparse = std::fs::File::create(work.join("model/sparse.bin")).expect("create");
        sparse.set_len(3 << 30).expect("truncate");
        let after = confined.bytes_beneath(Path::new(""), u64::MAX, &none).expect("count");
        assert!(after >= before + (3 << 30), "{after}");
        // A file of the input cache, linked in (and linked again by the job), is the cache's: not
        // charged. Another file with other links, root's as the cache's are, is.
        use std::os::unix::fs::MetadataExt;
        let cached = dir.path().join("cached");
        std::fs::write(&cached, vec![1u8; 1 << 20]).expect("write");
        std::fs::create_dir_all(work.join("input/data/train")).expect("mkdir");
        std::fs::hard_link(&cached, work.join("input/data/train/part-0")).expect("link");
        std::fs::hard_link(&cached, work.join("input/data/train/again")).expect("link");
        let id = std::fs::metadata(&cached).map(|m| (m.dev(), m.ino())).expect("stat");
        let shared = HashSet::from([id]);
        let input = confined.bytes_beneath(Path::new("input"), u64::MAX, &shared).expect("count");
        assert!(input < 1 << 20, "{input}");
        let charged = confined.bytes_beneath(Path::new("input"), u64::MAX, &none).expect("count");
        assert!(charged >= 2 << 20, "not the cache's, each link counted: {charged}");
        std::fs::write(work.join("input/hidden"), vec![1u8; 1 << 20]).expect("write");
        std::fs::hard_link(work.join("input/hidden"), dir.path().join("hidden-alias")).expect("link");
        let with_hidden = confined.bytes_beneath(Path::new("input"), u64::MAX, &shared).expect("count");
        assert!(with_hidden >= input + (1 << 20), "a file with other links of its own is charged: {with_hidden}");
        // Empty files cost the disk inodes: each is charged a block.
        std::fs::create_dir_all(work.join("output/many")).expect("mkdir");
        for i in 0..100 {
            std::fs::File::create(work.join(format!("output/many/{i}"))).expect("create");
        }
        let with_empty = confined.bytes_beneath(Path::new("output/many"), u64::MAX, &none).expect("count");
        assert!(with_empty >= 100 * 4096, "{with_empty}");
        // Counting stops once past the bound (the rest of the tree is not read).
        let bounded = confined.bytes_beneath(Path::new(""), 1 << 30, &none).expect("count");
        assert!(bounded > 1 << 30);
        // Deeper than the bound is an error, not a hiding place.
        let mut deep = work.join("output");
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("mkdir");
        let refused = confined.bytes_beneath(Path::new("output"), u64::MAX, &none).expect_err("too deep");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }
}
