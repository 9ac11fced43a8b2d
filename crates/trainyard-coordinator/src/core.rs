//! The coordinator's operations, in domain terms: validate, persist, then hand the change to the
//! event loop. The gRPC layer (`grpc.rs`) only converts messages and errors around these.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{info, warn};
use trainyard_model::access::{Caller, Scope};
use trainyard_model::api;
use trainyard_model::catalog::Catalog;
use trainyard_model::error::ResourceKind;
use trainyard_model::jobs::{TrainingJob, TuningJob, not_found};
use trainyard_model::listing::ListQuery;
use trainyard_model::metrics::{MAX_PAGE_SAMPLES, PageEnd, end_page};
use trainyard_model::names::ArnContext;
use trainyard_model::plot;
use trainyard_model::roles::ExecutionRoles;
use trainyard_model::rules::{self, ServiceLimits};
use trainyard_model::{DomainError, Timestamp, Validate, Violation};
use trainyard_store::{LogRecord, MetricSample, Store, StoreError, Versioned};

use crate::held_logs::{HeldLogs, MAX_HELD_LOG_BYTES};

/// Log lines kept per training job in the store.
pub const MAX_LOG_LINES: i64 = 100_000;
/// Longer lines are cut (a progress bar without newlines should not fill the database).
pub const MAX_LOG_LINE_CHARS: usize = 16 * 1024;
/// Lines in one GetTrainingJobLogs page at most.
pub const MAX_LOG_PAGE_LINES: u32 = 10_000;
/// Text in one GetTrainingJobLogs page at most (the message stays under the 4 MiB clients decode);
/// a page holds at least one line, and a line at most 16 Ki characters.
pub const MAX_LOG_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Lines read from the store at a time while a page fills.
const LOG_READ_CHUNK: usize = 256;
/// Lines after `after`, read in chunks until the page holds `limit` lines or `max_bytes` of text
/// (at least one line): `read(after, want)` reads the next chunk.
async fn log_page<F, Fut>(mut after: i64, limit: u32, max_bytes: usize, read: F) -> Result<Vec<LogRecord>, StoreError>
where
    F: Fn(i64, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<LogRecord>, StoreError>>,
{
    let limit = limit as usize;
    let (mut lines, mut bytes) = (Vec::new(), 0);
    'page: while lines.len() < limit {
        let want = LOG_READ_CHUNK.min(limit - lines.len());
        let chunk = read(after, want as u32).await?;
        let complete = chunk.len() == want;
        for line in chunk {
            if !lines.is_empty() && bytes + line.text.len() > max_bytes {
                break 'page;
            }
            bytes += line.text.len();
            after = line.seq;
            lines.push(line);
        }
        if !complete {
            break;
        }
    }
    Ok(lines)
}

/// A read of one instance's lines: stamped at `from` or later, after sequence `after`, in order, at
/// most `limit` lines and `max_bytes` of text (at least one line).
pub struct StreamRead {
    pub instance: u32,
    pub from: Timestamp,
    pub after: i64,
    pub limit: u32,
    pub max_bytes: usize,
}

/// A page of a tuning job's trials for plotting holds at most this many.
pub const MAX_PAGE_TRIALS: u32 = 1_000;

/// A page of a tuning job's trials as its plots show them.
pub struct TrialPoints {
    pub objective_metric: String,
    pub maximize: bool,
    pub points: Vec<plot::TrialPoint>,
    pub next_token: Option<String>,
    /// The tuning job has ended: no trial will be added or change.
    pub ended: bool,
}

/// A MetricDefinition's Name is at most this long (SageMaker's limit).
const MAX_METRIC_NAME_CHARS: usize = 255;

use crate::group_commit::GroupCommit;
use crate::inbox::Event;

/// How often a compare-and-set update is retried against concurrent writers before giving up.
const UPDATE_ATTEMPTS: usize = 8;

/// Jobs changed in one statement at most (PostgreSQL allows 65,535 parameters, SQLite 32,766; a
/// row binds 11).
const UPDATES_PER_STATEMENT: usize = 512;
/// How long storing a batch of log lines may take before they are held instead: the agent's
/// stream, which carries its heartbeats and lease renewals too, waits for it, and a store that is
/// away would otherwise keep it waiting for the pool's whole connect timeout — long enough for
/// the agent to be taken for lost.
const LOG_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a job's next log line is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextLine {
    /// Its number in the job's log.
    Known(i64),
    /// The store has not said yet where the job's log stands (it was away at the job's first
    /// lines): its number among the job's unnumbered held lines (see [`crate::held_logs`]).
    Unnumbered(i64),
}

pub struct Coordinator {
    pub store: Arc<dyn Store>,
    pub catalog: Catalog,
    pub limits: ServiceLimits,
    pub arns: ArnContext,
    /// What each RoleArn runs as and may reach (not enforced when empty).
    pub roles: ExecutionRoles,
    events: mpsc::UnboundedSender<Event>,
    /// The next log sequence number of each unended job with lines in flight (an ended job's goes
    /// with its last write: the store has the number should a late line come).
    log_sequences: tokio::sync::Mutex<HashMap<String, NextLine>>,
    /// Log lines the store could not take yet (see [`crate::held_logs`]).
    held_logs: std::sync::Mutex<HeldLogs>,
    /// Held by [`Coordinator::store_held_logs`] while it stores held lines: one caller at a time
    /// (see there).
    storing_held_logs: tokio::sync::Mutex<()>,
    /// Tuning jobs not yet ended, for the concurrency limit. Counted once at start-up, then kept
    /// by this process (it makes every tuning-job transition), so a create costs no count query.
    active_tuning_jobs: AtomicU64,
    /// Unended training jobs as this process last wrote them: a compare-and-set starts from here
    /// instead of a read (a trial's life is six writes). A write from it is never trusted further
    /// than the version check: a stale entry makes the write conflict and the job be read again,
    /// and a decision not to write is only ever taken on a fresh read. The loop queues a job just
    /// created from here too: while this process leads no one else writes (fenced), and it exits
    /// when it stops leading.
    written: std::sync::Mutex<WrittenJobs>,
    /// Unended tuning jobs as this process last wrote (or read) them, for the loop's look at a
    /// tuning job at each trial's end; the same reasoning as `written` (the leader is the only
    /// writer), bounded by the limit on running tuning jobs.
    tuning_written: std::sync::Mutex<HashMap<String, TuningJob>>,
    /// The loop's word, after its last pass, that no instance of any type could start now (no
    /// agent, or none with room: [`trainyard_scheduler::no_room`]). A training job created
    /// meanwhile is stored with its `Pending` transition already: it is queued, and a burst of
    /// creates onto a busy cluster costs one write a job, not two. False until the first pass:
    /// a job that is not written `Pending` at its create gets it at the loop's next tick, as
    /// before, unless it is placed by then.
    no_room: AtomicBool,
    /// Where each queued job stands, kept by the loop as it queues and takes jobs off; read by
    /// describes without a round trip to the loop (which may be in the middle of a pass).
    pub(crate) queue_order: std::sync::Mutex<trainyard_scheduler::QueueOrder>,
    /// New jobs are written through these: concurrent creates share one statement.
    new_training_jobs: GroupCommit<TrainingJob>,
    new_tuning_jobs: GroupCommit<TuningJob>,
}

/// Unended training jobs kept in [`Coordinator::written`] at most (beyond: read before writing).
const WRITTEN_KEPT: usize = 4096;

/// [`Coordinator::written`]: when more than [`WRITTEN_KEPT`] jobs are unended, the ones written
/// most recently are kept (a burst of creates is followed by each job's first change: the newest
/// are the ones about to be written again; a job queued long ago is read once when it starts).
#[derive(Default)]
struct WrittenJobs {
    /// Each job with the number it was last kept under.
    jobs: HashMap<String, (u64, Versioned<TrainingJob>)>,
    /// Names in the order they were kept, with that number: an entry whose number is no longer
    /// its job's was superseded or taken, and is skipped.
    order: VecDeque<(u64, String)>,
    kept: u64,
}

impl WrittenJobs {
    fn take(&mut self, name: &str) -> Option<Versioned<TrainingJob>> {
        self.jobs.remove(name).map(|(_, job)| job)
    }

    fn get(&self, name: &str) -> Option<&Versioned<TrainingJob>> {
        self.jobs.get(name).map(|(_, job)| job)
    }

    fn keep(&mut self, job: Versioned<TrainingJob>) {
        self.kept += 1;
        self.order.push_back((self.kept, job.value.name.clone()));
        self.jobs.insert(job.value.name.clone(), (self.kept, job));
        while self.jobs.len() > WRITTEN_KEPT {
            let Some((number, name)) = self.order.pop_front() else { break };
            if self.jobs.get(&name).is_some_and(|(n, _)| *n == number) {
                self.jobs.remove(&name);
            }
        }
        // Every write of a kept job adds an entry: the superseded ones go before they add up.
        if self.order.len() > 2 * WRITTEN_KEPT {
            let jobs = &self.jobs;
            self.order.retain(|(number, name)| jobs.get(name).is_some_and(|(n, _)| n == number));
        }
    }
}

