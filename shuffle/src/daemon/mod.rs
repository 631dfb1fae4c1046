//! The daemon as a whole, for the binaries that run it: `kshuffled`, and the Kubernetes
//! deployments that embed it (`kshuffle-node` adds a driver-pod watch, `kshuffle-sidecar`
//! keeps serving until the driver ends).
//!
//! [`run`] loads the registry, binds the shuffle and admin ports, and serves until shutdown;
//! an embedding binary flattens [`DaemonArgs`] into its own parser and gets a [`Running`]
//! handle to add its tasks. The start every binary's `main` shares is here too
//! ([`parse_args_or_exit`], [`start_or_exit`]); what else a binary does before or after
//! [`run`], and the exit code it makes of [`run`]'s error ([`exit_code`]), stay in it.

mod args;
pub mod congestion;
pub mod limits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::args::{DaemonArgs, LogFormat, SecretFormatArg, Settings, parse_duration};
use crate::Server;
use crate::admin::{self, AdminState};
use crate::handler::Service;
use crate::registry::JournalRegistry;

/// Exit status for a bad configuration (BSD `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// How often the metrics exporter's queued histogram samples are drained (besides scrapes):
/// often, so the queue (~18 bytes per chunk served) and each drain stay small.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The flags are invalid (a usage error: the binary exits with [`EX_USAGE`]).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0:#}")]
pub struct InvalidConfig(anyhow::Error);

/// The exit status for an error from [`run`]: [`EX_USAGE`] for invalid flags, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.is::<InvalidConfig>() {
        EX_USAGE
    } else {
        1
    }
}

/// What an embedding binary gets once the daemon is serving.
#[derive(Clone)]
pub struct Running {
    /// The request handler and store; `service.store.remove_app(app)` is the one cleanup
    /// path (blocking: call it from `spawn_blocking`).
    pub service: Arc<Service>,
    /// Cancel to stop the daemon gracefully; [`run`] returns once it has stopped.
    pub shutdown: CancellationToken,
    /// Cancelled at the first SIGTERM or SIGINT.
    pub signalled: CancellationToken,
}

/// How [`run`] behaves beyond its flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The first SIGTERM/SIGINT only cancels [`Running::signalled`]; the embedder decides
    /// when to cancel [`Running::shutdown`]. A second signal always stops at once.
    pub keep_serving_on_signal: bool,
}

