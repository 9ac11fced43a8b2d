//! The dashboard's pages as HTML, from the API's own answers. Pure: data in, markup out; every
//! text that comes from a job (names, hyperparameters, log lines) is escaped.

use trainyard_model::{Timestamp, api};

use super::svg::{self, Point};

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment for a job's name (names are `[a-zA-Z0-9-]`, but a link must not trust that).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn time(t: Option<Timestamp>) -> String {
    match t {
        Some(t) if t.millis() > 0 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.millis() as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "-".into(),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}\
th{cursor:pointer;background:#f4f4f4}a{color:#1f5fa8}.chart{max-width:660px;display:block;margin:.5em 0}\
pre{background:#f7f7f7;padding:.6em;max-height:30em;overflow:auto;font-size:12px}.status-Failed{color:#b00}\
.status-Completed{color:#070}.muted{color:#777}nav a{margin-right:1em}";

/// Sorts a table by a clicked header (numbers as numbers): the one script of the dashboard.
const SORT: &str = "document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{\
const body=th.closest('table').tBodies[0];const rows=[...body.rows];const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
const key=r=>{const t=r.cells[i].textContent.trim();const n=parseFloat(t);return isNaN(n)?t:n};\
rows.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*(asc?1:-1)});rows.forEach(r=>body.appendChild(r))}));";

/// A whole page; `refresh`: reloads every 5 s (while what it shows is running).
pub fn layout(title: &str, body: &str, refresh: bool) -> String {
    let meta = if refresh { r#"<meta http-equiv="refresh" content="5">"# } else { "" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}<link rel=\"icon\" href=\"data:,\"><title>{} · Trainyard</title>\
         <style>{STYLE}</style></head><body><nav><a href=\"/\">Tuning jobs</a><a href=\"/training-jobs\">Training jobs</a><a href=\"/agents\">Agents</a>\
         <form method=\"post\" action=\"/logout\" style=\"display:inline\"><button>Sign out</button></form></nav>\
         <h1>{}</h1>{body}<script>{SORT}</script></body></html>",
        escape(title),
        escape(title)
    )
}

pub fn login(message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>Sign in · Trainyard</title><style>{STYLE}</style></head>\
         <body><h1>Trainyard</h1><p>Sign in with an API token (read scope is enough: <code>trainyard tokens create --user NAME --scope read</code>).</p>\
         <p class=\"status-Failed\">{}</p><form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" size=\"60\" autofocus>\
         <button>Sign in</button></form></body></html>",
        escape(message)
    )
}

fn counters(c: Option<&api::TrainingJobStatusCounters>) -> String {
    let c = c.cloned().unwrap_or_default();
    format!(
        "{} completed, {} running, {} failed, {} stopped",
        c.completed.unwrap_or(0),
        c.in_progress.unwrap_or(0),
        c.non_retryable_error.unwrap_or(0) + c.retryable_error.unwrap_or(0),
        c.stopped.unwrap_or(0)
    )
}

pub fn tuning_jobs(jobs: &[api::HyperParameterTuningJobSummary]) -> String {
    let mut rows = String::new();
    for j in jobs {
        let name = j.hyper_parameter_tuning_job_name.clone().unwrap_or_default();
        let status = j.hyper_parameter_tuning_job_status.clone().unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td><a href=\"/tuning-jobs/{}\">{}</a></td><td class=\"status-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            segment(&name),
            escape(&name),
            escape(&status),
            escape(&status),
            escape(j.strategy.as_deref().unwrap_or_default()),
            counters(j.training_job_status_counters.as_ref()),
            time(j.creation_time),
        ));
    }
    let running = jobs.iter().any(|j| j.hyper_parameter_tuning_job_status.as_deref() == Some("InProgress"));
    let body = if jobs.is_empty() {
        "<p class=\"muted\">No tuning jobs.</p>".to_string()
    } else {
        format!(
            "<table class=\"sortable\"><thead><tr><th>Name</th><th>Status</th><th>Strategy</th><th>Trials</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    layout("Tuning jobs", &body, running)
}

pub fn training_jobs(jobs: &[api::TrainingJobSummary]) -> String {
    let mut rows = String::new();
    for j in jobs {
        let name = j.training_job_name.clone().unwrap_or_default();
        let status = j.training_job_status.clone().unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td><a href=\"/training-jobs/{}\">{}</a></td><td class=\"status-{}\">{}</td><td>{}</td><td>{}</td></tr>",
            segment(&name),
            escape(&name),
            escape(&status),
            escape(&status),
            escape(j.secondary_status.as_deref().unwrap_or_default()),
            time(j.creation_time),
        ));
    }
    let running = jobs.iter().any(|j| j.training_job_status.as_deref() == Some("InProgress"));
    let body = format!(
        "<table class=\"sortable\"><thead><tr><th>Name</th><th>Status</th><th>Secondary status</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>"
    );
    layout("Training jobs", &body, running)
}

