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
