//! The SQL implementation of [`Store`], shared by both backends through sqlx's `Any` driver. The
//! statements are written in the dialect SQLite and PostgreSQL have in common (`$N` parameters,
//! `ON CONFLICT`, `LOWER(..) LIKE .. ESCAPE`), so one implementation serves both and the conformance
//! suite checks that they agree.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use tracing::info;
use trainyard_model::error::ResourceKind;
use trainyard_model::jobs::{TrainingJob, TrialCounts, TuningJob};
use trainyard_model::listing::{Cursor, CursorKey, ListQuery, Page, SortKey, SortOrder};
use trainyard_model::status::{ObjectiveStatus, TrainingJobStatus};
use trainyard_model::timestamp::Timestamp;

use trainyard_model::access::Scope;

use crate::rows::{self, TOKEN_COLUMNS, TRAINING_COLUMNS, TUNING_COLUMNS, TrainingDetails};
use crate::{
    AgentCordon, AgentIdentity, Backend, LeaderRecord, LogRecord, MetricSample, Store, StoreError, TokenRecord,
    Versioned,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Statements slower than this are logged (at INFO, by sqlx).
const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// The leadership epoch every write is fenced by; 0 until this store acquires the lease (the
    /// admin commands, the tests of the store, a coordinator still waiting as a standby).
    fence: AtomicI64,
}

/// The database's clock in milliseconds since the Unix epoch: leases are judged by one clock,
/// whatever the coordinators' own say.
fn now_ms_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// A bind parameter of a statement built at run time.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
    /// Bound as a typed NULL when absent (a `DOUBLE PRECISION` never is: see [`nullable_double`]).
    OptText(Option<String>),
    OptInt(Option<i64>),
}

/// A value of a row a statement inserts: bound, or SQL written into the statement as it is.
#[derive(Clone)]
enum Cell {
    Bound(Arg),
    Sql(&'static str),
}

/// An absent `DOUBLE PRECISION` in a multi-row `VALUES`, typed (see [`nullable_double`]: never bound;
/// and an untyped `NULL` in every row of a column would make PostgreSQL read the column as text).
const NULL_DOUBLE: &str = "CAST(NULL AS DOUBLE PRECISION)";

/// A statement with `$N` parameters numbered in the order they are added.
#[derive(Default)]
struct Statement {
    args: Vec<Arg>,
}

impl Statement {
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// One row of a `VALUES` list: its values bound in order, its SQL cells as they are.
    fn row(&mut self, cells: Vec<Cell>) -> String {
        let cells: Vec<String> = cells
            .into_iter()
            .map(|cell| match cell {
                Cell::Bound(arg) => self.bind(arg),
                Cell::Sql(sql) => sql.to_string(),
            })
            .collect();
        format!("({})", cells.join(", "))
    }

    /// The rows of a `VALUES` list, padded to [`padded_rows`] with rows whose first column is
    /// NULL: the statement must leave those out (inserts: [`SqlStore::padded_insert`]; an update
    /// joins on the first column, which NULL never matches).
    /// Every row has the first one's shape: the same cells bound and written, in order.
    fn padded_values(&mut self, rows: Vec<Vec<Cell>>) -> String {
        let padding = rows.first().map(|shape| padding_row(shape)).unwrap_or_default();
        let n = rows.len();
        let mut values: Vec<String> = rows.into_iter().map(|cells| self.row(cells)).collect();
        for _ in n..padded_rows(n) {
            values.push(self.row(padding.clone()));
        }
        values.join(", ")
    }

    fn query(self, sql: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(audited(sql));
        for arg in self.args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
                Arg::Float(f) => query.bind(f),
                Arg::OptText(s) => query.bind(s),
                Arg::OptInt(i) => query.bind(i),
            };
        }
        query
    }

    /// Runs the statement; how many rows it changed.
    async fn execute(self, pool: &AnyPool, sql: String) -> Result<u64, sqlx::Error> {
        self.query(sql).execute(pool).await.map(|r| r.rows_affected())
    }

    async fn fetch_all(self, pool: &AnyPool, sql: String) -> Result<Vec<AnyRow>, sqlx::Error> {
        self.query(sql).fetch_all(pool).await
    }
}

/// A row that fills a multi-row statement up to its padded size ([`padded_rows`]): `shape`'s
/// cells, each bound value a placeholder of the same type (so that every execution of the
/// statement binds the same types in the same places), and its first column NULL, which keeps it
/// out of what the statement writes.
fn padding_row(shape: &[Cell]) -> Vec<Cell> {
    shape
        .iter()
        .enumerate()
        .map(|(column, cell)| match cell {
            Cell::Bound(Arg::Text(_) | Arg::OptText(_)) if column == 0 => Cell::Bound(Arg::OptText(None)),
            Cell::Bound(Arg::Int(_) | Arg::OptInt(_)) if column == 0 => Cell::Bound(Arg::OptInt(None)),
            Cell::Bound(Arg::Float(_)) if column == 0 => Cell::Sql(NULL_DOUBLE),
            Cell::Sql(_) if column == 0 => Cell::Sql("NULL"),
            Cell::Bound(Arg::Text(_)) => Cell::Bound(Arg::Text(String::new())),
            Cell::Bound(Arg::OptText(_)) => Cell::Bound(Arg::OptText(None)),
            Cell::Bound(Arg::Int(_)) => Cell::Bound(Arg::Int(0)),
            Cell::Bound(Arg::OptInt(_)) => Cell::Bound(Arg::OptInt(None)),
            Cell::Bound(Arg::Float(_)) => Cell::Bound(Arg::Float(0.0)),
            Cell::Sql(sql) => Cell::Sql(sql),
        })
        .collect()
}

/// How many rows a multi-row statement of `n` rows is written with: the next power of two. With
/// a text per batch size (1 to 100), the database prepared and planned each text on each
/// connection anew (PostgreSQL plans a prepared statement at each of its first five executions
/// before it keeps a generic plan); padded, a statement has a handful of texts, soon planned once.
/// Measured with the creates suite on PostgreSQL, alternating runs (BENCHMARKS.md): 6-10 % less
/// database CPU per create, 6 % more creates a second.
fn padded_rows(n: usize) -> usize {
    n.next_power_of_two()
}

/// For each row of a batch, whether its name came earlier in the batch: one statement writes a row
/// once, so only a name's first row goes into it (the others are refused).
fn repeated_names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<bool> {
    let mut seen = HashSet::new();
    names.map(|name| !seen.insert(name)).collect()
}

/// A `training_job_logs` row.
fn log_record(r: &sqlx::any::AnyRow) -> Result<LogRecord, StoreError> {
    Ok(LogRecord {
        seq: r.try_get("seq")?,
        instance: u32::try_from(r.try_get::<i64, _>("instance")?).unwrap_or_default(),
        stream: r.try_get("stream")?,
        timestamp: Timestamp::from_millis(r.try_get("timestamp")?),
        text: r.try_get("text")?,
        instance_line: r.try_get("instance_line")?,
    })
}

