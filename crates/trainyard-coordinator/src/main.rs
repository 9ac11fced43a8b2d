//! `trainyard-coordinator`: loads the configuration, opens the store, starts the event loop and
//! serves the gRPC API (TLS; plain text only with `--insecure` on loopback) until SIGTERM or
//! SIGINT; then stops accepting, drains, and stops the loop. With a subcommand (`tokens ...`,
//! `join-token`) it administers the same data directory and database instead, and exits.

mod access;
mod admin;
mod agents;
mod audit;
mod auth;
mod config;
mod core;
mod dashboard;
mod events;
mod group_commit;
mod grpc;
mod health;
mod held_logs;
mod https;
mod inbox;
mod leadership;
mod liveness;
mod retention;
mod sagemaker;
mod sealing;
mod sigv4;
mod telemetry;
mod timed_store;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};
use trainyard_proto::pb::access_server::AccessServer;
use trainyard_proto::pb::agents_server::AgentsServer;
use trainyard_proto::pb::hyper_parameter_tuning_server::HyperParameterTuningServer;
use trainyard_proto::pb::training_server::TrainingServer;

use crate::config::{Config, Flags, LogFormat};

/// mimalloc rather than glibc's malloc: an API call allocates and frees hundreds of small strings
/// and maps (a request, its validation, its JSON), and `scripts/bench --suites creates` measured
/// the difference (BENCHMARKS.md, creates).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest request or agent message accepted (gRPC `OutOfRange` beyond). A maximal valid
/// CreateTrainingJob is far smaller; agents keep their log batches under a quarter of it.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut flags = Flags::parse();
    let command = flags.command.take();
    let config = Config::load(flags)?;
    // Held to the end of main: dropping it writes the lines still queued.
    let log_writer = init_tracing(config.log_format);
    without_transparent_huge_pages();
    // One TLS provider for the process, before any TLS configuration is built.
    trainyard_pki::install_crypto_provider();
    let http_listeners: Vec<std::net::SocketAddr> =
        [config.sagemaker_listen, config.dashboard_listen].into_iter().flatten().collect();
    if config.insecure && (!config.listen.ip().is_loopback() || http_listeners.iter().any(|a| !a.ip().is_loopback())) {
        anyhow::bail!(
            "--insecure serves without TLS or tokens: it is allowed on loopback addresses only, not on {}{}",
            config.listen,
            http_listeners.iter().map(|a| format!(" / {a}")).collect::<String>()
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    // The CA's key, the sealing key and (on SQLite) the database: for the coordinator's user only.
    std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making the data directory {} private", config.data_dir.display()))?;
    // The CA: the coordinator's own certificate, agents' certificates, and the certificates of
    // distributed jobs' encrypted peer traffic.
    let authority = Arc::new(
        trainyard_pki::Authority::load_or_create(&config.data_dir.join("pki"))
            .context("loading the coordinator's CA")?,
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = telemetry::Metrics::register(&mut registry);
    let store = trainyard_store::connect(&config.database_url)
        .await
        .with_context(|| format!("opening the store at {}", redact(&config.database_url)))?;
    let store = timed_store::TimedStore::wrap(store, metrics.store_seconds.clone());
    let sealer = sealing::Sealer::load_or_create(&config.data_dir.join("pki")).context("the sealing key")?;
    let auth = Arc::new(auth::Auth::new(store.clone(), authority.clone(), sealer, !config.insecure));
    if let Some(command) = command {
        return admin::run(command, &store, &auth, &config).await;
    }
    let _lock = leadership::lock_data_dir(&config.data_dir)?;
    if !config.roles.enforced() {
        warn!(
            "no [[roles]] configured: RoleArn is not enforced (jobs may read and write every bucket the agents reach)"
        );
    }
    for arn in config.roles.with_ignored_user() {
        warn!(
            role = arn,
            "the role's `user` is no longer used: every instance runs as a uid of its own on its agent (a role's `group` is added to it); remove `user`"
        );
    }

    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down: no new requests; draining the ones in flight");
            cancel.cancel();
        });
    }
    let readiness = trainyard_telemetry::Readiness::new("the store has not answered yet");
    trainyard_telemetry::spawn(config.metrics_listen, registry, readiness.clone(), cancel.clone());
    // Under --insecure no certificate is issued: nothing would present it.
    let credential = match config.insecure {
        true => None,
        false => Some(server_credential(&authority, &config)?),
    };

    // Bound once, first: an address in use stops the coordinator at start, and the standby's
    // server and the leader's accept on the same socket, so the address is never free between them
    // for another process to take (and for clients to reach in its place).
    let grpc_listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("listening on {}", config.listen))?;
    let listen = grpc_listener.local_addr().context("the gRPC listener's address")?;

    // Only the leader goes further; the others stand by until the lease is theirs.
    let claim = leadership::Claim {
        holder: leadership::holder_id(&config.data_dir)?,
        address: config.advertised(listen),
        lease: config.leader_lease,
    };
    let Some(epoch) = stand_by(&store, &claim, credential.as_ref(), &grpc_listener, &readiness, &cancel).await? else {
        info!("stopped while standing by");
        return Ok(());
    };
    info!(epoch, address = %claim.address, "leading: this coordinator places the work of every coordinator on this database");
    metrics.leader.set(1);
    let stop_holding = CancellationToken::new();
    // On SQLite nobody else can take over: the leader waits out any trouble with its database.
    let patience = match store.backend() {
        trainyard_store::Backend::Postgres => Some(config.leader_lease * 3),
        trainyard_store::Backend::Sqlite => None,
    };
    let mut holding =
        tokio::spawn(leadership::hold(store.clone(), epoch, config.leader_lease, patience, stop_holding.clone()));

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let coordinator = Arc::new(
        core::Coordinator::start(
            store.clone(),
            config.catalog.clone(),
            config.limits.clone(),
            config.arns.clone(),
            config.roles.clone(),
            events_tx.clone(),
        )
        .await
        .context("reading the store")?,
    );
    // Log lines an earlier run held when it ended (its store was away) come first.
    let held_logs_file = config.data_dir.join(HELD_LOGS_FILE);
    coordinator.restore_held_logs(&held_logs_file).await;
    let spooler = coordinator.clone();
    let liveness = liveness::Liveness::default();
    let timing = events::Timing {
        heartbeat_interval: config.heartbeat_interval,
        agent_lost_after: config.agent_lost_after,
        agent_lease: config.agent_lease,
    };
    let event_loop = tokio::spawn(events::run(
        coordinator.clone(),
        metrics.clone(),
        authority.clone(),
        liveness.clone(),
        timing,
        events_rx,
        cancel.clone(),
    ));
    let agent_service = agents::AgentService {
        coordinator: coordinator.clone(),
        auth: auth.clone(),
        events: events_tx.clone(),
        sessions: std::sync::atomic::AtomicU64::new(0),
        liveness: liveness.clone(),
        lease: config.agent_lease,
        lost_after: config.agent_lost_after,
    };

    let http_tls = match &credential {
        None => None,
        Some(credential) => Some(
            http_tls(credential).context("configuring TLS for the SageMaker-compatible endpoint and the dashboard")?,
        ),
    };
    // Bound here, before serving anything: an address in use stops the coordinator at start
    // instead of leaving it up without that listener.
    let bind = |address: std::net::SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("listening for the {what} on {address}"))
    };
    let sagemaker = match config.sagemaker_listen {
        Some(address) => {
            let listener = bind(address, "SageMaker-compatible endpoint").await?;
            let endpoint = sagemaker::Endpoint {
                coordinator: coordinator.clone(),
                keys: config.access_keys.clone(),
                auth: auth.clone(),
            };
            Some(tokio::spawn(sagemaker::serve(endpoint, listener, http_tls.clone(), cancel.clone())))
        }
        None => None,
    };
    let dashboard = match config.dashboard_listen {
        Some(address) => {
            let listener = bind(address, "dashboard").await?;
            let dashboard = dashboard::Dashboard { coordinator: coordinator.clone(), auth: auth.clone() };
            Some(tokio::spawn(dashboard::serve(dashboard, listener, http_tls.clone(), cancel.clone())))
        }
        None => None,
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(health::watch(store.clone(), health_reporter, readiness, cancel.clone()));
    tokio::spawn(retention::run(store.clone(), config.job_retention, config.log_retention, cancel.clone()));
    let mut server = Server::builder().layer(telemetry::RpcLayer(metrics.clone()));
    match credential {
        None => warn!(addr = %config.listen, "serving plain-text gRPC without authentication (--insecure)"),
        Some(credential) => server = server.tls_config(grpc_tls(credential)).context("configuring TLS")?,
    }
    let incoming = incoming(&grpc_listener).with_context(|| format!("serving on {listen}"))?;
    info!(addr = %listen, tls = !config.insecure, database = %redact(&config.database_url), instance_types = config.catalog.len(), "coordinator listening");
    let serving = server
        .add_service(
            HyperParameterTuningServer::new(grpc::TuningService(coordinator.clone(), auth.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            TrainingServer::new(grpc::TrainingService(coordinator, auth.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AgentsServer::new(agent_service).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(AccessServer::new(access::AccessService { auth, events: events_tx.clone() }))
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    let served = tokio::select! {
        served = serving => served.with_context(|| format!("serving on {listen}")),
        held = &mut holding => {
            let reason = match held {
                Ok(Err(reason)) => reason,
                Ok(Ok(())) => anyhow::anyhow!("the lease was released"),
                Err(e) => anyhow::Error::new(e),
            };
            // At once, without draining: whatever this process would still do is another leader's now.
            error!(error = %format!("{reason:#}"), "stepping down: this coordinator no longer leads; exiting (restart it to stand by)");
            spooler.spool_held_logs(&held_logs_file);
            // exit() runs no destructor: the queued log lines (the one above) are written first.
            drop(log_writer);
            std::process::exit(3);
        }
    };
    cancel.cancel();
    if let Some(task) = sagemaker {
        task.await.context("SageMaker endpoint")??;
    }
    if let Some(task) = dashboard {
        task.await.context("dashboard")??;
    }
    event_loop.await.context("event loop")?;
    spooler.spool_held_logs(&held_logs_file);
    stop_holding.cancel();
    holding.await.context("lease")??;
    served?;
    info!("coordinator stopped");
    Ok(())
}

/// Where log lines the store has not taken yet are kept when the coordinator ends, in its data
/// directory.
const HELD_LOGS_FILE: &str = "held-logs.json";

/// Connections accepted on the coordinator's gRPC socket (a handle of its own: the standby's
/// server closes its handle when it stops, the socket stays open for the leader's).
fn incoming(listener: &std::net::TcpListener) -> anyhow::Result<tonic::transport::server::TcpIncoming> {
    let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    Ok(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
}

/// Returns at once with the lease when it is free (one coordinator, or the leader restarting);
/// otherwise stands by: serves every gRPC call on `listener` with UNAVAILABLE naming the leader
/// until the lease is ours (the epoch), and stops serving before the leader's server accepts on
/// the same socket. None when stopped meanwhile.
async fn stand_by(
    store: &Arc<dyn trainyard_store::Store>,
    claim: &leadership::Claim,
    credential: Option<&trainyard_pki::Credential>,
    listener: &std::net::TcpListener,
    readiness: &trainyard_telemetry::Readiness,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<i64>> {
    if let Some(epoch) = store
        .acquire_leadership(&claim.holder, &claim.address, claim.lease)
        .await
        .context("taking the leader's lease")?
    {
        return Ok(Some(epoch));
    }
    readiness.not_ready("a standby: another coordinator leads");
    let hint = leadership::LeaderHint::default();
    let mut server = Server::builder();
    if let Some(credential) = credential {
        server = server.tls_config(grpc_tls(credential.clone())).context("configuring TLS")?;
    }
    let (_, health) = tonic_health::server::health_reporter();
    let stop = CancellationToken::new();
    let listen = listener.local_addr().context("the gRPC listener's address")?;
    let serving = tokio::spawn(
        server
            .layer(leadership::StandbyLayer(hint.clone()))
            .add_service(health)
            .serve_with_incoming_shutdown(incoming(listener)?, stop.clone().cancelled_owned()),
    );
    info!(addr = %listen, "standing by");
    let epoch = leadership::campaign(store, claim, &hint, cancel).await;
    stop.cancel();
    serving.await.context("standby server")?.with_context(|| format!("serving on {listen}"))?;
    Ok(epoch)
}

/// The coordinator's certificate, re-issued at every start for `coordinator.trainyard` and the
/// names clients may dial.
fn server_credential(
    authority: &trainyard_pki::Authority,
    config: &Config,
) -> anyhow::Result<trainyard_pki::Credential> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let host = config::hostname();
    if !host.is_empty() {
        names.push(host);
    }
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    for address in [config.sagemaker_listen, config.dashboard_listen].into_iter().flatten() {
        if !address.ip().is_unspecified() {
            names.push(address.ip().to_string());
        }
    }
    names.extend(config.tls_names.iter().cloned());
    authority
        .issue_server_credential(&names, std::time::Duration::from_secs(365 * 24 * 3600))
        .context("issuing the coordinator's certificate")
}

/// TLS for the gRPC listener: client certificates optional (agents have one, the CLI uses a
/// token) and, when present, chained to our CA.
fn grpc_tls(credential: trainyard_pki::Credential) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(credential.certificate_pem, credential.key_pem))
        .client_ca_root(Certificate::from_pem(credential.ca_pem))
        .client_auth_optional(true)
        // A connection that never completes its handshake is closed, not kept forever.
        .timeout(https::HANDSHAKE_TIMEOUT)
}

/// TLS for the SageMaker-compatible endpoint (HTTP/1.1; SigV4 authenticates the requests).
fn http_tls(credential: &trainyard_pki::Credential) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(credential.certificate_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(credential.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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

/// Transparent huge pages off for this process. mimalloc asks for them on the memory it maps
/// (`madvise`, which hosts set to "madvise" honour), and a first touch there zeroes 2 MiB at once,
/// where the coordinator's many threads each use a little of many regions: a seventh of its CPU
/// under a burst of creates was the kernel zeroing such pages. Off, with the creates suite on
/// PostgreSQL (three alternating pairs, 2026-12-07): CPU per tuning-job create 170-174 -> 156-158
/// µs, 4,983-5,118 -> 5,299-5,370 creates a second. A kernel without the setting keeps them.
fn without_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only; it changes this process's memory policy.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "transparent huge pages stay on");
    }
}

/// Log lines go to stderr (the journal, as deployed). They are formatted where they are logged
/// and written by a thread of their own, through a buffer flushed whenever no line waits: a
/// burst of creates logs four lines each (the create, its audit line, two trials launched), and a
/// write(2) per line cost the API 4 % of its creates a second at the default level. Never lossy:
/// with 128,000 lines queued, loggers wait rather than lines being dropped.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
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
