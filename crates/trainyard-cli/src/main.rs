//! `trainyard`: the command line for tuning and training jobs.
//!
//! Requests are the JSON bodies one would send to SageMaker (PascalCase); `--output json` prints
//! SageMaker-shaped JSON for scripts, the default prints tables and summaries for people.
//!
//! Exit codes: 0 success, 1 other errors, 2 usage, 3 invalid request (every violation is listed),
//! 4 not found, 5 already exists, 6 coordinator unreachable, 7 resource limit exceeded,
//! 8 not authenticated or not allowed.
//!
//! The connection is TLS, verified against the coordinator's CA (`--ca-file`), with an API token
//! (`--token`); `--insecure` talks plain text to a coordinator started that way (`trainyard dev`).

mod dev;
mod output;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use trainyard_proto::model::Timestamp;
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::access_client::AccessClient;
use trainyard_proto::pb::agents_client::AgentsClient;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_proto::pb::training_client::TrainingClient;

#[derive(Parser)]
#[command(name = "trainyard", version, about = "Hyperparameter tuning and training jobs on your own hosts")]
#[command(after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 invalid request, 4 not found, 5 already exists, \
                        6 coordinator unreachable, 7 limit exceeded, 8 not authenticated or not allowed.")]
struct Cli {
    /// Coordinator address (HOST:PORT), or several (HOST:PORT,HOST:PORT,...): the one that leads
    /// is found and used; the others stand by.
    #[arg(long, global = true, env = "TRAINYARD_COORDINATOR", default_value = "127.0.0.1:50051")]
    coordinator: String,
    /// API token (from an admin: `trainyard tokens create` or `trainyard-coordinator tokens create`).
    #[arg(long, global = true, env = "TRAINYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The coordinator's CA certificate (its DATA_DIR/pki/ca.pem).
    #[arg(long, global = true, env = "TRAINYARD_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Plain text, no token: only for a coordinator started with --insecure (e.g. `trainyard dev`).
    #[arg(long, global = true, env = "TRAINYARD_INSECURE")]
    insecure: bool,
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
    /// Agents: the hosts that run training jobs.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Run a coordinator (SQLite) and an agent on this machine; optionally run a tuning job on them.
    Dev(DevCommand),
    /// Print a completion script for a shell (e.g. `trainyard completions bash >
    /// /etc/bash_completion.d/trainyard`).
    Completions { shell: clap_complete::Shell },
    /// Print this CLI's manual page (roff: `trainyard man > /usr/local/share/man/man1/trainyard.1`).
    Man,
    /// The user and scope of your token.
    Whoami,
    /// Whether the coordinator serves (the gRPC health service): exit 0 when SERVING, 1 otherwise
    /// (e.g. its database does not answer). No token needed.
    Health,
    /// API tokens (admin scope).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Print a token that lets one agent join, valid 24 hours unless --expires-in says otherwise;
    /// --uses N for a batch of agents (admin scope).
    JoinToken {
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
        /// How many agents may join with it (default: one).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// The only agent id it joins.
        #[arg(long)]
        agent_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Every agent with its resources (free/total), GPUs, running instances and state.
    List,
    /// Refuse an agent's certificate from now on; its instances are stopped and handled as those
    /// of a lost agent (admin scope).
    Revoke { agent_id: String },
    /// Take an agent out of placement: nothing new starts there; what runs goes on (admin scope).
    Cordon { agent_id: String },
    /// Cordon an agent and have `agents list` say when its last instance has ended ("drained"):
    /// then it can be stopped for maintenance without killing a job (admin scope).
    Drain {
        agent_id: String,
        /// After this many seconds, stop what still runs there; each job is retried elsewhere
        /// under its RetryStrategy (else it fails, saying why).
        #[arg(long)]
        deadline_seconds: Option<u64>,
    },
    /// Put a cordoned or drained agent back into placement (admin scope).
    Uncordon { agent_id: String },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create an API token; prints it (shown once).
    Create {
        /// The user it acts as: it sees and stops only this user's jobs (unless admin).
        #[arg(long)]
        user: String,
        /// read, submit or admin.
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "")]
        description: String,
        /// e.g. 90d; default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Also issue a SigV4 access key bound to the token (for boto3 / the AWS CLI against the
        /// SageMaker-compatible endpoint).
        #[arg(long)]
        access_key: bool,
    },
    /// Every token (without secrets).
    List,
    /// Revoke a token by id; it is refused at once.
    Revoke { id: String },
}

