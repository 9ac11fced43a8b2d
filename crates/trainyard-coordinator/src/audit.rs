//! The audit trail: every call that changes something (jobs created and stopped, tokens, agents
//! revoked, cordoned or drained), over gRPC or the SageMaker endpoint, is logged once when it is
//! answered: who (user and scope; `-` when the credentials were refused), what (operation and the
//! job, token or agent it names) and how it ended (`ok`, or the error's gRPC status name and its
//! message: one vocabulary for both doors). One INFO line on the `audit` target; with
//! `--log-format json`, one JSON object per call.

use tonic::Status;
use trainyard_model::access::Caller;
use trainyard_proto::status::code_name;

/// Records one call that changes something. `who`: None when the caller could not be established;
/// `outcome`: the error's name and message.
pub fn record(who: Option<&Caller>, operation: &str, resource: &str, outcome: Result<(), (&str, &str)>) {
    let (user, scope) = match who {
        Some(caller) if caller.user.is_empty() => ("-".to_string(), caller.scope.to_string()),
        Some(caller) => (caller.user.clone(), caller.scope.to_string()),
        None => ("-".to_string(), "-".to_string()),
    };
    match outcome {
        Ok(()) => tracing::info!(target: "audit", %user, %scope, operation, resource, outcome = "ok", "audit"),
        Err((name, message)) => {
            tracing::info!(target: "audit", %user, %scope, operation, resource, outcome = name, error = message, "audit")
        }
    }
}

/// A gRPC answer as an outcome.
pub fn of<T>(answer: &Result<T, Status>) -> Result<(), (&'static str, &str)> {
    answer.as_ref().map(|_| ()).map_err(|status| (code_name(status.code()), status.message()))
}

/// A refusal as an outcome.
pub fn refused(status: &Status) -> Result<(), (&'static str, &str)> {
    Err((code_name(status.code()), status.message()))
}
