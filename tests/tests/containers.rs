//! Training images run as containers through a real containerd (the test's own), as SageMaker runs
//! them: the image's entrypoint with `train`, the instance's work dir at /opt/ml, its uid, its
//! instance type's memory, SIGTERM and a grace period on stop; nothing is left in containerd after.

use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, INSTANCE_UIDS, example_json, number_after, on_both_backends};
use trainyard_testkit::containerd::{BusyboxImage, Containerd};
use trainyard_testkit::registry::Registry;

const IMAGE: &str = "localhost/trainyard-e2e/trainer:1";

/// The image's training script: what SageMaker's contract gives it, then a model and output data.
const TRAIN: &str = r#"#!/bin/sh
echo "args=$* uid=$(id -u) gid=$(id -g)"
echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"
echo "hyperparameters=$(cat /opt/ml/input/config/hyperparameters.json | tr -d ' \n')"
echo "channel=$(ls /opt/ml/input/data/train) rows=$(cat /opt/ml/input/data/train/* | wc -l)"
echo "sm_model_dir=$SM_MODEL_DIR epochs=$SM_HP_EPOCHS"
echo "resolver=$(tr '\n' '|' < /etc/resolv.conf)"
case "$MODE" in
  sleep)
    trap 'echo "got TERM, saving"; echo saved > /opt/ml/model/partial.txt; exit 0' TERM
    echo sleeping
    while true; do sleep 1; done ;;
  hog)
    echo filling
    exec dd if=/dev/zero of=/dev/shm/fill bs=1048576 count=400 ;;
  disk)
    # 1.2 GiB into the image's world-writable /var/tmp: the container's own layer, not /opt/ml.
    echo filling-disk
    dd if=/dev/zero of=/var/tmp/fill bs=1048576 count=1200
    echo disk-filled
    sleep 120 ;;
  tamper)
    # Run as root: tries to write through its staged input into the input cache's copy.
    f=/opt/ml/input/data/train/train.csv
    echo "input-sum=$(md5sum < "$f" | cut -c1-12)"
    if echo tampered-4b1e >> "$f"; then echo appended; fi ;;
  hide)
    # Run as root: 1.2 GiB in a file with a second link from the start, root's with other links
    # as the cache's files are.
    : > /opt/ml/output/fill
    ln /opt/ml/output/fill /opt/ml/output/alias
    dd if=/dev/zero of=/opt/ml/output/fill bs=1048576 count=1200 conv=notrunc
    echo hidden
    sleep 120 ;;
  bomb)
    # 100 processes; the shell dies at the first fork refused.
    for i in $(seq 100); do sleep 30 & done
    echo "all forked" ;;
esac
echo trained > /opt/ml/model/model.txt
echo "loss=0.25"
"#;

fn request(name: &str, image: &str, environment: Value) -> Value {
    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!(name);
    r["AlgorithmSpecification"]["TrainingImage"] = json!(image);
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "loss", "Regex": "loss=([0-9.]+)"}]);
    r["HyperParameters"] = json!({"epochs": "3"});
    r["Environment"] = environment;
    r
}

fn submit(c: &Coordinator, r: &Value) -> Value {
    let name = r["TrainingJobName"].as_str().expect("name").to_string();
    c.create_training_job(r);
    c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", &name], |d| {
        !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress" | "Stopping"))
    })
}

on_both_backends!(
    an_image_runs_as_a_container_with_the_sagemaker_contract,
    an_image_is_pulled_once_from_a_private_registry_and_collected_when_the_cache_is_full
);

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

fn an_image_runs_as_a_container_with_the_sagemaker_contract(backend: Backend) {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let c = Coordinator::start_on(backend);
    // Its container ids are its jobs' names: the other backend's run of it may run at once, and
    // runc keeps its containers' state by id in one place per namespace on the host.
    let job = |name: &str| format!("{}-{name}", backend_name(backend));
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    // As production runs agents: images only.
    let agent =
        c.start_agent_for_images_only("containers", &["--advertise-vcpus", "8", "--containerd-socket", &socket]);
    agent.expect_log("pull failed");
    let agents = c.json(&["agents", "list"]);
    assert!(
        agents["Agents"][0]["ContainerRuntime"].as_str().is_some_and(|r| r.starts_with("containerd 1.")),
        "{agents:#}"
    );
    assert_eq!(agents["Agents"][0]["HostPrograms"], json!(false), "{agents:#}");

    let done = submit(&c, &request(&job("in-a-container"), IMAGE, json!({})));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs(&job("in-a-container")));
    let logs = c.logs(&job("in-a-container"));
    assert!(logs.contains("args=train "), "the image's entrypoint, with train: {logs}");
    assert!(INSTANCE_UIDS.contains(&number_after(&logs, "uid=")), "a uid of its own, not root: {logs}");
    assert!(logs.contains("capeff=0000000000000000"), "no capabilities: {logs}");
    assert!(logs.contains("hyperparameters={\"epochs\":\"3\"}"), "{logs}");
    assert!(logs.contains("channel=train.csv rows="), "the channel is staged at /opt/ml/input/data: {logs}");
    assert!(logs.contains("sm_model_dir=/opt/ml/model epochs=3"), "{logs}");
    // The image has no resolver configuration: it gets the host's, but for the resolvers its own
    // network namespace cannot reach (loopback, IPv6).
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let reachable: String = host
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next() != Some("nameserver")
                || words.next().and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()).is_some_and(|a| !a.is_loopback())
        })
        .map(|l| format!("{l}|"))
        .collect();
    assert!(logs.contains(&format!("resolver={reachable}\n")), "{reachable}: {logs}");
    assert_eq!(done["FinalMetricDataList"][0]["Value"], json!(0.25), "{done:#}");
    let model = c.output_dir().join(format!("blobs-logreg-baseline/{}/output/model.tar.gz", job("in-a-container")));
    assert!(model.is_file(), "{}", model.display());
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || containerd.containers().is_empty()
            && containerd.snapshots().len() == 1),
        "left in containerd: {:?} {:?} (only the image's own snapshot stays)",
        containerd.containers(),
        containerd.snapshots()
    );

    // A program on the host waits: no agent runs host programs, and its status says so.
    let mut program = request(&job("host-program"), "deploy/examples/trainer/train.py", json!({}));
    program["TrainingJobName"] = json!(job("host-program"));
    let file = c.write(&format!("{}.json", job("host-program")), &program.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let waiting = c.wait_json(&["training-jobs", "describe", &job("host-program")], |d| {
        d["SecondaryStatusTransitions"].to_string().contains("no agent runs host programs")
    });
    assert_eq!(waiting["TrainingJobStatus"], "InProgress", "{waiting:#}");
    c.cli(&["training-jobs", "stop", &job("host-program")]).assert_success();

    // An image this agent does not have is pulled from its registry; none answers there.
    let missing = submit(&c, &request(&job("missing-image"), "localhost/trainyard-e2e/absent:1", json!({})));
    assert_eq!(missing["TrainingJobStatus"], "Failed");
    let reason = missing["FailureReason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "ClientError: cannot reach the registry localhost for the training image localhost/trainyard-e2e/absent:1"
        ),
        "{reason}"
    );
}

