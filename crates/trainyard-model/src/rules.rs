//! The semantic rules of a create request, on top of the structural checks generated from the
//! service model. Both run on every request and their violations are reported together.
//!
//! The rules are the ones a SageMaker user relies on (`SAGEMAKER-NOTES.md`): ranges parse for their
//! type and Min ≤ Max; logarithmic scaling needs Min > 0; reverse-logarithmic only on continuous
//! ranges in [0, 1); Grid only with categorical ranges and a matching MaxNumberOfTrainingJobs;
//! Hyperband's resources; exactly one of TrainingJobDefinition and TrainingJobDefinitions with unique
//! DefinitionNames; a tuned hyperparameter is not also static; the objective is a defined metric;
//! instance types come from the catalog. Plus Trainyard's own limits, stated as such.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use crate::api;
use crate::catalog::Catalog;
use crate::error::DomainError;
use crate::uris;
use crate::validation::{Validate, Violations};

/// Service limits, configurable by the operator. Defaults are SageMaker's default quotas.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceLimits {
    /// Tuning jobs InProgress or Stopping at once.
    pub max_concurrent_tuning_jobs: u32,
    pub max_parallel_training_jobs_per_tuning_job: i64,
    pub max_training_jobs_per_tuning_job: i64,
    /// The Random strategy may run more trials.
    pub max_training_jobs_per_random_tuning_job: i64,
    /// The highest `trainyard:priority` a job may have (see `priority`).
    pub max_job_priority: i32,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_concurrent_tuning_jobs: 100,
            max_parallel_training_jobs_per_tuning_job: 100,
            max_training_jobs_per_tuning_job: 750,
            max_training_jobs_per_random_tuning_job: 10_000,
            max_job_priority: 0,
        }
    }
}

/// Hyperband infers MaxResource from a static hyperparameter of one of these names.
pub const EPOCH_HYPERPARAMETERS: &[&str] = &["epochs", "numepochs", "n-epochs", "n_epochs", "num_epochs"];
pub const HYPERBAND_MAX_RESOURCE_LIMIT: i64 = 20_000;
pub const MAX_TOTAL_RANGES: usize = 30;

/// Validates a CreateHyperParameterTuningJob request: every structural and semantic violation.
pub fn check_create_tuning_job(
    request: &api::CreateHyperParameterTuningJobRequest,
    catalog: &Catalog,
    limits: &ServiceLimits,
) -> Result<(), DomainError> {
    let mut v = request.violations();
    crate::priority::rules(request.tags.as_ref(), "Tags", limits.max_job_priority, &mut v);
    tuning_job_rules(request, catalog, limits, &mut v);
    for definition in uris::of_tuning_job(request) {
        for violation in uris::violations(&definition.uris) {
            v.push_at(violation.field, violation.description);
        }
    }
    v.into_result().map_err(DomainError::Validation)
}

/// Validates a CreateTrainingJob request: every structural and semantic violation.
pub fn check_create_training_job(
    request: &api::CreateTrainingJobRequest,
    catalog: &Catalog,
    limits: &ServiceLimits,
) -> Result<(), DomainError> {
    let mut v = request.violations();
    crate::priority::rules(request.tags.as_ref(), "Tags", limits.max_job_priority, &mut v);
    if let Some(spec) = &request.algorithm_specification {
        algorithm_rules(
            spec.training_image.as_deref(),
            spec.algorithm_name.as_deref(),
            "AlgorithmSpecification",
            &mut v,
        );
        if let Some(defs) = &spec.metric_definitions {
            unique_metric_names(defs, "AlgorithmSpecification.MetricDefinitions", &mut v);
        }
    }
    if let Some(rc) = &request.resource_config {
        resource_config_rules(rc, "ResourceConfig", catalog, &mut v);
    }
    if let Some(channels) = &request.input_data_config {
        channel_rules(channels, "InputDataConfig", &mut v);
    }
    if let Some(sc) = &request.stopping_condition {
        stopping_rules(sc, request.enable_managed_spot_training, "StoppingCondition", &mut v);
    }
    for violation in uris::violations(&uris::of_training_job(request)) {
        v.push_at(violation.field, violation.description);
    }
    v.into_result().map_err(DomainError::Validation)
}

