//! Test support shared by the store suite, the end-to-end tests and the benchmarks. Real parts only:
//! a real PostgreSQL server in a temp dir, the real binaries, real processes.

pub mod config_reference;
pub mod containerd;
pub mod host_image;
pub mod netns;
pub mod nvml;
pub mod postgres;
pub mod process;
pub mod python;
pub mod registry;
pub mod s3;

pub use postgres::PgServer;
pub use process::{Daemon, LogCheck, binary, free_port, poll_until, wait_until};

pub use libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM};