/// The number, as the store keeps it, of the item at `offset` among those an agent numbered from
/// `first` on (its log lines, its metric samples); `first` 0: the agent numbered none.
pub fn agent_number(first: u64, offset: usize) -> Option<i64> {
    (first > 0).then(|| i64::try_from(first).unwrap_or(i64::MAX).saturating_add(offset as i64))
}

pub fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
    Timestamp::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

fn structural(request: &impl Validate) -> Result<(), DomainError> {
    request.violations().into_result().map_err(DomainError::Validation)
}

impl Coordinator {
    pub async fn start(
        store: Arc<dyn Store>,
        catalog: Catalog,
        limits: ServiceLimits,
        arns: ArnContext,
        roles: ExecutionRoles,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self, DomainError> {
        let active = store.count_active_tuning_jobs().await?;
        Ok(Self {
            catalog,
            limits,
            arns,
            roles,
            events,
            log_sequences: tokio::sync::Mutex::new(HashMap::new()),
            held_logs: std::sync::Mutex::new(HeldLogs::default()),
            storing_held_logs: tokio::sync::Mutex::new(()),
            active_tuning_jobs: AtomicU64::new(active),
            no_room: AtomicBool::new(false),
            queue_order: std::sync::Mutex::new(trainyard_scheduler::QueueOrder::new()),
            written: std::sync::Mutex::new(WrittenJobs::default()),
            tuning_written: std::sync::Mutex::new(HashMap::new()),
            new_training_jobs: GroupCommit::start(store.clone()),
            new_tuning_jobs: GroupCommit::start(store.clone()),
            store,
        })
    }

    fn emit(&self, event: Event) {
        // The loop only stops at shutdown; a change made then is reconciled at the next start.
        let _ = self.events.send(event);
    }

    // ----- tuning jobs -----

    pub async fn create_tuning_job(
        &self,
        caller: &Caller,
        request: api::CreateHyperParameterTuningJobRequest,
    ) -> Result<api::CreateHyperParameterTuningJobResponse, DomainError> {
        caller.require(Scope::Submit, "CreateHyperParameterTuningJob")?;
        for definition in trainyard_model::uris::of_tuning_job(&request) {
            self.roles.may_pass(definition.role_arn, caller)?;
        }
        let mut violations = match rules::check_create_tuning_job(&request, &self.catalog, &self.limits) {
            Ok(()) => Vec::new(),
            Err(DomainError::Validation(v)) => v,
            Err(other) => return Err(other),
        };
        violations.extend(self.roles.check_tuning_job(&request));
        violations.extend(self.warm_start_violations(caller, &request).await?);
        if !violations.is_empty() {
            return Err(DomainError::Validation(violations));
        }
        // Reserve a slot first, so that concurrent creates cannot overshoot the limit together.
        let limit = u64::from(self.limits.max_concurrent_tuning_jobs);
        let active = self.active_tuning_jobs.fetch_add(1, Ordering::SeqCst);
        if active >= limit {
            self.active_tuning_jobs.fetch_sub(1, Ordering::SeqCst);
            // A taken name is the more specific answer than a full cluster. (Under the limit the
            // insert below says so itself: no read before every create.)
            if let Some(name) = &request.hyper_parameter_tuning_job_name
                && self.store.get_tuning_job(name).await?.is_some()
            {
                return Err(DomainError::AlreadyExists { kind: ResourceKind::TuningJob, name: name.clone() });
            }
            return Err(DomainError::LimitExceeded(format!(
                "{active} tuning jobs are running, this cluster's limit is {limit} (limits.max_concurrent_tuning_jobs)"
            )));
        }
        let job = match TuningJob::new(request, &self.arns, now()) {
            Ok(job) => TuningJob { owner: caller.user.clone(), ..job },
            Err(e) => {
                self.active_tuning_jobs.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        let (name, arn, strategy) = (job.name.clone(), job.arn.clone(), job.strategy().map(str::to_string));
        match self.new_tuning_jobs.create(job).await {
            Ok(written) => self.keep_tuning_job(written.value),
            Err(e) => {
                self.active_tuning_jobs.fetch_sub(1, Ordering::SeqCst);
                return Err(e.into());
            }
        }
        info!(tuning_job = %name, user = %caller.user, strategy = strategy.as_deref().unwrap_or("-"), "tuning job created");
        self.emit(Event::TuningJobCreated(name));
        Ok(api::CreateHyperParameterTuningJobResponse { hyper_parameter_tuning_job_arn: Some(arn) })
    }

    /// Warm-start parents must exist and have ended.
    async fn warm_start_violations(
        &self,
        caller: &Caller,
        request: &api::CreateHyperParameterTuningJobRequest,
    ) -> Result<Vec<Violation>, DomainError> {
        let mut violations = Vec::new();
        let parents = request
            .warm_start_config
            .as_ref()
            .and_then(|w| w.parent_hyper_parameter_tuning_jobs.as_ref())
            .into_iter()
            .flatten();
        for (i, parent) in parents.enumerate() {
            let Some(name) = &parent.hyper_parameter_tuning_job_name else {
                continue;
            };
            let field = format!("WarmStartConfig.ParentHyperParameterTuningJobs[{i}].HyperParameterTuningJobName");
            match self.store.get_tuning_job(name).await?.filter(|p| caller.sees(&p.value.owner)) {
                None => violations.push(Violation {
                    field,
                    description: format!("hyperparameter tuning job '{name}' does not exist"),
                }),
                Some(p) if !p.value.status.is_terminal() => violations.push(Violation {
                    field,
                    description: format!("parent '{name}' must have ended (it is {})", p.value.status),
                }),
                Some(p)
                    if trainyard_model::trials::objective(&p.value.request)
                        != trainyard_model::trials::objective(request) =>
                {
                    violations.push(Violation {
                        field,
                        description: format!(
                            "parent '{name}' must have the same objective metric and type as this tuning job"
                        ),
                    })
                }
                Some(p) => {
                    for problem in trainyard_model::trials::warm_start_problems(request, &p.value.request) {
                        violations.push(Violation {
                            field: field.clone(),
                            description: format!("parent '{name}': {problem}"),
                        });
                    }
                }
            }
        }
        Ok(violations)
    }

    pub async fn describe_tuning_job(
        &self,
        caller: &Caller,
        request: api::DescribeHyperParameterTuningJobRequest,
    ) -> Result<api::DescribeHyperParameterTuningJobResponse, DomainError> {
        structural(&request)?;
        let name = request.hyper_parameter_tuning_job_name.unwrap_or_default();
        let job = self.visible_tuning_job(caller, &name).await?;
        let counts = self.store.trial_counts(std::slice::from_ref(&name)).await?.remove(&name).unwrap_or_default();
        let objective = trainyard_model::trials::objective(&job.request);
        let best = match &objective {
            Some((metric, maximize)) => {
                self.store.best_trial(&name, *maximize).await?.map(|t| t.trial_summary(Some(metric.as_str())))
            }
            None => None,
        };
        let mut response = job.describe(&counts, best, now());
        // IdenticalDataAndAlgorithm: the best trial of this job and its parents together.
        let warm = job.request.warm_start_config.as_ref();
        if let (Some(w), Some((metric, maximize))) = (warm, &objective)
            && w.warm_start_type.as_deref() == Some("IdenticalDataAndAlgorithm")
        {
            let mut candidates: Vec<api::HyperParameterTrainingJobSummary> =
                response.best_training_job.iter().cloned().collect();
            for parent in w
                .parent_hyper_parameter_tuning_jobs
                .iter()
                .flatten()
                .filter_map(|p| p.hyper_parameter_tuning_job_name.clone())
            {
                if let Some(t) = self.store.best_trial(&parent, *maximize).await? {
                    candidates.push(t.trial_summary(Some(metric.as_str())));
                }
            }
            let value = |s: &api::HyperParameterTrainingJobSummary| {
                s.final_hyper_parameter_tuning_job_objective_metric.as_ref().and_then(|m| m.value).unwrap_or(f64::NAN)
            };
            response.overall_best_training_job = candidates.into_iter().max_by(|a, b| {
                let (x, y) = (value(a), value(b));
                if *maximize { x.total_cmp(&y) } else { y.total_cmp(&x) }
            });
        }
        Ok(response)
    }

    pub async fn list_tuning_jobs(
        &self,
        caller: &Caller,
        request: api::ListHyperParameterTuningJobsRequest,
    ) -> Result<api::ListHyperParameterTuningJobsResponse, DomainError> {
        let query = ListQuery::for_tuning_jobs(&request, caller.list_filter())?;
        let page = self.store.list_tuning_jobs(&query).await?;
        let names: Vec<String> = page.items.iter().map(|j| j.name.clone()).collect();
        let mut counts = self.store.trial_counts(&names).await?;
        let summaries =
            page.items.iter().map(|j| j.summary(&counts.remove(&j.name).unwrap_or_default())).collect::<Vec<_>>();
        Ok(api::ListHyperParameterTuningJobsResponse {
            hyper_parameter_tuning_job_summaries: Some(summaries),
            next_token: page.next_token,
        })
    }

    pub async fn stop_tuning_job(
        &self,
        caller: &Caller,
        request: api::StopHyperParameterTuningJobRequest,
    ) -> Result<(), DomainError> {
        caller.require(Scope::Submit, "StopHyperParameterTuningJob")?;
        structural(&request)?;
        let name = request.hyper_parameter_tuning_job_name.unwrap_or_default();
        let changed = self
            .update_tuning_job(&name, |job| {
                if !caller.sees(&job.owner) {
                    return Err(not_found(ResourceKind::TuningJob, &name));
                }
                job.request_stop(now())
            })
            .await?;
        if changed {
            info!(tuning_job = %name, user = %caller.user, "tuning job stopping");
        }
        self.emit(Event::TuningJobStopRequested(name));
        Ok(())
    }

    /// DeleteHyperParameterTuningJob, as SageMaker has it: an ended tuning job's record goes; its
    /// training jobs, models and logs stay (no longer listed under it), and the name is free again.
    pub async fn delete_tuning_job(
        &self,
        caller: &Caller,
        request: api::DeleteHyperParameterTuningJobRequest,
    ) -> Result<(), DomainError> {
        caller.require(Scope::Submit, "DeleteHyperParameterTuningJob")?;
        structural(&request)?;
        let name = request.hyper_parameter_tuning_job_name.unwrap_or_default();
        let job = self.visible_tuning_job(caller, &name).await?;
        if !job.status.is_terminal() {
            return Err(DomainError::invalid(
                "HyperParameterTuningJobName",
                format!(
                    "tuning job {name} is {}: stop it, or wait for it to end, before deleting it",
                    job.status.as_str()
                ),
            ));
        }
        if self.store.delete_tuning_job(&name).await? {
            info!(tuning_job = %name, user = %caller.user, "tuning job deleted");
        }
        Ok(())
    }

    pub async fn list_trials(
        &self,
        caller: &Caller,
        request: api::ListTrainingJobsForHyperParameterTuningJobRequest,
    ) -> Result<api::ListTrainingJobsForHyperParameterTuningJobResponse, DomainError> {
        let query = ListQuery::for_trials(&request)?;
        let name = request.hyper_parameter_tuning_job_name.unwrap_or_default();
        let job = self.visible_tuning_job(caller, &name).await?;
        let metric = trainyard_model::trials::objective(&job.request).map(|(m, _)| m);
        let page = self.store.list_training_jobs(&query).await?;
        Ok(api::ListTrainingJobsForHyperParameterTuningJobResponse {
            next_token: page.next_token,
            training_job_summaries: Some(page.items.iter().map(|t| t.trial_summary(metric.as_deref())).collect()),
        })
    }

    /// The best completed trial's objective of each of `names` that `caller` may see (a query or
    /// two per job: for a page of at most 100 jobs).
    pub async fn best_objectives(
        &self,
        caller: &Caller,
        names: &[String],
    ) -> Result<HashMap<String, f64>, DomainError> {
        let mut best = HashMap::new();
        for name in names {
            let job = match self.visible_tuning_job(caller, name).await {
                Ok(job) => job,
                Err(DomainError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some((_, maximize)) = trainyard_model::trials::objective(&job.request)
                && let Some(value) = self.store.best_trial(name, maximize).await?.and_then(|t| t.objective_value)
            {
                best.insert(name.clone(), value);
            }
        }
        Ok(best)
    }

    /// A tuning job's trials in launch order with what its plots need (see [`plot`]), at most
    /// `limit` a page (default and maximum [`MAX_PAGE_TRIALS`]); also the objective's name and
    /// direction, and whether the tuning job has ended.
    pub async fn trial_points(
        &self,
        caller: &Caller,
        name: &str,
        token: &str,
        limit: u32,
    ) -> Result<TrialPoints, DomainError> {
        let end = if token.is_empty() { None } else { plot::PageEnd::parse(token) };
        if !token.is_empty() && end.is_none() {
            return Err(DomainError::invalid("next_token", "is not a token a page of trials returned"));
        }
        let job = self.visible_tuning_job(caller, name).await?;
        let (metric, maximize) = trainyard_model::trials::objective(&job.request).unwrap_or_default();
        let limit = if limit == 0 { MAX_PAGE_TRIALS } else { limit.min(MAX_PAGE_TRIALS) };
        let query = ListQuery::trials_in_launch_order(name, limit, end.as_ref().map(|e| e.list_token.as_str()))
            .map_err(|_| {
                DomainError::invalid("next_token", "is not a token a page of this tuning job's trials returned")
            })?;
        let page = self.store.list_training_jobs(&query).await?;
        let points = plot::points(name, &page.items, maximize, end.and_then(|e| e.best_so_far));
        let next_token = page.next_token.map(|list_token| {
            plot::PageEnd { list_token, best_so_far: points.last().and_then(|p| p.best_so_far) }.token()
        });
        Ok(TrialPoints { objective_metric: metric, maximize, points, next_token, ended: job.status.is_terminal() })
    }

    // ----- training jobs -----

    pub async fn create_training_job(
        &self,
        caller: &Caller,
        request: api::CreateTrainingJobRequest,
    ) -> Result<api::CreateTrainingJobResponse, DomainError> {
        caller.require(Scope::Submit, "CreateTrainingJob")?;
        self.roles.may_pass(request.role_arn.as_deref(), caller)?;
        let mut violations = match rules::check_create_training_job(&request, &self.catalog, &self.limits) {
            Ok(()) => Vec::new(),
            Err(DomainError::Validation(v)) => v,
            Err(other) => return Err(other),
        };
        violations.extend(self.roles.check_training_job(&request));
        if !violations.is_empty() {
            return Err(DomainError::Validation(violations));
        }
        let mut job = TrainingJob { owner: caller.user.clone(), ..TrainingJob::new(request, None, &self.arns, now())? };
        self.queued_if_no_room(&mut job)?;
        let (name, arn) = (job.name.clone(), job.arn.clone());
        self.store_new_training_job(job).await?;
        info!(training_job = %name, user = %caller.user, "training job created");
        self.emit(Event::TrainingJobCreated(name));
        Ok(api::CreateTrainingJobResponse { training_job_arn: Some(arn) })
    }

    /// Whether the loop's last pass found no room for any instance ([`Coordinator::no_room`]).
    pub(crate) fn set_no_room(&self, no_room: bool) {
        self.no_room.store(no_room, Ordering::Relaxed);
    }

    pub(crate) fn no_room(&self) -> bool {
        self.no_room.load(Ordering::Relaxed)
    }

    /// A job about to be created is given its `Pending` transition now when it cannot start now
    /// (see [`Coordinator::no_room`]).
    pub(crate) fn queued_if_no_room(&self, job: &mut TrainingJob) -> Result<(), DomainError> {
        if self.no_room() {
            job.transition(
                trainyard_model::status::SecondaryStatus::Pending,
                crate::inbox::PENDING_MESSAGE,
                job.creation_time,
            )?;
        }
        Ok(())
    }

    pub async fn describe_training_job(
        &self,
        caller: &Caller,
        request: api::DescribeTrainingJobRequest,
    ) -> Result<api::DescribeTrainingJobResponse, DomainError> {
        structural(&request)?;
        let name = request.training_job_name.unwrap_or_default();
        let job = self.visible_training_job(caller, &name).await?;
        let mut response = job.describe();
        // A queued job says where it stands (computed by the loop, not stored).
        if job.secondary_status == trainyard_model::status::SecondaryStatus::Pending
            && let Some(trainyard_scheduler::Standing { position, length, reason }) = self.queue_position(&name)
            && let Some(last) = response.secondary_status_transitions.as_mut().and_then(|t| t.last_mut())
        {
            let why = reason.map_or(String::new(), |r| format!("; cannot be placed: {r}"));
            last.status_message =
                Some(format!("{}; position {position} of {length} in the queue{why}", crate::inbox::PENDING_MESSAGE));
        }
        if let Some(tuning) = job.tuning_job_name() {
            response.tuning_job_arn = Some(self.arns.tuning_job(tuning));
        }
        Ok(response)
    }

    pub async fn list_training_jobs(
        &self,
        caller: &Caller,
        request: api::ListTrainingJobsRequest,
    ) -> Result<api::ListTrainingJobsResponse, DomainError> {
        let query = ListQuery::for_training_jobs(&request, caller.list_filter())?;
        let page = self.store.list_training_jobs(&query).await?;
        Ok(api::ListTrainingJobsResponse {
            next_token: page.next_token,
            training_job_summaries: Some(page.items.iter().map(TrainingJob::summary).collect()),
        })
    }

    pub async fn stop_training_job(
        &self,
        caller: &Caller,
        request: api::StopTrainingJobRequest,
    ) -> Result<(), DomainError> {
        caller.require(Scope::Submit, "StopTrainingJob")?;
        structural(&request)?;
        let name = request.training_job_name.unwrap_or_default();
        let changed = self
            .update_training_job(&name, |job| {
                if !caller.sees(&job.owner) {
                    return Err(not_found(ResourceKind::TrainingJob, &name));
                }
                job.request_stop(now())
            })
            .await?;
        if changed {
            info!(training_job = %name, user = %caller.user, "training job stopping");
        }
        self.emit(Event::TrainingJobStopRequested(name));
        Ok(())
    }

    /// Every agent the loop knows, as ListAgents shows them (any signed-in caller may see them).
    pub async fn agents(&self) -> Result<Vec<trainyard_proto::pb::AgentSummary>, DomainError> {
        let gone = || DomainError::Unavailable("the coordinator is shutting down".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::ListAgents { after: String::new(), limit: usize::MAX, reply: tx })
            .map_err(|_| gone())?;
        let mut agents = rx.await.map_err(|_| gone())?;
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(agents)
    }

    pub(crate) fn queue_position(&self, name: &str) -> Option<trainyard_scheduler::Standing> {
        self.queue_order().standing(name)
    }

    /// The queue's order, as the loop keeps it (see [`Coordinator::queue_order`]'s field).
    pub(crate) fn queue_order(&self) -> std::sync::MutexGuard<'_, trainyard_scheduler::QueueOrder> {
        self.queue_order.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- logs -----

    /// Stores a batch of a job's output lines, numbering them in arrival order. A job keeps at
    /// most [`MAX_LOG_LINES`]; past that one line says so and the rest is dropped (the agent keeps
    /// the whole output in the instance's `output/training.log`). While the store is away the
    /// lines are held (see [`crate::held_logs`]) and this returns at once: never an error for that.
    /// `first_line` is the instance's number for the first line (0: not numbered), kept with each
    /// line so that one sent again is stored once. True when the lines are stored (or dropped past
    /// the bound): the agent may forget them; false when they are held.
    pub async fn record_logs(
        &self,
        job: &str,
        instance: u32,
        first_line: u64,
        lines: Vec<(String, i64, String)>,
    ) -> Result<bool, DomainError> {
        let mut sequences = self.log_sequences.lock().await;
        let next = match sequences.get(job).copied() {
            Some(NextLine::Known(n)) => NextLine::Known(n),
            unknown => {
                let unnumbered = match unknown {
                    Some(NextLine::Unnumbered(n)) => n,
                    _ => 1,
                };
                match self.last_log_seq(job).await? {
                    Some(last) if unnumbered > 1 => {
                        let base = self.held().number(job, last, MAX_LOG_LINES);
                        NextLine::Known(base + unnumbered)
                    }
                    Some(last) => NextLine::Known(last + 1),
                    None => NextLine::Unnumbered(unnumbered),
                }
            }
        };
        let (mut seq, numbered) = match next {
            NextLine::Known(n) => (n, true),
            NextLine::Unnumbered(n) => (n, false),
        };
        let mut records = Vec::with_capacity(lines.len());
        for (i, (stream, at, text)) in lines.into_iter().enumerate() {
            // (Unnumbered lines are bounded when they are numbered.)
            if numbered && seq > MAX_LOG_LINES {
                break;
            }
            let text = if numbered && seq == MAX_LOG_LINES {
                format!("[trainyard] this job's log reached {MAX_LOG_LINES} lines; later lines are on the agent")
            } else {
                text.chars().take(MAX_LOG_LINE_CHARS).collect()
            };
            records.push(LogRecord {
                seq,
                instance,
                stream,
                timestamp: Timestamp::from_millis(at),
                text,
                instance_line: agent_number(first_line, i),
            });
            seq += 1;
        }
        if !numbered {
            // Held before the job's numbering can be learnt (under the lock), so that they are
            // among the lines that learning numbers.
            sequences.insert(job.to_string(), NextLine::Unnumbered(seq));
            self.hold_logs(job, records, false);
            return Ok(false);
        }
        sequences.insert(job.to_string(), NextLine::Known(seq));
        drop(sequences);
        // Lines held from before go first; while the store is away these are held too.
        if !self.store_held_logs().await {
            self.hold_logs(job, records, numbered);
            return Ok(false);
        }
        if self.within_log_patience(self.store.append_logs(job, &records)).await?.is_none() {
            self.hold_logs(job, records, true);
            return Ok(false);
        }
        Ok(true)
    }

    /// A store call made on an agent's stream (log lines): at most [`LOG_WRITE_TIMEOUT`], and not
    /// at all within a moment of the store failing one. None when it is away (or was a moment ago,
    /// or is too slow): the caller holds its lines instead.
    async fn within_log_patience<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<Option<T>, DomainError> {
        if !self.held().worth_trying(std::time::Instant::now()) {
            return Ok(None);
        }
        match tokio::time::timeout(LOG_WRITE_TIMEOUT, call).await {
            Ok(Ok(answer)) => {
                self.held().store_answered();
                Ok(Some(answer))
            }
            Ok(Err(e)) if !e.is_unavailable() => Err(e.into()),
            Ok(Err(_)) | Err(_) => {
                self.held().store_failed(std::time::Instant::now());
                Ok(None)
            }
        }
    }

    /// Whether log lines of `job` wait in memory for the store. Its agents keep their copies
    /// until they are stored: they are not told to forget its instances meanwhile.
    pub fn holds_logs_of(&self, job: &str) -> bool {
        self.held().holds(job)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HeldLogs> {
        self.held_logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's last log number of `job`; None when the store is away (or was a moment ago).
    async fn last_log_seq(&self, job: &str) -> Result<Option<i64>, DomainError> {
        self.within_log_patience(self.store.last_log_seq(job)).await
    }

    fn hold_logs(&self, job: &str, records: Vec<LogRecord>, numbered: bool) {
        let mut held = self.held();
        // Once an outage begins (lines held behind a batch being stored are not news).
        if held.idle() {
            warn!(
                job,
                "log lines not stored yet: the store is away or did not answer within {} s; held in memory until it answers (up to {} MiB, the oldest dropped past that)",
                LOG_WRITE_TIMEOUT.as_secs(),
                MAX_HELD_LOG_BYTES / (1024 * 1024)
            );
        }
        held.hold(job, records, numbered, MAX_HELD_LOG_BYTES);
    }

    /// Stores the log lines held while the store was away, oldest first: true when none is left
    /// (false: the store is still away, or was a moment ago, or another caller is storing them;
    /// the rest stays held). Also run by the loop's tick, for lines held when no more come.
    pub async fn store_held_logs(&self) -> bool {
        // One caller at a time. Were a second caller (an agent's stream, beside the loop's tick)
        // told that none is left while the first still has a batch in flight, its own lines would
        // go to the store at once: a line sent again among them would be stored under its new,
        // later number and its held copy refused as a duplicate, the job's log out of order. The
        // second is told they are not all stored: its caller holds its lines behind them, and the
        // first stores those too (it stops only once nothing is held). Not waiting keeps agents'
        // streams and the loop from queueing behind one caller's catching up. With nothing held
        // and nothing in flight there is nothing to overtake, whoever holds the lock (the tick
        // takes it a moment every second): told so, not held.
        if self.held().idle() {
            return true;
        }
        let Ok(_storing) = self.storing_held_logs.try_lock() else { return false };
        let mut stored = 0;
        loop {
            let next = self.held().take_oldest();
            let Some((job, records, numbered)) = next else { break };
            if !numbered {
                // Its job's lines are numbered first, from where the store says its log stands.
                self.held().put_back(job.clone(), records, false);
                if !self.number_held_logs(&job).await {
                    return false;
                }
                continue;
            }
            if records.is_empty() {
                continue;
            }
            match self.within_log_patience(self.store.append_logs(&job, &records)).await {
                Ok(Some(())) => stored += records.len(),
                Err(e) => warn!(job, lines = records.len(), error = %e, "held log lines could not be stored: dropped"),
                Ok(None) => {
                    self.held().put_back(job, records, true);
                    return false;
                }
            }
        }
        if stored > 0 {
            let dropped = std::mem::take(&mut self.held().dropped);
            info!(stored, dropped, "log lines held while the store was away are stored");
        }
        true
    }

    /// Keeps the log lines still held (the store was away) in `path` when the process ends, for
    /// the next start ([`Coordinator::restore_held_logs`]); nothing held, no file.
    pub fn spool_held_logs(&self, path: &std::path::Path) {
        let (spooled, lines) = {
            let held = self.held();
            if held.is_empty() {
                return;
            }
            (held.spool(), held.len())
        };
        let written = (|| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let partial = path.with_extension("partial");
            // Jobs' output: the coordinator's alone, as the rest of its data directory.
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
            file.write_all(&spooled)?;
            file.sync_all()?;
            std::fs::rename(&partial, path)
        })();
        match written {
            Ok(()) => {
                warn!(lines, file = %path.display(), "log lines the store has not taken yet are kept for the next start")
            }
            Err(e) => {
                warn!(lines, file = %path.display(), error = %e, "log lines the store has not taken yet could not be kept: lost")
            }
        }
    }

    /// Holds again the log lines an earlier process kept in `path` (then removes it), before any
    /// newer: they are numbered after whatever the store holds of their jobs by then.
    pub async fn restore_held_logs(&self, path: &std::path::Path) {
        let Ok(spooled) = std::fs::read(path) else { return };
        let restored = self.held().restore(&spooled, MAX_HELD_LOG_BYTES);
        let _ = std::fs::remove_file(path);
        match restored {
            Ok(counts) => {
                let mut sequences = self.log_sequences.lock().await;
                let lines: i64 = counts.iter().map(|(_, n)| n).sum();
                for (job, count) in counts {
                    sequences.insert(job, NextLine::Unnumbered(count + 1));
                }
                info!(lines, "log lines an earlier run could not store are held again");
            }
            Err(e) => warn!(file = %path.display(), error = %e, "kept log lines could not be read: lost"),
        }
    }

    /// Numbers a job's held unnumbered lines from the store's last number for it; false when the
    /// store cannot say now.
    async fn number_held_logs(&self, job: &str) -> bool {
        let mut sequences = self.log_sequences.lock().await;
        let last = match self.last_log_seq(job).await {
            Ok(Some(last)) => last,
            Ok(None) => return false,
            Err(e) => {
                warn!(job, error = %e, "where the job's log stands cannot be read; its held lines are numbered from its start (lines stored under those numbers win)");
                0
            }
        };
        let base = self.held().number(job, last, MAX_LOG_LINES);
        if let Some(NextLine::Unnumbered(next)) = sequences.get(job).copied() {
            sequences.insert(job.to_string(), NextLine::Known(base + next));
        }
        true
    }

    pub async fn read_logs(
        &self,
        caller: &Caller,
        job: &str,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<LogRecord>, bool), DomainError> {
        let stored = self.visible_training_job(caller, job).await?;
        let limit = if limit == 0 { MAX_LOG_PAGE_LINES } else { limit.min(MAX_LOG_PAGE_LINES) };
        // A page of long lines must not grow the coordinator, nor exceed what a client decodes (4 MiB).
        let lines =
            log_page(after, limit, MAX_LOG_PAGE_BYTES, |after, want| self.store.read_logs(job, after, want)).await?;
        Ok((lines, stored.status.is_terminal()))
    }

    /// One instance's lines of a job (what a CloudWatch Logs stream of it shows): see
    /// [`StreamRead`].
    pub async fn read_instance_logs(
        &self,
        caller: &Caller,
        job: &str,
        read: StreamRead,
    ) -> Result<Vec<LogRecord>, DomainError> {
        let StreamRead { instance, from, after, limit, max_bytes } = read;
        self.visible_training_job(caller, job).await?;
        let limit = limit.clamp(1, MAX_LOG_PAGE_LINES);
        let read = |after, want| self.store.read_instance_logs(job, instance, from, after, want);
        Ok(log_page(after, limit, max_bytes, read).await?)
    }

    /// The sequence number of a job's last stored line (0 for none).
    pub async fn last_log_sequence(&self, caller: &Caller, job: &str) -> Result<i64, DomainError> {
        self.visible_training_job(caller, job).await?;
        Ok(self.store.last_log_seq(job).await?)
    }

    // ----- tags -----

    /// The tags a training or tuning job was created with, by its ARN (SageMaker's ListTags). ARNs
    /// carry names lower-cased: a name with capitals is found by a case-blind search.
    pub async fn tags_of(&self, caller: &Caller, arn: &str) -> Result<Vec<api::Tag>, DomainError> {
        let unknown = || not_found(ResourceKind::TrainingJob, arn);
        if let Some((_, name)) = arn.split_once(":training-job/") {
            let job = match self.store.get_training_job(name).await? {
                Some(job) if job.value.arn == arn => job.value,
                _ => {
                    let request = api::ListTrainingJobsRequest {
                        name_contains: Some(name.to_string()),
                        max_results: Some(100),
                        ..Default::default()
                    };
                    let query = ListQuery::for_training_jobs(&request, caller.list_filter())?;
                    let page = self.store.list_training_jobs(&query).await?;
                    page.items.into_iter().find(|j| j.arn == arn).ok_or_else(unknown)?
                }
            };
            if !caller.sees(&job.owner) {
                return Err(unknown());
            }
            return Ok(job.request.tags.unwrap_or_default());
        }
        if let Some((_, name)) = arn.split_once(":hyper-parameter-tuning-job/") {
            let job = match self.store.get_tuning_job(name).await? {
                Some(job) if job.value.arn == arn => job.value,
                _ => {
                    let request = api::ListHyperParameterTuningJobsRequest {
                        name_contains: Some(name.to_string()),
                        max_results: Some(100),
                        ..Default::default()
                    };
                    let query = ListQuery::for_tuning_jobs(&request, caller.list_filter())?;
                    let page = self.store.list_tuning_jobs(&query).await?;
                    page.items.into_iter().find(|j| j.arn == arn).ok_or_else(unknown)?
                }
            };
            if !caller.sees(&job.owner) {
                return Err(unknown());
            }
            return Ok(job.request.tags.unwrap_or_default());
        }
        Err(DomainError::Validation(vec![Violation {
            field: "ResourceArn".into(),
            description: "must be the ARN of a training job or a hyperparameter tuning job".into(),
        }]))
    }

    // ----- metrics -----

    /// A page of a job's stored metric samples (of `metric` only, if not empty), ordered by metric
    /// then time, after the page `token` ended (from the start if empty); with the next page's
    /// token, if any, and whether the job has ended.
    pub async fn read_metrics(
        &self,
        caller: &Caller,
        job: &str,
        metric: &str,
        token: &str,
        limit: u32,
    ) -> Result<(Vec<MetricSample>, Option<String>, bool), DomainError> {
        let mut violations = Vec::new();
        if metric.chars().count() > MAX_METRIC_NAME_CHARS {
            violations.push(Violation {
                field: "metric_name".into(),
                description: format!("must be at most {MAX_METRIC_NAME_CHARS} characters (a MetricDefinition's Name)"),
            });
        }
        let after = if token.is_empty() { None } else { PageEnd::parse(token) };
        if !token.is_empty() && after.is_none() {
            violations.push(Violation {
                field: "next_token".into(),
                description: "is not a token a page of metrics returned".into(),
            });
        }
        if !violations.is_empty() {
            return Err(DomainError::Validation(violations));
        }
        let stored = self.visible_training_job(caller, job).await?;
        let limit = if limit == 0 { MAX_PAGE_SAMPLES } else { limit.min(MAX_PAGE_SAMPLES) };
        let metric = (!metric.is_empty()).then_some(metric);
        let after = after.as_ref().map(|e| (e.metric.as_str(), Timestamp::from_millis(e.at_millis)));
        let mut samples = self.store.read_metric_page(job, metric, after, limit).await?;
        let end = end_page(&mut samples, limit as usize, |s| (s.name.as_str(), s.timestamp.millis()));
        Ok((samples, end.map(|e| e.token()), stored.status.is_terminal()))
    }

    // ----- shared -----

    /// A tuning job as `caller` may see it: another user's job does not exist for a non-admin.
    async fn visible_tuning_job(&self, caller: &Caller, name: &str) -> Result<TuningJob, DomainError> {
        let job = self.tuning_job(name).await?.value;
        if caller.sees(&job.owner) { Ok(job) } else { Err(not_found(ResourceKind::TuningJob, name)) }
    }

    async fn visible_training_job(&self, caller: &Caller, name: &str) -> Result<TrainingJob, DomainError> {
        let job = self.training_job(name).await?.value;
        if caller.sees(&job.owner) { Ok(job) } else { Err(not_found(ResourceKind::TrainingJob, name)) }
    }

    pub async fn tuning_job(&self, name: &str) -> Result<Versioned<TuningJob>, DomainError> {
        self.store.get_tuning_job(name).await?.ok_or_else(|| not_found(ResourceKind::TuningJob, name))
    }

    pub async fn training_job(&self, name: &str) -> Result<Versioned<TrainingJob>, DomainError> {
        self.store.get_training_job(name).await?.ok_or_else(|| not_found(ResourceKind::TrainingJob, name))
    }

    /// A tuning job as this process last wrote or read it while it runs (see `tuning_written`),
    /// else as stored (and kept).
    pub async fn running_tuning_job(&self, name: &str) -> Result<TuningJob, DomainError> {
        let kept = self.tuning_written.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        match kept {
            Some(job) => Ok(job),
            None => {
                let job = self.tuning_job(name).await?.value;
                self.keep_tuning_job(job.clone());
                Ok(job)
            }
        }
    }

    /// Keeps a tuning job as just written or read, while it has not ended.
    fn keep_tuning_job(&self, job: TuningJob) {
        let mut kept = self.tuning_written.lock().unwrap_or_else(|e| e.into_inner());
        if job.status.is_terminal() {
            kept.remove(&job.name);
        } else {
            kept.insert(job.name.clone(), job);
        }
    }

    /// Read, change, compare-and-set; again on a concurrent change. `change` returns whether it
    /// changed anything (nothing is written when it did not).
    pub async fn update_tuning_job(
        &self,
        name: &str,
        mut change: impl FnMut(&mut TuningJob) -> Result<bool, DomainError>,
    ) -> Result<bool, DomainError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let Versioned { mut value, version } = self.tuning_job(name).await?;
            let was_active = !value.status.is_terminal();
            if !change(&mut value)? {
                return Ok(false);
            }
            match self.store.update_tuning_job(&value, version).await {
                Ok(written) => {
                    if was_active && value.status.is_terminal() {
                        self.active_tuning_jobs.fetch_sub(1, Ordering::SeqCst);
                    }
                    self.keep_tuning_job(written.value);
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Unavailable(format!("tuning job '{name}' keeps changing; try again")))
    }

    pub async fn update_training_job(
        &self,
        name: &str,
        change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Result<bool, DomainError> {
        Ok(self.updated_training_job(name, change).await?.is_some())
    }

    /// Compare-and-set: applies `change` to the stored job and writes it, reading again when another
    /// writer came first. Returns the job as written, or None when `change` said there was nothing
    /// to write.
    pub async fn updated_training_job(
        &self,
        name: &str,
        mut change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Result<Option<TrainingJob>, DomainError> {
        let mut last_written = self.written.lock().unwrap_or_else(|e| e.into_inner()).take(name);
        for _ in 0..UPDATE_ATTEMPTS {
            let (Versioned { mut value, version }, fresh) = match last_written.take() {
                Some(written) => (written, false),
                None => (self.training_job(name).await?, true),
            };
            match change(&mut value) {
                Ok(true) => {}
                // Nothing to write, or a change refused: said only on what the store holds.
                Ok(false) if fresh => return Ok(None),
                Err(e) if fresh => return Err(e),
                Ok(false) | Err(_) => continue,
            }
            match self.store.update_training_job(&value, version).await {
                Ok(written) => {
                    self.written_now(written).await;
                    return Ok(Some(value));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Unavailable(format!("training job '{name}' keeps changing; try again")))
    }

    /// [`Coordinator::updated_training_job`] of several jobs with one change: the jobs kept as
    /// written are changed and written together, in one statement; the others (not kept, changed
    /// meanwhile by another writer, or whose change the kept copy refuses) one at a time, as
    /// `updated_training_job` does them. Each job's outcome as `updated_training_job` gives it:
    /// the job as written, None when there was nothing to write, or why the change failed. In no
    /// particular order.
    pub async fn updated_training_jobs(
        &self,
        names: &[String],
        mut change: impl FnMut(&mut TrainingJob) -> Result<bool, DomainError>,
    ) -> Vec<(String, Result<Option<TrainingJob>, DomainError>)> {
        let mut alone = Vec::new();
        let mut together = Vec::new();
        let kept: Vec<(String, Option<Versioned<TrainingJob>>)> = {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            names.iter().map(|name| (name.clone(), written.take(name))).collect()
        };
        for (name, kept) in kept {
            match kept {
                Some(Versioned { mut value, version }) => {
                    if matches!(change(&mut value), Ok(true)) {
                        together.push((value, version));
                    } else {
                        alone.push(name);
                    }
                }
                None => alone.push(name),
            }
        }
        let mut outcomes = Vec::with_capacity(names.len());
        let mut together = together.into_iter().peekable();
        while together.peek().is_some() {
            let batch: Vec<(TrainingJob, i64)> = together.by_ref().take(UPDATES_PER_STATEMENT).collect();
            match self.store.update_training_jobs(&batch).await {
                Ok(versions) => {
                    for ((job, _), version) in batch.into_iter().zip(versions) {
                        match version {
                            Ok(version) => {
                                let written = job.clone();
                                self.written_now(Versioned { value: job, version }).await;
                                outcomes.push((written.name.clone(), Ok(Some(written))));
                            }
                            Err(_) => alone.push(job.name),
                        }
                    }
                }
                Err(e) => {
                    let e = DomainError::from(e);
                    outcomes.extend(batch.into_iter().map(|(job, _)| (job.name, Err(e.clone()))));
                }
            }
        }
        for name in alone {
            let outcome = self.updated_training_job(&name, &mut change).await;
            outcomes.push((name, outcome));
        }
        outcomes
    }

    /// What follows a write of a training job: kept as written unless it ended (then its log
    /// sequence is forgotten).
    async fn written_now(&self, written: Versioned<TrainingJob>) {
        if written.value.status.is_terminal() {
            self.log_sequences.lock().await.remove(&written.value.name);
        }
        self.keep_written(written);
    }

    /// Stores a new training job and keeps it as written: its first change needs no read.
    pub async fn store_new_training_job(&self, job: TrainingJob) -> Result<(), StoreError> {
        let written = self.new_training_jobs.create(job).await?;
        self.created_now(written).await;
        Ok(())
    }

    /// What follows the creation of a training job by this process: kept as written, and its
    /// log known to be empty, so that its first lines are numbered without asking the store where
    /// its log stands (a read per trial, made while every job's lines waited on the numbering).
    /// A process that loses the lead exits, so no other process can have written lines since.
    pub async fn created_now(&self, written: Versioned<TrainingJob>) {
        if !written.value.status.is_terminal() {
            self.log_sequences.lock().await.entry(written.value.name.clone()).or_insert(NextLine::Known(1));
        }
        self.keep_written(written);
    }

    /// Stores new training jobs in one statement (with whatever other creates wait); each one's
    /// outcome, in order, with the job as written. The caller keeps each ([`Coordinator::keep_written`])
    /// once it is done with it, so that its first change needs no read: handed back, not copied.
    pub async fn store_new_training_jobs(
        &self,
        jobs: Vec<TrainingJob>,
    ) -> Vec<Result<Versioned<TrainingJob>, StoreError>> {
        self.new_training_jobs.create_all(jobs).await
    }

    /// A training job as this process last wrote it, if it is kept (see [`Coordinator::written`]).
    pub fn last_written(&self, name: &str) -> Option<TrainingJob> {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).get(name).map(|w| w.value.clone())
    }

    /// Remembers a training job as just written, while it has not ended (see [`Coordinator::written`]).
    pub fn keep_written(&self, written: Versioned<TrainingJob>) {
        if written.value.status.is_terminal() {
            return;
        }
        self.written.lock().unwrap_or_else(|e| e.into_inner()).keep(written);
    }

    /// Trials of a tuning job that have not ended.
    pub async fn active_trials(&self, tuning_job: &str) -> Result<Vec<String>, DomainError> {
        let active = self.store.active_training_jobs(Some(tuning_job)).await?;
        Ok(active.into_iter().map(|t| t.value.name).collect())
    }
}

#[cfg(test)]
mod tests {
    use trainyard_model::status::TuningJobStatus;

    use super::*;

    async fn coordinator(dir: &std::path::Path) -> Coordinator {
        let url = format!("sqlite://{}", dir.join("trainyard.db").display());
        let store = trainyard_store::connect(&url).await.expect("store");
        coordinator_on(store).await
    }

    async fn coordinator_on(store: Arc<dyn trainyard_store::Store>) -> Coordinator {
        let (events, _) = mpsc::unbounded_channel();
        Coordinator::start(
            store,
            Catalog::default(),
            ServiceLimits::default(),
            ArnContext::default(),
            ExecutionRoles::default(),
            events,
        )
        .await
        .expect("coordinator")
    }

    /// A job this process created has no log lines: its first are numbered from 1 without asking
    /// the store where its log stands. One created by another process (the leader before a
    /// failover) is asked about once.
    #[tokio::test]
    async fn a_job_created_here_numbers_its_first_lines_without_asking_the_store() {
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let calls: Family<crate::telemetry::StoreCall, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 4)));
        let store =
            crate::timed_store::TimedStore::wrap(trainyard_store::connect(&url).await.expect("store"), calls.clone());
        let c = coordinator_on(store).await;
        let asked = || {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("store_seconds", "", calls.clone());
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
            text.lines()
                .filter(|l| l.starts_with("store_seconds_count") && l.contains("last_log_seq"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        let line = |text: &str| vec![("stdout".to_string(), 1_000, text.to_string())];

        c.store_new_training_job(job("ours")).await.expect("create");
        assert!(c.record_logs("ours", 1, 1, line("one")).await.expect("stored"));
        assert!(c.record_logs("ours", 1, 2, line("two")).await.expect("stored"));
        assert_eq!(asked(), 0);
        let ours: Vec<i64> = c.store.read_logs("ours", 0, 10).await.expect("read").iter().map(|l| l.seq).collect();
        assert_eq!(ours, [1, 2]);

        // Another process's job, with lines it stored before this one took over.
        c.store.create_training_job(&job("theirs")).await.expect("create");
        let before = LogRecord {
            seq: 1,
            instance: 1,
            stream: "stdout".into(),
            timestamp: Timestamp::from_millis(900),
            text: "before".into(),
            instance_line: Some(1),
        };
        c.store.append_logs("theirs", &[before]).await.expect("their line");
        assert!(c.record_logs("theirs", 1, 2, line("after")).await.expect("stored"));
        assert_eq!(asked(), 1);
        let theirs: Vec<i64> = c.store.read_logs("theirs", 0, 10).await.expect("read").iter().map(|l| l.seq).collect();
        assert_eq!(theirs, [1, 2]);
    }

    fn job(name: &str) -> TrainingJob {
        let mut request: api::CreateTrainingJobRequest =
            serde_json::from_str(include_str!("../../../deploy/examples/training-job.json")).expect("example");
        request.training_job_name = Some(name.to_string());
        TrainingJob::new(request, None, &ArnContext::default(), now()).expect("job")
    }

    /// Past the bound the newest are kept; rewriting and taking jobs never grows the bookkeeping
    /// beyond twice the bound.
    #[test]
    fn the_most_recently_written_jobs_are_kept() {
        let mut written = WrittenJobs::default();
        let template = job("template");
        let versioned = |name: String, version| Versioned { value: TrainingJob { name, ..template.clone() }, version };
        for i in 0..WRITTEN_KEPT + 10 {
            written.keep(versioned(format!("job-{i}"), 1));
        }
        assert_eq!(written.jobs.len(), WRITTEN_KEPT);
        assert!(written.get("job-9").is_none(), "the oldest went first");
        assert!(written.get("job-10").is_some() && written.get(&format!("job-{}", WRITTEN_KEPT + 9)).is_some());
        // job-10 rewritten: now the newest, so the next one evicts job-11 instead.
        let rewritten = written.take("job-10").expect("kept");
        written.keep(Versioned { version: 2, ..rewritten });
        written.keep(versioned("one-more".into(), 1));
        assert_eq!(written.get("job-10").map(|j| j.version), Some(2));
        assert!(written.get("job-11").is_none());
        for round in 0..3 * WRITTEN_KEPT as i64 {
            let taken = written.take("job-20").unwrap_or_else(|| versioned("job-20".into(), round));
            written.keep(taken);
        }
        assert!(written.order.len() <= 2 * WRITTEN_KEPT, "{}", written.order.len());
        assert_eq!(written.jobs.len(), WRITTEN_KEPT);
    }

    /// A job this process wrote, then another writer changed (a coordinator that led before, say):
    /// the next change starts from the kept copy, conflicts, and is made again on the stored job,
    /// so the other writer's change survives; a decision not to write is taken on the store's job.
    #[tokio::test]
    async fn a_stale_written_copy_never_loses_another_writers_change() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        c.store.create_training_job(&job("cached")).await.expect("create");
        let ours = c.updated_training_job("cached", |j| Ok(j.set_status_message("ours", now()))).await;
        assert!(ours.expect("update").is_some());
        assert!(c.written.lock().expect("lock").get("cached").is_some(), "the written copy is kept");

        let stored = c.training_job("cached").await.expect("read");
        let mut theirs = stored.value.clone();
        theirs.failure_reason = Some("another writer".into());
        c.store.update_training_job(&theirs, stored.version).await.expect("their write");

        let next = c.updated_training_job("cached", |j| Ok(j.set_status_message("ours again", now()))).await;
        let next = next.expect("update").expect("written");
        assert_eq!(next.failure_reason.as_deref(), Some("another writer"), "their change was kept");
        let stored = c.training_job("cached").await.expect("read").value;
        assert_eq!(stored.failure_reason.as_deref(), Some("another writer"));

        // Stale again; the kept copy says there is nothing to write, the store does not.
        let stored = c.training_job("cached").await.expect("read");
        let mut theirs = stored.value.clone();
        theirs.failure_reason = None;
        c.store.update_training_job(&theirs, stored.version).await.expect("their write");
        let wrote = c
            .updated_training_job("cached", |j| {
                if j.failure_reason.is_none() {
                    j.failure_reason = Some("filled in".into());
                    return Ok(true);
                }
                Ok(false)
            })
            .await
            .expect("update");
        assert!(wrote.is_some(), "decided on the stored job, not on the stale copy");
        let stored = c.training_job("cached").await.expect("read").value;
        assert_eq!(stored.failure_reason.as_deref(), Some("filled in"));
    }

    /// The loop's look at a tuning job at each trial's end: what this process wrote, a stop
    /// request included (kept before its event is sent), without a read; an ended job is not kept.
    #[tokio::test]
    async fn jobs_changed_together_keep_other_writers_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        for name in ["kept", "raced", "unkept", "refused"] {
            c.store_new_training_job(job(name)).await.expect("create");
        }
        c.written.lock().expect("lock").take("unkept");
        // Another writer changes "raced" behind the kept copy's back.
        let stored = c.training_job("raced").await.expect("read");
        let mut theirs = stored.value.clone();
        theirs.failure_reason = Some("another writer".into());
        c.store.update_training_job(&theirs, stored.version).await.expect("their write");

        let names: Vec<String> = ["kept", "raced", "unkept", "refused", "missing"].map(String::from).into();
        let outcomes = c
            .updated_training_jobs(&names, |j| {
                if j.name == "refused" {
                    return Err(DomainError::invalid("x", "refused"));
                }
                Ok(j.set_status_message("waits", now()))
            })
            .await;
        let failed: Vec<&str> =
            outcomes.iter().filter(|(_, outcome)| outcome.is_err()).map(|(name, _)| name.as_str()).collect();
        assert_eq!(failed, ["refused", "missing"]);
        for name in ["kept", "raced", "unkept"] {
            let stored = c.training_job(name).await.expect("read");
            let message = stored.value.transitions.last().map(|t| t.message.clone());
            assert_eq!(message.as_deref(), Some("waits"), "{name}");
            assert_eq!(stored.version, if name == "raced" { 3 } else { 2 }, "{name}");
            let kept = c.written.lock().expect("lock").get(name).cloned().expect("kept as written");
            assert_eq!(kept, stored, "{name}");
        }
        let raced = c.training_job("raced").await.expect("read").value;
        assert_eq!(raced.failure_reason.as_deref(), Some("another writer"), "their change was kept");
        assert_eq!(c.training_job("refused").await.expect("read").version, 1, "nothing written");
    }

    /// A training job created while the loop finds no room anywhere is stored waiting in its
    /// create, its Pending transition at its creation time (one write); with room, or before the
    /// loop's first pass, it is stored Starting only, and its Pending (if it waits) is the loop's.
    #[tokio::test]
    async fn a_job_created_with_no_room_is_stored_pending_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        let caller = Caller::unauthenticated_admin();
        let create = |name: &str| {
            let mut request: api::CreateTrainingJobRequest =
                serde_json::from_str(include_str!("../../../deploy/examples/training-job.json")).expect("example");
            request.training_job_name = Some(name.to_string());
            request
        };
        c.create_training_job(&caller, create("before-any-pass")).await.expect("create");
        c.set_no_room(true);
        c.create_training_job(&caller, create("no-room")).await.expect("create");
        c.set_no_room(false);
        c.create_training_job(&caller, create("room")).await.expect("create");

        let waiting = c.store.get_training_job("no-room").await.expect("read").expect("stored");
        assert_eq!(waiting.version, 1, "written once");
        let job = waiting.value;
        assert_eq!(job.secondary_status, trainyard_model::status::SecondaryStatus::Pending);
        let statuses: Vec<_> = job.transitions.iter().map(|t| (t.status, t.start_time)).collect();
        assert_eq!(
            statuses,
            [
                (trainyard_model::status::SecondaryStatus::Starting, job.creation_time),
                (trainyard_model::status::SecondaryStatus::Pending, job.creation_time)
            ]
        );
        for name in ["before-any-pass", "room"] {
            let job = c.store.get_training_job(name).await.expect("read").expect("stored").value;
            assert_eq!(job.secondary_status, trainyard_model::status::SecondaryStatus::Starting, "{name}");
            assert_eq!(job.transitions.len(), 1, "{name}");
        }
    }

    #[tokio::test]
    async fn a_running_tuning_job_is_seen_as_this_process_last_wrote_it() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        let caller = Caller::unauthenticated_admin();
        let request: api::CreateHyperParameterTuningJobRequest =
            serde_json::from_str(include_str!("../../../deploy/examples/tuning-job.json")).expect("example");
        let name = request.hyper_parameter_tuning_job_name.clone().expect("named");
        c.create_tuning_job(&caller, request).await.expect("create");
        // What is kept is what the loop sees, not the store: a change behind this process's back
        // (there is none while it leads) would not show.
        let stored = c.tuning_job(&name).await.expect("read");
        let mut behind = stored.value.clone();
        behind.failure_reason = Some("not through this process".into());
        c.store.update_tuning_job(&behind, stored.version).await.expect("write behind");
        let seen = c.running_tuning_job(&name).await.expect("seen");
        assert_eq!(seen.status, TuningJobStatus::InProgress);
        assert!(seen.failure_reason.is_none(), "the kept copy was read, not the store");

        let stop = api::StopHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name.clone()) };
        c.stop_tuning_job(&caller, stop).await.expect("stop");
        assert_eq!(c.running_tuning_job(&name).await.expect("seen").status, TuningJobStatus::Stopping);

        c.update_tuning_job(&name, |j| {
            j.transition(TuningJobStatus::Stopped, now())?;
            Ok(true)
        })
        .await
        .expect("end");
        assert!(c.tuning_written.lock().expect("lock").get(&name).is_none(), "an ended job is not kept");
        assert_eq!(c.running_tuning_job(&name).await.expect("read").status, TuningJobStatus::Stopped);
    }

    /// Held lines are being stored when an agent's lines come (or the loop's tick tries too): the
    /// job's lines still count as held, the second caller is told they are not all stored, and
    /// the lines it brings are held behind them and stored by the first, in order. Were it told
    /// that none is left while a batch is in flight, its caller would store lines sent again under
    /// new numbers before their held copies, and the job's log would read out of order (an
    /// end-to-end fault test caught it, 1 run in 5).
    #[tokio::test]
    async fn lines_that_come_while_held_ones_are_stored_wait_behind_them() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        c.store.create_training_job(&job("chatty")).await.expect("create");
        let line = |text: &str| vec![("stdout".to_string(), 1_000, text.to_string())];
        assert!(c.record_logs("chatty", 1, 1, line("one")).await.expect("stored"));
        // Held, as while the store was away (the job's next number moved past it).
        let two = LogRecord {
            seq: 2,
            instance: 1,
            stream: "stdout".into(),
            timestamp: Timestamp::from_millis(1_000),
            text: "two".into(),
            instance_line: Some(2),
        };
        c.hold_logs("chatty", vec![two], true);
        c.log_sequences.lock().await.insert("chatty".to_string(), NextLine::Known(3));
        // Another connection holds SQLite's write lock: the first caller's write waits for it.
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let mut blocker = sqlx::SqliteConnection::connect(&url).await.expect("connect");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.expect("take the write lock");
        let first = c.store_held_logs();
        let second = async {
            // The first took the batch in its first poll: it is in flight.
            assert!(c.holds_logs_of("chatty"), "a batch being stored is still held");
            let told = c.store_held_logs().await;
            // An agent's next line (and "two" sent again) while the first waits on the store.
            let recorded = c.record_logs("chatty", 1, 2, line("two")).await.expect("held, not an error");
            let recorded_next = c.record_logs("chatty", 1, 3, line("three")).await.expect("held, not an error");
            (told, recorded || recorded_next)
        };
        let release = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            sqlx::query("COMMIT").execute(&mut blocker).await.expect("release the write lock");
        };
        let (first, (told, recorded), ()) = tokio::join!(first, second, release);
        assert!(!told, "told that none is left while a batch was in flight");
        assert!(!recorded, "lines stored past a held batch in flight");
        assert!(first, "the first stored what was held, the lines that came meanwhile too");
        assert!(!c.holds_logs_of("chatty"));
        let stored: Vec<(i64, String)> =
            c.store.read_logs("chatty", 0, 100).await.expect("read").into_iter().map(|l| (l.seq, l.text)).collect();
        let texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, vec!["one", "two", "three"], "in order, once each: {stored:?}");
    }

