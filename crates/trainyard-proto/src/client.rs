//! The client side of the coordinator's API, shared by the CLI and the benchmarks: a channel, TLS
//! verified against the coordinator's CA for `coordinator.trainyard`, every request carrying an API
//! token. Plain text only when asked (`insecure`).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::model::access::COORDINATOR_SERVER_NAME;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What every client of the coordinator is built on.
pub type Transport = InterceptedService<Channel, Bearer>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("'{0}' is not an address")]
    Address(String),
    #[error("the token contains characters a header cannot carry")]
    Token,
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot reach the coordinator at {url}: {source}")]
    Unreachable { url: String, source: tonic::transport::Error },
}

/// Connects to `address` (HOST:PORT): TLS trusting `ca_pem`, or plain text when it is None.
pub async fn connect(address: &str, ca_pem: Option<&str>, token: Option<&str>) -> Result<Transport, ConnectError> {
    with_token(channel(address, ca_pem, None).await?, token)
}

/// A client certificate and its key (PEM): how an agent proves who it is.
pub struct ClientIdentity<'a> {
    pub certificate_pem: &'a str,
    pub key_pem: &'a str,
}

/// A channel to `address` (HOST:PORT, or a URL): TLS trusting `ca_pem` for the coordinator's name,
/// presenting `identity` when given; plain text when `ca_pem` is None. The CLI, the agents and the
/// benchmarks all connect through here.
pub async fn channel(
    address: &str,
    ca_pem: Option<&str>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<Channel, ConnectError> {
    let address = address.split("://").last().unwrap_or_default().trim_end_matches('/');
    let url = format!("{}://{address}", if ca_pem.is_some() { "https" } else { "http" });
    let mut endpoint = Channel::from_shared(url.clone()).map_err(|_| ConnectError::Address(address.to_string()))?;
    if let Some(ca) = ca_pem {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(COORDINATOR_SERVER_NAME);
        if let Some(identity) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(identity.certificate_pem, identity.key_pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(ConnectError::Tls)?;
    }
    endpoint.connect().await.map_err(|source| ConnectError::Unreachable { url, source })
}

/// A channel whose requests carry `token`.
pub fn with_token(channel: Channel, token: Option<&str>) -> Result<Transport, ConnectError> {
    let bearer = token
        .map(|t| format!("Bearer {}", t.trim()).parse::<MetadataValue<Ascii>>())
        .transpose()
        .map_err(|_| ConnectError::Token)?;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}
