//! Each end is checked against rustls's own buffered connection (tokio-rustls) as the other end,
//! so a record sealed or opened wrongly here fails the other side's integrity check; and both ends
//! of this module together, as two agents run them.

use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trainyard_pki::{Authority, JobTls};

fn job_tls(job: &str) -> (tempfile::TempDir, JobTls) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load_or_create(dir.path()).expect("ca");
    let credential = ca.issue_job_credential(job, Duration::from_secs(3600)).expect("issue");
    (dir, JobTls::new(job, &credential).expect("tls"))
}

/// Bytes that differ from one offset to the next, so a dropped, repeated or reordered record shows.
fn pattern(length: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

async fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let near = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
    let (far, _) = listener.accept().await.expect("accept");
    (near, far)
}

/// The program's side of a relayed connection (or rustls's end): sends `bytes` and ends its
/// sending, while it reads until the other side ends. What it read.
async fn program<S>(stream: S, bytes: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sending = tokio::spawn(async move {
        writer.write_all(&bytes).await.expect("program writes");
        writer.shutdown().await.expect("program ends its sending");
    });
    let mut received = Vec::new();
    reader.read_to_end(&mut received).await.expect("program reads");
    sending.await.expect("sender");
    received
}

async fn read_line_from<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut line = Vec::new();
    loop {
        match stream.read_u8().await.expect("a line") {
            b'\n' => return line,
            byte => line.push(byte),
        }
    }
}

fn within<F: std::future::Future>(future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(30), future)
}

/// Relays `peer` to a program that sends `to_rustls`, while rustls's end (`rustls_end`, which
/// returns what it received) sends `to_program`: each must receive all the other sent, in order,
/// and the relay end cleanly.
async fn relay_against_rustls(
    peer: PeerTls,
    to_rustls: Vec<u8>,
    to_program: &[u8],
    rustls_end: tokio::task::JoinHandle<Vec<u8>>,
) {
    let (near, far) = loopback_pair().await;
    let relay = tokio::spawn(peer.relay(far));
    let received = within(program(near, to_rustls.clone())).await.expect("in time");
    assert!(received == to_program, "the program received {} bytes of {}", received.len(), to_program.len());
    let at_rustls = rustls_end.await.expect("rustls end");
    assert!(at_rustls == to_rustls, "rustls received {} bytes of {}", at_rustls.len(), to_rustls.len());
    relay.await.expect("relay").expect("the relay ends cleanly when both directions have");
}

/// The accepting end of `listener`'s next connection, once it has read the caller's `hi` and
/// answered `OK`.
async fn accepted_with_header(listener: TcpListener, server: Arc<ServerConfig>) -> PeerTls {
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut peer = accept(tcp, |_| Ok(server)).await.expect("handshake");
    assert_eq!(peer.read_line(16).await.expect("header"), "hi");
    peer.send(b"OK\n").await.expect("answer");
    peer
}

/// A connection made to `address`, once it has sent `hi` and been answered `OK` (in time: through
/// a man in the middle, an accepting end that failed answers nothing).
async fn called_with_header(address: std::net::SocketAddr, tls: &JobTls) -> PeerTls {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let mut caller = connect(tcp, tls.client.clone(), tls.server_name.clone()).await.expect("handshake");
    caller.send(b"hi\n").await.expect("header");
    let answer = within(caller.read_line(16)).await.expect("an answer in time (the accepting end failed?)");
    assert_eq!(answer.expect("answer"), "OK");
    caller
}

#[tokio::test]
async fn a_connection_made_here_carries_both_ways_to_rustls_with_key_updates_from_both_ends() {
    let (_ca, tls) = job_tls("job-a");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (to_rustls, to_program) = (pattern(3 * 1024 * 1024 + 7, 1), pattern(2 * 1024 * 1024 + 5, 2));
    let server_config = tls.server.clone();
    let sent_back = to_program.clone();
    let rustls_end = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = tokio_rustls::TlsAcceptor::from(server_config).accept(tcp).await.expect("handshake");
        assert_eq!(read_line_from(&mut tls).await, b"hello");
        // rustls updates its keys and asks this module to update its own (§4.6.3): its KeyUpdate
        // goes before its next application data.
        tls.get_mut().1.refresh_traffic_keys().expect("key update");
        tls.write_all(b"OK\n").await.expect("answer");
        let mut received = Vec::new();
        tls.read_to_end(&mut received).await.expect("read until close_notify");
        // Asked again once this module has ended its sending: it updates its receiving keys and
        // sends nothing more.
        tls.get_mut().1.refresh_traffic_keys().expect("key update");
        tls.write_all(&sent_back).await.expect("write");
        tls.shutdown().await.expect("close_notify");
        received
    });

    let tcp = TcpStream::connect(address).await.expect("connect");
    let mut peer = connect(tcp, tls.client.clone(), tls.server_name.clone()).await.expect("handshake");
    // A KeyUpdate of this side's own every few dozen records, not after millions.
    peer.records_per_key = SLOTS as u64 + 8;
    peer.send(b"hello\n").await.expect("send");
    assert_eq!(peer.read_line(16).await.expect("answer"), "OK");
    relay_against_rustls(peer, to_rustls, &to_program, rustls_end).await;
}