/// The agent's registry credentials: a Docker config.json with the test registry's password.
fn registry_auth(c: &Coordinator, registry: &Registry) -> String {
    c.write_private("registry-auth.json", &registry.docker_config()).to_str().expect("utf-8").to_string()
}

fn start(c: &Coordinator, name: &str, image: &str) {
    let file = c.write(&format!("{name}.json"), &request(name, image, json!({})).to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
}

fn wait_done(c: &Coordinator, name: &str) -> Value {
    c.wait_json_for(Duration::from_secs(90), &["training-jobs", "describe", name], |d| {
        !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress" | "Stopping"))
    })
}

fn an_image_is_pulled_once_from_a_private_registry_and_collected_when_the_cache_is_full(backend: Backend) {
    let containerd = Containerd::start();
    let registry = Registry::start_with_password();
    let trainer = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let image = registry.push("e2e/trainer", "1", &trainer, true);
    let c = Coordinator::start_on(backend);
    // Its container ids are its jobs' names: see the test above.
    let job = |name: &str| format!("{}-{name}", backend_name(backend));
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let auth = registry_auth(&c, &registry);
    // One busybox image (about 1 MB compressed, 2 unpacked) fits in 4 MiB; two do not.
    let args = [
        "--advertise-vcpus",
        "8",
        "--containerd-socket",
        &socket,
        "--registry-auth",
        &auth,
        "--insecure-registry",
        &registry.address,
        "--image-cache-mib",
        "4",
    ];
    let _agent = c.start_agent_for_images_only("puller", &args);

    // Two trials at once: one pull, which the SecondaryStatus shows (the second trial may find the
    // image already pulled).
    start(&c, &job("first"), &image);
    start(&c, &job("second"), &image);
    let mut messages = Vec::new();
    for name in [job("first"), job("second")] {
        let name = name.as_str();
        let done = wait_done(&c, name);
        // containerd's log says why a container's first process ended before it was started
        // (seen once in a full run, both backends at the same moment; not reproduced alone).
        assert_eq!(
            done["TrainingJobStatus"],
            "Completed",
            "{done:#}\n{}\ncontainerd: {}",
            c.logs(name),
            containerd.log()
        );
        assert!(c.logs(name).contains("args=train "), "{}", c.logs(name));
        for transition in done["SecondaryStatusTransitions"].as_array().into_iter().flatten() {
            if transition["Status"] == "Downloading" {
                messages.push(transition["StatusMessage"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(messages.iter().any(|m| m.starts_with("Downloading the training image (")), "{messages:?}");
    assert_eq!(registry.blob_downloads(&trainer.layer_digest()), 1, "pulled once: {}", registry.log());
    assert!(containerd.images().contains(&image), "{:?}", containerd.images());

    // By digest: the same content, nothing downloaded again.
    let by_digest =
        format!("{}/e2e/trainer@{}", registry.address, trainyard_testkit::containerd::digest(&trainer.index()));
    start(&c, &job("by-digest"), &by_digest);
    let done = wait_done(&c, &job("by-digest"));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs(&job("by-digest")));
    assert_eq!(registry.blob_downloads(&trainer.layer_digest()), 1, "{}", registry.log());

    // Another image fills the cache beyond its limit: the least recently used ones, the trainer's,
    // are deleted (containerd's collector frees their layers), and pulled again when needed.
    let other = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755), ("/other", "x", 0o644)]);
    let other_image = registry.push("e2e/other", "1", &other, false);
    start(&c, &job("other"), &other_image);
    let done = wait_done(&c, &job("other"));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs(&job("other")));
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || containerd.images() == vec![other_image.clone()]),
        "only the image used last stays: {:?}",
        containerd.images()
    );
    start(&c, &job("again"), &image);
    let done = wait_done(&c, &job("again"));
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs(&job("again")));
    assert_eq!(registry.blob_downloads(&trainer.layer_digest()), 2, "{}", registry.log());
}

