//! AWS's own SageMaker training toolkit (`sagemaker-training` from PyPI, installed by the test into
//! a virtualenv) runs under an agent unchanged: its `train` entry point is the TrainingImage, the
//! user script comes through `sagemaker_program` / `sagemaker_submit_directory`, and a tuning job
//! over it completes with the right best trial.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Coordinator, example_json};

const ENTRY_POINT: &str = r#"
import argparse, glob, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
parser.add_argument("--epochs", type=int, default=3)
args, _ = parser.parse_known_args()
rows = sum(1 for f in glob.glob(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "*.csv")) for _ in open(f))
for epoch in range(1, args.epochs + 1):
    print(f"epoch={epoch} rows={rows} score={1 - (args.alpha - 0.3) ** 2:.6f}", flush=True)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
json.dump({"alpha": args.alpha, "rows": rows}, open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w"))
"#;

#[test]
fn the_sagemaker_training_toolkit_runs_user_scripts_unchanged() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the toolkit reads /opt/ml: this test needs root, as CI has");
    let venv = trainyard_testkit::python::sagemaker_training();
    let c = Coordinator::start();
    let _agent = c.start_agent("toolkit", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let code = c.programs_dir().join("user-code");
    std::fs::create_dir_all(&code).expect("dir");
    std::fs::write(code.join("entry.py"), ENTRY_POINT).expect("write");
    std::fs::set_permissions(code.join("entry.py"), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut r: Value = example_json("tuning-job.json");
    r["HyperParameterTuningJobName"] = json!("toolkit");
    r["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"] =
        json!({"Type": "Maximize", "MetricName": "score"});
    r["HyperParameterTuningJobConfig"]["ResourceLimits"] =
        json!({"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2});
    r["HyperParameterTuningJobConfig"]["ParameterRanges"] =
        json!({"ContinuousParameterRanges": [{"Name": "alpha", "MinValue": "0", "MaxValue": "1"}]});
    let def = &mut r["TrainingJobDefinition"];
    def["AlgorithmSpecification"]["TrainingImage"] = json!(venv.join("bin/train").display().to_string());
    def["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    // As the SageMaker Python SDK passes them: JSON-encoded strings.
    def["StaticHyperParameters"] = json!({
        "sagemaker_program": "\"entry.py\"",
        "sagemaker_submit_directory": format!("\"{}\"", code.display()),
        "epochs": "3"
    });
    let file = c.write("toolkit.json", &r.to_string());
    c.cli(&["tuning-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();

    let done = c.wait_json_for(Duration::from_secs(120), &["tuning-jobs", "describe", "toolkit"], |d| {
        d["HyperParameterTuningJobStatus"] != "InProgress"
    });
    assert_eq!(done["HyperParameterTuningJobStatus"], "Completed", "{done:#}");
    let trials = c.json(&["tuning-jobs", "trials", "toolkit"]);
    let reasons: Vec<String> = trials["TrainingJobSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["FailureReason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(done["TrainingJobStatusCounters"]["Completed"], 4, "{done:#}\nfailures: {reasons:#?}");
    let best = trials["TrainingJobSummaries"]
        .as_array()
        .expect("trials")
        .iter()
        .max_by(|a, b| {
            let v = |t: &Value| t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().unwrap_or(f64::MIN);
            v(a).total_cmp(&v(b))
        })
        .expect("a trial")
        .clone();
    assert_eq!(done["BestTrainingJob"]["TrainingJobName"], best["TrainingJobName"]);
    let x: f64 = best["TunedHyperParameters"]["alpha"].as_str().expect("alpha").parse().expect("number");
    let score = best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].as_f64().expect("score");
    assert!((score - (1.0 - (x - 0.3) * (x - 0.3))).abs() < 1e-5, "the toolkit passed --alpha {x} to the script");
    let name = best["TrainingJobName"].as_str().expect("name");
    let log = c.cli(&["training-jobs", "logs", name]).stdout();
    assert!(log.contains("rows=400"), "the script read the train channel through SM_CHANNEL_TRAIN:\n{log}");
    assert!(c.output_dir().join(format!("blobs-logreg-random/{name}/output/model.tar.gz")).exists());
}

#[test]
fn the_sagemaker_training_toolkit_runs_unchanged_in_a_container_image() {
    let venv = trainyard_testkit::python::sagemaker_training();
    let containerd = trainyard_testkit::containerd::Containerd::start();
    // An image as SageMaker's script-mode images are made: Python, the toolkit (whose `train` is on
    // PATH, no entrypoint), the user's code baked in at /code.
    let interpreter = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    let version = interpreter.file_name().and_then(|n| n.to_str()).expect("python3.X").to_string();
    let image = trainyard_testkit::host_image::HostImage {
        host_paths: vec![
            "/usr/bin/python3".into(),
            interpreter.clone(),
            std::path::Path::new("/usr/lib").join(&version),
            venv.clone(),
        ],
        files: vec![("/code/entry.py", ENTRY_POINT, 0o755)],
        env: vec![format!("PATH={}/bin:/usr/local/bin:/usr/bin:/bin", venv.display())],
        entrypoint: Vec::new(),
    };
    let reference = "localhost/trainyard-e2e/toolkit:1";
    let archive = image.archive(&venv.parent().expect("target").join("images"), reference);
    containerd.import(&archive);
    let c = Coordinator::start();
    let socket = containerd.socket.to_str().expect("utf-8").to_string();
    let _agent = c.start_agent_for_images_only("toolkit", &["--advertise-vcpus", "8", "--containerd-socket", &socket]);

    let mut r: Value = example_json("training-job.json");
    r["TrainingJobName"] = json!("toolkit-in-a-container");
    r["AlgorithmSpecification"]["TrainingImage"] = json!(reference);
    r["AlgorithmSpecification"]["MetricDefinitions"] = json!([{"Name": "score", "Regex": "score=([0-9.]+)"}]);
    r["HyperParameters"] = json!({
        "sagemaker_program": "\"entry.py\"",
        "sagemaker_submit_directory": "\"/code\"",
        "alpha": "0.3",
        "epochs": "2"
    });
    let file = c.write("toolkit-in-a-container.json", &r.to_string());
    c.cli(&["training-jobs", "create", "--file", file.to_str().expect("utf-8")]).assert_success();
    let done =
        c.wait_json_for(Duration::from_secs(120), &["training-jobs", "describe", "toolkit-in-a-container"], |d| {
            !matches!(d["TrainingJobStatus"].as_str(), Some("InProgress" | "Stopping"))
        });
    let logs = c.logs("toolkit-in-a-container");
    assert_eq!(done["TrainingJobStatus"], "Completed", "{done:#}\n{logs}");
    assert!(logs.contains("epoch=2 rows="), "the user script ran through the toolkit: {logs}");
    assert_eq!(done["FinalMetricDataList"][0]["Value"], json!(1.0), "{done:#}");
    let model = c.output_dir().join("blobs-logreg-baseline/toolkit-in-a-container/output/model.tar.gz");
    assert!(model.is_file(), "{}", model.display());
}
