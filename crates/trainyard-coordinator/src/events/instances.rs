//! Instances: their updates from agents (states, logs, metrics), their ends (the job's outcome,
//! retries under RetryStrategy), stops, and an instance whose agent was lost.

use tracing::{debug, info};
use trainyard_model::jobs::TrainingJob;
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus, TuningJobStatus};
use trainyard_model::{DomainError, Timestamp, api};
use trainyard_proto::pb::coordinator_message::Body as Down;
use trainyard_proto::pb::{self, InstanceState};
use trainyard_store::MetricSample;
use trainyard_tuner::{Finished, stopping};

use super::{Loop, Progress, is_final, send};
use crate::core::now;

impl Loop {
    /// An instance whose agent is gone: retry the job under RetryStrategy, else fail it.
    /// `fenced_until`: when the lost copy has surely stopped (None: it is known to have).
    pub(super) async fn instance_lost(
        &mut self,
        job: &str,
        instance: u32,
        why: &str,
        fenced_until: Option<tokio::time::Instant>,
    ) -> Result<(), DomainError> {
        let Some(run) = self.running.remove(job) else { return Ok(()) };
        // The rest of the gang is killed, not stopped gracefully: the attempt is over, and a retry
        // must not meet its old copies still running.
        for (i, (agent, _)) in &run.instances {
            if let Some(a) = self.agents.get_mut(agent) {
                a.allocations.remove(&(job.to_string(), *i));
                self.c.set_no_room(false);
                if *i != instance {
                    send(
                        a,
                        Down::Stop(pb::StopInstance { training_job_name: job.to_string(), instance: *i, kill: true }),
                    );
                }
            }
        }
        let stored = self.c.training_job(job).await?.value;
        let retries =
            stored.request.retry_strategy.as_ref().and_then(|r| r.maximum_retry_attempts).unwrap_or(0).max(0) as u32;
        // A spot job that was being interrupted anyway goes back to wait as interrupted: losing
        // its agent meanwhile spends no retry.
        let interrupted = self.interrupting.remove(job).is_some();
        if stored.status == TrainingJobStatus::InProgress && (interrupted || stored.retries_spent() < retries) {
            let wait =
                fenced_until.map(|t| t.saturating_duration_since(tokio::time::Instant::now())).unwrap_or_default();
            let after = if wait.is_zero() {
                String::new()
            } else {
                format!(" in {} s, once the lost copy has stopped itself", wait.as_secs_f64().ceil() as u64)
            };
            let message = if interrupted {
                format!("Training job interrupted; it resumes from its checkpoints{after} ({why})")
            } else {
                format!("Retrying (attempt {} of {}){after}: {why}", stored.retries_spent() + 2, retries + 1)
            };
            info!(training_job = job, %message, "retrying");
            self.update_job(job, |j| {
                if interrupted {
                    return j.interrupt(message.clone(), now()).map(|()| true);
                }
                j.attempt += 1;
                j.placement.clear();
                j.runs.interrupting_for = None;
                j.transition(SecondaryStatus::Restarting, message.clone(), now())?;
                Ok(true)
            })
            .await?;
            self.enqueue(job).await?;
            if let Some(queued) = self.queue.get_mut(job)
                && !wait.is_zero()
            {
                queued.not_before = fenced_until;
                let message = format!(
                    "Queued: waiting {} s for the lost copy to stop itself (fencing), then for an agent",
                    wait.as_secs_f64().ceil() as u64
                );
                self.update_job(job, |j| Ok(j.set_status_message(message.clone(), now()))).await?;
            }
            return Ok(());
        }
        let (status, reason) = if stored.status == TrainingJobStatus::Stopping {
            (SecondaryStatus::Stopped, None)
        } else {
            (SecondaryStatus::Failed, Some(format!("InternalServerError: {why}")))
        };
        self.finish(job, status, why, reason, None).await
    }

    // ----- instance reports -----

