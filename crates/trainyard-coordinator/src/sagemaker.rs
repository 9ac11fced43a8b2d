//! A SageMaker-compatible endpoint: AWS JSON 1.1 over HTTP (`POST /`, `X-Amz-Target:
//! SageMaker.<Operation>`), SigV4-signed with access keys from the configuration, SageMaker's error
//! shapes. Unchanged AWS clients (boto3 with `endpoint_url`, the AWS CLI with `--endpoint-url`)
//! talk to it. The operations are the coordinator's own (`core.rs`); this module only translates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
use trainyard_proto::status::classify;

use crate::core::{Coordinator, now};
use crate::sigv4::{self, SigV4Error};

pub struct Endpoint {
    pub coordinator: Arc<Coordinator>,
    /// Access key id → secret.
    pub keys: BTreeMap<String, String>,
    /// Who each key acts as (user and scope), as an API token would.
    pub callers: BTreeMap<String, trainyard_model::access::Caller>,
}

pub async fn serve(endpoint: Endpoint, address: SocketAddr, cancel: CancellationToken) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(handle).with_state(Arc::new(endpoint));
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(%address, "SageMaker-compatible endpoint listening");
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await?;
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
    let now_seconds = now().millis() / 1000;
    let verified = sigv4::verify(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or_default(),
        &lowered,
        &body,
        &state.keys,
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
                SigV4Error::BadSignature | SigV4Error::Malformed(_) => "InvalidSignatureException",
            };
            return error(StatusCode::FORBIDDEN, name, e.to_string());
        }
    };
    let Some(caller) = state.callers.get(&key) else {
        return error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            format!("access key {key} is not configured"),
        );
    };
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UnknownOperationException", "use POST /");
    }
    let Some(operation) = lowered.get("x-amz-target").and_then(|t| t.strip_prefix("SageMaker.")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "X-Amz-Target must be SageMaker.<Operation>",
        );
    };
    debug!(operation, "SageMaker request");
    let c = &state.coordinator;
    macro_rules! call {
        ($method:ident) => {
            match parse(&body) {
                Ok(request) => match c.$method(caller, request).await {
                    Ok(response) => ok(&response),
                    Err(e) => domain_error(&e),
                },
                Err(message) => error(StatusCode::BAD_REQUEST, "SerializationException", message),
            }
        };
        ($method:ident, empty) => {
            match parse(&body) {
                Ok(request) => match c.$method(caller, request).await {
                    Ok(()) => ok(&json!({})),
                    Err(e) => domain_error(&e),
                },
                Err(message) => error(StatusCode::BAD_REQUEST, "SerializationException", message),
            }
        };
    }
    match operation {
        "CreateHyperParameterTuningJob" => call!(create_tuning_job),
        "DescribeHyperParameterTuningJob" => call!(describe_tuning_job),
        "ListHyperParameterTuningJobs" => call!(list_tuning_jobs),
        "StopHyperParameterTuningJob" => call!(stop_tuning_job, empty),
        "ListTrainingJobsForHyperParameterTuningJob" => call!(list_trials),
        "CreateTrainingJob" => call!(create_training_job),
        "DescribeTrainingJob" => call!(describe_training_job),
        "ListTrainingJobs" => call!(list_training_jobs),
        "StopTrainingJob" => call!(stop_training_job, empty),
        other => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("{other} is not an operation Trainyard serves"),
        ),
    }
}
