//! When each agent was last heard from, and its latest heartbeat. The agents' streams write it as
//! messages arrive; the loop reads it to decide that an agent is lost, and ListAgents to show
//! what each reported. It lives outside the loop's queue so that a loop busy with a backlog of
//! submissions never mistakes its own lag for silent agents (measured: 3,000 agents and 16 busy
//! clients made every agent "lost" when heartbeats waited in the queue), and so that heartbeats
//! need not be events of the loop at all (see [`forward_heartbeat`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use trainyard_proto::pb;

#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<Mutex<HashMap<String, Heard>>>);

#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    /// The same moment as Unix milliseconds (what ListAgents shows).
    millis: i64,
    heartbeat: Option<pb::Heartbeat>,
}

impl Liveness {
    /// Any message from `agent` arrived.
    pub fn touch(&self, agent: &str) {
        self.write(agent, None);
    }

    /// A heartbeat from `agent` arrived.
    pub fn heard(&self, agent: &str, heartbeat: pb::Heartbeat) {
        self.write(agent, Some(heartbeat));
    }

    fn write(&self, agent: &str, heartbeat: Option<pb::Heartbeat>) {
        let (at, millis) = (Instant::now(), crate::core::now().millis());
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(agent) {
            Some(heard) => {
                heard.at = at;
                heard.millis = millis;
                if heartbeat.is_some() {
                    heard.heartbeat = heartbeat;
                }
            }
            None => {
                seen.insert(agent.to_string(), Heard { at, millis, heartbeat });
            }
        }
    }

    pub fn last_seen(&self, agent: &str) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(agent).map(|h| h.at)
    }

    /// When `agent` was last heard from (Unix milliseconds) and its latest heartbeat, if any.
    pub fn latest(&self, agent: &str) -> Option<(i64, Option<pb::Heartbeat>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(agent).map(|h| (h.millis, h.heartbeat.clone()))
    }
}

/// A heartbeat goes on to the event loop only when the loop needs it: the first of a session,
/// one after a silence (`since_previous`, the time since the agent's previous message, at least
/// `silence`: the loop may have taken the agent for lost and must hear it speak again), and one
/// every `every` besides. The rest only update [`Liveness`]. Every heartbeat was an event of the
/// one loop: 10,000 a second at 20,000 agents, and the loop fell seconds behind on them.
pub fn forward_heartbeat(
    forwarded_ago: Option<Duration>,
    since_previous: Duration,
    silence: Duration,
    every: Duration,
) -> bool {
    forwarded_ago.is_none_or(|ago| ago >= every) || since_previous >= silence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_reach_the_loop_first_after_a_silence_and_now_and_then() {
        let (silence, every) = (Duration::from_secs(2), Duration::from_secs(30));
        let s = Duration::from_secs;
        assert!(forward_heartbeat(None, s(0), silence, every), "the first of a session");
        assert!(!forward_heartbeat(Some(s(1)), s(1), silence, every), "a regular one");
        assert!(!forward_heartbeat(Some(s(29)), s(1), silence, every));
        assert!(forward_heartbeat(Some(s(30)), s(1), silence, every), "now and then");
        assert!(forward_heartbeat(Some(s(5)), s(2), silence, every), "after a silence");
    }

    #[tokio::test]
    async fn the_latest_heartbeat_is_kept_and_other_messages_only_say_the_agent_is_there() {
        let liveness = Liveness::default();
        assert_eq!(liveness.latest("a"), None);
        liveness.touch("a");
        assert_eq!(liveness.latest("a").map(|l| l.1), Some(None));
        let heartbeat = pb::Heartbeat { memory_available_mib: 512, ..Default::default() };
        liveness.heard("a", heartbeat.clone());
        let first = liveness.last_seen("a").expect("seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
        liveness.touch("a");
        let (millis, kept) = liveness.latest("a").expect("heard");
        assert_eq!(kept, Some(heartbeat), "a message that is not a heartbeat keeps the last one");
        assert!(liveness.last_seen("a").expect("seen") > first);
        assert!(millis > 0);
    }
}
