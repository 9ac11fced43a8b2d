//! The dashboard's pages as HTML, from the API's own answers. Pure: data in, markup out; every
//! text that comes from a job (names, hyperparameters, log lines) is escaped.

use std::collections::HashMap;

use trainyard_model::plot::TrialPoint;
use trainyard_model::status::TrainingJobStatus;
use trainyard_model::{Timestamp, api};

use super::svg::{self, Point};
use crate::core::TrialPoints;

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
.status-Completed{color:#070}.early{color:#c85f00}.muted{color:#777}nav a{margin-right:1em}";

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

/// The tuning jobs: status, strategy, progress (trials ended of the most it may run), the best
/// objective so far.
pub fn tuning_jobs(jobs: &[api::HyperParameterTuningJobSummary], best: &HashMap<String, f64>) -> String {
    let mut rows = String::new();
    for j in jobs {
        let name = j.hyper_parameter_tuning_job_name.clone().unwrap_or_default();
        let status = j.hyper_parameter_tuning_job_status.clone().unwrap_or_default();
        let c = j.training_job_status_counters.clone().unwrap_or_default();
        let ended = c.completed.unwrap_or(0)
            + c.stopped.unwrap_or(0)
            + c.non_retryable_error.unwrap_or(0)
            + c.retryable_error.unwrap_or(0);
        let most = j.resource_limits.as_ref().and_then(|l| l.max_number_of_training_jobs);
        let progress = match most {
            Some(most) if most > 0 => {
                let percent = (ended as f64 / most as f64 * 100.0).min(100.0);
                format!("<progress max=\"{most}\" value=\"{}\"></progress> {ended} of {most}", ended.min(most))
                    + &format!("<span class=\"muted\"> ({percent:.0} %)</span>")
            }
            _ => format!("{ended} ended"),
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"/tuning-jobs/{}\">{}</a></td><td class=\"status-{}\">{}</td><td>{}</td><td>{progress}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            segment(&name),
            escape(&name),
            escape(&status),
            escape(&status),
            escape(j.strategy.as_deref().unwrap_or_default()),
            best.get(&name).map_or("-".into(), |v| v.to_string()),
            counters(j.training_job_status_counters.as_ref()),
            time(j.creation_time),
        ));
    }
    let running = jobs.iter().any(|j| j.hyper_parameter_tuning_job_status.as_deref() == Some("InProgress"));
    let body = if jobs.is_empty() {
        "<p class=\"muted\">No tuning jobs.</p>".to_string()
    } else {
        format!(
            "<table class=\"sortable\"><thead><tr><th>Name</th><th>Status</th><th>Strategy</th><th>Progress</th><th>Best objective</th><th>Trials</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>"
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

/// A tuning job: its objective against the trial number with the best so far, parallel
/// coordinates of every tuned hyperparameter and the objective, the objective against each
/// hyperparameter, and every trial in a sortable table; early-stopped trials are marked.
pub fn tuning_job(job: &api::DescribeHyperParameterTuningJobResponse, trials: &TrialPoints) -> String {
    let name = job.hyper_parameter_tuning_job_name.clone().unwrap_or_default();
    let status = job.hyper_parameter_tuning_job_status.clone().unwrap_or_default();
    let metric = &trials.objective_metric;
    let maximize = trials.maximize;
    let points = &trials.points;
    let mut body = format!(
        "<p>Status <b class=\"status-{}\">{}</b> · {} · objective: {} {} · created {}</p>",
        escape(&status),
        escape(&status),
        counters(job.training_job_status_counters.as_ref()),
        if maximize { "maximize" } else { "minimize" },
        escape(metric),
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
    let early = points.iter().filter(|p| p.stopped_early.is_some()).count();
    body.push_str(&format!(
        "<h2>Objective by trial</h2><p class=\"muted\">Completed in blue, failed in red, running in green, \
         stopped by you in purple, <span class=\"early\">stopped early</span> in orange ({early}); the line is the \
         best completed trial so far.</p>"
    ));
    let scatter: Vec<Point> = points
        .iter()
        .filter_map(|p| {
            let v = p.objective_value?;
            let why = p.stopped_early.as_ref().map_or(String::new(), |r| format!(" (stopped early: {r})"));
            Some(Point {
                x: p.number as f64,
                y: v,
                kind: kind(p),
                label: format!("{} = {v}{why}", p.training_job_name),
            })
        })
        .collect();
    let best_line: Vec<(f64, f64)> = points.iter().filter_map(|p| Some((p.number as f64, p.best_so_far?))).collect();
    match svg::scatter(&scatter, Some(&best_line), "trial", metric) {
        Some(chart) => body.push_str(&chart),
        None => body.push_str("<p class=\"muted\">No trial has reported its objective yet.</p>"),
    }
    let parameters = Parameters::of(points);
    if let Some(chart) = parallel_coordinates(points, &parameters, metric, maximize) {
        body.push_str(
            "<h2>Hyperparameters and objective</h2><p class=\"muted\">A line per trial that reported its objective, \
             the better the darker; categorical values in the order listed below each chart.</p>",
        );
        body.push_str(&chart);
    }
    // Objective against each hyperparameter the search tuned (categorical values by position).
    for parameter in &parameters.0 {
        let cloud: Vec<Point> = points
            .iter()
            .filter_map(|p| {
                let v = p.objective_value?;
                let raw = p.tuned_hyper_parameters.get(&parameter.name)?;
                let x = parameter.position(raw)?;
                Some(Point { x, y: v, kind: kind(p), label: format!("{}={raw}: {v}", parameter.name) })
            })
            .collect();
        if let Some(chart) = svg::scatter(&cloud, None, &parameter.name, metric) {
            body.push_str(&format!("<h3>{} against {}</h3>", escape(metric), escape(&parameter.name)));
            if !parameter.categories.is_empty() {
                body.push_str(&format!("<p class=\"muted\">{}</p>", escape(&parameter.categories.join(", "))));
            }
            body.push_str(&chart);
        }
    }
    // The trials, sortable.
    let mut head = String::from("<th>#</th><th>Trial</th><th>Status</th><th>Objective</th><th>Best so far</th>");
    for parameter in &parameters.0 {
        head.push_str(&format!("<th>{}</th>", escape(&parameter.name)));
    }
    let mut rows = String::new();
    for p in points {
        let trial = &p.training_job_name;
        let status = p.status.as_str();
        let shown = match &p.stopped_early {
            Some(reason) => format!("<span class=\"early\" title=\"{}\">Stopped early</span>", escape(reason)),
            None => escape(status),
        };
        let number = |v: Option<f64>| v.map_or("-".into(), |v| v.to_string());
        rows.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/training-jobs/{}\">{}</a></td><td class=\"status-{}\">{shown}</td><td>{}</td><td>{}</td>",
            p.number,
            segment(trial),
            escape(trial),
            escape(status),
            number(p.objective_value),
            number(p.best_so_far),
        ));
        for parameter in &parameters.0 {
            let v = p.tuned_hyper_parameters.get(&parameter.name).cloned().unwrap_or_default();
            rows.push_str(&format!("<td>{}</td>", escape(&v)));
        }
        rows.push_str("</tr>");
    }
    body.push_str(&format!(
        "<h2>Trials</h2><table class=\"sortable\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    ));
    if trials.next_token.is_some() {
        body.push_str(&format!("<p class=\"muted\">The first {} trials are shown.</p>", points.len()));
    }
    layout(&name, &body, status == "InProgress" || status == "Stopping")
}

/// How a trial's point is drawn (an index into the charts' palette).
fn kind(p: &TrialPoint) -> usize {
    match p.status {
        _ if p.stopped_early.is_some() => 4,
        TrainingJobStatus::Completed => 0,
        TrainingJobStatus::Failed => 1,
        TrainingJobStatus::Stopped | TrainingJobStatus::Stopping => 3,
        TrainingJobStatus::InProgress => 2,
    }
}

/// A tuned hyperparameter as the charts place it: numbers on a linear or (spanning two decades or
/// more, all positive) logarithmic scale, anything else as categories in order of appearance.
struct Parameter {
    name: String,
    low: f64,
    high: f64,
    log: bool,
    categories: Vec<String>,
}

impl Parameter {
    fn of(name: &str, values: &[&String]) -> Parameter {
        let numbers: Option<Vec<f64>> =
            values.iter().map(|v| v.trim().parse::<f64>().ok().filter(|n| n.is_finite())).collect();
        match numbers {
            Some(numbers) if !numbers.is_empty() => {
                let low = numbers.iter().copied().fold(f64::INFINITY, f64::min);
                let high = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let log = low > 0.0 && high / low >= 100.0;
                Parameter { name: name.to_string(), low, high, log, categories: Vec::new() }
            }
            _ => {
                let mut categories: Vec<String> = Vec::new();
                for v in values {
                    if !categories.contains(v) {
                        categories.push((*v).clone());
                    }
                }
                Parameter { name: name.to_string(), low: 0.0, high: 0.0, log: false, categories }
            }
        }
    }

    /// Where `raw` lies on this parameter's axis of a scatter (numbers as they are; categories by
    /// position).
    fn position(&self, raw: &str) -> Option<f64> {
        if self.categories.is_empty() {
            raw.trim().parse::<f64>().ok()
        } else {
            self.categories.iter().position(|c| c == raw).map(|i| i as f64)
        }
    }

    /// Where `raw` lies between this parameter's ends, 0..=1.
    fn fraction(&self, raw: &str) -> Option<f64> {
        if !self.categories.is_empty() {
            let i = self.position(raw)?;
            return Some(if self.categories.len() == 1 { 0.5 } else { i / (self.categories.len() - 1) as f64 });
        }
        let v = raw.trim().parse::<f64>().ok()?;
        let (v, low, high) = if self.log { (v.ln(), self.low.ln(), self.high.ln()) } else { (v, self.low, self.high) };
        Some(if high > low { (v - low) / (high - low) } else { 0.5 })
    }

    fn axis(&self) -> svg::Axis {
        if self.categories.is_empty() {
            let name = if self.log { format!("{} (log)", self.name) } else { self.name.clone() };
            svg::Axis { name, low: short(self.low), high: short(self.high) }
        } else {
            let first = self.categories.first().cloned().unwrap_or_default();
            let last = self.categories.last().cloned().unwrap_or_default();
            svg::Axis { name: self.name.clone(), low: first, high: last }
        }
    }
}

/// Every hyperparameter that some trial tuned, by name.
struct Parameters(Vec<Parameter>);

impl Parameters {
    fn of(points: &[TrialPoint]) -> Parameters {
        let mut names: Vec<&String> = points.iter().flat_map(|p| p.tuned_hyper_parameters.keys()).collect();
        names.sort();
        names.dedup();
        Parameters(
            names
                .into_iter()
                .map(|name| {
                    let values: Vec<&String> =
                        points.iter().filter_map(|p| p.tuned_hyper_parameters.get(name)).collect();
                    Parameter::of(name, &values)
                })
                .collect(),
        )
    }
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

fn parallel_coordinates(
    points: &[TrialPoint],
    parameters: &Parameters,
    metric: &str,
    maximize: bool,
) -> Option<String> {
    let values: Vec<f64> = points.iter().filter_map(|p| p.objective_value).collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let fraction = |v: f64| if high > low { (v - low) / (high - low) } else { 0.5 };
    let mut axes: Vec<svg::Axis> = parameters.0.iter().map(Parameter::axis).collect();
    axes.push(svg::Axis { name: metric.to_string(), low: short(low), high: short(high) });
    let lines: Vec<svg::Polyline> = points
        .iter()
        .filter_map(|p| {
            let v = p.objective_value?;
            let mut at: Vec<Option<f64>> = parameters
                .0
                .iter()
                .map(|param| p.tuned_hyper_parameters.get(&param.name).and_then(|raw| param.fraction(raw)))
                .collect();
            at.push(Some(fraction(v)));
            let quality = if maximize { fraction(v) } else { 1.0 - fraction(v) };
            Some(svg::Polyline { at, quality, label: format!("{} = {v}", p.training_job_name) })
        })
        .collect();
    svg::parallel(&axes, &lines)
}

/// Follows a running job: appends the log's new lines (`/training-jobs/NAME/log?after=N`) every 2 s,
/// keeping the view at the bottom if it was there; refreshes the status and curves (`#live`) from
/// the page itself every 5 s; reloads once when the job has ended and its last lines are in.
const FOLLOW: &str = "(()=>{const log=document.getElementById('log');if(!log||log.dataset.follow!=='1')return;\
let after=Number(log.dataset.after);const url=log.dataset.url;\
const poll=async()=>{try{const r=await fetch(url+'?after='+after,{credentials:'same-origin'});if(!r.ok)return setTimeout(poll,2000);\
const page=await r.json();const bottom=log.scrollTop+log.clientHeight>=log.scrollHeight-4;\
if(page.lines.length){log.append(document.createTextNode(page.lines.join('\\n')+'\\n'));after=page.last;log.dataset.after=String(after);\
if(bottom)log.scrollTop=log.scrollHeight;return setTimeout(poll,200)}\
if(page.ended)return location.reload();}catch(e){}setTimeout(poll,2000)};setTimeout(poll,2000);\
const live=async()=>{try{const r=await fetch(location.href,{credentials:'same-origin'});if(r.ok){\
const next=new DOMParser().parseFromString(await r.text(),'text/html').getElementById('live');\
if(next)document.getElementById('live').replaceChildren(...next.childNodes)}}catch(e){}setTimeout(live,5000)};setTimeout(live,5000)})();";

/// A training job: its status history, learning curves (seconds since it started) and the end
/// of its log, which follows the job while it runs (`log`: sequence and text of each line).
pub fn training_job(
    job: &api::DescribeTrainingJobResponse,
    series: &[(String, Vec<(i64, f64)>)],
    log: &[(i64, String)],
    last_sequence: i64,
) -> String {
    let name = job.training_job_name.clone().unwrap_or_default();
    let status = job.training_job_status.clone().unwrap_or_default();
    let running = status == "InProgress" || status == "Stopping";
    let mut body = format!(
        "<div id=\"live\"><p>Status <b class=\"status-{}\">{}</b> ({}) · created {} · trained {} s</p>",
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
    let following = if running { " (following)" } else { "" };
    body.push_str(&format!(
        "</div><h2>Log{following}</h2><pre id=\"log\" data-follow=\"{}\" data-after=\"{last_sequence}\" data-url=\"/training-jobs/{}/log\">",
        u8::from(running),
        segment(&name)
    ));
    for (_, line) in log {
        body.push_str(&escape(line));
        body.push('\n');
    }
    body.push_str("</pre>");
    if running {
        body.push_str(&format!("<script>{FOLLOW}</script>"));
    }
    layout(&name, &body, false)
}

/// New log lines for a following page: `{"lines": [...], "last": N, "ended": bool}` (`last`: the
/// sequence of the last line, to ask after next time).
pub fn log_lines(lines: &[(i64, String)], after: i64, ended: bool) -> String {
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    let last = lines.last().map_or(after, |(seq, _)| *seq);
    serde_json::json!({ "lines": texts, "last": last, "ended": ended }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(
        number: u64,
        name: &str,
        status: TrainingJobStatus,
        value: Option<f64>,
        hps: &[(&str, &str)],
    ) -> TrialPoint {
        TrialPoint {
            number,
            training_job_name: name.into(),
            status,
            objective_value: value,
            best_so_far: None,
            stopped_early: None,
            tuned_hyper_parameters: hps.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            creation_time: Timestamp::from_millis(number as i64),
            training_end_time: None,
        }
    }

    #[test]
    fn a_tuning_jobs_page_plots_every_reported_trial_and_tables_them_all() {
        use TrainingJobStatus::*;
        let job = api::DescribeHyperParameterTuningJobResponse {
            hyper_parameter_tuning_job_name: Some("search".into()),
            hyper_parameter_tuning_job_status: Some("InProgress".into()),
            ..Default::default()
        };
        let mut early = trial(3, "search-003-ccc", Stopped, Some(0.2), &[("lr", "0.1"), ("opt", "sgd")]);
        early.stopped_early = Some("worse than the median of earlier trials".into());
        let trials = TrialPoints {
            objective_metric: "accuracy".into(),
            maximize: true,
            points: vec![
                TrialPoint {
                    best_so_far: Some(0.5),
                    ..trial(1, "search-001-aaa", Completed, Some(0.5), &[("lr", "0.001"), ("opt", "adam")])
                },
                TrialPoint {
                    best_so_far: Some(0.7),
                    ..trial(2, "search-002-bbb", Completed, Some(0.7), &[("lr", "0.01"), ("opt", "sgd")])
                },
                TrialPoint { best_so_far: Some(0.7), ..early },
                trial(4, "<b>odd</b>", InProgress, None, &[("lr", "0.05"), ("opt", "adam")]),
            ],
            next_token: None,
            ended: false,
        };
        let page = tuning_job(&job, &trials);
        // By trial, parallel coordinates, one per hyperparameter; a point per reported trial in the scatters.
        assert_eq!(page.matches("<svg").count(), 4, "{page}");
        assert_eq!(page.matches("<circle").count(), 9);
        assert_eq!(page.matches(r#"class="trial""#).count(), 3, "a line per reported trial");
        assert!(page.contains("lr (log)"), "two decades and more: a log axis: {page}");
        assert!(page.contains("<p class=\"muted\">adam, sgd</p>"), "categories listed in order: {page}");
        // The early-stopped trial is drawn and listed as such, with its reason.
        assert_eq!(page.matches("kind-4").count(), 3, "orange in the by-trial and both per-parameter charts");
        assert!(page.contains("title=\"worse than the median of earlier trials\">Stopped early</span>"), "{page}");
        assert!(page.contains("(stopped early: worse than the median"), "the tooltip says why");
        assert!(page.contains("http-equiv=\"refresh\""), "a running job's page reloads");
        let first = page.find("search-001-aaa").expect("listed");
        assert!(first < page.find("search-002-bbb").expect("listed"));
        assert!(page.contains("&lt;b&gt;odd&lt;/b&gt;") && !page.contains("<b>odd</b>"));
        assert!(page.contains("/training-jobs/%3Cb%3Eodd%3C%2Fb%3E"), "{page}");
    }

    #[test]
    fn the_tuning_jobs_page_shows_progress_and_the_best_objective() {
        let job = |name: &str, status: &str, completed: i32, most: Option<i32>| api::HyperParameterTuningJobSummary {
            hyper_parameter_tuning_job_name: Some(name.into()),
            hyper_parameter_tuning_job_status: Some(status.into()),
            training_job_status_counters: Some(api::TrainingJobStatusCounters {
                completed: Some(completed),
                stopped: Some(1),
                in_progress: Some(2),
                ..Default::default()
            }),
            resource_limits: most
                .map(|m| api::ResourceLimits { max_number_of_training_jobs: Some(m), ..Default::default() }),
            ..Default::default()
        };
        let jobs = [job("search", "InProgress", 3, Some(10)), job("open-ended", "Completed", 5, None)];
        let page = tuning_jobs(&jobs, &HashMap::from([("search".to_string(), 0.93)]));
        assert!(
            page.contains("<progress max=\"10\" value=\"4\"></progress> 4 of 10"),
            "completed and stopped have ended: {page}"
        );
        assert!(page.contains("<td>0.93</td>"), "{page}");
        assert!(page.contains("<td>6 ended</td><td>-</td>"), "no limit, no best: {page}");
        assert!(page.contains("http-equiv=\"refresh\""), "one runs: the page reloads");
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
        let page = training_job(&job, &series, &[(7, "<img src=x onerror=alert(1)>".to_string())], 7);
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;") && !page.contains("<img"));
        assert_eq!(page.matches("<polyline").count(), 1);
        assert!(!page.contains("http-equiv=\"refresh\""), "an ended job's page stays");
        assert!(page.contains("data-follow=\"0\"") && !page.contains("DOMParser"), "and does not follow its log");

        // A running job's page follows its log from the last line shown, without reloading.
        let running = api::DescribeTrainingJobResponse { training_job_status: Some("InProgress".into()), ..job };
        let page = training_job(&running, &[], &[], 41);
        assert!(page.contains("data-follow=\"1\" data-after=\"41\" data-url=\"/training-jobs/job/log\""), "{page}");
        assert!(page.contains("DOMParser") && !page.contains("http-equiv=\"refresh\""), "{page}");
    }

    #[test]
    fn new_log_lines_come_as_json_with_where_to_ask_next() {
        let page: serde_json::Value =
            serde_json::from_str(&log_lines(&[(8, "a \"quoted\" line".into()), (9, "</script>".into())], 7, false))
                .expect("JSON");
        assert_eq!(page, serde_json::json!({"lines": ["a \"quoted\" line", "</script>"], "last": 9, "ended": false}));
        let none: serde_json::Value = serde_json::from_str(&log_lines(&[], 9, true)).expect("JSON");
        assert_eq!(none, serde_json::json!({"lines": [], "last": 9, "ended": true}));
    }
}