/// A registry of the test's own, for behaviour a real one does not show: it serves the manifest
/// and blobs written in its dir, whatever they say, for any repository. When its dir holds
/// `cut.name` (a blob's hex digest), its first answer for that blob breaks off halfway (the
/// connection closes, as a flaky network does), later ones honour HTTP ranges, and each request for
/// it appends its Range header (or "-") to `requests`.
const FAKE_REGISTRY: &str = r#"
import http.server, os, re, sys
root = sys.argv[1]
cut_path = os.path.join(root, "cut.name")
cut = open(cut_path).read() if os.path.exists(cut_path) else None
state = {"cut": False}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body, content_type, digest=None, status=200, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
    def do_HEAD(self):
        self.do_GET()
    def do_GET(self):
        if self.path == "/v2/":
            return self.answer(b"{}", "application/json")
        if "/manifests/" in self.path:
            body = open(os.path.join(root, "manifest"), "rb").read()
            return self.answer(body, "application/vnd.oci.image.manifest.v1+json", open(os.path.join(root, "manifest.digest")).read())
        if "/blobs/sha256:" in self.path:
            name = self.path.rsplit(":", 1)[1]
            path = os.path.join(root, name)
            if not os.path.exists(path):
                return self.send_error(404)
            body = open(path, "rb").read()
            if name != cut:
                return self.answer(body, "application/octet-stream")
            ranged = self.headers.get("Range")
            with open(os.path.join(root, "requests"), "a") as log:
                log.write((ranged or "-") + "\n")
            if not state["cut"]:
                state["cut"] = True
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if ranged:
                start = int(re.match(r"bytes=(\d+)-", ranged).group(1))
                return self.answer(body[start:], "application/octet-stream", status=206,
                                   extra=[("Content-Range", "bytes %d-%d/%d" % (start, len(body) - 1, len(body)))])
            return self.answer(body, "application/octet-stream")
        self.send_error(404)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
"#;

/// A [`FAKE_REGISTRY`] serving `manifest` and `image`'s config and layer (the layer cut once when
/// `cut_layer`): its dir, its process and its HOST:PORT.
fn fake_registry(
    image: &BusyboxImage,
    manifest: &[u8],
    cut_layer: bool,
) -> (tempfile::TempDir, trainyard_testkit::Daemon, String) {
    use trainyard_testkit::containerd::digest;
    let served = tempfile::tempdir().expect("dir");
    std::fs::write(served.path().join("manifest"), manifest).expect("write");
    std::fs::write(served.path().join("manifest.digest"), digest(manifest)).expect("write");
    for blob in [&image.config, &image.layer] {
        let name = digest(blob).trim_start_matches("sha256:").to_string();
        std::fs::write(served.path().join(name), blob).expect("write");
    }
    if cut_layer {
        std::fs::write(served.path().join("cut.name"), digest(&image.layer).trim_start_matches("sha256:"))
            .expect("write");
    }
    let port = trainyard_testkit::free_port();
    let mut server = std::process::Command::new("python3");
    server.arg("-c").arg(FAKE_REGISTRY).arg(served.path()).arg(port.to_string());
    let server = trainyard_testkit::Daemon::spawn("fake-registry", server, served.path());
    let address = format!("127.0.0.1:{port}");
    let up = trainyard_testkit::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_ok());
    assert!(up, "the registry did not start: {}", server.log());
    (served, server, address)
}

/// A registry the job's submitter picked (a TrainingImage may name any registry the agent reaches)
/// that lies: its manifest declares a 100-byte layer and it sends the whole layer. The agent stops
/// reading at the declared size and fails the job; nothing of it stays in containerd.
#[test]
fn a_registry_that_sends_more_than_its_manifest_declares_is_cut_off() {
    let containerd = Containerd::start();
    let image = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let mut manifest: Value = serde_json::from_slice(&image.manifest).expect("manifest");
    manifest["layers"][0]["size"] = json!(100);
    let manifest = serde_json::to_vec(&manifest).expect("json");
    assert!(image.layer.len() > 100_000, "the layer is far larger than declared");
    let (_served, _server, address) = fake_registry(&image, &manifest, false);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--insecure-registry", &address];
    let agent = c.start_agent_for_images_only("puller", &args);
    agent.expect_log("pull failed");
    start(&c, "lied-to", &format!("{address}/e2e/liar:1"));
    let done = wait_done(&c, "lied-to");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("sent more than the 100 bytes the manifest declares"), "{reason}");
    assert!(containerd.images().is_empty() && containerd.containers().is_empty(), "{:?}", containerd.images());
}

/// A layer download the network cuts halfway goes on where it stopped: the second request asks
/// for the rest (an HTTP range), and the image runs.
#[test]
fn a_layer_download_the_network_cuts_goes_on_where_it_stopped() {
    let containerd = Containerd::start();
    let image = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let (served, _server, address) = fake_registry(&image, &image.manifest, true);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--insecure-registry", &address];
    let agent = c.start_agent_for_images_only("puller", &args);
    start(&c, "resumed", &format!("{address}/e2e/flaky:1"));
    let done = wait_done(&c, "resumed");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", agent.log());
    let requests = std::fs::read_to_string(served.path().join("requests")).expect("requests");
    let requests: Vec<&str> = requests.lines().collect();
    assert_eq!(requests.len(), 2, "cut once, then resumed: {requests:?}");
    assert_eq!(requests[0], "-");
    let from: usize = requests[1]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a range from where it stopped: {requests:?}"));
    assert!(from > 0 && from <= image.layer.len() / 2, "{from} of {}", image.layer.len());
    agent.expect_log("download cut: resuming");
}

