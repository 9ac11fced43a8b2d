//! The stored records of tuning and training jobs, their state changes, and the API views built from
//! them (Describe responses, list summaries). Every change takes `now` and returns an error instead
//! of making a transition the state machine forbids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api;
use crate::error::{DomainError, ResourceKind};
use crate::names::ArnContext;
use crate::status::{ObjectiveStatus, SecondaryStatus, TrainingJobStatus, TuningJobStatus};
use crate::timestamp::Timestamp;

/// A tuning job as stored: the request exactly as accepted, plus its state.
#[derive(Debug, Clone, PartialEq)]
pub struct TuningJob {
    pub name: String,
    pub arn: String,
    pub status: TuningJobStatus,
    pub creation_time: Timestamp,
    pub last_modified_time: Timestamp,
    pub end_time: Option<Timestamp>,
    pub failure_reason: Option<String>,
    pub request: api::CreateHyperParameterTuningJobRequest,
    /// The user whose token created it ("" when created without authentication).
    pub owner: String,
    /// How it completed, when completion criteria ended it.
    pub completion: Option<api::HyperParameterTuningJobCompletionDetails>,
}

/// Counts of a tuning job's trials, by status and by objective status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrialCounts {
    pub completed: i32,
    pub in_progress: i32,
    pub retryable_error: i32,
    pub non_retryable_error: i32,
    pub stopped: i32,
    pub objective_succeeded: i32,
    pub objective_pending: i32,
    pub objective_failed: i32,
}

impl TrialCounts {
    pub fn total(&self) -> i32 {
        self.completed + self.in_progress + self.retryable_error + self.non_retryable_error + self.stopped
    }

    fn status_counters(&self) -> api::TrainingJobStatusCounters {
        api::TrainingJobStatusCounters {
            completed: Some(self.completed),
            in_progress: Some(self.in_progress),
            non_retryable_error: Some(self.non_retryable_error),
            retryable_error: Some(self.retryable_error),
            stopped: Some(self.stopped),
        }
    }

    fn objective_counters(&self) -> api::ObjectiveStatusCounters {
        api::ObjectiveStatusCounters {
            failed: Some(self.objective_failed),
            pending: Some(self.objective_pending),
            succeeded: Some(self.objective_succeeded),
        }
    }
}

impl TuningJob {
    /// A new tuning job from a request that passed validation.
    pub fn new(
        request: api::CreateHyperParameterTuningJobRequest,
        arns: &ArnContext,
        now: Timestamp,
    ) -> Result<Self, DomainError> {
        let name = request
            .hyper_parameter_tuning_job_name
            .clone()
            .ok_or_else(|| DomainError::invalid("HyperParameterTuningJobName", "is required"))?;
        Ok(Self {
            arn: arns.tuning_job(&name),
            name,
            status: TuningJobStatus::InProgress,
            creation_time: now,
            last_modified_time: now,
            end_time: None,
            failure_reason: None,
            request,
            owner: String::new(),
            completion: None,
        })
    }

    pub fn strategy(&self) -> Option<&str> {
        self.request.hyper_parameter_tuning_job_config.as_ref().and_then(|c| c.strategy.as_deref())
    }

    /// StopHyperParameterTuningJob: `InProgress -> Stopping`. Stopping a job that is stopping
    /// already changes nothing; stopping one that has ended is a validation error, as in SageMaker.
    pub fn request_stop(&mut self, now: Timestamp) -> Result<bool, DomainError> {
        match self.status {
            TuningJobStatus::Stopping => Ok(false),
            TuningJobStatus::InProgress => self.transition(TuningJobStatus::Stopping, now).map(|_| true),
            ended => Err(DomainError::invalid(
                "HyperParameterTuningJobName",
                format!("hyperparameter tuning job '{}' has already ended ({ended}) and cannot be stopped", self.name),
            )),
        }
    }

    pub fn transition(&mut self, next: TuningJobStatus, now: Timestamp) -> Result<(), DomainError> {
        if !self.status.may_become(next) {
            return Err(DomainError::Internal(format!(
                "tuning job '{}' cannot go from {} to {next}",
                self.name, self.status
            )));
        }
        self.status = next;
        self.last_modified_time = now;
        if next.is_terminal() {
            self.end_time = Some(now);
        }
        Ok(())
    }

