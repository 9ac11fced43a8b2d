//! CloudWatch Logs reads of training jobs' output, as the SageMaker Python SDK makes them
//! (`Estimator.fit(logs=...)`, `attach(...).logs()`): the log group `/aws/sagemaker/TrainingJobs`,
//! one stream per instance named as SageMaker names them, `<job>/algo-<n>-<creation time>`.
//! AWS JSON 1.1 (`X-Amz-Target: Logs_20140328.<Operation>`), on the SageMaker endpoint, signed the
//! same way; a job another user owns does not exist, as everywhere.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use trainyard_model::access::Caller;
use trainyard_model::{DomainError, Timestamp, api};

use super::{domain_error, error, ok};
use crate::core::{Coordinator, StreamRead};

/// The one log group: SageMaker's, for training jobs.
pub const LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";

/// CloudWatch's limits on one GetLogEvents answer.
const MAX_EVENTS: u32 = 10_000;
const MAX_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeLogStreams {
    log_group_name: Option<String>,
    log_stream_name_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetLogEvents {
    log_group_name: Option<String>,
    log_stream_name: String,
    start_time: Option<i64>,
    end_time: Option<i64>,
    next_token: Option<String>,
    limit: Option<u32>,
}

pub async fn handle(c: &Coordinator, caller: &Caller, operation: &str, body: &[u8]) -> Response {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    match operation {
        "DescribeLogStreams" => match serde_json::from_slice(body) {
            Ok(request) => describe_log_streams(c, caller, request).await,
            Err(e) => error(StatusCode::BAD_REQUEST, "SerializationException", e.to_string()),
        },
        "GetLogEvents" => match serde_json::from_slice(body) {
            Ok(request) => get_log_events(c, caller, request).await,
            Err(e) => error(StatusCode::BAD_REQUEST, "SerializationException", e.to_string()),
        },
        other => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("{other} is not a CloudWatch Logs operation Trainyard serves (DescribeLogStreams, GetLogEvents)"),
        ),
    }
}

fn no_such_group(name: &str) -> Option<Response> {
    (name != LOG_GROUP).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            format!("The specified log group does not exist: only {LOG_GROUP} is served here"),
        )
    })
}

/// The job a stream name or prefix names (what comes before its first `/`), and the instance
/// (`algo-<n>`, with or without SageMaker's `-<time>` after it), if it names one.
fn parse_stream(name: &str) -> (&str, Option<u32>) {
    let Some((job, rest)) = name.split_once('/') else { return (name, None) };
    let instance = rest.strip_prefix("algo-").and_then(|n| n.split('-').next()).and_then(|n| n.parse().ok());
    (job, instance)
}

async fn describe(
    c: &Coordinator,
    caller: &Caller,
    job: &str,
) -> Result<api::DescribeTrainingJobResponse, DomainError> {
    let request = api::DescribeTrainingJobRequest { training_job_name: Some(job.to_string()) };
    c.describe_training_job(caller, request).await
}

fn stream_name(job: &str, instance: u32, created: Timestamp) -> String {
    format!("{job}/algo-{instance}-{}", created.millis() / 1000)
}

async fn describe_log_streams(c: &Coordinator, caller: &Caller, r: DescribeLogStreams) -> Response {
    if let Some(refused) = no_such_group(r.log_group_name.as_deref().unwrap_or_default()) {
        return refused;
    }
    let Some(prefix) = r.log_stream_name_prefix.filter(|p| !p.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "logStreamNamePrefix must name a training job (`<job>/`): streams are listed one job at a time here",
        );
    };
    let (job, _) = parse_stream(&prefix);
    let described = match describe(c, caller, job).await {
        Ok(d) => d,
        // No job of that name (or not the caller's): no stream has the prefix.
        Err(DomainError::NotFound { .. }) => return ok(&json!({ "logStreams": [] })),
        Err(e) => return domain_error(&e),
    };
    let created = described.creation_time.unwrap_or_default();
    let count = described.resource_config.and_then(|r| r.instance_count).unwrap_or(1).max(1) as u32;
    let streams: Vec<serde_json::Value> = (1..=count)
        .map(|n| stream_name(job, n, created))
        .filter(|name| name.starts_with(&prefix))
        .map(|name| json!({ "logStreamName": name, "creationTime": created.millis(), "storedBytes": 0 }))
        .collect();
    // Every stream of a job fits in one answer: no nextToken (the SDK would ask again forever).
    ok(&json!({ "logStreams": streams }))
}

async fn get_log_events(c: &Coordinator, caller: &Caller, r: GetLogEvents) -> Response {
    if let Some(refused) = no_such_group(r.log_group_name.as_deref().unwrap_or_default()) {
        return refused;
    }
    let (job, instance) = parse_stream(&r.log_stream_name);
    let Some(instance) = instance else {
        return error(StatusCode::BAD_REQUEST, "ResourceNotFoundException", "The specified log stream does not exist.");
    };
    // Forward tokens are `f/<sequence>`: where the previous answer ended.
    let after = match r.next_token.as_deref() {
        None => 0,
        Some(token) => match token.strip_prefix("f/").and_then(|n| n.parse::<i64>().ok()) {
            Some(seq) => seq,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterException",
                    "nextToken: not a forward token of this stream (reading backwards is not served)",
                );
            }
        },
    };
    let limit = r.limit.unwrap_or(MAX_EVENTS);
    if limit == 0 || limit > MAX_EVENTS {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            format!("limit: must be between 1 and {MAX_EVENTS} (got {limit})"),
        );
    }
    let from = Timestamp::from_millis(r.start_time.unwrap_or(0));
    let read = StreamRead { instance, from, after, limit, max_bytes: MAX_BYTES };
    let lines = match c.read_instance_logs(caller, job, read).await {
        Ok(lines) => lines,
        Err(DomainError::NotFound { .. }) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ResourceNotFoundException",
                "The specified log stream does not exist.",
            );
        }
        Err(e) => return domain_error(&e),
    };
    let end = r.end_time.unwrap_or(i64::MAX);
    let last = lines.last().map_or(after, |l| l.seq);
    let first = lines.first().map_or(after, |l| l.seq);
    let events: Vec<serde_json::Value> = lines
        .into_iter()
        .filter(|l| l.timestamp.millis() < end)
        .map(|l| json!({ "timestamp": l.timestamp.millis(), "message": l.text, "ingestionTime": l.timestamp.millis() }))
        .collect();
    ok(&json!({
        "events": events,
        "nextForwardToken": format!("f/{last}"),
        "nextBackwardToken": format!("b/{first}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_sagemakers_and_parse_back() {
        let name = stream_name("my-job", 2, Timestamp::from_millis(1_700_000_000_999));
        assert_eq!(name, "my-job/algo-2-1700000000");
        assert_eq!(parse_stream(&name), ("my-job", Some(2)));
        assert_eq!(parse_stream("my-job/algo-12"), ("my-job", Some(12)));
        assert_eq!(parse_stream("my-job/"), ("my-job", None));
        assert_eq!(parse_stream("my-job"), ("my-job", None));
        assert_eq!(parse_stream("my-job/other-1"), ("my-job", None));
    }
}
