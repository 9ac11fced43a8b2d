//! What the event loop is told: by the API after it persisted a change, and by agents' streams.
//! Its own module so that the API (`core`, `agents`, `access`) and the loop (`events`) depend on it
//! and not on each other.

use tokio::sync::{mpsc, oneshot};
use trainyard_proto::pb;

/// Everything the loop reacts to.
#[derive(Debug)]
pub enum Event {
    TuningJobCreated(String),
    TrainingJobCreated(String),
    TuningJobStopRequested(String),
    TrainingJobStopRequested(String),
    AgentConnected {
        session: u64,
        register: Box<pb::Register>,
        outbound: Outbound,
    },
    AgentHeartbeat {
        session: u64,
        agent: String,
        heartbeat: pb::Heartbeat,
    },
    InstanceUpdate {
        session: u64,
        agent: String,
        update: pb::InstanceUpdate,
    },
    AgentDisconnected {
        session: u64,
        agent: String,
    },
    ListAgents {
        /// Only agents whose ids sort after this one ("" for the first page) ...
        after: String,
        /// ... at most this many, and one more when there is.
        limit: usize,
        reply: oneshot::Sender<Vec<pb::AgentSummary>>,
    },
    /// An admin revoked this agent: stop its instances, close its stream, treat it as lost.
    AgentRevoked(String),
    /// An agent's session was refused: it speaks an agent protocol this coordinator does not.
    AgentRefused {
        agent: String,
        version: String,
        reason: String,
    },
    /// An admin cordoned, drained (Some) or uncordoned (None) this agent.
    CordonChanged {
        agent: String,
        cordon: Option<trainyard_store::AgentCordon>,
    },
}

/// What the loop sends an agent's stream through. Boxed: a message is 1.7 KiB inline (an
/// Assignment), and an unbounded channel allocates a block of 32 slots when it is made, so each
/// agent's channel held 55 KiB before it carried anything (most of the coordinator's 84 KiB per
/// agent at 20,000 simulated agents).
pub type Outbound = mpsc::UnboundedSender<Box<pb::CoordinatorMessage>>;

pub const PENDING_MESSAGE: &str = "Queued: waiting for an agent with the requested resources";
