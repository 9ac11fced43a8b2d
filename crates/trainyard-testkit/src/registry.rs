//! A real image registry of the test's own: Debian's `docker-registry` (the CNCF distribution
//! registry) on a loopback port, its storage in a temp dir, optionally behind a password (htpasswd,
//! bcrypt), behind a token server (Docker's token authentication, as ECR, GHCR and Docker Hub
//! use it), or HTTPS with a CA of its own. Images are pushed with the Registry v2 API over plain
//! HTTP; the registry's request log says what a pull fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::containerd::{BusyboxImage, INDEX_TYPE, MANIFEST_TYPE, digest};

/// The user and password of a registry started with one.
pub const USER: &str = "trainer";
pub const PASSWORD: &str = "s3cret-for-tests";
/// bcrypt (cost 4) of PASSWORD, as htpasswd files hold it.
const PASSWORD_BCRYPT: &str = "$2b$04$XOOg4w1.jOZSTgQvDwgdeOjM4toUspKTgW/cVrvfB7yUgOI745YqG";

pub struct Registry {
    child: Child,
    /// HOST:PORT on loopback: where agents pull from.
    pub address: String,
    /// Where the tests push (plain HTTP): `address` itself, or for a TLS registry a second
    /// registry process serving the same storage.
    push_address: String,
    pusher: Option<Child>,
    dir: tempfile::TempDir,
    password: bool,
    tokens: Option<TokenServer>,
}

/// How a registry lets clients in.
#[derive(Clone, Copy, PartialEq)]
enum Access {
    Open,
    Password,
    Token,
}

impl Registry {
    /// Anyone may pull and push.
    pub fn start() -> Registry {
        Registry::launch(Access::Open, false)
    }

    /// Only USER with PASSWORD may pull or push.
    pub fn start_with_password() -> Registry {
        Registry::launch(Access::Password, false)
    }

