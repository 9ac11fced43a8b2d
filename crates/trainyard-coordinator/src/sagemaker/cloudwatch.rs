//! CloudWatch `GetMetricStatistics` over training jobs' stored metric samples, as the SageMaker
//! Python SDK's `TrainingJobAnalytics` asks for them: namespace `/aws/sagemaker/TrainingJobs`,
//! dimension `TrainingJobName`, a metric of its MetricDefinitions. AWS JSON 1.0
//! (`X-Amz-Target: GraniteServiceVersion20100801.<Operation>`, what botocore sends), on the
//! SageMaker endpoint, signed the same way; a job another user owns has no metrics.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use trainyard_model::DomainError;
use trainyard_model::access::Caller;
use trainyard_model::metrics::{MAX_PAGE_SAMPLES, datapoints};

use crate::core::Coordinator;

pub const NAMESPACE: &str = "/aws/sagemaker/TrainingJobs";

/// CloudWatch's limit on the datapoints of one answer.
const MAX_DATAPOINTS: u64 = 1_440;

/// Samples are stored at one per second: finer periods would say nothing more.
const SUB_MINUTE_PERIODS: [u32; 4] = [1, 5, 10, 30];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetMetricStatistics {
    namespace: String,
    metric_name: String,
    #[serde(default)]
    dimensions: Vec<Dimension>,
    /// Epoch seconds (JSON 1.0 timestamps).
    start_time: f64,
    end_time: f64,
    period: u32,
    #[serde(default)]
    statistics: Vec<String>,
    #[serde(default)]
    extended_statistics: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Dimension {
    name: String,
    value: String,
}

fn error(name: &str, message: impl Into<String>) -> Response {
    let body = json!({ "__type": name, "message": message.into() }).to_string();
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.0"), ("x-amzn-query-error", &format!("{name};Sender"))],
        body,
    )
        .into_response()
}

pub async fn handle(c: &Coordinator, caller: &Caller, operation: &str, body: &[u8]) -> Response {
    if operation != "GetMetricStatistics" {
        return error(
            "InvalidAction",
            format!("{operation} is not a CloudWatch operation Trainyard serves (GetMetricStatistics)"),
        );
    }
    let request: GetMetricStatistics = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error("InvalidParameterValue", e.to_string()),
    };
    match statistics(c, caller, request).await {
        Ok(answer) => {
            (StatusCode::OK, [("content-type", "application/x-amz-json-1.0")], answer.to_string()).into_response()
        }
        Err((name, message)) => error(name, message),
    }
}

async fn statistics(
    c: &Coordinator,
    caller: &Caller,
    r: GetMetricStatistics,
) -> Result<serde_json::Value, (&'static str, String)> {
    const KNOWN: [&str; 5] = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"];
    if !r.extended_statistics.is_empty() {
        return Err(("InvalidParameterValue", "ExtendedStatistics (percentiles) are not served here".into()));
    }
    if r.statistics.is_empty() {
        return Err((
            "MissingParameter",
            "Statistics: at least one of SampleCount, Average, Sum, Minimum, Maximum".into(),
        ));
    }
    if let Some(unknown) = r.statistics.iter().find(|s| !KNOWN.contains(&s.as_str())) {
        return Err(("InvalidParameterValue", format!("Statistics: {unknown} is not one of {}", KNOWN.join(", "))));
    }
    if r.period == 0 || (!r.period.is_multiple_of(60) && !SUB_MINUTE_PERIODS.contains(&r.period)) {
        return Err((
            "InvalidParameterValue",
            format!("Period: must be 1, 5, 10, 30 or a multiple of 60 (got {})", r.period),
        ));
    }
    let (start, end) = ((r.start_time * 1000.0) as i64, (r.end_time * 1000.0) as i64);
    if start >= end {
        return Err(("InvalidParameterValue", "StartTime: must be before EndTime".into()));
    }
    let wanted = ((end - start) as u64).div_ceil(u64::from(r.period) * 1000);
    if wanted > MAX_DATAPOINTS {
        return Err((
            "InvalidParameterCombination",
            format!("You have requested up to {wanted} datapoints, which exceeds the limit of {MAX_DATAPOINTS}"),
        ));
    }
    let job = r.dimensions.iter().find(|d| d.name == "TrainingJobName").map(|d| d.value.as_str());
    let answer = |points: Vec<serde_json::Value>| json!({ "Label": r.metric_name, "Datapoints": points });
    // Another namespace, or no job named: no such metric, so no datapoints (as CloudWatch answers).
    let Some(job) = job.filter(|_| r.namespace == NAMESPACE) else { return Ok(answer(Vec::new())) };
    let mut samples = Vec::new();
    let mut token = String::new();
    loop {
        let page = c.read_metrics(caller, job, &r.metric_name, &token, MAX_PAGE_SAMPLES).await;
        let (page, next, _) = match page {
            Ok(page) => page,
            Err(DomainError::NotFound { .. }) => return Ok(answer(Vec::new())),
            Err(DomainError::Validation(v)) => {
                return Err(("InvalidParameterValue", DomainError::Validation(v).to_string()));
            }
            Err(e) => return Err(("InternalServiceError", e.to_string())),
        };
        samples.extend(page.into_iter().map(|s| (s.timestamp.millis(), s.value)));
        match next {
            Some(next) => token = next,
            None => break,
        }
    }
    let points = datapoints(samples, start, end, r.period)
        .into_iter()
        .map(|d| {
            let mut point = serde_json::Map::new();
            point.insert("Timestamp".into(), json!(d.start_millis as f64 / 1000.0));
            for statistic in &r.statistics {
                let value = match statistic.as_str() {
                    "SampleCount" => f64::from(d.count),
                    "Average" => d.average(),
                    "Sum" => d.sum,
                    "Minimum" => d.minimum,
                    _ => d.maximum,
                };
                point.insert(statistic.clone(), json!(value));
            }
            point.insert("Unit".into(), json!("None"));
            serde_json::Value::Object(point)
        })
        .collect();
    Ok(answer(points))
}
