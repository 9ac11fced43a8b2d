//! The peer forwarder: the only path between the instances of a distributed job.
//!
//! ```text
//! algo-1 ──redirect──▶ agent A (listener inside algo-1's namespace)
//!        ──TCP, or mutual TLS with the job's certificate──▶ agent B (--peer-listen)
//!        ──connect inside algo-2's namespace──▶ algo-2
//! ```
//!
//! Encrypted connections are [`peer_tls`]'s: rustls's handshake, records sealed and opened by
//! the relay. After the (optional) TLS handshake the caller sends one header line,
//! `TRAINYARD-PEER/1 <job> <from> <to> <port>`, and the callee answers `OK` or `NO <reason>` before
//! bytes flow both ways. The callee accepts only jobs it runs an instance of:
//! * encrypted jobs: the caller's certificate must chain to the coordinator's CA and name the job,
//!   and the SNI it asked for must be that job's;
//! * plain jobs (no encryption asked): the caller's address must be one of the job's agents.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use trainyard_pki::JobTls;

use super::peer_tls::{self, HandshakeError};
use super::plan;

const MAGIC: &str = "TRAINYARD-PEER/1";
const MAX_HEADER: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS record of type handshake: how a ClientHello starts.
const TLS_HANDSHAKE: u8 = 0x16;
/// Bytes a copied plain connection moves per read in each direction (past [`MAX_SPLICED`]).
/// Measured with `scripts/bench --suites peers`: tokio's default 8 KiB gave 366 MiB/s.
const COPY_BUFFER: usize = 256 * 1024;
/// Plain connections relayed through the kernel (see [`relay_plain`]) at once, at most: each holds
/// two threads of the agent, so a job that opens thousands of peer connections must not get a
/// thread for each. Past this, plain connections are copied by tasks as TLS connections are.
const MAX_SPLICED: usize = 256;
/// The pipe between a spliced connection's two sockets, each way.
const PIPE_SIZE: usize = 1024 * 1024;

/// What the forwarder knows about one job with an instance on this agent.
struct Job {
    /// Instance → the peer address of the agent that runs it.
    peers: BTreeMap<u32, String>,
    /// Instances of the job on this agent → their namespace.
    local: BTreeMap<u32, PathBuf>,
    tls: Option<JobTls>,
}

#[derive(Default)]
pub struct Forwarder {
    jobs: Mutex<HashMap<String, Job>>,
}

/// One connection's request, from its header line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    job: String,
    from: u32,
    to: u32,
    port: u16,
}

impl Header {
    fn line(&self) -> String {
        format!("{MAGIC} {} {} {} {}\n", self.job, self.from, self.to, self.port)
    }

    fn parse(line: &str) -> Result<Header, String> {
        let parts: Vec<&str> = line.trim_end().split(' ').collect();
        let [magic, job, from, to, port] = parts[..] else { return Err("malformed header".into()) };
        if magic != MAGIC {
            return Err("not a Trainyard peer connection".into());
        }
        let number = |s: &str| s.parse::<u32>().map_err(|_| format!("'{s}' is not a number"));
        let port = port.parse::<u16>().map_err(|_| format!("'{port}' is not a port"))?;
        Ok(Header { job: job.to_string(), from: number(from)?, to: number(to)?, port })
    }
}

