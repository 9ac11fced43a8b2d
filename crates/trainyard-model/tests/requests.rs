//! Requests as a SageMaker user writes them, accepted or rejected as SageMaker would, with every
//! violation named. Each case is data: a change to a valid request and the violations it must cause.

use serde_json::{Value, json};
use trainyard_model::api::{CreateHyperParameterTuningJobRequest, CreateTrainingJobRequest};
use trainyard_model::catalog::Catalog;
use trainyard_model::rules::{ServiceLimits, check_create_training_job, check_create_tuning_job};
use trainyard_model::{DomainError, Violation};

const TUNING_EXAMPLE: &str = include_str!("../../../deploy/examples/tuning-job.json");
const TRAINING_EXAMPLE: &str = include_str!("../../../deploy/examples/training-job.json");

fn tuning_violations(request: &Value) -> Vec<Violation> {
    let parsed: CreateHyperParameterTuningJobRequest =
        serde_json::from_value(request.clone()).unwrap_or_else(|e| panic!("request must parse: {e}"));
    match check_create_tuning_job(&parsed, &Catalog::default(), &ServiceLimits::default()) {
        Ok(()) => Vec::new(),
        Err(DomainError::Validation(v)) => v,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn training_violations(request: &Value) -> Vec<Violation> {
    let parsed: CreateTrainingJobRequest =
        serde_json::from_value(request.clone()).unwrap_or_else(|e| panic!("request must parse: {e}"));
    match check_create_training_job(&parsed, &Catalog::default(), &ServiceLimits::default()) {
        Ok(()) => Vec::new(),
        Err(DomainError::Validation(v)) => v,
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Sets (or with `None`, removes) the member at a JSON pointer.
fn patched(base: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut doc = base.clone();
    let (parent, last) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{parent} exists"));
    match (target, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(last.to_string(), v);
        }
        (Value::Object(map), None) => {
            map.remove(last);
        }
        (Value::Array(items), Some(v)) => {
            let i: usize = last.parse().expect("index");
            if i == items.len() { items.push(v) } else { items[i] = v }
        }
        (Value::Array(items), None) => {
            items.remove(last.parse::<usize>().expect("index"));
        }
        _ => panic!("{parent} is not a container"),
    }
    doc
}

fn example_tuning() -> Value {
    serde_json::from_str(TUNING_EXAMPLE).expect("example parses")
}

fn assert_exactly(violations: &[Violation], expected: &[(&str, &str)], case: &str) {
    let got: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(violations.len(), expected.len(), "{case}: expected {expected:?}, got {got:#?}");
    for (field, fragment) in expected {
        assert!(
            violations.iter().any(|v| v.field == *field && v.description.contains(fragment)),
            "{case}: no violation at {field} containing {fragment:?}; got {got:#?}"
        );
    }
}

#[test]
fn the_examples_are_valid() {
    assert_exactly(&tuning_violations(&example_tuning()), &[], "tuning example");
    let training: Value = serde_json::from_str(TRAINING_EXAMPLE).expect("example parses");
    assert_exactly(&training_violations(&training), &[], "training example");
}

#[test]
fn every_pattern_of_the_service_model_compiles() {
    assert!(trainyard_model::api::compile_all_patterns() > 10);
}

#[test]
fn json_round_trips_without_loss() {
    for text in [TUNING_EXAMPLE, TRAINING_EXAMPLE] {
        let original: Value = serde_json::from_str(text).expect("json");
        let back = if original.get("TrainingJobName").is_some() {
            let r: CreateTrainingJobRequest = serde_json::from_value(original.clone()).expect("parses");
            serde_json::to_value(r).expect("serializes")
        } else {
            let r: CreateHyperParameterTuningJobRequest = serde_json::from_value(original.clone()).expect("parses");
            serde_json::to_value(r).expect("serializes")
        };
        assert_eq!(back, original);
    }
}

#[test]
fn unknown_members_are_rejected_by_name() {
    let bad = patched(&example_tuning(), "/TrainingJobDefinition/ResourceConfig/InstanceTyp", Some(json!("x")));
    let err = serde_json::from_value::<CreateHyperParameterTuningJobRequest>(bad).expect_err("must fail");
    assert!(err.to_string().contains("unknown field `InstanceTyp`"), "{err}");
}

#[test]
fn tuning_job_violations_are_named_with_their_limits() {
    let def = "/TrainingJobDefinition";
    let cfg = "/HyperParameterTuningJobConfig";
    // (case, request, expected violations as (field, fragment of the description))
    type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "name too long and badly formed",
            patched(
                &example_tuning(),
                "/HyperParameterTuningJobName",
                Some(json!("this_name_is_much_too_long_for_a_tuning_job")),
            ),
            vec![
                ("HyperParameterTuningJobName", "length less than or equal to 32 (got 43)"),
                ("HyperParameterTuningJobName", "regular expression pattern"),
            ],
        ),
        (
            "required name missing",
            patched(&example_tuning(), "/HyperParameterTuningJobName", None),
            vec![("HyperParameterTuningJobName", "is required")],
        ),
        (
            "channel name breaks its pattern",
            patched(&example_tuning(), &format!("{def}/InputDataConfig/1/ChannelName"), Some(json!("bad channel"))),
            vec![(
                "TrainingJobDefinition.InputDataConfig[1].ChannelName",
                "regular expression pattern: [A-Za-z0-9\\.\\-_]+",
            )],
        ),
        (
            "too many channels (the newer page allows 20)",
            {
                let mut doc = example_tuning();
                let channel = doc.pointer(&format!("{def}/InputDataConfig/0")).cloned().expect("channel");
                let channels: Vec<Value> = (0..21)
                    .map(|i| {
                        let mut c = channel.clone();
                        c["ChannelName"] = json!(format!("c{i}"));
                        c
                    })
                    .collect();
                doc["TrainingJobDefinition"]["InputDataConfig"] = Value::Array(channels);
                doc
            },
            vec![("TrainingJobDefinition.InputDataConfig", "at most 20 item(s) (got 21)")],
        ),
        (
            "an empty channel list",
            patched(&example_tuning(), &format!("{def}/InputDataConfig"), Some(json!([]))),
            vec![("TrainingJobDefinition.InputDataConfig", "at least 1 item(s) (got 0)")],
        ),
        (
            "static hyperparameter value over the founding page's 256 characters",
            patched(
                &example_tuning(),
                &format!("{def}/StaticHyperParameters/batch_size"),
                Some(json!("9".repeat(257))),
            ),
            vec![(
                "TrainingJobDefinition.StaticHyperParameters['batch_size']",
                "length less than or equal to 256 (got 257)",
            )],
        ),
        (
            "unknown enum value",
            patched(&example_tuning(), &format!("{cfg}/Strategy"), Some(json!("Genetic"))),
            vec![("HyperParameterTuningJobConfig.Strategy", "enum value set: [Bayesian, Random, Hyperband, Grid]")],
        ),
        (
            "role ARN of the wrong form",
            patched(&example_tuning(), &format!("{def}/RoleArn"), Some(json!("arn:aws:iam::12:r/x"))),
            vec![
                ("TrainingJobDefinition.RoleArn", "length greater than or equal to 20 (got 19)"),
                ("TrainingJobDefinition.RoleArn", "regular expression pattern"),
            ],
        ),
        (
            "numeric range",
            patched(&example_tuning(), &format!("{cfg}/ResourceLimits/MaxParallelTrainingJobs"), Some(json!(0))),
            vec![(
                "HyperParameterTuningJobConfig.ResourceLimits.MaxParallelTrainingJobs",
                "greater than or equal to 1 (got 0)",
            )],
        ),
        (
            "tuning runtime under 120 seconds",
            patched(&example_tuning(), &format!("{cfg}/ResourceLimits/MaxRuntimeInSeconds"), Some(json!(60))),
            vec![("HyperParameterTuningJobConfig.ResourceLimits.MaxRuntimeInSeconds", "greater than or equal to 120")],
        ),
        (
            "min above max, unparseable bound",
            {
                let doc = patched(
                    &example_tuning(),
                    &format!("{cfg}/ParameterRanges/IntegerParameterRanges/0/MinValue"),
                    Some(json!("50")),
                );
                patched(
                    &doc,
                    &format!("{cfg}/ParameterRanges/ContinuousParameterRanges/1/MaxValue"),
                    Some(json!("lots")),
                )
            },
            vec![
                (
                    "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0].MinValue",
                    "less than or equal to MaxValue (40)",
                ),
                (
                    "HyperParameterTuningJobConfig.ParameterRanges.ContinuousParameterRanges[1].MaxValue",
                    "must be a finite number",
                ),
            ],
        ),
        (
            "an integer range with a fractional bound",
            patched(
                &example_tuning(),
                &format!("{cfg}/ParameterRanges/IntegerParameterRanges/0/MaxValue"),
                Some(json!("4.5")),
            ),
            vec![(
                "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0].MaxValue",
                "must be an integer",
            )],
        ),
        (
            "logarithmic scaling from zero",
            patched(
                &example_tuning(),
                &format!("{cfg}/ParameterRanges/ContinuousParameterRanges/0/MinValue"),
                Some(json!("0")),
            ),
            vec![(
                "HyperParameterTuningJobConfig.ParameterRanges.ContinuousParameterRanges[0].MinValue",
                "greater than 0 with Logarithmic scaling",
            )],
        ),
        (
            "reverse logarithmic on an integer range",
            patched(
                &example_tuning(),
                &format!("{cfg}/ParameterRanges/IntegerParameterRanges/0/ScalingType"),
                Some(json!("ReverseLogarithmic")),
            ),
            vec![(
                "HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0].ScalingType",
                "only valid for continuous ranges",
            )],
        ),
        (
            "reverse logarithmic reaching 1",
            {
                let doc = patched(
                    &example_tuning(),
                    &format!("{cfg}/ParameterRanges/ContinuousParameterRanges/1/ScalingType"),
                    Some(json!("ReverseLogarithmic")),
                );
                patched(&doc, &format!("{cfg}/ParameterRanges/ContinuousParameterRanges/1/MaxValue"), Some(json!("1")))
            },
            vec![(
                "HyperParameterTuningJobConfig.ParameterRanges.ContinuousParameterRanges[1].MaxValue",
                "less than 1 with ReverseLogarithmic",
            )],
        ),
        (
            "a tuned hyperparameter that is also static",
            patched(&example_tuning(), &format!("{def}/StaticHyperParameters/epochs"), Some(json!("10"))),
            vec![("TrainingJobDefinition.StaticHyperParameters['epochs']", "must not also be a static hyperparameter")],
        ),
        (
            "the objective is not a defined metric",
            patched(
                &example_tuning(),
                &format!("{cfg}/HyperParameterTuningJobObjective/MetricName"),
                Some(json!("validation:auc")),
            ),
            vec![(
                "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective.MetricName",
                "must be one of the MetricDefinitions of TrainingJobDefinition.AlgorithmSpecification (defined: train:loss, validation:accuracy)",
            )],
        ),
        (
            "Grid with numeric ranges",
            patched(&example_tuning(), &format!("{cfg}/Strategy"), Some(json!("Grid"))),
            vec![
                ("HyperParameterTuningJobConfig.ParameterRanges.IntegerParameterRanges[0]", "categorical ranges only"),
                (
                    "HyperParameterTuningJobConfig.ParameterRanges.ContinuousParameterRanges[0]",
                    "categorical ranges only",
                ),
                (
                    "HyperParameterTuningJobConfig.ParameterRanges.ContinuousParameterRanges[1]",
                    "categorical ranges only",
                ),
                (
                    "HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs",
                    "number of grid combinations (2)",
                ),
            ],
        ),
        (
            "both definition forms",
            {
                let def_value = example_tuning()["TrainingJobDefinition"].clone();
                patched(&example_tuning(), "/TrainingJobDefinitions", Some(json!([def_value])))
            },
            vec![
                ("TrainingJobDefinitions", "exactly one of the two"),
                ("TrainingJobDefinitions[0].DefinitionName", "is required"),
            ],
        ),
        (
            "neither definition form",
            patched(&example_tuning(), "/TrainingJobDefinition", None),
            vec![("TrainingJobDefinition", "exactly one of TrainingJobDefinition and TrainingJobDefinitions")],
        ),
        (
            "instance type outside the catalog",
            patched(&example_tuning(), &format!("{def}/ResourceConfig/InstanceType"), Some(json!("ml.z9.huge"))),
            vec![("TrainingJobDefinition.ResourceConfig.InstanceType", "not an instance type this cluster knows")],
        ),
        (
            "a built-in algorithm",
            patched(&example_tuning(), &format!("{def}/AlgorithmSpecification/AlgorithmName"), Some(json!("xgboost"))),
            vec![("TrainingJobDefinition.AlgorithmSpecification.AlgorithmName", "exactly one of the two")],
        ),
        (
            "a bucket URI of another scheme",
            patched(&example_tuning(), &format!("{def}/OutputDataConfig/S3OutputPath"), Some(json!("ftp://bucket/x"))),
            vec![("TrainingJobDefinition.OutputDataConfig.S3OutputPath", "regular expression pattern")],
        ),
        (
            "a channel URI that leaves its bucket",
            patched(
                &example_tuning(),
                &format!("{def}/InputDataConfig/0/DataSource/S3DataSource/S3Uri"),
                Some(json!("s3://data//etc/")),
            ),
            vec![("TrainingJobDefinition.InputDataConfig[0].DataSource.S3DataSource.S3Uri", "empty path segment")],
        ),
        (
            "retry attempts over 30",
            patched(&example_tuning(), &format!("{def}/RetryStrategy/MaximumRetryAttempts"), Some(json!(31))),
            vec![("TrainingJobDefinition.RetryStrategy.MaximumRetryAttempts", "less than or equal to 30 (got 31)")],
        ),
        (
            "more trials than the cluster allows",
            patched(&example_tuning(), &format!("{cfg}/ResourceLimits/MaxNumberOfTrainingJobs"), Some(json!(10001))),
            vec![(
                "HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs",
                "less than or equal to 10000",
            )],
        ),
        (
            "an invalid metric regex",
            patched(
                &example_tuning(),
                &format!("{def}/AlgorithmSpecification/MetricDefinitions/0/Regex"),
                Some(json!("loss=([")),
            ),
            vec![(
                "TrainingJobDefinition.AlgorithmSpecification.MetricDefinitions[0].Regex",
                "not a valid regular expression",
            )],
        ),
        (
            "spot wait without spot training",
            patched(&example_tuning(), &format!("{def}/StoppingCondition/MaxWaitTimeInSeconds"), Some(json!(300))),
            vec![
                ("TrainingJobDefinition.StoppingCondition.MaxWaitTimeInSeconds", "EnableManagedSpotTraining"),
                (
                    "TrainingJobDefinition.StoppingCondition.MaxWaitTimeInSeconds",
                    "greater than or equal to MaxRuntimeInSeconds (600)",
                ),
            ],
        ),
        (
            "duplicate channel names",
            patched(&example_tuning(), &format!("{def}/InputDataConfig/1/ChannelName"), Some(json!("train"))),
            vec![("TrainingJobDefinition.InputDataConfig[1].ChannelName", "must be unique")],
        ),
    ];
    for (case, request, expected) in cases {
        assert_exactly(&tuning_violations(&request), &expected, case);
    }
}

#[test]
fn a_request_with_many_problems_reports_all_of_them() {
    let mut doc = example_tuning();
    doc["HyperParameterTuningJobName"] = json!("-bad");
    doc["HyperParameterTuningJobConfig"]["Strategy"] = json!("Sometimes");
    doc["TrainingJobDefinition"]["ResourceConfig"]["InstanceCount"] = json!(-1);
    doc["TrainingJobDefinition"]["InputDataConfig"][0]["InputMode"] = json!("Stream");
    doc["TrainingJobDefinition"]["StoppingCondition"]["MaxRuntimeInSeconds"] = json!(0);
    let violations = tuning_violations(&doc);
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    for expected in [
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobConfig.Strategy",
        "TrainingJobDefinition.ResourceConfig.InstanceCount",
        "TrainingJobDefinition.InputDataConfig[0].InputMode",
        "TrainingJobDefinition.StoppingCondition.MaxRuntimeInSeconds",
    ] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }
}

