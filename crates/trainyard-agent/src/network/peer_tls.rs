//! An encrypted job's peer connection between two agents: TLS 1.3, the records sealed and opened
//! in the relay's own buffers.
//!
//! rustls makes the handshake (its unbuffered API) and keeps the key schedule. Once the handshake
//! is done the connection becomes a rustls `KernelConnection`, as it would for kernel TLS, and this
//! module protects the records itself: it reads a local program's bytes straight into the records'
//! payloads and seals them there, and opens received records where they were read and writes the
//! plaintext to the program from there. Through rustls's buffered connection each byte was copied
//! three more times on the receiving agent and once more on the sending agent (a read-ahead buffer,
//! rustls's deframer, its plaintext queue, the copy buffer), which cost the agents' cores more than
//! the cipher did (BENCHMARKS.md).
//!
//! What that leaves to this module (RFC 8446):
//! * record protection (§5.2): the AEAD from aws-lc-rs, nonce = iv ⊕ sequence number, the record's
//!   header as associated data, the content type inside the sealed payload;
//! * KeyUpdate (§4.6.3): sent before the cipher's confidentiality limit is reached, and honoured
//!   when received (rustls derives the new keys);
//! * close_notify (§6.1): each direction ends on its own, as TCP's half-close does.
//!
//! The job's server configuration issues no session tickets, so after the handshake only
//! application data, KeyUpdate and close_notify can arrive; anything else ends the connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, CommonState, ConnectionTrafficSecrets, ExtractedSecrets, ServerConfig};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tracing::debug;

/// A record's header: content type, legacy version, length.
const HEADER: usize = 5;
/// The AEAD tag of every suite TLS 1.3 has.
const TAG: usize = 16;
const MAX_PLAINTEXT: usize = 16 * 1024;
/// §5.2: at most 2^14 + 256 bytes follow a record's header (content type, padding and tag included).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Room for one full record this side seals: header, payload, content type, tag.
const SLOT: usize = HEADER + MAX_PLAINTEXT + 1 + TAG;
/// Records sealed per read of the local program's socket: 256 KiB of its bytes at a time, as the
/// plain relay's copy buffer (`COPY_BUFFER` in the forwarder).
const SLOTS: usize = 16;
/// Room after the slots for the control records (a KeyUpdate and a close_notify) queued behind them.
const CONTROL_ROOM: usize = 2 * (HEADER + 8 + 1 + TAG);
/// What is read from the peer's agent at once, at most: the slots' worth and one more record.
const INCOMING: usize = SLOTS * SLOT + HEADER + MAX_CIPHERTEXT;
/// The local program's bytes written with one call, at most this many records' payloads.
const MAX_IOVECS: usize = 64;
/// The receive buffer of the local program's socket (`SO_RCVBUF`; the kernel doubles it for its
/// bookkeeping, and autotuning stops). Autotuned, it grew to 2-4 MiB under iperf3, nearly all of
/// it queued: the program ran megabytes ahead of the relay, which most likely read them back from
/// memory rather than cache. Bounded, the agents carried 7-9 % more with iperf3 and 15-19 % more
/// in DDP's all-reduce (BENCHMARKS.md, the peer path). Smaller (32 and 48 KiB) lost with iperf3;
/// larger (96 and 128 KiB) gained nothing there. The plain path splices and copies nothing and
/// keeps the kernel's autotuning: bounding its sockets cost it a fifth or more.
const LOCAL_RECEIVE_BUFFER: usize = 64 * 1024;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// Why a handshake did not complete.
#[derive(Debug)]
pub(super) enum HandshakeError {
    /// The other agent closed the connection without a word: what an agent does when no encrypted
    /// job of the name asked for runs there.
    Closed,
    Failed(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("the peer's agent closed the connection during the handshake"),
            HandshakeError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Failed(e.to_string())
    }
}

impl From<rustls::Error> for HandshakeError {
    fn from(e: rustls::Error) -> Self {
        HandshakeError::Failed(e.to_string())
    }
}

/// One direction's key and the sequence number of its next record.
struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    sequence: u64,
}

