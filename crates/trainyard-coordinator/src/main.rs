//! `trainyard-coordinator`: loads the configuration, opens the store, starts the event loop and
//! serves the gRPC API until SIGTERM or SIGINT; then stops accepting, drains, and stops the loop.

mod agents;
mod config;
mod core;
mod events;
mod grpc;
mod liveness;
mod sagemaker;
mod sigv4;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::info;
use trainyard_proto::pb::agents_server::AgentsServer;
use trainyard_proto::pb::hyper_parameter_tuning_server::HyperParameterTuningServer;
use trainyard_proto::pb::training_server::TrainingServer;

use crate::config::{Config, Flags, LogFormat};

/// The largest request or agent message accepted (gRPC `OutOfRange` beyond). A maximal valid
/// CreateTrainingJob is far smaller; agents keep their log batches under a quarter of it.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Flags::parse())?;
    init_tracing(config.log_format);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    // The CA issues the certificates of distributed jobs' encrypted peer traffic.
    let authority = Arc::new(
        trainyard_pki::Authority::load_or_create(&config.data_dir.join("pki"))
            .context("loading the coordinator's CA")?,
    );
    let store = trainyard_store::connect(&config.database_url)
        .await
        .with_context(|| format!("opening the store at {}", redact(&config.database_url)))?;

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let coordinator = Arc::new(
        core::Coordinator::start(
            store,
            config.catalog.clone(),
            config.limits.clone(),
            config.arns.clone(),
            events_tx.clone(),
        )
        .await
        .context("reading the store")?,
    );
    let cancel = CancellationToken::new();
    let liveness = liveness::Liveness::default();
    let timing =
        events::Timing { heartbeat_interval: config.heartbeat_interval, agent_lost_after: config.agent_lost_after };
    let event_loop =
        tokio::spawn(events::run(coordinator.clone(), authority, liveness.clone(), timing, events_rx, cancel.clone()));
    let agent_service = agents::AgentService {
        coordinator: coordinator.clone(),
        events: events_tx.clone(),
        sessions: std::sync::atomic::AtomicU64::new(0),
        liveness: liveness.clone(),
    };

    let sagemaker = config.sagemaker_listen.map(|address| {
        let endpoint = sagemaker::Endpoint { coordinator: coordinator.clone(), keys: config.access_keys.clone() };
        tokio::spawn(sagemaker::serve(endpoint, address, cancel.clone()))
    });
    info!(addr = %config.listen, database = %redact(&config.database_url), instance_types = config.catalog.len(), "coordinator listening");
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            wait_for_signal().await;
            info!("shutting down: no new requests; draining the ones in flight");
            cancel.cancel();
        }
    };
    let served = Server::builder()
        .add_service(
            HyperParameterTuningServer::new(grpc::TuningService(coordinator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            TrainingServer::new(grpc::TrainingService(coordinator)).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AgentsServer::new(agent_service).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_shutdown(config.listen, shutdown)
        .await
        .with_context(|| format!("serving on {}", config.listen));
    cancel.cancel();
    if let Some(task) = sagemaker {
        task.await.context("SageMaker endpoint")??;
    }
    event_loop.await.context("event loop")?;
    served?;
    info!("coordinator stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
