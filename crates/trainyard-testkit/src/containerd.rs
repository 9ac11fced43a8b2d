//! A real containerd of the test's own (its root, state and socket in a temp dir; the CRI plugin
//! off), and OCI images the tests build themselves from the host's static busybox (imported into
//! the store, or pushed to the test's own registry: no registry outside this machine is reachable).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The containerd namespace agents use by default.
pub const NAMESPACE: &str = "trainyard";
/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts one (scripts/setup installs containerd, runc and busybox-static).
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("trainyard-containerd-").tempdir().expect("temp dir");
        let root = dir.path();
        let socket = root.join("containerd.sock");
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{r}/opt\"\n",
                r = root.display(),
                s = socket.display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/setup installs it)");
        let containerd = Containerd { child, socket, dir };
        let up = crate::wait_until(Duration::from_secs(20), || containerd.ctr(&["version"]).status.success());
        assert!(up, "containerd did not start: {}", containerd.log());
        containerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd, in the agents' namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args).output().expect("ctr")
    }

    /// `ctr` against this containerd, in the agents' namespace, to be started by the caller.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.socket).args(["--namespace", NAMESPACE]).args(args);
        command
    }

    /// Builds an image of busybox and `files` (path in the image, contents, mode) with this
    /// entrypoint, and imports it as `reference`.
    pub fn import_busybox_image(&self, reference: &str, entrypoint: &[&str], files: &[(&str, &str, u32)]) {
        let archive = self.dir.path().join(format!("{}.tar", reference.replace(['/', ':'], "_")));
        write_image(&archive, reference, entrypoint, files);
        let out = self.ctr(&["images", "import", archive.to_str().expect("utf-8")]);
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The ids of the containers in the agents' namespace.
    pub fn containers(&self) -> Vec<String> {
        self.ids("containers")
    }

    /// Imports an image layout archive (e.g. a `HostImage`'s).
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", archive.to_str().expect("utf-8")]);
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The names of the images in the agents' namespace.
    pub fn images(&self) -> Vec<String> {
        self.ids("images")
    }

    /// The ids `ctr <what> list` gives (tasks, containers).
    fn ids(&self, what: &str) -> Vec<String> {
        let out = self.ctr(&[what, "list", "--quiet"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    /// The snapshots in the agents' namespace (the images' committed ones included).
    pub fn snapshots(&self) -> Vec<String> {
        let out = self.ctr(&["snapshots", "list"]);
        String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::to_string).collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: tasks (a task can outlive its container's record), their
        // containers, then containerd itself.
        for id in self.ids("tasks") {
            let _ = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]);
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
        }
        for id in self.containers() {
            let _ = self.ctr(&["containers", "delete", &id]);
        }
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        // Shims outlive containerd by design: any still serving this one are killed, and the root
        // file systems they held are unmounted, so that the temp dir can go.
        kill_shims_of(&self.socket);
        unmount_beneath(self.dir.path());
    }
}

fn kill_shims_of(socket: &Path) {
    let socket = socket.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&socket) {
            // SAFETY: kill(2) on a shim this test's containerd started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn unmount_beneath(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p).starts_with(dir)).collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(path) = std::ffi::CString::new(point) {
            // SAFETY: umount2 on a NUL-terminated path.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn entry(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_path(path).expect("path");
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_cksum();
    header
}

/// An image of one layer (busybox, its applets, `files`), as a registry or an image layout holds it.
pub struct BusyboxImage {
    /// The gzipped layer.
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl BusyboxImage {
    /// `files`: path in the image, contents, mode.
    pub fn build(entrypoint: &[&str], files: &[(&str, &str, u32)]) -> BusyboxImage {
        let mut layer = tar::Builder::new(Vec::new());
        for (dir, mode) in [
            ("bin", 0o755),
            ("etc", 0o755),
            ("tmp", 0o1777),
            ("var", 0o755),
            ("var/tmp", 0o1777),
            ("opt", 0o755),
            ("opt/ml", 0o755),
        ] {
            layer.append(&entry(dir, tar::EntryType::Directory, mode, 0), std::io::empty()).expect("dir");
        }
        let busybox = std::fs::read(BUSYBOX).expect("busybox (scripts/setup installs busybox-static)");
        layer
            .append(&entry("bin/busybox", tar::EntryType::Regular, 0o755, busybox.len() as u64), &busybox[..])
            .expect("busybox");
        for applet in
            ["sh", "cat", "echo", "id", "ls", "mkdir", "sleep", "env", "kill", "head", "wc", "stat", "true", "dd", "cp"]
        {
            let mut link = entry(&format!("bin/{applet}"), tar::EntryType::Symlink, 0o777, 0);
            link.set_link_name("busybox").expect("link");
            link.set_cksum();
            layer.append(&link, std::io::empty()).expect("applet");
        }
        for (path, contents, mode) in files {
            layer
                .append(
                    &entry(path.trim_start_matches('/'), tar::EntryType::Regular, *mode, contents.len() as u64),
                    contents.as_bytes(),
                )
                .expect("file");
        }
        let tar = layer.into_inner().expect("layer");
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).expect("gzip");
        let layer = gzip.finish().expect("gzip");
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Entrypoint": entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": LAYER_TYPE, "digest": digest(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        BusyboxImage { layer, config, manifest }
    }

    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }

    pub fn layer_digest(&self) -> String {
        digest(&self.layer)
    }

    /// An index of this image's manifest (linux/amd64) and one for another platform that is
    /// never fetched.
    pub fn index(&self) -> Vec<u8> {
        serde_json::json!({
            "schemaVersion": 2, "mediaType": INDEX_TYPE,
            "manifests": [
                {"mediaType": MANIFEST_TYPE, "digest": digest(&self.manifest), "size": self.manifest.len(),
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": MANIFEST_TYPE, "digest": digest(&self.manifest), "size": self.manifest.len(),
                 "platform": {"architecture": "amd64", "os": "linux"}},
            ],
        })
        .to_string()
        .into_bytes()
    }
}

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An OCI image layout archive of the image, named `reference` for `ctr images import`.
fn write_image(archive: &Path, reference: &str, entrypoint: &[&str], files: &[(&str, &str, u32)]) {
    let image = BusyboxImage::build(entrypoint, files);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": MANIFEST_TYPE, "digest": digest(&image.manifest),
                       "size": image.manifest.len(), "annotations": {"io.containerd.image.name": reference}}],
    })
    .to_string()
    .into_bytes();
    let mut out = tar::Builder::new(std::fs::File::create(archive).expect("archive"));
    let mut blobs = vec![
        ("oci-layout".to_string(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_string(), index),
    ];
    for blob in [image.layer, image.config, image.manifest] {
        blobs.push((format!("blobs/sha256/{}", &digest(&blob)[7..]), blob));
    }
    for (path, bytes) in blobs {
        out.append(&entry(&path, tar::EntryType::Regular, 0o644, bytes.len() as u64), &bytes[..]).expect("blob");
    }
    out.finish().expect("archive");
}