    pub(super) async fn on_update(&mut self, agent: &str, update: pb::InstanceUpdate) -> Result<(), DomainError> {
        let job = update.training_job_name.clone();
        let state = update.state();
        let known = self.running.get(&job).is_some_and(|r| {
            r.attempt == update.attempt && r.instances.get(&update.instance).is_some_and(|(a, _)| a == agent)
        });
        if !known {
            // Not ours (any more): the job ended or was retried elsewhere. The agent can drop it.
            if is_final(state) {
                self.forget(&job, vec![(update.instance, agent.to_string())]);
            } else if let Some(a) = self.agents.get(agent) {
                send(
                    a,
                    Down::Stop(pb::StopInstance {
                        training_job_name: job.clone(),
                        instance: update.instance,
                        kill: true,
                    }),
                );
            }
            return Ok(());
        }
        // Counted once: only the report of an instance this coordinator placed.
        if is_final(state) {
            let label = crate::telemetry::State { state: format!("{state:?}") };
            self.metrics.instances_ended.get_or_create(&label).inc();
        }
        if !update.metrics.is_empty() {
            self.record_metrics(&job, update.instance, update.first_sample, &update.metrics).await?;
            // Stored: the agent may forget them (numbered ones it keeps until told so).
            if update.first_sample > 0
                && let Some(a) = self.agents.get(agent)
            {
                let through_sample = update.first_sample + update.metrics.len() as u64 - 1;
                let stored =
                    pb::SamplesStored { training_job_name: job.clone(), instance: update.instance, through_sample };
                send(a, Down::SamplesStored(stored));
            }
        }
        let secondary = match state {
            InstanceState::Downloading => Some(SecondaryStatus::Downloading),
            InstanceState::Training => Some(SecondaryStatus::Training),
            InstanceState::Uploading => Some(SecondaryStatus::Uploading),
            _ => None,
        };
        let repeated = secondary.is_some_and(|next| {
            let run = self.running.get_mut(&job).expect("known above");
            let report = (next, update.message.clone());
            let same = run.last_progress.as_ref() == Some(&report);
            run.last_progress = Some(report);
            same
        });
        if let Some(next) = secondary.filter(|_| !repeated) {
            // Stored with the job's next write: at the latest at the end of this pass, or with its
            // end when it ends in this pass (a trial's Uploading and Completed arrive together).
            // At the agent's time of the step, as its metric samples are: the loop may handle the
            // report later, and a TrainingStartTime after the first sample would leave that
            // sample out of every window that starts at it (the SageMaker SDK's analytics do).
            // Never in the future (another host's clock).
            let at = match update.at_millis {
                0 => now(),
                reported => Timestamp::from_millis(reported.min(now().millis())),
            };
            self.progress_unstored.entry(job.clone()).or_default().push(Progress {
                status: next,
                message: update.message.clone(),
                at,
            });
        }
        if !is_final(state) {
            return Ok(());
        }
        // An instance ended.
        if let Some(a) = self.agents.get_mut(agent) {
            a.allocations.remove(&(job.clone(), update.instance));
            // Room again: what is created before the next pass is not stored as waiting.
            self.c.set_no_room(false);
        }
        let run = self.running.get_mut(&job).expect("known above");
        if let Some(slot) = run.instances.get_mut(&update.instance) {
            slot.1 = Some(update.clone());
        }
        let ended: Vec<&pb::InstanceUpdate> = run.instances.values().filter_map(|(_, u)| u.as_ref()).collect();
        let failed = ended.iter().find(|u| u.state() == InstanceState::Failed).map(|u| (*u).clone());
        let all_ended = ended.len() == run.instances.len();
        if failed.is_none() && !all_ended {
            return Ok(());
        }
        // The job ends: with the first failure, or when every instance has.
        let others: Vec<(u32, String)> =
            run.instances.iter().filter(|(_, (_, u))| u.is_none()).map(|(i, (a, _))| (*i, a.clone())).collect();
        let model = run.instances.get(&1).and_then(|(_, u)| u.as_ref()).and_then(|u| u.model_artifacts.clone());
        let states: Vec<InstanceState> = ended.iter().map(|u| u.state()).collect();
        for (i, a) in &others {
            if let Some(entry) = self.agents.get_mut(a) {
                entry.allocations.remove(&(job.clone(), *i));
                self.c.set_no_room(false);
                send(entry, Down::Stop(pb::StopInstance { training_job_name: job.clone(), instance: *i, kill: false }));
            }
        }
        let stopped = states.contains(&InstanceState::Stopped);
        if failed.is_none() && stopped && self.interrupting.contains_key(&job) {
            return self.resume_later(&job).await;
        }
        let (status, message, reason) = if let Some(f) = failed {
            let reason = f.failure_reason.clone().unwrap_or_else(|| "AlgorithmError".into());
            let instance = if run.instances.len() > 1 { format!(" (algo-{})", f.instance) } else { String::new() };
            (SecondaryStatus::Failed, "Training job failed".to_string(), Some(format!("{reason}{instance}")))
        } else if states.contains(&InstanceState::MaxRuntimeExceeded) {
            (
                SecondaryStatus::MaxRuntimeExceeded,
                "Training job reached MaxRuntimeInSeconds and was stopped".into(),
                None,
            )
        } else if stopped && self.wait_exceeded.contains(&job) {
            (
                SecondaryStatus::MaxWaitTimeExceeded,
                "Training job reached MaxWaitTimeInSeconds and was stopped".into(),
                None,
            )
        } else if stopped {
            (SecondaryStatus::Stopped, "Training job stopped".into(), None)
        } else {
            (SecondaryStatus::Completed, "Training job completed".into(), None)
        };
        let instances: Vec<(u32, String)> = self
            .running
            .remove(&job)
            .map(|r| r.instances.into_iter().map(|(i, (a, _))| (i, a)).collect())
            .unwrap_or_default();
        self.finish(&job, status, &message, reason, model).await?;
        // Stored: the agents may forget the instances that have ended.
        self.forget(&job, instances);
        Ok(())
    }

