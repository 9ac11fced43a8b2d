//! Host-wide lock files (`flock`), shared by every agent on a host: a uid per instance
//! ([`crate::uids`]) and the agents using the host's nftables table ([`crate::network::host`]). A
//! lock dies with the process that held it, so a file nobody locks was left by an agent that died.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens (creating it, 0600) the lock file at `path`, never through a symbolic link.
pub fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
