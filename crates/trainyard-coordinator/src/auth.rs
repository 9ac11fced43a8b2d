//! Who is calling: API tokens for clients (`authorization: Bearer tya_...`), client certificates for
//! agents (issued by `Join` in exchange for a join token). With `--insecure` there are no tokens
//! and every caller is an admin.
//!
//! A verified API token is remembered for [`TOKEN_CACHE_TTL`], so that a busy client costs no
//! database read per request; a revocation through this coordinator's API takes effect at once,
//! one made by `trainyard-coordinator tokens revoke` (another process) within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::Request;
use tracing::{info, warn};
use trainyard_model::access::{Caller, Scope, TokenKind, TokenText, check_user_name};
use trainyard_model::error::ResourceKind;
use trainyard_model::{DomainError, Timestamp};
use trainyard_pki::{Authority, Credential};
use trainyard_store::{AgentIdentity, Store, TokenRecord};

use crate::core::now;

pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a join token is good for unless its creator says otherwise.
pub const DEFAULT_JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Agents one join token may let in at most (`--uses`).
pub const MAX_JOIN_TOKEN_USES: u32 = 10_000;
/// Agent certificates: long-lived; an agent is cut off by revocation, not by expiry.
const AGENT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

pub struct Auth {
    store: Arc<dyn Store>,
    authority: Arc<Authority>,
    sealer: crate::sealing::Sealer,
    /// False with `--insecure`.
    required: bool,
    verified: Mutex<HashMap<String, Verified>>,
}

/// A token checked against the store: when, the hash it had, who it is, until when it is good.
#[derive(Clone)]
struct Verified {
    at: Instant,
    secret_sha256: String,
    caller: Caller,
    expires_at: Option<Timestamp>,
}

fn sha256_hex(text: &str) -> String {
    trainyard_model::hex::encode(&Sha256::digest(text.as_bytes()))
}

/// `N` bytes from the system's random number generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], DomainError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| DomainError::Internal("the system's random number generator failed".into()))?;
    Ok(bytes)
}

fn unauthenticated(why: impl Into<String>) -> DomainError {
    DomainError::Unauthenticated(why.into())
}

impl Auth {
    pub fn new(
        store: Arc<dyn Store>,
        authority: Arc<Authority>,
        sealer: crate::sealing::Sealer,
        required: bool,
    ) -> Self {
        Self { store, authority, sealer, required, verified: Mutex::new(HashMap::new()) }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The caller of a client request, from its bearer token.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, DomainError> {
        if !self.required {
            return Ok(Caller::unauthenticated_admin());
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| unauthenticated("no API token: pass --token or set TRAINYARD_TOKEN"))?;
        let value = header.to_str().map_err(|_| unauthenticated("the authorization header is not text"))?;
        let text = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthenticated("the authorization header must be 'Bearer <token>'"))?;
        self.verify_api_token(text).await
    }

    pub async fn verify_api_token(&self, text: &str) -> Result<Caller, DomainError> {
        let token = TokenText::parse(text).map_err(unauthenticated)?;
        if token.kind != TokenKind::Api {
            return Err(unauthenticated("a join token is not an API token"));
        }
        let hash = sha256_hex(&token.secret);
        let cached = self.verified.lock().ok().and_then(|c| c.get(&token.id).cloned());
        if let Some(v) = cached
            && v.at.elapsed() < TOKEN_CACHE_TTL
            && v.secret_sha256 == hash
            && v.expires_at.is_none_or(|e| now() < e)
        {
            return Ok(v.caller);
        }
        let record = self.store.get_token(&token.id).await?;
        let record = match record {
            Some(r) if r.kind == TokenKind::Api && r.secret_sha256 == hash => r,
            _ => return Err(unauthenticated(format!("unknown API token {}", token.id))),
        };
        Self::usable(&record)?;
        let scope = record.scope.ok_or_else(|| DomainError::Internal(format!("token {} has no scope", record.id)))?;
        let caller = Caller { user: record.user.clone(), scope };
        if let Ok(mut cache) = self.verified.lock() {
            let verified = Verified {
                at: Instant::now(),
                secret_sha256: hash,
                caller: caller.clone(),
                expires_at: record.expires_at,
            };
            cache.insert(record.id.clone(), verified);
        }
        Ok(caller)
    }

