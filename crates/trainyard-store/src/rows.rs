//! Rows to domain records and back. Domain types know nothing of SQL; this is the only place that
//! knows which column holds what.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use trainyard_model::api;
use trainyard_model::jobs::{PlacedInstance, Runs, TrainingJob, Transition, TrialOrigin, TuningJob};
use trainyard_model::timestamp::Timestamp;

use crate::{AgentIdentity, StoreError, TokenRecord, Versioned};

pub(crate) const TUNING_COLUMNS: &str = "name, arn, status, strategy, creation_time, last_modified_time, end_time, failure_reason, request, version, details, owner";

pub(crate) const TRAINING_COLUMNS: &str = "name, arn, tuning_job_name, status, secondary_status, objective_status, \
     objective_value, creation_time, last_modified_time, training_start_time, training_end_time, failure_reason, \
     request, details, version, owner";

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
    #[serde(default)]
    pub runs: Runs,
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
            runs: job.runs.clone(),
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
            owner: row.try_get("owner")?,
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
            owner: row.try_get("owner")?,
            origin: details.origin,
            final_metrics: details.final_metrics,
            objective_value: row.try_get("objective_value")?,
            objective_status: objective_status.map(|s| parse(&name, &s)).transpose()?,
            model_artifacts: details.model_artifacts,
            placement: details.placement,
            attempt: details.attempt,
            runs: details.runs,
            name,
        },
    })
}

pub(crate) const TOKEN_COLUMNS: &str = "id, kind, secret_sha256, user_name, scope, description, created_at, expires_at, revoked_at, access_key_id, \
     access_key_sealed, uses_allowed, uses, agent_id";

pub(crate) fn token(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let scope: String = row.try_get("scope")?;
    Ok(TokenRecord {
        kind: parse(&id, &kind)?,
        scope: if scope.is_empty() { None } else { Some(parse(&id, &scope)?) },
        secret_sha256: row.try_get("secret_sha256")?,
        user: row.try_get("user_name")?,
        description: row.try_get("description")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        expires_at: ts(row.try_get("expires_at")?),
        revoked_at: ts(row.try_get("revoked_at")?),
        access_key_id: row.try_get("access_key_id")?,
        access_key_sealed: row.try_get("access_key_sealed")?,
        uses_allowed: row.try_get("uses_allowed")?,
        uses: row.try_get("uses")?,
        agent_id: row.try_get("agent_id")?,
        id,
    })
}

pub(crate) fn agent_identity(row: &AnyRow) -> Result<AgentIdentity, StoreError> {
    Ok(AgentIdentity {
        agent_id: row.try_get("agent_id")?,
        certificate_sha256: row.try_get("certificate_sha256")?,
        join_token_id: row.try_get("join_token_id")?,
        joined_at: Timestamp::from_millis(row.try_get("joined_at")?),
        revoked_at: ts(row.try_get("revoked_at")?),
    })
}