/// The definitions of a tuning job with the path each is reported under.
pub fn definitions(
    request: &api::CreateHyperParameterTuningJobRequest,
) -> Vec<(String, &api::HyperParameterTrainingJobDefinition)> {
    match (&request.training_job_definition, &request.training_job_definitions) {
        (Some(def), _) => vec![("TrainingJobDefinition".to_string(), def)],
        (None, Some(defs)) => {
            defs.iter().enumerate().map(|(i, d)| (format!("TrainingJobDefinitions[{i}]"), d)).collect()
        }
        (None, None) => Vec::new(),
    }
}

fn tuning_job_rules(
    request: &api::CreateHyperParameterTuningJobRequest,
    catalog: &Catalog,
    limits: &ServiceLimits,
    v: &mut Violations,
) {
    match (&request.training_job_definition, &request.training_job_definitions) {
        (Some(_), Some(_)) => v.push_at(
            "TrainingJobDefinitions",
            "must not be given together with TrainingJobDefinition: give exactly one of the two",
        ),
        (None, None) => v.push_at(
            "TrainingJobDefinition",
            "is required: give exactly one of TrainingJobDefinition and TrainingJobDefinitions",
        ),
        _ => {}
    }
    if let Some(defs) = &request.training_job_definitions {
        let mut seen = BTreeSet::new();
        for (i, def) in defs.iter().enumerate() {
            match &def.definition_name {
                None => v.push_at(
                    format!("TrainingJobDefinitions[{i}].DefinitionName"),
                    "is required when a tuning job has TrainingJobDefinitions",
                ),
                Some(name) if !seen.insert(name.as_str()) => v.push_at(
                    format!("TrainingJobDefinitions[{i}].DefinitionName"),
                    format!("value '{name}' must be unique among the TrainingJobDefinitions"),
                ),
                Some(_) => {}
            }
        }
    }
    if let Some(autotune) = &request.autotune
        && autotune.mode.as_deref() == Some("Enabled")
    {
        v.push_at("Autotune.Mode", "Autotune is not supported by Trainyard: give the tuning configuration explicitly");
    }

    let Some(config) = &request.hyper_parameter_tuning_job_config else {
        return;
    };
    let strategy = config.strategy.as_deref().unwrap_or("");
    let defs = definitions(request);

    // Objective: once in the config or in every definition.
    for (path, def) in &defs {
        let (objective, objective_path) = match (&def.tuning_objective, &config.hyper_parameter_tuning_job_objective) {
            (Some(o), _) => (Some(o), format!("{path}.TuningObjective")),
            (None, Some(o)) => (Some(o), "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective".to_string()),
            (None, None) => (None, String::new()),
        };
        match objective {
            None => v.push_at(
                "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective",
                format!("is required: give it here or as TuningObjective in {path}"),
            ),
            Some(objective) => objective_rules(objective, def, path, &objective_path, v),
        }
    }

    // Ranges, per definition (a definition's own HyperParameterRanges win over the config's).
    let mut grid_combinations: u64 = 0;
    for (path, def) in &defs {
        let (ranges, ranges_path) = match (&def.hyper_parameter_ranges, &config.parameter_ranges) {
            (Some(r), _) => (Some(r), format!("{path}.HyperParameterRanges")),
            (None, Some(r)) => (Some(r), "HyperParameterTuningJobConfig.ParameterRanges".to_string()),
            (None, None) => (None, "HyperParameterTuningJobConfig.ParameterRanges".to_string()),
        };
        let empty = api::ParameterRanges::default();
        let ranges = ranges.unwrap_or(&empty);
        let statics = def.static_hyper_parameters.clone().unwrap_or_default();
        range_rules(ranges, &ranges_path, &statics, path, strategy, v);
        if strategy == "Grid" {
            let product = ranges
                .categorical_parameter_ranges
                .iter()
                .flatten()
                .map(|r| r.values.as_ref().map_or(0, Vec::len) as u64)
                .product::<u64>();
            let has_any = ranges.categorical_parameter_ranges.as_ref().is_some_and(|r| !r.is_empty());
            if !has_any {
                v.push_at(&ranges_path, "the Grid strategy needs at least one CategoricalParameterRange");
            }
            grid_combinations = grid_combinations.saturating_add(if has_any { product } else { 0 });
        }
        algorithm_rules(
            def.algorithm_specification.as_ref().and_then(|a| a.training_image.as_deref()),
            def.algorithm_specification.as_ref().and_then(|a| a.algorithm_name.as_deref()),
            &format!("{path}.AlgorithmSpecification"),
            v,
        );
        if let Some(metrics) = def.algorithm_specification.as_ref().and_then(|a| a.metric_definitions.as_ref()) {
            unique_metric_names(metrics, &format!("{path}.AlgorithmSpecification.MetricDefinitions"), v);
        }
        match (&def.resource_config, &def.hyper_parameter_tuning_resource_config) {
            (Some(_), Some(_)) => v.push_at(
                format!("{path}.HyperParameterTuningResourceConfig"),
                "must not be given together with ResourceConfig: give exactly one of the two",
            ),
            (None, None) => v.push_at(
                format!("{path}.ResourceConfig"),
                "is required: give exactly one of ResourceConfig and HyperParameterTuningResourceConfig",
            ),
            (Some(rc), None) => resource_config_rules(rc, &format!("{path}.ResourceConfig"), catalog, v),
            (None, Some(hrc)) => {
                tuning_resource_config_rules(hrc, &format!("{path}.HyperParameterTuningResourceConfig"), catalog, v)
            }
        }
        if let Some(channels) = &def.input_data_config {
            channel_rules(channels, &format!("{path}.InputDataConfig"), v);
        }
        if let Some(sc) = &def.stopping_condition {
            stopping_rules(sc, def.enable_managed_spot_training, &format!("{path}.StoppingCondition"), v);
        }
    }

    // Strategy and limits.
    let resource_limits = config.resource_limits.as_ref();
    let max_jobs = resource_limits.and_then(|l| l.max_number_of_training_jobs);
    let max_parallel = resource_limits.and_then(|l| l.max_parallel_training_jobs);
    const LIMITS: &str = "HyperParameterTuningJobConfig.ResourceLimits";
    if strategy == "Grid" {
        if let Some(max) = max_jobs
            && grid_combinations > 0
            && max as u64 != grid_combinations
        {
            v.push_at(
                format!("{LIMITS}.MaxNumberOfTrainingJobs"),
                format!(
                    "must equal the number of grid combinations ({grid_combinations}) or be omitted for the Grid strategy (got {max})"
                ),
            );
        }
    } else if max_jobs.is_none()
        && resource_limits.is_some_and(|l| l.max_runtime_in_seconds.is_none())
        && config.tuning_job_completion_criteria.is_none()
    {
        v.push_at(
            format!("{LIMITS}.MaxNumberOfTrainingJobs"),
            format!(
                "is required for the {strategy} strategy unless ResourceLimits.MaxRuntimeInSeconds or TuningJobCompletionCriteria bounds the job"
            ),
        );
    }
    let job_limit = if strategy == "Random" {
        limits.max_training_jobs_per_random_tuning_job
    } else {
        limits.max_training_jobs_per_tuning_job
    };
    if let Some(max) = max_jobs
        && i64::from(max) > job_limit
    {
        v.push_at(
            format!("{LIMITS}.MaxNumberOfTrainingJobs"),
            format!("must be less than or equal to {job_limit}, this cluster's limit for the {strategy} strategy (got {max})"),
        );
    }
    if let Some(parallel) = max_parallel
        && i64::from(parallel) > limits.max_parallel_training_jobs_per_tuning_job
    {
        v.push_at(
            format!("{LIMITS}.MaxParallelTrainingJobs"),
            format!(
                "must be less than or equal to {}, this cluster's limit (got {parallel})",
                limits.max_parallel_training_jobs_per_tuning_job
            ),
        );
    }

    let hyperband = config.strategy_config.as_ref().and_then(|s| s.hyperband_strategy_config.as_ref());
    if strategy == "Hyperband" {
        hyperband_rules(hyperband, config, &defs, v);
    } else if hyperband.is_some() {
        v.push_at(
            "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig",
            format!("is only valid with the Hyperband strategy (strategy is {strategy})"),
        );
    }
}