/// A `metric_samples` row.
fn metric_sample(r: &sqlx::any::AnyRow) -> Result<MetricSample, StoreError> {
    let instance: Option<i64> = r.try_get("instance")?;
    let number: Option<i64> = r.try_get("instance_sample")?;
    Ok(MetricSample {
        name: r.try_get("metric_name")?,
        timestamp: Timestamp::from_millis(r.try_get("timestamp")?),
        value: r.try_get("value")?,
        instance_sample: instance.zip(number).map(|(i, n)| (u32::try_from(i).unwrap_or_default(), n)),
    })
}

/// Marks SQL built at run time as safe. Every such statement here is assembled only from this
/// file's constants (table and column names, sort directions) and `$N` placeholders; values always
/// travel as bind parameters.
fn audited(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// The SQL for a `DOUBLE PRECISION` value that may be absent: the placeholder, or a literal `NULL`.
///
/// An absent value is never bound. sqlx 0.9's `Any` driver declares a bound `None::<f64>` as a
/// PostgreSQL `float4` (`sqlx-core` `any/arguments.rs` swaps the two float kinds for NULLs), and the
/// connection's cached prepared statement keeps that type: the next statement of the same text with
/// a value sends eight bytes for a four-byte parameter and fails ("incorrect binary data format in
/// bind parameter"). A trial's first update has no objective and its last one has: on PostgreSQL
/// every objective was lost. The placeholder must be the statement's last one, so that leaving it
/// out renumbers nothing.
fn nullable_double(placeholder: &'static str, value: Option<f64>) -> &'static str {
    if value.is_some() { placeholder } else { "NULL" }
}

/// Binds the value [`nullable_double`] wrote a placeholder for.
fn bind_double<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    value: Option<f64>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    match value {
        Some(v) => query.bind(v),
        None => query,
    }
}

fn completion_json(job: &TuningJob) -> Result<Option<String>, StoreError> {
    job.completion
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt { name: job.name.clone(), reason: e.to_string() })
}

/// Creates the SQLite file of `sqlite:<rest>` readable by its owner only (mode 0600), or makes an
/// existing one so: it holds users' Environment values and hashed tokens. SQLite gives its WAL and
/// shared-memory files the database file's mode.
fn private_database_file(rest: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(path) = database_file(rest) else { return Ok(()) };
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
}

/// The file of a SQLite URL (what follows `sqlite:`), or None for an in-memory database.
fn database_file(rest: &str) -> Option<&str> {
    let path = rest.trim_start_matches("//").split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Held while this process migrates a SQLite file (`<file>.migrations.lock`, flock): two
/// processes migrating one file at once (a coordinator starting while an admin command runs on its
/// data) would each read which migrations are applied and both apply the next ("table already
/// exists"). PostgreSQL's migrations take an advisory lock of their own. None for `:memory:`.
fn lock_migrations(rest: &str) -> Result<Option<std::fs::File>, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = database_file(rest) else { return Ok(None) };
    let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(format!("{path}.migrations.lock"))
        .map_err(io)?;
    file.lock().map_err(io)?; // until the other process has migrated
    Ok(Some(file))
}

