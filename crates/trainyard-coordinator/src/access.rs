//! The `Access` service: API tokens, join tokens and agent revocation, for admins (`trainyard
//! tokens ...`, `trainyard agents revoke`). The same operations run without a server through
//! `trainyard-coordinator tokens ...` (how the first admin token is made).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::debug;
use trainyard_model::DomainError;
use trainyard_model::access::{Caller, Scope};
use trainyard_proto::pb;
use trainyard_proto::status::to_status;
use trainyard_store::TokenRecord;

use crate::audit;
use crate::auth::Auth;
use crate::inbox::Event;

pub struct AccessService {
    pub auth: Arc<Auth>,
    pub events: mpsc::UnboundedSender<Event>,
}

fn refused(operation: &str, e: DomainError) -> Status {
    debug!(operation, error = %e, "access request refused");
    to_status(&e)
}

pub fn token_info(r: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: r.id.clone(),
        kind: r.kind.as_str().into(),
        user: r.user.clone(),
        scope: r.scope.map(|s| s.to_string()).unwrap_or_default(),
        description: r.description.clone(),
        created_millis: r.created_at.millis(),
        expires_millis: r.expires_at.map(|t| t.millis()).unwrap_or_default(),
        revoked_millis: r.revoked_at.map(|t| t.millis()).unwrap_or_default(),
        access_key_id: r.access_key_id.clone().unwrap_or_default(),
        uses: r.uses,
        uses_allowed: r.uses_allowed.unwrap_or_default(),
        agent_id: r.agent_id.clone().unwrap_or_default(),
    }
}

fn lifetime(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

impl AccessService {
    async fn admin<T>(&self, operation: &str, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.auth.caller(request).await.map_err(|e| refused(operation, e))?;
        caller.require(Scope::Admin, operation).map_err(|e| refused(operation, e))?;
        Ok(caller)
    }

    /// `admin` for a call that changes something: a refusal is recorded in the audit trail here,
    /// the outcome by the caller (with `audit::record`).
    async fn admin_change<T>(&self, operation: &str, resource: &str, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self
            .auth
            .caller(request)
            .await
            .map_err(|e| refused(operation, e))
            .inspect_err(|status| audit::record(None, operation, resource, audit::refused(status)))?;
        caller
            .require(Scope::Admin, operation)
            .map_err(|e| refused(operation, e))
            .inspect_err(|status| audit::record(Some(&caller), operation, resource, audit::refused(status)))?;
        Ok(caller)
    }
}

#[tonic::async_trait]
impl pb::access_server::Access for AccessService {
    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.auth.caller(&request).await.map_err(|e| refused("WhoAmI", e))?;
        Ok(Response::new(pb::WhoAmIResponse {
            user: caller.user,
            scope: caller.scope.to_string(),
            authenticated: self.auth.required(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let resource = format!("user {} ({})", request.get_ref().user, request.get_ref().scope);
        let caller = self.admin_change("CreateToken", &resource, &request).await?;
        let r = request.into_inner();
        let created = async {
            let scope =
                r.scope.parse::<Scope>().map_err(|e| refused("CreateToken", DomainError::invalid("Scope", e)))?;
            let (token, record, access) = self
                .auth
                .create_api_token(&r.user, scope, &r.description, lifetime(r.expires_in_seconds), r.access_key)
                .await
                .map_err(|e| refused("CreateToken", e))?;
            let (access_key_id, secret_access_key) = access.unwrap_or_default();
            Ok(Response::new(pb::CreateTokenResponse {
                token,
                info: Some(token_info(&record)),
                access_key_id,
                secret_access_key,
            }))
        }
        .await;
        audit::record(Some(&caller), "CreateToken", &resource, audit::of(&created));
        created
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.admin("ListTokens", &request).await?;
        let tokens = self.auth.list_tokens().await.map_err(|e| refused("ListTokens", e))?;
        Ok(Response::new(pb::ListTokensResponse { tokens: tokens.iter().map(token_info).collect() }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = request.get_ref().id.clone();
        let caller = self.admin_change("RevokeToken", &id, &request).await?;
        let revoked = self.auth.revoke_token(&id).await.map_err(|e| refused("RevokeToken", e));
        audit::record(Some(&caller), "RevokeToken", &id, audit::of(&revoked));
        revoked.map(|()| Response::new(pb::RevokeTokenResponse {}))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let resource = match request.get_ref().agent_id.as_str() {
            "" => "any agent".to_string(),
            agent => format!("agent {agent}"),
        };
        let caller = self.admin_change("CreateJoinToken", &resource, &request).await?;
        let r = request.into_inner();
        let user = if caller.user.is_empty() { "admin" } else { caller.user.as_str() };
        let agent_id = (!r.agent_id.is_empty()).then_some(r.agent_id.as_str());
        let created = self
            .auth
            .create_join_token(user, &r.description, lifetime(r.expires_in_seconds), r.uses, agent_id)
            .await
            .map_err(|e| refused("CreateJoinToken", e));
        audit::record(Some(&caller), "CreateJoinToken", &resource, audit::of(&created));
        let (token, record) = created?;
        Ok(Response::new(pb::CreateTokenResponse { token, info: Some(token_info(&record)), ..Default::default() }))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let agent = request.get_ref().agent_id.clone();
        let caller = self.admin_change("RevokeAgent", &agent, &request).await?;
        let revoked = self.auth.revoke_agent(&agent).await.map_err(|e| refused("RevokeAgent", e));
        audit::record(Some(&caller), "RevokeAgent", &agent, audit::of(&revoked));
        revoked?;
        // The loop stops its instances, closes its stream and fails or retries its jobs.
        let _ = self.events.send(Event::AgentRevoked(agent));
        Ok(Response::new(pb::RevokeAgentResponse {}))
    }

    async fn cordon_agent(
        &self,
        request: Request<pb::CordonAgentRequest>,
    ) -> Result<Response<pb::CordonAgentResponse>, Status> {
        let r = request.get_ref();
        let resource = match r.deadline_seconds {
            0 => format!("{} ({})", r.agent_id, r.action),
            seconds => format!("{} ({}, deadline {seconds} s)", r.agent_id, r.action),
        };
        let caller = self.admin_change("CordonAgent", &resource, &request).await?;
        let r = request.into_inner();
        let deadline = (r.deadline_seconds > 0).then(|| Duration::from_secs(r.deadline_seconds));
        let cordoned = self
            .auth
            .cordon_agent(&r.agent_id, &r.action, deadline, &caller)
            .await
            .map_err(|e| refused("CordonAgent", e));
        audit::record(Some(&caller), "CordonAgent", &resource, audit::of(&cordoned));
        let cordon = cordoned?;
        // Placement sees it from the next pass on.
        let _ = self.events.send(Event::CordonChanged { agent: r.agent_id, cordon });
        Ok(Response::new(pb::CordonAgentResponse {}))
    }
}
