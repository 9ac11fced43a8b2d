//! Tuning jobs: their trials proposed by the tuner, early stopping, completion criteria, stops.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracing::info;
use trainyard_model::jobs::{TrainingJob, TrialOrigin, TuningJob};
use trainyard_model::listing::{Cursor, CursorKey, ListFilter, ListQuery, SortKey, SortOrder};
use trainyard_model::status::TuningJobStatus;
use trainyard_model::{DomainError, Timestamp, api, trials};
use trainyard_proto::pb;
use trainyard_tuner::hyperband::Hyperband;
use trainyard_tuner::stopping::{self, Completion, Criteria};
use trainyard_tuner::{Finished, SearchSpace, Strategy};

use super::{Loop, TuningRun};
use crate::core::now;

/// A trial about to be launched: its tuning job, its training job, the hyperparameters tuned.
struct Launch {
    tuning: String,
    training: TrainingJob,
    tuned: BTreeMap<String, String>,
}

impl Loop {
    /// Feeds a trial's objective to the early-stopping policy — Hyperband's rungs, or the median
    /// rule of `TrainingJobEarlyStoppingType: Auto` — and says why the trial is to stop, if it is.
    /// The caller records that on the trial before stopping it.
    pub(super) fn early_stop(
        &mut self,
        tuning: &str,
        trial: &str,
        metric: &str,
        samples: &[pb::MetricSample],
    ) -> Option<&'static str> {
        let run = self.tuning.get_mut(tuning)?;
        let (objective, maximize) = run.objective.clone()?;
        if !(run.early_stopping || run.hyperband.is_some()) || objective != metric || run.stopped_early.contains(trial)
        {
            return None;
        }
        let bracket = run.hyperband.as_ref().map(|h| h.bracket_of(trials::index_of(tuning, trial).unwrap_or(0)));
        let curve = run.curves.entry(trial.to_string()).or_default();
        let mut stop = false;
        for s in samples.iter().filter(|s| s.name == objective) {
            let value = if maximize { s.value } else { -s.value };
            curve.push(value);
            stop = match (&mut run.hyperband, bracket) {
                (Some(hb), Some(b)) => stop || hb.report(b, curve.len() as u64, value),
                _ => stop || stopping::median_rule(curve, &run.finished_curves),
            };
        }
        if !stop {
            return None;
        }
        run.stopped_early.insert(trial.to_string());
        let rule = if run.hyperband.is_some() {
            "outside the top 1/3 of its Hyperband rung"
        } else {
            "worse than the median of earlier trials"
        };
        info!(tuning_job = tuning, trial, epoch = curve.len(), rule, "stopped early");
        Some(rule)
    }

    /// Loads a tuning run from the store unless it is loaded; the job as read, if it was read.
    pub(super) async fn load_tuning(&mut self, name: &str) -> Result<Option<TuningJob>, DomainError> {
        if self.tuning.contains_key(name) {
            return Ok(None);
        }
        let job = self.c.tuning_job(name).await?.value;
        let launched = self.c.store.count_trials(name).await?;
        self.track_tuning(job, launched).await.map(Some)
    }

    /// [`Loop::load_tuning`] of a tuning job this process's API has just created: as the API kept
    /// it, with no trials, without a read (two round trips fewer per create). Only this loop
    /// launches trials, and it has not seen the job. (Should a catch-up with the store have
    /// launched some meanwhile, the first launches find their trials stored and queue those.)
    pub(super) async fn load_created_tuning(&mut self, name: &str) -> Result<Option<TuningJob>, DomainError> {
        if self.tuning.contains_key(name) {
            return Ok(None);
        }
        let job = self.c.running_tuning_job(name).await?;
        self.track_tuning(job, 0).await.map(Some)
    }

    /// Starts following a tuning job of which `launched` trials exist: its search, its limits
    /// and what its trials found so far.
    async fn track_tuning(&mut self, job: TuningJob, launched: u64) -> Result<TuningJob, DomainError> {
        let name = job.name.as_str();
        let config = job.request.hyper_parameter_tuning_job_config.clone().unwrap_or_default();
        let strategy_name = config.strategy.clone().unwrap_or_default();
        let strategy = Strategy::from_name(&strategy_name);
        let hyperband = (strategy_name == "Hyperband").then(|| {
            let hb =
                config.strategy_config.as_ref().and_then(|s| s.hyperband_strategy_config.clone()).unwrap_or_default();
            let statics =
                trials::definition(&job.request, 0).and_then(|d| d.static_hyper_parameters.clone()).unwrap_or_default();
            let inferred = trainyard_model::rules::EPOCH_HYPERPARAMETERS
                .iter()
                .find_map(|k| statics.get(*k)?.trim().parse::<u64>().ok());
            let max = hb.max_resource.map(|m| m.max(1) as u64).or(inferred).unwrap_or(1);
            Hyperband::new(hb.min_resource.map_or(1, |m| m.max(1) as u64), max)
        });
        let definitions = trainyard_model::rules::definitions(&job.request).len().max(1);
        let spaces = (0..definitions as u64)
            .map(|d| {
                let definition = trials::definition(&job.request, d).cloned().unwrap_or_default();
                SearchSpace::from_ranges(&trials::ranges(&job.request, &definition))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DomainError::Internal(format!("tuning job {name}: {e}")))?;
        let limits = config.resource_limits.clone().unwrap_or_default();
        // Grid: every definition's combinations, one definition after another.
        let capacity = spaces.iter().map(|s| strategy.capacity(s)).sum::<Option<u64>>();
        let budget = limits.max_number_of_training_jobs.map(|m| m.max(0) as u64);
        let max_trials = budget.or(capacity).unwrap_or(u64::MAX).min(capacity.unwrap_or(u64::MAX));
        // A tuning job just created has none: its trials are not listed.
        let trials = if launched == 0 { Vec::new() } else { self.trials_of(name).await? };
        let sign = |v: f64, maximize: bool| if maximize { v } else { -v };
        let completion = config.tuning_job_completion_criteria.clone().unwrap_or_default();
        let criteria_maximize = trials::objective(&job.request).is_none_or(|(_, m)| m);
        let criteria = Criteria {
            target: completion.target_objective_metric_value.map(|t| sign(t, criteria_maximize)),
            max_not_improving: completion
                .best_objective_not_improving
                .and_then(|b| b.max_number_of_training_jobs_not_improving)
                .map(|n| n.max(0) as u32),
            complete_on_convergence: completion
                .convergence_detected
                .and_then(|c| c.complete_on_convergence)
                .is_some_and(|c| c == "Enabled"),
        };
        let deadline = limits
            .max_runtime_in_seconds
            .map(|s| Timestamp::from_millis(job.creation_time.millis() + i64::from(s) * 1000));
        let objective = trials::objective(&job.request);
        let maximize = objective.as_ref().is_none_or(|(_, m)| *m);
        // What earlier trials found (after a restart, from the store).
        let mut finished = Vec::new();
        let mut pending = BTreeMap::new();
        let early_stopping =
            config.training_job_early_stopping_type.as_deref() == Some("Auto") && strategy_name != "Hyperband";
        let mut curves = HashMap::new();
        let mut finished_curves = Vec::new();
        let mut active = BTreeSet::new();
        for t in &trials {
            let tuned = t.origin.as_ref().map(|o| o.tuned_hyper_parameters.clone()).unwrap_or_default();
            if !t.status.is_terminal() {
                active.insert(t.name.clone());
                pending.insert(t.name.clone(), tuned);
            } else if let Some(v) = t.objective_value {
                finished.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
            }
            if (early_stopping || strategy_name == "Hyperband")
                && let Some((metric, _)) = &objective
            {
                let curve: Vec<f64> = self
                    .c
                    .store
                    .read_metrics(&t.name)
                    .await?
                    .into_iter()
                    .filter(|m| &m.name == metric)
                    .map(|m| if maximize { m.value } else { -m.value })
                    .collect();
                if t.status.is_terminal() {
                    finished_curves.push(curve);
                } else {
                    curves.insert(t.name.clone(), curve);
                }
            }
        }
        // Warm start: the parents' finished trials seed the search (our own come after them, so
        // completion criteria judge this job's trials).
        let mut seeded = Vec::new();
        for parent in job
            .request
            .warm_start_config
            .iter()
            .flat_map(|w| w.parent_hyper_parameter_tuning_jobs.iter().flatten())
            .filter_map(|p| p.hyper_parameter_tuning_job_name.clone())
        {
            for t in self.trials_of(&parent).await? {
                if let Some(v) = t.objective_value {
                    let tuned = t.origin.map(|o| o.tuned_hyper_parameters).unwrap_or_default();
                    seeded.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
                }
            }
        }
        if !seeded.is_empty() {
            info!(tuning_job = name, trials = seeded.len(), "warm start: parents' trials seed the search");
        }
        let seeded_count = seeded.len();
        seeded.extend(finished);
        let finished = seeded;
        // Without a RandomSeed, a seed from the name keeps a restarted job's draws the same.
        let seed = config.random_seed.map(|s| s as u64).unwrap_or_else(|| {
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        });
        self.tuning.insert(
            name.to_string(),
            TuningRun {
                spaces,
                strategy,
                seed,
                max_trials,
                budget,
                max_parallel: limits.max_parallel_training_jobs.unwrap_or(1).max(1) as u64,
                launched,
                active,
                objective,
                finished,
                pending,
                criteria,
                early_stopping,
                curves,
                finished_curves,
                stopped_early: BTreeSet::new(),
                deadline,
                completing: job.completion.is_some(),
                hyperband,
                seeded: seeded_count,
            },
        );
        Ok(job)
    }

    /// Every trial of a tuning job, oldest first.
    pub(super) async fn trials_of(&self, tuning: &str) -> Result<Vec<TrainingJob>, DomainError> {
        let mut query = ListQuery {
            filter: ListFilter { tuning_job_name: Some(tuning.to_string()), ..Default::default() },
            sort_by: SortKey::CreationTime,
            sort_order: SortOrder::Ascending,
            limit: 1000,
            after: None,
        };
        let mut all = Vec::new();
        loop {
            let page = self.c.store.list_training_jobs(&query).await?;
            let last = page
                .items
                .last()
                .map(|t| Cursor { key: CursorKey::Int(t.creation_time.millis()), name: t.name.clone() });
            all.extend(page.items);
            match (page.next_token, last) {
                (Some(_), Some(cursor)) => query.after = Some(cursor),
                _ => return Ok(all),
            }
        }
    }

    /// Launches trials up to MaxParallelTrainingJobs, and completes the job when all have run.
    pub(super) async fn drive_tuning(&mut self, name: &str) -> Result<(), DomainError> {
        let job = self.c.tuning_job(name).await?.value;
        self.drive_tuning_job(job).await
    }

    /// [`Loop::drive_tuning`] of a tuning job already read.
    pub(super) async fn drive_tuning_job(&mut self, job: TuningJob) -> Result<(), DomainError> {
        self.drive_tuning_jobs(vec![job]).await
    }

    /// Tuning jobs this process's API has just created, arrived together: each is followed as
    /// the API kept it ([`Loop::load_created_tuning`]), and the first trials of all of them are
    /// stored in one statement.
    pub(super) async fn created_tuning_jobs(&mut self, names: Vec<String>) -> Result<(), DomainError> {
        let mut jobs = Vec::with_capacity(names.len());
        for name in names {
            match self.load_created_tuning(&name).await? {
                Some(job) => jobs.push(job),
                None => self.drive_tuning(&name).await?,
            }
        }
        self.drive_tuning_jobs(jobs).await
    }

    /// Launches trials of tuning jobs already read up to their MaxParallelTrainingJobs, all
    /// stored in one statement, and completes each job that has run all its trials.
    async fn drive_tuning_jobs(&mut self, jobs: Vec<TuningJob>) -> Result<(), DomainError> {
        let mut launches = Vec::new();
        for job in jobs.iter().filter(|j| j.status == TuningJobStatus::InProgress) {
            launches.extend(self.trials_to_launch(job)?);
        }
        // The trials go to the store by value and come back as written: no copy of each.
        let mut trainings = Vec::with_capacity(launches.len());
        let mut launched = Vec::with_capacity(launches.len());
        for Launch { tuning, training, tuned } in launches {
            launched.push((tuning, training.name.clone(), tuned));
            trainings.push(training);
        }
        let outcomes = self.c.store_new_training_jobs(trainings).await;
        // A trial counts as launched once stored, in its tuning job's order: after a failed write
        // the job's next drive suggests from there again (a later trial of it that was stored all
        // the same is found stored then, and queued as stored).
        let mut failed: BTreeSet<String> = BTreeSet::new();
        let mut first_error = None;
        for ((tuning, trial, tuned), outcome) in launched.into_iter().zip(outcomes) {
            // Created now: queued as written. Created before (a restart between the insert and
            // the count of launched trials): queued as stored.
            let written = match outcome {
                Ok(written) => Some(written),
                Err(trainyard_store::StoreError::AlreadyExists { .. }) => None,
                Err(e) => {
                    failed.insert(tuning);
                    first_error.get_or_insert(DomainError::from(e));
                    continue;
                }
            };
            let queued = if failed.contains(&tuning) {
                Ok(())
            } else {
                self.trial_launched(&tuning, trial, tuned, written.as_ref().map(|w| &w.value)).await
            };
            // Kept as written whatever became of it: its first change needs no read, nor its first
            // log lines.
            if let Some(written) = written {
                self.c.created_now(written).await;
            }
            queued?;
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for job in jobs.iter().filter(|j| j.status == TuningJobStatus::InProgress) {
            self.complete_if_done(&job.name).await?;
        }
        Ok(())
    }

    /// A stored trial counts as launched by its tuning job and is queued: from `written` (the job
    /// as just created) or, without it, as stored.
    async fn trial_launched(
        &mut self,
        tuning: &str,
        trial: String,
        tuned: BTreeMap<String, String>,
        written: Option<&TrainingJob>,
    ) -> Result<(), DomainError> {
        let Some(run) = self.tuning.get_mut(tuning) else { return Ok(()) };
        run.launched += 1;
        run.active.insert(trial.clone());
        run.pending.insert(trial.clone(), tuned);
        info!(tuning_job = %tuning, trial = %trial, index = run.launched, "trial launched");
        match written {
            Some(job) => self.enqueue_job(job).await,
            None => self.enqueue(&trial).await,
        }
    }

    /// The trials of a tuning job to launch now, suggested one after another (each sees the ones
    /// before it as running), not stored yet.
    fn trials_to_launch(&mut self, job: &TuningJob) -> Result<Vec<Launch>, DomainError> {
        let name = job.name.as_str();
        let mut launches: Vec<Launch> = Vec::new();
        loop {
            let Some(run) = self.tuning.get(name) else { return Ok(launches) };
            // MaxParallelTrainingJobs counts the trials that run or wait to start, not interrupted
            // ones waiting to resume.
            let resuming = |t: &String| self.queue.get(t).is_some_and(|q| q.resumes);
            let counted = run.active.iter().filter(|t| !resuming(t)).count() as u64 + launches.len() as u64;
            let index = run.launched + launches.len() as u64;
            if run.completing || index >= run.max_trials || counted >= run.max_parallel {
                return Ok(launches);
            }
            let (d, local) = run.definition_of(index);
            let space = &run.spaces[d];
            // A definition learns from the trials that tuned its hyperparameters.
            let tunes = |h: &BTreeMap<String, String>| space.parameters.iter().all(|p| h.contains_key(&p.name));
            let finished: Vec<Finished> = run.finished.iter().filter(|f| tunes(&f.hyper_parameters)).cloned().collect();
            let pending: Vec<BTreeMap<String, String>> =
                run.pending.values().chain(launches.iter().map(|l| &l.tuned)).filter(|h| tunes(h)).cloned().collect();
            let Some(tuned) = run.strategy.suggest(space, run.seed, local, run.budget, &finished, &pending) else {
                if let Some(run) = self.tuning.get_mut(name) {
                    run.max_trials = index;
                }
                return Ok(launches);
            };
            let definition = job
                .request
                .training_job_definitions
                .as_ref()
                .and_then(|defs| defs.get(d))
                .or(job.request.training_job_definition.as_ref())
                .cloned()
                .unwrap_or_default();
            let trial = trials::name(name, index);
            let request = trials::request(&job.request, &definition, &trial, &tuned);
            let origin = TrialOrigin {
                tuning_job_name: name.to_string(),
                definition_name: definition.definition_name.clone(),
                tuned_hyper_parameters: tuned.clone(),
            };
            let mut training = TrainingJob {
                owner: job.owner.clone(),
                ..TrainingJob::new(request, Some(origin), &self.c.arns, now())?
            };
            self.c.queued_if_no_room(&mut training)?;
            launches.push(Launch { tuning: name.to_string(), training, tuned });
        }
    }

    /// Completes a tuning job that has launched all its trials (or is completing) once none runs.
    async fn complete_if_done(&mut self, name: &str) -> Result<(), DomainError> {
        let Some(run) = self.tuning.get(name) else { return Ok(()) };
        if (run.completing || run.launched >= run.max_trials) && run.active.is_empty() {
            self.c
                .update_tuning_job(name, |j| {
                    if j.status != TuningJobStatus::InProgress {
                        return Ok(false);
                    }
                    j.transition(TuningJobStatus::Completed, now())?;
                    Ok(true)
                })
                .await?;
            info!(tuning_job = name, trials = run.launched, "tuning job completed");
            self.tuning.remove(name);
        }
        Ok(())
    }

    /// A completion criterion (or the tuning job's runtime limit) holds: record why, launch nothing
    /// more, and stop the trials still running; the job completes when they have ended.
    pub(super) async fn complete_early(
        &mut self,
        name: &str,
        reason: Option<Completion>,
        not_improving: u32,
    ) -> Result<(), DomainError> {
        let Some(run) = self.tuning.get_mut(name) else { return Ok(()) };
        run.completing = true;
        let active: Vec<String> = run.active.iter().cloned().collect();
        info!(tuning_job = name, reason = ?reason, "completion criteria met: stopping the remaining trials");
        let at = now();
        self.c
            .update_tuning_job(name, |j| {
                j.completion = Some(api::HyperParameterTuningJobCompletionDetails {
                    convergence_detected_time: matches!(reason, Some(Completion::Converged)).then_some(at),
                    number_of_training_jobs_objective_not_improving: Some(not_improving as i32),
                });
                j.last_modified_time = at;
                Ok(true)
            })
            .await?;
        for trial in &active {
            self.stop_trial(trial).await?;
        }
        Box::pin(self.drive_tuning(name)).await
    }

    /// Stops one trial, unless it has ended meanwhile: stopping a trial can end others first (a
    /// queued trial ends at once, and its end drives its tuning job's stop, which stops the rest).
    pub(super) async fn stop_trial(&mut self, trial: &str) -> Result<(), DomainError> {
        let mut ended = false;
        self.update_job(trial, |j| {
            ended = j.status.is_terminal();
            if ended { Ok(false) } else { j.request_stop(now()) }
        })
        .await?;
        if !ended {
            Box::pin(self.stop_training(trial)).await?;
        }
        Ok(())
    }

    pub(super) async fn stop_tuning(&mut self, name: &str) -> Result<(), DomainError> {
        let active: Vec<String> = match self.tuning.get(name) {
            Some(run) => run.active.iter().cloned().collect(),
            None => self.c.active_trials(name).await?,
        };
        for trial in &active {
            self.stop_trial(trial).await?;
        }
        let remaining = self.tuning.get(name).map_or(0, |r| r.active.len());
        if remaining == 0 {
            let stopped = self
                .c
                .update_tuning_job(name, |j| {
                    if j.status != TuningJobStatus::Stopping {
                        return Ok(false);
                    }
                    j.transition(TuningJobStatus::Stopped, now())?;
                    Ok(true)
                })
                .await?;
            if stopped {
                info!(tuning_job = name, "tuning job stopped");
                self.tuning.remove(name);
            }
        }
        Ok(())
    }
}
