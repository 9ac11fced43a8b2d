//! The peer path's cipher alone: TLS 1.3 with AES-128-GCM (the only suite jobs' agents offer each
//! other) through rustls in memory on one core, for each crypto provider compiled in: aws-lc-rs
//! (the product's) always, ring when the bench is built with `--features ring`. It says what the
//! provider gives the mutual-TLS figure of the peers suite; nothing else of the product moves.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection, SupportedCipherSuite};

/// What each direction moves per measurement, and per write: the forwarder's buffer size.
const TOTAL_BYTES: usize = 512 << 20;
const CHUNK: usize = 256 * 1024;
const ROUNDS: usize = 3;

/// A provider's name, its constructor, and its TLS 1.3 AES-128-GCM suite.
type Provider = (&'static str, fn() -> CryptoProvider, SupportedCipherSuite);

struct Measured {
    provider: &'static str,
    seal_mib_s: f64,
    open_mib_s: f64,
}

pub fn run() -> anyhow::Result<()> {
    #[allow(unused_mut)] // pushed to with ring
    let mut providers: Vec<Provider> = vec![(
        "aws-lc-rs",
        rustls::crypto::aws_lc_rs::default_provider,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    )];
    #[cfg(feature = "ring")]
    providers.push((
        "ring",
        rustls::crypto::ring::default_provider,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ));
    // Rounds taking turns, the best of each kept: on a shared VM a neighbour's burst (or the
    // clock ramping up) would otherwise decide which provider looks faster.
    let mut rows: Vec<Measured> = Vec::new();
    for _ in 0..ROUNDS {
        for (name, provider, suite) in &providers {
            let m = measure(name, provider(), *suite)?;
            match rows.iter_mut().find(|r| r.provider == m.provider) {
                Some(best) => {
                    best.seal_mib_s = best.seal_mib_s.max(m.seal_mib_s);
                    best.open_mib_s = best.open_mib_s.max(m.open_mib_s);
                }
                None => rows.push(m),
            }
        }
    }
    println!(
        "{:<44} {:>14} {:>14} {:>16}",
        "TLS 1.3 AES-128-GCM, rustls, one core, best of 3", "seal MiB/s", "open MiB/s", "both ends MiB/s"
    );
    for r in &rows {
        // One byte through a hop is sealed once and opened once, on different agents' cores; the
        // last column is what one core doing both would move.
        let both = 1.0 / (1.0 / r.seal_mib_s + 1.0 / r.open_mib_s);
        println!("{:<44} {:>14.0} {:>14.0} {:>16.0}", r.provider, r.seal_mib_s, r.open_mib_s, both);
    }
    if rows.len() == 1 {
        println!("(ring: build the bench with --features ring to compare)");
    }
    Ok(())
}

fn measure(name: &'static str, base: CryptoProvider, suite: SupportedCipherSuite) -> anyhow::Result<Measured> {
    let provider = Arc::new(CryptoProvider { cipher_suites: vec![suite], ..base });
    let certified = rcgen::generate_simple_self_signed(vec!["peer.bench".to_string()])?;
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate)?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = ClientConnection::new(Arc::new(client_config), ServerName::try_from("peer.bench")?.to_owned())?;
    let mut server = ServerConnection::new(Arc::new(server_config))?;
    while client.is_handshaking() || server.is_handshaking() {
        let mut wire = Vec::new();
        client.write_tls(&mut wire)?;
        deliver(&wire, &mut *server)?;
        wire.clear();
        server.write_tls(&mut wire)?;
        deliver(&wire, &mut *client)?;
    }

    let plaintext = vec![0x5au8; CHUNK];
    let mut received = vec![0u8; CHUNK];
    let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
    let mut wire = Vec::with_capacity(CHUNK + CHUNK / 8);
    let mut moved = 0;
    while moved < TOTAL_BYTES {
        wire.clear();
        let started = Instant::now();
        let mut written = 0;
        while written < plaintext.len() {
            written += client.writer().write(&plaintext[written..])?;
            while client.wants_write() {
                client.write_tls(&mut wire)?;
            }
        }
        sealing += started.elapsed();
        let started = Instant::now();
        let mut read = 0;
        let mut rest = &wire[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest)?;
            server.process_new_packets().context("opening a record")?;
            loop {
                match server.reader().read(&mut received) {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        opening += started.elapsed();
        anyhow::ensure!(read == plaintext.len(), "{name}: {read} of {} bytes came through", plaintext.len());
        moved += read;
    }
    let mib = moved as f64 / (1024.0 * 1024.0);
    Ok(Measured { provider: name, seal_mib_s: mib / sealing.as_secs_f64(), open_mib_s: mib / opening.as_secs_f64() })
}

/// Feeds one side's TLS bytes to the other and lets it process them (the handshake).
fn deliver<Side>(wire: &[u8], to: &mut rustls::ConnectionCommon<Side>) -> anyhow::Result<()> {
    let mut rest = wire;
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
        to.process_new_packets()?;
    }
    Ok(())
}