    /// Lines that come while nothing is held are stored at once, even while another caller is
    /// in [`Coordinator::store_held_logs`] (the loop's tick, about to find nothing held): they
    /// would otherwise wait for the next tick, said to wait for a store that is not away.
    #[tokio::test]
    async fn lines_are_stored_at_once_when_none_is_held_whoever_is_storing() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        c.store.create_training_job(&job("chatty")).await.expect("create");
        let _storing = c.storing_held_logs.try_lock().expect("another caller's turn");
        let line = vec![("stdout".to_string(), 1_000, "one".to_string())];
        assert!(c.record_logs("chatty", 1, 1, line).await.expect("stored"));
        assert!(!c.holds_logs_of("chatty"));
    }

    /// Log lines that arrive while the store is away (here: another coordinator has fenced this
    /// one off) are held and stored once it is back, in order and without a gap; an ended job's
    /// sequence number is not kept, and a late line continues from the store's.
    #[tokio::test]
    async fn log_lines_outlive_a_store_outage_and_ended_jobs_are_not_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let c = coordinator(dir.path()).await;
        let url = format!("sqlite://{}", dir.path().join("trainyard.db").display());
        let theirs = trainyard_store::connect(&url).await.expect("second store");
        c.store.create_training_job(&job("chatty")).await.expect("create");
        let line = |text: &str| vec![("stdout".to_string(), 1_000, text.to_string())];
        assert!(c.record_logs("chatty", 1, 1, line("before")).await.expect("stored"));

        assert!(
            c.store.acquire_leadership("ours", "a", std::time::Duration::from_millis(1)).await.expect("lead").is_some()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let their_epoch =
            theirs.acquire_leadership("theirs", "b", std::time::Duration::from_secs(60)).await.expect("take over");
        let their_epoch = their_epoch.expect("the lease had run out");
        assert!(!c.record_logs("chatty", 1, 2, line("during 1")).await.expect("held, not an error"));
        assert!(!c.record_logs("chatty", 1, 3, line("during 2")).await.expect("held, not an error"));
        // A job this coordinator has not logged for (an earlier leader stored its first two
        // lines), whose first lines here come while the store is away: held unnumbered.
        let earlier = |seq: i64, text: &str| LogRecord {
            seq,
            instance: 1,
            stream: "stdout".into(),
            timestamp: Timestamp::from_millis(500),
            text: text.into(),
            instance_line: Some(seq),
        };
        theirs.create_training_job(&job("quiet")).await.expect("create");
        theirs.append_logs("quiet", &[earlier(1, "one"), earlier(2, "two")]).await.expect("their lines");
        assert!(!c.record_logs("quiet", 1, 3, line("three")).await.expect("held, not an error"));
        assert_eq!(c.log_sequences.lock().await.get("quiet"), Some(&NextLine::Unnumbered(2)));
        assert!(!c.store_held_logs().await, "still away");
        let stored: Vec<String> =
            c.store.read_logs("chatty", 0, 100).await.expect("read").into_iter().map(|l| l.text).collect();
        assert_eq!(stored, vec!["before"]);

        theirs.release_leadership(their_epoch).await.expect("release");
        assert!(
            c.store.acquire_leadership("ours", "a", std::time::Duration::from_secs(60)).await.expect("lead").is_some()
        );
        assert!(!c.record_logs("quiet", 1, 4, line("four")).await.expect("held: the store failed a moment ago"));
        // The store is left alone for a moment after a failure (an agent's stream waits on it).
        tokio::time::sleep(crate::held_logs::RETRY_AFTER).await;
        assert!(c.record_logs("chatty", 1, 4, line("after")).await.expect("stored"));
        let quiet: Vec<(i64, String)> =
            c.store.read_logs("quiet", 0, 100).await.expect("read").into_iter().map(|l| (l.seq, l.text)).collect();
        let expected: Vec<(i64, String)> =
            ["one", "two", "three", "four"].iter().enumerate().map(|(i, t)| (i as i64 + 1, t.to_string())).collect();
        assert_eq!(quiet, expected, "numbered after the earlier leader's lines");
        assert_eq!(c.log_sequences.lock().await.get("quiet"), Some(&NextLine::Known(5)));
        let stored: Vec<(i64, String)> =
            c.store.read_logs("chatty", 0, 100).await.expect("read").into_iter().map(|l| (l.seq, l.text)).collect();
        let expected: Vec<(i64, String)> = ["before", "during 1", "during 2", "after"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as i64 + 1, t.to_string()))
            .collect();
        assert_eq!(stored, expected);

        // The job ends: its number is not kept; a late line still gets the next one.
        c.updated_training_job("chatty", |j| {
            j.status = trainyard_model::status::TrainingJobStatus::Completed;
            Ok(true)
        })
        .await
        .expect("end");
        assert!(!c.log_sequences.lock().await.contains_key("chatty"), "an ended job's number is not kept");
        assert!(c.record_logs("chatty", 1, 5, line("late")).await.expect("stored"));
        let last = c.store.read_logs("chatty", 4, 100).await.expect("read");
        assert_eq!(last.iter().map(|l| (l.seq, l.text.as_str())).collect::<Vec<_>>(), vec![(5, "late")]);
        // The same line sent again (its agent never heard it was stored) is taken and not stored twice.
        assert!(c.record_logs("chatty", 1, 5, line("late")).await.expect("taken"));
        assert_eq!(c.store.read_logs("chatty", 4, 100).await.expect("read").len(), 1, "stored once");
    }
}
