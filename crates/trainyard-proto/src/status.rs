//! The one place where domain errors become gRPC statuses, and where clients read them back.
//!
//! | domain error     | gRPC code          | SageMaker error          | HTTP |
//! |------------------|--------------------|--------------------------|------|
//! | Validation       | INVALID_ARGUMENT   | ValidationException      | 400  |
//! | AlreadyExists    | ALREADY_EXISTS     | ResourceInUse            | 400  |
//! | NotFound         | NOT_FOUND          | ResourceNotFound         | 400  |
//! | LimitExceeded    | RESOURCE_EXHAUSTED | ResourceLimitExceeded    | 400  |
//! | Unauthenticated  | UNAUTHENTICATED    | UnrecognizedClientException | 403 |
//! | PermissionDenied | PERMISSION_DENIED  | AccessDeniedException    | 403  |
//! | Unavailable      | UNAVAILABLE        | ServiceUnavailable       | 503  |
//! | Internal         | INTERNAL           | InternalFailure          | 500  |
//!
//! Every violation of an invalid request travels as a `google.rpc.BadRequest` field violation, so
//! clients can list them one by one; the SageMaker error name travels as `google.rpc.ErrorInfo`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use trainyard_model::{DomainError, Violation};

/// The domain of the `ErrorInfo` detail.
pub const ERROR_DOMAIN: &str = "trainyard.dev";

/// The gRPC code, the SageMaker error name and the HTTP status of a domain error: the table above.
pub fn classify(error: &DomainError) -> (Code, &'static str, u16) {
    match error {
        DomainError::Validation(_) => (Code::InvalidArgument, "ValidationException", 400),
        DomainError::AlreadyExists { .. } => (Code::AlreadyExists, "ResourceInUse", 400),
        DomainError::NotFound { .. } => (Code::NotFound, "ResourceNotFound", 400),
        DomainError::LimitExceeded(_) => (Code::ResourceExhausted, "ResourceLimitExceeded", 400),
        DomainError::Unauthenticated(_) => (Code::Unauthenticated, "UnrecognizedClientException", 403),
        DomainError::PermissionDenied(_) => (Code::PermissionDenied, "AccessDeniedException", 403),
        DomainError::Unavailable(_) => (Code::Unavailable, "ServiceUnavailable", 503),
        DomainError::Internal(_) => (Code::Internal, "InternalFailure", 500),
    }
}

/// A gRPC code's name as logs and metric labels show it (`InvalidArgument`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

pub fn to_status(error: &DomainError) -> Status {
    let (code, reason, _) = classify(error);
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if let DomainError::Validation(violations) = error {
        for v in violations {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
    }
    Status::with_error_details(code, error.to_string(), details)
}

/// The field violations a status carries (empty when it carries none).
pub fn violations(status: &Status) -> Vec<Violation> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations.into_iter().map(|v| Violation { field: v.field, description: v.description }).collect()
        })
        .unwrap_or_default()
}

/// The SageMaker error name a status carries, e.g. `ResourceInUse`.
pub fn error_name(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_model::error::ResourceKind;

    #[test]
    fn every_violation_survives_the_trip_through_a_status() {
        let sent = vec![
            Violation { field: "A.B[1]".into(), description: "is required".into() },
            Violation { field: "C".into(), description: "must be less than or equal to 3 (got 4)".into() },
        ];
        let status = to_status(&DomainError::Validation(sent.clone()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violations(&status), sent);
        assert_eq!(error_name(&status).as_deref(), Some("ValidationException"));
    }

    #[test]
    fn codes_follow_the_table() {
        let cases = [
            (DomainError::AlreadyExists { kind: ResourceKind::TuningJob, name: "x".into() }, Code::AlreadyExists),
            (DomainError::NotFound { kind: ResourceKind::TrainingJob, name: "x".into() }, Code::NotFound),
            (DomainError::LimitExceeded("x".into()), Code::ResourceExhausted),
            (DomainError::Unavailable("x".into()), Code::Unavailable),
            (DomainError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(to_status(&error).code(), code, "{error}");
        }
    }
}
