//! Pulling a training image from its registry into containerd (containerd 1.6 has no Transfer
//! service, so the client does it): the manifest (through an index, this host's platform), the
//! config and the layers fetched with `oci-client`, written into containerd's content store under a
//! lease, labelled for its garbage collector, unpacked layer by layer into snapshots, and recorded
//! as an image. Failures are SageMaker-style `ClientError`s naming the image and the cause.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use tracing::warn;

use crate::containerd::{
    BYTES_LABEL, Blob, Containerd, Image, ImageConfig, LAST_USED_LABEL, MAX_METADATA_BYTES, Manifest, WriteFailure,
};

/// What a pull accepts, OCI's and Docker's (schema 2) manifests and indexes.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Tries at a layer's download: the first, then resumptions where the network cut it.
const DOWNLOAD_ATTEMPTS: u32 = 4;
/// A pull that has not finished by then loses its lease's protection (what it wrote may be collected).
const LEASE: Duration = Duration::from_secs(6 * 3600);

/// Registry credentials, from a Docker `config.json`: `{"auths": {"HOST[:PORT]": {"auth":
/// base64("USER:PASSWORD")}}}` (or `username` and `password`; an ECR token is the password of user
/// `AWS`), and credential helpers as Docker runs them: `credHelpers` (`{"HOST": "ecr-login"}`) and
/// `credsStore` (for every other registry), each the program `docker-credential-<name>` on the
/// agent's PATH, asked at every pull (their tokens expire).
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    passwords: HashMap<String, (String, String)>,
    helpers: HashMap<String, String>,
    store: Option<String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// What a credential helper answers to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// A helper that has not answered by then has failed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Of a helper's answer, at most this much is read.
const HELPER_ANSWER_BYTES: u64 = 64 * 1024;

/// A helper's name is the end of a program's name, never a path.
fn valid_helper(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && name != ".."
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(json: &str) -> Result<Credentials, String> {
        let config: DockerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut credentials = HashMap::new();
        for (server, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("auths.{server}.auth is not base64: {e}"))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| format!("auths.{server}.auth is not USER:PASSWORD in UTF-8"))?;
                    let (user, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| format!("auths.{server}.auth is not base64 of USER:PASSWORD"))?;
                    (user.to_string(), password.to_string())
                }
                (None, Some(user), Some(password)) => (user, password),
                _ => return Err(format!("auths.{server} has neither auth nor username and password")),
            };
            credentials.insert(registry_host(&server), pair);
        }
        let named = config.cred_helpers.iter().map(|(server, helper)| (format!("credHelpers.{server}"), helper));
        for (at, helper) in named.chain(config.creds_store.iter().map(|h| ("credsStore".to_string(), h))) {
            if !valid_helper(helper) {
                return Err(format!("{at}: '{helper}' is not a credential helper's name (docker-credential-<name>)"));
            }
        }
        let helpers =
            config.cred_helpers.into_iter().map(|(server, helper)| (registry_host(&server), helper)).collect();
        Ok(Credentials { passwords: credentials, helpers, store: config.creds_store })
    }

    /// How to sign in to `registry`: its helper (credHelpers), its password (auths), the default
    /// helper (credsStore), or anonymously. `Err` is a FailureReason.
    async fn for_registry(&self, registry: &str) -> Result<RegistryAuth, String> {
        let host = registry_host(registry);
        if let Some(helper) = self.helpers.get(&host) {
            return ask_helper(helper, &host).await;
        }
        if let Some((user, password)) = self.passwords.get(&host) {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        match &self.store {
            Some(helper) => ask_helper(helper, &host).await,
            None => Ok(RegistryAuth::Anonymous),
        }
    }

    pub fn len(&self) -> usize {
        self.passwords.len() + self.helpers.len() + usize::from(self.store.is_some())
    }
}

/// Runs `docker-credential-<helper> get` for `host`, as Docker does (the server on its standard
/// input, JSON on its output). A helper with no credentials for it answers anonymously.
async fn ask_helper(helper: &str, host: &str) -> Result<RegistryAuth, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let program = format!("docker-credential-{helper}");
    let failed = |why: String| format!("ClientError: the credential helper {program} failed for {host}: {why}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let run = async {
        // A helper need not read what it is told (one that fails at once does not): a closed
        // input is no error of ours.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(host.as_bytes()).await;
        }
        let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                pipe.take(HELPER_ANSWER_BYTES).read_to_end(&mut bytes).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(bytes)
        };
        let stdout = child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let stderr = child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let (out, err) = tokio::join!(read(stdout), read(stderr));
        let (out, err) = (out?, err?);
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(HELPER_TIMEOUT, run)
        .await
        .map_err(|_| failed("no answer in 30 s".into()))?
        .map_err(failed)?;
    if !status.success() {
        let said = String::from_utf8_lossy(if err.is_empty() { &out } else { &err }).trim().to_string();
        // The helper's protocol: this message means it has nothing for the server.
        if said.contains("credentials not found") {
            return Ok(RegistryAuth::Anonymous);
        }
        return Err(failed(format!("{status}: {}", said.lines().next().unwrap_or_default())));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out).map_err(|e| failed(format!("its answer: {e}")))?;
    if answer.username == "<token>" {
        return Err(failed("it answers an identity token, which only Docker's own token flow uses".into()));
    }
    Ok(RegistryAuth::Basic(answer.username, answer.secret))
}

