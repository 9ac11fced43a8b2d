//! `trainyard`: the command line for tuning and training jobs.
//!
//! Requests are the JSON bodies one would send to SageMaker (PascalCase); `--output json` prints
//! SageMaker-shaped JSON for scripts, the default prints tables and summaries for people.
//!
//! Exit codes: 0 success, 1 other errors, 2 usage, 3 invalid request (every violation is listed),
//! 4 not found, 5 already exists, 6 coordinator unreachable, 7 resource limit exceeded.

mod output;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use trainyard_proto::model::Timestamp;
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_proto::pb::training_client::TrainingClient;

#[derive(Parser)]
#[command(name = "trainyard", version, about = "Hyperparameter tuning and training jobs on your own hosts")]
#[command(after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 invalid request, 4 not found, 5 already exists, \
                        6 coordinator unreachable, 7 limit exceeded.")]
struct Cli {
    /// Coordinator address (http://HOST:PORT or HOST:PORT).
    #[arg(long, global = true, env = "TRAINYARD_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables and summaries for people.
    Table,
    /// SageMaker-shaped JSON for scripts.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Hyperparameter tuning jobs.
    #[command(subcommand, name = "tuning-jobs")]
    TuningJobs(TuningCommand),
    /// Training jobs.
    #[command(subcommand, name = "training-jobs")]
    TrainingJobs(TrainingCommand),
}

#[derive(Subcommand)]
enum TuningCommand {
    /// Create a tuning job from a CreateHyperParameterTuningJob JSON body.
    Create(CreateArgs),
    /// Show a tuning job: status, trial counters, best trial.
    Describe { name: String },
    /// List tuning jobs.
    List(ListArgs),
    /// Stop a tuning job and all its running trials.
    Stop { name: String },
    /// List the training jobs (trials) of a tuning job.
    Trials(TrialsArgs),
}

#[derive(Subcommand)]
enum TrainingCommand {
    /// Create a training job from a CreateTrainingJob JSON body.
    Create(CreateArgs),
    /// Show a training job: status, transitions, metrics.
    Describe { name: String },
    /// List training jobs.
    List(ListArgs),
    /// Stop a training job.
    Stop { name: String },
}

#[derive(Args)]
struct CreateArgs {
    /// The request body, as sent to SageMaker (`-` for standard input).
    #[arg(long, short)]
    file: PathBuf,
    /// Use this job name instead of the one in the file.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long)]
    name_contains: Option<String>,
    #[arg(long)]
    status: Option<String>,
    /// Name, CreationTime or Status.
    #[arg(long)]
    sort_by: Option<String>,
    /// Ascending or Descending.
    #[arg(long)]
    sort_order: Option<String>,
    #[arg(long)]
    max_results: Option<i32>,
    #[arg(long)]
    next_token: Option<String>,
    /// Created after this time (RFC 3339, or epoch seconds).
    #[arg(long, value_parser = parse_time)]
    created_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    created_before: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    modified_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    modified_before: Option<Timestamp>,
    /// Follow NextToken until every page is read.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct TrialsArgs {
    name: String,
    #[arg(long)]
    status: Option<String>,
    /// Name, CreationTime, Status or FinalObjectiveMetricValue.
    #[arg(long)]
    sort_by: Option<String>,
    #[arg(long)]
    sort_order: Option<String>,
    #[arg(long)]
    max_results: Option<i32>,
    #[arg(long)]
    next_token: Option<String>,
    #[arg(long)]
    all: bool,
}

fn parse_time(raw: &str) -> Result<Timestamp, String> {
    if let Ok(seconds) = raw.parse::<f64>() {
        return Ok(Timestamp::from_millis((seconds * 1000.0) as i64));
    }
    let t = humantime::parse_rfc3339_weak(raw).map_err(|e| format!("'{raw}' is not RFC 3339 or epoch seconds: {e}"))?;
    let millis = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
    Ok(Timestamp::from_millis(i64::try_from(millis).map_err(|e| e.to_string())?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = output::report_error(&e);
            ExitCode::from(code)
        }
    }
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = Channel::from_shared(url.clone()).map_err(|e| anyhow!("'{address}' is not an address: {e}"))?;
    endpoint.connect().await.map_err(|e| anyhow::Error::new(output::Unreachable(format!("{url}: {e}"))))
}

fn read_request<T: DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the request from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid request body", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = connect(&cli.coordinator).await?;
    let out = cli.output;
    match cli.command {
        Command::TuningJobs(cmd) => tuning(HyperParameterTuningClient::new(channel), cmd, out).await,
        Command::TrainingJobs(cmd) => training(TrainingClient::new(channel), cmd, out).await,
    }
}