impl Keys {
    fn new((sequence, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Keys, String> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key.as_ref(), iv.as_ref()),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key.as_ref(), iv.as_ref()),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key.as_ref(), iv.as_ref()),
            _ => return Err("the negotiated cipher suite is not one of TLS 1.3's".into()),
        };
        let iv = iv.try_into().map_err(|_| "a traffic IV of the wrong length".to_string())?;
        let key = UnboundKey::new(algorithm, key).map_err(|_| "a traffic key of the wrong length".to_string())?;
        Ok(Keys { key: LessSafeKey::new(key), iv, sequence })
    }

    /// §5.3: the IV with the record's sequence number, big-endian, xored into its last 8 bytes.
    fn next_nonce(&mut self) -> Result<Nonce, String> {
        let mut nonce = self.iv;
        for (byte, sequence) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.sequence.to_be_bytes()) {
            *byte ^= sequence;
        }
        self.sequence = self.sequence.checked_add(1).ok_or("the record sequence number is exhausted")?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals the record at the start of `record`, whose `length` bytes of content follow the header's
    /// room: writes the header, the content type and the tag. The record's whole length.
    fn seal(&mut self, record: &mut [u8], length: usize, content_type: u8) -> Result<usize, String> {
        let sealed = length + 1 + TAG;
        let [high, low] = u16::try_from(sealed).map_err(|_| "a record too long")?.to_be_bytes();
        let header = [CONTENT_APPLICATION_DATA, 3, 3, high, low];
        record[..HEADER].copy_from_slice(&header);
        record[HEADER + length] = content_type;
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut record[HEADER..HEADER + length + 1])
            .map_err(|_| "sealing a record failed")?;
        record[HEADER + length + 1..HEADER + sealed].copy_from_slice(tag.as_ref());
        Ok(HEADER + sealed)
    }
}

/// The rustls end of a connection once its handshake is done: what derives new keys.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn next_send_keys(&mut self) -> Result<Keys, String> {
        let secrets = match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        };
        Keys::new(secrets.map_err(|e| e.to_string())?)
    }

    fn next_receive_keys(&mut self) -> Result<Keys, String> {
        let secrets = match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        };
        Keys::new(secrets.map_err(|e| e.to_string())?)
    }

    /// Records sealed under one key before a KeyUpdate, well inside the suite's confidentiality
    /// limit (rustls's figure for the suite; 2^24 records for AES-GCM).
    fn records_per_key(&self) -> u64 {
        let suite = match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        };
        suite.tls13().map_or(1 << 20, |s| s.common.confidentiality_limit / 2)
    }
}

/// The two kinds of rustls unbuffered connection, driven through the handshake alike.
trait Handshaking {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error>;
}

impl Handshaking for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(secrets, kernel)| (secrets, Kernel::Client(kernel)))
    }
}

impl Handshaking for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection().map(|(secrets, kernel)| (secrets, Kernel::Server(kernel)))
    }
}

/// What has been read from the peer's agent and not yet passed on.
struct Incoming {
    buffer: Vec<u8>,
    /// `buffer[start..end]`: received, not yet opened (the rest of a record at most, once opened).
    start: usize,
    end: usize,
    /// Opened application data not yet written to the local side, in order: ranges of `buffer`.
    plaintext: VecDeque<Range<usize>>,
}

impl Incoming {
    fn new() -> Incoming {
        Incoming { buffer: vec![0; INCOMING], start: 0, end: 0, plaintext: VecDeque::new() }
    }