/// `https://index.docker.io/v1/`, `registry-1.docker.io` and `docker.io` are one registry.
fn registry_host(server: &str) -> String {
    let host = server.trim().trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// The agent's way to registries.
pub struct Registries {
    client: Client,
    credentials: Credentials,
    /// An image larger than this (its blobs, compressed) is not pulled.
    max_image_bytes: u64,
    /// Nor one whose layers unpack to more than this.
    max_unpacked_bytes: u64,
}

impl Registries {
    /// `insecure`: registries (HOST:PORT) reached over plain HTTP, as Docker's `insecure-registries`;
    /// `ca_pem`: certificates to trust besides the system's.
    pub fn new(credentials: Credentials, insecure: &[String], ca_pem: Option<Vec<u8>>) -> Registries {
        let extra_root_certificates = ca_pem
            .map(|data| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            })
            .into_iter()
            .collect();
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure.to_vec()),
            extra_root_certificates,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("trainyard-agent/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        Registries { client: Client::new(config), credentials, max_image_bytes: u64::MAX, max_unpacked_bytes: u64::MAX }
    }

    /// Refuses images whose blobs (layers and config, compressed, as the manifest lists them)
    /// exceed `bytes`: what a job names must not fill the agent's disk.
    pub fn with_max_image_bytes(mut self, bytes: u64) -> Registries {
        self.max_image_bytes = bytes;
        self
    }

    /// Refuses images whose layers unpack to more than `bytes`: a small compressed layer can
    /// decompress to fill a disk.
    pub fn with_max_unpacked_bytes(mut self, bytes: u64) -> Registries {
        self.max_unpacked_bytes = bytes;
        self
    }

    /// The digest `reference`'s tag points at in its registry now. `Err` is a FailureReason.
    pub async fn current_digest(&self, reference: &str) -> Result<String, String> {
        let parsed: Reference =
            reference.parse().map_err(|e| format!("ClientError: {reference} is not an image reference: {e}"))?;
        let auth = self.credentials.for_registry(parsed.registry()).await?;
        self.client.fetch_manifest_digest(&parsed, &auth).await.map_err(|e| failure(reference, &parsed, e))
    }

    /// Pulls `reference` into containerd; `progress` is told (bytes fetched, bytes to fetch).
    /// `Err` is the job's FailureReason.
    pub async fn pull(
        &self,
        containerd: &Containerd,
        reference: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Image, String> {
        let parsed: Reference =
            reference.parse().map_err(|e| format!("ClientError: {reference} is not an image reference: {e}"))?;
        let lease = containerd.lease(LEASE).await?;
        let pulled = self.fetch(containerd, &lease, reference, &parsed, progress).await;
        containerd.end_lease(lease).await;
        pulled
    }

    async fn fetch(
        &self,
        containerd: &Containerd,
        lease: &crate::containerd::Lease,
        reference: &str,
        parsed: &Reference,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Image, String> {
        let failed = |e: OciDistributionError| failure(reference, parsed, e);
        let auth = self.credentials.for_registry(parsed.registry()).await?;
        let (bytes, digest) = self.client.pull_manifest_raw(parsed, &auth, MANIFEST_TYPES).await.map_err(failed)?;
        let (top, top_blob) = metadata(reference, &bytes, digest)?;
        let (is_index, index_labels) = (top.is_index(), top.gc_labels());
        // An index: the manifest for this host's platform, fetched by digest.
        let (manifest, manifest_blob, manifest_bytes) = if is_index {
            let chosen = top
                .this_platform()
                .ok_or_else(|| format!("ClientError: {reference} names an index without manifests"))?
                .clone();
            let by_digest = Reference::with_digest(
                parsed.registry().to_string(),
                parsed.repository().to_string(),
                chosen.digest.clone(),
            );
            let (bytes, digest) =
                self.client.pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES).await.map_err(failed)?;
            let (manifest, blob) = metadata(reference, &bytes, digest)?;
            (manifest, blob, bytes.to_vec())
        } else {
            (top, top_blob.clone(), bytes.to_vec())
        };
        let config_blob =
            manifest.config.clone().ok_or_else(|| format!("ClientError: {reference} has no image config"))?;
        let image_bytes = manifest.layers.iter().chain([&config_blob]).map(|b| b.size.max(0) as u64).sum::<u64>();
        if image_bytes > self.max_image_bytes {
            const MIB: u64 = 1024 * 1024;
            return Err(format!(
                "ClientError: {reference} is {} MiB (its layers, compressed), more than this agent pulls ({} MiB)",
                image_bytes.div_ceil(MIB),
                self.max_image_bytes / MIB
            ));
        }
        if config_blob.size < 0 || config_blob.size as usize > MAX_METADATA_BYTES {
            return Err(format!("ClientError: {reference}'s image config is larger than {MAX_METADATA_BYTES} bytes"));
        }
        let mut config_bytes = Vec::new();
        self.client.pull_blob(parsed, &descriptor(&config_blob), &mut config_bytes).await.map_err(failed)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("ClientError: {reference}'s image config: {e}"))?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(format!(
                "ClientError: {reference} has {} layers and its config {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            ));
        }
        let chain =
            crate::containerd::chain_id(&diff_ids).ok_or_else(|| format!("ClientError: {reference} has no layers"))?;

        // The layers not in the store yet are what is downloaded.
        let mut missing = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
            if containerd.has_blob(&layer.digest).await? {
                containerd.hold_blob(lease, &layer.digest, labels).await?;
            } else {
                missing.push((layer, labels));
            }
        }
        let total: u64 = missing.iter().map(|(layer, _)| layer.size.max(0) as u64).sum();
        let mut done = 0u64;
        progress(0, total);
        for (layer, labels) in missing {
            // A download the network cuts goes on where it stopped (an HTTP range request), a few
            // times, with what arrived kept in containerd's ingest; containerd checks the digest
            // of the whole at commit.
            let mut from = 0u64;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (stream, start) = if from == 0 {
                    (self.client.pull_blob_stream(parsed, &descriptor(layer)).await.map_err(failed)?.stream, 0)
                } else {
                    match self.client.pull_blob_stream_partial(parsed, &descriptor(layer), from, None).await {
                        Ok(BlobResponse::Partial(partial)) => (partial.stream, from),
                        // A registry that ignores ranges sends it all again: the ingest starts over.
                        Ok(BlobResponse::Full(full)) => (full.stream, 0),
                        Err(e) => return Err(failed(e)),
                    }
                };
                if start == 0 && from > 0 {
                    done = done.saturating_sub(from);
                }
                let stream = stream.map(|chunk| {
                    chunk.map_err(|e| format!("ClientError: downloading {reference} (layer {}): {e}", layer.digest))
                });
                let written = containerd
                    .write_blob(lease, layer, labels.clone(), stream, start, &mut |n| {
                        done += n;
                        progress(done, total);
                    })
                    .await;
                match written {
                    Ok(()) => break,
                    Err(WriteFailure { resume_at: Some(at), reason }) if attempt < DOWNLOAD_ATTEMPTS => {
                        warn!(image = reference, layer = %layer.digest, at, attempt, %reason, "download cut: resuming");
                        from = at;
                    }
                    Err(failure) => return Err(failure.reason),
                }
            }
        }

        // The config keeps the unpacked snapshot, the manifest its blobs, the index its manifest.
        let snapshot_label =
            HashMap::from([(format!("containerd.io/gc.ref.snapshot.{}", super::containerd::SNAPSHOTTER), chain)]);
        store_small(containerd, lease, &config_blob, config_bytes, snapshot_label).await?;
        store_small(containerd, lease, &manifest_blob, manifest_bytes, manifest.gc_labels()).await?;
        if is_index {
            store_small(containerd, lease, &top_blob, bytes.to_vec(), index_labels).await?;
        }
        let unpacked =
            containerd.unpack(reference, lease, &manifest.layers, &diff_ids, self.max_unpacked_bytes).await?;
        let blobs: i64 = manifest.layers.iter().map(|l| l.size).sum::<i64>() + config_blob.size + manifest_blob.size;
        let labels = HashMap::from([
            (BYTES_LABEL.to_string(), (blobs.max(0) as u64 + unpacked).to_string()),
            (LAST_USED_LABEL.to_string(), crate::image_cache::now_seconds().to_string()),
        ]);
        containerd.put_image(reference, &top_blob, labels).await?;
        containerd
            .image(reference)
            .await?
            .ok_or_else(|| format!("ClientError: {reference} was pulled and is not in containerd's store"))
    }
}