#[derive(Args)]
struct DevCommand {
    /// Where the coordinator's database, the agent's work dirs, outputs and logs go.
    #[arg(long, default_value = ".trainyard/dev")]
    data_dir: PathBuf,
    /// The coordinator's port on 127.0.0.1.
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Serve s3://trainyard-examples/ from this directory (default: the repository's
    /// deploy/examples/data when run from its root, else a built-in copy).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// vCPUs the agent offers (a development machine may oversubscribe).
    #[arg(long, default_value_t = 8)]
    vcpus: u32,
    /// Memory the agent offers, in MiB (a development machine may oversubscribe: an ml.m5.large
    /// reserves 8 GiB, which a small trainer never uses; each instance is still limited to its
    /// instance type's memory).
    #[arg(long, default_value_t = 65536)]
    memory_mib: u64,
    /// Submit this CreateHyperParameterTuningJob request, watch it to the end, then stop.
    #[arg(long)]
    run: Option<PathBuf>,
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
    /// Delete an ended tuning job's record (its training jobs, models and logs stay).
    Delete { name: String },
    /// List the training jobs (trials) of a tuning job.
    Trials(TrialsArgs),
    /// Follow a tuning job: a progress bar of finished trials and the best objective so far.
    Watch { name: String },
    /// Every trial in launch order with its objective, the best so far, whether early stopping
    /// ended it, and its hyperparameters (`--output json`: columns ready to plot).
    Results {
        name: String,
        /// Trials fetched a request (1–1000; the CLI pages through them all).
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
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
    /// Print a training job's stdout and stderr.
    Logs {
        name: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print a training job's metric series (what its MetricDefinitions matched, at most one
    /// sample per metric per second).
    Metrics {
        name: String,
        /// Only this metric.
        #[arg(long)]
        metric: Option<String>,
    },
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
    // Output piped into `head` ends quietly, as a Unix tool's does. SIGPIPE stays ignored (Rust's
    // default): with its default action, a write to a socket the coordinator closed (h2 uses
    // writev, which has no MSG_NOSIGNAL) would kill the CLI instead of reporting the error.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = output::report_error(&e);
            ExitCode::from(code)
        }
    }
}

/// Reads one page from `first` on, or every page when `all` is set; the items, and the token of
/// the page after them (None when there is none).
async fn collect_pages<T>(
    first: Option<String>,
    all: bool,
    mut fetch: impl AsyncFnMut(Option<String>) -> anyhow::Result<(Vec<T>, Option<String>)>,
) -> anyhow::Result<(Vec<T>, Option<String>)> {
    let mut items = Vec::new();
    let mut token = first;
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        match next {
            Some(next) if all => token = Some(next),
            other => return Ok((items, other)),
        }
    }
}

use trainyard_proto::client::Transport;

/// How to reach the coordinator.
#[derive(Clone, Copy)]
struct Connection<'a> {
    address: &'a str,
    token: Option<&'a str>,
    ca_file: Option<&'a PathBuf>,
    insecure: bool,
}

