//! The client side of the coordinator's API, shared by the CLI and the benchmarks: a channel, TLS
//! verified against the coordinator's CA for `coordinator.trainyard`, every request carrying an API
//! token. Plain text only when asked (`insecure`). With several coordinators (one leads, the others
//! stand by), [`connect_leader`] finds the leader.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::model::access::COORDINATOR_SERVER_NAME;

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

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
    #[error("the coordinator at {url} did not answer within {} s", after.as_secs())]
    NoAnswer { url: String, after: std::time::Duration },
    #[error("no coordinator of {tried} leads: {last}")]
    NoLeader { tried: String, last: String },
}

/// HOST:PORT of an address given as HOST:PORT or as a URL (`https://HOST:PORT/`).
fn bare_address(address: &str) -> &str {
    address.split("://").last().unwrap_or_default().trim_end_matches('/')
}

/// The metadata key under which a standby coordinator names the leader (HOST:PORT) in the
/// UNAVAILABLE answer it gives to every call.
pub const LEADER_HINT: &str = "trainyard-leader";

/// The leader a standby's answer names, if it names one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    let hint = status.metadata().get(LEADER_HINT)?.to_str().ok()?.trim();
    (status.code() == tonic::Code::Unavailable && !hint.is_empty()).then(|| hint.to_string())
}

/// The coordinators a client may reach (`HOST:PORT[,HOST:PORT...]`), tried in turn; a leader a
/// standby named is tried next, before the rotation goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinators {
    addresses: Vec<String>,
    turn: usize,
    hinted: Option<String>,
}

impl Coordinators {
    pub fn parse(list: &str) -> Result<Self, ConnectError> {
        let addresses: Vec<String> =
            list.split(',').map(|a| bare_address(a.trim()).to_string()).filter(|a| !a.is_empty()).collect();
        if addresses.is_empty() {
            return Err(ConnectError::Address(list.to_string()));
        }
        Ok(Self { addresses, turn: 0, hinted: None })
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The address to try now: the leader last named, else the next in the list.
    pub fn next_address(&mut self) -> String {
        if let Some(hinted) = self.hinted.take() {
            return hinted;
        }
        let address = self.addresses[self.turn].clone();
        self.turn = (self.turn + 1) % self.addresses.len();
        address
    }

    /// Remembers the leader `status` names, to be tried next; which one, if it names one.
    pub fn follow(&mut self, status: &tonic::Status) -> Option<String> {
        self.hinted = leader_hint(status);
        self.hinted.clone()
    }
}

/// Connects to whichever of `coordinators` leads. With one address, that one, unasked. With
/// several, each is asked the gRPC health check: a standby answers UNAVAILABLE naming the leader,
/// which is asked next; a coordinator that cannot be reached is passed over. Two rounds at most.
pub async fn connect_leader(
    coordinators: &mut Coordinators,
    ca_pem: Option<&str>,
    token: Option<&str>,
) -> Result<Transport, ConnectError> {
    if coordinators.addresses.len() == 1 {
        return connect(&coordinators.addresses[0], ca_pem, token).await;
    }
    let mut last = String::new();
    // A coordinator that answers but does not serve (its store is away: a leader cut off from the
    // database, which a standby is about to replace) is used only when none serves.
    let mut not_serving = None;
    for _ in 0..2 * coordinators.addresses.len() + 2 {
        let address = coordinators.next_address();
        let transport = match connect(&address, ca_pem, token).await {
            Ok(transport) => transport,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(transport.clone());
        let probe = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
        let Ok(probe) = tokio::time::timeout(CONNECT_TIMEOUT, probe).await else {
            last = format!("{address}: no answer within {} s", CONNECT_TIMEOUT.as_secs());
            continue;
        };
        match probe {
            Ok(answer) if answer.get_ref().status == SERVING => return Ok(transport),
            Ok(_) => {
                last = format!("{address}: not serving");
                not_serving.get_or_insert(transport);
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                coordinators.follow(&status);
                last = format!("{address}: {}", status.message());
            }
            Err(status) => last = format!("{address}: {}", status.message()),
        }
    }
    not_serving.ok_or_else(|| ConnectError::NoLeader { tried: coordinators.addresses.join(","), last })
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
    let address = bare_address(address);
    let url = format!("{}://{address}", if ca_pem.is_some() { "https" } else { "http" });
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|_| ConnectError::Address(address.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        // A coordinator that stops answering (paused, cut off) while the TCP connection stays
        // open is noticed within seconds, not when the kernel gives up: HTTP/2 pings, answered
        // by the server's connection task however busy the coordinator is.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(ca) = ca_pem {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(COORDINATOR_SERVER_NAME);
        if let Some(identity) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(identity.certificate_pem, identity.key_pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(ConnectError::Tls)?;
    }
    // Bounded as a whole: a coordinator that accepts TCP connections but does not answer
    // (paused) would otherwise hold the TLS handshake for ever.
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(connected) => connected.map_err(|source| ConnectError::Unreachable { url, source }),
        Err(_) => Err(ConnectError::NoAnswer { url, after: CONNECT_TIMEOUT }),
    }
}

/// A channel whose requests carry `token`.
pub fn with_token(channel: Channel, token: Option<&str>) -> Result<Transport, ConnectError> {
    let bearer = token
        .map(|t| format!("Bearer {}", t.trim()).parse::<MetadataValue<Ascii>>())
        .transpose()
        .map_err(|_| ConnectError::Token)?;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_rotate_and_a_named_leader_goes_first() {
        let mut c = Coordinators::parse("a:1, https://b:2/ ,c:3,").expect("list");
        assert_eq!(c.addresses(), ["a:1", "b:2", "c:3"]);
        assert_eq!([c.next_address(), c.next_address()], ["a:1", "b:2"]);
        let mut standby = tonic::Status::unavailable("a standby");
        standby.metadata_mut().insert(LEADER_HINT, "c:3".parse().expect("ascii"));
        assert_eq!(c.follow(&standby).as_deref(), Some("c:3"));
        assert_eq!(c.next_address(), "c:3", "the named leader");
        assert_eq!(c.next_address(), "c:3", "then the rotation goes on where it was");
        assert_eq!(c.next_address(), "a:1");
        // Only an UNAVAILABLE answer names a leader.
        let mut other = tonic::Status::not_found("x");
        other.metadata_mut().insert(LEADER_HINT, "b:2".parse().expect("ascii"));
        assert_eq!(c.follow(&other), None);
        assert!(Coordinators::parse(" , ").is_err());
    }
}
