//! Trainyard's persistence: one [`Store`] interface, two backends (SQLite, the zero-set-up default,
//! and PostgreSQL), embedded migrations for each.
//!
//! # What is durable
//! * Every tuning job and training job, with the request exactly as accepted (SageMaker's JSON
//!   shape), its primary and secondary status, the secondary-status transitions with their times,
//!   failure reasons, final metrics and objective values.
//! * A change is written before the coordinator acts on it, one row per statement, so a crash
//!   leaves each job either before or after a change, never half-way.
//!
//! # What is rebuilt at start-up
//! * Everything else: the agent registry, leases and queues are rebuilt from the stored jobs and
//!   from what the agents report when they reconnect.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed change survives a crash of the
//! coordinator; the last changes before a power loss of the host may not.
//!
//! Concurrency: updates are compare-and-set on a per-row `version`, so two writers (two
//! coordinators on PostgreSQL, or a retried request) can never overwrite each other's change
//! silently; the loser gets [`StoreError::Conflict`] and re-reads.
//!
//! Leadership: coordinators sharing a database take turns through one lease row (an epoch, a
//! holder, an expiry on the database's clock). Once a store has acquired the lease, every write it
//! makes checks the epoch under a lock on the lease row (`FOR SHARE` on PostgreSQL): inside the
//! statement itself for the writes of jobs, logs and metrics (one round trip, as before leases),
//! in a transaction that reads the row first for the others. A coordinator that was paused or cut
//! off while another took over gets [`StoreError::Fenced`] and changes nothing, and a takeover
//! waits for writes in flight to end.

mod rows;
mod sql;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use trainyard_model::DomainError;
use trainyard_model::access::{Scope, TokenKind};
use trainyard_model::error::ResourceKind;
use trainyard_model::jobs::{TrainingJob, TrialCounts, TuningJob};
use trainyard_model::listing::{ListQuery, Page};

pub use sql::SqlStore;

/// One line of a training job's output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Position in the job's log, from 1.
    pub seq: i64,
    pub instance: u32,
    /// "stdout" or "stderr".
    pub stream: String,
    pub timestamp: trainyard_model::Timestamp,
    pub text: String,
    /// The line's number within its instance's output, as the agent counted it (None: a line no
    /// agent numbered). A line whose job, instance and number are stored already is not stored
    /// again, under whatever `seq`: an agent sends again what a coordinator that died never
    /// confirmed.
    pub instance_line: Option<i64>,
}

/// One value a metric regex captured.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub timestamp: trainyard_model::Timestamp,
    pub value: f64,
    /// The instance that reported it and the sample's number among that instance's, as the agent
    /// counted them (None: a sample no agent numbered). A sample whose job, instance and number
    /// are stored already is not stored again: an agent sends again what a coordinator that died
    /// never confirmed.
    pub instance_sample: Option<(u32, i64)>,
}

/// An API token or an agent join token, as stored: the secret itself is never kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    /// Hex SHA-256 of the token's secret.
    pub secret_sha256: String,
    /// API tokens: the user the token acts as. Join tokens: the user who created it.
    pub user: String,
    /// API tokens only.
    pub scope: Option<Scope>,
    pub description: String,
    pub created_at: trainyard_model::Timestamp,
    pub expires_at: Option<trainyard_model::Timestamp>,
    pub revoked_at: Option<trainyard_model::Timestamp>,
    /// API tokens may carry a SigV4 access key for the SageMaker-compatible endpoint: its id...
    pub access_key_id: Option<String>,
    /// ...and its secret, sealed by the coordinator (the store never sees it in clear).
    pub access_key_sealed: Option<String>,
    /// Join tokens: how many agents may join with it (None: no limit; tokens made before limits).
    pub uses_allowed: Option<i64>,
    /// Join tokens: how many have.
    pub uses: i64,
    /// Join tokens: the only agent id it joins (None: any).
    pub agent_id: Option<String>,
}