    fn usable(record: &TokenRecord) -> Result<(), DomainError> {
        if let Some(at) = record.revoked_at {
            return Err(unauthenticated(format!("{} token {} was revoked at {at}", record.kind.as_str(), record.id)));
        }
        if let Some(at) = record.expires_at
            && now() >= at
        {
            return Err(unauthenticated(format!("{} token {} expired at {at}", record.kind.as_str(), record.id)));
        }
        Ok(())
    }

    /// The agent a session belongs to: the one whose certificate the client presented. None when
    /// the coordinator runs with `--insecure`.
    pub async fn agent<T>(&self, request: &Request<T>) -> Result<Option<String>, DomainError> {
        if !self.required {
            return Ok(None);
        }
        let certificates = request.peer_certs().ok_or_else(|| {
            unauthenticated("agents authenticate with the certificate they received when they joined (--join-token)")
        })?;
        let leaf = certificates.first().ok_or_else(|| unauthenticated("no client certificate"))?;
        let fingerprint = trainyard_pki::der_fingerprint(leaf);
        let identity = self.store.agent_identity_by_certificate(&fingerprint).await?.ok_or_else(|| {
            unauthenticated("this certificate belongs to no agent (it was replaced by a later join?)")
        })?;
        if let Some(at) = identity.revoked_at {
            return Err(DomainError::PermissionDenied(format!(
                "agent {} was revoked at {at}; it may join again with a new join token",
                identity.agent_id
            )));
        }
        Ok(Some(identity.agent_id))
    }

    /// Creates an API token acting as `user` with `scope`; returns its text (shown once), its
    /// record, and with `access_key` a SigV4 access key id and secret bound to it (shown once too).
    pub async fn create_api_token(
        &self,
        user: &str,
        scope: Scope,
        description: &str,
        lifetime: Option<Duration>,
        access_key: bool,
    ) -> Result<(String, TokenRecord, Option<(String, String)>), DomainError> {
        let text = self.new_token_text(TokenKind::Api)?;
        // AWS access key ids are upper-case letters and digits; ours name the token they belong to.
        let access = match access_key {
            true => {
                let id = format!("TYAK{}", text.id.to_ascii_uppercase());
                Some((id, trainyard_model::hex::encode(&random_bytes::<20>()?)))
            }
            false => None,
        };
        let access_key_sealed = match &access {
            Some((id, secret)) => Some(self.sealer.seal(secret, id).map_err(DomainError::Internal)?),
            None => None,
        };
        let mut record = self.token_record(&text, user, description, lifetime)?;
        record.scope = Some(scope);
        record.access_key_id = access.as_ref().map(|(id, _)| id.clone());
        record.access_key_sealed = access_key_sealed;
        self.store_token(&record).await?;
        Ok((text.to_string(), record, access))
    }

    /// Creates a join token made by `user`, valid for `lifetime` (default
    /// [`DEFAULT_JOIN_TOKEN_LIFETIME`]) and for `uses` agents (0: one), only as `agent_id` when
    /// given; it carries the CA's fingerprint for the agent to pin.
    pub async fn create_join_token(
        &self,
        user: &str,
        description: &str,
        lifetime: Option<Duration>,
        uses: u32,
        agent_id: Option<&str>,
    ) -> Result<(String, TokenRecord), DomainError> {
        if uses > MAX_JOIN_TOKEN_USES {
            return Err(DomainError::invalid("Uses", format!("must be at most {MAX_JOIN_TOKEN_USES} (got {uses})")));
        }
        if let Some(id) = agent_id {
            check_agent_id(id).map_err(|_| DomainError::invalid("AgentId", format!("'{id}' is not an agent id")))?;
            if uses > 1 {
                return Err(DomainError::invalid("Uses", "a token for one agent id joins once"));
            }
        }
        let text = self.new_token_text(TokenKind::Join)?;
        let mut record =
            self.token_record(&text, user, description, Some(lifetime.unwrap_or(DEFAULT_JOIN_TOKEN_LIFETIME)))?;
        record.uses_allowed = Some(i64::from(uses.max(1)));
        record.agent_id = agent_id.map(str::to_string);
        self.store_token(&record).await?;
        Ok((text.to_string(), record))
    }

