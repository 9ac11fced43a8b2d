//! Coordinator configuration: a TOML file, overridden by environment variables, overridden by
//! flags. Everything has a default, so `trainyard-coordinator` with no arguments serves on loopback
//! with a SQLite file in `./.trainyard`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use trainyard_model::catalog::{Catalog, InstanceSpec};
use trainyard_model::names::ArnContext;
use trainyard_model::rules::ServiceLimits;

#[derive(Debug, Parser)]
#[command(
    name = "trainyard-coordinator",
    version,
    about = "Trainyard coordinator: the API, the store and the scheduler's loop"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "TRAINYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "TRAINYARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database and other state.
    #[arg(long, env = "TRAINYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://...`; default: a SQLite file in the data directory.
    #[arg(long, env = "TRAINYARD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log format.
    #[arg(long, env = "TRAINYARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Also serve the SageMaker-compatible HTTP API (AWS JSON 1.1, SigV4) on this address.
    #[arg(long, env = "TRAINYARD_SAGEMAKER_LISTEN")]
    pub sagemaker_listen: Option<SocketAddr>,
    /// Also serve the web dashboard (HTTPS, signed in with an API token) on this address.
    #[arg(long, env = "TRAINYARD_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics, /healthz and /readyz (plain HTTP, no token) on this address.
    #[arg(long, env = "TRAINYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds without a heartbeat after which an agent is lost (default 8: four missed heartbeats).
    #[arg(long)]
    pub agent_lost_after_seconds: Option<u64>,
    /// Seconds an agent keeps running its instances without hearing from the coordinator, before
    /// it stops them itself (default 60). A lost agent's jobs are retried only after that.
    #[arg(long)]
    pub agent_lease_seconds: Option<u64>,
    /// Serve plain-text gRPC without authentication (no TLS, no tokens: every caller is an admin).
    /// Only on a loopback listen address; for `trainyard dev` and experiments.
    #[arg(long, env = "TRAINYARD_INSECURE")]
    pub insecure: bool,
    /// Another name or IP address clients reach the coordinator by, for its TLS certificate
    /// (repeatable). Agents and the CLI verify `coordinator.trainyard` whatever they dial.
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// Ended jobs (with their logs and metric samples) are deleted this long after they ended
    /// (default 90days; `off`: kept for ever).
    #[arg(long, env = "TRAINYARD_JOB_RETENTION")]
    pub job_retention: Option<String>,
    /// The logs and metric samples of ended jobs are deleted this long after the jobs ended
    /// (default: the job retention; `off`: kept as long as their jobs).
    #[arg(long, env = "TRAINYARD_LOG_RETENTION")]
    pub log_retention: Option<String>,
    /// Where clients and agents reach this coordinator (HOST:PORT), told to them by standbys when
    /// it leads (default: the listen address; this host's name when listening on every address).
    #[arg(long, env = "TRAINYARD_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Seconds a leader's lease lasts without renewal (renewed every third of it; default 6).
    /// Coordinators sharing a database wait this long after a leader dies before one takes over.
    #[arg(long)]
    pub leader_lease_seconds: Option<u64>,
    #[command(subcommand)]
    pub command: Option<AdminCommand>,
}