#[test]
fn grid_hyperband_and_multiple_definitions_follow_sagemaker() {
    // Grid: categorical only; MaxNumberOfTrainingJobs may be omitted.
    let mut grid = example_tuning();
    grid["HyperParameterTuningJobConfig"]["Strategy"] = json!("Grid");
    grid["HyperParameterTuningJobConfig"]["ParameterRanges"] = json!({
        "CategoricalParameterRanges": [
            { "Name": "optimizer", "Values": ["sgd", "momentum"] },
            { "Name": "epochs", "Values": ["10", "20", "30"] }
        ]
    });
    grid["HyperParameterTuningJobConfig"]["ResourceLimits"] = json!({ "MaxParallelTrainingJobs": 2 });
    assert_exactly(&tuning_violations(&grid), &[], "grid without MaxNumberOfTrainingJobs");
    grid["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] = json!(6);
    assert_exactly(&tuning_violations(&grid), &[], "grid with the matching count");

    // Hyperband: MaxResource inferred from a static `epochs`; early stopping must be Off.
    let mut hyperband = example_tuning();
    hyperband["HyperParameterTuningJobConfig"]["Strategy"] = json!("Hyperband");
    hyperband["HyperParameterTuningJobConfig"]["ParameterRanges"]["IntegerParameterRanges"] = json!([]);
    hyperband["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] = json!("27");
    hyperband["HyperParameterTuningJobConfig"]["StrategyConfig"] =
        json!({ "HyperbandStrategyConfig": { "MinResource": 1 } });
    assert_exactly(&tuning_violations(&hyperband), &[], "hyperband inferring MaxResource");
    hyperband["TrainingJobDefinition"]["StaticHyperParameters"] = json!({ "batch_size": "32" });
    hyperband["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = json!("Auto");
    assert_exactly(
        &tuning_violations(&hyperband),
        &[
            ("HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig.MaxResource", "is required"),
            ("HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType", "must be Off"),
        ],
        "hyperband without a resource",
    );

    // Several definitions: names unique, objective per definition.
    let mut multi = example_tuning();
    let mut a = multi["TrainingJobDefinition"].clone();
    a["DefinitionName"] = json!("logreg");
    a["TuningObjective"] = json!({ "Type": "Minimize", "MetricName": "train:loss" });
    let mut b = a.clone();
    b["DefinitionName"] = json!("logreg");
    multi.as_object_mut().expect("object").remove("TrainingJobDefinition");
    multi["TrainingJobDefinitions"] = json!([a, b]);
    assert_exactly(
        &tuning_violations(&multi),
        &[("TrainingJobDefinitions[1].DefinitionName", "must be unique")],
        "duplicate definition names",
    );
}

#[test]
fn training_job_violations_are_named() {
    let base: Value = serde_json::from_str(TRAINING_EXAMPLE).expect("example parses");
    let long_name = patched(&base, "/TrainingJobName", Some(json!("x".repeat(64))));
    assert_exactly(
        &training_violations(&long_name),
        &[("TrainingJobName", "less than or equal to 63 (got 64)"), ("TrainingJobName", "regular expression pattern")],
        "long name",
    );
    // A training job's own hyperparameters follow the service model (2,500), not the founding page.
    let long_value = patched(&base, "/HyperParameters/batch_size", Some(json!("1".repeat(300))));
    assert_exactly(&training_violations(&long_value), &[], "300-character hyperparameter");
    let no_role = patched(&base, "/RoleArn", None);
    assert_exactly(&training_violations(&no_role), &[("RoleArn", "is required")], "no role");
    let local = patched(&base, "/OutputDataConfig/S3OutputPath", Some(json!("file:///var/lib/trainyard/out")));
    assert_exactly(&training_violations(&local), &[], "file:// output path");
    let escaping = patched(&base, "/CheckpointConfig", Some(json!({"S3Uri": "s3://data/ckpt/../../etc/"})));
    assert_exactly(&training_violations(&escaping), &[("CheckpointConfig.S3Uri", "'.' or '..'")], "checkpoint ..");
    let encoded = patched(&base, "/OutputDataConfig/S3OutputPath", Some(json!("s3://out/%2e%2e/x")));
    assert_exactly(&training_violations(&encoded), &[("OutputDataConfig.S3OutputPath", "percent-encoding")], "%2e");
}