fn hyperband_rules(
    hyperband: Option<&api::HyperbandStrategyConfig>,
    config: &api::HyperParameterTuningJobConfig,
    defs: &[(String, &api::HyperParameterTrainingJobDefinition)],
    v: &mut Violations,
) {
    const PATH: &str = "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig";
    if config.training_job_early_stopping_type.as_deref().is_some_and(|t| t != "Off") {
        v.push_at(
            "HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType",
            "must be Off with the Hyperband strategy, which stops trials itself",
        );
    }
    let min = hyperband.and_then(|h| h.min_resource).map(i64::from).unwrap_or(1);
    let max = match hyperband.and_then(|h| h.max_resource) {
        Some(max) => Some(i64::from(max)),
        None => defs.iter().find_map(|(_, def)| {
            let statics = def.static_hyper_parameters.as_ref()?;
            EPOCH_HYPERPARAMETERS.iter().find_map(|k| statics.get(*k)?.trim().parse::<i64>().ok())
        }),
    };
    match max {
        None => v.push_at(
            format!("{PATH}.MaxResource"),
            format!(
                "is required: give it, or a static hyperparameter named one of {} to infer it from",
                EPOCH_HYPERPARAMETERS.join(", ")
            ),
        ),
        Some(max) => {
            if max > HYPERBAND_MAX_RESOURCE_LIMIT {
                v.push_at(
                    format!("{PATH}.MaxResource"),
                    format!("must be less than or equal to {HYPERBAND_MAX_RESOURCE_LIMIT} (got {max})"),
                );
            }
            if min > max {
                v.push_at(
                    format!("{PATH}.MinResource"),
                    format!("must be less than or equal to MaxResource ({max}) (got {min})"),
                );
            }
        }
    }
}