/// The outcome of an insert: a taken name is `AlreadyExists`, whatever the backend's error says.
/// How many rows it inserted.
fn inserted(
    result: Result<sqlx::any::AnyQueryResult, sqlx::Error>,
    kind: ResourceKind,
    name: &str,
) -> Result<u64, StoreError> {
    match result {
        Ok(done) => Ok(done.rows_affected()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::AlreadyExists { kind, name: name.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

/// The statuses of a job that has ended (tuning and training jobs alike), as an SQL list.
const ENDED: &str = "('Completed', 'Failed', 'Stopped')";

/// Deletes a training job's logs and metric samples, in `tx`.
async fn delete_logs_of(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> Result<(), sqlx::Error> {
    for table in ["training_job_logs", "metric_samples"] {
        sqlx::query(audited(format!("DELETE FROM {table} WHERE training_job_name = $1")))
            .bind(name)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A database URL without its password, for messages.
fn redacted(url: &str) -> String {
    let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) else { return url.to_string() };
    if at < scheme {
        return url.to_string();
    }
    match url[scheme + 3..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
        None => url.to_string(),
    }
}

/// A pooled PostgreSQL connection idle longer than this is pinged before it is used (see
/// [`SqlStore::connect`]); a busy coordinator's are used again within milliseconds.
const POSTGRES_PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a PostgreSQL call waits for a connection from the pool (see [`SqlStore::connect`]).
const POSTGRES_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl SqlStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            // Create the file on first start unless the URL says otherwise.
            let url = if rest.contains("mode=") {
                url.to_string()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            private_database_file(rest)?;
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        // sqlx pings every connection it hands out by default (and again when it is given back):
        // a round trip per statement, to PostgreSQL or to the SQLite connection's thread. A SQLite
        // file cannot go away; a PostgreSQL connection is pinged only when it sat idle long enough
        // for a server restart or an idle timeout to have ended it unnoticed. One that dies in use
        // fails its statement, as one dying between the ping and the statement always could.
        let options = match backend {
            // SQLite has one writer at a time; a few connections serve concurrent readers (WAL).
            Backend::Sqlite => {
                AnyPoolOptions::new().max_connections(4).test_before_acquire(false).after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                })
            }
            // A server that went away answers no connection attempt: a call waits at most this
            // long for one (sqlx's default is 30 s), then fails as unavailable. Each of the event
            // loop's writes waited as long during an outage, and API clients before their error.
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        use sqlx::Connection;
                        // false: the pool closes it and takes or opens another.
                        Ok(meta.idle_for < POSTGRES_PING_AFTER_IDLE || conn.ping().await.is_ok())
                    })
                }),
        };
        if backend == Backend::Postgres {
            // One connection first, so that a server that is down or refuses us says so at once
            // ("Connection refused", a wrong password) instead of the pool's "timed out" 30 s later.
            use sqlx::Connection;
            let first = tokio::time::timeout(std::time::Duration::from_secs(10), sqlx::AnyConnection::connect(&url))
                .await
                .map_err(|_| {
                    StoreError::Unreachable(format!("no answer from PostgreSQL at {} within 10 s", redacted(&url)))
                })?;
            first?.close().await?;
        }
        // sqlx warns of every statement over a second: a database that went away would fill the
        // log with them. Slow calls show in `trainyard_store_seconds`, failures in our own lines.
        let connect_options: sqlx::any::AnyConnectOptions = url.parse()?;
        let connect_options =
            sqlx::ConnectOptions::log_slow_statements(connect_options, log::LevelFilter::Info, SLOW_STATEMENT);
        let pool = options.connect_with(connect_options).await?;
        match backend {
            Backend::Sqlite => {
                let rest = url.strip_prefix("sqlite:").unwrap_or_default().to_string();
                let held = tokio::task::spawn_blocking(move || lock_migrations(&rest))
                    .await
                    .map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))??;
                SQLITE_MIGRATIONS.run(&pool).await?;
                drop(held);
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        info!(?backend, "store ready");
        Ok(Self { pool, backend, fence: AtomicI64::new(0) })
    }

    /// The epoch this store's writes are fenced by (0: none).
    fn epoch(&self) -> i64 {
        self.fence.load(Ordering::Acquire)
    }

    /// The fence of a write made in one statement, ANDed into its WHERE, with `placeholder` bound
    /// to [`SqlStore::epoch`]: true while this store holds no lease, else the lease row still
    /// carries our epoch, read `FOR SHARE` on PostgreSQL so that a takeover waits for the
    /// statement (the lock is taken, and the epoch re-checked, on the row's newest version). The
    /// same guarantee as [`SqlStore::write`] in one round trip, for the writes of every trial.
    fn fence_clause(&self, placeholder: &str) -> String {
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        format!(
            "({placeholder} = 0 OR EXISTS (SELECT 1 FROM coordinator_lease WHERE id = 1 AND epoch = {placeholder}{lock}))"
        )
    }

    /// A fenced insert of `rows` (in `columns`' order) into `table`, padded
    /// ([`Statement::padded_values`]) and the padding left out; rows whose key is taken are
    /// skipped. `tail` follows the statement (e.g. `RETURNING name`).
    fn padded_insert(
        &self,
        st: &mut Statement,
        table: &str,
        columns: &str,
        rows: Vec<Vec<Cell>>,
        tail: &str,
    ) -> String {
        let values = st.padded_values(rows);
        let fence = self.fence_clause(&st.bind(Arg::Int(self.epoch())));
        // `column1`: the first column of a VALUES list, in PostgreSQL and SQLite alike.
        format!(
            "INSERT INTO {table} ({columns}) SELECT * FROM (VALUES {values}) AS new_rows \
             WHERE column1 IS NOT NULL AND {fence} ON CONFLICT DO NOTHING {tail}"
        )
    }

    /// After a fenced statement changed nothing: `Fenced` when the lease is no longer ours, else
    /// `otherwise` (the statement's own reason: a stale version, a duplicate).
    async fn fenced_or(&self, otherwise: Result<(), StoreError>) -> Result<(), StoreError> {
        let epoch = self.epoch();
        if epoch == 0 {
            return otherwise;
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM coordinator_lease WHERE id = 1").fetch_optional(&self.pool).await?;
        if current == Some(epoch) { otherwise } else { Err(StoreError::Fenced { epoch, current }) }
    }

    /// Runs a fenced statement that writes several rows and returns the `name` of each it wrote.
    /// When it wrote none: `Fenced` if the lease is no longer ours (else none was writable).
    async fn names_written(&self, st: Statement, sql: String) -> Result<HashSet<String>, StoreError> {
        let written: HashSet<String> =
            st.fetch_all(&self.pool, sql).await?.iter().map(|r| r.try_get("name")).collect::<Result<_, _>>()?;
        if written.is_empty() {
            self.fenced_or(Ok(())).await?;
        }
        Ok(written)
    }

    /// A transaction for a write of several statements: once this store leads, it first locks
    /// the lease row and checks that the epoch is still ours, so that nothing is written after
    /// another coordinator took over, and a takeover waits for this write to end. SQLite's is `BEGIN IMMEDIATE`: a
    /// transaction that reads before it writes would otherwise fail at once when another
    /// connection writes first (SQLite does not wait for an upgrade).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let epoch = self.fence.load(Ordering::Acquire);
        if epoch != 0 {
            let sql = match self.backend {
                Backend::Postgres => "SELECT epoch FROM coordinator_lease WHERE id = 1 FOR SHARE",
                Backend::Sqlite => "SELECT epoch FROM coordinator_lease WHERE id = 1",
            };
            let current: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut *tx).await?;
            if current != Some(epoch) {
                return Err(StoreError::Fenced { epoch, current });
            }
        }
        Ok(tx)
    }

    /// Inserts new jobs' rows in one fenced statement; the outcome of each row, in order. `rows`:
    /// each job's name and its cells in `columns`' order, the name first. A name taken before, or
    /// by an earlier row, is `AlreadyExists`; when none was inserted, a lost lease is the whole
    /// call's error. The statement has [`padded_rows`] rows, the padding filtered out by its name.
    async fn insert_new(
        &self,
        table: &str,
        columns: &str,
        kind: ResourceKind,
        rows: Vec<(String, Vec<Cell>)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut st = Statement::default();
        let repeated = repeated_names(rows.iter().map(|(name, _)| name.as_str()));
        let mut names = Vec::with_capacity(rows.len());
        let mut kept = Vec::new();
        for ((name, cells), again) in rows.into_iter().zip(&repeated) {
            if !again {
                kept.push(cells);
            }
            names.push(name);
        }
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.padded_insert(&mut st, table, columns, kept, "RETURNING name");
        let inserted = self.names_written(st, sql).await?;
        Ok(names
            .into_iter()
            .zip(repeated)
            .map(|(name, again)| {
                if !again && inserted.contains(&name) { Ok(()) } else { Err(StoreError::AlreadyExists { kind, name }) }
            })
            .collect())
    }

    /// The shared list implementation: filters, keyset pagination, sort.
    async fn list(&self, table: &str, columns: &str, query: &ListQuery) -> Result<(Vec<AnyRow>, bool), StoreError> {
        if query.filter.matches_nothing {
            return Ok((Vec::new(), false));
        }
        let mut st = Statement::default();
        let mut conditions: Vec<String> = Vec::new();
        let f = &query.filter;
        if let Some(text) = &f.name_contains {
            let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            conditions.push(format!("LOWER(name) LIKE {} ESCAPE '\\'", st.bind(Arg::Text(format!("%{escaped}%")))));
        }
        if let Some(status) = &f.status_equals {
            conditions.push(format!("status = {}", st.bind(Arg::Text(status.clone()))));
        }
        let windows = [
            ("creation_time >", f.creation_time_after),
            ("creation_time <", f.creation_time_before),
            ("last_modified_time >", f.last_modified_time_after),
            ("last_modified_time <", f.last_modified_time_before),
        ];
        for (op, value) in windows {
            if let Some(t) = value {
                conditions.push(format!("{op} {}", st.bind(Arg::Int(t.millis()))));
            }
        }
        if let Some(owner) = &f.owner {
            conditions.push(format!("owner = {}", st.bind(Arg::Text(owner.clone()))));
        }
        if let Some(tuning_job) = &f.tuning_job_name {
            conditions.push(format!("tuning_job_name = {}", st.bind(Arg::Text(tuning_job.clone()))));
        }
        let column = match query.sort_by {
            SortKey::Name => "name",
            SortKey::CreationTime => "creation_time",
            SortKey::Status => "status",
            SortKey::FinalObjectiveMetricValue => {
                conditions.push("objective_value IS NOT NULL".into());
                "objective_value"
            }
        };
        let (direction, cmp) = match query.sort_order {
            SortOrder::Ascending => ("ASC", ">"),
            SortOrder::Descending => ("DESC", "<"),
        };
        if let Some(Cursor { key, name }) = &query.after {
            let name_arg = st.bind(Arg::Text(name.clone()));
            if column == "name" {
                conditions.push(format!("name {cmp} {name_arg}"));
            } else {
                let key_arg = st.bind(match key {
                    CursorKey::Text(s) => Arg::Text(s.clone()),
                    CursorKey::Int(i) => Arg::Int(*i),
                    CursorKey::Float(x) => Arg::Float(*x),
                });
                conditions
                    .push(format!("({column} {cmp} {key_arg} OR ({column} = {key_arg} AND name {cmp} {name_arg}))"));
            }
        }
        let where_clause =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let limit = st.bind(Arg::Int(i64::from(query.limit) + 1));
        let sql = format!(
            "SELECT {columns} FROM {table} {where_clause} ORDER BY {column} {direction}, name {direction} LIMIT {limit}"
        );
        let mut rows = st.fetch_all(&self.pool, sql).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((rows, more))
    }
}

