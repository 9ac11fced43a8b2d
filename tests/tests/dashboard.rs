//! The web dashboard, through a real HTTPS client (curl, verifying the coordinator's CA): signing
//! in with an API token, a finished tuning job drawn (objective by trial, against each tuned
//! hyperparameter, every trial in the table), a trial's learning curve and log, and another
//! user's jobs not shown.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, example, on_both_backends, repo_root};
use trainyard_testkit::free_port;

on_both_backends!(the_dashboard_draws_a_tuning_job_and_its_trials_for_a_signed_in_user);

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
    let mut r: Value =
        serde_json::from_str(&std::fs::read_to_string(example("tuning-job.json")).expect("read")).expect("json");
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

    // The tuning job: objective by trial (3 points and the best-so-far line), one chart per tuned
    // hyperparameter (4 in the example), a row per trial; it has ended, so it does not reload.
    let (code, _, page) = curl(&c, &["-b", &cookie, &url("/tuning-jobs/drawn")]);
    assert_eq!(code, 200, "{page}");
    assert_eq!(page.matches("<svg").count(), 5, "{page}");
    assert_eq!(page.matches("<circle").count(), 3 * 5, "{page}");
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

    // Another user sees none of it: an empty list, and no such job.
    let other = c.json(&["tokens", "create", "--user", "bo", "--scope", "read"]);
    let bo = format!("trainyard_token={}", other["Token"].as_str().expect("token"));
    let (_, _, list) = curl(&c, &["-b", &bo, &url("/")]);
    assert!(!list.contains("drawn") && list.contains("No tuning jobs"), "{list}");
    let (code, _, _) = curl(&c, &["-b", &bo, &url("/tuning-jobs/drawn")]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&c, &["-b", &bo, &url(&format!("/training-jobs/{best}"))]);
    assert_eq!(code, 404);
}
