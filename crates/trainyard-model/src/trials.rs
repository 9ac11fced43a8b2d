//! What a tuning job's trials are made of: the training-job request of trial `i`, its name, and the
//! objective it is judged by. Pure: the coordinator calls these with the tuner's suggestions.

use std::collections::BTreeMap;

use crate::api;
use crate::names::trial_name;
use crate::rules;

/// The hyperparameter SageMaker adds to every trial: the objective metric's name.
pub const OBJECTIVE_HYPERPARAMETER: &str = "_tuning_objective_metric";

/// The objective of a tuning job: metric name, and whether larger is better. With several
/// definitions each may have its own; this is the tuning config's, else the first definition's.
pub fn objective(request: &api::CreateHyperParameterTuningJobRequest) -> Option<(String, bool)> {
    let config = request.hyper_parameter_tuning_job_config.as_ref();
    let objective = config
        .and_then(|c| c.hyper_parameter_tuning_job_objective.clone())
        .or_else(|| rules::definitions(request).into_iter().find_map(|(_, d)| d.tuning_objective.clone()))?;
    Some((objective.metric_name?, objective.r#type.as_deref() == Some("Maximize")))
}

/// The definition trial `index` (0-based) uses: definitions take turns.
pub fn definition(
    request: &api::CreateHyperParameterTuningJobRequest,
    index: u64,
) -> Option<&api::HyperParameterTrainingJobDefinition> {
    match (&request.training_job_definition, &request.training_job_definitions) {
        (Some(d), _) => Some(d),
        (None, Some(defs)) if !defs.is_empty() => defs.get((index % defs.len() as u64) as usize),
        _ => None,
    }
}

/// The ranges a definition tunes: its own, else the tuning config's.
pub fn ranges(
    request: &api::CreateHyperParameterTuningJobRequest,
    definition: &api::HyperParameterTrainingJobDefinition,
) -> api::ParameterRanges {
    definition
        .hyper_parameter_ranges
        .clone()
        .or_else(|| request.hyper_parameter_tuning_job_config.as_ref().and_then(|c| c.parameter_ranges.clone()))
        .unwrap_or_default()
}

/// `<tuning-job>-<NNN>-<8 hex>` for trial `index` (0-based); the suffix is a hash of the tuning job
/// and the index, so a restarted coordinator names a trial exactly as before.
pub fn name(tuning_job: &str, index: u64) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tuning_job.bytes().chain(index.to_le_bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    trial_name(tuning_job, (index + 1) as u32, hash)
}

/// What a hyperparameter is in a tuning job: a static value or a range of one of three types.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Static(String),
    Integer,
    Continuous,
    Categorical,
}

fn roles(request: &api::CreateHyperParameterTuningJobRequest) -> BTreeMap<String, Role> {
    let mut out = BTreeMap::new();
    let Some(def) = definition(request, 0) else { return out };
    for (k, v) in def.static_hyper_parameters.iter().flatten() {
        out.insert(k.clone(), Role::Static(v.clone()));
    }
    let r = ranges(request, def);
    for x in r.integer_parameter_ranges.iter().flatten() {
        out.insert(x.name.clone().unwrap_or_default(), Role::Integer);
    }
    for x in r.continuous_parameter_ranges.iter().flatten() {
        out.insert(x.name.clone().unwrap_or_default(), Role::Continuous);
    }
    for x in r.categorical_parameter_ranges.iter().flatten() {
        out.insert(x.name.clone().unwrap_or_default(), Role::Categorical);
    }
    out
}

/// Changes allowed between a warm-start parent and its child.
pub const MAX_WARM_START_CHANGES: usize = 10;

/// Why `parent` cannot warm-start `child`, as SageMaker rules it: the same hyperparameters (static
/// plus tunable), each range keeping its type, and at most ten changes (static ↔ tunable, or a
/// static value changed). Empty when it can.
pub fn warm_start_problems(
    child: &api::CreateHyperParameterTuningJobRequest,
    parent: &api::CreateHyperParameterTuningJobRequest,
) -> Vec<String> {
    let (c, p) = (roles(child), roles(parent));
    let mut problems = Vec::new();
    let missing: Vec<&String> = p.keys().filter(|k| !c.contains_key(*k)).collect();
    let added: Vec<&String> = c.keys().filter(|k| !p.contains_key(*k)).collect();
    if !missing.is_empty() || !added.is_empty() {
        problems.push(format!(
            "the hyperparameters (static plus tunable) must stay the same: missing {missing:?}, added {added:?}"
        ));
    }
    let mut changes = 0;
    for (name, role) in &c {
        let Some(before) = p.get(name) else { continue };
        match (before, role) {
            (Role::Static(a), Role::Static(b)) if a != b => changes += 1,
            (Role::Static(_), Role::Static(_)) => {}
            (Role::Static(_), _) | (_, Role::Static(_)) => changes += 1,
            (a, b) if a != b => problems.push(format!("'{name}' must keep its type ({a:?} in the parent, {b:?} here)")),
            _ => {}
        }
    }
    if changes > MAX_WARM_START_CHANGES {
        problems.push(format!(
            "at most {MAX_WARM_START_CHANGES} changes (static to tunable, tunable to static, static values) are allowed (got {changes})"
        ));
    }
    problems
}

/// The 0-based index of a trial from its name (the inverse of [`name`]).
pub fn index_of(tuning_job: &str, trial: &str) -> Option<u64> {
    let rest = trial.strip_prefix(tuning_job)?.strip_prefix('-')?;
    let (number, _) = rest.split_once('-')?;
    number.parse::<u64>().ok()?.checked_sub(1)
}

/// The CreateTrainingJob request of a trial: the definition, its static hyperparameters, the tuned
/// ones, and `_tuning_objective_metric`, all strings as a training job receives them.
pub fn request(
    tuning: &api::CreateHyperParameterTuningJobRequest,
    definition: &api::HyperParameterTrainingJobDefinition,
    name: &str,
    tuned: &BTreeMap<String, String>,
) -> api::CreateTrainingJobRequest {
    let d = definition.clone();
    let mut hyper_parameters = d.static_hyper_parameters.clone().unwrap_or_default();
    hyper_parameters.extend(tuned.iter().map(|(k, v)| (k.clone(), v.clone())));
    let metric =
        d.tuning_objective.as_ref().and_then(|o| o.metric_name.clone()).or_else(|| objective(tuning).map(|(m, _)| m));
    if let Some(metric) = metric {
        hyper_parameters.insert(OBJECTIVE_HYPERPARAMETER.into(), metric);
    }
    let algorithm = d.algorithm_specification.map(|a| api::AlgorithmSpecification {
        algorithm_name: a.algorithm_name,
        metric_definitions: a.metric_definitions,
        training_image: a.training_image,
        training_input_mode: a.training_input_mode,
        ..Default::default()
    });
    // HyperParameterTuningResourceConfig describes the same instance as ResourceConfig.
    let resource_config = d.resource_config.or_else(|| {
        d.hyper_parameter_tuning_resource_config.map(|h| api::ResourceConfig {
            instance_count: h.instance_count,
            instance_type: h
                .instance_type
                .or_else(|| h.instance_configs.and_then(|c| c.into_iter().next()).and_then(|c| c.instance_type)),
            volume_kms_key_id: h.volume_kms_key_id,
            volume_size_in_gb: h.volume_size_in_gb,
            ..Default::default()
        })
    });
    api::CreateTrainingJobRequest {
        algorithm_specification: algorithm,
        checkpoint_config: d.checkpoint_config,
        enable_inter_container_traffic_encryption: d.enable_inter_container_traffic_encryption,
        enable_managed_spot_training: d.enable_managed_spot_training,
        enable_network_isolation: d.enable_network_isolation,
        environment: d.environment,
        hyper_parameters: Some(hyper_parameters),
        input_data_config: d.input_data_config,
        output_data_config: d.output_data_config,
        resource_config,
        retry_strategy: d.retry_strategy,
        role_arn: d.role_arn,
        stopping_condition: d.stopping_condition,
        tags: tuning.tags.clone(),
        training_job_name: Some(name.to_string()),
        vpc_config: d.vpc_config,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> api::CreateHyperParameterTuningJobRequest {
        serde_json::from_str(include_str!("../../../deploy/examples/tuning-job.json")).expect("example")
    }

    #[test]
    fn trials_carry_static_tuned_and_objective_hyperparameters() {
        let tuning = example();
        let def = definition(&tuning, 0).expect("definition");
        let tuned = BTreeMap::from([("learning_rate".to_string(), "0.1".to_string())]);
        let r = request(&tuning, def, "t-001-00000000", &tuned);
        let hp = r.hyper_parameters.expect("hyperparameters");
        assert_eq!(hp["batch_size"], "32");
        assert_eq!(hp["learning_rate"], "0.1");
        assert_eq!(hp[OBJECTIVE_HYPERPARAMETER], "validation:accuracy");
        assert_eq!(r.training_job_name.as_deref(), Some("t-001-00000000"));
        assert_eq!(r.input_data_config, def.input_data_config);
        // The trial request is itself a valid CreateTrainingJob request.
        crate::rules::check_create_training_job(
            &r_again(&tuning),
            &crate::catalog::Catalog::default(),
            &Default::default(),
        )
        .expect("valid");
    }

    fn r_again(tuning: &api::CreateHyperParameterTuningJobRequest) -> api::CreateTrainingJobRequest {
        let def = definition(tuning, 0).expect("definition");
        request(tuning, def, &name("blobs-logreg-random", 0), &BTreeMap::new())
    }

    #[test]
    fn warm_start_keeps_the_hyperparameters_and_their_types() {
        let parent = example();
        assert!(warm_start_problems(&parent, &parent).is_empty());
        let mut child = example();
        let statics = |c: &mut api::CreateHyperParameterTuningJobRequest| {
            c.training_job_definition
                .as_mut()
                .and_then(|d| d.static_hyper_parameters.as_mut())
                .map(std::mem::take)
                .unwrap_or_default()
        };
        // batch_size: static → another value (1 change); a new static one is an addition.
        let mut s = statics(&mut child);
        s.insert("batch_size".into(), "64".into());
        child.training_job_definition.as_mut().expect("definition").static_hyper_parameters = Some(s.clone());
        assert!(warm_start_problems(&child, &parent).is_empty(), "one change is fine");
        s.insert("extra".into(), "1".into());
        child.training_job_definition.as_mut().expect("definition").static_hyper_parameters = Some(s);
        let problems = warm_start_problems(&child, &parent);
        assert!(problems[0].contains("added [\"extra\"]"), "{problems:?}");
        // epochs: an integer range becoming continuous keeps the name but not the type.
        let mut child = example();
        let ranges =
            child.hyper_parameter_tuning_job_config.as_mut().and_then(|c| c.parameter_ranges.as_mut()).expect("ranges");
        let epochs = ranges.integer_parameter_ranges.take().expect("integer ranges").remove(0);
        ranges.continuous_parameter_ranges.as_mut().expect("continuous").push(api::ContinuousParameterRange {
            name: epochs.name,
            min_value: epochs.min_value,
            max_value: epochs.max_value,
            scaling_type: None,
        });
        let problems = warm_start_problems(&child, &parent);
        assert!(problems.iter().any(|p| p.contains("'epochs' must keep its type")), "{problems:?}");
    }

    #[test]
    fn names_are_stable_and_sagemaker_shaped() {
        let a = name("random-240712-1545", 18);
        assert!(a.starts_with("random-240712-1545-019-"), "{a}");
        assert_eq!(a.len(), "random-240712-1545-019-".len() + 8);
        assert_eq!(a, name("random-240712-1545", 18));
        assert_eq!(index_of("random-240712-1545", &a), Some(18));
        assert_eq!(index_of("other", &a), None);
        assert_ne!(a, name("random-240712-1545", 19));
        assert_eq!(objective(&example()), Some(("validation:accuracy".to_string(), true)));
    }
}