impl Forwarder {
    /// Makes a local instance reachable by its peers and starts carrying its own connections to them.
    pub fn add_instance(
        self: &Arc<Self>,
        job: &str,
        instance: u32,
        namespace: PathBuf,
        listener: std::net::TcpListener,
        peers: BTreeMap<u32, String>,
        tls: Option<JobTls>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let entry = jobs.entry(job.to_string()).or_insert_with(|| Job {
                peers: BTreeMap::new(),
                local: BTreeMap::new(),
                tls: None,
            });
            entry.peers = peers;
            entry.tls = tls;
            entry.local.insert(instance, namespace);
        }
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let forwarder = self.clone();
        let job = job.to_string();
        Ok(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let forwarder = forwarder.clone();
                let job = job.clone();
                tokio::spawn(async move {
                    match forwarder.outbound(&job, instance, stream).await {
                        Ok(()) => {}
                        Err(PeerError::Refused(e)) => info!(%job, instance, error = %e, "peer connection refused"),
                        Err(PeerError::Failed(e)) => warn!(%job, instance, error = %e, "peer connection failed"),
                    }
                });
            }
        }))
    }

    pub fn remove_instance(&self, job: &str, instance: u32) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = jobs.get_mut(job) {
            entry.local.remove(&instance);
            if entry.local.is_empty() {
                jobs.remove(job);
            }
        }
    }

    /// A connection from a local instance to one of its peers.
    async fn outbound(&self, job: &str, from: u32, local: TcpStream) -> Result<(), PeerError> {
        let original = super::original_destination(&local).map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?;
        let to = plan::instance_of(*original.ip()).ok_or_else(|| format!("{original} is not a peer address"))?;
        let (address, tls) = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let entry = jobs.get(job).ok_or_else(|| PeerError::Failed("the job no longer runs here".into()))?;
            let address = entry.peers.get(&to).cloned().ok_or_else(|| format!("the job has no algo-{to}"))?;
            (address, entry.tls.clone())
        };
        if address.is_empty() {
            return Err(PeerError::Failed(format!(
                "the agent of algo-{to} has no peer address (it runs no namespaces)"
            )));
        }
        let header = Header { job: job.to_string(), from, to, port: original.port() };
        // Until the peer's agent says its end is connected, closing this connection resets it:
        // for the program, a peer port nobody listens on looks refused, not accepted and ended.
        let _ = local.set_zero_linger();
        let mut remote = TcpStream::connect(&address).await.map_err(|e| format!("connecting to {address}: {e}"))?;
        let _ = remote.set_nodelay(true);
        let _ = local.set_nodelay(true);
        debug!(%job, from, to, port = original.port(), %address, encrypted = tls.is_some(), "peer connection");
        match tls {
            Some(tls) => {
                let handshake = peer_tls::connect(remote, tls.client.clone(), tls.server_name.clone());
                let mut remote = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| {
                        // The peer's agent closes without answering when no encrypted job of
                        // that name runs there (not yet, or no more): its plain NO.
                        let message = format!("TLS handshake with {address}: {e}");
                        match e {
                            HandshakeError::Closed => PeerError::Refused(message),
                            HandshakeError::Failed(_) => PeerError::Failed(message),
                        }
                    })?;
                remote.send(header.line().as_bytes()).await?;
                let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, remote.read_line(MAX_HEADER))
                    .await
                    .map_err(|_| "header timed out".to_string())??;
                accept_answer(&local, answer)?;
                if let Err(e) = remote.relay(local).await {
                    debug!(%job, from, to, error = %e, "encrypted peer connection ended");
                }
            }
            None => {
                exchange_header(&local, &mut remote, &header).await?;
                relay_plain(local, remote).await;
            }
        }
        Ok(())
    }

    /// Accepts peer connections from other agents, until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "peer listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let forwarder = self.clone();
            tokio::spawn(async move {
                if let Err(e) = forwarder.inbound(stream, from).await {
                    info!(%from, error = %e, "inbound peer connection refused");
                }
            });
        }
    }

    async fn inbound(&self, stream: TcpStream, from: SocketAddr) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| "nothing received".to_string())?
            .map_err(|e| e.to_string())?;
        if peeked == 0 {
            return Ok(());
        }
        if first[0] != TLS_HANDSHAKE {
            return self.inbound_plain(stream, from.ip()).await;
        }
        let mut chosen = None;
        let choose = |sni: Option<&str>| {
            let sni = sni.ok_or("no SNI: not a peer")?;
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let (job, tls) = jobs
                .iter()
                .find_map(|(name, j)| j.tls.as_ref().filter(|t| t.server_name.to_str() == sni).map(|t| (name, t)))
                .ok_or_else(|| format!("{sni}: no encrypted job of that name runs here"))?;
            chosen = Some((job.clone(), tls.clone()));
            Ok(tls.server.clone())
        };
        let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, peer_tls::accept(stream, choose))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (job, tls) = chosen.ok_or("TLS handshake without a job")?;
        tls.verify_peer_is_job(&job, Some(stream.peer_certificates())).map_err(|e| e.to_string())?;
        let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_line(MAX_HEADER))
            .await
            .map_err(|_| "header timed out".to_string())??;
        let header = Header::parse(&line)?;
        if header.job != job {
            let _ = stream.send(b"NO the header names another job\n").await;
            return Err(format!("certificate of {job}, header for {}", header.job));
        }
        let local = match self.connect_target(&header) {
            Ok(local) => local,
            Err(reason) => {
                let _ = stream.send(format!("NO {reason}\n").as_bytes()).await;
                return Err(reason);
            }
        };
        stream.send(b"OK\n").await?;
        if let Err(e) = stream.relay(local).await {
            debug!(%job, error = %e, "encrypted peer connection ended");
        }
        Ok(())
    }

    async fn inbound_plain(&self, mut stream: TcpStream, from: IpAddr) -> Result<(), String> {
        let header = read_header(&mut stream).await?;
        let allowed = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            match jobs.get(&header.job) {
                None => Err("no such job runs here".to_string()),
                Some(j) if j.tls.is_some() => Err("the job's peer traffic is encrypted".to_string()),
                Some(j) => {
                    let mut agents = j.peers.values().filter_map(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip());
                    let known = agents.any(|ip| ip == from || (ip.is_unspecified() && from.is_loopback()));
                    if known { Ok(()) } else { Err(format!("{from} is not an agent of job {}", header.job)) }
                }
            }
        };
        if let Err(reason) = allowed {
            let _ = stream.write_all(format!("NO {reason}\n").as_bytes()).await;
            return Err(reason);
        }
        let local = match self.connect_target(&header) {
            Ok(local) => local,
            Err(reason) => {
                let _ = stream.write_all(format!("NO {reason}\n").as_bytes()).await;
                return Err(reason);
            }
        };
        stream.write_all(b"OK\n").await.map_err(|e| e.to_string())?;
        relay_plain(stream, local).await;
        Ok(())
    }

    /// Connects to the target instance inside its namespace: the connection, to be joined with the
    /// caller's, or the reason to answer `NO` with.
    fn connect_target(&self, header: &Header) -> Result<TcpStream, String> {
        let namespace = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.get(&header.job).and_then(|j| j.local.get(&header.to).cloned())
        };
        let Some(namespace) = namespace else {
            return Err(format!("the instance algo-{} of {} does not run here", header.to, header.job));
        };
        let target = SocketAddrV4::new(plan::peer_address(header.to), header.port);
        let local = super::in_namespace(&namespace, move || {
            let s = std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .and_then(TcpStream::from_std)
        .map_err(|e| format!("connecting to algo-{}:{}: {e}", header.to, header.port))?;
        let _ = local.set_nodelay(true);
        Ok(local)
    }
}