async fn connect(c: Connection<'_>) -> anyhow::Result<Transport> {
    let ca = if c.insecure {
        None
    } else {
        let Some(ca_file) = c.ca_file else {
            anyhow::bail!(
                "the coordinator's CA certificate is needed to verify it: pass --ca-file or set TRAINYARD_CA_FILE \
                 (the coordinator's DATA_DIR/pki/ca.pem); --insecure only for a coordinator started with --insecure"
            );
        };
        Some(std::fs::read_to_string(ca_file).with_context(|| format!("reading {}", ca_file.display()))?)
    };
    let token = if c.insecure { None } else { c.token };
    let mut coordinators = trainyard_proto::client::Coordinators::parse(c.address)?;
    trainyard_proto::client::connect_leader(&mut coordinators, ca.as_deref(), token).await.map_err(|e| match e {
        trainyard_proto::client::ConnectError::Unreachable { url, source } => {
            // The whole chain: "transport error" alone does not say a certificate was refused.
            let mut detail = source.to_string();
            let mut cause = std::error::Error::source(&source);
            while let Some(e) = cause {
                detail.push_str(&format!(": {e}"));
                cause = e.source();
            }
            anyhow::Error::new(output::Unreachable(format!("{url}: {detail}")))
        }
        e @ trainyard_proto::client::ConnectError::NoAnswer { .. } => {
            anyhow::Error::new(output::Unreachable(e.to_string()))
        }
        trainyard_proto::client::ConnectError::NoLeader { tried, last } => {
            anyhow::Error::new(output::Unreachable(format!("no coordinator of {tried} leads: {last}")))
        }
        other => anyhow::Error::new(other),
    })
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
    let out = cli.output;
    match cli.command {
        Command::Dev(args) => return run_dev(args, out).await,
        // Written whole, at once: a reader that stops early (`| head`) is no error.
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "trainyard", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return Ok(());
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &page);
            return Ok(());
        }
        _ => {}
    }
    let connection = Connection {
        address: &cli.coordinator,
        token: cli.token.as_deref().filter(|t| !t.trim().is_empty()),
        ca_file: cli.ca_file.as_ref(),
        insecure: cli.insecure,
    };
    let channel = connect(connection).await?;
    match cli.command {
        Command::TuningJobs(cmd) => tuning(HyperParameterTuningClient::new(channel), cmd, out, connection).await,
        Command::TrainingJobs(cmd) => training(TrainingClient::new(channel), cmd, out).await,
        Command::Agents(AgentsCommand::List) => {
            // Every page, as one list.
            let mut client = AgentsClient::new(channel);
            let mut response = pb::ListAgentsResponse::default();
            loop {
                let request = pb::ListAgentsRequest { next_token: response.next_token.clone(), max_results: 0 };
                let page = client.list_agents(request).await?.into_inner();
                response.agents.extend(page.agents);
                response.next_token = page.next_token;
                if response.next_token.is_empty() {
                    break;
                }
            }
            match out {
                Output::Json => output::agents_json(&response),
                Output::Table => output::list_agents(&response),
            }
            Ok(())
        }
        Command::Agents(
            ref command @ (AgentsCommand::Cordon { ref agent_id }
            | AgentsCommand::Drain { ref agent_id, .. }
            | AgentsCommand::Uncordon { ref agent_id }),
        ) => {
            let (action, outcome) = match command {
                AgentsCommand::Cordon { .. } => ("cordon", "cordoned: nothing new starts there"),
                AgentsCommand::Drain { .. } => (
                    "drain",
                    "draining: nothing new starts there; `agents list` says drained once its instances have ended",
                ),
                _ => ("uncordon", "back in placement"),
            };
            AccessClient::new(channel)
                .cordon_agent(pb::CordonAgentRequest {
                    agent_id: agent_id.clone(),
                    action: action.into(),
                    deadline_seconds: match command {
                        AgentsCommand::Drain { deadline_seconds, .. } => deadline_seconds.unwrap_or(0),
                        _ => 0,
                    },
                })
                .await?;
            eprintln!("agent {agent_id} {outcome}");
            Ok(())
        }
        Command::Agents(AgentsCommand::Revoke { agent_id }) => {
            AccessClient::new(channel).revoke_agent(pb::RevokeAgentRequest { agent_id: agent_id.clone() }).await?;
            eprintln!("agent {agent_id} revoked: its certificate is refused and its instances are stopped");
            Ok(())
        }
        Command::Health => {
            use tonic_health::pb::health_check_response::ServingStatus;
            let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await?
                .into_inner();
            let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
            match out {
                Output::Json => output::json(&serde_json::json!({ "Status": status.as_str_name() })),
                Output::Table => println!("{}", status.as_str_name()),
            }
            if status != ServingStatus::Serving {
                anyhow::bail!("the coordinator does not serve ({}): is its database reachable?", status.as_str_name());
            }
            Ok(())
        }
        Command::Whoami => {
            let me = AccessClient::new(channel).who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            match out {
                Output::Json => output::json(&serde_json::json!({
                    "User": me.user, "Scope": me.scope, "Authenticated": me.authenticated
                })),
                Output::Table if !me.authenticated => {
                    println!("no authentication (the coordinator runs with --insecure): everyone is an admin")
                }
                Output::Table => println!("user {} with scope {}", me.user, me.scope),
            }
            Ok(())
        }
        Command::Tokens(cmd) => tokens(AccessClient::new(channel), cmd, out).await,
        Command::JoinToken { expires_in, description, uses, agent_id } => {
            let created = AccessClient::new(channel)
                .create_join_token(pb::CreateJoinTokenRequest {
                    description,
                    expires_in_seconds: expires_in.map_or(0, |d| d.as_secs().max(1)),
                    uses,
                    agent_id: agent_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("{}", created.token);
            Ok(())
        }
        Command::Dev(_) | Command::Completions { .. } | Command::Man => Ok(()),
    }
}

async fn tokens(mut client: AccessClient<Transport>, cmd: TokensCommand, out: Output) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create { user, scope, description, expires_in, access_key } => {
            let created = client
                .create_token(pb::CreateTokenRequest {
                    user,
                    scope,
                    description,
                    expires_in_seconds: expires_in.map_or(0, |d| d.as_secs().max(1)),
                    access_key,
                })
                .await?
                .into_inner();
            match out {
                Output::Json => output::json(&serde_json::json!({
                    "Token": created.token,
                    "Id": created.info.map(|i| i.id).unwrap_or_default(),
                    "AccessKeyId": created.access_key_id,
                    "SecretAccessKey": created.secret_access_key,
                })),
                Output::Table => {
                    println!("{}", created.token);
                    if !created.access_key_id.is_empty() {
                        println!("AWS_ACCESS_KEY_ID={}", created.access_key_id);
                        println!("AWS_SECRET_ACCESS_KEY={}", created.secret_access_key);
                    }
                }
            }
        }
        TokensCommand::List => {
            let listed = client.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            match out {
                Output::Json => output::tokens_json(&listed.tokens),
                Output::Table => output::list_tokens(&listed.tokens),
            }
        }
        TokensCommand::Revoke { id } => {
            client.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

async fn run_dev(args: DevCommand, out: Output) -> anyhow::Result<()> {
    let examples = dev::examples_dir(args.examples, &args.data_dir)?;
    let settings = dev::DevArgs {
        data_dir: args.data_dir,
        port: args.port,
        examples,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
    };
    let mut cluster = dev::start(&settings)?;
    let address = cluster.address.clone();
    eprintln!(
        "coordinator on {} and agent dev-agent started; logs in {}",
        cluster.address,
        cluster.data_dir.join("logs").display()
    );
    // Plain text on loopback: the one place the CLI uses --insecure by itself.
    let connection = Connection { address: &address, token: None, ca_file: None, insecure: true };
    let channel = connect(connection).await?;
    let Some(file) = args.run else {
        eprintln!(
            "export TRAINYARD_COORDINATOR={} TRAINYARD_INSECURE=true and use trainyard in another terminal; \
             Ctrl-C stops both",
            cluster.address
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => cluster.check_running()?,
            }
        }
    };
    let mut request: api::CreateHyperParameterTuningJobRequest = read_request(&file)?;
    // The agent runs from this directory: a relative program path is resolved here first.
    let definitions =
        request.training_job_definition.iter_mut().chain(request.training_job_definitions.iter_mut().flatten());
    for definition in definitions {
        if let Some(image) = definition.algorithm_specification.as_mut().and_then(|a| a.training_image.as_mut()) {
            *image = dev::resolve_program(image, &file, &settings.data_dir)?;
        }
    }
    let name = request.hyper_parameter_tuning_job_name.clone().unwrap_or_default();
    let mut client = HyperParameterTuningClient::new(channel);
    client.create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(request)).await?;
    eprintln!("submitted tuning job {name}");
    let described = watch(&mut client, &name, out == Output::Table, connection).await?;
    match out {
        Output::Json => output::json(&described),
        Output::Table => {
            println!();
            output::describe_tuning_job(&described);
            let trials = client
                .list_training_jobs_for_hyper_parameter_tuning_job(
                    pb::ListTrainingJobsForHyperParameterTuningJobRequest::from(
                        api::ListTrainingJobsForHyperParameterTuningJobRequest {
                            hyper_parameter_tuning_job_name: Some(name),
                            max_results: Some(100),
                            sort_by: Some("FinalObjectiveMetricValue".into()),
                            sort_order: Some("Descending".into()),
                            ..Default::default()
                        },
                    ),
                )
                .await?;
            output::list_trials(&api::ListTrainingJobsForHyperParameterTuningJobResponse::from(trials.into_inner()));
            println!("models: {}", cluster.data_dir.join("output").display());
        }
    }
    cluster.check_running()?;
    Ok(())
}

