//! One conformance suite, run against both backends: SQLite in a temp file and a real throwaway
//! PostgreSQL server. Each case gets a fresh database.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use trainyard_model::access::{Scope, TokenKind};
use trainyard_model::api;
use trainyard_model::jobs::{TrainingJob, TrialOrigin, TuningJob};
use trainyard_model::listing::{ListQuery, SortKey, SortOrder};
use trainyard_model::names::ArnContext;
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus, TuningJobStatus};
use trainyard_model::timestamp::Timestamp;
use trainyard_store::{AgentCordon, AgentIdentity, LogRecord, MetricSample, Store, StoreError, TokenRecord, connect};
use trainyard_testkit::PgServer;

type Case = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),+ $(,)?) => {
        const CASES: &[(&str, Case)] = &[$((stringify!($name), |s| Box::pin($name(s)))),+];
    };
}

cases!(
    created_jobs_read_back_unchanged,
    duplicate_names_are_already_exists,
    jobs_created_together_are_each_stored_or_refused,
    batches_of_every_size_write_their_rows_and_nothing_else,
    updates_are_compare_and_set,
    updates_made_together_are_each_compare_and_set,
    filters_and_sorts_match_sagemaker,
    pagination_stays_correct_while_jobs_arrive,
    trials_are_counted_and_ranked,
    active_jobs_are_found_for_reconciliation,
    logs_and_metrics_append_and_read_in_order,
    metric_pages_go_by_metric_then_time,
    owners_are_stored_and_filter_lists,
    tokens_are_stored_hashed_and_revoked,
    agent_identities_are_replaced_and_revoked,
    cordons_are_replaced_listed_and_removed,
    values_at_their_edges_survive_every_statement,
    retention_deletes_what_ended_long_enough_ago_and_nothing_else,
);

#[tokio::test]
async fn sqlite_backend_conforms() {
    for (name, case) in CASES {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let store = connect(&url).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        eprintln!("sqlite: {name}");
        case(store).await;
    }
}

#[tokio::test]
async fn postgres_backend_conforms() {
    let server = PgServer::start();
    // Every case below talks TLS (verify-full against the test's CA): the server refuses anything else.
    let plain = connect(&server.plain_url()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(plain.contains("no encryption"), "a connection without TLS was not refused: {plain}");
    for (name, case) in CASES {
        let store = connect(&server.fresh_database()).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        eprintln!("postgres: {name}");
        case(store).await;
    }
}

#[tokio::test]
async fn sqlite_leadership_is_one_at_a_time_and_fences_the_old_leader() {
    let dir = tempfile::tempdir().expect("temp dir");
    leadership_is_one_at_a_time_and_fences_the_old_leader(&format!(
        "sqlite://{}",
        dir.path().join("trainyard.db").display()
    ))
    .await;
}

#[tokio::test]
async fn postgres_leadership_is_one_at_a_time_and_fences_the_old_leader() {
    let server = PgServer::start();
    leadership_is_one_at_a_time_and_fences_the_old_leader(&server.fresh_database()).await;
}

/// Two coordinators' stores on one database: one lease, taken over only once it expires, and the
/// old holder's writes refused from then on.
async fn updates_made_together_are_each_compare_and_set(store: Arc<dyn Store>) {
    assert!(store.update_training_jobs(&[]).await.expect("nothing").is_empty());
    for (i, name) in ["queued", "scored", "raced", "ended"].into_iter().enumerate() {
        store.create_training_job(&training(name, i as i64, None)).await.expect("create");
    }
    let read = |name: &'static str| {
        let store = store.clone();
        async move { store.get_training_job(name).await.expect("get").expect("present") }
    };
    // Another writer changes "raced" after it was read at version 1.
    let raced = read("raced").await;
    let mut theirs = raced.value.clone();
    theirs.transition(SecondaryStatus::Downloading, "theirs", Timestamp::from_millis(8)).expect("ok");
    store.update_training_job(&theirs, 1).await.expect("their update");

    // Rows with and without each optional value, in one statement.
    let mut queued = read("queued").await.value;
    queued.transition(SecondaryStatus::Pending, "waits", Timestamp::from_millis(10)).expect("ok");
    let mut scored = read("scored").await.value;
    scored.transition(SecondaryStatus::Training, "Training", Timestamp::from_millis(11)).expect("ok");
    scored.objective_value = Some(0.125);
    let mut mine = raced.value.clone();
    mine.transition(SecondaryStatus::Pending, "mine", Timestamp::from_millis(12)).expect("ok");
    let mut ended = read("ended").await.value;
    ended.request_stop(Timestamp::from_millis(13)).expect("stop");
    ended.transition(SecondaryStatus::Stopped, "Stopped", Timestamp::from_millis(14)).expect("stopped");
    ended.failure_reason = Some("it's \"quoted\"".into());
    let mut again = queued.clone();
    again.transition(SecondaryStatus::Training, "twice", Timestamp::from_millis(15)).expect("ok");
    let batch = [(queued.clone(), 1), (scored.clone(), 1), (mine, 1), (ended.clone(), 1), (again, 1)];
    let outcomes = store.update_training_jobs(&batch).await.expect("batch");
    let conflict = |o: &Result<_, StoreError>| matches!(o, Err(StoreError::Conflict { .. }));
    assert_eq!(outcomes.len(), 5);
    for (i, job) in [(0, &queued), (1, &scored), (3, &ended)] {
        assert_eq!(outcomes[i].as_ref().ok(), Some(&2), "{} is written at version 2", job.name);
        let stored = store.get_training_job(&job.name).await.expect("get").expect("present");
        assert_eq!((&stored.value, stored.version), (job, 2), "{} reads back as written", job.name);
    }
    assert!(conflict(&outcomes[2]), "a stale version loses: {:?}", outcomes[2]);
    assert_eq!(read("raced").await.value, theirs, "and changes nothing");
    assert!(conflict(&outcomes[4]), "a job named twice is written once: {:?}", outcomes[4]);
}

