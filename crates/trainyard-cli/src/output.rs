//! What the CLI prints: JSON for scripts, tables and summaries for people, and errors with the
//! exit code that names their kind.

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use tonic::Code;
use trainyard_proto::model::Timestamp;
use trainyard_proto::model::api;
use trainyard_proto::status;

/// The coordinator could not be reached.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach the coordinator at {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

pub fn json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// What to do about a coordinator the CLI could not reach, from what the connection said: a
/// coordinator that answered with a certificate the CA file does not vouch for is there, and
/// starting another one would not help.
pub fn unreachable_hint(detail: &str) -> &'static str {
    let lowered = detail.to_ascii_lowercase();
    if lowered.contains("certificate") || lowered.contains("unknownissuer") || lowered.contains("badsignature") {
        "the coordinator answered, but its certificate is not signed by the CA in --ca-file / \
         TRAINYARD_CA_FILE: use that coordinator's <data-dir>/pki/ca.pem"
    } else if lowered.contains("connection refused") {
        "nothing listens there: start one with `trainyard-coordinator`, or point --coordinator / \
         TRAINYARD_COORDINATOR at it"
    } else {
        "check --coordinator / TRAINYARD_COORDINATOR, and that the coordinator is running and reachable"
    }
}

/// Prints an error for a person and returns the exit code for its kind.
pub fn report_error(error: &anyhow::Error) -> u8 {
    if let Some(unreachable) = error.downcast_ref::<Unreachable>() {
        eprintln!("error: {unreachable}");
        eprintln!("hint: {}", unreachable_hint(&unreachable.0));
        return 6;
    }
    // A connection that broke under a request (e.g. plain text sent to a TLS listener) reaches
    // here as a transport error, with or without a status around it.
    let text = format!("{error:#}");
    let status = error.downcast_ref::<tonic::Status>();
    if status.is_none_or(|s| s.code() != Code::Ok)
        && (text.contains("transport error") || text.contains("h2 protocol error"))
    {
        eprintln!("error: {text}");
        eprintln!(
            "hint: the connection failed; does the coordinator use TLS? Then drop --insecure / TRAINYARD_INSECURE"
        );
        return 6;
    }
    let Some(s) = status else {
        eprintln!("error: {error:#}");
        return 1;
    };
    let violations = status::violations(s);
    if !violations.is_empty() {
        eprintln!(
            "error: the request is invalid ({} violation{}):",
            violations.len(),
            if violations.len() == 1 { "" } else { "s" }
        );
        for v in &violations {
            eprintln!("  - {}: {}", v.field, v.description);
        }
        return 3;
    }
    eprintln!("error: {}", s.message());
    match s.code() {
        Code::InvalidArgument => 3,
        Code::NotFound => 4,
        Code::AlreadyExists => 5,
        Code::Unavailable => 6,
        Code::ResourceExhausted => 7,
        Code::Unauthenticated | Code::PermissionDenied => 8,
        _ => 1,
    }
}