fn cursor_of(sort: SortKey, name: &str, creation_millis: i64, status: &str, objective: Option<f64>) -> Cursor {
    let key = match sort {
        SortKey::Name => CursorKey::Text(name.to_string()),
        SortKey::CreationTime => CursorKey::Int(creation_millis),
        SortKey::Status => CursorKey::Text(status.to_string()),
        SortKey::FinalObjectiveMetricValue => CursorKey::Float(objective.unwrap_or_default()),
    };
    Cursor { key, name: name.to_string() }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn create_tuning_jobs(&self, jobs: &[TuningJob]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut rows = Vec::with_capacity(jobs.len());
        for job in jobs {
            let request = serde_json::to_string(&job.request)
                .map_err(|e| StoreError::Corrupt { name: job.name.clone(), reason: e.to_string() })?;
            let cells = vec![
                Cell::Bound(Arg::Text(job.name.clone())),
                Cell::Bound(Arg::Text(job.arn.clone())),
                Cell::Bound(Arg::Text(job.status.as_str().to_string())),
                Cell::Bound(Arg::OptText(job.strategy().map(str::to_string))),
                Cell::Bound(Arg::Int(job.creation_time.millis())),
                Cell::Bound(Arg::Int(job.last_modified_time.millis())),
                Cell::Bound(Arg::OptInt(job.end_time.map(|t| t.millis()))),
                Cell::Bound(Arg::OptText(job.failure_reason.clone())),
                Cell::Bound(Arg::Text(request)),
                Cell::Sql("1"),
                Cell::Bound(Arg::OptText(completion_json(job)?)),
                Cell::Bound(Arg::Text(job.owner.clone())),
            ];
            rows.push((job.name.clone(), cells));
        }
        self.insert_new("tuning_jobs", TUNING_COLUMNS, ResourceKind::TuningJob, rows).await
    }

    async fn get_tuning_job(&self, name: &str) -> Result<Option<Versioned<TuningJob>>, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {TUNING_COLUMNS} FROM tuning_jobs WHERE name = $1")))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::tuning_job).transpose()
    }

    async fn list_tuning_jobs(&self, query: &ListQuery) -> Result<Page<TuningJob>, StoreError> {
        let (rows, more) = self.list("tuning_jobs", TUNING_COLUMNS, query).await?;
        let items = rows.iter().map(|r| rows::tuning_job(r).map(|v| v.value)).collect::<Result<Vec<_>, _>>()?;
        let next_token = match items.last() {
            Some(last) if more => Some(query.token_after(cursor_of(
                query.sort_by,
                &last.name,
                last.creation_time.millis(),
                last.status.as_str(),
                None,
            ))),
            _ => None,
        };
        Ok(Page { items, next_token })
    }

    async fn update_tuning_job(
        &self,
        job: &TuningJob,
        expected_version: i64,
    ) -> Result<Versioned<TuningJob>, StoreError> {
        let result = sqlx::query(audited(format!(
            "UPDATE tuning_jobs SET status = $1, last_modified_time = $2, end_time = $3, failure_reason = $4, \
             version = $5, details = $8 WHERE name = $6 AND version = $7 AND {}",
            self.fence_clause("$9")
        )))
        .bind(job.status.as_str())
        .bind(job.last_modified_time.millis())
        .bind(job.end_time.map(|t| t.millis()))
        .bind(job.failure_reason.as_deref())
        .bind(expected_version + 1)
        .bind(&job.name)
        .bind(expected_version)
        .bind(completion_json(job)?)
        .bind(self.epoch())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            let conflict = StoreError::Conflict { kind: ResourceKind::TuningJob, name: job.name.clone() };
            self.fenced_or(Err(conflict)).await?;
        }
        Ok(Versioned { value: job.clone(), version: expected_version + 1 })
    }

    async fn active_tuning_jobs(&self) -> Result<Vec<Versioned<TuningJob>>, StoreError> {
        let rows = sqlx::query(audited(format!(
            "SELECT {TUNING_COLUMNS} FROM tuning_jobs WHERE status IN ('InProgress', 'Stopping') \
             ORDER BY creation_time, name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::tuning_job).collect()
    }

    async fn count_active_tuning_jobs(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tuning_jobs WHERE status IN ('InProgress', 'Stopping')")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn create_training_jobs(&self, jobs: &[TrainingJob]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut rows = Vec::with_capacity(jobs.len());
        for job in jobs {
            let corrupt = |e: serde_json::Error| StoreError::Corrupt { name: job.name.clone(), reason: e.to_string() };
            let request = serde_json::to_string(&job.request).map_err(corrupt)?;
            let details = serde_json::to_string(&TrainingDetails::of(job)).map_err(corrupt)?;
            let objective = match job.objective_value {
                Some(value) => Cell::Bound(Arg::Float(value)),
                None => Cell::Sql(NULL_DOUBLE),
            };
            let cells = vec![
                Cell::Bound(Arg::Text(job.name.clone())),
                Cell::Bound(Arg::Text(job.arn.clone())),
                Cell::Bound(Arg::OptText(job.tuning_job_name().map(str::to_string))),
                Cell::Bound(Arg::Text(job.status.as_str().to_string())),
                Cell::Bound(Arg::Text(job.secondary_status.as_str().to_string())),
                Cell::Bound(Arg::OptText(job.objective_status.map(|s| s.as_str().to_string()))),
                objective,
                Cell::Bound(Arg::Int(job.creation_time.millis())),
                Cell::Bound(Arg::Int(job.last_modified_time.millis())),
                Cell::Bound(Arg::OptInt(job.training_start_time.map(|t| t.millis()))),
                Cell::Bound(Arg::OptInt(job.training_end_time.map(|t| t.millis()))),
                Cell::Bound(Arg::OptText(job.failure_reason.clone())),
                Cell::Bound(Arg::Text(request)),
                Cell::Bound(Arg::Text(details)),
                Cell::Sql("1"),
                Cell::Bound(Arg::Text(job.owner.clone())),
            ];
            rows.push((job.name.clone(), cells));
        }
        self.insert_new("training_jobs", TRAINING_COLUMNS, ResourceKind::TrainingJob, rows).await
    }

    async fn get_training_job(&self, name: &str) -> Result<Option<Versioned<TrainingJob>>, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {TRAINING_COLUMNS} FROM training_jobs WHERE name = $1")))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::training_job).transpose()
    }

    async fn list_training_jobs(&self, query: &ListQuery) -> Result<Page<TrainingJob>, StoreError> {
        let (rows, more) = self.list("training_jobs", TRAINING_COLUMNS, query).await?;
        let items = rows.iter().map(|r| rows::training_job(r).map(|v| v.value)).collect::<Result<Vec<_>, _>>()?;
        let next_token = match items.last() {
            Some(last) if more => Some(query.token_after(cursor_of(
                query.sort_by,
                &last.name,
                last.creation_time.millis(),
                last.status.as_str(),
                last.objective_value,
            ))),
            _ => None,
        };
        Ok(Page { items, next_token })
    }

    async fn update_training_job(
        &self,
        job: &TrainingJob,
        expected_version: i64,
    ) -> Result<Versioned<TrainingJob>, StoreError> {
        let details = serde_json::to_string(&TrainingDetails::of(job))
            .map_err(|e| StoreError::Corrupt { name: job.name.clone(), reason: e.to_string() })?;
        let objective = nullable_double("$13", job.objective_value);
        let fence = self.fence_clause("$12");
        let query = sqlx::query(audited(format!(
            "UPDATE training_jobs SET status = $1, secondary_status = $2, objective_status = $3, \
             objective_value = {objective}, last_modified_time = $4, training_start_time = $5, training_end_time = $6, \
             failure_reason = $7, details = $8, version = $9 WHERE name = $10 AND version = $11 AND {fence}"
        )))
        .bind(job.status.as_str())
        .bind(job.secondary_status.as_str())
        .bind(job.objective_status.map(ObjectiveStatus::as_str))
        .bind(job.last_modified_time.millis())
        .bind(job.training_start_time.map(|t| t.millis()))
        .bind(job.training_end_time.map(|t| t.millis()))
        .bind(job.failure_reason.as_deref())
        .bind(details)
        .bind(expected_version + 1)
        .bind(&job.name)
        .bind(expected_version)
        .bind(self.epoch());
        let result = bind_double(query, job.objective_value).execute(&self.pool).await?;
        if result.rows_affected() == 0 {
            let conflict = StoreError::Conflict { kind: ResourceKind::TrainingJob, name: job.name.clone() };
            self.fenced_or(Err(conflict)).await?;
        }
        Ok(Versioned { value: job.clone(), version: expected_version + 1 })
    }

    async fn update_training_jobs(
        &self,
        jobs: &[(TrainingJob, i64)],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let mut st = Statement::default();
        let mut rows = Vec::with_capacity(jobs.len());
        let repeated = repeated_names(jobs.iter().map(|(job, _)| job.name.as_str()));
        for ((job, expected_version), again) in jobs.iter().zip(&repeated) {
            if *again {
                continue;
            }
            let details = serde_json::to_string(&TrainingDetails::of(job))
                .map_err(|e| StoreError::Corrupt { name: job.name.clone(), reason: e.to_string() })?;
            let objective = match job.objective_value {
                Some(value) => Cell::Bound(Arg::Float(value)),
                None => Cell::Sql(NULL_DOUBLE),
            };
            // In the order of the SET below: VALUES' columns are column1, column2, ... on both backends.
            rows.push(vec![
                Cell::Bound(Arg::Text(job.name.clone())),
                Cell::Bound(Arg::Int(*expected_version)),
                Cell::Bound(Arg::Text(job.status.as_str().to_string())),
                Cell::Bound(Arg::Text(job.secondary_status.as_str().to_string())),
                Cell::Bound(Arg::OptText(job.objective_status.map(|s| s.as_str().to_string()))),
                objective,
                Cell::Bound(Arg::Int(job.last_modified_time.millis())),
                Cell::Bound(Arg::OptInt(job.training_start_time.map(|t| t.millis()))),
                Cell::Bound(Arg::OptInt(job.training_end_time.map(|t| t.millis()))),
                Cell::Bound(Arg::OptText(job.failure_reason.clone())),
                Cell::Bound(Arg::Text(details)),
            ]);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The padding's NULL name matches no job.
        let values = st.padded_values(rows);
        let fence = self.fence_clause(&st.bind(Arg::Int(self.epoch())));
        let sql = format!(
            "UPDATE training_jobs SET status = u.column3, secondary_status = u.column4, \
             objective_status = u.column5, objective_value = u.column6, last_modified_time = u.column7, \
             training_start_time = u.column8, training_end_time = u.column9, failure_reason = u.column10, \
             details = u.column11, version = u.column2 + 1 FROM (VALUES {values}) AS u \
             WHERE training_jobs.name = u.column1 AND training_jobs.version = u.column2 AND {fence} RETURNING name"
        );
        let written = self.names_written(st, sql).await?;
        Ok(jobs
            .iter()
            .zip(repeated)
            .map(|((job, expected_version), again)| {
                if !again && written.contains(&job.name) {
                    Ok(expected_version + 1)
                } else {
                    Err(StoreError::Conflict { kind: ResourceKind::TrainingJob, name: job.name.clone() })
                }
            })
            .collect())
    }

    async fn active_training_jobs(&self, tuning_job: Option<&str>) -> Result<Vec<Versioned<TrainingJob>>, StoreError> {
        let filter = if tuning_job.is_some() { "AND tuning_job_name = $1" } else { "" };
        let sql = format!(
            "SELECT {TRAINING_COLUMNS} FROM training_jobs WHERE status IN ('InProgress', 'Stopping') {filter} \
             ORDER BY creation_time, name"
        );
        let mut query = sqlx::query(audited(sql));
        if let Some(t) = tuning_job {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(rows::training_job).collect()
    }

    async fn trial_counts(&self, tuning_jobs: &[String]) -> Result<HashMap<String, TrialCounts>, StoreError> {
        if tuning_jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let mut st = Statement::default();
        let placeholders: Vec<String> = tuning_jobs.iter().map(|n| st.bind(Arg::Text(n.clone()))).collect();
        let sql = format!(
            "SELECT tuning_job_name, status, objective_status, COUNT(*) AS n FROM training_jobs \
             WHERE tuning_job_name IN ({}) GROUP BY tuning_job_name, status, objective_status",
            placeholders.join(", ")
        );
        let mut counts: HashMap<String, TrialCounts> = HashMap::new();
        for row in st.fetch_all(&self.pool, sql).await? {
            let name: String = row.try_get("tuning_job_name")?;
            let status: String = row.try_get("status")?;
            let objective: Option<String> = row.try_get("objective_status")?;
            let n = i32::try_from(row.try_get::<i64, _>("n")?).unwrap_or(i32::MAX);
            let c = counts.entry(name.clone()).or_default();
            match status.parse::<TrainingJobStatus>() {
                Ok(TrainingJobStatus::Completed) => c.completed += n,
                Ok(TrainingJobStatus::InProgress | TrainingJobStatus::Stopping) => c.in_progress += n,
                Ok(TrainingJobStatus::Stopped) => c.stopped += n,
                Ok(TrainingJobStatus::Failed) => c.non_retryable_error += n,
                Err(e) => {
                    return Err(StoreError::Corrupt { name, reason: e.to_string() });
                }
            }
            match objective.as_deref().map(str::parse::<ObjectiveStatus>) {
                Some(Ok(ObjectiveStatus::Succeeded)) => c.objective_succeeded += n,
                Some(Ok(ObjectiveStatus::Failed)) => c.objective_failed += n,
                Some(Ok(ObjectiveStatus::Pending)) | None => c.objective_pending += n,
                Some(Err(e)) => {
                    return Err(StoreError::Corrupt { name, reason: e.to_string() });
                }
            }
        }
        Ok(counts)
    }

    async fn append_logs(&self, training_job: &str, lines: &[LogRecord]) -> Result<(), StoreError> {
        // Multi-row inserts in chunks keep a busy job's log to a few statements per second.
        for chunk in lines.chunks(100) {
            let mut st = Statement::default();
            let rows: Vec<Vec<Cell>> = chunk
                .iter()
                .map(|l| {
                    vec![
                        Cell::Bound(Arg::Text(training_job.to_string())),
                        Cell::Bound(Arg::Int(l.seq)),
                        Cell::Bound(Arg::Int(i64::from(l.instance))),
                        Cell::Bound(Arg::Text(l.stream.clone())),
                        Cell::Bound(Arg::Int(l.timestamp.millis())),
                        Cell::Bound(Arg::Text(l.text.clone())),
                        Cell::Bound(Arg::OptInt(l.instance_line)),
                    ]
                })
                .collect();
            let columns = "training_job_name, seq, instance, stream, timestamp, text, instance_line";
            let sql = self.padded_insert(&mut st, "training_job_logs", columns, rows, "");
            // Nothing inserted: lines stored before (a re-sent batch), or fenced.
            if st.execute(&self.pool, sql).await? == 0 {
                self.fenced_or(Ok(())).await?;
            }
        }
        Ok(())
    }

    async fn read_logs(&self, training_job: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, instance, stream, timestamp, text, instance_line FROM training_job_logs \
             WHERE training_job_name = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(training_job)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_record).collect()
    }

    async fn read_instance_logs(
        &self,
        training_job: &str,
        instance: u32,
        from: Timestamp,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, instance, stream, timestamp, text, instance_line FROM training_job_logs \
             WHERE training_job_name = $1 AND instance = $2 AND timestamp >= $3 AND seq > $4 ORDER BY seq LIMIT $5",
        )
        .bind(training_job)
        .bind(i64::from(instance))
        .bind(from.millis())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(log_record).collect()
    }

    async fn last_log_seq(&self, training_job: &str) -> Result<i64, StoreError> {
        let n: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM training_job_logs WHERE training_job_name = $1")
            .bind(training_job)
            .fetch_one(&self.pool)
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn append_metrics(&self, training_job: &str, samples: &[MetricSample]) -> Result<(), StoreError> {
        for chunk in samples.chunks(100) {
            let mut st = Statement::default();
            let rows: Vec<Vec<Cell>> = chunk
                .iter()
                .map(|m| {
                    vec![
                        Cell::Bound(Arg::Text(training_job.to_string())),
                        Cell::Bound(Arg::Text(m.name.clone())),
                        Cell::Bound(Arg::Int(m.timestamp.millis())),
                        Cell::Bound(Arg::Float(m.value)),
                        Cell::Bound(Arg::OptInt(m.instance_sample.map(|(instance, _)| i64::from(instance)))),
                        Cell::Bound(Arg::OptInt(m.instance_sample.map(|(_, number)| number))),
                    ]
                })
                .collect();
            let columns = "training_job_name, metric_name, timestamp, value, instance, instance_sample";
            let sql = self.padded_insert(&mut st, "metric_samples", columns, rows, "");
            // Nothing inserted: samples stored before (sent again), or fenced.
            if st.execute(&self.pool, sql).await? == 0 {
                self.fenced_or(Ok(())).await?;
            }
        }
        Ok(())
    }

    async fn read_metrics(&self, training_job: &str) -> Result<Vec<MetricSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT metric_name, timestamp, value, instance, instance_sample FROM metric_samples WHERE training_job_name = $1 \
             ORDER BY timestamp, metric_name",
        )
        .bind(training_job)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(metric_sample).collect()
    }

    async fn read_metric_page(
        &self,
        training_job: &str,
        metric: Option<&str>,
        after: Option<(&str, Timestamp)>,
        limit: u32,
    ) -> Result<Vec<MetricSample>, StoreError> {
        // Built to the conditions given (the Any driver binds no NULL of every type).
        let mut sql = String::from(
            "SELECT metric_name, timestamp, value, instance, instance_sample FROM metric_samples WHERE training_job_name = $1",
        );
        let mut next = 2;
        if metric.is_some() {
            sql.push_str(&format!(" AND metric_name = ${next}"));
            next += 1;
        }
        if after.is_some() {
            sql.push_str(&format!(
                " AND (metric_name > ${a} OR (metric_name = ${a} AND timestamp > ${b}))",
                a = next,
                b = next + 1
            ));
            next += 2;
        }
        sql.push_str(&format!(" ORDER BY metric_name, timestamp LIMIT ${next}"));
        let mut query = sqlx::query(audited(sql)).bind(training_job);
        if let Some(metric) = metric {
            query = query.bind(metric);
        }
        if let Some((name, at)) = after {
            query = query.bind(name).bind(at.millis());
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(metric_sample).collect()
    }

    async fn count_trials(&self, tuning_job: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM training_jobs WHERE tuning_job_name = $1")
            .bind(tuning_job)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn best_trial(&self, tuning_job: &str, maximize: bool) -> Result<Option<TrainingJob>, StoreError> {
        let direction = if maximize { "DESC" } else { "ASC" };
        let row = sqlx::query(audited(format!(
            "SELECT {TRAINING_COLUMNS} FROM training_jobs WHERE tuning_job_name = $1 \
             AND objective_value IS NOT NULL AND status = 'Completed' \
             ORDER BY objective_value {direction}, name ASC LIMIT 1"
        )))
        .bind(tuning_job)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| rows::training_job(r).map(|v| v.value)).transpose()
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "INSERT INTO access_tokens (id, kind, secret_sha256, user_name, scope, description, created_at, \
             expires_at, revoked_at, access_key_id, access_key_sealed, uses_allowed, uses, agent_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&token.id)
        .bind(token.kind.as_str())
        .bind(&token.secret_sha256)
        .bind(&token.user)
        .bind(token.scope.map_or("", Scope::as_str))
        .bind(&token.description)
        .bind(token.created_at.millis())
        .bind(token.expires_at.map(|t| t.millis()))
        .bind(token.revoked_at.map(|t| t.millis()))
        .bind(token.access_key_id.as_deref())
        .bind(token.access_key_sealed.as_deref())
        .bind(token.uses_allowed)
        .bind(token.uses)
        .bind(token.agent_id.as_deref())
        .execute(&mut *tx)
        .await;
        inserted(result, ResourceKind::Token, &token.id)?;
        Ok(tx.commit().await?)
    }

    async fn use_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query(
            "UPDATE access_tokens SET uses = uses + 1 \
             WHERE id = $1 AND kind = 'join' AND (uses_allowed IS NULL OR uses < uses_allowed)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn get_token_by_access_key(&self, access_key_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(audited(format!("SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE access_key_id = $1")))
            .bind(access_key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(audited(format!("SELECT {TOKEN_COLUMNS} FROM access_tokens ORDER BY created_at, id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result = sqlx::query("UPDATE access_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(at.millis())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn put_agent_identity(&self, identity: &AgentIdentity) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO agent_identities (agent_id, certificate_sha256, join_token_id, joined_at, revoked_at) \
             VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (agent_id) DO UPDATE SET \
             certificate_sha256 = $2, join_token_id = $3, joined_at = $4, revoked_at = NULL",
        )
        .bind(&identity.agent_id)
        .bind(&identity.certificate_sha256)
        .bind(&identity.join_token_id)
        .bind(identity.joined_at.millis())
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    async fn agent_identity_by_certificate(
        &self,
        certificate_sha256: &str,
    ) -> Result<Option<AgentIdentity>, StoreError> {
        let row = sqlx::query(
            "SELECT agent_id, certificate_sha256, join_token_id, joined_at, revoked_at FROM agent_identities \
             WHERE certificate_sha256 = $1",
        )
        .bind(certificate_sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::agent_identity).transpose()
    }

    async fn put_cordon(&self, cordon: &AgentCordon) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO agent_cordons (agent_id, mode, by_user, at, stop_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (agent_id) DO UPDATE SET mode = $2, by_user = $3, at = $4, stop_at = $5",
        )
        .bind(&cordon.agent_id)
        .bind(if cordon.drain { "drain" } else { "cordon" })
        .bind(&cordon.by_user)
        .bind(cordon.at.millis())
        .bind(cordon.stop_at.map(|t| t.millis()))
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    async fn prune_ended_jobs(&self, before: trainyard_model::Timestamp, limit: u32) -> Result<(u64, u64), StoreError> {
        let tuning: Vec<String> = sqlx::query_scalar(audited(format!(
            "SELECT name FROM tuning_jobs WHERE status IN {ENDED} AND last_modified_time < $1 \
             ORDER BY last_modified_time, name LIMIT $2"
        )))
        .bind(before.millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let standalone: Vec<String> = sqlx::query_scalar(audited(format!(
            "SELECT name FROM training_jobs WHERE tuning_job_name IS NULL AND status IN {ENDED} \
             AND last_modified_time < $1 ORDER BY last_modified_time, name LIMIT $2"
        )))
        .bind(before.millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut trials = 0u64;
        // One tuning job (with its trials) per transaction: a crash leaves no half-deleted job.
        for name in &tuning {
            let mut tx = self.write().await?;
            for table in ["training_job_logs", "metric_samples"] {
                sqlx::query(audited(format!(
                    "DELETE FROM {table} WHERE training_job_name IN \
                     (SELECT name FROM training_jobs WHERE tuning_job_name = $1)"
                )))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            let deleted = sqlx::query("DELETE FROM training_jobs WHERE tuning_job_name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            trials += deleted.rows_affected();
            sqlx::query("DELETE FROM tuning_jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        for name in &standalone {
            let mut tx = self.write().await?;
            delete_logs_of(&mut tx, name).await?;
            sqlx::query("DELETE FROM training_jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok((tuning.len() as u64, trials + standalone.len() as u64))
    }

    async fn prune_logs(&self, before: trainyard_model::Timestamp, limit: u32) -> Result<u64, StoreError> {
        let ended = |table: &str| {
            format!(
                "SELECT DISTINCT t.training_job_name FROM {table} t JOIN training_jobs j ON j.name = t.training_job_name \
                 WHERE j.status IN {ENDED} AND j.last_modified_time < $1 LIMIT $2"
            )
        };
        let mut names: Vec<String> = Vec::new();
        for table in ["training_job_logs", "metric_samples"] {
            let found: Vec<String> = sqlx::query_scalar(audited(ended(table)))
                .bind(before.millis())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            names.extend(found);
        }
        names.sort();
        names.dedup();
        names.truncate(limit as usize);
        for name in &names {
            let mut tx = self.write().await?;
            delete_logs_of(&mut tx, name).await?;
            tx.commit().await?;
        }
        Ok(names.len() as u64)
    }

    async fn delete_tuning_job(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let ended: Option<String> =
            sqlx::query_scalar(audited(format!("SELECT name FROM tuning_jobs WHERE name = $1 AND status IN {ENDED}")))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if ended.is_none() {
            return Ok(false);
        }
        sqlx::query("UPDATE training_jobs SET tuning_job_name = NULL WHERE tuning_job_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM tuning_jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_cordon(&self, agent_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result =
            sqlx::query("DELETE FROM agent_cordons WHERE agent_id = $1").bind(agent_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn cordons(&self) -> Result<Vec<AgentCordon>, StoreError> {
        let rows = sqlx::query("SELECT agent_id, mode, by_user, at, stop_at FROM agent_cordons ORDER BY agent_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AgentCordon {
                    agent_id: row.try_get("agent_id")?,
                    drain: row.try_get::<String, _>("mode")? == "drain",
                    by_user: row.try_get("by_user")?,
                    at: Timestamp::from_millis(row.try_get("at")?),
                    stop_at: row.try_get::<Option<i64>, _>("stop_at")?.map(Timestamp::from_millis),
                })
            })
            .collect()
    }

    async fn revoke_agent(&self, agent_id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let result =
            sqlx::query("UPDATE agent_identities SET revoked_at = COALESCE(revoked_at, $1) WHERE agent_id = $2")
                .bind(at.millis())
                .bind(agent_id)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn acquire_leadership(
        &self,
        holder: &str,
        address: &str,
        lease: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms_sql(self.backend);
        let epoch: Option<i64> = sqlx::query_scalar(audited(format!(
            "INSERT INTO coordinator_lease (id, epoch, holder, address, expires_at_ms) VALUES (1, 1, $1, $2, {now} + $3) \
             ON CONFLICT (id) DO UPDATE SET epoch = coordinator_lease.epoch + 1, holder = $1, address = $2, \
             expires_at_ms = {now} + $3 \
             WHERE coordinator_lease.expires_at_ms < {now} OR coordinator_lease.holder = $1 \
             RETURNING epoch"
        )))
        .bind(holder)
        .bind(address)
        .bind(millis(lease))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(epoch) = epoch {
            self.fence.store(epoch, Ordering::Release);
        }
        Ok(epoch)
    }

    async fn renew_leadership(&self, epoch: i64, lease: std::time::Duration) -> Result<bool, StoreError> {
        let now = now_ms_sql(self.backend);
        let result = sqlx::query(audited(format!(
            "UPDATE coordinator_lease SET expires_at_ms = {now} + $1 WHERE id = 1 AND epoch = $2"
        )))
        .bind(millis(lease))
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn release_leadership(&self, epoch: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE coordinator_lease SET expires_at_ms = 0 WHERE id = 1 AND epoch = $1")
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn leader(&self) -> Result<Option<LeaderRecord>, StoreError> {
        let now = now_ms_sql(self.backend);
        let row = sqlx::query(audited(format!(
            "SELECT epoch, holder, address, expires_at_ms - {now} AS expires_in_ms FROM coordinator_lease WHERE id = 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(LeaderRecord {
                epoch: row.try_get("epoch")?,
                holder: row.try_get("holder")?,
                address: row.try_get("address")?,
                expires_in_ms: row.try_get("expires_in_ms")?,
            })
        })
        .transpose()
    }

    async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            return Err(StoreError::Unsupported(
                "a PostgreSQL database is backed up with pg_dump (or the platform's point-in-time recovery), not by the coordinator".into(),
            ));
        }
        // Created first, empty and private (VACUUM INTO accepts an empty file): the copy holds
        // users' Environment values, and is never readable by others even for a moment.
        let shown = path.display();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Backup(format!("creating {shown}: {e}")))?;
        let target = path.to_str().ok_or_else(|| StoreError::Backup(format!("{shown} is not UTF-8")))?;
        // One transaction's snapshot: writers go on meanwhile, and what is still in the WAL is in it.
        if let Err(e) = sqlx::query("VACUUM INTO $1").bind(target).execute(&self.pool).await {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        Ok(())
    }
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    /// Two processes opening a new database file at once (a coordinator starting while an admin
    /// command runs) both migrate it: one waits for the other, neither fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_opens_of_a_sqlite_file_both_succeed() {
        let dir = tempfile::tempdir().expect("dir");
        for round in 0..8 {
            let url = format!("sqlite://{}", dir.path().join(format!("race-{round}.db")).display());
            let open = |url: String| tokio::spawn(async move { super::SqlStore::connect(&url).await });
            let (a, b) = tokio::join!(open(url.clone()), open(url));
            for opened in [a, b] {
                if let Err(e) = opened.expect("task") {
                    panic!("round {round}: {e}");
                }
            }
        }
    }

    /// A padded batch's statement: its `VALUES` text and the type of each bound value.
    fn padded(rows: Vec<Vec<super::Cell>>) -> (String, Vec<&'static str>) {
        use super::Arg;
        let mut st = super::Statement::default();
        let values = st.padded_values(rows);
        let types = st
            .args
            .iter()
            .map(|a| match a {
                Arg::Text(_) | Arg::OptText(_) => "text",
                Arg::Int(_) | Arg::OptInt(_) => "bigint",
                Arg::Float(_) => "double",
            })
            .collect();
        (values, types)
    }

    #[test]
    fn batches_of_sizes_up_to_a_power_of_two_share_one_statement_with_the_same_types() {
        use super::{Arg, Cell, NULL_DOUBLE};
        let row = |i: usize| {
            vec![
                Cell::Bound(Arg::Text(format!("job-{i}"))),
                Cell::Bound(Arg::Int(i as i64)),
                Cell::Bound(Arg::OptText(i.is_multiple_of(2).then(|| "reason".to_string()))),
                Cell::Bound(Arg::OptInt(None)),
                Cell::Bound(Arg::Float(0.5)),
                Cell::Sql(NULL_DOUBLE),
                Cell::Sql("1"),
            ]
        };
        let batch = |n: usize| padded((0..n).map(row).collect());
        let (eight, types) = batch(8);
        assert_eq!(types.len(), 8 * 5, "five bound values a row, eight rows");
        for n in 5..8 {
            assert_eq!(batch(n), (eight.clone(), types.clone()), "{n} rows are written as eight");
        }
        assert_ne!(batch(4).0, eight, "four rows are written as four");
        assert_eq!(batch(1).1.len(), 5, "one row alone");
        // The padding's name is NULL (the statements leave such rows out); the rest is typed filler.
        let mut st = super::Statement::default();
        st.padded_values(vec![row(0), row(1), row(2)]);
        let filler = &st.args[15..];
        assert!(matches!(filler[0], Arg::OptText(None)), "{filler:?}");
        assert!(matches!(filler[1], Arg::Int(0)) && matches!(filler[4], Arg::Float(_)), "{filler:?}");
        // Whatever the first column holds, the padding's is NULL.
        for first in [Cell::Bound(Arg::Int(7)), Cell::Bound(Arg::Float(0.5)), Cell::Sql("1")] {
            let padding = super::padding_row(&[first, Cell::Bound(Arg::Int(1))]);
            assert!(
                matches!(padding[0], Cell::Bound(Arg::OptInt(None)) | Cell::Sql("NULL" | NULL_DOUBLE)),
                "{:?}",
                padding.iter().map(|c| matches!(c, Cell::Sql(_))).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(super::redacted("postgres://ty:s3cret@db:5432/ty"), "postgres://ty:***@db:5432/ty");
        assert_eq!(super::redacted("postgres://ty@db/ty"), "postgres://ty@db/ty");
        assert_eq!(super::redacted("postgres://db/ty"), "postgres://db/ty");
    }
}