async fn leadership_is_one_at_a_time_and_fences_the_old_leader(url: &str) {
    use std::time::Duration;
    let short = Duration::from_millis(400);
    let a = connect(url).await.expect("connect a");
    let b = connect(url).await.expect("connect b");
    assert_eq!(a.leader().await.expect("leader"), None, "nobody led yet");
    assert_eq!(a.acquire_leadership("a", "a:1", short).await.expect("acquire"), Some(1));
    assert_eq!(b.acquire_leadership("b", "b:1", short).await.expect("acquire"), None, "a holds it");
    let led = b.leader().await.expect("leader").expect("a leads");
    assert_eq!((led.epoch, led.holder.as_str(), led.address.as_str()), (1, "a", "a:1"));
    assert!(led.expires_in_ms > 0 && led.expires_in_ms <= 400, "{led:?}");
    let kept = a.create_tuning_job(&tuning("by-a", 1)).await.expect("the leader writes");
    assert!(a.renew_leadership(1, short).await.expect("renew"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.acquire_leadership("b", "b:1", short).await.expect("take over"), Some(2), "a's lease ran out");
    assert!(!a.renew_leadership(1, short).await.expect("renew"), "a must step down");
    // a, unaware, tries to change things: refused, nothing written.
    let refused = a.create_tuning_job(&tuning("late", 2)).await;
    assert!(matches!(refused, Err(StoreError::Fenced { epoch: 1, current: Some(2) })), "{refused:?}");
    assert!(b.get_tuning_job("late").await.expect("get").is_none());
    let refused = a.create_training_jobs(&[training("late-1", 2, None), training("late-2", 2, None)]).await;
    assert!(matches!(refused, Err(StoreError::Fenced { epoch: 1, current: Some(2) })), "{refused:?}");
    assert!(b.get_training_job("late-1").await.expect("get").is_none());
    let trained = b.create_training_job(&training("by-b", 3, None)).await.expect("the new leader writes");
    let mut pending = trained.value.clone();
    pending.transition(SecondaryStatus::Pending, "waits", Timestamp::from_millis(4)).expect("ok");
    let refused = a.update_training_jobs(&[(pending.clone(), trained.version)]).await;
    assert!(matches!(refused, Err(StoreError::Fenced { epoch: 1, current: Some(2) })), "{refused:?}");
    assert_eq!(b.get_training_job("by-b").await.expect("get").expect("present").version, trained.version);
    let mut stopping = kept.value.clone();
    stopping.request_stop(Timestamp::from_millis(5)).expect("stop");
    assert!(matches!(a.update_tuning_job(&stopping, kept.version).await, Err(StoreError::Fenced { .. })));
    let lines = [LogRecord {
        seq: 1,
        instance: 1,
        stream: "stdout".into(),
        timestamp: Timestamp::from_millis(1),
        text: "x".into(),
        instance_line: Some(1),
    }];
    assert!(matches!(a.append_logs("by-a", &lines).await, Err(StoreError::Fenced { .. })));
    let unchanged = b.get_tuning_job("by-a").await.expect("get").expect("present");
    assert_eq!(unchanged.version, kept.version, "the old leader changed nothing");
    b.update_tuning_job(&stopping, kept.version).await.expect("the new leader writes");

    // A restart of the holder takes its own lease back at once (a new epoch); the other waits.
    // (b's lease renewed for long first: the steps above may outlast a short one on a busy
    // machine, and then a would rightly take over.)
    assert!(b.renew_leadership(2, Duration::from_secs(60)).await.expect("renew"), "b still leads");
    assert_eq!(a.acquire_leadership("a", "a:1", short).await.expect("acquire"), None);
    let b2 = connect(url).await.expect("b restarted");
    assert_eq!(b2.acquire_leadership("b", "b:2", short).await.expect("acquire"), Some(3));
    assert!(matches!(b.create_tuning_job(&tuning("stale-b", 3)).await, Err(StoreError::Fenced { .. })));
    // An orderly stop hands over at once.
    b2.release_leadership(3).await.expect("release");
    assert_eq!(a.acquire_leadership("a", "a:1", short).await.expect("acquire"), Some(4));
    a.create_tuning_job(&tuning("by-a-again", 4)).await.expect("a leads again");
    // A store that never led (the admin commands) is not fenced.
    let admin = connect(url).await.expect("admin");
    admin.create_tuning_job(&tuning("by-admin", 5)).await.expect("unfenced write");
}

#[tokio::test]
async fn migrations_run_once_and_reopen_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("reopen.db").display());
    let store = connect(&url).await.expect("first open");
    store.create_tuning_job(&tuning("kept", 1)).await.expect("create");
    drop(store);
    let store = connect(&url).await.expect("second open");
    assert!(store.get_tuning_job("kept").await.expect("get").is_some(), "data survives a reopen");
    assert!(matches!(connect("mysql://x").await, Err(StoreError::UnsupportedUrl(_))));
}

/// An online backup: a copy taken while writers go on holds everything committed before it (in
/// the WAL or not), nothing half-written, is private, and opens as a store of its own.
#[tokio::test]
async fn sqlite_backups_are_consistent_copies_taken_while_writers_go_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = connect(&format!("sqlite://{}", dir.path().join("live.db").display())).await.expect("open");
    for i in 0..50 {
        store.create_tuning_job(&tuning(&format!("before-{i}"), i)).await.expect("create");
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store.create_tuning_job(&tuning(&format!("during-{i}"), 100 + i)).await.expect("create during");
            }
        })
    };
    let copy = dir.path().join("copy.db");
    store.backup_to(&copy).await.expect("backup");
    writer.await.expect("writer");
    let mode = std::fs::metadata(&copy).expect("copy").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy holds users' Environment values");
    // A second backup to the same file is refused: nothing is overwritten.
    assert!(matches!(store.backup_to(&copy).await, Err(StoreError::Backup(_))));

    let restored = connect(&format!("sqlite://{}", copy.display())).await.expect("open the copy");
    let names = names_of_tuning(&restored, &query(SortKey::CreationTime, SortOrder::Ascending, 1000)).await;
    for i in 0..50 {
        assert!(names.contains(&format!("before-{i}")), "before-{i} is missing from the copy");
    }
    // Jobs written meanwhile are in it up to some point, in order: a prefix, never a gap.
    let during = names.iter().filter(|n| n.starts_with("during-")).count();
    for i in 0..during {
        assert!(names.contains(&format!("during-{i}")), "the copy has a gap at during-{i}");
    }
}

/// The pool pings a connection only when it sat idle a while: those a server restart ended are
/// replaced before any call gets one, so the calls after it succeed.
#[tokio::test]
async fn postgres_connections_a_restart_ended_are_replaced_before_use() {
    let server = PgServer::start();
    let store = connect(&server.fresh_database()).await.expect("connect");
    let calls = |store: Arc<dyn Store>| async move {
        // Concurrent, so that the pool holds several connections.
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.count_active_tuning_jobs().await })
            })
            .collect();
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.expect("task"));
        }
        results
    };
    assert!(calls(store.clone()).await.iter().all(Result::is_ok));
    server.restart_immediately();
    // Past the second of idleness after which the pool pings a connection before handing it out.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = calls(store.clone()).await;
    assert!(after.iter().all(Result::is_ok), "calls after the restart: {after:?}");
}

#[tokio::test]
async fn postgres_backups_are_left_to_pg_dump() {
    let server = PgServer::start();
    let store = connect(&server.fresh_database()).await.expect("connect");
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = store.backup_to(&dir.path().join("copy.db")).await;
    assert!(matches!(&refused, Err(StoreError::Unsupported(m)) if m.contains("pg_dump")), "{refused:?}");
    assert!(!dir.path().join("copy.db").exists());
}

// ----- builders -----

fn example() -> api::CreateHyperParameterTuningJobRequest {
    serde_json::from_str(include_str!("../../../deploy/examples/tuning-job.json")).expect("example")
}

fn tuning(name: &str, created: i64) -> TuningJob {
    let mut request = example();
    request.hyper_parameter_tuning_job_name = Some(name.to_string());
    TuningJob::new(request, &ArnContext::default(), Timestamp::from_millis(created)).expect("tuning job")
}

fn training(name: &str, created: i64, tuning_job: Option<&str>) -> TrainingJob {
    let mut request: api::CreateTrainingJobRequest =
        serde_json::from_str(include_str!("../../../deploy/examples/training-job.json")).expect("example");
    request.training_job_name = Some(name.to_string());
    let origin = tuning_job.map(|t| TrialOrigin {
        tuning_job_name: t.to_string(),
        definition_name: None,
        tuned_hyper_parameters: BTreeMap::from([("learning_rate".to_string(), "0.1".to_string())]),
    });
    TrainingJob::new(request, origin, &ArnContext::default(), Timestamp::from_millis(created)).expect("training job")
}