    /// A spot job's instances stopped because another job needed their place: it goes back to the
    /// queue (`Interrupted`, then `Pending`) and resumes from its checkpoints when there is room. A
    /// user's stop that came meanwhile wins: the job ends `Stopped`.
    async fn resume_later(&mut self, job: &str) -> Result<(), DomainError> {
        let for_job = self.interrupting.remove(job).unwrap_or_default();
        let instances: Vec<(u32, String)> = self
            .running
            .remove(job)
            .map(|r| r.instances.into_iter().map(|(i, (a, _))| (i, a)).collect())
            .unwrap_or_default();
        // A trial that early stopping ended meanwhile (on the last metrics of this run) does not
        // come back.
        let stored = self.c.training_job(job).await?.value;
        if stored.runs.stopped_early.is_some() {
            self.finish(job, SecondaryStatus::Stopped, "Training job stopped", None, None).await?;
            self.forget(job, instances);
            return Ok(());
        }
        let message = format!(
            "Training job interrupted: training job {for_job} needed its place; it resumes from its checkpoints"
        );
        let interrupted = self
            .updated_job(job, |j| {
                if j.status != TrainingJobStatus::InProgress {
                    return Ok(false);
                }
                j.interrupt(message.clone(), now())?;
                Ok(true)
            })
            .await?;
        match interrupted {
            Some(stored) => {
                info!(training_job = job, for_job = %for_job, "spot job interrupted; queued to resume");
                self.enqueue(job).await?;
                // It no longer counts against MaxParallelTrainingJobs: another trial may start.
                if let Some(tuning) = stored.tuning_job_name() {
                    self.drive_tuning(tuning).await?;
                }
            }
            None => self.finish(job, SecondaryStatus::Stopped, "Training job stopped", None, None).await?,
        }
        self.forget(job, instances);
        Ok(())
    }

    /// The job's end is stored: its agents may forget these instances, unless log lines of the
    /// job still wait in this coordinator's memory for the store (the agents keep their copies
    /// until then: this one could die first). An agent sends an end that is not forgotten again
    /// every 10 s, and is told to forget it then (an end [`Loop::on_update`] no longer knows).
    pub(super) fn forget(&self, job: &str, instances: Vec<(u32, String)>) {
        if self.c.holds_logs_of(job) {
            debug!(job, "the job's log lines wait for the store: its agents keep theirs");
            return;
        }
        for (i, a) in instances {
            if let Some(entry) = self.agents.get(&a) {
                send(entry, Down::Forget(pb::ForgetInstance { training_job_name: job.to_string(), instance: i }));
            }
        }
    }