    /// Reads what the peer's agent has sent, without waiting: `Ok(0)` at its end.
    fn try_read(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if self.plaintext.is_empty() && self.start > 0 {
            // Nothing opened waits in the buffer: the rest of a record moves to its front.
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = stream.try_read(&mut self.buffer[self.end..])?;
        self.end += read;
        Ok(read)
    }

    async fn read(&mut self, stream: &TcpStream) -> io::Result<usize> {
        loop {
            stream.readable().await?;
            match self.try_read(stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

/// Drives a handshake until it is complete (for a server: until the client's Finished has been
/// checked). What arrived past it stays in `incoming`, but for application data that came with the
/// handshake's last records (a client sends its first right behind its Finished): rustls opens
/// those itself, and their plaintext is returned.
async fn handshake<C: Handshaking>(
    connection: &mut C,
    stream: &mut TcpStream,
    incoming: &mut Incoming,
) -> Result<Vec<u8>, HandshakeError> {
    enum Next {
        Process,
        Send,
        Read,
        Done,
    }
    let mut outgoing = Vec::new();
    let mut early = Vec::new();
    loop {
        let status = connection.process(&mut incoming.buffer[incoming.start..incoming.end]);
        let mut discard = status.discard;
        let next = match status.state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    discard += record.discard;
                    if early.len() + record.payload.len() > MAX_CIPHERTEXT * 4 {
                        return Err(HandshakeError::Failed("too much data during the handshake".into()));
                    }
                    early.extend_from_slice(record.payload);
                }
                Next::Process
            }
            ConnectionState::EncodeTlsData(mut data) => {
                let at = outgoing.len();
                let mut room = 4096;
                loop {
                    outgoing.resize(at + room, 0);
                    match data.encode(&mut outgoing[at..]) {
                        Ok(written) => {
                            outgoing.truncate(at + written);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(needed)) => room = needed.required_size,
                        Err(e) => return Err(HandshakeError::Failed(e.to_string())),
                    }
                }
                Next::Process
            }
            ConnectionState::TransmitTlsData(data) => {
                // Sent below, before anything else is processed.
                data.done();
                Next::Send
            }
            ConnectionState::BlockedHandshake => Next::Read,
            ConnectionState::WriteTraffic(_) => Next::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => return Err(HandshakeError::Closed),
            other => return Err(HandshakeError::Failed(format!("unexpected {other:?} during the handshake"))),
        };
        incoming.start += discard;
        match next {
            Next::Process => {}
            Next::Send => {
                stream.write_all(&outgoing).await?;
                outgoing.clear();
            }
            // A server may send before the client has finished (0.5-RTT): not done yet.
            Next::Read | Next::Done if connection.common().is_handshaking() => {
                if incoming.read(stream).await? == 0 {
                    return Err(HandshakeError::Closed);
                }
            }
            Next::Read => return Err(HandshakeError::Failed("the handshake stalled".into())),
            Next::Done => return Ok(early),
        }
    }
}

/// An established connection to the peer's agent.
pub(super) struct PeerTls {
    stream: TcpStream,
    kernel: Kernel,
    receive: Keys,
    send: Keys,
    records_per_key: u64,
    incoming: Incoming,
    /// The peer's agent sent close_notify: it sends nothing more.
    peer_closed: bool,
    /// Sealed records not yet sent: `outgoing[sent..sealed]`.
    outgoing: Vec<u8>,
    sent: usize,
    sealed: usize,
    /// A KeyUpdate answering the peer's request waits in `outgoing`: a second request needs no
    /// second answer (§4.6.3).
    key_update_queued: bool,
    close_notify_queued: bool,
    peer_certificates: Vec<CertificateDer<'static>>,
}

/// Makes the handshake as the client, sending `name` as SNI.
pub(super) async fn connect(
    mut stream: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<PeerTls, HandshakeError> {
    let mut connection = UnbufferedClientConnection::new(config, name)?;
    let mut incoming = Incoming::new();
    let early = handshake(&mut connection, &mut stream, &mut incoming).await?;
    PeerTls::established(stream, connection, incoming, early)
}

/// Makes the handshake as the server, with the configuration `choose` picks for the SNI the
/// client asked for (its error, when none fits, closes the connection without a word).
pub(super) async fn accept(
    mut stream: TcpStream,
    choose: impl FnOnce(Option<&str>) -> Result<Arc<ServerConfig>, String>,
) -> Result<PeerTls, HandshakeError> {
    let mut incoming = Incoming::new();
    // rustls's acceptor parses a copy of the ClientHello; the unbuffered connection then starts
    // from the bytes as received.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let accepted = loop {
        if incoming.read(&stream).await? == 0 {
            return Err(HandshakeError::Closed);
        }
        while fed < incoming.end {
            match acceptor.read_tls(&mut &incoming.buffer[fed..incoming.end]) {
                Ok(0) => break,
                Ok(read) => fed += read,
                Err(e) => return Err(HandshakeError::Failed(format!("reading the ClientHello: {e}"))),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((e, _)) => return Err(HandshakeError::Failed(format!("reading the ClientHello: {e}"))),
        }
    };
    let config = choose(accepted.client_hello().server_name()).map_err(HandshakeError::Failed)?;
    let mut connection = UnbufferedServerConnection::new(config)?;
    let early = handshake(&mut connection, &mut stream, &mut incoming).await?;
    PeerTls::established(stream, connection, incoming, early)
}

impl PeerTls {
    fn established<C: Handshaking>(
        stream: TcpStream,
        connection: C,
        mut incoming: Incoming,
        early: Vec<u8>,
    ) -> Result<PeerTls, HandshakeError> {
        if !early.is_empty() {
            // Goes first, in front of the records not yet opened.
            let unopened = incoming.end - incoming.start;
            if early.len() + unopened > incoming.buffer.len() {
                return Err(HandshakeError::Failed("too much data during the handshake".into()));
            }
            incoming.buffer.copy_within(incoming.start..incoming.end, early.len());
            incoming.buffer[..early.len()].copy_from_slice(&early);
            incoming.plaintext.push_back(0..early.len());
            incoming.start = early.len();
            incoming.end = early.len() + unopened;
        }
        let peer_certificates = connection.common().peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let (secrets, kernel) = connection.into_kernel()?;
        Ok(PeerTls {
            stream,
            records_per_key: kernel.records_per_key(),
            kernel,
            receive: Keys::new(secrets.rx).map_err(HandshakeError::Failed)?,
            send: Keys::new(secrets.tx).map_err(HandshakeError::Failed)?,
            incoming,
            peer_closed: false,
            outgoing: vec![0; SLOTS * SLOT + CONTROL_ROOM],
            sent: 0,
            sealed: 0,
            key_update_queued: false,
            close_notify_queued: false,
            peer_certificates,
        })
    }

    /// The chain the peer's agent presented (the client's, on the accepting side).
    pub(super) fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// Sends `bytes` (a header or an answer: less than a record) and waits until they are sent.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > MAX_PLAINTEXT {
            return Err("a line longer than a record".into());
        }
        self.flush().await?;
        self.outgoing[HEADER..HEADER + bytes.len()].copy_from_slice(bytes);
        self.sealed = self.send.seal(&mut self.outgoing, bytes.len(), CONTENT_APPLICATION_DATA)?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.stream.write_all(&self.outgoing[self.sent..self.sealed]).await.map_err(|e| e.to_string())?;
        self.sent = 0;
        self.sealed = 0;
        Ok(())
    }

    /// Reads one line of at most `max` bytes, UTF-8 (without its `\n`); what follows it stays for
    /// the relay.
    pub(super) async fn read_line(&mut self, max: usize) -> Result<String, String> {
        let mut line = Vec::new();
        loop {
            while let Some(range) = self.incoming.plaintext.front_mut() {
                let bytes = &self.incoming.buffer[range.clone()];
                let (taken, found) = match bytes.iter().position(|&b| b == b'\n') {
                    Some(at) => (at + 1, true),
                    None => (bytes.len(), false),
                };
                line.extend_from_slice(&bytes[..taken - usize::from(found)]);
                range.start += taken;
                if range.start == range.end {
                    self.incoming.plaintext.pop_front();
                }
                if line.len() > max {
                    return Err("header too long".into());
                }
                if found {
                    return String::from_utf8(line).map_err(|_| "the line is not UTF-8".to_string());
                }
            }
            self.open_records()?;
            if !self.incoming.plaintext.is_empty() {
                continue;
            }
            if self.peer_closed {
                return Err("the peer's agent ended the connection".into());
            }
            if self.incoming.read(&self.stream).await.map_err(|e| e.to_string())? == 0 {
                return Err("the peer's agent closed the connection".into());
            }
            // A KeyUpdate's answer may be waiting.
            self.flush().await?;
        }
    }

    /// Opens the complete records received: application data joins `incoming.plaintext`,
    /// KeyUpdate and close_notify are acted on. Stops at close_notify.
    fn open_records(&mut self) -> Result<(), String> {
        while !self.peer_closed {
            let at = self.incoming.start;
            let received = &self.incoming.buffer[at..self.incoming.end];
            let Some(header) = received.first_chunk::<HEADER>().copied() else { break };
            if header[0] != CONTENT_APPLICATION_DATA {
                return Err(format!("a record of content type {} after the handshake", header[0]));
            }
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if !(TAG + 1..=MAX_CIPHERTEXT).contains(&length) {
                return Err(format!("a record of {length} bytes"));
            }
            if received.len() < HEADER + length {
                break;
            }
            let nonce = self.receive.next_nonce()?;
            let body = &mut self.incoming.buffer[at + HEADER..at + HEADER + length];
            let inner = self
                .receive
                .key
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| "a record failed its integrity check")?;
            // §5.4: the content type is the last byte that is not padding.
            let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
                return Err("a record without a content type".into());
            };
            let content_type = inner[type_at];
            if type_at > MAX_PLAINTEXT {
                return Err("a record over 16 KiB of content".into());
            }
            let content = at + HEADER..at + HEADER + type_at;
            self.incoming.start += HEADER + length;
            match content_type {
                CONTENT_APPLICATION_DATA if !content.is_empty() => self.incoming.plaintext.push_back(content),
                CONTENT_APPLICATION_DATA => {}
                CONTENT_ALERT => match self.incoming.buffer[content] {
                    [_, ALERT_CLOSE_NOTIFY] => self.peer_closed = true,
                    [_, description] => return Err(format!("the peer's agent sent alert {description}")),
                    _ => return Err("a malformed alert".into()),
                },
                CONTENT_HANDSHAKE => self.handshake_messages(content)?,
                other => return Err(format!("a record of content type {other}")),
            }
        }
        Ok(())
    }

    /// Post-handshake messages (§4.6), whole within their record.
    fn handshake_messages(&mut self, mut content: Range<usize>) -> Result<(), String> {
        while !content.is_empty() {
            let bytes = &self.incoming.buffer[content.clone()];
            let Some(&[kind, a, b, c]) = bytes.first_chunk::<4>() else {
                return Err("a truncated handshake message".into());
            };
            let length = u32::from_be_bytes([0, a, b, c]) as usize;
            let Some(body) = bytes.get(4..4 + length) else {
                return Err("a handshake message split across records".into());
            };
            match (kind, body) {
                (HANDSHAKE_KEY_UPDATE, [requested @ (0 | 1)]) => {
                    let requested = *requested == 1;
                    self.receive = self.kernel.next_receive_keys()?;
                    debug!(requested, "the peer's agent updated its keys");
                    // Answered before this side's next application data; after its
                    // close_notify it sends none, so no answer (§4.6.3).
                    if requested && !self.key_update_queued && !self.close_notify_queued {
                        self.queue_key_update()?;
                        self.key_update_queued = true;
                    }
                }
                // The job's server config issues none, and a client with resumption off keeps none.
                (HANDSHAKE_NEW_SESSION_TICKET, _) => debug!("ignored a session ticket"),
                (kind, _) => return Err(format!("handshake message {kind} after the handshake")),
            }
            content.start += 4 + length;
        }
        Ok(())
    }

    /// Seals a KeyUpdate (not asking for the peer's) behind the records waiting to be sent, and
    /// seals what follows with the next keys.
    fn queue_key_update(&mut self) -> Result<(), String> {
        let at = self.sealed;
        self.outgoing[at + HEADER..at + HEADER + 5].copy_from_slice(&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]);
        self.sealed += self.send.seal(&mut self.outgoing[at..], 5, CONTENT_HANDSHAKE)?;
        self.send = self.kernel.next_send_keys()?;
        Ok(())
    }

    fn queue_close_notify(&mut self) -> Result<(), String> {
        let at = self.sealed;
        self.outgoing[at + HEADER..at + HEADER + 2].copy_from_slice(&[1, ALERT_CLOSE_NOTIFY]);
        self.sealed += self.send.seal(&mut self.outgoing[at..], 2, CONTENT_ALERT)?;
        self.close_notify_queued = true;
        Ok(())
    }

    /// Reads what the local program sent into the records' payloads and seals them, when nothing
    /// sealed waits to be sent. `Ok(0)` at the program's end.
    fn try_seal_from(&mut self, local: &TcpStream) -> io::Result<usize> {
        let mut slots = self.outgoing.chunks_exact_mut(SLOT);
        let mut payloads: [IoSliceMut; SLOTS] = std::array::from_fn(|_| {
            // `outgoing` holds SLOTS slots and a little more: each call finds one.
            IoSliceMut::new(slots.next().map_or(&mut [][..], |slot| &mut slot[HEADER..HEADER + MAX_PLAINTEXT]))
        });
        let read = local.try_read_vectored(&mut payloads)?;
        let mut left = read;
        let mut slot = 0;
        while left > 0 {
            let length = left.min(MAX_PLAINTEXT);
            let record = &mut self.outgoing[slot * SLOT..];
            // Every slot but the last is full, so the records lie end to end.
            self.sealed =
                slot * SLOT + self.send.seal(record, length, CONTENT_APPLICATION_DATA).map_err(io::Error::other)?;
            left -= length;
            slot += 1;
        }
        Ok(read)
    }

    /// Writes opened application data to the local program, without waiting.
    fn try_write_to(&mut self, local: &TcpStream) -> io::Result<()> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slice, range) in slices.iter_mut().zip(&self.incoming.plaintext) {
            *slice = IoSlice::new(&self.incoming.buffer[range.clone()]);
            count += 1;
        }
        let mut written = local.try_write_vectored(&slices[..count])?;
        while written > 0 {
            let Some(range) = self.incoming.plaintext.front_mut() else { break };
            let taken = written.min(range.len());
            range.start += taken;
            written -= taken;
            if range.start == range.end {
                self.incoming.plaintext.pop_front();
            }
        }
        Ok(())
    }

    /// Carries bytes both ways between the peer's agent and the local program until both
    /// directions have ended: the program's end becomes a close_notify and the end of this
    /// connection's sending side, the peer's close_notify the end of the program's receiving side.
    /// An error on either side, or an end of the peer's agent without close_notify, ends both.
    pub(super) async fn relay(mut self, local: TcpStream) -> Result<(), String> {
        if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&local, LOCAL_RECEIVE_BUFFER) {
            // Only the pace changes without it.
            debug!(error = %e, "could not bound the local program's receive buffer");
        }
        let mut local_ended = false;
        let mut local_shut = false;
        let mut peer_shut = false;
        loop {
            let mut progressed = true;
            while progressed {
                progressed = false;
                // Towards the local program.
                if !self.incoming.plaintext.is_empty() {
                    match self.try_write_to(&local) {
                        Ok(()) => progressed = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(format!("writing to the local program: {e}")),
                    }
                }
                if self.incoming.plaintext.is_empty() {
                    self.open_records()?;
                    if !self.incoming.plaintext.is_empty() {
                        progressed = true;
                    } else if self.peer_closed {
                        if !local_shut {
                            let _ = rustix::net::shutdown(&local, rustix::net::Shutdown::Write);
                            local_shut = true;
                        }
                    } else {
                        match self.incoming.try_read(&self.stream) {
                            Ok(0) => return Err("the peer's agent ended the connection without close_notify".into()),
                            Ok(_) => progressed = true,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(format!("reading from the peer's agent: {e}")),
                        }
                    }
                }
                // Towards the peer's agent.
                if self.sent < self.sealed {
                    match self.stream.try_write(&self.outgoing[self.sent..self.sealed]) {
                        Ok(written) => {
                            self.sent += written;
                            progressed = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(format!("writing to the peer's agent: {e}")),
                    }
                }
                if self.sent == self.sealed {
                    self.sent = 0;
                    self.sealed = 0;
                    self.key_update_queued = false;
                    if self.close_notify_queued {
                        if !peer_shut {
                            let _ = rustix::net::shutdown(&self.stream, rustix::net::Shutdown::Write);
                            peer_shut = true;
                        }
                    } else if local_ended {
                        self.queue_close_notify()?;
                        progressed = true;
                    } else if self.send.sequence + SLOTS as u64 >= self.records_per_key {
                        self.queue_key_update()?;
                        progressed = true;
                    } else {
                        match self.try_seal_from(&local) {
                            Ok(0) => {
                                local_ended = true;
                                progressed = true;
                            }
                            Ok(_) => progressed = true,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(format!("reading from the local program: {e}")),
                        }
                    }
                }
            }
            if local_shut && peer_shut {
                return Ok(());
            }
            let waiting_to_receive = self.incoming.plaintext.is_empty() && !self.peer_closed;
            let peer = interest(waiting_to_receive, self.sent < self.sealed);
            let program = interest(!local_ended && self.sealed == 0, !self.incoming.plaintext.is_empty());
            tokio::select! {
                ready = ready(&self.stream, peer) => ready.map_err(|e| format!("the peer's agent: {e}"))?,
                ready = ready(&local, program) => ready.map_err(|e| format!("the local program: {e}"))?,
            }
        }
    }
}

fn interest(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

async fn ready(stream: &TcpStream, interest: Option<Interest>) -> io::Result<()> {
    match interest {
        Some(interest) => stream.ready(interest).await.map(|_| ()),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
