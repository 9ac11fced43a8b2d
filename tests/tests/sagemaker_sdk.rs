//! The SageMaker Python SDK (`sagemaker` from PyPI), unchanged, against the coordinator: every AWS
//! service it calls pointed at the SageMaker-compatible endpoint by the standard
//! `AWS_ENDPOINT_URL_<SERVICE>` variables, HTTPS verified against the coordinator's CA, signed with
//! an access key issued with an API token.

use std::process::Command;

use serde_json::Value;
use trainyard_e2e::{Backend, Coordinator, on_both_backends, repo_root};
use trainyard_testkit::free_port;

/// What a data scientist's notebook does: an Estimator fitted with its logs followed, attached
/// again later, a tuner over it, and its best estimator.
const NOTEBOOK: &str = r#"
import contextlib, io, json, sys
import boto3, sagemaker
from sagemaker.estimator import Estimator
from sagemaker.tuner import ContinuousParameter, HyperparameterTuner
image, role = sys.argv[1:3]
session = sagemaker.Session(boto3.Session(region_name="us-east-1"))
# As the SDK's own telemetry asks (its Session.account_id() dials STS's regional AWS name instead,
# which no variable changes).
out = {"account": boto3.client("sts").get_caller_identity()["Account"]}
metrics = [{"Name": "train:loss", "Regex": "train_loss=([0-9.]+)"},
           {"Name": "validation:accuracy", "Regex": "validation_accuracy=([0-9.]+)"}]
estimator = Estimator(image_uri=image, role=role, instance_count=1, instance_type="ml.m5.large",
                      output_path="s3://trainyard-output/sdk/", sagemaker_session=session,
                      hyperparameters={"epochs": 3, "learning_rate": 0.3, "epoch_seconds": 1.1},
                      metric_definitions=metrics,
                      volume_size=1, disable_profiler=True, max_run=600)
inputs = {"train": "s3://trainyard-examples/blobs/train/",
          "validation": "s3://trainyard-examples/blobs/validation/"}
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    estimator.fit(inputs, job_name="sdk-fit", logs="All")
out["fit_printed"] = printed.getvalue()
out["model_data"] = estimator.model_data
# The CloudWatch Logs reads behind it, directly: the job's stream, pages that follow each other,
# errors named as CloudWatch names them.
import botocore
def code(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
logs, group = boto3.client("logs"), "/aws/sagemaker/TrainingJobs"
streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix="sdk-fit/")["logStreams"]
out["streams"] = [s["logStreamName"] for s in streams]
first = logs.get_log_events(logGroupName=group, logStreamName=out["streams"][0], startFromHead=True, limit=2)
second = logs.get_log_events(logGroupName=group, logStreamName=out["streams"][0], nextToken=first["nextForwardToken"], limit=2)
out["pages"] = [[e["message"] for e in page["events"]] for page in (first, second)]
out["wrong_group"] = code(lambda: logs.describe_log_streams(logGroupName="/aws/lambda/x", logStreamNamePrefix="sdk-fit/"))
out["too_many"] = code(lambda: logs.get_log_events(logGroupName=group, logStreamName=out["streams"][0], limit=10001))
out["no_stream"] = code(lambda: logs.get_log_events(logGroupName=group, logStreamName="no-such-job/algo-1-1"))
# Its metrics as the SDK's analytics read them (CloudWatch metric statistics), per second.
from sagemaker.analytics import TrainingJobAnalytics
frame = TrainingJobAnalytics("sdk-fit", metric_names=["train:loss"], sagemaker_session=session, period=1).dataframe()
out["loss_frame"] = {"values": list(frame["value"]), "seconds": list(frame["timestamp"])}
cloudwatch = boto3.client("cloudwatch")
import datetime
now = datetime.datetime.now(datetime.timezone.utc)
def statistics(**overrides):
    request = dict(Namespace="/aws/sagemaker/TrainingJobs", MetricName="train:loss", StartTime=now - datetime.timedelta(hours=1),
                   EndTime=now, Period=60, Statistics=["SampleCount", "Maximum"],
                   Dimensions=[{"Name": "TrainingJobName", "Value": "sdk-fit"}])
    request.update(overrides)
    return cloudwatch.get_metric_statistics(**request)