/// The agents: state, resources free and in all, GPUs with their last utilisation, what runs there.
pub fn agents(agents: &[trainyard_proto::pb::AgentSummary]) -> String {
    let mut rows = String::new();
    for a in agents {
        let inventory = a.inventory.clone().unwrap_or_default();
        let state = if a.cordon.is_empty() { a.state.clone() } else { format!("{} ({})", a.state, a.cordon) };
        let reported = a.last_heartbeat.as_ref().map(|h| h.gpus.clone()).unwrap_or_default();
        let gpus: Vec<String> = inventory
            .gpus
            .iter()
            .map(|g| {
                let now = reported.iter().find(|r| r.uuid == g.uuid).unwrap_or(g);
                format!(
                    "{} #{}: {} %, {}/{} MiB",
                    escape(&g.name),
                    g.index,
                    now.utilization_percent,
                    now.memory_used_mib,
                    g.memory_total_mib
                )
            })
            .collect();
        let running: Vec<String> = a
            .running
            .iter()
            .map(|r| {
                let job = r.split_once('/').map_or(r.as_str(), |(job, _)| job);
                format!("<a href=\"/training-jobs/{}\">{}</a>", segment(job), escape(r))
            })
            .collect();
        let runtime = a.capabilities.as_ref().map(|c| c.container_runtime.clone()).unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&a.agent_id),
            escape(&state),
            escape(&inventory.hostname),
            a.vcpus_free,
            inventory.cpu_count,
            a.memory_free_mib,
            inventory.memory_total_mib,
            if gpus.is_empty() { "-".to_string() } else { gpus.join("<br>") },
            if running.is_empty() { "-".to_string() } else { running.join("<br>") },
            if runtime.is_empty() { "-".to_string() } else { escape(&runtime) },
            time(Some(Timestamp::from_millis(a.last_heartbeat_millis))),
        ));
    }
    let body = if agents.is_empty() {
        "<p class=\"muted\">No agent has joined.</p>".to_string()
    } else {
        format!(
            "<table class=\"sortable\"><thead><tr><th>Agent</th><th>State</th><th>Host</th><th>vCPUs free</th><th>Memory free (MiB)</th>\
             <th>GPUs (utilisation, memory)</th><th>Running</th><th>Containers</th><th>Last heartbeat</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    layout("Agents", &body, true)
}

/// A tuning job: its objective against the trial number with the best so far, the objective
/// against each tuned hyperparameter, and every trial in a sortable table.
pub fn tuning_job(
    job: &api::DescribeHyperParameterTuningJobResponse,
    trials: &[api::HyperParameterTrainingJobSummary],
) -> String {
    let name = job.hyper_parameter_tuning_job_name.clone().unwrap_or_default();
    let status = job.hyper_parameter_tuning_job_status.clone().unwrap_or_default();
    let config = job.hyper_parameter_tuning_job_config.clone().unwrap_or_default();
    let objective = config.hyper_parameter_tuning_job_objective.clone().unwrap_or_default();
    let metric = objective.metric_name.clone().unwrap_or_default();
    let maximize = objective.r#type.as_deref() != Some("Minimize");
    // Trials in the order they were launched.
    let mut trials: Vec<&api::HyperParameterTrainingJobSummary> = trials.iter().collect();
    trials.sort_by_key(|t| (t.creation_time.map(|c| c.millis()), t.training_job_name.clone()));
    let value = |t: &api::HyperParameterTrainingJobSummary| {
        t.final_hyper_parameter_tuning_job_objective_metric.as_ref().and_then(|m| m.value)
    };
    let kind = |t: &api::HyperParameterTrainingJobSummary| match t.training_job_status.as_deref() {
        Some("Completed") => 0,
        Some("Stopped") => 3,
        Some("Failed") => 1,
        _ => 2,
    };
    let mut points = Vec::new();
    let mut best_line = Vec::new();
    let mut best: Option<f64> = None;
    for (i, t) in trials.iter().enumerate() {
        let Some(v) = value(t) else { continue };
        let x = (i + 1) as f64;
        points.push(Point {
            x,
            y: v,
            kind: kind(t),
            label: format!("{} = {v}", t.training_job_name.clone().unwrap_or_default()),
        });
        best = Some(match best {
            Some(b) if (maximize && b >= v) || (!maximize && b <= v) => b,
            _ => v,
        });
        best_line.push((x, best.unwrap_or(v)));
    }
    let mut body = format!(
        "<p>Status <b class=\"status-{}\">{}</b> · {} · objective: {} {} · created {}</p>",
        escape(&status),
        escape(&status),
        counters(job.training_job_status_counters.as_ref()),
        if maximize { "maximize" } else { "minimize" },
        escape(&metric),
        time(job.creation_time),
    );
    if let Some(best) = &job.best_training_job {
        let best_name = best.training_job_name.clone().unwrap_or_default();
        body.push_str(&format!(
            "<p>Best: <a href=\"/training-jobs/{}\">{}</a> = {}</p>",
            segment(&best_name),
            escape(&best_name),
            best.final_hyper_parameter_tuning_job_objective_metric
                .as_ref()
                .and_then(|m| m.value)
                .map_or("-".into(), |v| v.to_string())
        ));
    }
    body.push_str("<h2>Objective by trial</h2><p class=\"muted\">Completed in blue, failed in red, stopped (by you or early stopping) in purple; the line is the best so far.</p>");
    match svg::scatter(&points, Some(&best_line), "trial", &metric) {
        Some(chart) => body.push_str(&chart),
        None => body.push_str("<p class=\"muted\">No trial has reported its objective yet.</p>"),
    }
    // Objective against each hyperparameter the search tuned (categorical values by position).
    let mut names: Vec<String> =
        trials.iter().flat_map(|t| t.tuned_hyper_parameters.iter().flatten().map(|(k, _)| k.clone())).collect();
    names.sort();
    names.dedup();
    for parameter in &names {
        let mut categories: Vec<String> = Vec::new();
        let points: Vec<Point> = trials
            .iter()
            .filter_map(|t| {
                let v = value(t)?;
                let raw = t.tuned_hyper_parameters.as_ref()?.get(parameter)?.clone();
                let x = raw.parse::<f64>().ok().unwrap_or_else(|| {
                    let at = categories.iter().position(|c| *c == raw).unwrap_or_else(|| {
                        categories.push(raw.clone());
                        categories.len() - 1
                    });
                    at as f64
                });
                Some(Point { x, y: v, kind: kind(t), label: format!("{parameter}={raw}: {v}") })
            })
            .collect();
        if let Some(chart) = svg::scatter(&points, None, parameter, &metric) {
            body.push_str(&format!("<h3>{} against {}</h3>", escape(&metric), escape(parameter)));
            if !categories.is_empty() {
                body.push_str(&format!("<p class=\"muted\">{}</p>", escape(&categories.join(", "))));
            }
            body.push_str(&chart);
        }
    }
    // The trials, sortable.
    let mut head = String::from("<th>#</th><th>Trial</th><th>Status</th><th>Objective</th>");
    for parameter in &names {
        head.push_str(&format!("<th>{}</th>", escape(parameter)));
    }
    let mut rows = String::new();
    for (i, t) in trials.iter().enumerate() {
        let trial = t.training_job_name.clone().unwrap_or_default();
        let status = t.training_job_status.clone().unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/training-jobs/{}\">{}</a></td><td class=\"status-{}\">{}</td><td>{}</td>",
            i + 1,
            segment(&trial),
            escape(&trial),
            escape(&status),
            escape(&status),
            value(t).map_or("-".into(), |v| v.to_string())
        ));
        for parameter in &names {
            let v = t.tuned_hyper_parameters.as_ref().and_then(|h| h.get(parameter)).cloned().unwrap_or_default();
            rows.push_str(&format!("<td>{}</td>", escape(&v)));
        }
        rows.push_str("</tr>");
    }
    body.push_str(&format!(
        "<h2>Trials</h2><table class=\"sortable\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    ));
    layout(&name, &body, status == "InProgress" || status == "Stopping")
}

/// A training job: its status history, learning curves (seconds since it started) and the end
/// of its log.
pub fn training_job(
    job: &api::DescribeTrainingJobResponse,
    series: &[(String, Vec<(i64, f64)>)],
    log: &[String],
) -> String {
    let name = job.training_job_name.clone().unwrap_or_default();
    let status = job.training_job_status.clone().unwrap_or_default();
    let mut body = format!(
        "<p>Status <b class=\"status-{}\">{}</b> ({}) · created {} · trained {} s</p>",
        escape(&status),
        escape(&status),
        escape(job.secondary_status.as_deref().unwrap_or_default()),
        time(job.creation_time),
        job.training_time_in_seconds.unwrap_or(0)
    );
    if let Some(reason) = &job.failure_reason {
        body.push_str(&format!("<p class=\"status-Failed\">{}</p>", escape(reason)));
    }
    body.push_str(
        "<h2>Status history</h2><table><thead><tr><th>Status</th><th>Since</th><th>Message</th></tr></thead><tbody>",
    );
    for t in job.secondary_status_transitions.iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(t.status.as_deref().unwrap_or_default()),
            time(t.start_time),
            escape(t.status_message.as_deref().unwrap_or_default())
        ));
    }
    body.push_str("</tbody></table><h2>Learning curves</h2>");
    let start = series.iter().flat_map(|(_, p)| p.iter().map(|(t, _)| *t)).min().unwrap_or(0);
    let mut drawn = false;
    for (metric, points) in series {
        let points: Vec<(f64, f64)> = points.iter().map(|(t, v)| ((t - start) as f64 / 1000.0, *v)).collect();
        if let Some(chart) = svg::lines(&[(metric.clone(), points)], "seconds", metric) {
            body.push_str(&chart);
            drawn = true;
        }
    }
    if !drawn {
        body.push_str("<p class=\"muted\">No metric samples (its MetricDefinitions matched nothing yet).</p>");
    }
    body.push_str(&format!("<h2>Log (last {} lines)</h2><pre id=\"log\">", log.len()));
    for line in log {
        body.push_str(&escape(line));
        body.push('\n');
    }
    body.push_str("</pre>");
    layout(&name, &body, status == "InProgress" || status == "Stopping")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(name: &str, status: &str, value: Option<f64>, x: &str, at: i64) -> api::HyperParameterTrainingJobSummary {
        api::HyperParameterTrainingJobSummary {
            training_job_name: Some(name.into()),
            training_job_status: Some(status.into()),
            creation_time: Some(Timestamp::from_millis(at)),
            final_hyper_parameter_tuning_job_objective_metric: value
                .map(|v| api::FinalHyperParameterTuningJobObjectiveMetric { value: Some(v), ..Default::default() }),
            tuned_hyper_parameters: Some([("x".to_string(), x.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_tuning_jobs_page_plots_every_reported_trial_and_tables_them_all() {
        let job = api::DescribeHyperParameterTuningJobResponse {
            hyper_parameter_tuning_job_name: Some("search".into()),
            hyper_parameter_tuning_job_status: Some("InProgress".into()),
            ..Default::default()
        };
        let trials = [
            trial("search-002-bbb", "Completed", Some(0.7), "0.5", 2),
            trial("search-001-aaa", "Completed", Some(0.5), "0.1", 1),
            trial("<b>odd</b>", "InProgress", None, "0.9", 3),
        ];
        let page = tuning_job(&job, &trials);
        // Two charts (by trial, by x), a point per reported trial in each.
        assert_eq!(page.matches("<svg").count(), 2);
        assert_eq!(page.matches("<circle").count(), 4);
        assert!(page.contains("http-equiv=\"refresh\""), "a running job's page reloads");
        // Launched order: trial 1 is search-001.
        let first = page.find("search-001-aaa").expect("listed");
        assert!(first < page.find("search-002-bbb").expect("listed"));
        assert!(page.contains("&lt;b&gt;odd&lt;/b&gt;") && !page.contains("<b>odd</b>"));
        assert!(page.contains("/training-jobs/%3Cb%3Eodd%3C%2Fb%3E"), "{page}");
    }

    #[test]
    fn the_agents_page_shows_resources_gpus_and_running_instances() {
        use trainyard_proto::pb;
        let gpu = pb::Gpu {
            index: 0,
            uuid: "GPU-1".into(),
            name: "<Fake> GPU".into(),
            memory_total_mib: 16_000,
            ..Default::default()
        };
        let agent = pb::AgentSummary {
            agent_id: "host-a".into(),
            state: "ready".into(),
            inventory: Some(pb::Inventory { cpu_count: 8, gpus: vec![gpu.clone()], ..Default::default() }),
            last_heartbeat: Some(pb::Heartbeat {
                gpus: vec![pb::Gpu { utilization_percent: 73, memory_used_mib: 512, ..gpu }],
                ..Default::default()
            }),
            vcpus_free: 6,
            running: vec!["job-1/algo-2".into()],
            ..Default::default()
        };
        let page = agents(&[agent]);
        assert!(page.contains("6 of 8"), "{page}");
        assert!(page.contains("&lt;Fake&gt; GPU #0: 73 %, 512/16000 MiB"), "the last heartbeat's utilisation: {page}");
        assert!(page.contains("<a href=\"/training-jobs/job-1\">job-1/algo-2</a>"), "{page}");
    }

    #[test]
    fn a_training_jobs_page_escapes_its_log_and_draws_its_curves() {
        let job = api::DescribeTrainingJobResponse {
            training_job_name: Some("job".into()),
            training_job_status: Some("Completed".into()),
            ..Default::default()
        };
        let series = vec![("loss".to_string(), vec![(1_000, 0.9), (2_000, 0.5)])];
        let page = training_job(&job, &series, &["<img src=x onerror=alert(1)>".to_string()]);
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;") && !page.contains("<img"));
        assert_eq!(page.matches("<polyline").count(), 1);
        assert!(!page.contains("http-equiv=\"refresh\""), "an ended job's page stays");
    }
}