/// containerd lets one write at a time hold a layer's ingest and refuses a second at once: a pull
/// that finds another write holding it (another pull of the same layer; or its own write that the
/// network cut, until containerd has seen that stream end) waits for it instead of failing.
#[test]
fn a_layer_another_write_holds_is_waited_for() {
    let containerd = Containerd::start();
    let image = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let (_served, _server, address) = fake_registry(&image, &image.manifest, false);
    // Another writer of the layer holds its ingest, under the name the agent writes it by, for as
    // long as its input stays open.
    let layer = image.layer_digest();
    let mut holder = containerd
        .ctr_command(&[
            "content",
            "ingest",
            "--expected-size",
            &image.layer.len().to_string(),
            "--expected-digest",
            &layer,
            &format!("trainyard-{layer}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr content ingest");
    let locked = trainyard_testkit::wait_until(Duration::from_secs(10), || {
        let out = containerd.ctr(&["content", "active"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("trainyard-{layer}"))
    });
    assert!(locked, "the other write did not open the ingest");
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--insecure-registry", &address];
    let agent = c.start_agent_for_images_only("puller", &args);
    start(&c, "waits", &format!("{address}/e2e/held:1"));
    std::thread::sleep(Duration::from_secs(3));
    let waiting = c.json(&["training-jobs", "describe", "waits"]);
    assert_eq!(
        waiting["TrainingJobStatus"], "InProgress",
        "it waits while the other write holds the layer: {waiting:#}"
    );
    // The other write ends without storing it (killed): the pull goes on.
    let _ = holder.kill();
    let _ = holder.wait();
    let done = wait_done(&c, "waits");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", agent.log());
}

/// A registry behind a token server (Docker's token authentication, as ECR, GHCR and Docker Hub
/// work): the agent's user and password fetch a bearer token scoped to the repository, and the
/// pull goes through with it; a wrong password is refused by the token server and fails the job.
#[test]
fn a_registry_behind_a_token_server_is_pulled_from_with_a_bearer_token() {
    use base64::Engine;
    use trainyard_testkit::registry::{PASSWORD, USER};
    let containerd = Containerd::start();
    let (good, wrong) = (Registry::start_with_token(), Registry::start_with_token());
    let trainer = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let (signed, refused) =
        (good.push("e2e/trainer", "1", &trainer, false), wrong.push("e2e/trainer", "1", &trainer, false));
    let c = Coordinator::start();
    let basic = |password: &str| base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let auths = json!({"auths": {
        good.address.clone(): {"auth": basic(PASSWORD)},
        wrong.address.clone(): {"auth": basic("not-the-password")},
    }});
    let auth = c.write_private("registry-auth.json", &auths.to_string());
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = [
        "--advertise-vcpus",
        "8",
        "--containerd-socket",
        &socket,
        "--registry-auth",
        auth.to_str().expect("utf-8"),
        "--insecure-registry",
        &good.address,
        "--insecure-registry",
        &wrong.address,
    ];
    let agent = c.start_agent_for_images_only("bearer", &args);
    agent.expect_log("pull failed");
    start(&c, "with-token", &signed);
    let done = wait_done(&c, "with-token");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", agent.log());
    let asked = good.token_requests();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r == "repository:e2e/trainer:pull accepted"),
        "one scope, the repository's pull: {asked:?}"
    );
    assert_eq!(good.blob_downloads(&trainer.layer_digest()), 1, "{}", good.log());

    start(&c, "without-token", &refused);
    let done = wait_done(&c, "without-token");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("ClientError: ") && reason.contains(refused.as_str()), "{reason}");
    assert!(wrong.token_requests().iter().any(|r| r.ends_with(" refused")), "{:?}", wrong.token_requests());
    assert_eq!(wrong.blob_downloads(&trainer.layer_digest()), 0, "{}", wrong.log());
}

