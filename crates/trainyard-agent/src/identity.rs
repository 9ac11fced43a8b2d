//! How this agent proves who it is. On its first start it joins: the join token carries the
//! fingerprint of the coordinator's CA, so the agent verifies the coordinator before sending
//! anything, then trades the token for its own client certificate, kept in the identity directory.
//! Every later connection is mutual TLS with that certificate. With `--insecure` there is none of
//! this: plain text, for a coordinator started with `--insecure` on the same host.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tonic::transport::Channel;
use tracing::info;
use trainyard_model::access::TokenText;
use trainyard_pki::{COORDINATOR_SERVER_NAME, PinnedCaVerifier};
use trainyard_proto::client::ClientIdentity;
use trainyard_proto::pb;
use trainyard_proto::pb::agents_client::AgentsClient;

use crate::config::Config;

/// What an agent that has joined keeps.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

const AGENT_ID: &str = "agent-id";
const CA: &str = "ca.pem";
const CERTIFICATE: &str = "agent.pem";
const KEY: &str = "agent-key.pem";

/// A failure worth retrying (the coordinator is not reachable yet) or not (the token is wrong).
pub enum JoinError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

/// The identity this agent joined with, joining first if it has none.
pub async fn load_or_join(config: &Config, coordinator: &str) -> Result<Identity, JoinError> {
    let dir = &config.identity_dir;
    if let Some(identity) = load(dir, &config.id).map_err(JoinError::Fatal)? {
        return Ok(identity);
    }
    let Some(token) = &config.join_token else {
        return Err(JoinError::Fatal(anyhow!(
            "this agent has not joined yet ({} holds no certificate): start it once with a join token in \
             TRAINYARD_JOIN_TOKEN or a file named by --join-token-file (from `trainyard-coordinator join-token` \
             or `trainyard join-token`)",
            dir.display()
        )));
    };
    let parsed = TokenText::parse(token).map_err(|e| JoinError::Fatal(anyhow!("--join-token: {e}")))?;
    let fingerprint =
        parsed.ca_fingerprint.ok_or_else(|| JoinError::Fatal(anyhow!("--join-token: this is not a join token")))?;
    let ca_pem = learn_ca(coordinator, &fingerprint).await?;
    let channel = connect(coordinator, &ca_pem, None).await.map_err(JoinError::Retry)?;
    let answer = AgentsClient::new(channel)
        .join(pb::JoinRequest { join_token: token.clone(), agent_id: config.id.clone() })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                JoinError::Retry(anyhow!("joining: {}", status.message()))
            }
            _ => JoinError::Fatal(anyhow!("the coordinator refused to let this agent join: {}", status.message())),
        })?
        .into_inner();
    let identity = Identity { ca_pem: answer.ca_pem, certificate_pem: answer.certificate_pem, key_pem: answer.key_pem };
    save(dir, &config.id, &identity).map_err(JoinError::Fatal)?;
    info!(agent = %config.id, dir = %dir.display(), "joined: certificate received");
    Ok(identity)
}

/// A TLS handshake that trusts only the CA the join token names; returns that CA.
async fn learn_ca(coordinator: &str, fingerprint: &str) -> Result<String, JoinError> {
    let verifier = PinnedCaVerifier::new(fingerprint);
    let config = verifier.client_config().map_err(|e| JoinError::Fatal(e.into()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(coordinator))
        .await
        .map_err(|_| JoinError::Retry(anyhow!("connecting to {coordinator}: timed out")))?
        .map_err(|e| JoinError::Retry(anyhow!("connecting to {coordinator}: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(COORDINATOR_SERVER_NAME)
        .map_err(|e| JoinError::Fatal(anyhow!("{e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| JoinError::Fatal(anyhow!("verifying the coordinator at {coordinator}: {e}")))?;
    verifier.ca_pem().ok_or_else(|| JoinError::Fatal(anyhow!("the coordinator presented no CA")))
}

fn load(dir: &Path, agent_id: &str) -> anyhow::Result<Option<Identity>> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let owner = match read(AGENT_ID) {
        Ok(owner) => owner,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join(AGENT_ID).display())),
    };
    if owner.trim() != agent_id {
        bail!(
            "{} holds the identity of agent '{}', not '{agent_id}': use another --identity-dir, or the same --id",
            dir.display(),
            owner.trim()
        );
    }
    let context = |name: &str| format!("reading {}", dir.join(name).display());
    Ok(Some(Identity {
        ca_pem: read(CA).with_context(|| context(CA))?,
        certificate_pem: read(CERTIFICATE).with_context(|| context(CERTIFICATE))?,
        key_pem: read(KEY).with_context(|| context(KEY))?,
    }))
}

/// Written key first and the agent id last: a crash in between leaves no half identity that
/// `load` would accept.
fn save(dir: &Path, agent_id: &str, identity: &Identity) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("writing {}", path.display()))
    };
    write(KEY, &identity.key_pem, 0o600)?;
    write(CERTIFICATE, &identity.certificate_pem, 0o644)?;
    write(CA, &identity.ca_pem, 0o644)?;
    write(AGENT_ID, agent_id, 0o644)
}

/// A channel to the coordinator: TLS verified against `ca_pem` for `coordinator.trainyard`,
/// presenting `identity` when given.
pub async fn connect(coordinator: &str, ca_pem: &str, identity: Option<&Identity>) -> anyhow::Result<Channel> {
    let identity = identity.map(|i| ClientIdentity { certificate_pem: &i.certificate_pem, key_pem: &i.key_pem });
    Ok(trainyard_proto::client::channel(coordinator, Some(ca_pem), identity).await?)
}

/// A plain-text channel (`--insecure`).
pub async fn connect_insecure(coordinator: &str) -> anyhow::Result<Channel> {
    Ok(trainyard_proto::client::channel(coordinator, None, None).await?)
}
