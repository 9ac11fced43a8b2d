//! A SageMaker-compatible endpoint: AWS JSON 1.1 over HTTPS (`POST /`, `X-Amz-Target:
//! SageMaker.<Operation>`; plain HTTP only with `--insecure`), SigV4-signed with an access key issued
//! with an API token (`trainyard tokens create --access-key`) or configured (`[[access_keys]]`),
//! SageMaker's error shapes. Unchanged AWS clients (boto3 with `endpoint_url`, the AWS CLI with `--endpoint-url`)
//! talk to it. The operations are the coordinator's own (`core.rs`); this module only translates.
//! Beside SageMaker's operations, what the SageMaker Python SDK calls around a job, on the same
//! endpoint and signed the same way: CloudWatch Logs reads of a job's output (`logs.rs`), CloudWatch
//! metric statistics of a job's metrics (`cloudwatch.rs`) and STS `GetCallerIdentity` (`sts.rs`).

mod cloudwatch;
mod logs;
mod sts;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trainyard_model::DomainError;
use trainyard_proto::status::{classify, code_name};

use trainyard_model::access::Caller;

use crate::audit;
use crate::core::{Coordinator, now};
use crate::sigv4::{self, SigV4Error};

pub struct Endpoint {
    pub coordinator: Arc<Coordinator>,
    /// Configured access keys: id → secret and who it acts as (user and scope, as a token would).
    pub keys: BTreeMap<String, crate::config::ConfiguredKey>,
    /// Access keys issued with API tokens.
    pub auth: Arc<crate::auth::Auth>,
}

/// Serves on `listener` (bound at start-up, so that an address in use stops the coordinator) until
/// cancelled: TLS with `tls`, plain HTTP without.
pub async fn serve(
    endpoint: Endpoint,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(handle).with_state(Arc::new(endpoint));
    let address = listener.local_addr()?;
    info!(%address, tls = tls.is_some(), "SageMaker-compatible endpoint listening");
    crate::https::serve(listener, tls, app, cancel).await?;
    Ok(())
}

fn error(status: StatusCode, name: &str, message: impl Into<String>) -> Response {
    let body = json!({ "__type": name, "message": message.into() }).to_string();
    (status, [("content-type", "application/x-amz-json-1.1")], body).into_response()
}

fn domain_error(e: &DomainError) -> Response {
    let (_, name, status) = classify(e);
    error(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), name, e.to_string())
}

fn ok(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (StatusCode::OK, [("content-type", "application/x-amz-json-1.1")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", e.to_string()),
    }
}

/// The operations that change something (audited).
const MUTATING: [&str; 5] = [
    "CreateHyperParameterTuningJob",
    "StopHyperParameterTuningJob",
    "DeleteHyperParameterTuningJob",
    "CreateTrainingJob",
    "StopTrainingJob",
];

/// The job a request names, for the audit trail (whatever the body, valid or not).
fn resource_of(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ["TrainingJobName", "HyperParameterTuningJobName"]
        .iter()
        .find_map(|key| value.get(key).and_then(|v| v.as_str()))
        .unwrap_or_default()
        .chars()
        .take(256)
        .collect()
}

/// SageMaker's ListTags request (of the jobs served here: their tags fit one page).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTags {
    resource_arn: String,
}

/// The request body as the operation's input shape; the message says what does not fit.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

