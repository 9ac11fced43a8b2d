//! A throwaway PostgreSQL server: `initdb` in a temp dir, started on a free loopback port with
//! durability off (tests need speed, not crash safety), reached over TLS only (as deployed),
//! stopped with `-m immediate` when dropped. Missing binaries are a test failure, never a silent
//! skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::free_port;

pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    options: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The CA certificate clients verify the server with, in the server's dir.
const CA_FILE: &str = "ca.crt";

impl PgServer {
    /// Starts a server. Panics with the reason if it cannot (tests must not skip PostgreSQL).
    /// Commits are not flushed (fast, and enough while the server process lives).
    pub fn start() -> PgServer {
        Self::start_with("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    }

    /// A server whose commits survive its own crash (`restart_immediately`): synchronous commit.
    pub fn start_durable() -> PgServer {
        Self::start_with("-c fsync=off -c synchronous_commit=on")
    }

    fn start_with(durability: &str) -> PgServer {
        let bin = std::env::var_os("TRAINYARD_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL binaries not found in {} (set TRAINYARD_PG_BIN, or run .ci/run which installs postgresql-15)",
            bin.display()
        );
        let dir = tempfile::Builder::new().prefix("trainyard-pg-").tempdir().expect("temp dir");
        // As deployed: clients reach it over TLS only (the server's certificate is issued by a CA
        // of the test's, which `url()` tells clients to verify).
        let authority = trainyard_pki::Authority::load_or_create(&dir.path().join("ca")).expect("CA");
        let credential = authority
            .issue_server_credential(&["127.0.0.1".to_string(), "localhost".to_string()], Duration::from_secs(86_400))
            .expect("server certificate");
        std::fs::write(dir.path().join("server.crt"), &credential.certificate_pem).expect("certificate");
        std::fs::write(dir.path().join("server.key"), &credential.key_pem).expect("key");
        std::fs::set_permissions(dir.path().join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(dir.path().join(CA_FILE), authority.certificate_pem()).expect("CA certificate");
        // The CA's own key is not the server's business.
        let _ = std::fs::remove_dir_all(dir.path().join("ca"));
        // PostgreSQL refuses to run as root: as root, hand the directory to the postgres user.
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()));
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {d} -c listen_addresses=127.0.0.1 {durability} -c max_connections=200 \
             -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key -c hba_file={d}/pg_hba.conf",
            d = dir.path().display()
        );
        // TCP without TLS is refused; the tools' Unix socket stays open.
        std::fs::write(
            dir.path().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba.conf");
        let server = PgServer { bin, port, dir, as_postgres, options };
        let data = server.dir.path().join("data");
        server.run_tool(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        server.pg_start();
        server
    }

    fn pg_start(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                self.options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
    }

    /// Kills the server as a crash would (`-m immediate`: no checkpoint, connections cut) and
    /// starts it again on the same data and port; returns once it accepts connections.
    pub fn restart_immediately(&self) {
        self.stop_immediately();
        self.pg_start();
    }

    /// Stops the server as a crash would (`-m immediate`), until [`PgServer::start_again`].
    pub fn stop_immediately(&self) {
        let data = self.dir.path().join("data");
        self.run_tool(
            "pg_ctl",
            &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "-w".as_ref(), "stop".as_ref()],
        );
    }

    /// Starts a server stopped with [`PgServer::stop_immediately`] on the same data and port.
    pub fn start_again(&self) {
        self.pg_start();
    }

    /// The server's main process (its backends are its children), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the default database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    fn url_of(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca_file().display()
        )
    }

    /// The same database without TLS, which this server refuses (to show that clients use TLS).
    pub fn plain_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// The certificate of the CA that issued the server's.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(CA_FILE)
    }

    /// A new, empty database on this server; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        let port = self.port.to_string();
        self.run_tool(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                name.as_ref(),
            ],
        );
        self.url_of(&name)
    }

    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let program = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
