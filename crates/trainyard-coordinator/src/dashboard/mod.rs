//! A read-only web dashboard (`--dashboard-listen`): tuning jobs as pictures (objective by trial
//! with the best so far, objective against each hyperparameter, a sortable table of trials),
//! training jobs with their status history, learning curves and log; agents with their resources,
//! GPUs and what runs on them. Server-rendered HTML with
//! inline SVG: every asset is in the binary and nothing is fetched from elsewhere. HTTPS with the
//! coordinator's certificate; signed in with an API token (read scope is enough), kept in an
//! HttpOnly, Secure, SameSite=Strict cookie; each page shows what that token's user may see, as the
//! API does. Pages of running tuning jobs reload every 5 s; a running training job's page
//! follows its log and refreshes its status and curves in place.

mod pages;
mod svg;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use trainyard_model::access::Caller;
use trainyard_model::{DomainError, api};

use crate::auth::Auth;
use crate::core::Coordinator;

const COOKIE: &str = "trainyard_token";
/// Trials, jobs and log lines one page shows at most.
const MAX_TRIALS: usize = 2_000;
const MAX_JOBS: i32 = 100;
const LOG_LINES: u32 = 200;

pub struct Dashboard {
    pub coordinator: Arc<Coordinator>,
    pub auth: Arc<Auth>,
}

pub async fn serve(
    dashboard: Dashboard,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/", get(tuning_jobs))
        .route("/training-jobs", get(training_jobs))
        .route("/agents", get(agents))
        .route("/tuning-jobs/{name}", get(tuning_job))
        .route("/training-jobs/{name}", get(training_job))
        .route("/training-jobs/{name}/log", get(training_job_log))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .with_state(Arc::new(dashboard));
    let address = listener.local_addr()?;
    info!(%address, tls = tls.is_some(), "dashboard listening");
    crate::https::serve(listener, tls, app, cancel).await?;
    Ok(())
}

/// The signed-in caller, from the cookie; `Err` sends the browser to sign in.
async fn caller(state: &Dashboard, headers: &HeaderMap) -> Result<Caller, Response> {
    if !state.auth.required() {
        return Ok(Caller::unauthenticated_admin());
    }
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string));
    match token {
        Some(token) => state.auth.verify_api_token(&token).await.map_err(|e| {
            debug!(error = %e, "dashboard sign-in refused");
            Redirect::to("/login").into_response()
        }),
        None => Err(Redirect::to("/login").into_response()),
    }
}

fn failure(e: &DomainError) -> Response {
    let status = match e {
        DomainError::NotFound { .. } => StatusCode::NOT_FOUND,
        DomainError::Validation(_) => StatusCode::BAD_REQUEST,
        DomainError::Unauthenticated(_) | DomainError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        DomainError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Html(pages::layout("Not shown", &format!("<p>{}</p>", pages::escape(&e.to_string())), false)))
        .into_response()
}

