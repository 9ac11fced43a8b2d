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

/// The agent protocol this build speaks: bumped when agents and coordinators of different builds
/// could no longer understand each other (a field's meaning changes, a message becomes required).
/// Builds that speak the same protocol may be mixed, which is what a rolling upgrade of agents does.
/// 2: agents number their log lines and keep them until the coordinator confirms them
/// (`LogsStored`); a coordinator that speaks only 1 would never confirm them.
pub const AGENT_PROTOCOL: u32 = 2;
/// The oldest agent protocol a coordinator of this build still speaks.
pub const OLDEST_AGENT_PROTOCOL: u32 = 1;

/// Whether a coordinator of this build can speak with an agent that speaks `protocol` (an agent
/// older than protocols, which sends none, speaks 0). The error says what to upgrade.
pub fn check_agent_protocol(protocol: u32, agent_version: &str) -> Result<(), String> {
    let agent = if agent_version.is_empty() { "(unknown)" } else { agent_version };
    let ours = env!("CARGO_PKG_VERSION");
    if protocol < OLDEST_AGENT_PROTOCOL {
        return Err(format!(
            "agent build {agent} speaks agent protocol {protocol}; this coordinator (build {ours}) speaks {OLDEST_AGENT_PROTOCOL} to {AGENT_PROTOCOL}: upgrade the agent"
        ));
    }
    if protocol > AGENT_PROTOCOL {
        return Err(format!(
            "agent build {agent} speaks agent protocol {protocol}; this coordinator (build {ours}) speaks {OLDEST_AGENT_PROTOCOL} to {AGENT_PROTOCOL}: upgrade the coordinator first"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod protocol_tests {
    #[test]
    fn agents_of_a_protocol_the_coordinator_speaks_are_accepted_others_told_what_to_upgrade() {
        assert!(super::check_agent_protocol(super::AGENT_PROTOCOL, "0.1.0").is_ok());
        let old = super::check_agent_protocol(0, "").unwrap_err();
        assert!(
            old.contains("agent build (unknown) speaks agent protocol 0") && old.ends_with("upgrade the agent"),
            "{old}"
        );
        let new = super::check_agent_protocol(super::AGENT_PROTOCOL + 1, "9.0.0").unwrap_err();
        assert!(new.ends_with("upgrade the coordinator first"), "{new}");
    }
}
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