/// The coordinator could not be reached or went away mid-call (killed, or failing over): a
/// connection reset surfaces as `Unknown` with the transport's error as its source.
fn connection_lost(status: &tonic::Status) -> bool {
    // A coordinator that dies while it answers leaves an HTTP/2 error whose cause is the socket's
    // (e.g. "error reading a body from connection": end of file), not a refused connect.
    let mut causes = std::iter::successors(std::error::Error::source(status), |e| e.source());
    let transport = causes.any(|e| e.is::<tonic::transport::Error>() || e.is::<std::io::Error>());
    let http2 = status.message().starts_with("h2 protocol error");
    status.code() == tonic::Code::Unavailable || (status.code() == tonic::Code::Unknown && (transport || http2))
}

/// Polls a tuning job until it ends, showing a progress bar of finished trials and the best
/// objective so far; returns the final description.
/// How long `tuning-jobs watch` keeps trying a coordinator that does not answer.
const WATCH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

async fn watch(
    client: &mut HyperParameterTuningClient<Transport>,
    name: &str,
    show: bool,
    connection: Connection<'_>,
) -> anyhow::Result<api::DescribeHyperParameterTuningJobResponse> {
    let bar = indicatif::ProgressBar::new(0);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} trials  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // The coordinator may restart while a long job is watched, or another may take over the lead:
    // unreachable (or a standby now), the watch finds the leader again and retries (backing off to
    // 5 s) for up to WATCH_PATIENCE, and says so; any other error ends it.
    let mut unreachable_since: Option<std::time::Instant> = None;
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        let request =
            api::DescribeHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name.to_string()) };
        let d = match client
            .describe_hyper_parameter_tuning_job(pb::DescribeHyperParameterTuningJobRequest::from(request))
            .await
        {
            Ok(d) => d,
            Err(status) if connection_lost(&status) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    bar.suspend(|| eprintln!("the coordinator does not answer ({}); retrying", status.message()));
                    std::time::Instant::now()
                });
                if since.elapsed() > WATCH_PATIENCE {
                    return Err(status.into());
                }
                tokio::time::sleep(backoff).await;
                if let Ok(transport) = connect(connection).await {
                    *client = HyperParameterTuningClient::new(transport);
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        if unreachable_since.take().is_some() {
            bar.suspend(|| eprintln!("the coordinator answers again"));
            backoff = std::time::Duration::from_millis(500);
        }
        let d = api::DescribeHyperParameterTuningJobResponse::from(d.into_inner());
        let c = d.training_job_status_counters.clone().unwrap_or_default();
        let n = |v: Option<i32>| v.unwrap_or(0) as u64;
        let finished = n(c.completed) + n(c.stopped) + n(c.non_retryable_error) + n(c.retryable_error);
        let total = d
            .hyper_parameter_tuning_job_config
            .as_ref()
            .and_then(|c| c.resource_limits.as_ref())
            .and_then(|l| l.max_number_of_training_jobs)
            .map_or(finished + n(c.in_progress), |m| m as u64);
        bar.set_length(total);
        bar.set_position(finished);
        let best = d.best_training_job.as_ref().and_then(|b| {
            Some((b.training_job_name.clone()?, b.final_hyper_parameter_tuning_job_objective_metric.as_ref()?.value?))
        });
        let status = d.hyper_parameter_tuning_job_status.clone().unwrap_or_default();
        bar.set_message(match &best {
            Some((trial, value)) => format!("{status}, {} running, best {value} ({trial})", n(c.in_progress)),
            None => format!("{status}, {} running", n(c.in_progress)),
        });
        if matches!(status.as_str(), "Completed" | "Failed" | "Stopped") {
            bar.finish();
            return Ok(d);
        }
        bar.tick();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn tuning(
    mut client: HyperParameterTuningClient<Transport>,
    cmd: TuningCommand,
    out: Output,
    connection: Connection<'_>,
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
            let request = api::ListHyperParameterTuningJobsRequest {
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
            let (all, next) = collect_pages(request.next_token.clone(), args.all, async |next_token| {
                let page = api::ListHyperParameterTuningJobsRequest { next_token, ..request.clone() };
                let page = client
                    .list_hyper_parameter_tuning_jobs(pb::ListHyperParameterTuningJobsRequest::from(page))
                    .await?;
                let page = api::ListHyperParameterTuningJobsResponse::from(page.into_inner());
                Ok((page.hyper_parameter_tuning_job_summaries.unwrap_or_default(), page.next_token))
            })
            .await?;
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
        TuningCommand::Delete { name } => {
            let request =
                api::DeleteHyperParameterTuningJobRequest { hyper_parameter_tuning_job_name: Some(name.clone()) };
            client.delete_hyper_parameter_tuning_job(pb::DeleteHyperParameterTuningJobRequest::from(request)).await?;
            if out == Output::Table {
                println!("deleted {name}");
            }
        }
        TuningCommand::Watch { name } => {
            let described = watch(&mut client, &name, out == Output::Table, connection).await?;
            match out {
                Output::Json => output::json(&described),
                Output::Table => output::describe_tuning_job(&described),
            }
        }
        TuningCommand::Trials(args) => {
            let request = api::ListTrainingJobsForHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(args.name),
                max_results: args.max_results,
                next_token: args.next_token,
                sort_by: args.sort_by,
                sort_order: args.sort_order,
                status_equals: args.status,
            };
            let (all, next) = collect_pages(request.next_token.clone(), args.all, async |next_token| {
                let page = api::ListTrainingJobsForHyperParameterTuningJobRequest { next_token, ..request.clone() };
                let page = client
                    .list_training_jobs_for_hyper_parameter_tuning_job(
                        pb::ListTrainingJobsForHyperParameterTuningJobRequest::from(page),
                    )
                    .await?;
                let page = api::ListTrainingJobsForHyperParameterTuningJobResponse::from(page.into_inner());
                Ok((page.training_job_summaries.unwrap_or_default(), page.next_token))
            })
            .await?;
            let response = api::ListTrainingJobsForHyperParameterTuningJobResponse {
                training_job_summaries: Some(all),
                next_token: next,
            };
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::list_trials(&response),
            }
        }
        TuningCommand::Results { name, page_size } => {
            let mut first: Option<pb::GetTuningJobTrialsResponse> = None;
            let mut token = String::new();
            loop {
                let page = client
                    .get_tuning_job_trials(pb::GetTuningJobTrialsRequest {
                        hyper_parameter_tuning_job_name: name.clone(),
                        next_token: token,
                        max_trials: page_size,
                    })
                    .await?
                    .into_inner();
                token = page.next_token.clone();
                match &mut first {
                    Some(all) => all.trials.extend(page.trials),
                    None => first = Some(page),
                }
                if token.is_empty() {
                    break;
                }
            }
            let all = first.unwrap_or_default();
            match out {
                Output::Json => output::trial_results_json(&name, &all),
                Output::Table => output::trial_results(&all),
            }
        }
    }
    Ok(())
}