out["per_minute"] = [[p["SampleCount"], p["Maximum"]] for p in statistics()["Datapoints"]]
out["bad_period"] = code(lambda: statistics(Period=7))
out["too_many_points"] = code(lambda: statistics(Period=1))
attached = Estimator.attach("sdk-fit", sagemaker_session=session)
out["attached"] = {"image": attached.image_uri, "instance_type": attached.instance_type,
                   "output_path": attached.output_path, "hyperparameters": attached.hyperparameters()}
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    attached.logs()
out["logs_printed"] = printed.getvalue()
tuner = HyperparameterTuner(estimator, objective_metric_name="validation:accuracy",
                            hyperparameter_ranges={"learning_rate": ContinuousParameter(0.01, 1.0)},
                            metric_definitions=metrics, max_jobs=2, max_parallel_jobs=2)
tuner.fit(inputs, job_name="sdk-tune", wait=True)
out["best"] = tuner.best_training_job()
best = tuner.best_estimator()
out["best_estimator_job"] = best.latest_training_job.name
frame = tuner.analytics().dataframe()
out["analytics_rows"] = len(frame)
# Warm start from it: a second tuner that knows the first one's trials.
from sagemaker.tuner import WarmStartConfig, WarmStartTypes
warm = HyperparameterTuner(estimator, objective_metric_name="validation:accuracy",
                           hyperparameter_ranges={"learning_rate": ContinuousParameter(0.01, 1.0)},
                           metric_definitions=metrics, max_jobs=1, max_parallel_jobs=1,
                           warm_start_config=WarmStartConfig(WarmStartTypes.IDENTICAL_DATA_AND_ALGORITHM, parents={"sdk-tune"}))
warm.fit(inputs, job_name="sdk-warm", wait=True)
described = session.sagemaker_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="sdk-warm")
out["warm"] = {"status": described["HyperParameterTuningJobStatus"], "parents": [p["HyperParameterTuningJobName"]
               for p in described["WarmStartConfig"]["ParentHyperParameterTuningJobs"]]}
print(json.dumps(out))
"#;

/// Script mode: the SDK uploads the estimator's `source_dir` (to an S3-compatible store) and the
/// image's toolkit runs `entry_point` from it.
const SCRIPT_MODE: &str = r#"
import json, sys
import boto3, sagemaker
from sagemaker.estimator import Estimator
image, role, source_dir = sys.argv[1:4]
session = sagemaker.Session(boto3.Session(region_name="us-east-1"))
boto3.client("s3").create_bucket(Bucket="code")
estimator = Estimator(image_uri=image, role=role, instance_count=1, instance_type="ml.m5.large", volume_size=1,
                      entry_point="entry.py", source_dir=source_dir, code_location="s3://code/sdk",
                      output_path="s3://trainyard-output/sdk/", hyperparameters={"alpha": 0.25},
                      metric_definitions=[{"Name": "score", "Regex": "score=([0-9.]+)"}],
                      sagemaker_session=session, disable_profiler=True, max_run=600)
estimator.fit({"train": "s3://trainyard-examples/blobs/train/"}, job_name="sdk-script", logs="None")
described = session.sagemaker_client.describe_training_job(TrainingJobName="sdk-script")
print(json.dumps({"status": described["TrainingJobStatus"], "reason": described.get("FailureReason"),
                  "submit": described["HyperParameters"].get("sagemaker_submit_directory"),
                  "metrics": described.get("FinalMetricDataList")}, default=str))
"#;

/// The user's script: what the toolkit passed it, what it read from its channel.
const ENTRY_POINT: &str = r#"
import argparse, glob, os
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
args, _ = parser.parse_known_args()
rows = sum(1 for f in glob.glob(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "*.csv")) for _ in open(f))
print(f"from-source-dir rows={rows} score={1 - args.alpha:.2f}", flush=True)
"#;

