//! A real image registry of the test's own: Debian's `docker-registry` (the CNCF distribution
//! registry) on a loopback port, its storage in a temp dir, optionally behind a password (htpasswd,
//! bcrypt), or HTTPS with a CA of its own. Images are pushed with the Registry v2 API over plain
//! HTTP; the registry's request log says what a pull fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

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
}

impl Registry {
    /// Anyone may pull and push.
    pub fn start() -> Registry {
        Registry::launch(false, false)
    }

    /// Only USER with PASSWORD may pull or push.
    pub fn start_with_password() -> Registry {
        Registry::launch(true, false)
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a CA of its own (`ca_file`).
    pub fn start_with_tls() -> Registry {
        Registry::launch(false, true)
    }

    /// The CA that signed a TLS registry's certificate (PEM).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    fn launch(password: bool, tls: bool) -> Registry {
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
        if tls {
            let authority = trainyard_pki::Authority::load_or_create(&dir.path().join("ca")).expect("CA");
            let credential = authority
                .issue_server_credential(&["127.0.0.1".to_string()], Duration::from_secs(3600))
                .expect("certificate");
            std::fs::write(dir.path().join("server.pem"), &credential.certificate_pem).expect("certificate");
            std::fs::write(dir.path().join("server-key.pem"), &credential.key_pem).expect("key");
            served.push_str(&format!(
                "  tls:\n    certificate: {d}/server.pem\n    key: {d}/server-key.pem\n",
                d = dir.path().display()
            ));
            push_address = format!("127.0.0.1:{}", crate::free_port());
            pusher = Some(spawn(&dir, "pusher", &config(&push_address)));
        }
        if password {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).expect("htpasswd");
            served.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: trainyard-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let child = spawn(&dir, "registry", &served);
        let registry = Registry { child, address, push_address, pusher, dir, password };
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
