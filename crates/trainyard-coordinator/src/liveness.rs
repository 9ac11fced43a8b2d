//! When each agent was last heard from. The agents' streams write it as messages arrive; the loop
//! reads it to decide that an agent is lost. It lives outside the loop's queue so that a loop busy
//! with a backlog of submissions never mistakes its own lag for silent agents (measured: 3,000
//! agents and 16 busy clients made every agent "lost" when heartbeats waited in the queue).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<Mutex<HashMap<String, Instant>>>);

impl Liveness {
    pub fn touch(&self, agent: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(agent) {
            Some(at) => *at = Instant::now(),
            None => {
                seen.insert(agent.to_string(), Instant::now());
            }
        }
    }

    pub fn last_seen(&self, agent: &str) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(agent).copied()
    }
}