fn query(sort_by: SortKey, sort_order: SortOrder, limit: u32) -> ListQuery {
    ListQuery { filter: Default::default(), sort_by, sort_order, limit, after: None }
}

async fn names_of_tuning(store: &Arc<dyn Store>, q: &ListQuery) -> Vec<String> {
    store.list_tuning_jobs(q).await.expect("list").items.into_iter().map(|j| j.name).collect()
}

// ----- cases -----

async fn created_jobs_read_back_unchanged(store: Arc<dyn Store>) {
    let job = tuning("roundtrip", 1_700_000_000_123);
    let stored = store.create_tuning_job(&job).await.expect("create");
    assert_eq!(stored.version, 1);
    let read = store.get_tuning_job("roundtrip").await.expect("get").expect("present");
    assert_eq!(read.value, job);
    let mut completed = job.clone();
    completed.completion = Some(api::HyperParameterTuningJobCompletionDetails {
        convergence_detected_time: Some(Timestamp::from_millis(1_700_000_009_000)),
        number_of_training_jobs_objective_not_improving: Some(4),
    });
    store.update_tuning_job(&completed, 1).await.expect("update");
    let read = store.get_tuning_job("roundtrip").await.expect("get").expect("present");
    assert_eq!(read.value, completed, "completion details are stored");
    assert!(store.get_tuning_job("absent").await.expect("get").is_none());

    let mut trial = training("roundtrip-001-0000abcd", 1_700_000_000_500, Some("roundtrip"));
    trial
        .transition(
            SecondaryStatus::Training,
            "Training image download completed",
            Timestamp::from_millis(1_700_000_001_000),
        )
        .expect("ok");
    trial.final_metrics.push(api::MetricData {
        metric_name: Some("validation:accuracy".into()),
        timestamp: Some(Timestamp::from_millis(1_700_000_002_000)),
        value: Some(0.93),
    });
    trial.objective_value = Some(0.93);
    store.create_training_job(&trial).await.expect("create trial");
    let read = store.get_training_job(&trial.name).await.expect("get").expect("present");
    assert_eq!(read.value, trial);
}

async fn duplicate_names_are_already_exists(store: Arc<dyn Store>) {
    store.create_tuning_job(&tuning("twice", 1)).await.expect("first");
    let second = store.create_tuning_job(&tuning("twice", 2)).await;
    assert!(matches!(second, Err(StoreError::AlreadyExists { .. })), "{second:?}");
    // The first one is untouched.
    let kept = store.get_tuning_job("twice").await.expect("get").expect("present");
    assert_eq!(kept.value.creation_time, Timestamp::from_millis(1));

    store.create_training_job(&training("t-twice", 1, None)).await.expect("first");
    let second = store.create_training_job(&training("t-twice", 2, None)).await;
    assert!(matches!(second, Err(StoreError::AlreadyExists { .. })), "{second:?}");
}

/// A group commit: one statement for several creates, each answered as if made alone, in order.
async fn jobs_created_together_are_each_stored_or_refused(store: Arc<dyn Store>) {
    store.create_tuning_job(&tuning("taken", 1)).await.expect("before");
    let batch = [tuning("first", 2), tuning("second", 3), tuning("first", 4), tuning("taken", 5)];
    let outcomes = store.create_tuning_jobs(&batch).await.expect("batch");
    let taken = |o: &Result<_, StoreError>| matches!(o, Err(StoreError::AlreadyExists { .. }));
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    assert!(taken(&outcomes[2]), "a name repeated in the batch is taken by its first job: {:?}", outcomes[2]);
    assert!(taken(&outcomes[3]), "a name stored before is taken: {:?}", outcomes[3]);
    for (name, created) in [("first", 2), ("second", 3), ("taken", 1)] {
        let read = store.get_tuning_job(name).await.expect("get").expect("present");
        assert_eq!(read.value.creation_time, Timestamp::from_millis(created), "{name}");
        assert_eq!(read.version, 1);
    }
    assert_eq!(store.get_tuning_job("first").await.expect("get").expect("present").value, batch[0]);

    // Rows with and without each optional value, side by side in one statement.
    let mut scored = training("first-001-0000abcd", 10, Some("first"));
    scored.objective_value = Some(0.25);
    scored.failure_reason = Some("it's \"quoted\"".into());
    let plain = training("plain", 11, None);
    let mut started = training("started", 12, None);
    started.transition(SecondaryStatus::Training, "Training", Timestamp::from_millis(13)).expect("ok");
    let batch = [scored, plain, started];
    let outcomes = store.create_training_jobs(&batch).await.expect("batch");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for job in &batch {
        let read = store.get_training_job(&job.name).await.expect("get").expect("present");
        assert_eq!(&read.value, job, "{} reads back as written", job.name);
    }

    // A statement that fails (a trial of a tuning job that does not exist) stores none of the batch.
    let batch = [training("orphan-ok", 20, None), training("orphan-001-0000abcd", 21, Some("no-such-tuning-job"))];
    let failed = store.create_training_jobs(&batch).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(store.get_training_job("orphan-ok").await.expect("get").is_none(), "nothing half-written");
}

/// Batch statements are padded to a power of two with rows that must write nothing: every size,
/// twice over (so that a connection runs a statement with fewer and with more real rows), on
/// creates, updates, log lines and metric samples.
async fn batches_of_every_size_write_their_rows_and_nothing_else(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for round in 0..2 {
        for size in 1..=9 {
            let batch: Vec<TrainingJob> =
                (0..size).map(|i| training(&format!("b{round}-{size}-{i}"), i64::from(size * 10 + i), None)).collect();
            let outcomes = store.create_training_jobs(&batch).await.expect("batch");
            assert!(outcomes.len() == batch.len() && outcomes.iter().all(Result::is_ok), "{size}: {outcomes:?}");
            created.extend(batch);
        }
    }
    let stored = store.list_training_jobs(&query(SortKey::Name, SortOrder::Ascending, 100)).await.expect("list");
    assert_eq!(stored.items.len(), created.len(), "no padding row was stored");
    // Updated in batches of every size, with an objective on some.
    let mut at = 0;
    for size in (1..=9).cycle() {
        if at >= created.len() {
            break;
        }
        let batch: Vec<(TrainingJob, i64)> = created[at..(at + size).min(created.len())]
            .iter()
            .map(|job| {
                let mut job = job.clone();
                job.transition(SecondaryStatus::Pending, "waits", Timestamp::from_millis(500)).expect("ok");
                job.objective_value = (at % 2 == 0).then_some(0.5);
                (job, 1)
            })
            .collect();
        let outcomes = store.update_training_jobs(&batch).await.expect("batch");
        assert!(outcomes.iter().all(|o| o.as_ref().ok() == Some(&2)), "{size}: {outcomes:?}");
        for (job, _) in &batch {
            let read = store.get_training_job(&job.name).await.expect("get").expect("present");
            assert_eq!((&read.value, read.version), (job, 2));
        }
        at += size;
    }
    // Log lines and metric samples.
    let mut seq = 0;
    for size in (1..=9).chain(1..=9) {
        let lines: Vec<LogRecord> = (0..size)
            .map(|_| {
                seq += 1;
                LogRecord {
                    seq,
                    instance: 1,
                    stream: "stdout".into(),
                    timestamp: Timestamp::from_millis(seq),
                    text: format!("line {seq}"),
                    instance_line: Some(seq),
                }
            })
            .collect();
        store.append_logs("logged", &lines).await.expect("append");
        let samples: Vec<MetricSample> = lines
            .iter()
            .map(|l| MetricSample {
                name: "loss".into(),
                timestamp: l.timestamp,
                value: l.seq as f64 / 10.0,
                instance_sample: Some((1, l.seq)),
            })
            .collect();
        store.append_metrics("logged", &samples).await.expect("append");
    }
    let read = store.read_logs("logged", 0, 1000).await.expect("read");
    assert_eq!(read.iter().map(|l| l.seq).collect::<Vec<_>>(), (1..=seq).collect::<Vec<_>>());
    let metrics = store.read_metrics("logged").await.expect("read");
    assert_eq!(metrics.len(), seq as usize, "no padding sample was stored");
    assert!(metrics.iter().all(|m| m.name == "loss" && (m.value * 10.0 - m.timestamp.millis() as f64).abs() < 1e-9));
}