/// Credentials from Docker's credential helpers (`credHelpers`), as ECR's `docker-credential-ecr-login`
/// gives them: the helper is asked at each pull with the registry on its standard input; one that
/// fails fails the job, naming it.
#[test]
fn credential_helpers_sign_pulls_in_and_a_failing_one_fails_the_job() {
    use std::os::unix::fs::PermissionsExt;
    let containerd = Containerd::start();
    let (good, broken) = (Registry::start_with_password(), Registry::start_with_password());
    let trainer = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let (signed, unsigned) =
        (good.push("e2e/trainer", "1", &trainer, false), broken.push("e2e/trainer", "1", &trainer, false));
    let c = Coordinator::start();
    let helpers = c.programs_dir().join("helpers");
    std::fs::create_dir_all(&helpers).expect("dir");
    let asked = c.shared_file("helper-asked");
    let helper = |name: &str, body: String| {
        let path = helpers.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    helper(
        "trainyard-good",
        format!(
            "[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> {asked}\n\
             [ \"$server\" = {host} ] || {{ echo 'credentials not found in native keychain' >&2; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n",
            asked = asked.display(),
            host = good.address,
            user = trainyard_testkit::registry::USER,
            password = trainyard_testkit::registry::PASSWORD
        ),
    );
    helper("trainyard-broken", "echo 'the keyring is locked' >&2\nexit 3\n".into());
    let config =
        json!({"credHelpers": {good.address.clone(): "trainyard-good", broken.address.clone(): "trainyard-broken"}});
    let auth = c.write_private("registry-auth.json", &config.to_string()).to_str().expect("utf-8").to_string();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = [
        "--advertise-vcpus",
        "8",
        "--containerd-socket",
        &socket,
        "--registry-auth",
        &auth,
        "--insecure-registry",
        &good.address,
        "--insecure-registry",
        &broken.address,
    ];
    let path = format!("{}:{}", helpers.display(), std::env::var("PATH").unwrap_or_default());
    let agent = c.start_agent_for_images_only_with_env("helped", &args, &[("PATH", &path)]);
    agent.expect_log("pull failed");
    start(&c, "helped", &signed);
    let done = wait_done(&c, "helped");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}");
    let asked = std::fs::read_to_string(&asked).expect("asked");
    assert!(asked.lines().all(|l| l == good.address) && !asked.is_empty(), "{asked}");
    start(&c, "unhelped", &unsigned);
    let done = wait_done(&c, "unhelped");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ClientError: the credential helper docker-credential-trainyard-broken failed for")
            && reason.contains("the keyring is locked"),
        "{reason}"
    );
}

#[test]
fn pull_failures_fail_the_job_with_a_client_error() {
    let containerd = Containerd::start();
    let open = Registry::start();
    let private = Registry::start_with_password();
    let trainer = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let refused = private.push("e2e/trainer", "1", &trainer, false);
    // 3 MiB of text that compresses no smaller than 2.2 MiB (6 random bits a byte): over the agent's
    // 2 MiB.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: String = (0..3 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(state % 64) as usize])
        })
        .collect();
    let big = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755), ("/noise", &noise, 0o644)]);
    let too_big = open.push("e2e/big", "1", &big, false);
    // 64 MiB of zeros: a layer of about 64 KiB that unpacks past the agent's 16 MiB.
    let zeros = "\0".repeat(64 * 1024 * 1024);
    let bomb =
        BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755), ("/zeros", &zeros, 0o644)]);
    let bomb = open.push("e2e/bomb", "1", &bomb, false);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let nobody = format!("127.0.0.1:{}", trainyard_testkit::free_port());
    let args = [
        "--advertise-vcpus",
        "8",
        "--containerd-socket",
        &socket,
        "--insecure-registry",
        &open.address,
        "--insecure-registry",
        &private.address,
        "--insecure-registry",
        &nobody,
        "--max-image-mib",
        "2",
        "--max-image-unpacked-mib",
        "16",
    ];
    let agent = c.start_agent_for_images_only("puller", &args);
    agent.expect_log("pull failed");
    let cases = [
        ("not-pushed", format!("{}/e2e/absent:1", open.address), "was not found in its registry"),
        ("no-credentials", refused, "refused access to the training image"),
        ("no-registry", format!("{nobody}/e2e/trainer:1"), "cannot reach the registry"),
        ("too-big", too_big, "MiB (its layers, compressed), more than this agent pulls (2 MiB)"),
        ("bomb", bomb, "unpacks to more than 16 MiB (at layer sha256:"),
    ];
    for (name, image, _) in &cases {
        start(&c, name, image);
    }
    for (name, image, expected) in &cases {
        let done = wait_done(&c, name);
        assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
        let reason = done["FailureReason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("ClientError: ") && reason.contains(expected) && reason.contains(image.as_str()),
            "{reason}"
        );
    }
    assert!(containerd.images().is_empty() && containerd.containers().is_empty(), "{:?}", containerd.images());
}

#[test]
fn a_container_is_stopped_with_a_grace_period_and_held_to_its_memory_pids_and_volume() {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let config_dir = tempfile::tempdir().expect("dir");
    let config = config_dir.path().join("coordinator.toml");
    std::fs::write(&config, "[[instance_types]]\nname = \"ml.m5.large\"\nvcpus = 2\nmemory_mib = 128\n")
        .expect("write");
    let c = Coordinator::start_with_args(&["--config", config.to_str().expect("utf-8")]);
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--instance-pids-max", "32"];
    let _agent = c.start_agent_for_images_only("containers", &args);

    let mut sleeper = request("sleeper", IMAGE, json!({"MODE": "sleep"}));
    sleeper["ResourceConfig"]["InstanceType"] = json!("ml.m5.large");
    let file = c.write("sleeper.json", &sleeper.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    assert!(trainyard_testkit::wait_until(Duration::from_secs(30), || c.logs("sleeper").contains("sleeping")));
    c.cli(&["training-jobs", "stop", "sleeper"]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "sleeper"], |d| {
        !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress" | "Stopping"))
    });
    assert_eq!(done["TrainingJobStatus"], "Stopped", "{done:#}");
    assert!(c.logs("sleeper").contains("got TERM, saving"), "{}", c.logs("sleeper"));
    assert!(
        c.output_dir().join("blobs-logreg-baseline/sleeper/output/model.tar.gz").is_file(),
        "what it saved is uploaded"
    );

    let mut hog = request("hog", IMAGE, json!({"MODE": "hog"}));
    hog["ResourceConfig"]["InstanceType"] = json!("ml.m5.large");
    let done = submit(&c, &hog);
    assert_eq!(done["TrainingJobStatus"], "Failed", "{}", c.logs("hog"));
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("OutOfMemoryError") && reason.contains("128 MiB"), "{reason}");

    // What it writes into its own root file system counts against its volume (1 GB).
    let done = submit(&c, &request("filler", IMAGE, json!({"MODE": "disk"})));
    assert_eq!(done["TrainingJobStatus"], "Failed", "{}", c.logs("filler"));
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("ClientError: the instance's volume is full"), "{reason}");
    assert!(c.logs("filler").contains("filling-disk"));
    assert!(!c.output_dir().join("blobs-logreg-baseline/filler").exists(), "nothing of it uploaded");

    // A fork bomb stops at the agent's pids limit.
    let mut bomb = request("bomb", IMAGE, json!({"MODE": "bomb"}));
    bomb["ResourceConfig"]["InstanceType"] = json!("ml.m5.large");
    let done = submit(&c, &bomb);
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("can't fork: Resource temporarily unavailable"), "{reason}");
    assert!(!c.logs("bomb").contains("all forked"), "{}", c.logs("bomb"));
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || containerd.containers().is_empty()),
        "left in containerd: {:?}",
        containerd.containers()
    );
}