/// Administration without a running server, against the same data directory and database: how
/// the first admin token is made.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// API tokens for the CLI and other clients.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Print a token that lets one agent join (it receives its own certificate), valid 24 hours
    /// unless --expires-in says otherwise; --uses N for a batch of agents.
    JoinToken {
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
        /// How many agents may join with it (default: one).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The only agent id it joins.
        #[arg(long)]
        agent_id: Option<String>,
    },
    /// Copy the SQLite database to a new file while the coordinator runs (a consistent snapshot,
    /// what is still in the WAL included; 0600). Restore: stop the coordinator, put the copy at
    /// <data-dir>/trainyard.db (removing trainyard.db-wal and -shm), start it. On PostgreSQL, use
    /// pg_dump.
    Backup {
        /// The file to write (must not exist).
        #[arg(long)]
        to: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokensCommand {
    /// Create an API token and print it (it is shown once; only its hash is stored).
    Create {
        /// The user the token acts as: it sees and stops only this user's jobs (unless admin).
        #[arg(long)]
        user: String,
        /// read, submit or admin.
        #[arg(long)]
        scope: trainyard_model::access::Scope,
        #[arg(long, default_value = "")]
        description: String,
        /// e.g. 90d; default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Also print a SigV4 access key bound to the token, for the SageMaker-compatible endpoint.
        #[arg(long)]
        access_key: bool,
    },
    /// Every API and join token (without secrets).
    List,
    /// Revoke a token by id (a running coordinator notices within 5 seconds).
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The file's shape. Unknown keys are errors, so a typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    arn: Option<ArnConfig>,
    #[serde(default)]
    limits: Option<ServiceLimits>,
    /// Added to (or replacing, by name) the default instance-type catalog.
    #[serde(default)]
    instance_types: Vec<InstanceSpec>,
    sagemaker_listen: Option<SocketAddr>,
    dashboard_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    /// Access keys that may sign requests to the SageMaker-compatible endpoint.
    #[serde(default)]
    access_keys: Vec<AccessKey>,
    /// How often agents heartbeat (milliseconds).
    heartbeat_interval_ms: Option<u64>,
    /// An agent silent this long (seconds) is declared lost.
    agent_lost_after_seconds: Option<u64>,
    /// An agent cut off this long (seconds) stops its instances itself.
    agent_lease_seconds: Option<u64>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls_names: Vec<String>,
    /// Execution roles: what each RoleArn runs as and may read and write. None: not enforced.
    #[serde(default)]
    roles: Vec<trainyard_model::roles::ExecutionRole>,
    /// Use only `instance_types`, not the defaults.
    #[serde(default)]
    replace_default_instance_types: bool,
    /// How long ended jobs are kept ("90days"; "off").
    job_retention: Option<String>,
    /// How long the logs and metric samples of ended jobs are kept.
    log_retention: Option<String>,
    advertise_address: Option<String>,
    leader_lease_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessKey {
    id: String,
    secret: String,
    /// The user requests signed with this key act as (default: the key's id).
    user: Option<String>,
    /// read, submit (the default) or admin.
    scope: Option<trainyard_model::access::Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArnConfig {
    region: Option<String>,
    account: Option<String>,
}

/// The configuration in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub log_format: LogFormat,
    pub arns: ArnContext,
    pub limits: ServiceLimits,
    pub catalog: Catalog,
    pub heartbeat_interval: std::time::Duration,
    pub agent_lost_after: std::time::Duration,
    pub agent_lease: std::time::Duration,
    pub sagemaker_listen: Option<SocketAddr>,
    pub dashboard_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// Configured SigV4 access keys: id → its secret and who it acts as.
    pub access_keys: std::collections::BTreeMap<String, ConfiguredKey>,
    pub insecure: bool,
    pub tls_names: Vec<String>,
    pub roles: trainyard_model::roles::ExecutionRoles,
    /// None: kept for ever.
    pub job_retention: Option<std::time::Duration>,
    pub log_retention: Option<std::time::Duration>,
    /// What standbys tell clients to dial while this coordinator leads, when given; else see
    /// [`Config::advertised`].
    pub advertise_address: Option<String>,
    pub leader_lease: std::time::Duration,
}

/// A retention period: a duration (`90days`, `12h`), or `off`.
fn retention(flag: &str, value: &str) -> anyhow::Result<Option<std::time::Duration>> {
    if matches!(value.trim(), "off" | "never" | "0" | "0s") {
        return Ok(None);
    }
    humantime::parse_duration(value.trim())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag} '{value}': {e} (a duration such as 90days or 12h, or off)"))
}

/// An access key from `[[access_keys]]`.
#[derive(Debug, Clone)]
pub struct ConfiguredKey {
    pub secret: String,
    pub caller: trainyard_model::access::Caller,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// This host's name (empty when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

impl Config {
    /// What standbys tell clients to dial while this coordinator leads: `--advertise-address`, else
    /// the address it listens on (`bound`: the port it got when told port 0), with this host's
    /// name for an unspecified address.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertise_address.clone().unwrap_or_else(|| {
            if bound.ip().is_unspecified() { format!("{}:{}", hostname(), bound.port()) } else { bound.to_string() }
        })
    }

    pub fn load(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(".trainyard"));
        let database_url = flags
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("trainyard.db").display()));
        let mut arns = ArnContext::default();
        if let Some(arn) = file.arn {
            arns.region = arn.region.unwrap_or(arns.region);
            arns.account = arn.account.unwrap_or(arns.account);
        }
        let catalog = if file.replace_default_instance_types {
            Catalog::new(file.instance_types)
        } else {
            Catalog::default().with(file.instance_types)
        };
        let job_retention = match flags.job_retention.or(file.job_retention) {
            Some(value) => retention("--job-retention", &value)?,
            None => Some(std::time::Duration::from_secs(90 * 24 * 3600)),
        };
        let log_retention = match flags.log_retention.or(file.log_retention) {
            Some(value) => retention("--log-retention", &value)?,
            None => job_retention,
        };
        let listen: SocketAddr =
            flags.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
        let advertise_address = flags.advertise_address.or(file.advertise_address);
        Ok(Config {
            advertise_address,
            leader_lease: std::time::Duration::from_secs(
                flags.leader_lease_seconds.or(file.leader_lease_seconds).unwrap_or(6).max(2),
            ),
            job_retention,
            log_retention,
            listen,
            data_dir,
            database_url,
            log_format: flags.log_format.or(file.log_format).unwrap_or(LogFormat::Human),
            arns,
            limits: file.limits.unwrap_or_default(),
            catalog,
            sagemaker_listen: flags.sagemaker_listen.or(file.sagemaker_listen),
            dashboard_listen: flags.dashboard_listen.or(file.dashboard_listen),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            access_keys: file
                .access_keys
                .into_iter()
                .map(|k| {
                    let user = k.user.unwrap_or_else(|| k.id.clone());
                    let scope = k.scope.unwrap_or(trainyard_model::access::Scope::Submit);
                    let caller = trainyard_model::access::Caller { user, scope };
                    (k.id, ConfiguredKey { secret: k.secret, caller })
                })
                .collect(),
            insecure: flags.insecure || file.insecure,
            roles: trainyard_model::roles::ExecutionRoles::new(file.roles)
                .map_err(|e| anyhow::anyhow!("[[roles]] in the configuration: {e}"))?,
            tls_names: flags.tls_names.into_iter().chain(file.tls_names).collect(),
            heartbeat_interval: std::time::Duration::from_millis(file.heartbeat_interval_ms.unwrap_or(2_000).max(100)),
            agent_lost_after: std::time::Duration::from_secs(
                flags.agent_lost_after_seconds.or(file.agent_lost_after_seconds).unwrap_or(8).max(1),
            ),
            agent_lease: std::time::Duration::from_secs(
                flags.agent_lease_seconds.or(file.agent_lease_seconds).unwrap_or(60).max(1),
            ),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration reference, and the tables whose keys it must name.
    const EXAMPLE: &str = "/../../deploy/coordinator.example.toml";
    const TABLES: &[&str] = &["", "[arn]", "[limits]", "[[access_keys]]", "[[roles]]", "[[instance_types]]"];

    /// The example file is the configuration reference: it names every key the file may hold.
    #[test]
    fn the_example_names_every_configuration_key() {
        let example = std::fs::read_to_string(format!("{}{EXAMPLE}", env!("CARGO_MANIFEST_DIR"))).expect("example");
        let missing = trainyard_testkit::config_reference::keys_not_named::<FileConfig>(&example, TABLES);
        assert!(missing.is_empty(), "keys the example does not name: {missing:?}");
    }

    fn flags(config: Option<PathBuf>) -> Flags {
        Flags {
            config,
            listen: None,
            data_dir: None,
            database_url: None,
            log_format: None,
            agent_lost_after_seconds: None,
            agent_lease_seconds: None,
            sagemaker_listen: None,
            dashboard_listen: None,
            metrics_listen: None,
            insecure: false,
            tls_names: Vec::new(),
            job_retention: None,
            log_retention: None,
            advertise_address: None,
            leader_lease_seconds: None,
            command: None,
        }
    }

    #[test]
    fn retention_is_ninety_days_unless_configured_and_off_keeps_for_ever() {
        let c = Config::load(flags(None)).expect("defaults");
        assert_eq!(c.job_retention, Some(std::time::Duration::from_secs(90 * 24 * 3600)));
        assert_eq!(c.log_retention, c.job_retention, "logs follow their jobs unless told");
        let mut f = flags(None);
        f.job_retention = Some("off".into());
        f.log_retention = Some("30days".into());
        let c = Config::load(f).expect("configured");
        assert_eq!(c.job_retention, None);
        assert_eq!(c.log_retention, Some(std::time::Duration::from_secs(30 * 24 * 3600)));
        let mut f = flags(None);
        f.job_retention = Some("ninety".into());
        let error = Config::load(f).unwrap_err().to_string();
        assert!(error.contains("--job-retention 'ninety'"), "{error}");
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(flags(None)).expect("defaults");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.database_url, "sqlite://.trainyard/trainyard.db");
        assert!(c.catalog.get("ml.m5.large").is_some());
    }

    /// Standbys send clients to the address the leader bound (the port it got for port 0), with
    /// the host's name for an unspecified address, unless an address to advertise is given.
    #[test]
    fn the_advertised_address_is_the_bound_one_unless_given() {
        let mut c = Config::load(flags(None)).expect("defaults");
        let bound = |a: &str| a.parse::<SocketAddr>().expect("address");
        assert_eq!(c.advertised(bound("127.0.0.1:4567")), "127.0.0.1:4567");
        assert_eq!(c.advertised(bound("0.0.0.0:4567")), format!("{}:4567", hostname()));
        c.advertise_address = Some("coordinator.lab.example:50051".into());
        assert_eq!(c.advertised(bound("0.0.0.0:4567")), "coordinator.lab.example:50051");
    }

    #[test]
    fn the_file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:6000"
data_dir = "/srv/ty"
[arn]
region = "lab"
[limits]
max_concurrent_tuning_jobs = 3
[[instance_types]]
name = "ml.m5.large"
vcpus = 1
memory_mib = 1024
"#,
        )
        .expect("write");
        let mut f = flags(Some(path.clone()));
        f.listen = Some("127.0.0.1:7000".parse().expect("addr"));
        let c = Config::load(f).expect("load");
        assert_eq!(c.listen.port(), 7000, "flag beats file");
        assert_eq!(c.database_url, "sqlite:///srv/ty/trainyard.db");
        assert_eq!(c.arns.region, "lab");
        assert_eq!(c.limits.max_concurrent_tuning_jobs, 3);
        assert_eq!(c.catalog.get("ml.m5.large").map(|t| t.vcpus), Some(1));

        std::fs::write(&path, "listn = \"x\"").expect("write");
        let err = Config::load(flags(Some(path))).expect_err("typo is an error");
        assert!(format!("{err:#}").contains("unknown field `listn`"), "{err:#}");
    }

    #[test]
    fn the_example_configuration_in_deploy_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/coordinator.example.toml");
        let c = Config::load(flags(Some(path))).expect("the example loads");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/trainyard"));
        assert_eq!(c.catalog.get("ml.g5.xlarge").map(|t| t.gpus), Some(1));
        assert!(!c.insecure);
        assert_eq!(c.agent_lease, std::time::Duration::from_secs(60));
        assert!(c.roles.run_as(Some("arn:aws:iam::123456789012:role/TrainyardExecution")).is_ok_and(|r| r.is_some()));
        assert_eq!(c.tls_names, vec!["trainyard.lab.example".to_string()]);
        let caller = &c.access_keys["AKIAEXAMPLETRAINYARD"].caller;
        assert_eq!((caller.user.as_str(), caller.scope), ("ana", trainyard_model::access::Scope::Submit));
    }
}