async fn updates_are_compare_and_set(store: Arc<dyn Store>) {
    let created = store.create_tuning_job(&tuning("cas", 1)).await.expect("create");
    let mut stopping = created.value.clone();
    stopping.request_stop(Timestamp::from_millis(5)).expect("stop");
    let updated = store.update_tuning_job(&stopping, created.version).await.expect("update");
    assert_eq!(updated.version, 2);

    // A writer that read version 1 loses and changes nothing.
    let mut stale = created.value.clone();
    stale.transition(TuningJobStatus::Failed, Timestamp::from_millis(6)).expect("valid transition");
    let lost = store.update_tuning_job(&stale, created.version).await;
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    let now = store.get_tuning_job("cas").await.expect("get").expect("present");
    assert_eq!((now.value.status, now.version), (TuningJobStatus::Stopping, 2));

    let t = store.create_training_job(&training("t-cas", 1, None)).await.expect("create");
    let mut stopped = t.value.clone();
    stopped.request_stop(Timestamp::from_millis(2)).expect("stop");
    stopped.transition(SecondaryStatus::Stopped, "Stopped", Timestamp::from_millis(3)).expect("stopped");
    store.update_training_job(&stopped, 1).await.expect("update");
    assert!(matches!(store.update_training_job(&stopped, 1).await, Err(StoreError::Conflict { .. })));
    let read = store.get_training_job("t-cas").await.expect("get").expect("present").value;
    assert_eq!(read.status, TrainingJobStatus::Stopped);
    assert_eq!(read.transitions.len(), 3, "Starting, Stopping, Stopped");
}

async fn filters_and_sorts_match_sagemaker(store: Arc<dyn Store>) {
    for (i, name) in ["Bravo-tune", "alpha-tune", "charlie-other", "delta-tune"].iter().enumerate() {
        let job = tuning(name, 1_000 * (i as i64 + 1));
        store.create_tuning_job(&job).await.expect("create");
    }
    let mut stopped = store.get_tuning_job("delta-tune").await.expect("get").expect("present");
    stopped.value.request_stop(Timestamp::from_millis(9_000)).expect("stop");
    store.update_tuning_job(&stopped.value, stopped.version).await.expect("update");

    // Name sort is bytewise on both backends: upper case first.
    let by_name = query(SortKey::Name, SortOrder::Ascending, 100);
    assert_eq!(names_of_tuning(&store, &by_name).await, ["Bravo-tune", "alpha-tune", "charlie-other", "delta-tune"]);
    let by_time_desc = query(SortKey::CreationTime, SortOrder::Descending, 100);
    assert_eq!(
        names_of_tuning(&store, &by_time_desc).await,
        ["delta-tune", "charlie-other", "alpha-tune", "Bravo-tune"]
    );
    let by_status = query(SortKey::Status, SortOrder::Ascending, 100);
    assert_eq!(names_of_tuning(&store, &by_status).await, ["Bravo-tune", "alpha-tune", "charlie-other", "delta-tune"]);

    let mut contains = query(SortKey::Name, SortOrder::Ascending, 100);
    contains.filter.name_contains = Some("TUNE".into());
    assert_eq!(
        names_of_tuning(&store, &contains).await,
        ["Bravo-tune", "alpha-tune", "delta-tune"],
        "case-insensitive"
    );
    contains.filter.name_contains = Some("%".into());
    assert!(names_of_tuning(&store, &contains).await.is_empty(), "LIKE wildcards are literal");

    let mut status = query(SortKey::Name, SortOrder::Ascending, 100);
    status.filter.status_equals = Some("Stopping".into());
    assert_eq!(names_of_tuning(&store, &status).await, ["delta-tune"]);

    let mut window = query(SortKey::CreationTime, SortOrder::Ascending, 100);
    window.filter.creation_time_after = Some(Timestamp::from_millis(1_000));
    window.filter.creation_time_before = Some(Timestamp::from_millis(4_000));
    assert_eq!(names_of_tuning(&store, &window).await, ["alpha-tune", "charlie-other"], "bounds are exclusive");
    let mut modified = query(SortKey::Name, SortOrder::Ascending, 100);
    modified.filter.last_modified_time_after = Some(Timestamp::from_millis(8_000));
    assert_eq!(names_of_tuning(&store, &modified).await, ["delta-tune"]);

    let mut nothing = query(SortKey::Name, SortOrder::Ascending, 100);
    nothing.filter.matches_nothing = true;
    assert!(names_of_tuning(&store, &nothing).await.is_empty());
}

async fn pagination_stays_correct_while_jobs_arrive(store: Arc<dyn Store>) {
    for i in 0..25 {
        store.create_training_job(&training(&format!("job-{i:02}"), 10_000 + i, None)).await.expect("create");
    }
    for (sort_by, order) in [
        (SortKey::Name, SortOrder::Ascending),
        (SortKey::CreationTime, SortOrder::Ascending),
        (SortKey::CreationTime, SortOrder::Descending),
        (SortKey::Status, SortOrder::Descending),
    ] {
        let mut q = query(sort_by, order, 10);
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.list_training_jobs(&q).await.expect("page");
            seen.extend(page.items.iter().map(|j| j.name.clone()));
            pages += 1;
            // New jobs arrive between pages: before and after the cursor in every order.
            for extra in ["aaa", "zzz"] {
                let name = format!("{extra}-{sort_by:?}-{order:?}-{pages}").to_lowercase();
                let created = if extra == "aaa" { 0 } else { 99_999 };
                store.create_training_job(&training(&name, created, None)).await.expect("arrival");
            }
            let Some(token) = page.next_token else { break };
            let request = api::ListTrainingJobsRequest {
                next_token: Some(token),
                max_results: Some(10),
                sort_by: Some(format!("{sort_by:?}")),
                sort_order: Some(format!("{order:?}")),
                ..Default::default()
            };
            q = ListQuery::for_training_jobs(&request, None).expect("token resumes");
        }
        let originals: Vec<&String> = seen.iter().filter(|n| n.starts_with("job-")).collect();
        let mut expected: Vec<String> = (0..25).map(|i| format!("job-{i:02}")).collect();
        if order == SortOrder::Descending {
            expected.reverse();
        }
        let expected: Vec<&String> = expected.iter().collect();
        assert_eq!(originals, expected, "{sort_by:?} {order:?}: every original job exactly once, in order");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{sort_by:?} {order:?}: no job twice");
    }
}

