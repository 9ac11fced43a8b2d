//! The SageMaker-compatible endpoint, driven by AWS's own clients: boto3 (from PyPI) with
//! `endpoint_url` pointed at the coordinator, and the AWS CLI; HTTPS verified against the
//! coordinator's CA (`AWS_CA_BUNDLE`), SigV4-signed with a configured access key or one issued with
//! an API token.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use trainyard_e2e::{Backend, Coordinator, example, example_json, on_both_backends, repo_root};
use trainyard_testkit::free_port;

const SCRIPT: &str = r#"
import json, sys, time
import boto3, botocore
url, key, secret, tuning_file, training_file = sys.argv[1:6]
def client(secret):
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)
sm = client(secret)
def code(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Message"]]
out = {}
tuning = json.load(open(tuning_file))
out["arn"] = sm.create_hyper_parameter_tuning_job(**tuning)["HyperParameterTuningJobArn"]
out["duplicate"] = code(lambda: sm.create_hyper_parameter_tuning_job(**tuning))
out["limit"] = code(lambda: sm.create_hyper_parameter_tuning_job(**dict(tuning, HyperParameterTuningJobName="second")))
out["missing"] = code(lambda: sm.describe_training_job(TrainingJobName="no-such-job"))
too_long = dict(tuning, HyperParameterTuningJobName="x" * 40)
out["invalid"] = code(lambda: sm.create_hyper_parameter_tuning_job(**too_long))
described = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning["HyperParameterTuningJobName"])
out["tuning_status"] = described["HyperParameterTuningJobStatus"]
out["creation_time_type"] = type(described["CreationTime"]).__name__
training = json.load(open(training_file))
for i in range(3):
    sm.create_training_job(**dict(training, TrainingJobName=f"boto-{i}"))
sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName="boto-0", WaiterConfig={"Delay": 1, "MaxAttempts": 90})
out["training_status"] = sm.describe_training_job(TrainingJobName="boto-0")["TrainingJobStatus"]
pages = sm.get_paginator("list_training_jobs").paginate(NameContains="boto", PaginationConfig={"PageSize": 2})
out["pages"] = [[s["TrainingJobName"] for s in p["TrainingJobSummaries"]] for p in pages]
sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning["HyperParameterTuningJobName"])
out["stop_again"] = code(lambda: sm.stop_training_job(TrainingJobName="boto-0"))
# A small tuning job run to its end (the stopped one frees the one running slot): its description
# carries the objective of every trial and the best one.
def ended(name):
    d = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    return d if d["HyperParameterTuningJobStatus"] in ("Completed", "Failed", "Stopped") else None
for _ in range(300):
    if ended(tuning["HyperParameterTuningJobName"]):
        break
    time.sleep(0.2)
small = dict(tuning, HyperParameterTuningJobName="small")
small["HyperParameterTuningJobConfig"] = dict(tuning["HyperParameterTuningJobConfig"],
    ResourceLimits={"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2})
sm.create_hyper_parameter_tuning_job(**small)
for _ in range(600):
    finished = ended("small")
    if finished:
        break
    time.sleep(0.2)
out["finished"] = json.loads(json.dumps(finished, default=str))
# DeleteHyperParameterTuningJob: an ended one goes, its trials stay.
sm.delete_hyper_parameter_tuning_job(HyperParameterTuningJobName="small")
out["deleted"] = code(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="small"))
out["bad_secret"] = code(lambda: client("not-the-secret").list_training_jobs())
# Requests signed for one body and carrying another, or with an unsigned payload: refused, and
# nothing of them is executed.
import hashlib, ssl, os, urllib.request, urllib.error
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
def raw(signed_body, sent_body, payload_hash):
    request = AWSRequest(method="POST", url=url + "/", data=signed_body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.CreateTrainingJob",
        "X-Amz-Content-SHA256": payload_hash})
    SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1").add_auth(request)
    sent = urllib.request.Request(url + "/", data=sent_body, method="POST", headers=dict(request.headers.items()))
    context = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
    try:
        with urllib.request.urlopen(sent, context=context) as response:
            return [response.status, json.loads(response.read() or b"{}")]
    except urllib.error.HTTPError as e:
        return [e.code, json.loads(e.read() or b"{}")]
signed = json.dumps(dict(training, TrainingJobName="signed-body")).encode()
swapped = json.dumps(dict(training, TrainingJobName="swapped-body")).encode()
out["as_signed"] = raw(signed, signed, hashlib.sha256(signed).hexdigest())
out["swapped"] = raw(signed, swapped, hashlib.sha256(signed).hexdigest())
unsigned = json.dumps(dict(training, TrainingJobName="unsigned-body")).encode()
out["unsigned"] = raw(unsigned, unsigned, "UNSIGNED-PAYLOAD")
out["swapped_stored"] = code(lambda: sm.describe_training_job(TrainingJobName="swapped-body"))
out["unsigned_stored"] = code(lambda: sm.describe_training_job(TrainingJobName="unsigned-body"))
print(json.dumps(out))
"#;