/// Why a connection from an instance to a peer did not go through.
#[derive(Debug)]
enum PeerError {
    /// The peer's agent answered NO: nothing listens on that port of the peer (yet), or the
    /// instance has gone (for an encrypted job: it closed the handshake, as it does for a job it
    /// does not run). The program's business (distributed programs retry until their peers
    /// listen), so it is logged at INFO.
    Refused(String),
    /// This side or the path failed: the peer's agent unreachable, TLS, the job's records.
    Failed(String),
}

impl From<String> for PeerError {
    fn from(e: String) -> Self {
        PeerError::Failed(e)
    }
}

/// Carries bytes both ways through the agent until both sides have ended: plain connections past
/// [`MAX_SPLICED`].
async fn copy_both_ways(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER).await;
}

/// Sends the header and waits for the peer's agent's answer (read a byte at a time: nothing past
/// it is consumed, so a plain connection can be spliced from there).
async fn exchange_header(local: &TcpStream, remote: &mut TcpStream, header: &Header) -> Result<(), PeerError> {
    remote.write_all(header.line().as_bytes()).await.map_err(|e| e.to_string())?;
    accept_answer(local, read_line(remote).await?)
}

/// The peer's agent's answer: `OK` when its end is connected.
fn accept_answer(local: &TcpStream, answer: String) -> Result<(), PeerError> {
    if answer != "OK" {
        return Err(PeerError::Refused(format!("the peer's agent refused: {answer}")));
    }
    // Connected end to end: from now on either side's close is an ordinary one.
    default_linger(local);
    Ok(())
}