on_both_backends!(
    the_sagemaker_sdk_fits_attaches_follows_logs_and_tunes,
    a_script_mode_estimators_source_dir_travels_through_an_s3_compatible_store
);

/// Environment for a Python process driving the SDK against `c`'s endpoint on `port`: no
/// configuration of this machine's, telemetry off, anything bound elsewhere failing locally.
fn sdk_command(
    venv: &std::path::Path,
    c: &Coordinator,
    port: u16,
    key: (&str, &str),
    home: &std::path::Path,
) -> Command {
    let sdk_config = home.join("sagemaker.yaml");
    std::fs::write(
        &sdk_config,
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n",
    )
    .expect("write");
    let endpoint = format!("https://127.0.0.1:{port}");
    // The SDK waits for its jobs without end: a job that never runs must not hang the suite.
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5", "600"])
        .arg(venv.join("bin/python"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("SAGEMAKER_USER_CONFIG_OVERRIDE", &sdk_config)
        .env("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
        .env("AWS_CONFIG_FILE", home.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CA_BUNDLE", c.ca_file())
        // Anything the SDK would send elsewhere fails here instead of leaving the machine.
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost");
    for service in ["SAGEMAKER", "CLOUDWATCH_LOGS", "STS", "CLOUDWATCH"] {
        command.env(format!("AWS_ENDPOINT_URL_{service}"), &endpoint);
    }
    command
}

/// Runs `command`; its answer is the last line it printed (the SDK prints its progress too).
fn answer(command: &mut Command) -> Value {
    let out = command.output().expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the notebook failed ({}):\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json")
}

fn a_script_mode_estimators_source_dir_travels_through_an_s3_compatible_store(backend: Backend) {
    let venv = trainyard_testkit::python::sagemaker_sdk();
    let toolkit = trainyard_testkit::python::sagemaker_training();
    let s3 = trainyard_testkit::s3::S3Server::start();
    let port = free_port();
    let c = Coordinator::start_on_with_args(backend, &["--sagemaker-listen", &format!("127.0.0.1:{port}")]);
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["--advertise-vcpus", "16", "--advertise-memory-mib", "65536", "--s3-endpoint", &s3.endpoint];
    let _agent = c.start_agent("sdk", &args, &env);
    let created = c.json(&["tokens", "create", "--user", "ana", "--scope", "submit", "--access-key"]);
    let field = |k: &str| created[k].as_str().expect("field").to_string();
    let home = tempfile::tempdir().expect("dir");
    let source_dir = home.path().join("src");
    std::fs::create_dir_all(&source_dir).expect("dir");
    std::fs::write(source_dir.join("entry.py"), ENTRY_POINT).expect("write");
    let r = answer(
        sdk_command(&venv, &c, port, (&field("AccessKeyId"), &field("SecretAccessKey")), home.path())
            .env("AWS_ENDPOINT_URL_S3", &s3.endpoint)
            .arg("-c")
            .arg(SCRIPT_MODE)
            .arg(toolkit.join("bin/train"))
            .arg("arn:aws:iam::000000000000:role/TrainyardExecution")
            .arg(&source_dir),
    );
    assert_eq!(r["status"], "Completed", "{r:#}\n{}", c.logs("sdk-script"));
    // The SDK uploaded the code and passed its URI; the job ran the script from it.
    assert_eq!(r["submit"], "\"s3://code/sdk/sdk-script/source/sourcedir.tar.gz\"", "{r:#}");
    assert_eq!(r["metrics"][0]["Value"], 0.75, "{r:#}");
    let logs = c.logs("sdk-script");
    assert!(logs.contains("from-source-dir rows=400 score=0.75"), "{logs}");
}

fn the_sagemaker_sdk_fits_attaches_follows_logs_and_tunes(backend: Backend) {
    let venv = trainyard_testkit::python::sagemaker_sdk();
    let port = free_port();
    let c = Coordinator::start_on_with_args(backend, &["--sagemaker-listen", &format!("127.0.0.1:{port}")]);
    let _agent = c.start_agent("sdk", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let created = c.json(&["tokens", "create", "--user", "ana", "--scope", "submit", "--access-key"]);
    let field = |k: &str| created[k].as_str().expect("field").to_string();
    let home = tempfile::tempdir().expect("dir");
    let trainer = repo_root().join("deploy/examples/trainer/train.py").display().to_string();
    let r = answer(
        sdk_command(&venv, &c, port, (&field("AccessKeyId"), &field("SecretAccessKey")), home.path())
            .arg("-c")
            .arg(NOTEBOOK)
            .args([&trainer, "arn:aws:iam::000000000000:role/TrainyardExecution"]),
    );
    let fit = r["fit_printed"].as_str().unwrap_or_default();
    assert_eq!(r["account"], "000000000000", "STS GetCallerIdentity");
    // fit(logs="All") printed the job's own output, from CloudWatch Logs reads.
    assert!(fit.contains("epoch=3 train_loss="), "{fit}");
    assert!(fit.contains("Training seconds:") && fit.contains("Billable seconds:"), "{fit}");
    assert_eq!(r["model_data"], "s3://trainyard-output/sdk/sdk-fit/output/model.tar.gz");
    let streams = r["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert!(streams[0].as_str().unwrap_or_default().starts_with("sdk-fit/algo-1-"), "{streams:?}");
    let pages: Vec<Vec<String>> = serde_json::from_value(r["pages"].clone()).expect("pages");
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2], "{pages:?}");
    assert!(fit.contains(&format!("{}\n{}\n{}", pages[0][1], pages[1][0], pages[1][1])), "pages follow on: {pages:?}");
    assert_eq!(r["wrong_group"], "ResourceNotFoundException");
    assert_eq!(r["too_many"], "InvalidParameterException");
    assert_eq!(r["no_stream"], "ResourceNotFoundException");
    // TrainingJobAnalytics: the stored series, a sample a second.
    let series = c.json(&["training-jobs", "metrics", "sdk-fit", "--metric", "train:loss"]);
    let stored = &series["Metrics"][0]["Values"];
    assert_eq!(stored.as_array().map(Vec::len), Some(3), "{series:#}");
    assert_eq!(&r["loss_frame"]["values"], stored, "{:#}", r["loss_frame"]);
    // The same per minute (the hour before the notebook's clock): within one or two minutes.
    let per_minute = r["per_minute"].as_array().expect("datapoints");
    let counted: f64 = per_minute.iter().filter_map(|p| p[0].as_f64()).sum();
    assert_eq!(counted, 3.0, "{per_minute:?}");
    let maximum = stored.as_array().into_iter().flatten().filter_map(Value::as_f64).fold(f64::MIN, f64::max);
    assert!(per_minute.iter().any(|p| p[1].as_f64() == Some(maximum)), "{per_minute:?}");
    assert_eq!(r["bad_period"], "InvalidParameterValue");
    assert_eq!(r["too_many_points"], "InvalidParameterCombination", "3,600 one-second points: over 1,440");
    let attached = &r["attached"];
    assert_eq!(attached["image"], trainer.as_str());
    assert_eq!(attached["instance_type"], "ml.m5.large");
    assert_eq!(attached["hyperparameters"]["epochs"], "3", "{attached:#}");
    let logs = r["logs_printed"].as_str().unwrap_or_default();
    assert!(logs.contains("epoch=3 train_loss="), "an attached estimator's logs(): {logs}");
    // The tuner: its best trial, the estimator attached to it, the analytics of both trials.
    let best = r["best"].as_str().expect("best");
    assert!(best.starts_with("sdk-tune-"), "{best}");
    assert_eq!(r["best_estimator_job"], best);
    assert_eq!(r["analytics_rows"], 2);
    assert_eq!(r["warm"]["status"], "Completed", "{:#}", r["warm"]);
    assert_eq!(r["warm"]["parents"], serde_json::json!(["sdk-tune"]));
}