async fn store_small(
    containerd: &Containerd,
    lease: &crate::containerd::Lease,
    blob: &Blob,
    bytes: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<(), String> {
    if containerd.has_blob(&blob.digest).await? {
        return containerd.hold_blob(lease, &blob.digest, labels).await;
    }
    let once = futures::stream::iter([Ok::<_, String>(bytes)]);
    containerd.write_blob(lease, blob, labels, once, 0, &mut |_| {}).await.map_err(|f| f.reason)
}

/// A manifest or index as fetched: parsed, and described as a blob.
fn metadata(reference: &str, bytes: &[u8], digest: String) -> Result<(Manifest, Blob), String> {
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(format!("ClientError: {reference}'s manifest is larger than {MAX_METADATA_BYTES} bytes"));
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("ClientError: {reference}'s manifest: {e}"))?;
    let media_type = if !manifest.media_type.is_empty() {
        manifest.media_type.clone()
    } else if manifest.is_index() {
        MANIFEST_TYPES[0].to_string()
    } else {
        MANIFEST_TYPES[1].to_string()
    };
    let blob = Blob { media_type, digest, size: bytes.len() as i64, platform: None };
    Ok((manifest, blob))
}

fn descriptor(blob: &Blob) -> OciDescriptor {
    OciDescriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
        ..Default::default()
    }
}