fn objective_rules(
    objective: &api::HyperParameterTuningJobObjective,
    def: &api::HyperParameterTrainingJobDefinition,
    def_path: &str,
    objective_path: &str,
    v: &mut Violations,
) {
    let Some(metric) = &objective.metric_name else {
        return;
    };
    let spec = def.algorithm_specification.as_ref();
    if spec.is_some_and(|s| s.algorithm_name.is_some()) {
        return; // reported as unsupported by algorithm_rules
    }
    let defined: Vec<&str> = spec
        .and_then(|s| s.metric_definitions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|d| d.name.as_deref())
        .collect();
    if !defined.contains(&metric.as_str()) {
        let known = if defined.is_empty() { "none".to_string() } else { defined.join(", ") };
        v.push_at(
            format!("{objective_path}.MetricName"),
            format!(
                "value '{metric}' must be one of the MetricDefinitions of {def_path}.AlgorithmSpecification (defined: {known})"
            ),
        );
    }
}

fn range_rules(
    ranges: &api::ParameterRanges,
    path: &str,
    statics: &BTreeMap<String, String>,
    def_path: &str,
    strategy: &str,
    v: &mut Violations,
) {
    let integer = ranges.integer_parameter_ranges.as_deref().unwrap_or_default();
    let continuous = ranges.continuous_parameter_ranges.as_deref().unwrap_or_default();
    let categorical = ranges.categorical_parameter_ranges.as_deref().unwrap_or_default();
    let total = integer.len() + continuous.len() + categorical.len();
    if total > MAX_TOTAL_RANGES {
        v.push_at(
            path,
            format!("must have at most {MAX_TOTAL_RANGES} ranges in total across integer, continuous and categorical (got {total})"),
        );
    }

    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut name_rule = |name: Option<&String>, at: String, v: &mut Violations| {
        let Some(name) = name else { return };
        if !names.insert(name.clone()) {
            v.push_at(
                format!("{at}.Name"),
                format!("value '{name}' names a hyperparameter that another range tunes already"),
            );
        }
        if statics.contains_key(name) {
            v.push_at(
                format!("{def_path}.StaticHyperParameters['{name}']"),
                format!("'{name}' is tuned by {at} and must not also be a static hyperparameter"),
            );
        }
    };

    for (i, r) in integer.iter().enumerate() {
        let at = format!("{path}.IntegerParameterRanges[{i}]");
        name_rule(r.name.as_ref(), at.clone(), v);
        if strategy == "Grid" {
            v.push_at(&at, "the Grid strategy accepts categorical ranges only");
        }
        let min = parse_bound::<i64>(r.min_value.as_deref(), &format!("{at}.MinValue"), "an integer", v);
        let max = parse_bound::<i64>(r.max_value.as_deref(), &format!("{at}.MaxValue"), "an integer", v);
        if let (Some(min), Some(max)) = (min, max) {
            numeric_range_rules(min as f64, max as f64, r.scaling_type.as_deref(), false, &at, v);
        }
    }
    for (i, r) in continuous.iter().enumerate() {
        let at = format!("{path}.ContinuousParameterRanges[{i}]");
        name_rule(r.name.as_ref(), at.clone(), v);
        if strategy == "Grid" {
            v.push_at(&at, "the Grid strategy accepts categorical ranges only");
        }
        let min = parse_bound::<f64>(r.min_value.as_deref(), &format!("{at}.MinValue"), "a finite number", v)
            .filter(|x| x.is_finite());
        let max = parse_bound::<f64>(r.max_value.as_deref(), &format!("{at}.MaxValue"), "a finite number", v)
            .filter(|x| x.is_finite());
        if let (Some(min), Some(max)) = (min, max) {
            numeric_range_rules(min, max, r.scaling_type.as_deref(), true, &at, v);
        }
    }
    for (i, r) in categorical.iter().enumerate() {
        let at = format!("{path}.CategoricalParameterRanges[{i}]");
        name_rule(r.name.as_ref(), at.clone(), v);
        let mut seen = BTreeSet::new();
        for (j, value) in r.values.iter().flatten().enumerate() {
            if !seen.insert(value.as_str()) {
                v.push_at(format!("{at}.Values[{j}]"), format!("value '{value}' appears more than once"));
            }
        }
    }
}