fn time(t: Option<Timestamp>) -> String {
    match t {
        Some(t) if t.millis() >= 0 => {
            let at = UNIX_EPOCH + Duration::from_millis(t.millis() as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "-".to_string(),
    }
}

fn text(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

fn next_page(token: &Option<String>) {
    if let Some(token) = token {
        println!("more results: --next-token {token} (or --all)");
    }
}

pub fn describe_tuning_job(r: &api::DescribeHyperParameterTuningJobResponse) {
    let config = r.hyper_parameter_tuning_job_config.as_ref();
    let objective = config.and_then(|c| c.hyper_parameter_tuning_job_objective.as_ref());
    let limits = config.and_then(|c| c.resource_limits.as_ref());
    let c = r.training_job_status_counters.clone().unwrap_or_default();
    let o = r.objective_status_counters.clone().unwrap_or_default();
    println!("Name:          {}", text(&r.hyper_parameter_tuning_job_name));
    println!("ARN:           {}", text(&r.hyper_parameter_tuning_job_arn));
    println!("Status:        {}", text(&r.hyper_parameter_tuning_job_status));
    if let Some(reason) = &r.failure_reason {
        println!("Failure:       {reason}");
    }
    println!("Strategy:      {}", config.and_then(|c| c.strategy.as_deref()).unwrap_or("-"));
    if let Some(obj) = objective {
        println!("Objective:     {} {}", text(&obj.r#type), text(&obj.metric_name));
    }
    if let Some(l) = limits {
        let max = l.max_number_of_training_jobs.map_or("-".into(), |n| n.to_string());
        let parallel = l.max_parallel_training_jobs.map_or("-".into(), |n| n.to_string());
        let runtime = l.max_runtime_in_seconds.map_or(String::new(), |s| format!(", at most {s} s"));
        println!("Limits:        {max} trials, {parallel} in parallel{runtime}");
    }
    println!("Created:       {}", time(r.creation_time));
    println!("Last modified: {}", time(r.last_modified_time));
    println!("Ended:         {}", time(r.hyper_parameter_tuning_end_time));
    let n = |v: Option<i32>| v.unwrap_or(0);
    println!(
        "Trials:        {} completed, {} in progress, {} stopped, {} failed, {} failed and retryable",
        n(c.completed),
        n(c.in_progress),
        n(c.stopped),
        n(c.non_retryable_error),
        n(c.retryable_error)
    );
    println!("Objectives:    {} succeeded, {} pending, {} failed", n(o.succeeded), n(o.pending), n(o.failed));
    match &r.best_training_job {
        Some(best) => {
            let value = best
                .final_hyper_parameter_tuning_job_objective_metric
                .as_ref()
                .and_then(|m| m.value)
                .map_or("-".into(), |v| format!("{v}"));
            println!("Best trial:    {} ({value})", text(&best.training_job_name));
            for (k, v) in best.tuned_hyper_parameters.iter().flatten() {
                println!("                 {k} = {v}");
            }
        }
        None => println!("Best trial:    none yet"),
    }
}

pub fn list_tuning_jobs(r: &api::ListHyperParameterTuningJobsResponse) {
    let mut t = table(&["NAME", "STATUS", "STRATEGY", "COMPLETED", "RUNNING", "FAILED", "STOPPED", "CREATED"]);
    for s in r.hyper_parameter_tuning_job_summaries.iter().flatten() {
        let c = s.training_job_status_counters.clone().unwrap_or_default();
        let n = |v: Option<i32>| v.unwrap_or(0).to_string();
        t.add_row(vec![
            text(&s.hyper_parameter_tuning_job_name).to_string(),
            text(&s.hyper_parameter_tuning_job_status).to_string(),
            text(&s.strategy).to_string(),
            n(c.completed),
            n(c.in_progress),
            (c.non_retryable_error.unwrap_or(0) + c.retryable_error.unwrap_or(0)).to_string(),
            n(c.stopped),
            time(s.creation_time),
        ]);
    }
    println!("{t}");
    next_page(&r.next_token);
}

pub fn list_trials(r: &api::ListTrainingJobsForHyperParameterTuningJobResponse) {
    let mut t = table(&["NAME", "STATUS", "OBJECTIVE", "HYPERPARAMETERS", "CREATED"]);
    for s in r.training_job_summaries.iter().flatten() {
        let objective = s
            .final_hyper_parameter_tuning_job_objective_metric
            .as_ref()
            .and_then(|m| m.value)
            .map_or("-".into(), |v| format!("{v}"));
        let hps =
            s.tuned_hyper_parameters.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        t.add_row(vec![
            text(&s.training_job_name).to_string(),
            text(&s.training_job_status).to_string(),
            objective,
            hps,
            time(s.creation_time),
        ]);
    }
    println!("{t}");
    next_page(&r.next_token);
}

pub fn describe_training_job(r: &api::DescribeTrainingJobResponse) {
    println!("Name:          {}", text(&r.training_job_name));
    println!("ARN:           {}", text(&r.training_job_arn));
    println!("Status:        {} / {}", text(&r.training_job_status), text(&r.secondary_status));
    if let Some(reason) = &r.failure_reason {
        println!("Failure:       {reason}");
    }
    if let Some(tuning) = &r.tuning_job_arn {
        println!("Tuning job:    {tuning}");
    }
    if let Some(spec) = &r.algorithm_specification {
        println!("Image:         {}", text(&spec.training_image));
    }
    if let Some(rc) = &r.resource_config {
        println!(
            "Resources:     {} x {}, {} GB volume",
            rc.instance_count.unwrap_or(1),
            text(&rc.instance_type),
            rc.volume_size_in_gb.unwrap_or(0)
        );
    }
    println!("Created:       {}", time(r.creation_time));
    println!("Started:       {}", time(r.training_start_time));
    println!("Ended:         {}", time(r.training_end_time));
    if let (Some(training), Some(billable)) = (r.training_time_in_seconds, r.billable_time_in_seconds) {
        println!("Training time: {training} s (billable {billable} s)");
        if r.enable_managed_spot_training == Some(true) {
            // The console's line: (1 - BillableTimeInSeconds / TrainingTimeInSeconds) * 100.
            let savings = (1.0 - f64::from(billable) / f64::from(training.max(1))) * 100.0;
            println!("Managed spot training savings: {:.0}%", savings.max(0.0));
        }
    }
    if let Some(uri) = r.model_artifacts.as_ref().and_then(|m| m.s3_model_artifacts.as_ref()) {
        println!("Model:         {uri}");
    }
    let hps = r.hyper_parameters.clone().unwrap_or_default();
    if !hps.is_empty() {
        println!("Hyperparameters:");
        for (k, v) in hps {
            println!("  {k} = {v}");
        }
    }
    if let Some(metrics) = &r.final_metric_data_list {
        println!("Final metrics:");
        for m in metrics {
            println!("  {} = {}", text(&m.metric_name), m.value.map_or("-".into(), |v| v.to_string()));
        }
    }
    let mut t = table(&["SECONDARY STATUS", "START", "END", "MESSAGE"]);
    for tr in r.secondary_status_transitions.iter().flatten() {
        t.add_row(vec![
            text(&tr.status).to_string(),
            time(tr.start_time),
            time(tr.end_time),
            text(&tr.status_message).to_string(),
        ]);
    }
    println!("{t}");
}

pub fn list_training_jobs(r: &api::ListTrainingJobsResponse) {
    let mut t = table(&["NAME", "STATUS", "SECONDARY", "CREATED", "ENDED"]);
    for s in r.training_job_summaries.iter().flatten() {
        t.add_row(vec![
            text(&s.training_job_name).to_string(),
            text(&s.training_job_status).to_string(),
            text(&s.secondary_status).to_string(),
            time(s.creation_time),
            time(s.training_end_time),
        ]);
    }
    println!("{t}");
    next_page(&r.next_token);
}

pub fn agents_json(r: &trainyard_proto::pb::ListAgentsResponse) {
    let agents: Vec<serde_json::Value> = r
        .agents
        .iter()
        .map(|a| {
            let inv = a.inventory.clone().unwrap_or_default();
            serde_json::json!({
                "AgentId": a.agent_id,
                "State": a.state,
                "Hostname": inv.hostname,
                "Os": inv.os,
                "CpuModel": inv.cpu_model,
                "VCpus": inv.cpu_count,
                "VCpusFree": a.vcpus_free,
                "MemoryMiB": inv.memory_total_mib,
                "MemoryFreeMiB": a.memory_free_mib,
                "DiskFreeMiB": inv.disk_free_mib,
                "Gpus": inv.gpus.iter().map(|g| serde_json::json!({
                    "Index": g.index, "Uuid": g.uuid, "Name": g.name,
                    "MemoryTotalMiB": g.memory_total_mib, "MemoryUsedMiB": g.memory_used_mib,
                    "UtilizationPercent": g.utilization_percent})).collect::<Vec<_>>(),
                "GpusFree": a.gpus_free,
                "GpuDriverVersion": inv.gpu_driver_version,
                "CudaVersion": inv.cuda_version,
                "GpuNote": inv.gpu_note,
                "Running": a.running,
                "NetworkIsolation": a.capabilities.as_ref().is_some_and(|c| c.network_isolation),
                "NetworkIsolationNote": a.capabilities.as_ref().map(|c| c.network_isolation_note.clone()).unwrap_or_default(),
                "ContainerRuntime": a.capabilities.as_ref().map(|c| c.container_runtime.clone()).unwrap_or_default(),
                "ContainerRuntimeNote": a.capabilities.as_ref().map(|c| c.container_runtime_note.clone()).unwrap_or_default(),
                "HostPrograms": a.capabilities.as_ref().is_some_and(|c| c.host_programs),
                "Version": a.version,
                "Refusal": a.refusal,
                "Cordon": a.cordon,
                "CordonedBy": a.cordoned_by,
                "PeerAddress": a.peer_address,
                "LastHeartbeat": a.last_heartbeat_millis as f64 / 1000.0,
            })
        })
        .collect();
    json(&serde_json::json!({ "Agents": agents }));
}

pub fn list_agents(r: &trainyard_proto::pb::ListAgentsResponse) {
    let mut t = table(&[
        "AGENT",
        "STATE",
        "VCPU FREE/TOTAL",
        "MEMORY FREE/TOTAL",
        "GPUS FREE/TOTAL",
        "ISOLATION",
        "CONTAINERS",
        "RUNNING",
        "LAST HEARTBEAT",
    ]);
    for a in &r.agents {
        let inv = a.inventory.clone().unwrap_or_default();
        let mut models: Vec<String> = inv.gpus.iter().map(|g| g.name.clone()).collect();
        models.dedup();
        let gpus = if inv.gpus.is_empty() {
            "0".to_string()
        } else {
            format!("{}/{} {}", a.gpus_free, inv.gpus.len(), models.join(", "))
        };
        t.add_row(vec![
            a.agent_id.clone(),
            if !a.refusal.is_empty() {
                format!("{}: {}", a.state, a.refusal)
            } else if a.cordon.is_empty() {
                a.state.clone()
            } else {
                format!("{}, {}", a.state, a.cordon)
            },
            format!("{}/{}", a.vcpus_free, inv.cpu_count),
            format!("{}/{} GiB", a.memory_free_mib / 1024, inv.memory_total_mib / 1024),
            gpus,
            match &a.capabilities {
                Some(c) if c.network_isolation => "yes".to_string(),
                Some(c) => format!("no: {}", c.network_isolation_note),
                None => "-".to_string(),
            },
            match &a.capabilities {
                Some(c) if !c.container_runtime.is_empty() => c.container_runtime.clone(),
                Some(_) => "no".to_string(),
                None => "-".to_string(),
            },
            if a.running.is_empty() { "-".into() } else { a.running.join("\n") },
            time(Some(Timestamp::from_millis(a.last_heartbeat_millis))),
        ]);
    }
    println!("{t}");
}

/// A job's metric series, a row per sample.
pub fn metrics(series: &[trainyard_proto::pb::MetricSeries]) {
    let mut t = table(&["METRIC", "TIME", "VALUE"]);
    for s in series {
        for p in &s.points {
            t.add_row(vec![s.metric_name.clone(), millis(p.timestamp_millis), p.value.to_string()]);
        }
    }
    println!("{t}");
}

/// A job's metric series as columns (times in seconds since the epoch), ready to plot.
pub fn metrics_json(name: &str, series: &[trainyard_proto::pb::MetricSeries]) {
    let metrics: Vec<serde_json::Value> = series
        .iter()
        .map(|s| {
            serde_json::json!({
                "MetricName": s.metric_name,
                "Timestamps": s.points.iter().map(|p| p.timestamp_millis as f64 / 1000.0).collect::<Vec<_>>(),
                "Values": s.points.iter().map(|p| p.value).collect::<Vec<_>>(),
            })
        })
        .collect();
    json(&serde_json::json!({ "TrainingJobName": name, "Metrics": metrics }));
}

/// A tuning job's trials in launch order, a row each.
pub fn trial_results(r: &trainyard_proto::pb::GetTuningJobTrialsResponse) {
    let number = |v: Option<f64>| v.map_or("-".into(), |v| v.to_string());
    let mut t = table(&["#", "TRIAL", "STATUS", &r.objective_metric_name, "BEST SO FAR", "HYPERPARAMETERS"]);
    for trial in &r.trials {
        let mut hps: Vec<String> = trial.tuned_hyper_parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        hps.sort();
        let status = if trial.stopped_early { format!("{} (early)", trial.status) } else { trial.status.clone() };
        t.add_row(vec![
            trial.number.to_string(),
            trial.training_job_name.clone(),
            status,
            number(trial.objective_value),
            number(trial.best_so_far),
            hps.join(" "),
        ]);
    }
    println!("{t}");
}

/// A tuning job's trials as columns, one entry per trial in launch order, ready to plot (a
/// hyperparameter a trial did not tune is null).
pub fn trial_results_json(name: &str, r: &trainyard_proto::pb::GetTuningJobTrialsResponse) {
    let mut parameters: Vec<&String> = r.trials.iter().flat_map(|t| t.tuned_hyper_parameters.keys()).collect();
    parameters.sort();
    parameters.dedup();
    let column = |f: &dyn Fn(&trainyard_proto::pb::TuningTrial) -> serde_json::Value| {
        serde_json::Value::Array(r.trials.iter().map(f).collect())
    };
    let hyper_parameters: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .map(|p| {
            (
                (*p).clone(),
                column(&|t| t.tuned_hyper_parameters.get(*p).map_or(serde_json::Value::Null, |v| v.clone().into())),
            )
        })
        .collect();
    json(&serde_json::json!({
        "HyperParameterTuningJobName": name,
        "ObjectiveMetricName": r.objective_metric_name,
        "Maximize": r.maximize,
        "Ended": r.ended,
        "Number": column(&|t| t.number.into()),
        "TrainingJobName": column(&|t| t.training_job_name.clone().into()),
        "Status": column(&|t| t.status.clone().into()),
        "ObjectiveValue": column(&|t| t.objective_value.into()),
        "BestSoFar": column(&|t| t.best_so_far.into()),
        "StoppedEarly": column(&|t| t.stopped_early.into()),
        "HyperParameters": hyper_parameters,
    }));
}

fn millis(at: i64) -> String {
    if at == 0 { "-".into() } else { time(Some(Timestamp::from_millis(at))) }
}

pub fn list_tokens(tokens: &[trainyard_proto::pb::TokenInfo]) {
    let mut t = table(&["ID", "KIND", "USER", "SCOPE", "ACCESS KEY", "CREATED", "EXPIRES", "REVOKED", "DESCRIPTION"]);
    for k in tokens {
        t.add_row(vec![
            k.id.clone(),
            k.kind.clone(),
            k.user.clone(),
            if k.scope.is_empty() { "-".into() } else { k.scope.clone() },
            if k.access_key_id.is_empty() { "-".into() } else { k.access_key_id.clone() },
            millis(k.created_millis),
            millis(k.expires_millis),
            millis(k.revoked_millis),
            k.description.clone(),
        ]);
    }
    println!("{t}");
}

pub fn tokens_json(tokens: &[trainyard_proto::pb::TokenInfo]) {
    let at = |m: i64| if m == 0 { serde_json::Value::Null } else { serde_json::json!(m as f64 / 1000.0) };
    let tokens: Vec<serde_json::Value> = tokens
        .iter()
        .map(|k| {
            serde_json::json!({
                "Id": k.id, "Kind": k.kind, "User": k.user, "Scope": k.scope, "Description": k.description,
                "AccessKeyId": k.access_key_id,
                "CreationTime": at(k.created_millis), "ExpirationTime": at(k.expires_millis),
                "RevocationTime": at(k.revoked_millis),
            })
        })
        .collect();
    json(&serde_json::json!({ "Tokens": tokens }));
}

#[cfg(test)]
mod tests {
    use super::unreachable_hint;

    #[test]
    fn a_wrong_ca_file_is_not_mistaken_for_a_missing_coordinator() {
        let wrong_ca = "https://127.0.0.1:50051: transport error: invalid peer certificate: UnknownIssuer";
        assert!(unreachable_hint(wrong_ca).contains("ca.pem"));
        let nothing = "https://127.0.0.1:50051: transport error: tcp connect error: Connection refused (os error 111)";
        assert!(unreachable_hint(nothing).contains("start one"));
        assert!(unreachable_hint("dns error").contains("check --coordinator"));
    }
}