async fn trials_are_counted_and_ranked(store: Arc<dyn Store>) {
    store.create_tuning_job(&tuning("hpo", 1)).await.expect("create");
    store.create_tuning_job(&tuning("idle", 2)).await.expect("create");
    let results = [
        ("hpo-001-00000001", Some(0.5)),
        ("hpo-002-00000002", Some(0.9)),
        ("hpo-003-00000003", None),
        ("hpo-004-00000004", Some(0.7)),
    ];
    for (i, (name, objective)) in results.iter().enumerate() {
        let mut t = training(name, 10 + i as i64, Some("hpo"));
        let now = Timestamp::from_millis(100 + i as i64);
        t.transition(SecondaryStatus::Training, "Training", now).expect("training");
        t.objective_value = *objective;
        let end = if objective.is_some() { SecondaryStatus::Completed } else { SecondaryStatus::Failed };
        t.transition(end, "done", now).expect("end");
        store.create_training_job(&t).await.expect("create");
    }
    store.create_training_job(&training("hpo-005-00000005", 20, Some("hpo"))).await.expect("running one");

    let counts = store.trial_counts(&["hpo".to_string(), "idle".to_string()]).await.expect("counts");
    let c = counts.get("hpo").expect("hpo counted");
    assert_eq!((c.completed, c.non_retryable_error, c.in_progress, c.stopped), (3, 1, 1, 0));
    assert_eq!((c.objective_succeeded, c.objective_failed, c.objective_pending), (3, 1, 1));
    assert!(!counts.contains_key("idle"));

    let best = store.best_trial("hpo", true).await.expect("best").expect("some");
    assert_eq!(best.name, "hpo-002-00000002");
    let best_min = store.best_trial("hpo", false).await.expect("best").expect("some");
    assert_eq!(best_min.name, "hpo-001-00000001");
    assert!(store.best_trial("idle", true).await.expect("best").is_none());

    let mut by_objective = query(SortKey::FinalObjectiveMetricValue, SortOrder::Descending, 2);
    by_objective.filter.tuning_job_name = Some("hpo".into());
    let first = store.list_training_jobs(&by_objective).await.expect("list");
    let names: Vec<_> = first.items.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["hpo-002-00000002", "hpo-004-00000004"]);
    let request = api::ListTrainingJobsForHyperParameterTuningJobRequest {
        hyper_parameter_tuning_job_name: Some("hpo".into()),
        sort_by: Some("FinalObjectiveMetricValue".into()),
        sort_order: Some("Descending".into()),
        max_results: Some(2),
        next_token: first.next_token,
        ..Default::default()
    };
    let rest = store.list_training_jobs(&ListQuery::for_trials(&request).expect("resume")).await.expect("list");
    let names: Vec<_> = rest.items.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["hpo-001-00000001"], "jobs without an objective value are left out of this sort");
    assert!(rest.next_token.is_none());
}

async fn active_jobs_are_found_for_reconciliation(store: Arc<dyn Store>) {
    store.create_tuning_job(&tuning("running", 1)).await.expect("create");
    let mut done = tuning("done", 2);
    done.transition(TuningJobStatus::Completed, Timestamp::from_millis(3)).expect("complete");
    store.create_tuning_job(&done).await.expect("create");
    let active: Vec<String> =
        store.active_tuning_jobs().await.expect("active").into_iter().map(|v| v.value.name).collect();
    assert_eq!(active, ["running"]);
    assert_eq!(store.count_active_tuning_jobs().await.expect("count"), 1);

    store.create_training_job(&training("t-running", 1, None)).await.expect("create");
    let trial = training("running-001-00000001", 2, Some("running"));
    store.create_training_job(&trial).await.expect("create");
    let mut t_done = training("t-done", 2, None);
    t_done.transition(SecondaryStatus::Completed, "done", Timestamp::from_millis(3)).expect("done");
    store.create_training_job(&t_done).await.expect("create");
    let names =
        |jobs: Vec<trainyard_store::Versioned<TrainingJob>>| jobs.into_iter().map(|v| v.value.name).collect::<Vec<_>>();
    let all = store.active_training_jobs(None).await.expect("active");
    assert_eq!(names(all), ["t-running", "running-001-00000001"]);
    let of_running = store.active_training_jobs(Some("running")).await.expect("active");
    assert_eq!(names(of_running), ["running-001-00000001"]);
}