fn parse_bound<T: std::str::FromStr>(raw: Option<&str>, at: &str, what: &str, v: &mut Violations) -> Option<T> {
    let raw = raw?;
    match raw.trim().parse::<T>() {
        Ok(x) => Some(x),
        Err(_) => {
            v.push_at(at, format!("value '{raw}' must be {what}"));
            None
        }
    }
}

fn numeric_range_rules(min: f64, max: f64, scaling: Option<&str>, continuous: bool, at: &str, v: &mut Violations) {
    if min > max {
        v.push_at(format!("{at}.MinValue"), format!("must be less than or equal to MaxValue ({max}) (got {min})"));
    }
    match scaling {
        Some("Logarithmic") if min <= 0.0 => {
            v.push_at(format!("{at}.MinValue"), format!("must be greater than 0 with Logarithmic scaling (got {min})"))
        }
        Some("ReverseLogarithmic") if !continuous => {
            v.push_at(format!("{at}.ScalingType"), "ReverseLogarithmic scaling is only valid for continuous ranges")
        }
        Some("ReverseLogarithmic") => {
            if min < 0.0 {
                v.push_at(
                    format!("{at}.MinValue"),
                    format!("must be greater than or equal to 0 with ReverseLogarithmic scaling (got {min})"),
                );
            }
            if max >= 1.0 {
                v.push_at(
                    format!("{at}.MaxValue"),
                    format!("must be less than 1 with ReverseLogarithmic scaling (got {max})"),
                );
            }
        }
        _ => {}
    }
}

fn algorithm_rules(image: Option<&str>, algorithm: Option<&str>, path: &str, v: &mut Violations) {
    match (image, algorithm) {
        (Some(_), Some(_)) => v.push_at(
            format!("{path}.AlgorithmName"),
            "must not be given together with TrainingImage: give exactly one of the two",
        ),
        (None, Some(_)) => v.push_at(
            format!("{path}.AlgorithmName"),
            "built-in and marketplace algorithms are not available in Trainyard: name the program to run in TrainingImage",
        ),
        (None, None) => v.push_at(format!("{path}.TrainingImage"), "is required: name the program to run"),
        (Some(_), None) => {}
    }
}

fn unique_metric_names(defs: &[api::MetricDefinition], path: &str, v: &mut Violations) {
    let mut seen = BTreeSet::new();
    for (i, d) in defs.iter().enumerate() {
        if let Some(name) = &d.name
            && !seen.insert(name.as_str())
        {
            v.push_at(
                format!("{path}[{i}].Name"),
                format!("value '{name}' must be unique among the MetricDefinitions"),
            );
        }
        if let Some(regex) = &d.regex
            && let Some(problem) = regex_problem(regex)
        {
            v.push_at(
                format!("{path}[{i}].Regex"),
                format!("value '{regex}' is not a valid regular expression: {problem}"),
            );
        }
    }
}

/// Regexes whose verdict [`regex_problem`] remembers at most, and their length at most (the API's
/// limit on `MetricDefinition.Regex`).
const REGEXES_REMEMBERED: usize = 1024;
const MAX_REMEMBERED_REGEX: usize = 500;

/// Why a metric definition's regex does not compile, or None. Parsing is enough to know that it
/// does; building it (a DFA) costs far more and is the agent's job when the trial runs. Verdicts
/// are remembered: parsing one costs more than the rest of a create's checks together (Unicode
/// classes are expanded), and a tuning job's trials and a team's jobs repeat the same few.
fn regex_problem(regex: &str) -> Option<String> {
    static VERDICTS: LazyLock<Mutex<HashMap<String, Option<String>>>> = LazyLock::new(Default::default);
    let verdicts = || VERDICTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = verdicts().get(regex) {
        return known.clone();
    }
    let problem = regex_syntax::Parser::new()
        .parse(regex)
        .err()
        .map(|e| e.to_string().lines().last().unwrap_or_default().trim().to_string());
    if regex.len() > MAX_REMEMBERED_REGEX {
        return problem; // over the API's limit: refused elsewhere, not worth keeping
    }
    let mut remembered = verdicts();
    if remembered.len() >= REGEXES_REMEMBERED {
        remembered.clear();
    }
    remembered.insert(regex.to_string(), problem.clone());
    problem
}