    /// Only bearer tokens are let in: the registry answers 401 with a challenge naming a token
    /// server of the test's own, which gives USER with PASSWORD a JWT (ES256, its certificate chain
    /// in `x5c`) that the registry trusts. Pushes go to a second, open registry process serving
    /// the same storage.
    pub fn start_with_token() -> Registry {
        Registry::launch(Access::Token, false)
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a CA of its own (`ca_file`).
    pub fn start_with_tls() -> Registry {
        Registry::launch(Access::Open, true)
    }

    /// What the token server was asked, one line each: `<scope> <accepted|refused>`.
    pub fn token_requests(&self) -> Vec<String> {
        self.tokens.as_ref().map(|t| t.requests.lock().map(|r| r.clone()).unwrap_or_default()).unwrap_or_default()
    }

    /// The CA that signed a TLS registry's certificate (PEM).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    fn launch(access: Access, tls: bool) -> Registry {
        let dir = tempfile::Builder::new().prefix("trainyard-registry-").tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", crate::free_port());
        let config = |address: &str| {
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}/data\nhttp:\n  addr: {address}\n  secret: trainyard-tests\n",
                dir.path().display()
            )
        };
        let mut served = config(&address);
        let (mut push_address, mut pusher) = (address.clone(), None);
        let mut tokens = None;
        if tls || access == Access::Token {
            let authority = trainyard_pki::Authority::load_or_create(&dir.path().join("ca")).expect("CA");
            let credential = authority
                .issue_server_credential(&["127.0.0.1".to_string()], Duration::from_secs(3600))
                .expect("certificate");
            std::fs::write(dir.path().join("server.pem"), &credential.certificate_pem).expect("certificate");
            std::fs::write(dir.path().join("server-key.pem"), &credential.key_pem).expect("key");
            if tls {
                served.push_str(&format!(
                    "  tls:\n    certificate: {d}/server.pem\n    key: {d}/server-key.pem\n",
                    d = dir.path().display()
                ));
            }
            // The token server first: a panic before the Registry exists would leak a started
            // pusher (nothing would kill it).
            if access == Access::Token {
                let server =
                    TokenServer::start(&credential.certificate_pem, authority.certificate_pem(), &credential.key_pem);
                served.push_str(&format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}/ca/ca.pem\n",
                    server.address,
                    dir.path().display()
                ));
                tokens = Some(server);
            }
            push_address = format!("127.0.0.1:{}", crate::free_port());
            pusher = Some(spawn(&dir, "pusher", &config(&push_address)));
        }
        if access == Access::Password {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).expect("htpasswd");
            served.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: trainyard-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let child = spawn(&dir, "registry", &served);
        let registry =
            Registry { child, address, push_address, pusher, dir, password: access == Access::Password, tokens };
        let up = crate::wait_until(Duration::from_secs(20), || {
            TcpStream::connect(&registry.address).is_ok() && TcpStream::connect(&registry.push_address).is_ok()
        });
        assert!(up, "the registry did not start: {}", registry.log());
        registry
    }

    /// A Docker `config.json` holding this registry's user and password.
    pub fn docker_config(&self) -> String {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        serde_json::json!({"auths": {self.address.clone(): {"auth": basic}}}).to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The reference of REPOSITORY:TAG as agents pull it.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.address)
    }

    /// How many times a blob (by digest) was sent to a client in full.
    pub fn blob_downloads(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("http.request.method=GET")
                    && l.contains(&format!("/blobs/{digest}"))
                    && l.contains("http.response.status=200")
            })
            .count()
    }

    /// Pushes `image` as REPOSITORY:TAG (through an index when `as_index`); the reference to pull.
    pub fn push(&self, repository: &str, tag: &str, image: &BusyboxImage, as_index: bool) -> String {
        for blob in [&image.layer, &image.config] {
            self.push_blob(repository, blob);
        }
        if as_index {
            self.put_manifest(repository, &digest(&image.manifest), MANIFEST_TYPE, &image.manifest);
            self.put_manifest(repository, tag, INDEX_TYPE, &image.index());
        } else {
            self.put_manifest(repository, tag, MANIFEST_TYPE, &image.manifest);
        }
        self.reference(repository, tag)
    }

    fn push_blob(&self, repository: &str, blob: &[u8]) {
        let (status, headers, _) = self.request("POST", &format!("/v2/{repository}/blobs/uploads/"), None, &[]);
        assert_eq!(status, 202, "starting an upload");
        let location =
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.clone()).expect("Location");
        let path = location.split_once(&self.push_address).map(|(_, p)| p.to_string()).unwrap_or(location);
        let separator = if path.contains('?') { '&' } else { '?' };
        let put = format!("{path}{separator}digest={}", digest(blob));
        let (status, _, body) = self.request("PUT", &put, Some("application/octet-stream"), blob);
        assert_eq!(status, 201, "uploading a blob: {body}");
    }

    fn put_manifest(&self, repository: &str, reference: &str, media_type: &str, manifest: &[u8]) {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let (status, _, body) = self.request("PUT", &path, Some(media_type), manifest);
        assert_eq!(status, 201, "putting a manifest: {body}");
    }

    /// One HTTP/1.1 request (the connection closed after it): status, headers, body.
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, String) {
        let mut stream = TcpStream::connect(&self.push_address).expect("registry");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.push_address,
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if self.password {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            head.push_str(&format!("Authorization: Basic {basic}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("request");
        stream.write_all(body).expect("body");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status");
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        (status, headers, rest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.pusher.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The service and issuer a token registry and its token server agree on.
const TOKEN_SERVICE: &str = "trainyard-tests";
const TOKEN_ISSUER: &str = "trainyard-tests-token-issuer";

/// Docker's token server, as small as it gets: `GET /token?service=..&scope=..` with USER and
/// PASSWORD (HTTP Basic) answers `{"token": JWT}` granting the scopes asked for; anything else 401.
struct TokenServer {
    address: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TokenServer {
    fn start(leaf_pem: &str, ca_pem: &str, key_pem: &str) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        // The leaf (and whatever chain its PEM holds), then the CA the registry trusts.
        let mut chain: Vec<String> = Vec::new();
        let certificates = |pem: &str| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("certificates (PEM)")
        };
        for der in certificates(leaf_pem).into_iter().chain(certificates(ca_pem)) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(der);
            if !chain.contains(&encoded) {
                chain.push(encoded);
            }
        }
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PKCS#8 key (PEM)").secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("an ECDSA P-256 key");
        let (stop, requests) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stopped, log) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    answer_token_request(stream, &chain, &key, &log);
                }
            }
        });
        TokenServer { address, stop, requests }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.address);
    }
}

/// `text` with its %XX escapes decoded (a query parameter's value).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer_token_request(
    stream: TcpStream,
    chain: &[String],
    key: &ring::signature::EcdsaKeyPair,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            authorization = v.trim().to_string();
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .flat_map(|s| percent_decoded(s).split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let accepted = authorization == format!("Basic {basic}");
    if let Ok(mut log) = log.lock() {
        log.push(format!("{} {}", scopes.join(","), if accepted { "accepted" } else { "refused" }));
    }
    let mut stream = stream;
    if !accepted {
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 28\r\nConnection: close\r\n\r\n{\"details\":\"wrong password\"}",
        );
        return;
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": chain});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": USER, "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
    let signature = key.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).expect("sign");
    let token = format!("{signing_input}.{}", url.encode(signature.as_ref()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Starts one docker-registry with `config`, its log in `<dir>/<name>.log`.
fn spawn(dir: &tempfile::TempDir, name: &str, config: &str) -> Child {
    let config_path = dir.path().join(format!("{name}.yml"));
    std::fs::write(&config_path, config).expect("config");
    let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
    Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("docker-registry (scripts/setup installs it)")
}