    /// Spot jobs past StoppingCondition.MaxWaitTimeInSeconds: a queued one ends at once, a running
    /// one is stopped as StopTrainingJob would (its model and checkpoints are uploaded) and ends
    /// `MaxWaitTimeExceeded`.
    pub(super) async fn enforce_max_wait(&mut self) -> Result<(), DomainError> {
        let now = now().millis();
        let due: Vec<String> = self
            .wait_deadlines
            .iter()
            .filter(|(name, deadline)| now > **deadline && !self.wait_exceeded.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            info!(training_job = %name, "MaxWaitTimeInSeconds reached");
            if self.dequeue(&name).is_some() {
                let message = "Training job reached MaxWaitTimeInSeconds while it waited";
                self.finish(&name, SecondaryStatus::MaxWaitTimeExceeded, message, None, None).await?;
            } else if self.running.contains_key(&name) {
                self.wait_exceeded.insert(name.clone());
                self.stop_running_instances(&name);
            } else {
                self.wait_deadlines.remove(&name);
            }
        }
        Ok(())
    }

    /// Stores an instance's samples, numbered from `first_sample` on (0: not numbered), and
    /// applies them to the job (its final metrics, early stopping).
    pub(super) async fn record_metrics(
        &mut self,
        job: &str,
        instance: u32,
        first_sample: u64,
        samples: &[pb::MetricSample],
    ) -> Result<(), DomainError> {
        // SageMaker records numbers only: NaN and infinities (a regex that captured "nan" or "inf")
        // are dropped, here as at the agent, so no objective or ranking ever sees one. (Numbered
        // first: a dropped sample keeps its number from the others.)
        let numbered: Vec<(Option<i64>, &pb::MetricSample)> = samples
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_finite())
            .map(|(i, s)| (crate::core::agent_number(first_sample, i), s))
            .collect();
        if numbered.is_empty() {
            return Ok(());
        }
        let samples: Vec<pb::MetricSample> = numbered.iter().map(|(_, s)| (*s).clone()).collect();
        let converted: Vec<MetricSample> = numbered
            .iter()
            .map(|(number, s)| MetricSample {
                name: s.name.clone(),
                timestamp: Timestamp::from_millis(s.timestamp_millis),
                value: s.value,
                instance_sample: number.map(|n| (instance, n)),
            })
            .collect();
        let budget = self.metric_budgets.entry(job.to_string()).or_default();
        let stored: Vec<MetricSample> =
            converted.iter().filter(|m| budget.keep(&m.name, m.timestamp.millis())).cloned().collect();
        self.c.store.append_metrics(job, &stored).await?;
        // Which tuning job it is a trial of never changes: the kept copy answers without a read.
        let stored = match self.c.last_written(job) {
            Some(kept) => kept,
            None => self.c.training_job(job).await?.value,
        };
        let tuning = stored.tuning_job_name().map(str::to_string);
        let objective =
            tuning.as_deref().and_then(|t| self.tuning.get(t)).and_then(|t| t.objective.clone()).map(|(m, _)| m);
        let stop_early = match (&tuning, &objective) {
            (Some(tuning), Some(metric)) => self.early_stop(tuning, job, metric, &samples),
            _ => None,
        };
        self.update_job(job, |j| {
            if let Some(rule) = stop_early
                && j.status == TrainingJobStatus::InProgress
            {
                j.runs.stopped_early = Some(rule.to_string());
            }
            for s in &converted {
                let data = api::MetricData {
                    metric_name: Some(s.name.clone()),
                    timestamp: Some(s.timestamp),
                    value: Some(s.value),
                };
                let existing = j.final_metrics.iter().position(|m| m.metric_name.as_deref() == Some(s.name.as_str()));
                match existing {
                    Some(i) => j.final_metrics[i] = data,
                    None if j.final_metrics.len() < 40 => j.final_metrics.push(data),
                    None => {}
                }
                if objective.as_deref() == Some(s.name.as_str()) {
                    j.objective_value = Some(s.value);
                }
            }
            j.last_modified_time = now();
            Ok(true)
        })
        .await?;
        if stop_early.is_some() {
            self.stop_running_instances(job);
        }
        Ok(())
    }

    /// Ends a training job (persisted), frees its slot, and lets its tuning job go on.
    pub(super) async fn finish(
        &mut self,
        job: &str,
        status: SecondaryStatus,
        message: &str,
        failure_reason: Option<String>,
        model_artifacts: Option<String>,
    ) -> Result<(), DomainError> {
        let written = self
            .updated_job(job, |j| {
                if j.status.is_terminal() {
                    return Ok(false);
                }
                if j.status == TrainingJobStatus::Stopping
                    && status != SecondaryStatus::Failed
                    && status != SecondaryStatus::Stopped
                {
                    // A stop raced with the end: SageMaker reports what happened.
                }
                j.failure_reason = failure_reason.clone();
                j.model_artifacts = model_artifacts.clone().or(j.model_artifacts.take());
                match &j.runs.stopped_early {
                    Some(rule) if status == SecondaryStatus::Stopped => {
                        let message = format!("Training job stopped early: its objective was {rule}");
                        j.transition(status, &message, now())?
                    }
                    _ => j.transition(status, message, now())?,
                }
                Ok(true)
            })
            .await?;
        info!(training_job = job, status = %status, detail = message, failure_reason = failure_reason.as_deref(), "training job ended");
        self.metric_budgets.remove(job);
        self.interrupting.remove(job);
        self.wait_exceeded.remove(job);
        self.wait_deadlines.remove(job);
        // The write's own result: a second read could fail (the store away for a moment) after the
        // end was stored, and leave the trial counted as running by its tuning job for good.
        let stored = match written {
            Some(stored) => stored,
            None => self.c.training_job(job).await?.value,
        };
        if let Some(tuning) = stored.tuning_job_name().map(str::to_string) {
            self.record_trial_end(&tuning, &stored).await?;
            // As this process last wrote it: a stop request is written (and kept) before its
            // event is sent, so a stop is never missed here.
            let tuning_job = self.c.running_tuning_job(&tuning).await?;
            if tuning_job.status == TuningJobStatus::Stopping {
                self.stop_tuning(&tuning).await?
            } else {
                self.drive_tuning_job(tuning_job).await?
            }
        }
        Ok(())
    }

    /// A trial of `tuning` has ended (as stored): it no longer counts as running, its objective joins
    /// the model's data, and the tuning job completes early when its criteria now hold. Idempotent:
    /// a trial no longer running is left alone, so catching up may call it again.
    pub(super) async fn record_trial_end(&mut self, tuning: &str, stored: &TrainingJob) -> Result<(), DomainError> {
        let mut completion = None;
        if let Some(run) = self.tuning.get_mut(tuning) {
            if !run.active.remove(&stored.name) {
                return Ok(());
            }
            let tuned = run.pending.remove(&stored.name).unwrap_or_default();
            if let Some(curve) = run.curves.remove(&stored.name) {
                run.finished_curves.push(curve);
            }
            if let Some(v) = stored.objective_value {
                let maximize = run.objective.as_ref().is_none_or(|(_, m)| *m);
                run.finished.push(Finished { hyper_parameters: tuned, value: if maximize { v } else { -v } });
            }
            if !run.completing {
                let values: Vec<f64> = run.finished[run.seeded..].iter().map(|f| f.value).collect();
                completion =
                    stopping::complete(&run.criteria, &values).map(|c| (c, stopping::trials_not_improving(&values)));
            }
        }
        if let Some((reason, not_improving)) = completion {
            self.complete_early(tuning, Some(reason), not_improving).await?;
        }
        Ok(())
    }

    pub(super) async fn stop_training(&mut self, name: &str) -> Result<(), DomainError> {
        if self.dequeue(name).is_some() || !self.running.contains_key(name) {
            let job = self.c.training_job(name).await?.value;
            if job.status == TrainingJobStatus::Stopping {
                return self
                    .finish(name, SecondaryStatus::Stopped, "Stopped before an agent started it", None, None)
                    .await;
            }
            return Ok(());
        }
        self.stop_running_instances(name);
        Ok(())
    }

    // ----- tuning jobs -----

    /// Asks the agents to stop every instance of `job` that has not ended yet.
    pub(super) fn stop_running_instances(&self, job: &str) {
        let Some(run) = self.running.get(job) else { return };
        for (i, (agent, ended)) in &run.instances {
            if ended.is_none()
                && let Some(a) = self.agents.get(agent)
            {
                send(a, Down::Stop(pb::StopInstance { training_job_name: job.to_string(), instance: *i, kill: false }));
            }
        }
    }
}
