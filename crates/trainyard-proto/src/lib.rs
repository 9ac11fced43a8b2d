//! The wire edge. Only this crate knows protobuf: it holds the generated messages and services
//! ([`pb`]), the lossless conversions between them and the domain model (generated, exhaustive),
//! and the one mapping of domain errors to gRPC status codes ([`status`]).

pub mod pb {
    //! Messages and services generated from `proto/trainyard/v1`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("trainyard.v1");
}

#[allow(clippy::all)]
mod convert {
    use crate::pb;
    use trainyard_model::api as model;
    include!(concat!(env!("OUT_DIR"), "/convert.rs"));
}

pub mod client;
pub mod status;

pub use trainyard_model as model;
use trainyard_model::Timestamp;

/// Protobuf timestamps carry nanoseconds; the model keeps milliseconds, SageMaker's resolution.
pub fn timestamp_to_proto(t: Timestamp) -> prost_types::Timestamp {
    let millis = t.millis();
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn timestamp_from_proto(t: prost_types::Timestamp) -> Timestamp {
    Timestamp::from_millis(t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos) / 1_000_000))
}
