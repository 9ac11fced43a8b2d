//! A spot job's runs as SageMaker reports them: interruptions, the two clocks, the rest of
//! MaxRuntimeInSeconds, MaxWaitTimeInSeconds, and retries that interruptions do not spend.

use serde_json::json;
use trainyard_model::api::CreateTrainingJobRequest;
use trainyard_model::jobs::TrainingJob;
use trainyard_model::names::ArnContext;
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus};
use trainyard_model::timestamp::Timestamp;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(seconds * 1000)
}

fn spot_job() -> TrainingJob {
    let request: CreateTrainingJobRequest = serde_json::from_value(json!({
        "TrainingJobName": "spot",
        "EnableManagedSpotTraining": true,
        "StoppingCondition": {"MaxRuntimeInSeconds": 100, "MaxWaitTimeInSeconds": 300},
        "RetryStrategy": {"MaximumRetryAttempts": 1}
    }))
    .expect("request");
    TrainingJob::new(request, None, &ArnContext::default(), at(0)).expect("job")
}

#[test]
fn an_interrupted_job_is_billed_for_the_time_it_trained_only() {
    let mut job = spot_job();
    job.transition(SecondaryStatus::Training, "Training", at(10)).expect("training");
    job.interrupt("capacity needed", at(40)).expect("interrupt");
    assert_eq!(job.status, TrainingJobStatus::InProgress, "an interrupted job waits to resume");
    assert_eq!(job.secondary_status, SecondaryStatus::Interrupted);
    assert_eq!((job.attempt, job.runs.interruptions, job.retries_spent()), (2, 1, 0), "no retry spent");
    assert!(job.placement.is_empty());
    assert_eq!(job.remaining_runtime_seconds(), Some(70), "30 s of its 100 s trained");

    job.transition(SecondaryStatus::Pending, "waiting", at(40)).expect("pending");
    job.transition(SecondaryStatus::Training, "Training", at(100)).expect("resumed");
    job.transition(SecondaryStatus::Completed, "done", at(150)).expect("completed");
    let described = job.describe();
    assert_eq!(described.training_time_in_seconds, Some(140), "wall clock since training first started");
    assert_eq!(described.billable_time_in_seconds, Some(80), "30 s + 50 s trained");
    assert_eq!(described.training_start_time, Some(at(10)));
}

#[test]
fn both_clocks_agree_for_a_job_never_interrupted_and_count_a_running_one() {
    let mut job = spot_job();
    job.transition(SecondaryStatus::Training, "Training", at(5)).expect("training");
    job.last_modified_time = at(8);
    let running = job.describe();
    assert_eq!((running.training_time_in_seconds, running.billable_time_in_seconds), (Some(3), Some(3)));
    job.transition(SecondaryStatus::Completed, "done", at(17)).expect("completed");
    let ended = job.describe();
    assert_eq!((ended.training_time_in_seconds, ended.billable_time_in_seconds), (Some(12), Some(12)));
    // Not yet trained: neither clock is shown.
    let fresh = spot_job().describe();
    assert_eq!((fresh.training_time_in_seconds, fresh.billable_time_in_seconds), (None, None));
}

#[test]
fn a_retry_after_interruptions_is_still_available() {
    let mut job = spot_job();
    for round in 0..3 {
        job.transition(SecondaryStatus::Training, "Training", at(10 * round)).expect("training");
        job.interrupt("capacity needed", at(10 * round + 5)).expect("interrupt");
    }
    assert_eq!((job.attempt, job.retries_spent()), (4, 0));
    job.attempt += 1; // what a retry does
    assert_eq!(job.retries_spent(), 1);
    assert_eq!(job.remaining_runtime_seconds(), Some(85));
}

#[test]
fn max_wait_counts_from_creation_and_only_for_spot_jobs() {
    let job = spot_job();
    assert!(!job.max_wait_exceeded(at(300)));
    assert!(job.max_wait_exceeded(at(301)));
    let mut on_demand = spot_job();
    on_demand.request.enable_managed_spot_training = None;
    assert!(!on_demand.max_wait_exceeded(at(10_000)));
}

/// A job created without MaxRuntimeInSeconds gets SageMaker's one-day default, shown by Describe
/// (where SageMaker always states a StoppingCondition); a spot job's MaxWaitTimeInSeconds bounds
/// it too; a limit given is kept.
#[test]
fn a_job_without_a_runtime_limit_gets_sagemakers_default() {
    let runtime = |request: serde_json::Value| {
        let request: CreateTrainingJobRequest = serde_json::from_value(request).expect("request");
        let job = TrainingJob::new(request, None, &ArnContext::default(), at(0)).expect("job");
        let described = job.describe();
        (described.stopping_condition.and_then(|s| s.max_runtime_in_seconds), job.remaining_runtime_seconds())
    };
    let default = trainyard_model::jobs::DEFAULT_MAX_RUNTIME_SECONDS;
    assert_eq!(default, 86_400);
    assert_eq!(runtime(json!({"TrainingJobName": "a"})), (Some(default), Some(default)));
    assert_eq!(runtime(json!({"TrainingJobName": "b", "StoppingCondition": {}})), (Some(default), Some(default)));
    assert_eq!(
        runtime(json!({"TrainingJobName": "c", "EnableManagedSpotTraining": true,
            "StoppingCondition": {"MaxWaitTimeInSeconds": 3600}})),
        (Some(3600), Some(3600))
    );
    assert_eq!(
        runtime(json!({"TrainingJobName": "d", "StoppingCondition": {"MaxRuntimeInSeconds": 600}})),
        (Some(600), Some(600))
    );
}