    pub fn describe(
        &self,
        counts: &TrialCounts,
        best: Option<api::HyperParameterTrainingJobSummary>,
        now: Timestamp,
    ) -> api::DescribeHyperParameterTuningJobResponse {
        let r = &self.request;
        let runtime = self.end_time.unwrap_or(now).seconds_since(self.creation_time);
        api::DescribeHyperParameterTuningJobResponse {
            autotune: r.autotune.clone(),
            best_training_job: best,
            consumed_resources: Some(api::HyperParameterTuningJobConsumedResources {
                runtime_in_seconds: Some(i32::try_from(runtime).unwrap_or(i32::MAX)),
            }),
            creation_time: Some(self.creation_time),
            failure_reason: self.failure_reason.clone(),
            hyper_parameter_tuning_end_time: self.end_time,
            hyper_parameter_tuning_job_arn: Some(self.arn.clone()),
            hyper_parameter_tuning_job_config: r.hyper_parameter_tuning_job_config.clone(),
            hyper_parameter_tuning_job_name: Some(self.name.clone()),
            hyper_parameter_tuning_job_status: Some(self.status.as_str().to_string()),
            last_modified_time: Some(self.last_modified_time),
            objective_status_counters: Some(counts.objective_counters()),
            overall_best_training_job: None,
            training_job_definition: r.training_job_definition.clone(),
            training_job_definitions: r.training_job_definitions.clone(),
            training_job_status_counters: Some(counts.status_counters()),
            tuning_job_completion_details: self.completion.clone(),
            warm_start_config: r.warm_start_config.clone(),
        }
    }

    pub fn summary(&self, counts: &TrialCounts) -> api::HyperParameterTuningJobSummary {
        api::HyperParameterTuningJobSummary {
            creation_time: Some(self.creation_time),
            hyper_parameter_tuning_end_time: self.end_time,
            hyper_parameter_tuning_job_arn: Some(self.arn.clone()),
            hyper_parameter_tuning_job_name: Some(self.name.clone()),
            hyper_parameter_tuning_job_status: Some(self.status.as_str().to_string()),
            last_modified_time: Some(self.last_modified_time),
            objective_status_counters: Some(counts.objective_counters()),
            resource_limits: self
                .request
                .hyper_parameter_tuning_job_config
                .as_ref()
                .and_then(|c| c.resource_limits.clone()),
            strategy: self.strategy().map(str::to_string),
            training_job_status_counters: Some(counts.status_counters()),
        }
    }
}

/// One entry of a training job's `SecondaryStatusTransitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub status: SecondaryStatus,
    pub start_time: Timestamp,
    pub end_time: Option<Timestamp>,
    pub message: String,
}

/// Where a trial came from, for training jobs that a tuning job launched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialOrigin {
    pub tuning_job_name: String,
    pub definition_name: Option<String>,
    pub tuned_hyper_parameters: BTreeMap<String, String>,
}

/// Where one instance of a training job was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedInstance {
    /// 1-based: `algo-<instance>`.
    pub instance: u32,
    pub agent: String,
    #[serde(default)]
    pub gpu_uuids: Vec<String>,
}

/// A training job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingJob {
    pub name: String,
    pub arn: String,
    pub status: TrainingJobStatus,
    pub secondary_status: SecondaryStatus,
    pub transitions: Vec<Transition>,
    pub creation_time: Timestamp,
    pub last_modified_time: Timestamp,
    pub training_start_time: Option<Timestamp>,
    pub training_end_time: Option<Timestamp>,
    pub failure_reason: Option<String>,
    pub request: api::CreateTrainingJobRequest,
    /// The user whose token created it, or its tuning job's ("" without authentication).
    pub owner: String,
    pub origin: Option<TrialOrigin>,
    pub final_metrics: Vec<api::MetricData>,
    /// The final value of the tuning objective, for trials.
    pub objective_value: Option<f64>,
    pub objective_status: Option<ObjectiveStatus>,
    pub model_artifacts: Option<String>,
    /// Where its instances run (empty while queued).
    pub placement: Vec<PlacedInstance>,
    /// 1 for the first run; each retry (RetryStrategy) and each resumption after an
    /// interruption runs it again as the next attempt.
    pub attempt: u32,
    /// Its runs: how long they trained, and the interruptions of a spot job.
    pub runs: Runs,
}

/// What a job's runs used, as SageMaker bills it, and a spot job's interruptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    /// Milliseconds of training in runs that have ended.
    #[serde(default)]
    pub billable_millis: i64,
    /// When the current run started training.
    #[serde(default)]
    pub started: Option<Timestamp>,
    /// How many times it was interrupted (each resumed as a new attempt, no retry spent).
    #[serde(default)]
    pub interruptions: u32,
    /// It is being interrupted so that this job can start (written before its instances are told
    /// to stop, so that their end is read as an interruption after a coordinator restart too).
    #[serde(default)]
    pub interrupting_for: Option<String>,
    /// Its tuning job's early stopping (the median rule, or a Hyperband rung) ended it: why.
    /// Written before its instances are told to stop, so that its end reads as an early stop
    /// after a coordinator restart too, and a plot can tell it from a user's stop.
    #[serde(default)]
    pub stopped_early: Option<String>,
}