#[tokio::test]
async fn a_connection_accepted_here_takes_its_configuration_by_sni_and_carries_both_ways_to_rustls() {
    let (_ca, tls) = job_tls("job-b");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (from_rustls, to_rustls) = (pattern(1024 * 1024 + 3, 3), pattern(5 * 1024 * 1024 + 1, 4));
    let (client_config, name) = (tls.client.clone(), tls.server_name.clone());
    let sent = from_rustls.clone();
    let rustls_end = tokio::spawn(async move {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(client_config).connect(name, tcp).await.expect("handshake");
        tls.write_all(b"TRAINYARD-PEER/1 job-b 1 2 80\n").await.expect("header");
        tls.flush().await.expect("flush");
        assert_eq!(read_line_from(&mut tls).await, b"OK");
        program(tls, sent).await
    });

    let (tcp, _) = listener.accept().await.expect("accept");
    let expected = tls.server_name.to_str().into_owned();
    let server = tls.server.clone();
    let mut asked = None;
    let mut peer = accept(tcp, |sni| {
        asked = sni.map(str::to_string);
        Ok(server)
    })
    .await
    .expect("handshake");
    assert_eq!(asked.as_deref(), Some(expected.as_str()), "the SNI the client asked for");
    tls.verify_peer_is_job("job-b", Some(peer.peer_certificates())).expect("the client presented job-b's certificate");
    assert_eq!(peer.read_line(64).await.expect("header"), "TRAINYARD-PEER/1 job-b 1 2 80");
    peer.send(b"OK\n").await.expect("answer");
    relay_against_rustls(peer, to_rustls, &from_rustls, rustls_end).await;
}

/// Two agents' ends joined, each relaying its program: one program ends its sending long before
/// the other, whose bytes must all still arrive (half-close), and both directions at once; each
/// program's socket on the agent's side keeps a bounded receive buffer meanwhile.
#[tokio::test]
async fn two_ends_made_here_relay_both_ways_at_once_and_half_close() {
    let (_ca, tls) = job_tls("job-c");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepting = tokio::spawn(accepted_with_header(listener, tls.server.clone()));
    let caller = called_with_header(address, &tls).await;
    let callee = accepting.await.expect("accepting end");

    let (caller_program, caller_far) = loopback_pair().await;
    let (callee_program, callee_far) = loopback_pair().await;
    let probes = [&caller_far, &callee_far].map(|far| std::os::fd::AsFd::as_fd(far).try_clone_to_owned().expect("dup"));
    let relays = [tokio::spawn(caller.relay(caller_far)), tokio::spawn(callee.relay(callee_far))];
    let (short, long) = (pattern(10, 5), pattern(8 * 1024 * 1024 + 11, 6));
    let (at_callee, at_caller) =
        within(async { tokio::join!(program(callee_program, long.clone()), program(caller_program, short.clone())) })
            .await
            .expect("in time");
    assert!(at_caller == long, "the caller's program received {} bytes of {}", at_caller.len(), long.len());
    assert_eq!(at_callee, short);
    for probe in probes {
        // Linux reports twice what was set: the other half is its bookkeeping.
        let buffer = rustix::net::sockopt::socket_recv_buffer_size(&probe).expect("SO_RCVBUF");
        assert_eq!(buffer, 2 * LOCAL_RECEIVE_BUFFER, "the local program's socket on the agent's side");
    }
    for relay in relays {
        relay.await.expect("relay").expect("clean end");
    }
}

#[tokio::test]
async fn an_sni_no_job_answers_to_is_closed_without_a_word() {
    let (_ca, tls) = job_tls("job-d");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        accept(tcp, |sni| Err(format!("{sni:?}: no encrypted job of that name runs here"))).await.map(|_| ())
    });
    let tcp = TcpStream::connect(address).await.expect("connect");
    let called = connect(tcp, tls.client.clone(), tls.server_name.clone()).await;
    assert!(matches!(called, Err(HandshakeError::Closed)), "the caller sees the close as a refusal");
    let refused = accepting.await.expect("accepting end").expect_err("refused");
    assert!(refused.to_string().contains("no encrypted job"), "{refused}");
}

