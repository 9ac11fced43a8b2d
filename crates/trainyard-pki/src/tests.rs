use super::*;
use rustls::{ClientConnection, ServerConnection};

/// Drives a client and a server handshake in memory; returns the server side once both are done.
fn handshake(client: &JobTls, server: &JobTls) -> Result<ServerConnection, rustls::Error> {
    handshake_with(client.client.clone(), client.server_name.clone(), server.server.clone())
}

fn handshake_with(
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
    server: Arc<ServerConfig>,
) -> Result<ServerConnection, rustls::Error> {
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        if !wire.is_empty() {
            s.read_tls(&mut &wire[..]).map_err(|e| rustls::Error::General(e.to_string()))?;
            s.process_new_packets()?;
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        if !wire.is_empty() {
            c.read_tls(&mut &wire[..]).map_err(|e| rustls::Error::General(e.to_string()))?;
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s);
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

fn tls(ca: &Authority, job: &str) -> JobTls {
    let credential = ca.issue_job_credential(job, Duration::from_secs(3600)).expect("issue");
    JobTls::new(job, &credential).expect("tls")
}

#[test]
fn the_ca_is_created_once_and_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Authority::load_or_create(dir.path()).expect("create");
    let second = Authority::load_or_create(dir.path()).expect("reload");
    assert_eq!(first.certificate_pem(), second.certificate_pem());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(CA_KEY)).expect("key").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the CA key is private to its owner");
    // A certificate issued after the reload chains to the certificate written at creation.
    let before = tls(&first, "job-a");
    let after = tls(&second, "job-a");
    let server = handshake(&before, &after).expect("same CA, same job");
    after.verify_peer_is_job("job-a", server.peer_certificates()).expect("the caller is job-a");
}

#[test]
fn a_certificate_opens_only_its_own_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load_or_create(dir.path()).expect("ca");
    let a = tls(&ca, "job-a");
    let b = tls(&ca, "job-b");
    // Job b's agent cannot pass for job a's: its server certificate does not name job a.
    let err = handshake(&a, &b).expect_err("wrong server");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A caller holding job b's certificate but asking for job a gets through the TLS layer (same
    // CA) and is refused by the job check.
    let b_asking_for_a =
        JobTls { client: b.client.clone(), server: b.server.clone(), server_name: a.server_name.clone() };
    let server = handshake(&b_asking_for_a, &a).expect("chain is valid");
    let err = a.verify_peer_is_job("job-a", server.peer_certificates()).expect_err("job b's certificate");
    assert!(matches!(err, PkiError::WrongJob { .. }), "{err}");
}

#[test]
fn another_authority_is_not_trusted() {
    let ours = Authority::load_or_create(tempfile::tempdir().expect("tempdir").path()).expect("ca");
    let theirs = Authority::load_or_create(tempfile::tempdir().expect("tempdir").path()).expect("ca");
    assert!(handshake(&tls(&theirs, "job-a"), &tls(&ours, "job-a")).is_err());
    assert!(handshake(&tls(&ours, "job-a"), &tls(&theirs, "job-a")).is_err());
}

#[test]
fn server_names_are_valid_dns_names_and_case_sensitive() {
    let upper = job_server_name("Job-A");
    let lower = job_server_name("job-a");
    assert_ne!(upper, lower);
    for name in [upper, lower, job_server_name(&"x".repeat(63))] {
        assert!(ServerName::try_from(name.clone()).is_ok(), "{name}");
        assert!(name.split('.').all(|label| label.len() <= 63));
    }
}

/// The coordinator's server side: its credential, and client certificates optional (agents have
/// one, the CLI does not).
fn coordinator_server(ca: &Authority, names: &[String]) -> Arc<ServerConfig> {
    let provider = Arc::new(crate::crypto_provider());
    let credential = ca.issue_server_credential(names, Duration::from_secs(3600)).expect("issue");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(credential.certificate_pem.as_bytes()).collect::<Result<_, _>>().expect("pem");
    assert_eq!(chain.len(), 2, "leaf and CA");
    let key = PrivateKeyDer::from_pem_slice(credential.key_pem.as_bytes()).expect("key");
    let mut roots = RootCertStore::empty();
    roots.add(chain[1].clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .expect("verifier");
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("config"),
    )
}

fn coordinator_name() -> ServerName<'static> {
    ServerName::try_from(COORDINATOR_SERVER_NAME).expect("name")
}

#[test]
fn a_join_token_fingerprint_pins_the_coordinators_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Authority::load_or_create(dir.path()).expect("ca");
    let server = coordinator_server(&ca, &["10.0.0.5".into()]);
    let fingerprint = ca.fingerprint().expect("fingerprint");
    assert_eq!(fingerprint.len(), 64);

    let pinned = PinnedCaVerifier::new(&fingerprint);
    assert_eq!(pinned.ca_pem(), None, "nothing seen before a handshake");
    handshake_with(Arc::new(pinned.client_config().expect("config")), coordinator_name(), server.clone())
        .expect("the pinned CA is accepted");
    let learned = pinned.ca_pem().expect("the CA was kept");
    assert_eq!(certificate_fingerprint(&learned).expect("fp"), fingerprint);
    assert_eq!(learned, ca.certificate_pem(), "the learned CA is the coordinator's, byte for byte");

    // Another CA (another coordinator, or an attacker's): refused.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = Authority::load_or_create(other_dir.path()).expect("ca");
    let impostor = coordinator_server(&other, &[]);
    let wrong = PinnedCaVerifier::new(&fingerprint);
    let err = handshake_with(Arc::new(wrong.client_config().expect("config")), coordinator_name(), impostor)
        .expect_err("an impostor is refused");
    assert!(err.to_string().contains("does not match the fingerprint"), "{err}");
    assert_eq!(wrong.ca_pem(), None);

    // The right CA but a name the certificate does not carry: refused.
    let unnamed = PinnedCaVerifier::new(&fingerprint);
    let name = ServerName::try_from("elsewhere.example").expect("name");
    assert!(handshake_with(Arc::new(unnamed.client_config().expect("config")), name, server.clone()).is_err());
    let by_ip = ServerName::try_from("10.0.0.5").expect("ip");
    assert!(handshake_with(Arc::new(unnamed.client_config().expect("config")), by_ip, server).is_ok());
}

#[test]
fn agent_certificates_authenticate_to_the_coordinator_and_are_known_by_fingerprint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Authority::load_or_create(dir.path()).expect("ca");
    let server = coordinator_server(&ca, &[]);
    let agent = ca.issue_agent_credential("gpu-1", Duration::from_secs(3600)).expect("issue");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(agent.ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(agent.certificate_pem.as_bytes()).collect::<Result<_, _>>().expect("pem");
    let key = PrivateKeyDer::from_pem_slice(agent.key_pem.as_bytes()).expect("key");
    let client = ClientConfig::builder_with_provider(Arc::new(crate::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.clone(), key)
        .expect("client");
    let connection = handshake_with(Arc::new(client), coordinator_name(), server).expect("handshake");
    let presented = connection.peer_certificates().expect("the agent presented its certificate");
    assert_eq!(der_fingerprint(&presented[0]), certificate_fingerprint(&agent.certificate_pem).expect("fp"));
    let second = ca.issue_agent_credential("gpu-1", Duration::from_secs(3600)).expect("issue");
    assert_ne!(
        certificate_fingerprint(&second.certificate_pem).expect("fp"),
        certificate_fingerprint(&agent.certificate_pem).expect("fp"),
        "each join gets its own certificate"
    );
}