#[test]
fn an_agent_killed_with_its_container_running_removes_it_when_it_comes_back() {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    // Uids of its own: its container outlives it under its uid, which other tests' agents (on
    // this host, from the default range) would otherwise reclaim, killing the container first.
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--instance-uids", "70000-70009"];
    let agent = c.start_agent_for_images_only("crashes", &args);
    let file = c.write("orphan.json", &request("orphan", IMAGE, json!({"MODE": "sleep"})).to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(30), || c.logs("orphan").contains("sleeping")),
        "{:#}",
        c.json(&["training-jobs", "describe", "orphan"])
    );
    assert_eq!(containerd.containers().len(), 1);

    c.expect_log(r#"agent stream broke agent="crashes""#);
    agent.signal(trainyard_testkit::SIGKILL);
    drop(agent);
    // Its container runs on inside containerd, unsupervised, until the agent is back.
    assert_eq!(containerd.containers().len(), 1, "containerd keeps tasks of a dead client");
    let back = c.start_agent_for_images_only("crashes", &args);
    back.expect_log("removing a container an earlier run of this agent left");
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(20), || containerd.containers().is_empty()),
        "left in containerd: {:?}",
        containerd.containers()
    );
    let done = c.wait_json_for(Duration::from_secs(60), &["training-jobs", "describe", "orphan"], |d| {
        d["TrainingJobStatus"] != "InProgress"
    });
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
}

/// What the GPU test's image prints: its device nodes and the environment CDI gave it.
const LIST_GPUS: &str = r#"#!/bin/sh
echo "gpus=$(ls /dev | grep nvidia | tr '\n' ' ')"
echo "cdi=$FAKE_CDI cuda=$CUDA_VISIBLE_DEVICES"
echo "read=$(for d in /dev/nvidia*; do head -c 4 "$d"; done | wc -c)"
sleep 2
"#;

#[test]
fn gpus_reach_a_container_through_cdi_and_only_its_own() {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", LIST_GPUS, 0o755)]);
    let dir = tempfile::tempdir().expect("dir");
    let library = trainyard_testkit::nvml::build_fake_nvml(dir.path());
    let cdi = trainyard_testkit::nvml::fake_cdi(dir.path(), 2);

    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let fake_gpus = trainyard_testkit::nvml::gpus(2, "NVIDIA A10G", 23028);
    let args = [
        "--advertise-vcpus",
        "16",
        "--advertise-memory-mib",
        "65536",
        "--containerd-socket",
        &socket,
        "--nvml-library",
        library.to_str().expect("utf-8"),
        "--cdi-spec-dir",
        cdi.to_str().expect("utf-8"),
    ];
    let _agent = c.start_agent_for_images_only_with_env("gpus", &args, &[("FAKE_NVML_GPUS", fake_gpus.as_str())]);
    let mut seen = Vec::new();
    for name in ["gpu-a", "gpu-b"] {
        let mut r = request(name, IMAGE, json!({}));
        r["ResourceConfig"]["InstanceType"] = json!("ml.g5.xlarge");
        let file = c.write(&format!("{name}.json"), &r.to_string());
        c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    }
    for name in ["gpu-a", "gpu-b"] {
        let done = wait_done(&c, name);
        assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs(name));
        let logs = c.logs(name);
        let line = logs.lines().find_map(|l| l.split("gpus=").nth(1)).unwrap_or_default().trim().to_string();
        let gpus: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(gpus.len(), 2, "its GPU and the control node, no other: {logs}");
        assert!(gpus.contains(&"nvidiactl"), "{logs}");
        assert!(logs.contains("cdi=yes"), "the spec's environment: {logs}");
        assert!(logs.contains("read=8"), "both nodes can be read: {logs}");
        seen.push(gpus.into_iter().find(|g| *g != "nvidiactl").unwrap_or_default().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["nvidia0", "nvidia1"], "the two trials ran at once, each with a GPU of its own");

    // A GPU the specs do not name fails the job, saying so.
    std::fs::write(
        cdi.join("nvidia.json"),
        json!({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": []}).to_string(),
    )
    .expect("spec");
    let mut r = request("no-cdi", IMAGE, json!({}));
    r["ResourceConfig"]["InstanceType"] = json!("ml.g5.xlarge");
    let done = submit(&c, &r);
    assert_eq!(done["TrainingJobStatus"], "Failed");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("no CDI device nvidia.com/gpu="), "{reason}");
}

/// A two-instance job's image: algo-2 sends algo-1 a marker through their agents, then probes a
/// listener outside that isolation must hide.
const PEERS: &str = r#"#!/bin/sh
case "$(hostname)" in
  algo-1)
    # Answers one connection: keeps what it read, acknowledges it.
    nc -l -p 7000 -e sh -c 'read m; echo "$m" > /tmp/received; echo ack'
    echo "algo-1 received=$(cat /tmp/received)" ;;
  algo-2)
    # Its agent accepts at once and closes when algo-1 does not listen yet: only an ack counts.
    for i in $(seq 100); do
      reply=$( (echo "$MARKER"; sleep 1) | nc algo-1 7000 2>/dev/null)
      if [ "$reply" = ack ]; then echo "algo-2 sent"; break; fi
      sleep 0.2
    done
    if nc -w 2 "$PROBE" "$PROBE_PORT" < /dev/null 2>/dev/null; then echo "probe=reached"; else echo "probe=blocked"; fi ;;
