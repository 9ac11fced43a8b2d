//! The agents' side of the API: one bidirectional stream per agent (`Session`), and `ListAgents`.
//! Everything an agent says becomes an event for the loop, except log lines, which go straight to
//! the store (they need no decision).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;
use trainyard_model::DomainError;
use trainyard_proto::pb;
use trainyard_proto::pb::agent_message::Body as Up;
use trainyard_proto::status::to_status;

use crate::core::Coordinator;
use crate::inbox::Event;

pub struct AgentService {
    pub coordinator: Arc<Coordinator>,
    pub auth: Arc<crate::auth::Auth>,
    pub events: mpsc::UnboundedSender<Event>,
    pub sessions: AtomicU64,
    pub liveness: crate::liveness::Liveness,
    /// How long an agent may run its instances without hearing from us (see `events::Timing`).
    pub lease: std::time::Duration,
    /// How long an agent may be silent before the loop takes it for lost.
    pub lost_after: std::time::Duration,
}

/// A heartbeat goes on to the event loop at least this often (the others only update
/// [`crate::liveness::Liveness`], which the loop reads).
const HEARTBEATS_FORWARDED_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agents_server::Agents for AgentService {
    type SessionStream = Outbound;

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let r = request.into_inner();
        let credential = self.auth.join(&r.join_token, &r.agent_id).await.map_err(|e| {
            warn!(agent = %r.agent_id, error = %e, "join refused");
            to_status(&e)
        })?;
        Ok(Response::new(pb::JoinResponse {
            certificate_pem: credential.certificate_pem,
            key_pem: credential.key_pem,
            ca_pem: credential.ca_pem,
        }))
    }

    async fn session(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let authenticated = self.auth.agent(&request).await.map_err(|e| {
            warn!(error = %e, "agent session refused");
            to_status(&e)
        })?;
        let mut inbound = request.into_inner();
        let first =
            inbound.message().await?.ok_or_else(|| Status::invalid_argument("the stream ended before Register"))?;
        let Some(Up::Register(register)) = first.body else {
            return Err(Status::invalid_argument("the first message of a session must be Register"));
        };
        if register.agent_id.is_empty() {
            return Err(Status::invalid_argument("Register.agent_id is required"));
        }
        if let Some(id) = authenticated
            && id != register.agent_id
        {
            warn!(certificate_of = %id, claims = %register.agent_id, "agent session refused: wrong agent id");
            return Err(Status::permission_denied(format!(
                "this certificate belongs to agent '{id}', not to '{}'",
                register.agent_id
            )));
        }
        if let Err(reason) = trainyard_proto::check_agent_protocol(register.protocol, &register.version) {
            warn!(agent = %register.agent_id, version = %register.version, %reason, "agent session refused: incompatible");
            let _ = self.events.send(Event::AgentRefused {
                agent: register.agent_id.clone(),
                version: register.version.clone(),
                reason: reason.clone(),
            });
            return Err(Status::failed_precondition(reason));
        }
        let agent = register.agent_id.clone();
        self.liveness.touch(&agent);
        let liveness = self.liveness.clone();
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        // What the stream's task sends the agent itself (lease renewals, log confirmations).
        // Weak: the loop's sender is the only strong one, so that the stream ends, and renewals
        // stop, the moment the loop lets go of this agent (lost, revoked, replaced).
        let to_agent = tx.downgrade();
        let lease = pb::CoordinatorMessage { body: Some(pb::coordinator_message::Body::Lease(lease(self.lease))) };
        self.events
            .send(Event::AgentConnected { session, register: Box::new(register), outbound: tx })
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        let events = self.events.clone();
        let coordinator = self.coordinator.clone();
        // A quarter of the lease between renewals: the agent always has most of its lease ahead,
        // without a message per heartbeat (thousands of agents).
        let renew_every = self.lease / 4;
        let mut renewed_at = std::time::Instant::now(); // the loop sends the first with Registered
        // When this agent spoke last, and when a heartbeat last went on to the loop.
        let mut previous_message = std::time::Instant::now();
        let mut forwarded_at: Option<std::time::Instant> = None;
        // A gap this long may have made the loop take the agent for lost: the heartbeat that
        // ends it goes on to the loop.
        let silence = self.lost_after / 2;
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(agent, error = %e, "agent stream broke");
                        break;
                    }
                };
                let since_previous = previous_message.elapsed();
                previous_message = std::time::Instant::now();
                match &message.body {
                    Some(Up::Heartbeat(heartbeat)) => liveness.heard(&agent, heartbeat.clone()),
                    _ => liveness.touch(&agent),
                }
                let event = match message.body {
                    Some(Up::Heartbeat(heartbeat)) => {
                        // Renewed here, not by the loop: a busy loop must not fence healthy agents.
                        if renewed_at.elapsed() >= renew_every
                            && let Some(outbound) = to_agent.upgrade()
                        {
                            let _ = outbound.send(Box::new(lease.clone()));
                            renewed_at = std::time::Instant::now();
                        }
                        let forward = crate::liveness::forward_heartbeat(
                            forwarded_at.map(|t| t.elapsed()),
                            since_previous,
                            silence,
                            HEARTBEATS_FORWARDED_EVERY,
                        );
                        if !forward {
                            continue;
                        }
                        forwarded_at = Some(std::time::Instant::now());
                        Event::AgentHeartbeat { session, agent: agent.clone(), heartbeat }
                    }
                    Some(Up::Update(update)) => Event::InstanceUpdate { session, agent: agent.clone(), update },
                    Some(Up::Logs(batch)) => {
                        let (job, instance, first_line) = (batch.training_job_name, batch.instance, batch.first_line);
                        let count = batch.lines.len() as u64;
                        let lines = batch.lines.into_iter().map(|l| (l.stream, l.timestamp_millis, l.text)).collect();
                        match coordinator.record_logs(&job, instance, first_line, lines).await {
                            // Stored: the agent may forget them. (Held ones it keeps, and sends
                            // again if this coordinator dies before a later batch is confirmed.)
                            Ok(true) if first_line > 0 && count > 0 => {
                                if let Some(outbound) = to_agent.upgrade() {
                                    let stored = pb::LogsStored {
                                        training_job_name: job,
                                        instance,
                                        through_line: first_line + count - 1,
                                    };
                                    let body = pb::coordinator_message::Body::LogsStored(stored);
                                    let _ = outbound.send(Box::new(pb::CoordinatorMessage { body: Some(body) }));
                                }
                            }
                            Ok(_) => {}
                            Err(e) => warn!(agent, %job, error = %e, "log lines not stored"),
                        }
                        continue;
                    }
                    Some(Up::Register(_)) | None => continue,
                };
                if events.send(event).is_err() {
                    break;
                }
            }
            let _ = events.send(Event::AgentDisconnected { session, agent });
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx).map(|message| Ok(*message)))))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.auth.caller(&request).await.map_err(|e| to_status(&e))?;
        let pb::ListAgentsRequest { next_token, max_results } = request.into_inner();
        let limit = match max_results {
            0 => MAX_AGENTS_PER_PAGE,
            n if n as usize > MAX_AGENTS_PER_PAGE => {
                return Err(to_status(&DomainError::invalid(
                    "MaxResults",
                    format!("must be at most {MAX_AGENTS_PER_PAGE} (got {n})"),
                )));
            }
            n => n as usize,
        };
        let (tx, rx) = oneshot::channel();
        let asked = Event::ListAgents { after: next_token.clone(), limit, reply: tx };
        self.events.send(asked).map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        let agents = rx.await.map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        Ok(Response::new(page_of_agents(agents, &next_token, limit)))
    }
}

