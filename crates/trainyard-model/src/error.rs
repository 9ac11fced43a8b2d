//! Domain errors. Each variant is one gRPC status code; the mapping lives in `trainyard-proto`.

use std::fmt;

use crate::validation::Violation;

/// What kind of resource an error is about, for messages ("tuning job 'x' already exists").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    TuningJob,
    TrainingJob,
    Token,
    Agent,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::TuningJob => "hyperparameter tuning job",
            ResourceKind::TrainingJob => "training job",
            ResourceKind::Token => "token",
            ResourceKind::Agent => "agent",
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// The request breaks one or more rules; every violation is listed (gRPC `InvalidArgument`).
    #[error("{} validation error(s) detected: {}", .0.len(), render(.0))]
    Validation(Vec<Violation>),
    /// A resource with this name exists already (gRPC `AlreadyExists`, SageMaker `ResourceInUse`).
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: ResourceKind, name: String },
    /// No resource of this name (gRPC `NotFound`, SageMaker `ResourceNotFound`).
    #[error("{kind} '{name}' does not exist")]
    NotFound { kind: ResourceKind, name: String },
    /// A configured service limit would be exceeded (gRPC `ResourceExhausted`).
    #[error("resource limit exceeded: {0}")]
    LimitExceeded(String),
    /// No valid credentials: no token, an unknown, expired or revoked one (gRPC `Unauthenticated`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials whose scope does not allow the operation (gRPC `PermissionDenied`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The backing store could not be reached; the request may be retried (gRPC `Unavailable`).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or a corrupted record (gRPC `Internal`).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    /// A single violation, for rules checked outside the request validator (state, references).
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::Validation(vec![Violation { field: field.into(), description: description.into() }])
    }
}

fn render(violations: &[Violation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
