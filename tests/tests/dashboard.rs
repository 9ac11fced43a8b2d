//! The web dashboard, through a real HTTPS client (curl, verifying the coordinator's CA): signing
//! in with an API token, a finished tuning job drawn (objective by trial, against each tuned
//! hyperparameter, every trial in the table), a trial's learning curve and log, and another
//! user's jobs not shown; and in a real browser (Debian's headless Chromium through chromedriver,
//! WebDriver spoken over HTTP): signed in through the form, pages without console errors, a
//! table sorted by a click, a running job's page following its log in place, a screenshot of each page
//! under `target/dashboard-screenshots/` for review.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, example_json, on_both_backends, repo_root};
use trainyard_testkit::free_port;

on_both_backends!(the_dashboard_draws_a_tuning_job_and_its_trials_for_a_signed_in_user);

/// Whether `page` is Chromium's own page for a navigation the network aborted.
fn network_error(page: &str) -> bool {
    ["ERR_NETWORK_CHANGED", "ERR_INTERNET_DISCONNECTED", "ERR_NETWORK_IO_SUSPENDED"].iter().any(|e| page.contains(e))
}

/// A WebDriver session of headless Chromium (chromedriver on a port of its own).
struct Browser {
    base: String,
    _driver: trainyard_testkit::Daemon,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let profile = tempfile::tempdir().expect("dir");
        let mut command = Command::new("chromedriver");
        // Chromium's scratch dirs go with the profile, not into the suite's temp dir.
        command.arg(format!("--port={port}")).env("HOME", profile.path()).env("TMPDIR", profile.path());
        let driver = trainyard_testkit::Daemon::spawn("chromedriver", command, profile.path());
        let address = format!("127.0.0.1:{port}");
        let up =
            trainyard_testkit::wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(&address).is_ok());
        assert!(up, "chromedriver did not start: {}", driver.log());
        let mut browser = Browser { base: format!("http://{address}"), _driver: driver, _profile: profile };
        // The coordinator's CA is not the browser's: its certificate is accepted for the session.
        let session = browser.call("POST", "/session", json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500"]},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}));
        let id = session["sessionId"].as_str().expect("session").to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let mut command = Command::new("curl");
        command.args(["-sS", "-X", method, "-H", "Content-Type: application/json"]);
        if method == "POST" {
            command.args(["-d", &body.to_string()]);
        }
        let out = command.arg(format!("{}{path}", self.base)).output().expect("curl");
        let answer: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        assert!(answer["value"]["error"].is_null(), "{method} {path}: {answer:#}");
        answer["value"].clone()
    }

    /// Goes to `url`. Other tests create and remove network interfaces on this host, and Chromium
    /// then aborts a navigation in flight (ERR_NETWORK_CHANGED): it is made again.
    fn open(&self, url: &str) {
        for _ in 0..20 {
            self.call("POST", "/url", json!({"url": url}));
            if !network_error(&self.source()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{url} never loaded: {}", self.source());
    }

    fn source(&self) -> String {
        self.call("GET", "/source", Value::Null).as_str().unwrap_or_default().to_string()
    }

    /// The page's source once it contains `text` (pages load, and redirects land, asynchronously).
    fn source_with(&self, text: &str) -> String {
        let mut page = String::new();
        let found = trainyard_testkit::wait_until(Duration::from_secs(10), || {
            page = self.source();
            page.contains(text)
        });
        assert!(found, "no {text:?} in the page: {page}");
        page
    }

    fn element(&self, css: &str) -> String {
        let found = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("element").to_string()
    }

    /// What the page logged to its console at warning level or worse since the last call.
    fn console_errors(&self) -> Vec<String> {
        let entries = self.call("POST", "/se/log", json!({"type": "browser"}));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).expect("png");
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        let dir = repo_root().join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("write");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("curl").args(["-sS", "-X", "DELETE", &self.base]).output();
    }
}