async fn logs_and_metrics_append_and_read_in_order(store: Arc<dyn Store>) {
    use trainyard_store::{LogRecord, MetricSample};
    let lines: Vec<LogRecord> = (1..=250)
        .map(|seq| LogRecord {
            seq,
            instance: 1,
            stream: if seq % 2 == 0 { "stderr".into() } else { "stdout".into() },
            timestamp: Timestamp::from_millis(seq),
            text: format!("line {seq} with 'quotes' and ünïcode"),
            instance_line: Some(seq),
        })
        .collect();
    store.append_logs("job", &lines[..120]).await.expect("append");
    store.append_logs("job", &lines[100..]).await.expect("append with overlap is idempotent");
    assert_eq!(store.last_log_seq("job").await.expect("last"), 250);
    assert_eq!(store.last_log_seq("other").await.expect("last"), 0);
    let first = store.read_logs("job", 0, 100).await.expect("read");
    assert_eq!(first.len(), 100);
    assert_eq!(first[0], lines[0]);
    let rest = store.read_logs("job", 240, 100).await.expect("read");
    assert_eq!(rest.iter().map(|l| l.seq).collect::<Vec<_>>(), (241..=250).collect::<Vec<_>>());
    // One instance's stream: lines of instance 2 only, stamped at 200 or later, after seq 230.
    let mut second: Vec<LogRecord> = (1..=20)
        .map(|seq| LogRecord {
            seq,
            instance: 1 + (seq as u32 % 2),
            stream: "stdout".into(),
            timestamp: Timestamp::from_millis(seq * 10),
            text: format!("{seq}"),
            instance_line: None,
        })
        .collect();
    second.retain(|l| l.instance == 2 || l.seq < 5);
    store.append_logs("pair", &second).await.expect("append");
    let read = store.read_instance_logs("pair", 2, Timestamp::from_millis(60), 0, 100).await.expect("read");
    assert_eq!(read.iter().map(|l| l.seq).collect::<Vec<_>>(), [7, 9, 11, 13, 15, 17, 19]);
    let read = store.read_instance_logs("pair", 2, Timestamp::from_millis(60), 11, 2).await.expect("read");
    assert_eq!(read.iter().map(|l| l.seq).collect::<Vec<_>>(), [13, 15]);
    assert!(store.read_instance_logs("pair", 3, Timestamp::from_millis(0), 0, 100).await.expect("read").is_empty());
    // Lines an agent sends again (their coordinator died before confirming them) come under new
    // sequence numbers: those whose instance and number are stored already are not stored twice,
    // the others are; lines no agent numbered never collide.
    let resent: Vec<LogRecord> = (245..=255)
        .map(|n| LogRecord { seq: n + 1000, instance_line: Some(n), text: format!("again {n}"), ..lines[0].clone() })
        .collect();
    store.append_logs("job", &resent).await.expect("append re-sent lines");
    let after = store.read_logs("job", 250, 100).await.expect("read");
    assert_eq!(after.iter().map(|l| l.seq).collect::<Vec<_>>(), (1251..=1255).collect::<Vec<_>>());
    assert_eq!(after[0].text, "again 251");
    let other_instance = LogRecord { seq: 2000, instance: 2, instance_line: Some(1), ..lines[0].clone() };
    let unnumbered = LogRecord { seq: 2001, instance_line: None, ..lines[0].clone() };
    let unnumbered_too = LogRecord { seq: 2002, ..unnumbered.clone() };
    store.append_logs("job", &[other_instance, unnumbered, unnumbered_too]).await.expect("append");
    assert_eq!(store.read_logs("job", 1255, 100).await.expect("read").len(), 3);

    let samples = vec![
        MetricSample { name: "loss".into(), timestamp: Timestamp::from_millis(2), value: 0.5, instance_sample: None },
        MetricSample { name: "loss".into(), timestamp: Timestamp::from_millis(1), value: 0.9, instance_sample: None },
    ];
    store.append_metrics("job", &samples).await.expect("append");
    let read = store.read_metrics("job").await.expect("read");
    assert_eq!(read.iter().map(|m| m.value).collect::<Vec<_>>(), [0.9, 0.5], "ordered by time");
    // Numbered samples sent again are stored once; another instance's numbers are its own.
    let numbered = |instance: u32, number: i64, value: f64| MetricSample {
        name: "score".into(),
        timestamp: Timestamp::from_millis(10 * i64::from(instance) + number),
        value,
        instance_sample: Some((instance, number)),
    };
    store.append_metrics("job", &[numbered(1, 1, 0.1), numbered(1, 2, 0.2)]).await.expect("append");
    store
        .append_metrics("job", &[numbered(1, 2, 0.2), numbered(1, 3, 0.3), numbered(2, 1, 0.4)])
        .await
        .expect("append what was sent again");
    store.append_metrics("job", &[numbered(1, 1, 0.1)]).await.expect("all of it stored before");
    let scores: Vec<MetricSample> =
        store.read_metrics("job").await.expect("read").into_iter().filter(|m| m.name == "score").collect();
    assert_eq!(scores, [numbered(1, 1, 0.1), numbered(1, 2, 0.2), numbered(1, 3, 0.3), numbered(2, 1, 0.4)]);
    assert_eq!(store.read_metrics("job").await.expect("read").len(), 6, "unnumbered samples never collide");

    store.create_tuning_job(&tuning("counted", 1)).await.expect("create");
    for i in 1..=3 {
        store
            .create_training_job(&training(&format!("counted-00{i}-0000000{i}"), i, Some("counted")))
            .await
            .expect("trial");
    }
    assert_eq!(store.count_trials("counted").await.expect("count"), 3);
}

async fn metric_pages_go_by_metric_then_time(store: Arc<dyn Store>) {
    let sample = |name: &str, at: i64| MetricSample {
        name: name.into(),
        timestamp: Timestamp::from_millis(at),
        value: at as f64,
        instance_sample: None,
    };
    // Stored out of order, one sample shared by two instances (loss at 3), another job's beside.
    let samples = [sample("loss", 3), sample("acc", 2), sample("loss", 1), sample("loss", 3), sample("acc", 1)];
    store.append_metrics("paged", &samples).await.expect("append");
    store.append_metrics("paged-other", &[sample("acc", 9)]).await.expect("append");
    let key = |page: &[MetricSample]| page.iter().map(|s| (s.name.clone(), s.timestamp.millis())).collect::<Vec<_>>();
    let all = store.read_metric_page("paged", None, None, 100).await.expect("page");
    let expected = [("acc", 1), ("acc", 2), ("loss", 1), ("loss", 3), ("loss", 3)];
    assert_eq!(key(&all), expected.map(|(n, t)| (n.to_string(), t)));
    let first = store.read_metric_page("paged", None, None, 2).await.expect("page");
    assert_eq!(key(&first), [("acc".to_string(), 1), ("acc".to_string(), 2)]);
    let rest = store.read_metric_page("paged", None, Some(("acc", Timestamp::from_millis(2))), 10).await.expect("page");
    assert_eq!(rest.len(), 3, "after the last acc sample: every loss sample");
    let losses = store.read_metric_page("paged", Some("loss"), None, 10).await.expect("page");
    assert_eq!(key(&losses), [("loss".to_string(), 1), ("loss".to_string(), 3), ("loss".to_string(), 3)]);
    let later = store.read_metric_page("paged", Some("loss"), Some(("loss", Timestamp::from_millis(1))), 10).await;
    assert_eq!(later.expect("page").len(), 2);
    assert!(store.read_metric_page("paged", Some("nothing"), None, 10).await.expect("page").is_empty());
    assert!(store.read_metric_page("no-such-job", None, None, 10).await.expect("page").is_empty());
}

async fn owners_are_stored_and_filter_lists(store: Arc<dyn Store>) {
    let mut mine = tuning("ana-tuning", 1);
    mine.owner = "ana".into();
    store.create_tuning_job(&mine).await.expect("create");
    store.create_tuning_job(&tuning("nobodys", 2)).await.expect("create");
    let mut trial = training("ana-trial", 3, Some("ana-tuning"));
    trial.owner = "ana".into();
    store.create_training_job(&trial).await.expect("create");
    store.create_training_job(&training("bo-job", 4, None)).await.expect("create");

    assert_eq!(store.get_tuning_job("ana-tuning").await.expect("get").expect("some").value.owner, "ana");
    assert_eq!(store.get_training_job("bo-job").await.expect("get").expect("some").value.owner, "");
    let mut q = query(SortKey::Name, SortOrder::Ascending, 10);
    q.filter.owner = Some("ana".into());
    assert_eq!(names_of_tuning(&store, &q).await, vec!["ana-tuning"]);
    let trainings = store.list_training_jobs(&q).await.expect("list");
    assert_eq!(trainings.items.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), vec!["ana-trial"]);
    q.filter.owner = None;
    assert_eq!(names_of_tuning(&store, &q).await, vec!["ana-tuning", "nobodys"]);
}

