//! The event loop: the one place that decides what happens to jobs after the API accepted a change.
//! API handlers persist intent (a new job, a stop request) and send an [`Event`]; the loop makes the
//! follow-up transitions and persists each before acting on it. At start-up it reconciles: every
//! job left mid-way by a previous run is driven on from its stored state.
//!
//! Until agents exist (the agents issue), there is nothing to place jobs on: new training jobs wait
//! as `Pending`, and a stop ends them at once, since nothing is running.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trainyard_model::DomainError;
use trainyard_model::status::{SecondaryStatus, TrainingJobStatus, TuningJobStatus};

use crate::core::{Coordinator, now};

/// Everything the loop reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TuningJobCreated(String),
    TrainingJobCreated(String),
    TuningJobStopRequested(String),
    TrainingJobStopRequested(String),
}

pub const PENDING_MESSAGE: &str = "Waiting for an agent: no agent that can run this job has registered";

pub async fn run(coordinator: Arc<Coordinator>, mut events: mpsc::UnboundedReceiver<Event>, cancel: CancellationToken) {
    if let Err(e) = reconcile(&coordinator).await {
        warn!(error = %e, "start-up reconciliation incomplete; it runs again at the next start");
    }
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        debug!(?event, "event");
        if let Err(e) = handle(&coordinator, &event).await {
            warn!(?event, error = %e, "event not handled; the job is reconciled at the next start");
        }
    }
    info!("event loop stopped");
}

async fn handle(c: &Coordinator, event: &Event) -> Result<(), DomainError> {
    match event {
        Event::TuningJobCreated(_) => Ok(()),
        Event::TrainingJobCreated(name) => queue(c, name).await,
        Event::TrainingJobStopRequested(name) => finish_stop(c, name).await,
        Event::TuningJobStopRequested(name) => stop_tuning_job(c, name).await,
    }
}

/// A new training job waits for capacity.
async fn queue(c: &Coordinator, name: &str) -> Result<(), DomainError> {
    c.update_training_job(name, |job| {
        if job.secondary_status != SecondaryStatus::Starting {
            return Ok(false);
        }
        job.transition(SecondaryStatus::Pending, PENDING_MESSAGE, now())?;
        Ok(true)
    })
    .await?;
    Ok(())
}

/// A stopping training job with nothing running ends `Stopped`.
async fn finish_stop(c: &Coordinator, name: &str) -> Result<(), DomainError> {
    let stopped = c
        .update_training_job(name, |job| {
            if job.status != TrainingJobStatus::Stopping {
                return Ok(false);
            }
            job.transition(SecondaryStatus::Stopped, "The job was stopped before an agent started it", now())?;
            Ok(true)
        })
        .await?;
    if stopped {
        info!(training_job = %name, "training job stopped");
    }
    Ok(())
}

/// Stops every trial of the tuning job, then the tuning job itself.
async fn stop_tuning_job(c: &Coordinator, name: &str) -> Result<(), DomainError> {
    for trial in c.active_trials(name).await? {
        c.update_training_job(&trial, |job| job.request_stop(now())).await?;
        finish_stop(c, &trial).await?;
    }
    let stopped = c
        .update_tuning_job(name, |job| {
            if job.status != TuningJobStatus::Stopping {
                return Ok(false);
            }
            job.transition(TuningJobStatus::Stopped, now())?;
            Ok(true)
        })
        .await?;
    if stopped {
        info!(tuning_job = %name, "tuning job stopped");
    }
    Ok(())
}

/// Drives every unfinished job on from its stored state (after a restart or a crash).
async fn reconcile(c: &Coordinator) -> Result<(), DomainError> {
    let training = c.store.active_training_jobs(None).await?;
    let tuning = c.store.active_tuning_jobs().await?;
    info!(training_jobs = training.len(), tuning_jobs = tuning.len(), "reconciling unfinished jobs");
    for t in training {
        match (t.value.status, t.value.secondary_status) {
            (TrainingJobStatus::Stopping, _) => finish_stop(c, &t.value.name).await?,
            (_, SecondaryStatus::Starting) => queue(c, &t.value.name).await?,
            _ => {}
        }
    }
    for t in tuning {
        if t.value.status == TuningJobStatus::Stopping {
            stop_tuning_job(c, &t.value.name).await?;
        }
    }
    Ok(())
}
