//! A SageMaker JSON request converts to our protobuf messages and back without loss, and the
//! committed `sagemaker.proto` is what the generator writes today.

use prost::Message;
use serde_json::Value;
use trainyard_proto::model::api;
use trainyard_proto::pb;

fn round_trip<M, P>(json: &str)
where
    M: serde::de::DeserializeOwned + serde::Serialize + Clone + From<P>,
    P: From<M> + Message + Default,
{
    let original: Value = serde_json::from_str(json).expect("json");
    let model: M = serde_json::from_value(original.clone()).expect("model parses");
    let wire = P::from(model).encode_to_vec();
    let decoded = P::decode(wire.as_slice()).expect("decodes");
    let back = serde_json::to_value(M::from(decoded)).expect("serializes");
    assert_eq!(back, original);
}

#[test]
fn the_examples_survive_json_model_proto_model_json() {
    round_trip::<api::CreateHyperParameterTuningJobRequest, pb::CreateHyperParameterTuningJobRequest>(include_str!(
        "../../../deploy/examples/tuning-job.json"
    ));
    round_trip::<api::CreateTrainingJobRequest, pb::CreateTrainingJobRequest>(include_str!(
        "../../../deploy/examples/training-job.json"
    ));
}

#[test]
fn empty_lists_and_maps_stay_distinct_from_absent_ones() {
    round_trip::<api::CreateTrainingJobRequest, pb::CreateTrainingJobRequest>(
        r#"{"TrainingJobName": "x", "InputDataConfig": [], "HyperParameters": {}, "Environment": {"A": ""}}"#,
    );
}

#[test]
fn timestamps_keep_millisecond_precision() {
    round_trip::<api::ListTrainingJobsRequest, pb::ListTrainingJobsRequest>(
        r#"{"CreationTimeAfter": 1700000000.123, "CreationTimeBefore": 1700000001, "MaxResults": 5}"#,
    );
}

#[test]
fn the_committed_proto_is_up_to_date() {
    let model = trainyard_codegen_check::load();
    let committed = include_str!("../../../proto/trainyard/v1/sagemaker.proto");
    assert!(
        committed == model,
        "proto/trainyard/v1/sagemaker.proto is stale: run `cargo run -p trainyard-codegen` and commit the result"
    );
}

mod trainyard_codegen_check {
    pub fn load() -> String {
        let model = trainyard_codegen::ServiceModel::load().expect("service model");
        trainyard_codegen::proto(&model)
    }
}