async fn training(mut client: TrainingClient<Transport>, cmd: TrainingCommand, out: Output) -> anyhow::Result<()> {
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
            let request = api::ListTrainingJobsRequest {
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
            let (all, next) = collect_pages(request.next_token.clone(), args.all, async |next_token| {
                let page = api::ListTrainingJobsRequest { next_token, ..request.clone() };
                let page = client.list_training_jobs(pb::ListTrainingJobsRequest::from(page)).await?;
                let page = api::ListTrainingJobsResponse::from(page.into_inner());
                Ok((page.training_job_summaries.unwrap_or_default(), page.next_token))
            })
            .await?;
            let response = api::ListTrainingJobsResponse { training_job_summaries: Some(all), next_token: next };
            match out {
                Output::Json => output::json(&response),
                Output::Table => output::list_training_jobs(&response),
            }
        }
        TrainingCommand::Logs { name, follow } => {
            let mut after = 0;
            loop {
                let page = client
                    .get_training_job_logs(pb::GetTrainingJobLogsRequest {
                        training_job_name: name.clone(),
                        after_sequence: after,
                        max_lines: 0,
                    })
                    .await?
                    .into_inner();
                let count = page.lines.len();
                for line in page.lines {
                    after = line.sequence;
                    match out {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"sequence": line.sequence, "instance": line.instance, "stream": line.stream,
                                               "timestamp": line.timestamp_millis as f64 / 1000.0, "text": line.text})
                        ),
                        Output::Table if line.instance > 1 => println!("[algo-{}] {}", line.instance, line.text),
                        Output::Table => println!("{}", line.text),
                    }
                }
                if count > 0 {
                    continue; // there may be more right away
                }
                if !follow || page.ended {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        TrainingCommand::Metrics { name, metric } => {
            let mut series: Vec<pb::MetricSeries> = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .get_training_job_metrics(pb::GetTrainingJobMetricsRequest {
                        training_job_name: name.clone(),
                        metric_name: metric.clone().unwrap_or_default(),
                        next_token: token,
                        max_samples: 0,
                    })
                    .await?
                    .into_inner();
                for part in page.series {
                    // A series may go on from one page to the next.
                    match series.last_mut() {
                        Some(last) if last.metric_name == part.metric_name => last.points.extend(part.points),
                        _ => series.push(part),
                    }
                }
                if page.next_token.is_empty() {
                    break;
                }
                token = page.next_token;
            }
            match out {
                Output::Json => output::metrics_json(&name, &series),
                Output::Table => output::metrics(&series),
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

#[cfg(test)]
mod tests {
    use super::connection_lost;

    /// What a watch retries: a coordinator that cannot be reached, or that died while it answered;
    /// not an answer it gave.
    #[test]
    fn a_connection_cut_mid_answer_is_lost_and_an_answer_is_not() {
        assert!(connection_lost(&tonic::Status::unavailable("connection refused")));
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed connection");
        let status = tonic::Status::from_error(Box::new(cut));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert!(connection_lost(&status), "{status:?}");
        assert!(connection_lost(&tonic::Status::unknown("h2 protocol error: stream no longer needed")));
        assert!(!connection_lost(&tonic::Status::unknown("something the server said")));
        assert!(!connection_lost(&tonic::Status::not_found("no such tuning job")));
        assert!(!connection_lost(&tonic::Status::invalid_argument("bad name")));
    }
}
