//! Rows to domain records and back. Domain types know nothing of SQL; this is the only place that
//! knows which column holds what.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use trainyard_model::api;
use trainyard_model::jobs::{PlacedInstance, TrainingJob, Transition, TrialOrigin, TuningJob};
use trainyard_model::timestamp::Timestamp;

use crate::{StoreError, Versioned};

pub(crate) const TUNING_COLUMNS: &str = "name, arn, status, strategy, creation_time, last_modified_time, end_time, failure_reason, request, version, details";

pub(crate) const TRAINING_COLUMNS: &str = "name, arn, tuning_job_name, status, secondary_status, objective_status, \
     objective_value, creation_time, last_modified_time, training_start_time, training_end_time, failure_reason, \
     request, details, version";

/// The parts of a training job that no query filters on, stored as one JSON document.
#[derive(Serialize, Deserialize)]
pub(crate) struct TrainingDetails {
    pub transitions: Vec<Transition>,
    pub origin: Option<TrialOrigin>,
    #[serde(default)]
    pub final_metrics: Vec<api::MetricData>,
    #[serde(default)]
    pub model_artifacts: Option<String>,
    #[serde(default)]
    pub placement: Vec<PlacedInstance>,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

impl TrainingDetails {
    pub fn of(job: &TrainingJob) -> Self {
        Self {
            transitions: job.transitions.clone(),
            origin: job.origin.clone(),
            final_metrics: job.final_metrics.clone(),
            model_artifacts: job.model_artifacts.clone(),
            placement: job.placement.clone(),
            attempt: job.attempt,
        }
    }
}

fn corrupt(name: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt { name: name.to_string(), reason: reason.to_string() }
}

fn parse<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    raw.parse().map_err(|e: T::Err| corrupt(name, e))
}

fn ts(millis: Option<i64>) -> Option<Timestamp> {
    millis.map(Timestamp::from_millis)
}

pub(crate) fn tuning_job(row: &AnyRow) -> Result<Versioned<TuningJob>, StoreError> {
    let name: String = row.try_get("name")?;
    let request: String = row.try_get("request")?;
    let status: String = row.try_get("status")?;
    let details: Option<String> = row.try_get("details")?;
    Ok(Versioned {
        version: row.try_get("version")?,
        value: TuningJob {
            arn: row.try_get("arn")?,
            status: parse(&name, &status)?,
            creation_time: Timestamp::from_millis(row.try_get("creation_time")?),
            last_modified_time: Timestamp::from_millis(row.try_get("last_modified_time")?),
            end_time: ts(row.try_get("end_time")?),
            failure_reason: row.try_get("failure_reason")?,
            request: serde_json::from_str(&request).map_err(|e| corrupt(&name, e))?,
            completion: details.map(|d| serde_json::from_str(&d)).transpose().map_err(|e| corrupt(&name, e))?,
            name,
        },
    })
}

pub(crate) fn training_job(row: &AnyRow) -> Result<Versioned<TrainingJob>, StoreError> {
    let name: String = row.try_get("name")?;
    let request: String = row.try_get("request")?;
    let details: String = row.try_get("details")?;
    let details: TrainingDetails = serde_json::from_str(&details).map_err(|e| corrupt(&name, e))?;
    let status: String = row.try_get("status")?;
    let secondary: String = row.try_get("secondary_status")?;
    let objective_status: Option<String> = row.try_get("objective_status")?;
    Ok(Versioned {
        version: row.try_get("version")?,
        value: TrainingJob {
            arn: row.try_get("arn")?,
            status: parse(&name, &status)?,
            secondary_status: parse(&name, &secondary)?,
            transitions: details.transitions,
            creation_time: Timestamp::from_millis(row.try_get("creation_time")?),
            last_modified_time: Timestamp::from_millis(row.try_get("last_modified_time")?),
            training_start_time: ts(row.try_get("training_start_time")?),
            training_end_time: ts(row.try_get("training_end_time")?),
            failure_reason: row.try_get("failure_reason")?,
            request: serde_json::from_str(&request).map_err(|e| corrupt(&name, e))?,
            origin: details.origin,
            final_metrics: details.final_metrics,
            objective_value: row.try_get("objective_value")?,
            objective_status: objective_status.map(|s| parse(&name, &s)).transpose()?,
            model_artifacts: details.model_artifacts,
            placement: details.placement,
            attempt: details.attempt,
            name,
        },
    })
}
