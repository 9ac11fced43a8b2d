//! Builds the fake `libnvidia-ml.so.1` (C, compiled with `cc`) that the tests load through the real
//! nvml-wrapper code path; there is no GPU on these machines. Which GPUs it reports is set by the
//! environment variable `FAKE_NVML_GPUS` of the process that loads it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SOURCE: &str = include_str!("../fake-nvml/fake_nvml.c");

/// Compiles the fake library into `dir` and returns its path.
pub fn build_fake_nvml(dir: &Path) -> PathBuf {
    let source = dir.join("fake_nvml.c");
    std::fs::write(&source, SOURCE).expect("write the fake NVML source");
    let library = dir.join("libnvidia-ml.so.1");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .expect("run cc (install gcc)");
    assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    library
}

/// The `FAKE_NVML_GPUS` value for `n` GPUs of one model.
pub fn gpus(n: usize, name: &str, memory_mib: u64) -> String {
    (0..n).map(|_| format!("{name}:{memory_mib}")).collect::<Vec<_>>().join(",")
}

/// The UUID the fake library reports for GPU `index`.
pub fn uuid(index: u32) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012}")
}

/// Fake device nodes for `n` GPUs and NVIDIA's control node in `dir` (character devices with
/// /dev/zero's numbers, open to all: reading one gives zeros), and a CDI spec in `dir/cdi` that
/// names them, as `nvidia-ctk cdi generate` does on a real host: GPU 0 by its NVML index, the
/// others by UUID, the control node and `FAKE_CDI=yes` for any of them. Returns the spec's dir.
pub fn fake_cdi(dir: &Path, n: u32) -> PathBuf {
    let node = |name: &str| {
        let path = dir.join(name);
        fake_device_node(&path);
        path.to_str().expect("utf-8").to_string()
    };
    let devices: Vec<serde_json::Value> = (0..n)
        .map(|index| {
            let name = if index == 0 { "0".to_string() } else { uuid(index) };
            let path = format!("/dev/nvidia{index}");
            serde_json::json!({"name": name, "containerEdits": {"deviceNodes": [{"path": path, "hostPath": node(&format!("nvidia{index}"))}]}})
        })
        .collect();
    let spec = serde_json::json!({
        "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {"env": ["FAKE_CDI=yes"], "deviceNodes": [{"path": "/dev/nvidiactl", "hostPath": node("nvidiactl")}]},
    });
    let cdi = dir.join("cdi");
    std::fs::create_dir(&cdi).expect("cdi dir");
    std::fs::write(cdi.join("nvidia.json"), spec.to_string()).expect("spec");
    cdi
}

/// A character device with /dev/zero's numbers at `path`, open to all (as `/dev/nvidia*` are on
/// most GPU hosts): reading it gives zeros.
pub fn fake_device_node(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let c_path = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: mknod on a NUL-terminated path the test owns.
    let made = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 5)) };
    assert_eq!(made, 0, "mknod {}", path.display());
    // The umask may have taken bits away.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
}
