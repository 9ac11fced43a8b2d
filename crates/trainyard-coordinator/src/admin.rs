//! `trainyard-coordinator tokens ...`, `join-token` and `backup`: administration without a running
//! server (or beside it), against the same data directory and database (how the first admin token
//! is made).

use std::sync::Arc;

use trainyard_model::{DomainError, Timestamp};

use crate::auth::Auth;
use crate::config::{AdminCommand, Config, TokensCommand};

pub async fn run(
    command: AdminCommand,
    store: &Arc<dyn trainyard_store::Store>,
    auth: &Arc<Auth>,
    config: &Config,
) -> anyhow::Result<()> {
    let about_tokens = !matches!(command, AdminCommand::Backup { .. });
    if config.insecure && about_tokens {
        anyhow::bail!("this coordinator is configured with --insecure: it uses no tokens");
    }
    let ca = config.data_dir.join("pki/ca.pem");
    match command {
        AdminCommand::Tokens(TokensCommand::Create { user, scope, description, expires_in, access_key }) => {
            let (token, record, access) =
                auth.create_api_token(&user, scope, &description, expires_in, access_key).await.map_err(plain)?;
            println!("{token}");
            if let Some((id, secret)) = access {
                println!("AWS_ACCESS_KEY_ID={id}\nAWS_SECRET_ACCESS_KEY={secret}");
            }
            eprintln!(
                "token {} for user {user}, scope {scope}{}. It is shown only now. Clients use it with:\n  \
                 export TRAINYARD_TOKEN={token}\n  export TRAINYARD_CA_FILE={}",
                record.id,
                record.expires_at.map(|t| format!(", expires {t}")).unwrap_or_default(),
                ca.display()
            );
        }
        AdminCommand::Tokens(TokensCommand::List) => {
            println!(
                "{:<12}  {:<4}  {:<16}  {:<6}  {:<24}  {:<24}  DESCRIPTION",
                "ID", "KIND", "USER", "SCOPE", "CREATED", "STATE"
            );
            for t in auth.list_tokens().await.map_err(plain)? {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(at)) if at <= crate::core::now() => format!("expired {at}"),
                    (None, Some(at)) => format!("until {at}"),
                    (None, None) => "valid".into(),
                };
                let scope = t.scope.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<12}  {:<4}  {:<16}  {:<6}  {:<24}  {:<24}  {}",
                    t.id,
                    t.kind.as_str(),
                    t.user,
                    scope,
                    t.created_at.to_string(),
                    state,
                    t.description
                );
            }
        }
        AdminCommand::Tokens(TokensCommand::Revoke { id }) => {
            auth.revoke_token(&id).await.map_err(plain)?;
            eprintln!("token {id} revoked");
        }
        AdminCommand::JoinToken { expires_in, description, uses, agent_id } => {
            let (token, record) = auth
                .create_join_token("admin", &description, expires_in, uses, agent_id.as_deref())
                .await
                .map_err(plain)?;
            println!("{token}");
            eprintln!(
                "join token {} for {} agent(s){}, valid until {}: give it to the agent once in TRAINYARD_JOIN_TOKEN \
                 or a file named by --join-token-file (a command line is readable by every local user)",
                record.id,
                record.uses_allowed.unwrap_or(1),
                record.agent_id.as_ref().map(|a| format!(" joining as '{a}'")).unwrap_or_default(),
                record.expires_at.unwrap_or(Timestamp::from_millis(0))
            );
        }
        AdminCommand::Backup { to } => {
            store.backup_to(&to).await?;
            eprintln!("the database is copied to {}", to.display());
        }
    }
    Ok(())
}

fn plain(e: DomainError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