async fn tuning_jobs(State(state): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let request = api::ListHyperParameterTuningJobsRequest { max_results: Some(MAX_JOBS), ..Default::default() };
    let jobs = match state.coordinator.list_tuning_jobs(&caller, request).await {
        Ok(list) => list.hyper_parameter_tuning_job_summaries.unwrap_or_default(),
        Err(e) => return failure(&e),
    };
    let names: Vec<String> = jobs.iter().filter_map(|j| j.hyper_parameter_tuning_job_name.clone()).collect();
    match state.coordinator.best_objectives(&caller, &names).await {
        Ok(best) => Html(pages::tuning_jobs(&jobs, &best)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn training_jobs(State(state): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let request = api::ListTrainingJobsRequest { max_results: Some(MAX_JOBS), ..Default::default() };
    match state.coordinator.list_training_jobs(&caller, request).await {
        Ok(list) => Html(pages::training_jobs(&list.training_job_summaries.unwrap_or_default())).into_response(),
        Err(e) => failure(&e),
    }
}

async fn agents(State(state): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Err(r) = caller(&state, &headers).await {
        return r;
    }
    match state.coordinator.agents().await {
        Ok(agents) => Html(pages::agents(&agents)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn tuning_job(State(state): State<Arc<Dashboard>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = &state.coordinator;
    let request = api::DescribeHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name.clone()) };
    let job = match c.describe_tuning_job(&caller, request).await {
        Ok(job) => job,
        Err(e) => return failure(&e),
    };
    let mut trials = match c.trial_points(&caller, &name, "", 0).await {
        Ok(page) => page,
        Err(e) => return failure(&e),
    };
    while let Some(token) = trials.next_token.take() {
        if trials.points.len() >= MAX_TRIALS {
            trials.next_token = Some(token);
            break;
        }
        match c.trial_points(&caller, &name, &token, 0).await {
            Ok(page) => {
                trials.points.extend(page.points);
                trials.next_token = page.next_token;
            }
            Err(e) => return failure(&e),
        }
    }
    Html(pages::tuning_job(&job, &trials)).into_response()
}

async fn training_job(State(state): State<Arc<Dashboard>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = &state.coordinator;
    let job = match c
        .describe_training_job(&caller, api::DescribeTrainingJobRequest { training_job_name: Some(name.clone()) })
        .await
    {
        Ok(job) => job,
        Err(e) => return failure(&e),
    };
    // Every stored sample (at most one a second per metric), series by series.
    let mut series: Vec<(String, Vec<(i64, f64)>)> = Vec::new();
    let mut token = String::new();
    loop {
        let (samples, next, _) = match c.read_metrics(&caller, &name, "", &token, 0).await {
            Ok(page) => page,
            Err(e) => return failure(&e),
        };
        for s in samples {
            match series.last_mut() {
                Some((metric, points)) if *metric == s.name => points.push((s.timestamp.millis(), s.value)),
                _ => series.push((s.name.clone(), vec![(s.timestamp.millis(), s.value)])),
            }
        }
        match next {
            Some(next) => token = next,
            None => break,
        }
    }
    // The end of the log: from LOG_LINES before its last line.
    let last = match c.last_log_sequence(&caller, &name).await {
        Ok(last) => last,
        Err(e) => return failure(&e),
    };
    let log = match c.read_logs(&caller, &name, (last - i64::from(LOG_LINES)).max(0), LOG_LINES).await {
        Ok((lines, _)) => lines.into_iter().map(shown).collect::<Vec<_>>(),
        Err(e) => return failure(&e),
    };
    let last = log.last().map_or(last, |(seq, _)| *seq);
    Html(pages::training_job(&job, &series, &log, last)).into_response()
}

/// A log line as the page shows it: lines of other instances than the first say whose they are.
fn shown(line: trainyard_store::LogRecord) -> (i64, String) {
    let text = if line.instance > 1 { format!("[algo-{}] {}", line.instance, line.text) } else { line.text };
    (line.seq, text)
}

/// The log lines after `?after=N`, for a page that follows a running job.
async fn training_job_log(
    State(state): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let after = query.as_deref().unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix("after="));
    let Some(after) = after.and_then(|a| a.parse::<i64>().ok()).filter(|a| *a >= 0) else {
        return (StatusCode::BAD_REQUEST, "after: must be a log sequence number (0 or more)").into_response();
    };
    match state.coordinator.read_logs(&caller, &name, after, LOG_LINES).await {
        Ok((lines, ended)) => {
            let lines: Vec<(i64, String)> = lines.into_iter().map(shown).collect();
            ([(header::CONTENT_TYPE, "application/json")], pages::log_lines(&lines, after, ended)).into_response()
        }
        Err(e) => failure(&e),
    }
}

async fn login_page() -> Html<String> {
    Html(pages::login(""))
}

/// Checks the token and keeps it in the session's cookie.
async fn login(State(state): State<Arc<Dashboard>>, body: Bytes) -> Response {
    let token = std::str::from_utf8(&body)
        .ok()
        .and_then(|form| form.split('&').find_map(|pair| pair.strip_prefix("token=")))
        .unwrap_or_default()
        .to_string();
    // Token texts are letters, digits and '_': nothing in them needs decoding (or may be in a cookie).
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return (StatusCode::UNAUTHORIZED, Html(pages::login("That is not an API token."))).into_response();
    }
    match state.auth.verify_api_token(&token).await {
        Ok(caller) => {
            info!(user = %caller.user, "signed in to the dashboard");
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(e) => (StatusCode::UNAUTHORIZED, Html(pages::login(&format!("Not signed in: {e}")))).into_response(),
    }
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
