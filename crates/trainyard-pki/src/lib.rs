//! The coordinator's certificate authority and the rustls configurations built on it.
//!
//! * [`Authority`] is created once, in the coordinator's data directory (`ca.pem`, `ca-key.pem`),
//!   and reloaded on every start.
//! * A distributed job that asks for `EnableInterContainerTrafficEncryption` gets a [`Credential`]:
//!   a key and a certificate valid only for that job's name ([`job_server_name`]). Its agents use it
//!   on both ends of the agent-to-agent hop ([`JobTls`]): the caller sends the job's name as SNI and
//!   presents the certificate; the callee answers with the same job's certificate and checks that
//!   the caller's certificate names the same job. A certificate for one job opens no other job.
//!
//! * The coordinator serves gRPC with a certificate for [`COORDINATOR_SERVER_NAME`] (and any names
//!   it is reached by), re-issued at every start; clients verify that name against the CA.
//! * An agent that joins receives a client certificate ([`Authority::issue_agent_credential`]);
//!   the coordinator knows agents by the SHA-256 of that certificate ([`certificate_fingerprint`]).
//! * A join token carries the CA's fingerprint, so an agent with nothing else can verify the
//!   coordinator on its first connection ([`PinnedCaVerifier`]).
//!
//! One crypto provider, [`crypto_provider`] (aws-lc-rs), named here alone: every process installs
//! it at start ([`install_crypto_provider`]); with two compiled in, rustls refuses to pick one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// The process's TLS crypto provider: aws-lc-rs, whose AES-GCM is faster than ring's on the hosts
/// measured (BENCHMARKS.md, the peer path).
pub fn crypto_provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Installs [`crypto_provider`] as the process's default, before any TLS configuration is built
/// (the libraries that build their own, tonic's and sqlx's among them, take the default).
pub fn install_crypto_provider() {
    // An error only says one is installed already: this one, as nothing else installs any.
    let _ = crypto_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("bad PEM in {0}")]
    Pem(&'static str),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("a server name: {0}")]
    ServerName(String),
    #[error("the peer's certificate is not valid for job {job}: {reason}")]
    WrongJob { job: String, reason: String },
}

