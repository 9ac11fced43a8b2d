//! Retention: what ended long enough ago leaves the store, so that it does not grow for ever.
//! Ended jobs (a tuning job with its trials; a training job of no tuning job), with their logs and
//! metric samples, after `--job-retention` (default 90 days, as long as SageMaker lists them); the
//! logs and metric samples of ended jobs after `--log-retention` (default: the same). A background
//! task deletes in bounded batches (each job in a transaction of its own), at start and then every
//! quarter of the shorter period (at most hourly).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trainyard_model::timestamp::Timestamp;
use trainyard_store::Store;

use crate::core::now;

/// Jobs per batch: one batch is a few statements per job, well under a second.
const JOB_BATCH: u32 = 100;
const LOG_BATCH: u32 = 500;

pub async fn run(store: Arc<dyn Store>, jobs: Option<Duration>, logs: Option<Duration>, cancel: CancellationToken) {
    let Some(shortest) = [jobs, logs].into_iter().flatten().min() else { return };
    let every = (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        prune_once(store.as_ref(), jobs, logs).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn before(age: Duration) -> Timestamp {
    Timestamp::from_millis(now().millis().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

async fn prune_once(store: &dyn Store, jobs: Option<Duration>, logs: Option<Duration>) {
    let mut logs_of = 0u64;
    if let Some(age) = logs {
        loop {
            match store.prune_logs(before(age), LOG_BATCH).await {
                Ok(n) => {
                    logs_of += n;
                    if n < u64::from(LOG_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "pruning old logs failed; retrying later");
                    break;
                }
            }
        }
    }
    let (mut tuning, mut training) = (0u64, 0u64);
    if let Some(age) = jobs {
        loop {
            match store.prune_ended_jobs(before(age), JOB_BATCH).await {
                Ok((t, j)) => {
                    tuning += t;
                    training += j;
                    if t < u64::from(JOB_BATCH) && j < u64::from(JOB_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "pruning old jobs failed; retrying later");
                    break;
                }
            }
        }
    }
    if logs_of + tuning + training > 0 {
        info!(
            tuning_jobs = tuning,
            training_jobs = training,
            logs_of_jobs = logs_of,
            "retention: deleted what ended long ago"
        );
    }
}