on_both_backends!(boto3_drives_the_coordinator_through_the_sagemaker_api);

fn boto3_drives_the_coordinator_through_the_sagemaker_api(backend: Backend) {
    let python = trainyard_testkit::s3::boto3_python();
    let port = free_port();
    let config = tempfile::tempdir().expect("dir");
    let config_file = config.path().join("coordinator.toml");
    // One running tuning job at most, so that a second one meets ResourceLimitExceeded.
    std::fs::write(
        &config_file,
        "[limits]\nmax_concurrent_tuning_jobs = 1\n[[access_keys]]\nid = \"AKIATRAINYARDTEST\"\nsecret = \"s3cr3t/with+chars\"\n",
    )
        .expect("write");
    let c = Coordinator::start_on_with_args(
        backend,
        &["--config", config_file.to_str().expect("utf-8"), "--sagemaker-listen", &format!("127.0.0.1:{port}")],
    );
    // The script signs one request with the wrong secret on purpose.
    c.expect_log("refused an unauthenticated SageMaker request");
    let _agent = c.start_agent("boto", &["--advertise-vcpus", "16", "--advertise-memory-mib", "65536"], &[]);
    let trainer = repo_root().join("deploy/examples/trainer/train.py").display().to_string();
    let mut tuning: Value = example_json("tuning-job.json");
    tuning["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    // Slow enough trials that the tuning job is still running when the script stops it.
    tuning["TrainingJobDefinition"]["StaticHyperParameters"]["epoch_seconds"] = json!("0.2");
    let mut training: Value = example_json("training-job.json");
    training["AlgorithmSpecification"]["TrainingImage"] = json!(trainer);
    let tuning_file = c.write("tuning.json", &tuning.to_string());
    let training_file = c.write("training.json", &training.to_string());

    let started = std::time::Instant::now();
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(format!("https://127.0.0.1:{port}"))
        .args(["AKIATRAINYARDTEST", "s3cr3t/with+chars"])
        .arg(&tuning_file)
        .arg(&training_file)
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_CA_BUNDLE", c.ca_file())
        .output()
        .expect("run boto3");
    assert!(out.status.success(), "boto3 script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(120));
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["arn"], "arn:aws:sagemaker:local:000000000000:hyper-parameter-tuning-job/blobs-logreg-random");
    assert_eq!(r["duplicate"][0], "ResourceInUse");
    assert_eq!(r["limit"][0], "ResourceLimitExceeded");
    assert_eq!(r["missing"][0], "ResourceNotFound");
    assert_eq!(r["deleted"][0], "ResourceNotFound", "DeleteHyperParameterTuningJob: {:#}", r["deleted"]);
    assert_eq!(r["invalid"][0], "ValidationException");
    assert!(r["invalid"][2].as_str().unwrap_or_default().contains("HyperParameterTuningJobName"), "{}", r["invalid"]);
    assert_eq!(r["tuning_status"], "InProgress");
    assert_eq!(r["creation_time_type"], "datetime", "timestamps travel as epoch seconds, parsed by botocore");
    assert_eq!(r["training_status"], "Completed", "the waiter saw the job through");
    let pages: Vec<Vec<String>> = serde_json::from_value(r["pages"].clone()).expect("pages");
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1], "the paginator follows NextToken");
    assert_eq!(r["stop_again"][0], "ValidationException", "stopping an ended job");
    assert_eq!(r["bad_secret"][0], "InvalidSignatureException");
    assert_eq!(r["bad_secret"][1], 403);
    assert_eq!(r["as_signed"][0], 200, "a correctly signed raw request works: {}", r["as_signed"]);
    for attack in ["swapped", "unsigned"] {
        assert_eq!(r[attack][0], 403, "{attack}: {}", r[attack]);
        assert!(r[attack][1].to_string().contains("x-amz-content-sha256"), "{attack}: {}", r[attack]);
        assert_eq!(r[format!("{attack}_stored")][0], "ResourceNotFound", "{attack}: nothing was executed");
    }
    let finished = &r["finished"];
    assert_eq!(finished["HyperParameterTuningJobStatus"], "Completed", "{finished:#}");
    assert_eq!(finished["ObjectiveStatusCounters"]["Succeeded"], 2, "{finished:#}");
    assert_eq!(finished["TrainingJobStatusCounters"]["Completed"], 2, "{finished:#}");
    let best = &finished["BestTrainingJob"];
    assert!(best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"].is_number(), "{finished:#}");
    assert_eq!(best["ObjectiveStatus"], "Succeeded", "{finished:#}");

    // The audit trail names outcomes as the gRPC API's does, whichever door a call came through;
    // the SageMaker error is in its message.
    let log = c.daemon.log();
    let audit_line = |operation: &str, outcome: &str| {
        log.lines().any(|l| {
            l.contains(" audit")
                && l.contains(&format!("operation=\"{operation}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
    };
    assert!(audit_line("CreateHyperParameterTuningJob", "ok"), "{log}");
    assert!(audit_line("CreateHyperParameterTuningJob", "AlreadyExists"), "the duplicate: {log}");
    assert!(audit_line("CreateHyperParameterTuningJob", "InvalidArgument"), "the invalid one: {log}");
    assert!(audit_line("CreateTrainingJob", "Unauthenticated"), "the swapped body: {log}");
    assert!(!log.lines().any(|l| l.contains(" audit") && l.contains("outcome=\"ResourceInUse")), "{log}");
}

#[test]
fn the_aws_cli_creates_and_describes_jobs_from_the_example_files() {
    let aws = trainyard_testkit::s3::aws_cli();
    let port = free_port();
    // An empty directory, so that the AWS CLI reads no configuration of this machine's.
    let config = tempfile::tempdir().expect("dir");
    let c = Coordinator::start_with_args(&["--sagemaker-listen", &format!("127.0.0.1:{port}")]);
    // Access keys issued by the coordinator, bound to an API token's user and scope.
    let issue = |user: &str, scope: &str| {
        let created = c.json(&["tokens", "create", "--user", user, "--scope", scope, "--access-key"]);
        let field = |k: &str| created[k].as_str().expect("field").to_string();
        (field("Id"), field("AccessKeyId"), field("SecretAccessKey"))
    };
    let (token_id, key_id, secret) = issue("cli", "submit");
    assert!(key_id.starts_with("TYAK") && secret.len() == 40, "{key_id}");
    let (_, reader_key, reader_secret) = issue("cli", "read");
    let endpoint = format!("https://127.0.0.1:{port}");
    let run_as = |key: &str, secret: &str, args: &[&str]| {
        let out = Command::new(&aws)
            .args(["sagemaker"])
            .args(args)
            .args(["--endpoint-url", &endpoint, "--output", "json"])
            .env("AWS_CA_BUNDLE", c.ca_file())
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_CONFIG_FILE", config.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", config.path().join("none"))
            .output()
            .expect("run aws");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: &[&str]| run_as(&key_id, &secret, args);
    for (operation, file) in
        [("create-hyper-parameter-tuning-job", "tuning-job.json"), ("create-training-job", "training-job.json")]
    {
        let input = format!("file://{}", example(file).display());
        let (code, stdout, stderr) = run(&[operation, "--cli-input-json", &input]);
        assert_eq!(code, Some(0), "{operation}: {stderr}");
        assert!(stdout.contains("arn:aws:sagemaker:local:000000000000:"), "{stdout}");
    }
    let (code, stdout, stderr) =
        run(&["describe-hyper-parameter-tuning-job", "--hyper-parameter-tuning-job-name", "blobs-logreg-random"]);
    assert_eq!(code, Some(0), "{stderr}");
    let described: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(described["HyperParameterTuningJobConfig"]["Strategy"], "Random");
    let (code, stdout, _) = run(&["list-training-jobs"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("blobs-logreg-baseline"), "{stdout}");
    // A duplicate is refused with SageMaker's error name, as the CLI prints it.
    let input = format!("file://{}", example("training-job.json").display());
    let (code, _, stderr) = run(&["create-training-job", "--cli-input-json", &input]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ResourceInUse"), "{stderr}");

    // The key acts as its token's user: the jobs are theirs, and a read-only key reads but cannot
    // create. Revoking the token revokes the key.
    let stranger = c.json(&["tokens", "create", "--user", "someone-else", "--scope", "read"]);
    let seen = c.json_as(stranger["Token"].as_str().expect("token"), &["training-jobs", "list"]);
    assert_eq!(seen["TrainingJobSummaries"].as_array().map(Vec::len), Some(0), "the jobs are cli's: {seen:#}");
    let (code, stdout, stderr) = run_as(&reader_key, &reader_secret, &["list-training-jobs"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("blobs-logreg-baseline"), "same user: {stdout}");
    let input = format!("file://{}", example("training-job.json").display());
    let (code, _, stderr) = run_as(
        &reader_key,
        &reader_secret,
        &["create-training-job", "--cli-input-json", &input, "--training-job-name", "from-reader"],
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    c.cli(&["tokens", "revoke", &token_id]).assert_success();
    let (code, _, stderr) = run(&["list-training-jobs"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("UnrecognizedClientException") && stderr.contains("revoked"), "{stderr}");
    // Plain HTTP to the TLS endpoint gets nowhere.
    let plain = Command::new(&aws)
        .args(["sagemaker", "list-training-jobs", "--endpoint-url", &format!("http://127.0.0.1:{port}")])
        .env("AWS_ACCESS_KEY_ID", &reader_key)
        .env("AWS_SECRET_ACCESS_KEY", &reader_secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_CONFIG_FILE", config.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", config.path().join("none"))
        .output()
        .expect("run aws");
    assert!(!plain.status.success());
}