/// What SageMaker says while a job waits for capacity.
pub const STARTING_MESSAGE: &str = "Waiting for an agent with the requested resources";

/// SageMaker's MaxRuntimeInSeconds when a CreateTrainingJob request gives none: one day.
pub const DEFAULT_MAX_RUNTIME_SECONDS: i32 = 86_400;

impl TrainingJob {
    pub fn new(
        request: api::CreateTrainingJobRequest,
        origin: Option<TrialOrigin>,
        arns: &ArnContext,
        now: Timestamp,
    ) -> Result<Self, DomainError> {
        let name =
            request.training_job_name.clone().ok_or_else(|| DomainError::invalid("TrainingJobName", "is required"))?;
        let objective_status = origin.as_ref().map(|_| ObjectiveStatus::Pending);
        // SageMaker's default limit, stated as SageMaker states it in DescribeTrainingJob (where
        // StoppingCondition is always present: the Python SDK's Estimator.attach reads it). A spot
        // job's MaxWaitTimeInSeconds bounds its running too.
        let mut request = request;
        let stopping = request.stopping_condition.get_or_insert_with(Default::default);
        if stopping.max_runtime_in_seconds.is_none() {
            stopping.max_runtime_in_seconds = Some(
                stopping
                    .max_wait_time_in_seconds
                    .map_or(DEFAULT_MAX_RUNTIME_SECONDS, |wait| wait.min(DEFAULT_MAX_RUNTIME_SECONDS)),
            );
        }
        Ok(Self {
            arn: arns.training_job(&name),
            name,
            status: TrainingJobStatus::InProgress,
            secondary_status: SecondaryStatus::Starting,
            transitions: vec![Transition {
                status: SecondaryStatus::Starting,
                start_time: now,
                end_time: None,
                message: STARTING_MESSAGE.to_string(),
            }],
            creation_time: now,
            last_modified_time: now,
            training_start_time: None,
            training_end_time: None,
            failure_reason: None,
            request,
            owner: String::new(),
            origin,
            final_metrics: Vec::new(),
            objective_value: None,
            objective_status,
            model_artifacts: None,
            placement: Vec::new(),
            attempt: 1,
            runs: Runs::default(),
        })
    }

    pub fn tuning_job_name(&self) -> Option<&str> {
        self.origin.as_ref().map(|o| o.tuning_job_name.as_str())
    }

    /// A trial's tuning job's ARN, in the same partition, region and account as its own (the
    /// name lower-cased, as SageMaker does).
    pub fn tuning_job_arn(&self) -> Option<String> {
        let tuning = self.tuning_job_name()?;
        let (prefix, _) = self.arn.rsplit_once(":training-job/")?;
        Some(format!("{prefix}:hyper-parameter-tuning-job/{}", tuning.to_lowercase()))
    }

    /// Moves to a new secondary status (and the primary status it belongs to), closing the
    /// current transition. A no-op when the job is in that secondary status already.
    pub fn transition(
        &mut self,
        next: SecondaryStatus,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        if next == self.secondary_status {
            return Ok(());
        }
        let primary = next.primary();
        if primary != self.status && !self.status.may_become(primary) {
            return Err(DomainError::Internal(format!(
                "training job '{}' cannot go from {}/{} to {primary}/{next}",
                self.name, self.status, self.secondary_status
            )));
        }
        if let Some(last) = self.transitions.last_mut() {
            last.end_time = Some(now);
        }
        self.transitions.push(Transition { status: next, start_time: now, end_time: None, message: message.into() });
        if next == SecondaryStatus::Training {
            self.training_start_time.get_or_insert(now);
            self.runs.started.get_or_insert(now);
        }
        self.status = primary;
        self.secondary_status = next;
        self.last_modified_time = now;
        if primary.is_terminal() {
            self.end_run(now);
            if let Some(last) = self.transitions.last_mut() {
                last.end_time = Some(now);
            }
            self.training_end_time = Some(now);
            if self.objective_status == Some(ObjectiveStatus::Pending) {
                self.objective_status = Some(if self.objective_value.is_some() {
                    ObjectiveStatus::Succeeded
                } else {
                    ObjectiveStatus::Failed
                });
            }
        }
        Ok(())
    }

