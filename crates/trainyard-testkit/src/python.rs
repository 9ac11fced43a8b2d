//! Python packages from PyPI that the tests and benchmarks drive (moto, the AWS CLI, AWS's training
//! toolkits, PyTorch): each set in a virtualenv of its own under the target directory, created once
//! per machine and kept between runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Written last into a virtualenv whose install succeeded: the packages asked for, one a line. A
/// virtualenv without it (an install cut short) or with another list is made again.
const INSTALLED: &str = ".trainyard-installed";

/// A virtualenv under the target directory (or `TRAINYARD_<NAME>_VENV`, used as it is) with
/// `packages` installed from PyPI; concurrent tests wait on a lock file while one installs.
pub fn venv_with(name: &str, packages: &[&str]) -> PathBuf {
    if let Some(dir) = std::env::var_os(format!("TRAINYARD_{}_VENV", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // A binary copied out of the target directory (an A/B run of the bench) still uses the
    // workspace's: not the temporary directory, which instances do not see (theirs is private),
    // and where a second copy of torch would go.
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let target = exe
        .ancestors()
        .find(|p| p.ends_with("target"))
        .map(PathBuf::from)
        .or_else(|| workspace_target.is_dir().then_some(workspace_target))
        .unwrap_or_else(std::env::temp_dir);
    let venv = target.join(format!("{name}-venv"));
    let wanted = packages.join("\n");
    let ready = |venv: &Path| std::fs::read_to_string(venv.join(INSTALLED)).is_ok_and(|text| text == wanted);
    if ready(&venv) {
        return venv;
    }
    std::fs::create_dir_all(&target).expect("target dir");
    let lock = std::fs::File::create(venv.with_extension("lock")).expect("lock file");
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    if !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
        // The system's interpreter where there is one: jobs (each a uid of its own) run programs
        // from these virtualenvs, and an interpreter under a 0700 home is out of their reach.
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let status = Command::new(python).args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(status.success(), "creating the {name} virtualenv failed");
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"])
            .args(packages)
            .output()
            .expect("pip install");
        assert!(
            out.status.success(),
            "installing {packages:?} from PyPI failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut marker = std::fs::File::create(venv.join(INSTALLED)).expect("marker");
        marker.write_all(wanted.as_bytes()).expect("marker");
    }
    drop(lock);
    venv
}

/// AWS's SageMaker training toolkit (`sagemaker-training`): its `train` is a script-mode image's
/// entry point.
pub fn sagemaker_training() -> PathBuf {
    venv_with("sagemaker-training", &["sagemaker-training"])
}

/// PyTorch (CPU is all the tests use; the PyPI wheel brings its CUDA libraries, 3.4 GB, as it
/// imports nothing without them) with `torchrun`, and AWS's PyTorch training toolkit, which
/// launches `torchrun` on every host for the SDK's `torch_distributed` distribution.
pub fn pytorch() -> PathBuf {
    venv_with("torch", &["torch==2.5.1", "sagemaker-pytorch-training==3.0.0"])
}

/// The SageMaker Python SDK (`sagemaker` 2.x): Estimator, HyperparameterTuner, analytics.
pub fn sagemaker_sdk() -> PathBuf {
    venv_with("sagemaker-sdk", &["sagemaker==2.*"])
}