/// The fixed subject of our CA: the issuer of every certificate is rebuilt from it and the stored
/// key, so reloading the CA needs no certificate parser.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Trainyard");
    name.push(DnType::CommonName, "Trainyard coordinator CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// The coordinator's certificate authority.
pub struct Authority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

impl Authority {
    /// Loads the CA from `dir`, creating it (valid for 10 years) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let io = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| PkiError::Io { what, path, source }
        };
        if cert_path.exists() && key_path.exists() {
            let certificate_pem = std::fs::read_to_string(&cert_path).map_err(io("reading", &cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
            let key = KeyPair::from_pem(&key_pem)?;
            return Ok(Self { certificate_pem, issuer: Issuer::new(ca_params(), key) });
        }
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let certificate_pem = params.self_signed(&key)?.pem();
        write_private(&key_path, &key.serialize_pem()).map_err(io("writing", &key_path))?;
        std::fs::write(&cert_path, &certificate_pem).map_err(io("writing", &cert_path))?;
        Ok(Self { certificate_pem, issuer: Issuer::new(ca_params(), key) })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Hex SHA-256 of the CA certificate: what join tokens carry.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        certificate_fingerprint(&self.certificate_pem)
    }

    /// The coordinator's own certificate: [`COORDINATOR_SERVER_NAME`] plus `names` (DNS names or IP
    /// addresses clients use). Its `certificate_pem` holds the chain (leaf, then the CA), so that a
    /// joining agent sees the CA it has pinned.
    pub fn issue_server_credential(&self, names: &[String], valid_for: Duration) -> Result<Credential, PkiError> {
        let mut sans = vec![COORDINATOR_SERVER_NAME.to_string()];
        sans.extend(names.iter().filter(|n| !n.is_empty()).cloned());
        sans.dedup();
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "Trainyard coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = self.sign(params, &key, valid_for)?;
        Ok(Credential {
            ca_pem: self.certificate_pem.clone(),
            certificate_pem: format!("{}{}", certificate.pem(), self.certificate_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// An agent's client certificate (no name: the coordinator knows it by its fingerprint).
    pub fn issue_agent_credential(&self, agent_id: &str, valid_for: Duration) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("agent {agent_id}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = self.sign(params, &key, valid_for)?;
        Ok(Credential {
            ca_pem: self.certificate_pem.clone(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        key: &KeyPair,
        valid_for: Duration,
    ) -> Result<rcgen::Certificate, PkiError> {
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64) as i64);
        Ok(params.signed_by(key, &self.issuer)?)
    }

    /// A key and certificate that let the agents of `job` talk to each other, valid from an hour
    /// ago (clocks differ) for `valid_for`.
    pub fn issue_job_credential(&self, job: &str, valid_for: Duration) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![job_server_name(job)])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("training job {job}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = self.sign(params, &key, valid_for)?;
        Ok(Credential {
            ca_pem: self.certificate_pem.clone(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

/// What one job's agents need for their mutual TLS: the CA to trust, the job's certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("certificate_pem", &self.certificate_pem).finish_non_exhaustive()
    }
}

/// The DNS name a job's certificate is issued for and its connections ask for (SNI). Job names may
/// differ only in case and reach 63 characters, so the name is a digest, not the job name itself.
pub fn job_server_name(job: &str) -> String {
    let digest = Sha256::digest(job.as_bytes());
    let hex = trainyard_model::hex::encode(&digest[..16]);
    format!("j{hex}.jobs.trainyard")
}

/// Both ends of one job's agent-to-agent connections.
#[derive(Debug, Clone)]
pub struct JobTls {
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    pub server_name: ServerName<'static>,
}

impl JobTls {
    pub fn new(job: &str, credential: &Credential) -> Result<Self, PkiError> {
        // TLS 1.3 with AES-128-GCM only: the cheapest suite with hardware support, and the bulk of a
        // job's peer traffic is encrypted twice per hop (once on each agent).
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
            ..crypto_provider()
        });
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(credential.ca_pem.as_bytes()) {
            roots.add(ca.map_err(|_| PkiError::Pem("the CA certificate"))?)?;
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(credential.certificate_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| PkiError::Pem("the job certificate"))?;
        let key =
            PrivateKeyDer::from_pem_slice(credential.key_pem.as_bytes()).map_err(|_| PkiError::Pem("the job key"))?;

        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        // The agents protect the records themselves once the handshake is done (rustls's kernel
        // connection), so they take the traffic secrets; no session is resumed, and no ticket sent
        // after the handshake.
        client.enable_secret_extraction = true;
        client.resumption = rustls::client::Resumption::disabled();
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        let server_name = ServerName::try_from(job_server_name(job))
            .map_err(|e| PkiError::WrongJob { job: job.into(), reason: e.to_string() })?;
        Ok(Self { client: Arc::new(client), server: Arc::new(server), server_name })
    }

    /// The client verifier has checked the chain to our CA; this checks that the certificate was
    /// issued for this job and not for another one.
    pub fn verify_peer_is_job(&self, job: &str, peer_chain: Option<&[CertificateDer<'_>]>) -> Result<(), PkiError> {
        let wrong = |reason: &str| PkiError::WrongJob { job: job.into(), reason: reason.into() };
        let leaf = peer_chain.and_then(|c| c.first()).ok_or_else(|| wrong("no certificate presented"))?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| wrong(&e.to_string()))?;
        cert.verify_is_valid_for_subject_name(&self.server_name).map_err(|e| wrong(&e.to_string()))
    }
}

pub use trainyard_model::access::COORDINATOR_SERVER_NAME;

/// Hex SHA-256 of the first certificate (DER) in a PEM text.
pub fn certificate_fingerprint(pem: &str) -> Result<String, PkiError> {
    let first = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(PkiError::Pem("a certificate"))?
        .map_err(|_| PkiError::Pem("a certificate"))?;
    Ok(der_fingerprint(&first))
}

/// Hex SHA-256 of a DER certificate.
pub fn der_fingerprint(der: &[u8]) -> String {
    trainyard_model::hex::encode(&Sha256::digest(der))
}

/// Accepts a server whose chain contains the CA with a given fingerprint and whose leaf that CA
/// signed for the requested name: how an agent trusts the coordinator on its first connection,
/// knowing only its join token. The CA it saw is kept ([`PinnedCaVerifier::ca_pem`]) for later
/// connections.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: std::sync::Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    pub fn new(fingerprint: &str) -> Arc<Self> {
        Arc::new(Self {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: Arc::new(crypto_provider()),
            seen: std::sync::Mutex::new(None),
        })
    }

    /// A client configuration that trusts only the pinned CA.
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig, PkiError> {
        Ok(ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth())
    }

    /// The pinned CA, as PEM, once a handshake has verified it.
    pub fn ca_pem(&self) -> Option<String> {
        let seen = self.seen.lock().ok()?.clone()?;
        Some(pem_of_certificate(&seen))
    }
}

fn pem_of_certificate(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| der_fingerprint(c) == self.fingerprint).ok_or_else(|| {
            rustls::Error::General(
                "the coordinator's CA does not match the fingerprint in the join token (wrong coordinator, \
                 or a CA created after the token)"
                    .into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