    /// The current run is over: its training time becomes billable.
    fn end_run(&mut self, now: Timestamp) {
        if let Some(started) = self.runs.started.take() {
            self.runs.billable_millis += now.millis().saturating_sub(started.millis()).max(0);
        }
    }

    /// A spot job's run ends because its place was needed: it goes back to wait (`Interrupted`,
    /// then queued by the caller) as its next attempt, without spending a retry; what it trained so
    /// far is billable.
    pub fn interrupt(&mut self, message: impl Into<String>, now: Timestamp) -> Result<(), DomainError> {
        self.transition(SecondaryStatus::Interrupted, message, now)?;
        self.end_run(now);
        self.runs.interruptions += 1;
        self.runs.interrupting_for = None;
        self.attempt += 1;
        self.placement.clear();
        Ok(())
    }

    /// Retries (RetryStrategy) spent so far: attempts that were not resumptions after interruptions.
    pub fn retries_spent(&self) -> u32 {
        self.attempt.saturating_sub(1 + self.runs.interruptions)
    }

    pub fn is_spot(&self) -> bool {
        self.request.enable_managed_spot_training == Some(true)
    }

    /// Milliseconds it trained: the runs that ended, and the current one until `now`.
    pub fn billable_millis(&self, now: Timestamp) -> i64 {
        self.runs.billable_millis + self.runs.started.map_or(0, |s| now.millis().saturating_sub(s.millis()).max(0))
    }

    /// MaxRuntimeInSeconds bounds the time it trains, over all its runs: what is left of it for
    /// the next run (at least a second), None without a limit.
    pub fn remaining_runtime_seconds(&self) -> Option<i32> {
        let limit = self.request.stopping_condition.as_ref()?.max_runtime_in_seconds?;
        let used = i32::try_from(self.runs.billable_millis / 1000).unwrap_or(i32::MAX);
        Some(limit.saturating_sub(used).max(1))
    }

    /// When a spot job's StoppingCondition.MaxWaitTimeInSeconds (waiting and running, since it
    /// was created) runs out; None for a job without one.
    pub fn max_wait_deadline(&self) -> Option<Timestamp> {
        let wait = self.request.stopping_condition.as_ref()?.max_wait_time_in_seconds?;
        self.is_spot().then(|| Timestamp::from_millis(self.creation_time.millis() + i64::from(wait) * 1000))
    }

    /// A spot job past its [`Self::max_wait_deadline`].
    pub fn max_wait_exceeded(&self, now: Timestamp) -> bool {
        self.max_wait_deadline().is_some_and(|deadline| now.millis() > deadline.millis())
    }

    /// Replaces the message of the current transition (why a queued job still waits).
    pub fn set_status_message(&mut self, message: impl Into<String>, now: Timestamp) -> bool {
        let message = message.into();
        match self.transitions.last_mut() {
            Some(last) if last.message != message => {
                last.message = message;
                self.last_modified_time = now;
                true
            }
            _ => false,
        }
    }

    /// StopTrainingJob: `InProgress -> Stopping`. A stopping job stays stopping; an ended job is a
    /// validation error, as in SageMaker.
    pub fn request_stop(&mut self, now: Timestamp) -> Result<bool, DomainError> {
        match self.status {
            TrainingJobStatus::Stopping => Ok(false),
            TrainingJobStatus::InProgress => {
                self.transition(SecondaryStatus::Stopping, "Stopping the training job", now).map(|_| true)
            }
            ended => Err(DomainError::invalid(
                "TrainingJobName",
                format!("training job '{}' has already ended ({ended}) and cannot be stopped", self.name),
            )),
        }
    }