    fn new_token_text(&self, kind: TokenKind) -> Result<TokenText, DomainError> {
        let fingerprint = match kind {
            TokenKind::Join => Some(self.authority.fingerprint().map_err(|e| DomainError::Internal(e.to_string()))?),
            TokenKind::Api => None,
        };
        Ok(TokenText::new(kind, &random_bytes::<30>()?, fingerprint))
    }

    /// The stored form of a new token (its secret hashed), checked the same way for both kinds.
    fn token_record(
        &self,
        text: &TokenText,
        user: &str,
        description: &str,
        lifetime: Option<Duration>,
    ) -> Result<TokenRecord, DomainError> {
        check_user_name(user).map_err(|e| DomainError::invalid("User", e))?;
        if description.chars().count() > 256 {
            return Err(DomainError::invalid("Description", "must be at most 256 characters"));
        }
        let created = now();
        Ok(TokenRecord {
            id: text.id.clone(),
            kind: text.kind,
            secret_sha256: sha256_hex(&text.secret),
            user: user.to_string(),
            scope: None,
            description: description.to_string(),
            created_at: created,
            expires_at: lifetime.map(|l| Timestamp::from_millis(created.millis().saturating_add(l.as_millis() as i64))),
            revoked_at: None,
            access_key_id: None,
            access_key_sealed: None,
            uses_allowed: None,
            uses: 0,
            agent_id: None,
        })
    }

    async fn store_token(&self, record: &TokenRecord) -> Result<(), DomainError> {
        self.store.create_token(record).await?;
        info!(token = %record.id, kind = record.kind.as_str(), user = %record.user, scope = ?record.scope, access_key = ?record.access_key_id, "token created");
        Ok(())
    }

