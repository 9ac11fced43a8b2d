use super::*;
use rustls::{ClientConnection, ServerConnection};

/// Drives a client and a server handshake in memory; returns the server side once both are done.
fn handshake(client: &JobTls, server: &JobTls) -> Result<ServerConnection, rustls::Error> {
    let mut c = ClientConnection::new(client.client.clone(), client.server_name.clone())?;
    let mut s = ServerConnection::new(server.server.clone())?;
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