    pub fn describe(&self) -> api::DescribeTrainingJobResponse {
        let r = self.request.clone();
        let api::CreateTrainingJobRequest {
            algorithm_specification,
            checkpoint_config,
            debug_hook_config,
            debug_rule_configurations,
            enable_inter_container_traffic_encryption,
            enable_managed_spot_training,
            enable_network_isolation,
            environment,
            experiment_config,
            hyper_parameters,
            infra_check_config,
            input_data_config,
            mlflow_config,
            model_package_config,
            output_data_config,
            profiler_config,
            profiler_rule_configurations,
            remote_debug_config,
            resource_config,
            retry_strategy,
            role_arn,
            serverless_job_config,
            session_chaining_config: _,
            stopping_condition,
            tags: _,
            tensor_board_output_config,
            training_job_name: _,
            vpc_config,
        } = r;
        // SageMaker's two clocks: TrainingTimeInSeconds is the wall clock since training first
        // started, interruptions included; BillableTimeInSeconds only the time it trained. They
        // are equal unless a spot job was interrupted (the console's "savings").
        let until = self.training_end_time.unwrap_or(self.last_modified_time);
        let seconds = |millis: i64| i32::try_from((millis.max(0) as u64).div_ceil(1000)).unwrap_or(i32::MAX).max(1);
        let training_time =
            self.training_start_time.map(|start| seconds(until.millis().saturating_sub(start.millis())));
        let billable = self.training_start_time.map(|_| seconds(self.billable_millis(until)));
        api::DescribeTrainingJobResponse {
            algorithm_specification,
            billable_time_in_seconds: billable,
            checkpoint_config,
            creation_time: Some(self.creation_time),
            debug_hook_config,
            debug_rule_configurations,
            enable_inter_container_traffic_encryption,
            enable_managed_spot_training,
            enable_network_isolation,
            environment,
            experiment_config,
            failure_reason: self.failure_reason.clone(),
            final_metric_data_list: (!self.final_metrics.is_empty()).then(|| self.final_metrics.clone()),
            hyper_parameters,
            infra_check_config,
            input_data_config,
            last_modified_time: Some(self.last_modified_time),
            mlflow_config,
            model_artifacts: self
                .model_artifacts
                .clone()
                .map(|uri| api::ModelArtifacts { s3_model_artifacts: Some(uri) }),
            model_package_config,
            // SageMaker answers an empty KmsKeyId for a job given none (the SDK's attach reads it).
            output_data_config: output_data_config.map(|mut o| {
                o.kms_key_id.get_or_insert_with(String::new);
                o
            }),
            profiler_config,
            profiler_rule_configurations,
            remote_debug_config,
            resource_config,
            retry_strategy,
            role_arn,
            secondary_status: Some(self.secondary_status.as_str().to_string()),
            secondary_status_transitions: Some(
                self.transitions
                    .iter()
                    .map(|t| api::SecondaryStatusTransition {
                        end_time: t.end_time,
                        start_time: Some(t.start_time),
                        status: Some(t.status.as_str().to_string()),
                        status_message: Some(t.message.clone()),
                    })
                    .collect(),
            ),
            serverless_job_config,
            stopping_condition,
            tensor_board_output_config,
            training_end_time: self.training_end_time,
            training_job_arn: Some(self.arn.clone()),
            training_job_name: Some(self.name.clone()),
            training_job_status: Some(self.status.as_str().to_string()),
            training_start_time: self.training_start_time,
            training_time_in_seconds: training_time,
            tuning_job_arn: self.tuning_job_arn(),
            vpc_config,
            ..Default::default()
        }
    }

    pub fn summary(&self) -> api::TrainingJobSummary {
        api::TrainingJobSummary {
            creation_time: Some(self.creation_time),
            last_modified_time: Some(self.last_modified_time),
            secondary_status: Some(self.secondary_status.as_str().to_string()),
            training_end_time: self.training_end_time,
            training_job_arn: Some(self.arn.clone()),
            training_job_name: Some(self.name.clone()),
            training_job_status: Some(self.status.as_str().to_string()),
            training_plan_arn: None,
            warm_pool_status: None,
        }
    }

    /// The view of a trial that tuning-job listings and BestTrainingJob show.
    pub fn trial_summary(&self, objective_metric: Option<&str>) -> api::HyperParameterTrainingJobSummary {
        api::HyperParameterTrainingJobSummary {
            creation_time: Some(self.creation_time),
            failure_reason: self.failure_reason.clone(),
            final_hyper_parameter_tuning_job_objective_metric: self.objective_value.map(|value| {
                api::FinalHyperParameterTuningJobObjectiveMetric {
                    metric_name: objective_metric.map(str::to_string),
                    r#type: None,
                    value: Some(value),
                }
            }),
            objective_status: self.objective_status.map(|s| s.as_str().to_string()),
            training_end_time: self.training_end_time,
            training_job_arn: Some(self.arn.clone()),
            training_job_definition_name: self.origin.as_ref().and_then(|o| o.definition_name.clone()),
            training_job_name: Some(self.name.clone()),
            training_job_status: Some(self.status.as_str().to_string()),
            training_start_time: self.training_start_time,
            tuned_hyper_parameters: Some(
                self.origin.as_ref().map(|o| o.tuned_hyper_parameters.clone()).unwrap_or_default(),
            ),
            tuning_job_name: self.tuning_job_name().map(str::to_string),
        }
    }
}

/// For messages about a missing job.
pub fn not_found(kind: ResourceKind, name: &str) -> DomainError {
    DomainError::NotFound { kind, name: name.to_string() }
}