/// Sets up logging to stderr: `level` is a filter (`info`, `kshuffle=debug,warn`), which
/// `RUST_LOG` overrides. A line that cannot be written (stderr a pipe nobody reads) is
/// dropped; the daemon serves on.
///
/// # Errors
/// An invalid filter, or a subscriber already installed.
pub fn init_tracing(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => tracing_subscriber::EnvFilter::try_new(env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .with_context(|| format!("--log-level: invalid filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is lost, nothing more. Reporting it (the default)
        // prints to stderr with `eprintln!`, which panics when stderr is a closed pipe (its
        // reader gone): the task logging it, the signal handler included, would die.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Parses the command line of one of kshuffle's daemon binaries, or exits: help and
/// version go to stdout and exit 0; every real usage error is printed and exits
/// [`EX_USAGE`].
pub fn parse_args_or_exit<C: clap::Parser>() -> C {
    C::try_parse().unwrap_or_else(|e| {
        let usage = e.use_stderr();
        let _ = e.print();
        std::process::exit(if usage { EX_USAGE } else { 0 });
    })
}

/// Installs the log subscriber ([`init_tracing`]) and builds the multi-threaded runtime a
/// daemon binary runs on, or exits: [`EX_USAGE`] for a bad log filter (printed as
/// `<binary>: <error>`), 1 when the runtime cannot start.
pub fn start_or_exit(
    binary: &str,
    log_level: &str,
    log_format: LogFormat,
) -> tokio::runtime::Runtime {
    if let Err(e) = init_tracing(log_level, log_format) {
        eprintln!("{binary}: {e:#}");
        std::process::exit(EX_USAGE);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            std::process::exit(1);
        }
    }
}

/// Runs the daemon until it is shut down (a signal, or [`Running::shutdown`]). `embed` is
/// called once, inside the runtime, when both ports are bound and the registry is loaded:
/// spawn the embedder's tasks there.
///
/// # Errors
/// Invalid flags ([`InvalidConfig`]; see [`exit_code`]), a registry that cannot be opened, ports that cannot be bound, or a second
/// signal (the daemon stopped without draining).
pub async fn run(
    args: &DaemonArgs,
    options: Options,
    embed: impl FnOnce(Running) + Send,
) -> anyhow::Result<()> {
    run_with_secrets(args, options, None, embed).await
}

/// As [`run`], with `secrets` consulted before any secret file of the flags: given, every
/// connection must authenticate (`spark.authenticate`) even without `--auth-secret-file` /
/// `--auth-secrets-dir`, as [`DaemonArgs::settings_with_secrets`] says. `kshuffle-node`
/// passes the secrets it learns from executor pods.
///
/// # Errors
/// As [`run`].
pub async fn run_with_secrets(
    args: &DaemonArgs,
    options: Options,
    secrets: Option<Arc<dyn crate::auth::SecretSource>>,
    embed: impl FnOnce(Running) + Send,
) -> anyhow::Result<()> {
    let settings = args
        .settings_with_secrets(secrets)
        .map_err(|e| anyhow::Error::new(InvalidConfig(e)))?;
    let tcp_congestion_control = congestion::resolve(args.tcp_congestion_control.as_deref())
        .map_err(|e| anyhow::Error::new(InvalidConfig(e)))?;
    match limits::raise_open_files_limit() {
        Ok(files) => {
            info!(before = ?files.before, now = ?files.now, "open-files limit raised to the hard limit");
            // Each connection is a descriptor, and so is each data file kept open.
            let config = &settings.config;
            let needed = config
                .max_connections
                .saturating_add(config.open_data_files);
            let needed = u64::try_from(needed).unwrap_or(u64::MAX);
            if files
                .now
                .is_some_and(|soft| soft < needed.saturating_add(64))
            {
                warn!(limit = ?files.now, max_connections = config.max_connections,
                    open_data_files = config.open_data_files,
                    "the open-files limit is below --max-connections plus --open-data-files: accepts or opens will fail before those caps");
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
    // Fixed buckets: every histogram is a handful of counters once drained.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&crate::metrics::LATENCY_BUCKETS_SECONDS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // The exporter queues every histogram sample until it is drained, by a scrape or by
    // upkeep: drain it regularly so an unscraped daemon's memory stays flat.
    let upkeep = prometheus.clone();
    let shutdown = CancellationToken::new();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(crate::metrics::drain_periodically(
        METRICS_UPKEEP_INTERVAL,
        upkeep_stop,
        move || upkeep.run_upkeep(),
    ));
    let state_dir = settings.state_dir.clone();
    let (registry, recovery) =
        tokio::task::spawn_blocking(move || JournalRegistry::open(&state_dir))
            .await?
            .with_context(|| {
                format!(
                    "cannot open the registry in --state-dir {}",
                    settings.state_dir.display()
                )
            })?;
    metrics::gauge!("kshuffle_registry_recovered_with_loss").set(
        if recovery.moved_aside.is_some() {
            1.0
        } else {
            0.0
        },
    );
    if let Some(certs) = &settings.tls_certs {
        tokio::spawn(
            Arc::clone(certs).reload_periodically(args.tls_reload_interval, shutdown.clone()),
        );
    }
    let tls = settings.config.tls.is_some();
    let mut config = settings.config;
    config.tcp_congestion_control = tcp_congestion_control;
    let server = Server::new(config, Arc::new(registry))?;

    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let admin_addr = SocketAddr::new(args.admin_bind, args.admin_port);
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin address {admin_addr}"))?;
    let admin = AdminState::new(
        server.service(),
        settings.admin_token,
        Some(prometheus),
        settings.sweep.clone(),
        args.rdd_fetch_enabled,
    );
    let ready = Arc::clone(admin.ready());
    let roots: Vec<String> = server
        .roots()
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    // Signal handlers are installed before "listening" is logged: whoever waits for that
    // line may send SIGTERM at once, which must reach the handler, not kill the process.
    let handlers = SignalHandlers::install();
    // Ready before "listening" is logged: whoever waits for that line may probe at once
    // (both ports are bound and the registry is loaded; the admin server answers as soon
    // as it runs).
    ready.store(true, Ordering::Relaxed);
    info!(addr = %listener.local_addr()?, admin_addr = %admin_listener.local_addr()?, roots = ?roots,
        state_dir = %settings.state_dir.display(), executors = recovery.executors, tls, "listening");

    let signalled = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    tokio::spawn(signals(
        handlers,
        signalled.clone(),
        (!options.keep_serving_on_signal).then(|| shutdown.clone()),
        hard_stop.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin, shutdown.child_token()));
    let server = Arc::new(server);
    if !settings.sweep_interval.is_zero() {
        let (server, token) = (Arc::clone(&server), shutdown.child_token());
        tokio::spawn(async move {
            server
                .sweep_periodically(settings.sweep, settings.sweep_interval, token)
                .await
        });
    }
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        ready.store(false, Ordering::Relaxed);
    });
    embed(Running {
        service: server.service(),
        shutdown: shutdown.clone(),
        signalled,
    });
    let stats = tokio::select! {
        stats = server.run(listener, shutdown.clone()) => stats,
        () = hard_stop.cancelled() => anyhow::bail!("second signal: stopped without draining"),
    };
    if let Ok(Err(e)) = admin_task.await {
        warn!(error = %e, "admin server failed");
    }
    info!(
        registrations = stats.registrations,
        open_blocks = stats.open_blocks,
        fetch_shuffle_blocks = stats.fetch_shuffle_blocks,
        batch_fetches = stats.batch_fetches,
        remove_blocks = stats.remove_blocks,
        blocks_removed = stats.blocks_removed,
        local_dirs_requests = stats.local_dirs_requests,
        chunks_served = stats.chunks_served,
        chunk_bytes = stats.chunk_bytes,
        streams_served = stats.streams_served,
        stream_bytes = stats.stream_bytes,
        rdd_blocks_served = stats.rdd_blocks_served,
        rpc_failures = stats.rpc_failures,
        chunk_failures = stats.chunk_failures,
        connections = stats.connections,
        connections_refused = stats.connections_refused,
        connection_errors = stats.connection_errors,
        diagnoses = stats.diagnoses,
        turns_yielded = stats.turns_yielded,
        rpcs_read_ahead = stats.rpcs_read_ahead,
        chunks_out_of_turn = stats.chunks_out_of_turn,
        tls_handshakes = stats.tls_handshakes,
        encrypted_connections = stats.encrypted_connections,
        "stopped"
    );
    Ok(())
}

/// SIGTERM and SIGINT streams, registered with the runtime when created.
struct SignalHandlers {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl SignalHandlers {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            warn!(error = %e, "cannot install signal handlers; stop with SIGKILL");
        }
        Self {
            term: term.ok(),
            int: int.ok(),
        }
    }
}

/// First SIGTERM/SIGINT: cancels `signalled` and, unless the embedder keeps serving,
/// `shutdown`. Second: cancels `hard_stop`.
async fn signals(
    handlers: SignalHandlers,
    signalled: CancellationToken,
    shutdown: Option<CancellationToken>,
    hard_stop: CancellationToken,
) {
    let SignalHandlers {
        term: Some(mut term),
        int: Some(mut int),
    } = handlers
    else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    signalled.cancel();
    match shutdown {
        Some(shutdown) => {
            info!("shutting down (signal again to exit at once)");
            shutdown.cancel();
        }
        None => info!(
            "signal received; serving on until the embedder stops (signal again to exit at once)"
        ),
    }
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    warn!("second signal: exiting now");
    hard_stop.cancel();
}