esac
"#;

#[test]
fn a_two_instance_job_runs_in_containers_on_two_hosts_encrypted_and_isolated() {
    use trainyard_testkit::netns;
    assert!(netns::available(), "this test needs root and iproute2 (it creates network namespaces)");
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", PEERS, 0o755)]);
    let mut lan = netns::Lan::new();
    let c = Coordinator::start_for_lan(&[]);
    let (a, b) = (lan.add_host(), lan.add_host());
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket];
    let _agent_a = c.start_agent_on_for_images_only(&a, &lan, "host-a", &args);
    let _agent_b = c.start_agent_on_for_images_only(&b, &lan, "host-b", &args);
    // Something outside the job that a job without isolation reaches.
    let outside = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = outside.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for connection in outside.incoming() {
            drop(connection)
        }
    });

    for (name, isolated) in [("containers-open", false), ("containers-isolated", true)] {
        let seed = format!("7f3e1b-{name}-rekram");
        let marker: String = seed.chars().rev().collect::<String>().to_uppercase();
        let mut r = request(
            name,
            IMAGE,
            json!({"MARKER": marker, "PROBE": lan.gateway.to_string(), "PROBE_PORT": port.to_string()}),
        );
        r["ResourceConfig"]["InstanceCount"] = json!(2);
        r["EnableInterContainerTrafficEncryption"] = json!(true);
        r["EnableNetworkIsolation"] = json!(isolated);
        let capture_file = c.dir.path().join(format!("{name}.pcap"));
        let mut capture = lan.capture(&capture_file);
        let done = submit(&c, &r);
        capture.stop();
        let logs = c.logs(name);
        assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{logs}");
        assert!(logs.contains(&format!("algo-1 received={marker}")) && logs.contains("algo-2 sent"), "{logs}");
        assert!(netns::file_contains(&capture_file, b".jobs.trainyard"), "the peers' hop was TLS");
        assert!(!netns::file_contains(&capture_file, marker.as_bytes()), "the marker crossed the LAN in plaintext");
        let probe = if isolated { "probe=blocked" } else { "probe=reached" };
        assert!(logs.contains(probe), "{name}: {logs}");
    }
    assert!(
        trainyard_testkit::wait_until(Duration::from_secs(10), || containerd.containers().is_empty()),
        "{:?}",
        containerd.containers()
    );
}

#[test]
fn a_registry_with_a_private_ca_is_trusted_through_the_agents_registry_ca() {
    let containerd = Containerd::start();
    let registry = Registry::start_with_tls();
    let trainer = BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let image = registry.push("e2e/trainer", "1", &trainer, false);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let ca = registry.ca_file().to_str().expect("utf-8").to_string();
    let trusting = c.start_agent_for_images_only(
        "trusting",
        &["--advertise-vcpus", "8", "--containerd-socket", &socket, "--registry-ca", &ca],
    );
    start(&c, "over-tls", &image);
    let done = wait_done(&c, "over-tls");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{}", c.logs("over-tls"));
    assert_eq!(registry.blob_downloads(&trainer.layer_digest()), 1, "pulled over HTTPS: {}", registry.log());
    c.expect_log(r#"agent stream broke agent="trusting""#);
    drop(trusting);

    // Without the CA, the registry's certificate is refused, and the job says so (another
    // containerd: the first one has the image).
    let containerd_of_other = Containerd::start();
    let socket = containerd_of_other.socket.to_str().expect("utf-8").to_string();
    let agent =
        c.start_agent_for_images_only("distrusting", &["--advertise-vcpus", "8", "--containerd-socket", &socket]);
    agent.expect_log("pull failed");
    start(&c, "untrusted", &image);
    let done = wait_done(&c, "untrusted");
    assert_eq!(done["TrainingJobStatus"], "Failed", "{done:#}");
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("TLS certificate is not trusted") && reason.contains("--registry-ca"), "{reason}");
}