/// Agents in one ListAgents answer at most (about 100 bytes each without GPUs).
const MAX_AGENTS_PER_PAGE: usize = 1000;

/// The page of `agents` (in any order) that follows the agent id `after` ("" for the first), by id.
fn page_of_agents(mut agents: Vec<pb::AgentSummary>, after: &str, limit: usize) -> pb::ListAgentsResponse {
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let start = if after.is_empty() { 0 } else { agents.partition_point(|a| a.agent_id.as_str() <= after) };
    let end = start.saturating_add(limit.max(1)).min(agents.len());
    let next_token = match end < agents.len() {
        true => agents[end - 1].agent_id.clone(),
        false => String::new(),
    };
    pb::ListAgentsResponse { agents: agents.drain(start..end).collect(), next_token }
}

/// A lease of `valid_for` (the first goes out with Registered, renewals from the stream's task).
pub fn lease(valid_for: std::time::Duration) -> pb::Lease {
    pb::Lease { valid_for_ms: valid_for.as_millis().min(u128::from(u32::MAX)) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(ids: &[&str]) -> Vec<pb::AgentSummary> {
        ids.iter().map(|id| pb::AgentSummary { agent_id: id.to_string(), ..Default::default() }).collect()
    }

    fn ids(page: &pb::ListAgentsResponse) -> Vec<&str> {
        page.agents.iter().map(|a| a.agent_id.as_str()).collect()
    }

    #[test]
    fn agents_are_paged_by_id_and_every_one_is_listed_once() {
        let all = named(&["c", "a", "e", "b", "d"]);
        let first = page_of_agents(all.clone(), "", 2);
        assert_eq!((ids(&first), first.next_token.as_str()), (vec!["a", "b"], "b"));
        let second = page_of_agents(all.clone(), &first.next_token, 2);
        assert_eq!((ids(&second), second.next_token.as_str()), (vec!["c", "d"], "d"));
        let last = page_of_agents(all.clone(), &second.next_token, 2);
        assert_eq!((ids(&last), last.next_token.as_str()), (vec!["e"], ""));
        // Exactly full: no token pointing at an empty page.
        assert_eq!(page_of_agents(all.clone(), "", 5).next_token, "");
        // An agent that left since the token was issued does not break the walk.
        assert_eq!(ids(&page_of_agents(named(&["a", "c"]), "b", 10)), ["c"]);
        assert!(page_of_agents(all, "z", 10).agents.is_empty());
    }
}