async fn handle(
    State(state): State<Arc<Endpoint>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lowered: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    // Calls that change something are recorded in the audit trail, refused ones too.
    let target = lowered.get("x-amz-target").and_then(|t| t.strip_prefix("SageMaker.")).unwrap_or_default().to_string();
    let audited = MUTATING.contains(&target.as_str());
    let resource = if audited { resource_of(&body) } else { String::new() };
    let audit = |who: Option<&Caller>, outcome: Result<(), (&str, &str)>| {
        if audited {
            audit::record(who, &target, &resource, outcome);
        }
    };
    let now_seconds = now().millis() / 1000;
    // The key's secret and who it acts as: a configured key, or one issued with an API token.
    let key_id = sigv4::access_key_id(&lowered).unwrap_or_default();
    let (keys, caller): (BTreeMap<String, String>, Option<Caller>) = match state.keys.get(&key_id) {
        Some(k) => (BTreeMap::from([(key_id.clone(), k.secret.clone())]), Some(k.caller.clone())),
        None => match state.auth.access_key(&key_id).await {
            Ok(Some((secret, caller))) => (BTreeMap::from([(key_id.clone(), secret)]), Some(caller)),
            Ok(None) => (BTreeMap::new(), None),
            Err(e) => return domain_error(&e),
        },
    };
    let verified = sigv4::verify(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or_default(),
        &lowered,
        &body,
        &keys,
        now_seconds,
    );
    let key = match verified {
        Ok(key) => key,
        Err(e) => {
            warn!(error = %e, "refused an unauthenticated SageMaker request");
            let name = match e {
                SigV4Error::Missing => "MissingAuthenticationTokenException",
                SigV4Error::UnknownKey(_) => "UnrecognizedClientException",
                SigV4Error::Skewed(_) => "InvalidSignatureException",
                SigV4Error::BadSignature | SigV4Error::Malformed(_) | SigV4Error::PayloadMismatch(_) => {
                    "InvalidSignatureException"
                }
            };
            audit(None, Err(("Unauthenticated", &format!("{name}: {e}"))));
            return error(StatusCode::FORBIDDEN, name, e.to_string());
        }
    };
    let Some(caller) = caller.as_ref() else {
        let message = format!("access key {key} is not configured");
        audit(None, Err(("Unauthenticated", &format!("UnrecognizedClientException: {message}"))));
        return error(StatusCode::FORBIDDEN, "UnrecognizedClientException", message);
    };
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UnknownOperationException", "use POST /");
    }
    let c = &state.coordinator;
    if let Some(operation) = lowered.get("x-amz-target").and_then(|t| t.strip_prefix("Logs_20140328.")) {
        debug!(operation, "CloudWatch Logs request");
        return logs::handle(c, caller, operation, &body).await;
    }
    if let Some(operation) = lowered.get("x-amz-target").and_then(|t| t.strip_prefix("GraniteServiceVersion20100801."))
    {
        debug!(operation, "CloudWatch request");
        return cloudwatch::handle(c, caller, operation, &body).await;
    }
    if sts::is_sts(lowered.get("content-type").map(String::as_str).unwrap_or_default(), &body) {
        debug!("STS request");
        return sts::handle(&c.arns, caller, &body);
    }
    let Some(operation) = lowered.get("x-amz-target").and_then(|t| t.strip_prefix("SageMaker.")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "X-Amz-Target must be SageMaker.<Operation>",
        );
    };
    debug!(operation, "SageMaker request");
    // Parse, call, answer `answer(response)`; calls that change something are audited.
    macro_rules! call {
        ($method:ident) => {
            call!($method, |response| response)
        };
        ($method:ident, $answer:expr) => {
            match parse(&body) {
                Ok(request) => match c.$method(caller, request).await {
                    Ok(response) => {
                        audit(Some(caller), Ok(()));
                        ok(&($answer)(response))
                    }
                    Err(e) => {
                        // The audit trail names outcomes as the gRPC API does, whichever door the
                        // call came through; the SageMaker error's name is in the message.
                        let (code, aws_name, _) = classify(&e);
                        audit(Some(caller), Err((code_name(code), &format!("{aws_name}: {e}"))));
                        domain_error(&e)
                    }
                },
                Err(message) => {
                    audit(Some(caller), Err(("InvalidArgument", &format!("SerializationException: {message}"))));
                    error(StatusCode::BAD_REQUEST, "SerializationException", message)
                }
            }
        };
    }
    match operation {
        "CreateHyperParameterTuningJob" => call!(create_tuning_job),
        "DescribeHyperParameterTuningJob" => call!(describe_tuning_job),
        "ListHyperParameterTuningJobs" => call!(list_tuning_jobs),
        "StopHyperParameterTuningJob" => call!(stop_tuning_job, |()| json!({})),
        "DeleteHyperParameterTuningJob" => call!(delete_tuning_job, |()| json!({})),
        "ListTrainingJobsForHyperParameterTuningJob" => call!(list_trials),
        "CreateTrainingJob" => call!(create_training_job),
        "DescribeTrainingJob" => call!(describe_training_job),
        "ListTrainingJobs" => call!(list_training_jobs),
        "StopTrainingJob" => call!(stop_training_job, |()| json!({})),
        "ListTags" => match parse::<ListTags>(&body) {
            Ok(request) => match c.tags_of(caller, &request.resource_arn).await {
                // Every tag in one page: a job has at most 50.
                Ok(tags) => ok(&json!({ "Tags": tags })),
                Err(e) => domain_error(&e),
            },
            Err(message) => error(StatusCode::BAD_REQUEST, "SerializationException", message),
        },
        other => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("{other} is not an operation Trainyard serves"),
        ),
    }
}