#[test]
fn an_image_runs_as_root_only_where_the_agent_allows_it_and_without_capabilities() {
    let containerd = Containerd::start();
    containerd.import_busybox_image(IMAGE, &["/bin/sh", "/train.sh"], &[("/train.sh", TRAIN, 0o755)]);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let _agent = c.start_agent_for_images_only(
        "root-images",
        &["--advertise-vcpus", "8", "--containerd-socket", &socket, "--root-images"],
    );
    let done = submit(&c, &request("as-root", IMAGE, json!({})));
    let logs = c.logs("as-root");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{logs}");
    assert!(logs.contains("uid=0 gid=0"), "the image names no user: root, as Docker runs it: {logs}");
    assert!(logs.contains("capeff=0000000000000000"), "root without capabilities: {logs}");

    // Root owns the input cache's copies: it stages private copies, and what it writes into them
    // reaches no other instance.
    let mut sums = Vec::new();
    for name in ["tamper-1", "tamper-2"] {
        let done = submit(&c, &request(name, IMAGE, json!({"MODE": "tamper"})));
        let logs = c.logs(name);
        assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{logs}");
        assert!(logs.contains("appended"), "its own copy is its to change: {logs}");
        sums.push(logs.lines().find_map(|l| l.strip_prefix("input-sum=")).map(str::to_string));
    }
    assert!(sums[0].is_some() && sums[0] == sums[1], "the second read what the first did: {sums:?}");

    // Nor are root's own files with other links taken for the cache's: they count against its volume.
    let done = submit(&c, &request("hider", IMAGE, json!({"MODE": "hide"})));
    assert_eq!(done["TrainingJobStatus"], "Failed", "{}", c.logs("hider"));
    let reason = done["FailureReason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("ClientError: the instance's volume is full"), "{reason}");
}

/// Tries the kernel's key management calls and a user namespace of its own, and says what each
/// answered; then starts a thread (glibc tries clone3 first), which must still work.
const KEY_CALLS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *nothing(void *unused) { return unused; }
static void say(const char *call, long rc) { printf("%s: %s\n", call, rc >= 0 ? "allowed" : strerror(errno)); }
int main(void) {
    /* -4 is KEY_SPEC_USER_KEYRING, 10 KEYCTL_SEARCH. */
    say("add_key", syscall(SYS_add_key, "user", "trainyard-left-behind", "secret", 6, -4));
    say("keyctl", syscall(SYS_keyctl, 10, -4, "user", "trainyard-left-behind", 0));
    say("request_key", syscall(SYS_request_key, "user", "trainyard-left-behind", NULL, 0));
    say("unshare", unshare(CLONE_NEWUSER));
    pthread_t thread;
    printf("thread: %s\n", pthread_create(&thread, NULL, nothing, NULL) == 0 && pthread_join(thread, NULL) == 0 ? "ran" : "failed");
    return 0;
}
"#;

#[test]
fn a_container_can_use_neither_the_kernels_keyrings_nor_a_user_namespace() {
    // Not under /tmp, which is a tmpfs of its own in the container: the image has it at its path.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let source = dir.path().join("key-calls.c");
    std::fs::write(&source, KEY_CALLS).expect("write");
    let program = dir.path().join("key-calls");
    let built =
        std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&program).arg(&source).output().expect("run cc");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let containerd = Containerd::start();
    let image = trainyard_testkit::host_image::HostImage {
        host_paths: vec![program.clone()],
        files: Vec::new(),
        env: Vec::new(),
        entrypoint: vec![program.to_str().expect("utf-8").to_string()],
    };
    let reference = "localhost/trainyard-e2e/key-calls:1";
    containerd.import(&image.archive(dir.path(), reference));
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let _agent = c.start_agent_for_images_only("keyrings", &["--advertise-vcpus", "8", "--containerd-socket", &socket]);
    let done = submit(&c, &request("key-calls", reference, json!({})));
    let logs = c.logs("key-calls");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{logs}");
    for call in ["add_key", "keyctl", "request_key", "unshare"] {
        assert!(logs.contains(&format!("{call}: Operation not permitted")), "{call}: {logs}");
    }
    assert!(logs.contains("thread: ran"), "{logs}");
}

#[test]
fn latest_is_pulled_again_when_its_tag_moves_and_other_tags_are_not() {
    let containerd = Containerd::start();
    let registry = Registry::start();
    let version = |n: &str| {
        let script = format!("#!/bin/sh\necho version={n}\nmkdir -p /opt/ml/model\n");
        BusyboxImage::build(&["/bin/sh", "/train.sh"], &[("/train.sh", &script, 0o755)])
    };
    let (one, two) = (version("1"), version("2"));
    let latest = registry.push("e2e/moving", "latest", &one, false);
    let pinned = registry.push("e2e/moving", "stable", &one, false);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let args = ["--advertise-vcpus", "8", "--containerd-socket", &socket, "--insecure-registry", &registry.address];
    let _agent = c.start_agent_for_images_only("latest", &args);
    for (name, image) in [("latest-1", &latest), ("stable-1", &pinned)] {
        start(&c, name, image);
        assert_eq!(wait_done(&c, name)["TrainingJobStatus"], "Completed", "{}", c.logs(name));
        assert!(c.logs(name).contains("version=1"), "{}", c.logs(name));
    }
    registry.push("e2e/moving", "latest", &two, false);
    registry.push("e2e/moving", "stable", &two, false);
    for (name, image, expected) in [("latest-2", &latest, "version=2"), ("stable-2", &pinned, "version=1")] {
        start(&c, name, image);
        assert_eq!(wait_done(&c, name)["TrainingJobStatus"], "Completed", "{}", c.logs(name));
        assert!(c.logs(name).contains(expected), "{name}: {}", c.logs(name));
    }
}