/// A registry's answer as a FailureReason, SageMaker-style.
fn failure(reference: &str, parsed: &Reference, error: OciDistributionError) -> String {
    let registry = parsed.registry();
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            format!("ClientError: the training image {reference} was not found in its registry")
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            format!("ClientError: the training image {reference} was not found in its registry")
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            refused(reference, registry)
        }
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            refused(reference, registry)
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => refused(reference, registry),
        OciDistributionError::ServerError { code: 404, .. } => {
            format!("ClientError: the training image {reference} was not found in its registry")
        }
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            // reqwest's own text names the URL only; the cause is further down ("Connection refused").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(source) = cause.source() {
                cause = source;
            }
            if cause.to_string().contains("certificate") {
                format!(
                    "ClientError: the registry {registry}'s TLS certificate is not trusted ({cause}) for the training image {reference}: give the agent its CA (--registry-ca)"
                )
            } else {
                format!("ClientError: cannot reach the registry {registry} for the training image {reference}: {cause}")
            }
        }
        other => format!("ClientError: pulling the training image {reference} from {registry}: {other}"),
    }
}

fn refused(reference: &str, registry: &str) -> String {
    format!(
        "ClientError: the registry {registry} refused access to the training image {reference}: check the agent's registry credentials (--registry-auth)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn docker_config_auths_are_read_in_both_forms() {
        let json = r#"{"auths": {
            "127.0.0.1:5000": {"auth": "dHJhaW5lcjpzM2NyZXQ="},
            "https://index.docker.io/v1/": {"username": "AWS", "password": "token:with:colons"}
        }}"#;
        let credentials = Credentials::parse(json).expect("parses");
        assert_eq!(credentials.len(), 2);
        assert!(matches!(credentials.for_registry("127.0.0.1:5000").await,
            Ok(RegistryAuth::Basic(u, p)) if u == "trainer" && p == "s3cret"));
        assert!(matches!(credentials.for_registry("docker.io").await,
            Ok(RegistryAuth::Basic(u, p)) if u == "AWS" && p == "token:with:colons"));
        assert!(matches!(credentials.for_registry("ghcr.io").await, Ok(RegistryAuth::Anonymous)));
    }

    #[test]
    fn credential_helpers_are_names_never_paths() {
        let config = r#"{"credHelpers": {"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}, "credsStore": "pass"}"#;
        assert_eq!(Credentials::parse(config).expect("parses").len(), 2);
        for bad in ["../../bin/sh", "/usr/bin/evil", "", "a b"] {
            let config = serde_json::json!({"credHelpers": {"r.example": bad}}).to_string();
            let error = Credentials::parse(&config).unwrap_err();
            assert!(error.contains("credHelpers.r.example"), "{bad}: {error}");
        }
        let error = Credentials::parse(r#"{"credsStore": "x/y"}"#).unwrap_err();
        assert!(error.contains("credsStore"), "{error}");
    }

    #[test]
    fn broken_credentials_name_the_entry() {
        let error = Credentials::parse(r#"{"auths": {"r.example": {"auth": "not base64!"}}}"#).unwrap_err();
        assert!(error.contains("auths.r.example.auth"), "{error}");
        let error = Credentials::parse(r#"{"auths": {"r.example": {"username": "u"}}}"#).unwrap_err();
        assert!(error.contains("auths.r.example"), "{error}");
        // base64("nocolon")
        let error = Credentials::parse(r#"{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}"#).unwrap_err();
        assert!(error.contains("USER:PASSWORD"), "{error}");
    }
}
