//! Trainyard's domain model. Pure: no I/O, no clock (callers pass `now`), no wire formats.
//!
//! * [`api`]: every SageMaker shape the tuning and training operations reach, generated from the
//!   service model, with structural validation of every documented constraint;
//! * [`rules`]: the semantic rules a SageMaker user relies on (ranges parse, Min ≤ Max, Grid only with
//!   categorical ranges, the objective is a defined metric, ...), on top of the structural ones;
//! * [`catalog`]: the instance types the coordinator knows and what each one needs;
//! * [`status`] and [`jobs`]: job states, their transitions, and the stored records;
//! * [`error`]: the domain errors, mapped to gRPC codes in exactly one place (the proto crate).

#[allow(unused_variables, clippy::all)]
pub mod api {
    //! The SageMaker API shapes (generated). All members are `Option`: presence is part of the
    //! request, and missing required members are reported by validation, with every other problem.
    include!(concat!(env!("OUT_DIR"), "/api.rs"));
}

pub mod access;
pub mod catalog;
pub mod error;
pub mod hex;
pub mod images;
pub mod jobs;
pub mod listing;
pub mod metrics;
pub mod names;
pub mod plot;
pub mod priority;
pub mod roles;
pub mod rules;
pub mod status;
pub mod timestamp;
pub mod trials;
pub mod uris;
pub mod validation;

pub use error::DomainError;
pub use timestamp::Timestamp;
pub use validation::{Validate, Violation, Violations};

/// Parses any API shape from SageMaker's JSON (for tools and tests that hold JSON text).
pub fn api_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(json)
}
