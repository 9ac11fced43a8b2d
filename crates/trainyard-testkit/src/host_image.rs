//! Container images made of the host's own files, for tests that need more than busybox (Python and
//! what a virtualenv holds): the files are copied into one uncompressed layer at the same paths,
//! with the shared libraries the programs and extension modules load (found with `ldd`), plus
//! busybox for `/bin/sh`. Written as an OCI image layout archive (for `ctr images import`) and kept
//! under `target/` while its sources do not change.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// What a minimal distribution's image has, and what the toolkit calls (`which`, `/bin/sh`).
const APPLETS: [&str; 40] = [
    "sh", "cat", "ls", "env", "id", "sleep", "which", "grep", "sed", "tr", "head", "tail", "mkdir", "rm", "cp", "mv",
    "wc", "uname", "hostname", "awk", "chmod", "ln", "nproc", "cut", "sort", "tee", "touch", "true", "false", "test",
    "ps", "tar", "gzip", "find", "xargs", "dirname", "basename", "readlink", "echo", "[",
];

/// What goes into the image.
pub struct HostImage<'a> {
    /// Files and directories of the host (copied whole, links kept as links, `__pycache__` left out).
    pub host_paths: Vec<PathBuf>,
    /// Files written into the image: path, contents, mode.
    pub files: Vec<(&'a str, &'a str, u32)>,
    /// The image config's `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// The image config's `Entrypoint` (empty: none, `train` is the command).
    pub entrypoint: Vec<String>,
}

impl HostImage<'_> {
    /// The image as an archive in `dir`, named `reference`: built unless an archive of the same
    /// definition, newer than every host path, is there already.
    pub fn archive(&self, dir: &Path, reference: &str) -> PathBuf {
        let definition =
            format!("{reference}{:?}{:?}{:?}{:?}{APPLETS:?}", self.host_paths, self.files, self.env, self.entrypoint);
        let name = &crate::containerd::digest(definition.as_bytes())[7..19];
        std::fs::create_dir_all(dir).expect("image dir");
        let archive = dir.join(format!("host-image-{name}.tar"));
        // One test builds it; others wait for it.
        let lock = std::fs::File::create(archive.with_extension("lock")).expect("lock file");
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        unsafe {
            libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
        }
        if !self.is_fresh(&archive) {
            self.write(&archive, reference);
        }
        archive
    }

    fn write(&self, archive: &Path, reference: &str) {
        let partial = archive.with_extension("partial");
        let layer_path = archive.with_extension("layer");
        let mut layer = tar::Builder::new(std::fs::File::create(&layer_path).expect("layer file"));
        layer.follow_symlinks(false);
        let mut written = BTreeSet::new();
        for dir in ["bin", "etc", "tmp", "opt", "opt/ml", "usr", "usr/bin", "usr/lib", "lib", "lib64"] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
            header.set_size(0);
            header.set_mtime(0);
            layer.append_data(&mut header, dir, std::io::empty()).expect("dir");
            written.insert(PathBuf::from("/").join(dir));
        }
        let busybox = Path::new("/bin/busybox");
        append_path(&mut layer, busybox, &mut written);
        for applet in APPLETS {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            header.set_mtime(0);
            layer.append_link(&mut header, format!("bin/{applet}"), "busybox").expect("applet");
        }
        let mut libraries = BTreeSet::new();
        for path in &self.host_paths {
            for file in walk(&lexically_normal(path)) {
                if file.extension().is_some_and(|e| e == "so")
                    || file.to_string_lossy().contains(".so.")
                    || is_executable(&file)
                {
                    libraries.extend(shared_libraries(&file));
                }
                append_path(&mut layer, &file, &mut written);
            }
        }
        for library in libraries {
            // The link ldd names (`$ORIGIN/../x` as it is), and what it points to.
            let mut target = lexically_normal(&library);
            append_path(&mut layer, &target, &mut written);
            while let Ok(next) = std::fs::read_link(&target) {
                target = lexically_normal(&target.parent().unwrap_or(Path::new("/")).join(next));
                append_path(&mut layer, &target, &mut written);
            }
        }
        for (path, contents, mode) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            layer.append_data(&mut header, path.trim_start_matches('/'), contents.as_bytes()).expect("file");
        }
        layer.into_inner().expect("layer").flush().expect("flush");
        let (layer_digest, layer_size) = digest_file(&layer_path);
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": self.env, "Entrypoint": self.entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::containerd::MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": crate::containerd::digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        })
        .to_string()
        .into_bytes();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": crate::containerd::MANIFEST_TYPE, "digest": crate::containerd::digest(&manifest),
                           "size": manifest.len(), "annotations": {"io.containerd.image.name": reference}}],
        })
        .to_string()
        .into_bytes();
        let mut out = tar::Builder::new(std::fs::File::create(&partial).expect("archive"));
        let mut add = |path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            out.append_data(&mut header, path, bytes).expect("blob");
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &index);
        add(&format!("blobs/sha256/{}", &crate::containerd::digest(&config)[7..]), &config);
        add(&format!("blobs/sha256/{}", &crate::containerd::digest(&manifest)[7..]), &manifest);
        let mut header = tar::Header::new_gnu();
        header.set_size(layer_size);
        header.set_mode(0o644);
        header.set_mtime(0);
        let layer_file = std::fs::File::open(&layer_path).expect("layer");
        out.append_data(&mut header, format!("blobs/sha256/{}", &layer_digest[7..]), layer_file).expect("layer blob");
        out.finish().expect("archive");
        let _ = std::fs::remove_file(&layer_path);
        std::fs::rename(&partial, archive).expect("archive in place");
    }

    fn is_fresh(&self, archive: &Path) -> bool {
        let Ok(built) = std::fs::metadata(archive).and_then(|m| m.modified()) else { return false };
        self.host_paths.iter().all(|p| std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|m| m < built))
    }
}

/// `path` without `.` and `..` components (not resolving links: `/usr/bin/python3` stays a link).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every file, link and directory under `path` (itself included), `__pycache__` left out.
fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Vec::new() };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            out.extend(walk(&entry));
        }
    }
    out
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The libraries `ldd` says `file` loads (nothing for a script or a static binary).
fn shared_libraries(file: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(file).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect()
}

/// Appends one host path (its parent dirs first), once.
fn append_path<W: Write>(layer: &mut tar::Builder<W>, path: &Path, written: &mut BTreeSet<PathBuf>) {
    if written.contains(path) {
        return;
    }
    if let Some(parent) = path.parent()
        && parent != Path::new("/")
        && !written.contains(parent)
    {
        append_path(layer, parent, written);
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let name = path.strip_prefix("/").unwrap_or(path);
    if meta.is_dir() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        layer.append_data(&mut header, name, std::io::empty()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    } else {
        layer.append_path_with_name(path, name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    written.insert(path.to_path_buf());
}

fn digest_file(path: &Path) -> (String, u64) {
    let mut file = std::fs::File::open(path).expect("layer");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    (format!("sha256:{}", hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()), size)
}
