//! Hostile input never panics the decoding and validation path: random bytes as protobuf, valid
//! requests with random corruption (on the wire and in their JSON), whatever comes through is
//! converted and validated, and what validates survives the round trip. The result may be an error,
//! never a panic.

use proptest::prelude::*;
use prost::Message;
use serde_json::Value;
use trainyard_proto::model::api;
use trainyard_proto::model::catalog::Catalog;
use trainyard_proto::model::rules::{ServiceLimits, check_create_training_job, check_create_tuning_job};
use trainyard_proto::pb;

const TUNING: &str = include_str!("../../../deploy/examples/tuning-job.json");
const TRAINING: &str = include_str!("../../../deploy/examples/training-job.json");

fn check_tuning(request: api::CreateHyperParameterTuningJobRequest) {
    let _ = check_create_tuning_job(&request, &Catalog::default(), &ServiceLimits::default());
    // Whatever the model holds survives model → proto → model.
    let wire = pb::CreateHyperParameterTuningJobRequest::from(request.clone()).encode_to_vec();
    let decoded = pb::CreateHyperParameterTuningJobRequest::decode(wire.as_slice()).expect("our own encoding decodes");
    assert_eq!(api::CreateHyperParameterTuningJobRequest::from(decoded), request);
}

fn check_training(request: api::CreateTrainingJobRequest) {
    let _ = check_create_training_job(&request, &Catalog::default(), &Default::default());
    let wire = pb::CreateTrainingJobRequest::from(request.clone()).encode_to_vec();
    let decoded = pb::CreateTrainingJobRequest::decode(wire.as_slice()).expect("our own encoding decodes");
    assert_eq!(api::CreateTrainingJobRequest::from(decoded), request);
}

/// Any JSON value, nested a little: the replacements a hostile client could send for a member.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "[0-9.eE+-]{1,30}".prop_map(Value::String),
        (0usize..100_000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer of a document (members and array items, at any depth).
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        _ => {}
    }
}

fn corrupted(example: &str, which: usize, replacement: Value) -> Value {
    let mut doc: Value = serde_json::from_str(example).expect("example");
    let mut all = Vec::new();
    pointers(&doc, String::new(), &mut all);
    let pointer = &all[which % all.len()];
    if let Some(target) = doc.pointer_mut(pointer) {
        *target = replacement;
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(request) = pb::CreateHyperParameterTuningJobRequest::decode(bytes.as_slice()) {
            let _ = check_create_tuning_job(&request.into(), &Catalog::default(), &ServiceLimits::default());
        }
        if let Ok(request) = pb::CreateTrainingJobRequest::decode(bytes.as_slice()) {
            let _ = check_create_training_job(&request.into(), &Catalog::default(), &Default::default());
        }
    }

    #[test]
    fn corrupted_wire_requests_fail_cleanly(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let model: api::CreateHyperParameterTuningJobRequest = serde_json::from_str(TUNING).expect("example");
        let mut wire = pb::CreateHyperParameterTuningJobRequest::from(model).encode_to_vec();
        for (at, byte) in flips {
            let i = at % wire.len();
            wire[i] ^= byte;
        }
        wire.truncate(cut % (wire.len() + 1));
        if let Ok(request) = pb::CreateHyperParameterTuningJobRequest::decode(wire.as_slice()) {
            check_tuning(request.into());
        }
    }

    #[test]
    fn any_member_of_a_tuning_request_replaced_by_anything(which in any::<usize>(), replacement in json_value()) {
        let doc = corrupted(TUNING, which, replacement);
        if let Ok(request) = serde_json::from_value::<api::CreateHyperParameterTuningJobRequest>(doc) {
            check_tuning(request);
        }
    }

    #[test]
    fn any_member_of_a_training_request_replaced_by_anything(which in any::<usize>(), replacement in json_value()) {
        let doc = corrupted(TRAINING, which, replacement);
        if let Ok(request) = serde_json::from_value::<api::CreateTrainingJobRequest>(doc) {
            check_training(request);
        }
    }
}