/// The certificate an agent received when it joined.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentIdentity {
    pub agent_id: String,
    /// Hex SHA-256 of the certificate (DER) the agent presents.
    pub certificate_sha256: String,
    pub join_token_id: String,
    pub joined_at: trainyard_model::Timestamp,
    pub revoked_at: Option<trainyard_model::Timestamp>,
}

/// An agent an operator took out of placement.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCordon {
    pub agent_id: String,
    /// Drained (reported drained once its instances have ended), or only cordoned.
    pub drain: bool,
    /// Who did it.
    pub by_user: String,
    pub at: trainyard_model::Timestamp,
    /// A drain's deadline: what still runs there then is stopped (and retried elsewhere under its
    /// RetryStrategy).
    pub stop_at: Option<trainyard_model::Timestamp>,
}

/// Who leads the coordinators sharing this database.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderRecord {
    /// Increases by one at every takeover (and at every start of a coordinator).
    pub epoch: i64,
    /// The holder's identity (stable across restarts of one coordinator: its data directory's).
    pub holder: String,
    /// Where clients reach it (HOST:PORT).
    pub address: String,
    /// How long the lease still runs, by the database's clock (negative: expired).
    pub expires_in_ms: i64,
}

/// A record and the version it was read at (for compare-and-set updates).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: ResourceKind, name: String },
    #[error("{kind} '{name}' was changed by another writer; read it again")]
    Conflict { kind: ResourceKind, name: String },
    #[error("stored record '{name}' cannot be read: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("this coordinator no longer leads (its epoch {epoch}; the database's is {current:?}): nothing was written")]
    Fenced { epoch: i64, current: Option<i64> },
    #[error("{0}")]
    Unsupported(String),
    #[error("backup: {0}")]
    Backup(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A failure shared by several requests written together (see [`StoreError::shared`]).
    #[error("{0}")]
    Shared(String),
    #[error("database unreachable: {0}")]
    Unreachable(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { kind, name } => DomainError::AlreadyExists { kind, name },
            e if e.is_unavailable() => DomainError::Unavailable(e.to_string()),
            other => DomainError::Internal(other.to_string()),
        }
    }
}

/// The outcome of a batch of one.
pub fn only_outcome<T>(outcomes: Vec<Result<T, StoreError>>) -> Result<T, StoreError> {
    outcomes.into_iter().next().unwrap_or_else(|| Err(StoreError::Shared("the store gave no outcome".into())))
}

impl StoreError {
    /// This error for each of several requests whose write failed together (a group commit): the
    /// same kind where the kind decides what the caller is told (unavailable, fenced, taken),
    /// otherwise its text.
    pub fn shared(&self) -> StoreError {
        match self {
            StoreError::AlreadyExists { kind, name } => StoreError::AlreadyExists { kind: *kind, name: name.clone() },
            StoreError::Conflict { kind, name } => StoreError::Conflict { kind: *kind, name: name.clone() },
            StoreError::Fenced { epoch, current } => StoreError::Fenced { epoch: *epoch, current: *current },
            StoreError::Unreachable(text) => StoreError::Unreachable(text.clone()),
            other if other.is_unavailable() => StoreError::Unreachable(other.to_string()),
            other => StoreError::Shared(other.to_string()),
        }
    }