static SPLICED: AtomicUsize = AtomicUsize::new(0);

/// A place among the [`MAX_SPLICED`] connections relayed through the kernel.
struct SplicedSlot;

impl SplicedSlot {
    fn take() -> Option<SplicedSlot> {
        SPLICED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_SPLICED).then_some(n + 1)).ok()?;
        Some(SplicedSlot)
    }
}

impl Drop for SplicedSlot {
    fn drop(&mut self) {
        SPLICED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Joins two plain TCP connections until both directions have ended. Through the kernel:
/// splice(2) moves each direction's bytes from one socket into a pipe and on into the other,
/// none copied into the agent (copying them cost the agent's core more than the programs at both
/// ends). Each direction blocks in the kernel on a thread of its own; past [`MAX_SPLICED`]
/// connections (or if the threads cannot start), tasks copy as for TLS connections.
async fn relay_plain(a: TcpStream, b: TcpStream) {
    let Some(slot) = SplicedSlot::take() else { return copy_both_ways(a, b).await };
    let blocking = |s: TcpStream| s.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s));
    let (Ok(a), Ok(b)) = (blocking(a), blocking(b)) else {
        return; // a socket tokio could not give up: the connection is dropped, as on any error
    };
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let thread = || std::thread::Builder::new().name("peer-splice".into()).stack_size(64 * 1024);
    let spawned = thread().spawn(move || {
        let back = a
            .try_clone()
            .and_then(|a2| b.try_clone().map(|b2| (a2, b2)))
            .and_then(|(a2, b2)| thread().spawn(move || pump(&b2, &a2)));
        match back {
            Ok(back) => {
                pump(&a, &b);
                let _ = back.join();
            }
            Err(e) => {
                warn!(error = %e, "could not start a peer connection's second thread: the connection is dropped");
                let _ = a.shutdown(std::net::Shutdown::Both);
                let _ = b.shutdown(std::net::Shutdown::Both);
            }
        }
        drop(slot);
        let _ = done.send(());
    });
    match spawned {
        Ok(_) => {
            let _ = ended.await;
        }
        Err(e) => warn!(error = %e, "could not start a peer connection's thread: the connection is dropped"),
    }
}