fn instance_type_rule(instance_type: &str, path: &str, catalog: &Catalog, v: &mut Violations) {
    if catalog.get(instance_type).is_none() {
        let examples: Vec<&str> = catalog.names().take(6).collect();
        v.push_at(
            path,
            format!(
                "value '{instance_type}' is not an instance type this cluster knows ({} types in its catalog, e.g. {})",
                catalog.len(),
                examples.join(", ")
            ),
        );
    }
}

fn resource_config_rules(rc: &api::ResourceConfig, path: &str, catalog: &Catalog, v: &mut Violations) {
    match (&rc.instance_type, &rc.instance_groups) {
        (Some(t), None) => {
            instance_type_rule(t, &format!("{path}.InstanceType"), catalog, v);
            if rc.instance_count.is_none() {
                v.push_at(format!("{path}.InstanceCount"), "is required with InstanceType");
            }
        }
        (None, Some(groups)) => {
            for (i, g) in groups.iter().enumerate() {
                if let Some(t) = &g.instance_type {
                    instance_type_rule(t, &format!("{path}.InstanceGroups[{i}].InstanceType"), catalog, v);
                }
            }
        }
        (Some(_), Some(_)) => v.push_at(
            format!("{path}.InstanceGroups"),
            "must not be given together with InstanceType: give exactly one of the two",
        ),
        (None, None) => v.push_at(format!("{path}.InstanceType"), "is required: give InstanceType or InstanceGroups"),
    }
}

fn tuning_resource_config_rules(
    rc: &api::HyperParameterTuningResourceConfig,
    path: &str,
    catalog: &Catalog,
    v: &mut Violations,
) {
    if let Some(t) = &rc.instance_type {
        instance_type_rule(t, &format!("{path}.InstanceType"), catalog, v);
    }
    for (i, c) in rc.instance_configs.iter().flatten().enumerate() {
        if let Some(t) = &c.instance_type {
            instance_type_rule(t, &format!("{path}.InstanceConfigs[{i}].InstanceType"), catalog, v);
        }
    }
    if rc.instance_type.is_none() && rc.instance_configs.as_ref().is_none_or(Vec::is_empty) {
        v.push_at(format!("{path}.InstanceType"), "is required: give InstanceType or InstanceConfigs");
    }
}

fn channel_rules(channels: &[api::Channel], path: &str, v: &mut Violations) {
    let mut seen = BTreeSet::new();
    for (i, c) in channels.iter().enumerate() {
        if let Some(name) = &c.channel_name
            && !seen.insert(name.as_str())
        {
            v.push_at(format!("{path}[{i}].ChannelName"), format!("value '{name}' must be unique among the channels"));
        }
        let Some(source) = &c.data_source else {
            continue;
        };
        let given = [
            source.s3_data_source.is_some(),
            source.file_system_data_source.is_some(),
            source.dataset_source.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            v.push_at(
                format!("{path}[{i}].DataSource"),
                format!("must give exactly one of S3DataSource, FileSystemDataSource and DatasetSource (got {given})"),
            );
        } else if source.s3_data_source.is_none() {
            v.push_at(
                format!("{path}[{i}].DataSource"),
                "only S3DataSource is supported by Trainyard (with an s3://, https:// or file:// URI)",
            );
        }
    }
}

fn stopping_rules(sc: &api::StoppingCondition, spot: Option<bool>, path: &str, v: &mut Violations) {
    if let Some(wait) = sc.max_wait_time_in_seconds {
        if spot != Some(true) {
            v.push_at(
                format!("{path}.MaxWaitTimeInSeconds"),
                "is only valid with EnableManagedSpotTraining set to true",
            );
        }
        if let Some(runtime) = sc.max_runtime_in_seconds
            && wait < runtime
        {
            v.push_at(
                format!("{path}.MaxWaitTimeInSeconds"),
                format!("must be greater than or equal to MaxRuntimeInSeconds ({runtime}) (got {wait})"),
            );
        }
    }
}