    /// The database cannot be reached or this coordinator no longer leads: nothing about the
    /// request itself, so asking again (of this coordinator later, or of the new leader) may work.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable(_)
                | StoreError::Fenced { .. }
                | StoreError::Database(
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_),
                )
        )
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The storage interface. Every write is one statement or one transaction (fenced by the leader's
/// epoch once a lease is held), every read one query; see the crate docs for what is durable.
#[async_trait]
pub trait Store: Send + Sync {
    fn backend(&self) -> Backend;

    /// Inserts new tuning jobs in one statement (the group commit of concurrent creates): one
    /// outcome per job, in order (a job inserted is at version 1; the caller holds it, so no copy
    /// comes back). A name taken, before or earlier in `jobs`, is that job's `AlreadyExists`; an
    /// error for the whole call (the database, the fence) stored none of them.
    async fn create_tuning_jobs(&self, jobs: &[TuningJob]) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    async fn create_tuning_job(&self, job: &TuningJob) -> Result<Versioned<TuningJob>, StoreError> {
        only_outcome(self.create_tuning_jobs(std::slice::from_ref(job)).await?)?;
        Ok(Versioned { value: job.clone(), version: 1 })
    }
    async fn get_tuning_job(&self, name: &str) -> Result<Option<Versioned<TuningJob>>, StoreError>;
    async fn list_tuning_jobs(&self, query: &ListQuery) -> Result<Page<TuningJob>, StoreError>;
    /// Writes `job` if the stored row is still at `expected_version`; returns the new version.
    async fn update_tuning_job(
        &self,
        job: &TuningJob,
        expected_version: i64,
    ) -> Result<Versioned<TuningJob>, StoreError>;
    /// Tuning jobs that have not ended (InProgress or Stopping), oldest first.
    async fn active_tuning_jobs(&self) -> Result<Vec<Versioned<TuningJob>>, StoreError>;
    /// How many tuning jobs have not ended.
    async fn count_active_tuning_jobs(&self) -> Result<u64, StoreError>;

    /// Inserts new training jobs in one statement, as [`Store::create_tuning_jobs`] does.
    async fn create_training_jobs(&self, jobs: &[TrainingJob]) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    async fn create_training_job(&self, job: &TrainingJob) -> Result<Versioned<TrainingJob>, StoreError> {
        only_outcome(self.create_training_jobs(std::slice::from_ref(job)).await?)?;
        Ok(Versioned { value: job.clone(), version: 1 })
    }
    async fn get_training_job(&self, name: &str) -> Result<Option<Versioned<TrainingJob>>, StoreError>;
    async fn list_training_jobs(&self, query: &ListQuery) -> Result<Page<TrainingJob>, StoreError>;
    async fn update_training_job(
        &self,
        job: &TrainingJob,
        expected_version: i64,
    ) -> Result<Versioned<TrainingJob>, StoreError>;
    /// Compare-and-set of several training jobs in one statement (the loop's writes of a pass):
    /// each job is written if its stored version is still the one given with it. One outcome per
    /// job, in order: the version it now has, or, for a job changed meanwhile (or named twice:
    /// its second time), `Conflict`; an error for the whole call (the database, the fence) wrote
    /// none of them.
    async fn update_training_jobs(
        &self,
        jobs: &[(TrainingJob, i64)],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError>;
    /// Training jobs that have not ended, oldest first; only the trials of `tuning_job` if given.
    async fn active_training_jobs(&self, tuning_job: Option<&str>) -> Result<Vec<Versioned<TrainingJob>>, StoreError>;

    /// Trial counts of each named tuning job (jobs without trials are absent).
    async fn trial_counts(&self, tuning_jobs: &[String]) -> Result<HashMap<String, TrialCounts>, StoreError>;
    /// Appends log lines (their `seq` numbers are the caller's, unique per job).
    async fn append_logs(&self, training_job: &str, lines: &[LogRecord]) -> Result<(), StoreError>;
    /// Lines after `after_seq`, in order, at most `limit`.
    async fn read_logs(&self, training_job: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError>;
    /// The highest `seq` stored for a job (0 when none).
    /// One instance's lines stamped at `from` or later, after `after_seq`, in order, at most `limit`
    /// (a CloudWatch Logs stream's view of the job's log).
    async fn read_instance_logs(
        &self,
        training_job: &str,
        instance: u32,
        from: trainyard_model::Timestamp,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LogRecord>, StoreError>;
    async fn last_log_seq(&self, training_job: &str) -> Result<i64, StoreError>;
    async fn append_metrics(&self, training_job: &str, samples: &[MetricSample]) -> Result<(), StoreError>;
    async fn read_metrics(&self, training_job: &str) -> Result<Vec<MetricSample>, StoreError>;
    /// A page of a job's samples ordered by metric name, then time: of `metric` only if given,
    /// after the sample `after` (metric name, time) if given, at most `limit`.
    async fn read_metric_page(
        &self,
        training_job: &str,
        metric: Option<&str>,
        after: Option<(&str, trainyard_model::Timestamp)>,
        limit: u32,
    ) -> Result<Vec<MetricSample>, StoreError>;
    /// How many trials a tuning job has launched.
    async fn count_trials(&self, tuning_job: &str) -> Result<u64, StoreError>;

    /// The trial with the best final objective value of a tuning job.
    async fn best_trial(&self, tuning_job: &str, maximize: bool) -> Result<Option<TrainingJob>, StoreError>;

    /// Retention: up to `limit` ended tuning jobs last changed before `before`, each with its
    /// trials, and up to `limit` ended training jobs of no tuning job; every job with its logs
    /// and metric samples. What was deleted: (tuning jobs, training jobs).
    async fn prune_ended_jobs(&self, before: trainyard_model::Timestamp, limit: u32) -> Result<(u64, u64), StoreError>;
    /// Retention of logs: the logs and metric samples of up to `limit` training jobs that ended
    /// before `before` (the jobs stay). How many jobs lost theirs.
    async fn prune_logs(&self, before: trainyard_model::Timestamp, limit: u32) -> Result<u64, StoreError>;
    /// DeleteHyperParameterTuningJob: an ended tuning job's record goes; its trials stay, as
    /// training jobs of no tuning job. False when there is no such ended job.
    async fn delete_tuning_job(&self, name: &str) -> Result<bool, StoreError>;

    async fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn get_token_by_access_key(&self, access_key_id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Counts one use of a join token, if it has one left (compare-and-set: two agents racing for
    /// the last use cannot both have it); false when it has none.
    async fn use_join_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Marks a token revoked; false when there is no such token (revoking twice keeps the first time).
    async fn revoke_token(&self, id: &str, at: trainyard_model::Timestamp) -> Result<bool, StoreError>;

    /// Records the certificate an agent joined with, replacing any earlier one (and its revocation).
    async fn put_agent_identity(&self, identity: &AgentIdentity) -> Result<(), StoreError>;
    async fn agent_identity_by_certificate(
        &self,
        certificate_sha256: &str,
    ) -> Result<Option<AgentIdentity>, StoreError>;
    /// Marks an agent revoked; false when no agent of that id ever joined.
    async fn revoke_agent(&self, agent_id: &str, at: trainyard_model::Timestamp) -> Result<bool, StoreError>;

    /// Cordons (or drains) an agent, replacing what was said of it before.
    async fn put_cordon(&self, cordon: &AgentCordon) -> Result<(), StoreError>;
    /// Uncordons an agent; false when it was not cordoned.
    async fn delete_cordon(&self, agent_id: &str) -> Result<bool, StoreError>;
    /// Every cordoned agent, by id.
    async fn cordons(&self) -> Result<Vec<AgentCordon>, StoreError>;

    /// Takes the leadership for `lease` if nobody holds it, it has expired, or `holder` held it
    /// (a restart of the same coordinator): the new epoch, or None when another holds it. From then
    /// on every write of this store is fenced by that epoch.
    async fn acquire_leadership(
        &self,
        holder: &str,
        address: &str,
        lease: std::time::Duration,
    ) -> Result<Option<i64>, StoreError>;
    /// Extends the lease of `epoch` by `lease` from now; false when another coordinator has taken
    /// over meanwhile (this one must step down).
    async fn renew_leadership(&self, epoch: i64, lease: std::time::Duration) -> Result<bool, StoreError>;
    /// Ends the lease of `epoch` now (an orderly shutdown), so that a standby takes over at once.
    async fn release_leadership(&self, epoch: i64) -> Result<(), StoreError>;
    /// Who leads, if anyone ever did.
    async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError>;

    /// Writes a consistent copy of the whole database to `path` (a new file, 0600) while the
    /// coordinator runs: SQLite's `VACUUM INTO`, which includes what is still in the WAL. On
    /// PostgreSQL, `Unsupported` (pg_dump or the platform's point-in-time recovery do this).
    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError>;
}

/// Opens (creating if needed) the database at `url` and brings its schema up to date.
/// `sqlite://PATH` (the file is created on first start) or `postgres://USER@HOST:PORT/DB`.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::connect(url).await?))
}