/// Moves what `from` receives into `to` until `from` ends, then ends `to`'s sending side, as a
/// copy would. On an error both connections are shut down: the other direction's thread wakes.
fn pump(from: &std::net::TcpStream, to: &std::net::TcpStream) {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    let moved = (|| -> std::io::Result<()> {
        let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC)?;
        let _ = fcntl_setpipe_size(&pipe_in, PIPE_SIZE); // an unprivileged limit keeps the default
        loop {
            // Into the pipe, which is empty here: as much as has arrived, up to its size.
            let arrived = splice(from, None, &pipe_in, None, PIPE_SIZE, SpliceFlags::MOVE)?;
            if arrived == 0 {
                return Ok(());
            }
            let mut left = arrived;
            while left > 0 {
                let sent = splice(&pipe_out, None, to, None, left, SpliceFlags::MOVE)?;
                if sent == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                left -= sent;
            }
        }
    })();
    match moved {
        Ok(()) => {
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Turns SO_LINGER off again (the default: close sends FIN, in the background).
fn default_linger(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let off = libc::linger { l_onoff: 0, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&off as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, String> {
    Header::parse(&read_line(stream).await?)
}

/// One line, byte by byte, so that nothing after it is consumed.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, String> {
    let mut line = Vec::new();
    let read = async {
        loop {
            let byte = stream.read_u8().await.map_err(|e| format!("reading the header: {e}"))?;
            if byte == b'\n' {
                return Ok::<_, String>(());
            }
            line.push(byte);
            if line.len() > MAX_HEADER {
                return Err("header too long".to_string());
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await.map_err(|_| "header timed out".to_string())??;
    String::from_utf8(line).map_err(|_| "header is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_garbage() {
        let h = Header { job: "job-a".into(), from: 1, to: 2, port: 5555 };
        assert_eq!(Header::parse(&h.line()), Ok(h));
        assert!(Header::parse("GET / HTTP/1.1").is_err());
        assert!(Header::parse("TRAINYARD-PEER/1 job 1 2 70000").unwrap_err().contains("port"));
        assert!(Header::parse("TRAINYARD-PEER/1 job x 2 80").unwrap_err().contains("number"));
    }

    /// Two connected pairs on loopback, their server ends joined by `relay_plain`: what one client
    /// sends the other receives, each way, and a client's end of sending ends the other's reading.
    async fn relayed_pair() -> (TcpStream, TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let left = TcpStream::connect(address).await.expect("connect");
        let (left_server, _) = listener.accept().await.expect("accept");
        let right = TcpStream::connect(address).await.expect("connect");
        let (right_server, _) = listener.accept().await.expect("accept");
        (left, right, tokio::spawn(relay_plain(left_server, right_server)))
    }

    /// The relay tests count the process's spliced connections: one at a time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// `spliced`: the connections counted as spliced while this one carries bytes.
    async fn both_ways(left: TcpStream, right: TcpStream, relay: tokio::task::JoinHandle<()>, spliced: usize) {
        // A relay that never ends a direction would hang the reads: failed after a while instead.
        tokio::time::timeout(Duration::from_secs(60), both_ways_unbounded(left, right, relay, spliced))
            .await
            .expect("the exchange completes");
    }

    async fn both_ways_unbounded(
        mut left: TcpStream,
        mut right: TcpStream,
        relay: tokio::task::JoinHandle<()>,
        spliced: usize,
    ) {
        // More than the pipe holds, in a pattern, so that a lost, doubled or reordered byte shows.
        let sent: Vec<u8> = (0..3 * PIPE_SIZE + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                left.write_all(&sent).await.expect("send");
                left.shutdown().await.expect("end of sending");
                let mut reply = Vec::new();
                left.read_to_end(&mut reply).await.expect("the reply, to its end");
                reply
            })
        };
        let mut received = Vec::new();
        right.read_to_end(&mut received).await.expect("everything, then the end");
        assert!(received == sent, "{} bytes received of {}", received.len(), sent.len());
        assert_eq!(SPLICED.load(Ordering::Acquire), spliced, "through the kernel, or copied past the bound");
        right.write_all(b"thanks").await.expect("reply");
        drop(right);
        assert_eq!(writer.await.expect("writer"), b"thanks");
        tokio::time::timeout(Duration::from_secs(10), relay).await.expect("the relay ends with both").expect("relay");
    }

    #[tokio::test]
    async fn plain_connections_are_spliced_both_ways_and_end_as_their_ends_do() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (left, right, relay) = relayed_pair().await;
        both_ways(left, right, relay, 1).await;
        // Past the bound (a job opening thousands of connections gets no thread for each), the
        // same through tasks.
        let held: Vec<SplicedSlot> = std::iter::from_fn(SplicedSlot::take).collect();
        assert_eq!(held.len(), MAX_SPLICED, "every slot was free once the first relay ended");
        let (left, right, relay) = relayed_pair().await;
        both_ways(left, right, relay, MAX_SPLICED).await;
        drop(held);
        assert_eq!(SPLICED.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_spliced_relay() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (left, mut right, relay) = relayed_pair().await;
        // Closed with unread data and SO_LINGER 0: a reset, not an orderly end.
        right.write_all(b"unread").await.expect("send");
        left.set_zero_linger().expect("linger");
        drop(left);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), right.read_to_end(&mut rest)).await.expect("ends");
        tokio::time::timeout(Duration::from_secs(10), relay).await.expect("the relay ends").expect("relay");
    }
}