    /// The secret of a SigV4 access key issued with a token, and who it acts as. None: no such
    /// key; an error when its token was revoked or has expired.
    pub async fn access_key(&self, key_id: &str) -> Result<Option<(String, Caller)>, DomainError> {
        let Some(record) = self.store.get_token_by_access_key(key_id).await? else {
            return Ok(None);
        };
        Self::usable(&record)?;
        let sealed = record.access_key_sealed.as_deref().unwrap_or_default();
        let secret =
            self.sealer.open(sealed, key_id).map_err(|e| DomainError::Internal(format!("access key {key_id}: {e}")))?;
        let scope = record.scope.ok_or_else(|| DomainError::Internal(format!("token {} has no scope", record.id)))?;
        Ok(Some((secret, Caller { user: record.user, scope })))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, DomainError> {
        Ok(self.store.list_tokens().await?)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), DomainError> {
        if !self.store.revoke_token(id, now()).await? {
            return Err(DomainError::NotFound { kind: ResourceKind::Token, name: id.to_string() });
        }
        if let Ok(mut cache) = self.verified.lock() {
            cache.remove(id);
        }
        info!(token = id, "token revoked");
        Ok(())
    }

    /// Marks an agent revoked (the caller closes its stream).
    pub async fn revoke_agent(&self, agent_id: &str) -> Result<(), DomainError> {
        if !self.store.revoke_agent(agent_id, now()).await? {
            return Err(DomainError::NotFound { kind: ResourceKind::Agent, name: agent_id.to_string() });
        }
        warn!(agent = agent_id, "agent revoked");
        Ok(())
    }

    /// Cordons, drains or uncordons an agent (known or not: an agent may be cordoned before it
    /// first connects); what is in force afterwards.
    pub async fn cordon_agent(
        &self,
        agent_id: &str,
        action: &str,
        deadline: Option<std::time::Duration>,
        caller: &Caller,
    ) -> Result<Option<trainyard_store::AgentCordon>, DomainError> {
        check_agent_id(agent_id)?;
        if deadline.is_some() && action != "drain" {
            return Err(DomainError::invalid("DeadlineSeconds", "only a drain has a deadline"));
        }
        let drain = match action {
            "cordon" => false,
            "drain" => true,
            "uncordon" => {
                if !self.store.delete_cordon(agent_id).await? {
                    return Err(DomainError::invalid("AgentId", format!("agent '{agent_id}' is not cordoned")));
                }
                info!(agent = agent_id, user = %caller.user, "agent uncordoned");
                return Ok(None);
            }
            other => {
                return Err(DomainError::invalid("Action", format!("'{other}' is not one of cordon, drain, uncordon")));
            }
        };
        let cordon = trainyard_store::AgentCordon {
            agent_id: agent_id.to_string(),
            drain,
            by_user: caller.user.clone(),
            at: now(),
            stop_at: deadline.map(|d| Timestamp::from_millis(now().millis() + d.as_millis() as i64)),
        };
        self.store.put_cordon(&cordon).await?;
        info!(agent = agent_id, user = %caller.user, action, "agent taken out of placement");
        Ok(Some(cordon))
    }

    /// A join token and an agent id buy a client certificate; the agent's previous one (if it
    /// joined before) stops working.
    pub async fn join(&self, token_text: &str, agent_id: &str) -> Result<Credential, DomainError> {
        if !self.required {
            return Err(DomainError::invalid(
                "JoinToken",
                "this coordinator runs with --insecure: agents need no join",
            ));
        }
        check_agent_id(agent_id)?;
        let token = TokenText::parse(token_text).map_err(unauthenticated)?;
        if token.kind != TokenKind::Join {
            return Err(unauthenticated("an API token is not a join token"));
        }
        let record = match self.store.get_token(&token.id).await? {
            Some(r) if r.kind == TokenKind::Join && r.secret_sha256 == sha256_hex(&token.secret) => r,
            _ => return Err(unauthenticated(format!("unknown join token {}", token.id))),
        };
        Self::usable(&record)?;
        if let Some(bound) = record.agent_id.as_deref()
            && bound != agent_id
        {
            return Err(unauthenticated(format!("join token {} is for agent '{bound}', not '{agent_id}'", record.id)));
        }
        // Counted before the certificate is issued: two agents racing for a token's last use
        // cannot both join.
        if !self.store.use_join_token(&record.id).await? {
            let allowed = record.uses_allowed.unwrap_or_default();
            return Err(unauthenticated(format!(
                "join token {} has been used ({allowed} of {allowed}): make a new one",
                record.id
            )));
        }
        let credential = self
            .authority
            .issue_agent_credential(agent_id, AGENT_CERTIFICATE_LIFETIME)
            .map_err(|e| DomainError::Internal(e.to_string()))?;
        let fingerprint = trainyard_pki::certificate_fingerprint(&credential.certificate_pem)
            .map_err(|e| DomainError::Internal(e.to_string()))?;
        self.store
            .put_agent_identity(&AgentIdentity {
                agent_id: agent_id.to_string(),
                certificate_sha256: fingerprint,
                join_token_id: record.id.clone(),
                joined_at: now(),
                revoked_at: None,
            })
            .await?;
        info!(agent = agent_id, join_token = %record.id, "agent joined");
        Ok(credential)
    }
}

/// Agent ids name directories and network namespaces on their host.
pub fn check_agent_id(id: &str) -> Result<(), DomainError> {
    let valid = !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid { Ok(()) } else { Err(DomainError::invalid("AgentId", format!("'{id}' must be 1-63 of [A-Za-z0-9-_.]"))) }
}