async fn tokens_are_stored_hashed_and_revoked(store: Arc<dyn Store>) {
    let token = TokenRecord {
        id: "0123456789ab".into(),
        kind: TokenKind::Api,
        secret_sha256: "f".repeat(64),
        user: "ana".into(),
        scope: Some(Scope::Submit),
        description: "laptop".into(),
        created_at: Timestamp::from_millis(10),
        expires_at: Some(Timestamp::from_millis(1_000)),
        revoked_at: None,
        access_key_id: Some("TYAK0123456789AB".into()),
        access_key_sealed: Some("00ff".into()),
        uses_allowed: None,
        uses: 0,
        agent_id: None,
    };
    let join = TokenRecord {
        id: "ba9876543210".into(),
        kind: TokenKind::Join,
        scope: None,
        created_at: Timestamp::from_millis(20),
        expires_at: None,
        access_key_id: None,
        access_key_sealed: None,
        uses_allowed: Some(2),
        agent_id: Some("gpu-7".into()),
        ..token.clone()
    };
    store.create_token(&token).await.expect("create");
    store.create_token(&join).await.expect("create");
    assert!(matches!(store.create_token(&token).await, Err(StoreError::AlreadyExists { .. })));
    assert_eq!(store.get_token(&token.id).await.expect("get"), Some(token.clone()));
    assert_eq!(store.list_tokens().await.expect("list"), vec![token.clone(), join.clone()]);
    assert_eq!(store.get_token("nope").await.expect("get"), None);
    assert_eq!(store.get_token_by_access_key("TYAK0123456789AB").await.expect("get"), Some(token.clone()));
    assert_eq!(store.get_token_by_access_key("nope").await.expect("get"), None);

    assert!(store.revoke_token(&token.id, Timestamp::from_millis(50)).await.expect("revoke"));
    assert!(store.revoke_token(&token.id, Timestamp::from_millis(90)).await.expect("again"));
    assert!(!store.revoke_token("nope", Timestamp::from_millis(50)).await.expect("revoke"));
    let revoked = store.get_token(&token.id).await.expect("get").expect("some");
    assert_eq!(revoked.revoked_at, Some(Timestamp::from_millis(50)), "the first revocation time is kept");
    assert_eq!(store.get_token(&join.id).await.expect("get").expect("some").revoked_at, None);

    // A join token made for two agents is used twice, then never again; an API token never.
    assert!(store.use_join_token(&join.id).await.expect("first use"));
    assert!(store.use_join_token(&join.id).await.expect("second use"));
    assert!(!store.use_join_token(&join.id).await.expect("third use"));
    let used = store.get_token(&join.id).await.expect("get").expect("some");
    assert_eq!((used.uses, used.uses_allowed, used.agent_id.as_deref()), (2, Some(2), Some("gpu-7")));
    assert!(!store.use_join_token(&token.id).await.expect("an API token"));
    assert!(!store.use_join_token("nope").await.expect("no token"));
}

async fn agent_identities_are_replaced_and_revoked(store: Arc<dyn Store>) {
    let first = AgentIdentity {
        agent_id: "gpu-1".into(),
        certificate_sha256: "a".repeat(64),
        join_token_id: "0123456789ab".into(),
        joined_at: Timestamp::from_millis(1),
        revoked_at: None,
    };
    store.put_agent_identity(&first).await.expect("put");
    assert_eq!(store.agent_identity_by_certificate(&"a".repeat(64)).await.expect("get"), Some(first.clone()));
    assert!(store.revoke_agent("gpu-1", Timestamp::from_millis(5)).await.expect("revoke"));
    assert!(!store.revoke_agent("gpu-9", Timestamp::from_millis(5)).await.expect("revoke"));
    let revoked = store.agent_identity_by_certificate(&"a".repeat(64)).await.expect("get").expect("some");
    assert_eq!(revoked.revoked_at, Some(Timestamp::from_millis(5)));

    // Joining again: a new certificate, no longer revoked; the old certificate names nobody.
    let second = AgentIdentity { certificate_sha256: "b".repeat(64), joined_at: Timestamp::from_millis(9), ..first };
    store.put_agent_identity(&second).await.expect("put");
    assert_eq!(store.agent_identity_by_certificate(&"a".repeat(64)).await.expect("get"), None);
    assert_eq!(store.agent_identity_by_certificate(&"b".repeat(64)).await.expect("get"), Some(second));
}

async fn cordons_are_replaced_listed_and_removed(store: Arc<dyn Store>) {
    let cordon = |agent: &str, drain: bool, at: i64| AgentCordon {
        agent_id: agent.into(),
        drain,
        by_user: "ops".into(),
        at: Timestamp::from_millis(at),
        stop_at: drain.then(|| Timestamp::from_millis(at + 60_000)),
    };
    assert_eq!(store.cordons().await.expect("list"), vec![]);
    store.put_cordon(&cordon("gpu-2", false, 1)).await.expect("cordon");
    store.put_cordon(&cordon("gpu-1", false, 2)).await.expect("cordon");
    store.put_cordon(&cordon("gpu-1", true, 3)).await.expect("drain replaces cordon");
    assert_eq!(store.cordons().await.expect("list"), vec![cordon("gpu-1", true, 3), cordon("gpu-2", false, 1)]);
    assert!(store.delete_cordon("gpu-2").await.expect("uncordon"));
    assert!(!store.delete_cordon("gpu-2").await.expect("uncordon twice"));
    assert_eq!(store.cordons().await.expect("list"), vec![cordon("gpu-1", true, 3)]);
}

/// Values at their edges through the statements the loop issues, in the order it issues them: a
/// trial is created without an objective, updated while it trains, then updated with its objective,
/// again and again on the same pooled connection. (A NULL objective followed by a value in the
/// same statement text lost every objective on PostgreSQL: see `nullable_double` in `sql.rs`.)
async fn values_at_their_edges_survive_every_statement(store: Arc<dyn Store>) {
    store.create_tuning_job(&tuning("edges", 1)).await.expect("create");
    let objectives = [
        None,
        Some(0.0),
        Some(-1.5),
        None,
        Some(1e308),
        Some(-1e308),
        Some(f64::MIN_POSITIVE),
        Some(5e-324),
        Some(0.123_456_789_012_345_67),
        None,
        Some(42.0),
    ];
    let long_reason: String = "é∂\u{1F600}'\"%_\\".repeat(300);
    for round in 0..3 {
        let name = format!("edges-{round:03}-0000000{round}");
        let mut trial = training(&name, 10 + round, Some("edges"));
        assert!(trial.objective_value.is_none());
        let mut version = store.create_training_job(&trial).await.expect("create").version;
        trial.transition(SecondaryStatus::Training, "Training", Timestamp::from_millis(20)).expect("training");
        for objective in objectives {
            trial.objective_value = objective;
            trial.failure_reason = Some(long_reason.clone());
            version = store.update_training_job(&trial, version).await.expect("update").version;
            let read = store.get_training_job(&name).await.expect("get").expect("present").value;
            assert_eq!(
                read.objective_value.map(f64::to_bits),
                objective.map(f64::to_bits),
                "objective {objective:?} reads back bit for bit"
            );
            assert_eq!(read.failure_reason.as_deref(), Some(long_reason.as_str()));
        }
        trial.objective_value = Some(-(round as f64) * 1e300);
        trial.transition(SecondaryStatus::Completed, "done", Timestamp::from_millis(30)).expect("end");
        store.update_training_job(&trial, version).await.expect("final update");
    }
    // Ranking and paging by the objective at the extremes of the range.
    let best = store.best_trial("edges", true).await.expect("best").expect("some");
    assert_eq!(best.name, "edges-000-00000000");
    let worst = store.best_trial("edges", false).await.expect("best").expect("some");
    assert_eq!(worst.name, "edges-002-00000002");
    let mut by_objective = query(SortKey::FinalObjectiveMetricValue, SortOrder::Ascending, 1);
    by_objective.filter.tuning_job_name = Some("edges".into());
    let mut seen = Vec::new();
    loop {
        let page = store.list_training_jobs(&by_objective).await.expect("page");
        seen.extend(page.items.iter().map(|j| j.name.clone()));
        let Some(token) = page.next_token else { break };
        let request = api::ListTrainingJobsForHyperParameterTuningJobRequest {
            hyper_parameter_tuning_job_name: Some("edges".into()),
            sort_by: Some("FinalObjectiveMetricValue".into()),
            sort_order: Some("Ascending".into()),
            max_results: Some(1),
            next_token: Some(token),
            ..Default::default()
        };
        by_objective = ListQuery::for_trials(&request).expect("resume");
    }
    assert_eq!(seen, ["edges-002-00000002", "edges-001-00000001", "edges-000-00000000"]);

    // Metric samples: negative, zero, huge, tiny; empty batches are no-ops.
    store.append_metrics("edges-000-00000000", &[]).await.expect("empty batch");
    // (-0.0 is left out: SQLite stores it as the integer 0.)
    let values = [0.0, -3.25, 1e308, -1e308, f64::MIN_POSITIVE, 5e-324, 1.0 / 3.0];
    let samples: Vec<MetricSample> = values
        .iter()
        .enumerate()
        .map(|(i, v)| MetricSample {
            name: "m".repeat(255),
            timestamp: Timestamp::from_millis(i64::from(i as u8) + 1),
            value: *v,
            instance_sample: Some((65_535, i64::MAX - i as i64)),
        })
        .collect();
    store.append_metrics("edges-000-00000000", &samples).await.expect("metrics");
    let read = store.read_metrics("edges-000-00000000").await.expect("read metrics");
    assert_eq!(read.iter().map(|m| m.value.to_bits()).collect::<Vec<_>>(), values.map(f64::to_bits));

    // Logs: an empty batch, a 64 KiB line of multi-byte characters, reads past the end.
    store.append_logs("edges-000-00000000", &[]).await.expect("empty logs");
    let line = "ü".repeat(32 * 1024);
    let record = LogRecord {
        seq: 1,
        instance: 65_535,
        stream: "stderr".into(),
        timestamp: Timestamp::from_millis(i64::from(i32::MAX) * 1000),
        text: line.clone(),
        instance_line: Some(i64::MAX),
    };
    store.append_logs("edges-000-00000000", std::slice::from_ref(&record)).await.expect("long line");
    let read = store.read_logs("edges-000-00000000", 0, 10).await.expect("read logs");
    assert_eq!(read, vec![record]);
    assert!(store.read_logs("edges-000-00000000", i64::MAX, 10).await.expect("past the end").is_empty());
    assert_eq!(store.last_log_seq("no-such-job").await.expect("seq"), 0);
    assert!(store.trial_counts(&[]).await.expect("no jobs").is_empty());
}