/// A man in the middle between a caller and `server`, forwarding both ways. The caller's bytes
/// wait `hold` before each read, so what it sends back to back arrives at `server` in one piece;
/// once `tamper` is notified, each piece's first record is changed by `change`.
async fn man_in_the_middle(
    server: std::net::SocketAddr,
    hold: Duration,
    tamper: Arc<tokio::sync::Notify>,
    change: fn(&mut [u8]),
) -> std::net::SocketAddr {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = proxy.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut caller, _) = proxy.accept().await.expect("accept");
        let mut callee = TcpStream::connect(server).await.expect("connect");
        let (mut from_caller, mut to_caller) = caller.split();
        let (mut from_callee, mut to_callee) = callee.split();
        let forward = async {
            let mut buffer = vec![0; 256 * 1024];
            let mut armed = false;
            loop {
                tokio::time::sleep(hold).await;
                tokio::select! {
                    biased;
                    _ = tamper.notified(), if !armed => armed = true,
                    read = from_caller.read(&mut buffer) => {
                        let read = read.expect("read");
                        if read == 0 { return; }
                        if armed {
                            change(&mut buffer[..read]);
                        }
                        to_callee.write_all(&buffer[..read]).await.expect("write");
                    }
                }
            }
        };
        let back = tokio::io::copy(&mut from_callee, &mut to_caller);
        let _ = tokio::join!(forward, back);
    });
    address
}

/// Both ends made here, the caller through `man_in_the_middle`: the accepting end's relay's result
/// and what its program received, after the caller's program sent `sent` and ended.
async fn through_the_middle(
    hold: Duration,
    tamper_after_headers: Option<fn(&mut [u8])>,
    sent: Vec<u8>,
) -> (Result<(), String>, Vec<u8>) {
    let (_ca, tls) = job_tls("job-e");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tamper = Arc::new(tokio::sync::Notify::new());
    let change = tamper_after_headers.unwrap_or(|_| {});
    let middle = man_in_the_middle(listener.local_addr().expect("address"), hold, tamper.clone(), change).await;
    let server = tls.server.clone();
    let accepting = tokio::spawn(async move {
        let peer = accepted_with_header(listener, server).await;
        let (near, far) = loopback_pair().await;
        let relayed = peer.relay(far);
        let read = async move {
            let mut near = near;
            let mut received = Vec::new();
            let _ = near.read_to_end(&mut received).await;
            received
        };
        tokio::join!(relayed, read)
    });
    let caller = called_with_header(middle, &tls).await;
    if tamper_after_headers.is_some() {
        tamper.notify_one();
    }
    let (near, far) = loopback_pair().await;
    let relay = tokio::spawn(caller.relay(far));
    let (mut near_reader, mut near_writer) = near.into_split();
    near_writer.write_all(&sent).await.expect("program writes");
    near_writer.shutdown().await.expect("program ends");
    let result = within(accepting).await.expect("in time").expect("accepting end");
    let mut rest = Vec::new();
    let _ = near_reader.read_to_end(&mut rest).await;
    let _ = within(relay).await;
    result
}

/// The caller's Finished and its first record reach the accepting end in one read: rustls opens
/// that record within the handshake, and its bytes still come first.
#[tokio::test]
async fn application_data_arriving_with_the_handshakes_end_is_kept() {
    let sent = pattern(100 * 1024, 7);
    let (relayed, received) = through_the_middle(Duration::from_millis(50), None, sent.clone()).await;
    relayed.expect("clean end");
    assert!(received == sent, "the program received {} bytes of {}", received.len(), sent.len());
}

/// A man in the middle flips one bit of the caller's bytes once the headers have been exchanged:
/// the receiving end ends the connection, and its program gets nothing of the forged record.
#[tokio::test]
async fn a_record_changed_on_the_wire_ends_the_connection() {
    let flip_a_sealed_bit: fn(&mut [u8]) = |piece| piece[HEADER.min(piece.len() - 1)] ^= 1;
    let (relayed, received) = through_the_middle(Duration::ZERO, Some(flip_a_sealed_bit), b"forged?".to_vec()).await;
    let error = relayed.expect_err("the receiving end refuses the record");
    assert!(error.contains("integrity"), "{error}");
    assert!(received.is_empty(), "the program received {received:?}");
}

/// A record announcing more than TLS allows (2^14 + 256 bytes after its header) ends the connection
/// at once: the receiving end neither waits for those bytes nor buffers beyond its bound.
#[tokio::test]
async fn a_record_longer_than_tls_allows_ends_the_connection() {
    let announce_64_kib: fn(&mut [u8]) = |piece| {
        if piece.len() >= HEADER {
            piece[3..HEADER].copy_from_slice(&[0xff, 0xff]);
        }
    };
    let (relayed, received) = through_the_middle(Duration::ZERO, Some(announce_64_kib), vec![7; 100]).await;
    let error = relayed.expect_err("the receiving end refuses the record");
    assert!(error.contains("65535 bytes"), "{error}");
    assert!(received.is_empty(), "the program received {received:?}");
}