/// In headless Chromium: signed in through the form, every page loads without console errors and
/// is photographed; a click sorts the trials; a running job's page shows its progress by itself.
#[test]
fn the_dashboard_works_in_a_real_browser() {
    let port = free_port();
    let c = Coordinator::start_with_args(&["--dashboard-listen", &format!("127.0.0.1:{port}")]);
    let _agent = c.start_agent("browsed", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let trainer = repo_root().join("deploy/examples/trainer/train.py").display().to_string();
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!("browsed");
    r["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 4});
    r["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    let file = c.write("browsed.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(120), &["tuning-jobs", "describe", "browsed"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    // A job still training while the browser watches: an epoch a second.
    let mut slow: Value = example_json("training-job.json");
    slow["TrainingJobName"] = json!("watched");
    slow["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    slow["HyperParameters"] = json!({"epochs": "30", "epoch_seconds": "1"});
    let file = c.write("watched.json", &slow.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    c.wait_json(&["training-jobs", "describe", "watched"], |d| d["SecondaryStatus"] == "Training");

    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    // Ours that answers there (the CA verifies it), before the browser goes.
    assert_eq!(curl(&c, &[&url("/login")]).0, 200);
    let browser = Browser::start();
    // Signing in through the form (again if the network aborted the submission).
    let mut signed_in = false;
    for _ in 0..5 {
        browser.open(&url("/tuning-jobs/browsed"));
        browser.source_with("Sign in with an API token");
        browser.screenshot("sign-in");
        let field = browser.element("input[name=token]");
        browser.call("POST", &format!("/element/{field}/value"), json!({"text": c.token}));
        let button = browser.element("form button");
        browser.call("POST", &format!("/element/{button}/click"), json!({}));
        signed_in = trainyard_testkit::wait_until(Duration::from_secs(10), || {
            let page = browser.source();
            page.contains("href=\"/tuning-jobs/browsed\"") || network_error(&page)
        }) && !network_error(&browser.source());
        if signed_in {
            break;
        }
    }
    assert!(signed_in, "never signed in: {}", browser.source());
    browser.screenshot("tuning-jobs");

    browser.open(&url("/tuning-jobs/browsed"));
    let page = browser.source_with("<h2>Trials</h2>");
    assert_eq!(page.matches("<circle").count(), 4 * 5, "every trial drawn in every chart");
    browser.screenshot("tuning-job");
    // Sorting by the objective (the 4th column), ascending on the first click.
    let header = browser.element("table.sortable th:nth-child(4)");
    browser.call("POST", &format!("/element/{header}/click"), json!({}));
    let objectives = browser.call(
        "POST",
        "/execute/sync",
        json!({"script": "return [...document.querySelectorAll('table.sortable tbody tr')].map(r => parseFloat(r.cells[3].textContent))", "args": []}),
    );
    let objectives: Vec<f64> = objectives.as_array().expect("values").iter().filter_map(Value::as_f64).collect();
    assert_eq!(objectives.len(), 4, "{objectives:?}");
    assert!(objectives.windows(2).all(|w| w[0] <= w[1]), "sorted: {objectives:?}");

    let best = done["BestTrainingJob"]["TrainingJobName"].as_str().expect("best");
    browser.open(&url(&format!("/training-jobs/{best}")));
    browser.source_with("<polyline");
    browser.screenshot("training-job");

    // The running job's page follows its log and redraws its curves in place, without reloading
    // (a mark left on the window stays).
    browser.open(&url("/training-jobs/watched"));
    let epochs = |page: &str| page.matches("validation_accuracy=").count();
    // The points of the curves drawn now.
    let samples = || {
        let script = "return [...document.querySelectorAll('#live polyline')].map(p => p.getAttribute('points').split(' ').length).reduce((a, b) => a + b, 0)";
        browser.call("POST", "/execute/sync", json!({"script": script, "args": []})).as_u64().expect("a count")
    };
    let before = epochs(&browser.source_with("Learning curves"));
    let points_before = samples();
    browser.call("POST", "/execute/sync", json!({"script": "window.stayed = true; return null", "args": []}));
    std::thread::sleep(Duration::from_secs(7));
    let (after, points_after) = (epochs(&browser.source()), samples());
    assert!(after > before, "the log followed the job: {before} then {after} epochs");
    assert!(points_after > points_before, "the curves were redrawn: {points_before} then {points_after}");
    let stayed = browser.call("POST", "/execute/sync", json!({"script": "return window.stayed === true", "args": []}));
    assert_eq!(stayed, json!(true), "the page was not reloaded");
    browser.screenshot("running-training-job");
    browser.open(&url("/training-jobs"));
    browser.screenshot("training-jobs");
    // The agent, with what runs there now.
    browser.open(&url("/agents"));
    browser.source_with("href=\"/training-jobs/watched\"");
    browser.screenshot("agents");
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    c.cli(&["training-jobs", "stop", "watched"]).assert_success();
}

/// `curl` against the dashboard: (HTTP status, headers, body).
fn curl(c: &Coordinator, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(c.ca_file())
        .args(["-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').expect("status");
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (code.trim().parse().expect("code"), headers.to_string(), body.to_string())
}

fn the_dashboard_draws_a_tuning_job_and_its_trials_for_a_signed_in_user(backend: Backend) {
    let port = free_port();
    let c = Coordinator::start_on_with_args(backend, &["--dashboard-listen", &format!("127.0.0.1:{port}")]);
    let _agent = c.start_agent("drawn", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!("drawn");
    r["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 3});
    r["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] =
        json!(repo_root().join("deploy/examples/trainer/train.py").display().to_string());
    r["TrainingJobDefinition"]["StaticHyperParameters"]["epoch_seconds"] = json!("0.4");
    let file = c.write("drawn.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let done = c.wait_json_for(Duration::from_secs(120), &["tuning-jobs", "describe", "drawn"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");

    // Not signed in: sent to sign in; a wrong token is refused.
    let (code, headers, _) = curl(&c, &[&url("/")]);
    assert_eq!(code, 303, "{headers}");
    assert!(headers.to_ascii_lowercase().contains("location: /login"), "{headers}");
    let (code, _, body) = curl(&c, &["-d", "token=tya_0000_nothing", &url("/login")]);
    assert_eq!(code, 401);
    assert!(body.contains("Not signed in"), "{body}");
    let (code, _, _) = curl(&c, &["-d", "token=<script>", &url("/login")]);
    assert_eq!(code, 401);

    // Signed in: the cookie is HttpOnly, Secure and SameSite=Strict.
    let (code, headers, _) = curl(&c, &["-d", &format!("token={}", c.token), &url("/login")]);
    assert_eq!(code, 303, "{headers}");
    let cookie_line = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie_line.contains(flag), "{cookie_line}");
    }
    let cookie = format!("trainyard_token={}", c.token);
    let (code, _, list) = curl(&c, &["-b", &cookie, &url("/")]);
    assert_eq!(code, 200);
    assert!(list.contains("href=\"/tuning-jobs/drawn\"") && list.contains("3 completed"), "{list}");
    assert!(list.contains("3 of 3"), "its progress: {list}");
    let best_value =
        done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("best");
    assert!(list.contains(&format!("<td>{best_value}</td>")), "its best objective: {list}");

    // The tuning job: objective by trial (3 points and the best-so-far line), parallel coordinates
    // (a line per trial), one chart per tuned hyperparameter (4 in the example), a row per trial;
    // it has ended, so it does not reload.
    let (code, _, page) = curl(&c, &["-b", &cookie, &url("/tuning-jobs/drawn")]);
    assert_eq!(code, 200, "{page}");
    assert_eq!(page.matches("<svg").count(), 1 + 1 + 4, "{page}");
    assert_eq!(page.matches("<circle").count(), 3 * 5, "{page}");
    assert_eq!(page.matches("class=\"trial\"").count(), 3, "{page}");
    assert_eq!(page.matches("class=\"axis\"").count(), 4 + 1, "{page}");
    assert!(page.contains("class=\"best\""));
    let trials = c.json(&["tuning-jobs", "trials", "drawn"]);
    let names: Vec<&str> = trials["TrainingJobSummaries"]
        .as_array()
        .expect("trials")
        .iter()
        .filter_map(|t| t["TrainingJobName"].as_str())
        .collect();
    assert_eq!(names.len(), 3);
    for name in &names {
        assert!(page.contains(&format!("href=\"/training-jobs/{name}\"")), "{name}: {page}");
    }
    let best = done["BestTrainingJob"]["TrainingJobName"].as_str().expect("best");
    assert!(page.contains(&format!("Best: <a href=\"/training-jobs/{best}\">")), "{page}");
    assert!(!page.contains("http-equiv=\"refresh\""));

    // A trial: its learning curves (train:loss and validation:accuracy) and its log.
    let (code, _, trial) = curl(&c, &["-b", &cookie, &url(&format!("/training-jobs/{best}"))]);
    assert_eq!(code, 200, "{trial}");
    assert_eq!(trial.matches("<polyline").count(), 2, "{trial}");
    assert!(trial.contains("validation_accuracy="), "the log's lines: {trial}");
    // The lines a following page asks for: after a sequence number, with where to ask next.
    let (code, headers, lines) = curl(&c, &["-b", &cookie, &url(&format!("/training-jobs/{best}/log?after=0"))]);
    assert_eq!(code, 200, "{lines}");
    assert!(headers.to_ascii_lowercase().contains("content-type: application/json"), "{headers}");
    let lines: Value = serde_json::from_str(&lines).expect("JSON");
    assert_eq!(lines["ended"], true);
    let first = lines["lines"].as_array().expect("lines").len();
    assert!(first > 0, "{lines:#}");
    let last = lines["last"].as_i64().expect("last");
    let (_, _, rest) = curl(&c, &["-b", &cookie, &url(&format!("/training-jobs/{best}/log?after={last}"))]);
    let rest: Value = serde_json::from_str(&rest).expect("JSON");
    assert_eq!(rest["lines"].as_array().map(Vec::len), Some(0), "nothing after the last line: {rest:#}");
    assert_eq!(rest["last"], last);
    for bad in ["after=-1", "after=x", "from=3"] {
        let (code, _, body) = curl(&c, &["-b", &cookie, &url(&format!("/training-jobs/{best}/log?{bad}"))]);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("after"), "{body}");
    }

    // The agent and its resources.
    let (code, _, agents) = curl(&c, &["-b", &cookie, &url("/agents")]);
    assert_eq!(code, 200);
    assert!(agents.contains("<td>drawn</td><td>ready</td>") && agents.contains(" of 16<"), "{agents}");

    // Another user sees none of it: an empty list, and no such job.
    let other = c.json(&["tokens", "create", "--user", "bo", "--scope", "read"]);
    let bo = format!("trainyard_token={}", other["Token"].as_str().expect("token"));
    let (_, _, list) = curl(&c, &["-b", &bo, &url("/")]);
    assert!(!list.contains("drawn") && list.contains("No tuning jobs"), "{list}");
    let (code, _, _) = curl(&c, &["-b", &bo, &url("/tuning-jobs/drawn")]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&c, &["-b", &bo, &url(&format!("/training-jobs/{best}"))]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&c, &["-b", &bo, &url(&format!("/training-jobs/{best}/log?after=0"))]);
    assert_eq!(code, 404);
    let (code, headers, _) = curl(&c, &[&url(&format!("/training-jobs/{best}/log?after=0"))]);
    assert_eq!(code, 303, "not signed in: {headers}");
}

/// An address already in use stops the coordinator at start, naming it, instead of leaving it up
/// without its dashboard.
#[test]
fn a_dashboard_address_in_use_stops_the_coordinator_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(trainyard_testkit::binary("trainyard-coordinator"))
        .args(["--insecure", "--listen", &format!("127.0.0.1:{}", free_port()), "--dashboard-listen", &address])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&format!("listening for the dashboard on {address}")),
        "{stdout}\n{stderr}"
    );
}