async fn retention_deletes_what_ended_long_enough_ago_and_nothing_else(store: Arc<dyn Store>) {
    let line = |seq| LogRecord {
        seq,
        instance: 1,
        stream: "stdout".into(),
        timestamp: Timestamp::from_millis(seq),
        text: "x".into(),
        instance_line: None,
    };
    let sample =
        MetricSample { name: "loss".into(), timestamp: Timestamp::from_millis(1), value: 0.5, instance_sample: None };
    let ended_training = |name: &str, at: i64, tuning: Option<&str>| {
        let mut job = training(name, at, tuning);
        job.transition(SecondaryStatus::Completed, "done", Timestamp::from_millis(at)).expect("done");
        job
    };
    // Ended long ago: a tuning job with a trial, and a standalone job. Ended lately, or running.
    let mut old_tuning = tuning("old-tuning", 10);
    old_tuning.transition(TuningJobStatus::Completed, Timestamp::from_millis(20)).expect("complete");
    store.create_tuning_job(&old_tuning).await.expect("create");
    store.create_training_job(&ended_training("old-tuning-001-0000001", 15, Some("old-tuning"))).await.expect("create");
    store.create_training_job(&ended_training("old-job", 30, None)).await.expect("create");
    store.create_training_job(&ended_training("recent-job", 5_000, None)).await.expect("create");
    store.create_training_job(&training("running-job", 10, None)).await.expect("create");
    store.create_tuning_job(&tuning("running-tuning", 10)).await.expect("create");
    store
        .create_training_job(&ended_training("running-tuning-001-0000001", 12, Some("running-tuning")))
        .await
        .expect("create");
    for job in ["old-tuning-001-0000001", "old-job", "recent-job", "running-job", "running-tuning-001-0000001"] {
        store.append_logs(job, &[line(1), line(2)]).await.expect("logs");
        store.append_metrics(job, std::slice::from_ref(&sample)).await.expect("metrics");
    }

    // Logs first: of jobs that ended before 1000, whatever their tuning job; the jobs stay.
    assert_eq!(store.prune_logs(Timestamp::from_millis(1_000), 2).await.expect("prune"), 2, "a bounded batch");
    assert_eq!(store.prune_logs(Timestamp::from_millis(1_000), 100).await.expect("prune"), 1);
    assert_eq!(store.prune_logs(Timestamp::from_millis(1_000), 100).await.expect("prune"), 0, "nothing left");
    for (job, kept) in [
        ("old-job", false),
        ("old-tuning-001-0000001", false),
        ("running-tuning-001-0000001", false),
        ("recent-job", true),
        ("running-job", true),
    ] {
        assert_eq!(store.last_log_seq(job).await.expect("seq") == 2, kept, "{job}'s logs");
        assert_eq!(!store.read_metrics(job).await.expect("metrics").is_empty(), kept, "{job}'s metrics");
        assert!(store.get_training_job(job).await.expect("get").is_some(), "{job} itself stays");
    }

    // Jobs: an ended tuning job with its trials, and an ended standalone job.
    assert_eq!(store.prune_ended_jobs(Timestamp::from_millis(1_000), 100).await.expect("prune"), (1, 2));
    assert_eq!(store.prune_ended_jobs(Timestamp::from_millis(1_000), 100).await.expect("prune"), (0, 0));
    for gone in ["old-job", "old-tuning-001-0000001"] {
        assert!(store.get_training_job(gone).await.expect("get").is_none(), "{gone}");
    }
    assert!(store.get_tuning_job("old-tuning").await.expect("get").is_none());
    for kept in ["recent-job", "running-job", "running-tuning-001-0000001"] {
        assert!(store.get_training_job(kept).await.expect("get").is_some(), "{kept}");
    }

    // DeleteHyperParameterTuningJob: only an ended one; its trials stay, of no tuning job.
    assert!(!store.delete_tuning_job("running-tuning").await.expect("delete"), "still running");
    let mut ended = store.get_tuning_job("running-tuning").await.expect("get").expect("there").value;
    ended.transition(TuningJobStatus::Completed, Timestamp::from_millis(50)).expect("complete");
    let version = store.get_tuning_job("running-tuning").await.expect("get").expect("there").version;
    store.update_tuning_job(&ended, version).await.expect("update");
    assert!(store.delete_tuning_job("running-tuning").await.expect("delete"));
    assert!(!store.delete_tuning_job("running-tuning").await.expect("delete"), "gone");
    assert!(store.get_tuning_job("running-tuning").await.expect("get").is_none());
    assert!(store.get_training_job("running-tuning-001-0000001").await.expect("get").is_some(), "the trial stays");
    assert_eq!(store.count_trials("running-tuning").await.expect("count"), 0);
    store.create_tuning_job(&tuning("running-tuning", 60)).await.expect("the name is free again");
}