async fn tuning(
    mut client: HyperParameterTuningClient<Channel>,
    cmd: TuningCommand,
    out: Output,
) -> anyhow::Result<()> {
    match cmd {
        TuningCommand::Create(args) => {
            let mut request: api::CreateHyperParameterTuningJobRequest = read_request(&args.file)?;
            if let Some(name) = args.name {
                request.hyper_parameter_tuning_job_name = Some(name);
            }
            let response = client
                .create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(request))
                .await?;
            let response = api::CreateHyperParameterTuningJobResponse::from(response.into_inner());
            match out {
                Output::Json => output::json(&response),
                Output::Table => println!("{}", response.hyper_parameter_tuning_job_arn.unwrap_or_default()),
            }
        }
        TuningCommand::Describe { name } => {
            let request = api::DescribeHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name) };
            let response = client
                .describe_hyper_parameter_tuning_job(pb::DescribeHyperParameterTuningJobRequest::from(request))
                .await?;
            let response = api::DescribeHyperParameterTuningJobResponse::from(response.into_inner());
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::describe_tuning_job(&response),
            }
        }
        TuningCommand::List(args) => {
            let mut request = api::ListHyperParameterTuningJobsRequest {
                creation_time_after: args.created_after,
                creation_time_before: args.created_before,
                last_modified_time_after: args.modified_after,
                last_modified_time_before: args.modified_before,
                max_results: args.max_results,
                name_contains: args.name_contains,
                next_token: args.next_token,
                sort_by: args.sort_by,
                sort_order: args.sort_order,
                status_equals: args.status,
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client
                    .list_hyper_parameter_tuning_jobs(pb::ListHyperParameterTuningJobsRequest::from(request.clone()))
                    .await?;
                let page = api::ListHyperParameterTuningJobsResponse::from(page.into_inner());
                all.extend(page.hyper_parameter_tuning_job_summaries.unwrap_or_default());
                match page.next_token {
                    Some(token) if args.all => request.next_token = Some(token),
                    other => break other,
                }
            };
            let response = api::ListHyperParameterTuningJobsResponse {
                hyper_parameter_tuning_job_summaries: Some(all),
                next_token: next,
            };
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::list_tuning_jobs(&response),
            }
        }
        TuningCommand::Stop { name } => {
            let request =
                api::StopHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name.clone()) };
            client.stop_hyper_parameter_tuning_job(pb::StopHyperParameterTuningJobRequest::from(request)).await?;
            if out == Output::Table {
                println!("stopping {name}");
            }
        }
        TuningCommand::Trials(args) => {
            let mut request = api::ListTrainingJobsForHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(args.name),
                max_results: args.max_results,
                next_token: args.next_token,
                sort_by: args.sort_by,
                sort_order: args.sort_order,
                status_equals: args.status,
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client
                    .list_training_jobs_for_hyper_parameter_tuning_job(
                        pb::ListTrainingJobsForHyperParameterTuningJobRequest::from(request.clone()),
                    )
                    .await?;
                let page = api::ListTrainingJobsForHyperParameterTuningJobResponse::from(page.into_inner());
                all.extend(page.training_job_summaries.unwrap_or_default());
                match page.next_token {
                    Some(token) if args.all => request.next_token = Some(token),
                    other => break other,
                }
            };
            let response = api::ListTrainingJobsForHyperParameterTuningJobResponse {
                training_job_summaries: Some(all),
                next_token: next,
            };
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::list_trials(&response),
            }
        }
    }
    Ok(())
}

async fn training(mut client: TrainingClient<Channel>, cmd: TrainingCommand, out: Output) -> anyhow::Result<()> {
    match cmd {
        TrainingCommand::Create(args) => {
            let mut request: api::CreateTrainingJobRequest = read_request(&args.file)?;
            if let Some(name) = args.name {
                request.training_job_name = Some(name);
            }
            let response = client.create_training_job(pb::CreateTrainingJobRequest::from(request)).await?;
            let response = api::CreateTrainingJobResponse::from(response.into_inner());
            match out {
                Output::Json => output::json(&response),
                Output::Table => println!("{}", response.training_job_arn.unwrap_or_default()),
            }
        }
        TrainingCommand::Describe { name } => {
            let request = api::DescribeTrainingJobRequest { training_job_name: Some(name) };
            let response = client.describe_training_job(pb::DescribeTrainingJobRequest::from(request)).await?;
            let response = api::DescribeTrainingJobResponse::from(response.into_inner());
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::describe_training_job(&response),
            }
        }
        TrainingCommand::List(args) => {
            let mut request = api::ListTrainingJobsRequest {
                creation_time_after: args.created_after,
                creation_time_before: args.created_before,
                last_modified_time_after: args.modified_after,
                last_modified_time_before: args.modified_before,
                max_results: args.max_results,
                name_contains: args.name_contains,
                next_token: args.next_token,
                sort_by: args.sort_by,
                sort_order: args.sort_order,
                status_equals: args.status,
                training_plan_arn_equals: None,
                warm_pool_status_equals: None,
            };
            let mut all = Vec::new();
            let next = loop {
                let page = client.list_training_jobs(pb::ListTrainingJobsRequest::from(request.clone())).await?;
                let page = api::ListTrainingJobsResponse::from(page.into_inner());
                all.extend(page.training_job_summaries.unwrap_or_default());
                match page.next_token {
                    Some(token) if args.all => request.next_token = Some(token),
                    other => break other,
                }
            };
            let response = api::ListTrainingJobsResponse { training_job_summaries: Some(all), next_token: next };
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::list_training_jobs(&response),
            }
        }
        TrainingCommand::Stop { name } => {
            let request = api::StopTrainingJobRequest { training_job_name: Some(name.clone()) };
            client.stop_training_job(pb::StopTrainingJobRequest::from(request)).await?;
            if out == Output::Table {
                println!("stopping {name}");
            }
        }
    }
    Ok(())
}
