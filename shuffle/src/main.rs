//! `kshuffled`: the kshuffle daemon. Parses flags, sets up logging and metrics, loads the
//! registry, binds, and runs [`kshuffle::Server`] and the admin port until SIGTERM/SIGINT
//! (a second signal exits at once).

mod args;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use args::{Args, LogFormat, Settings};
use clap::Parser;
use kshuffle::Server;
use kshuffle::admin::{self, AdminState};
use kshuffle::registry::JournalRegistry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Exit status for a bad configuration (BSD `EX_USAGE`).
const EX_USAGE: i32 = 64;

fn init_tracing(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => tracing_subscriber::EnvFilter::try_new(env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .with_context(|| format!("--log-level: invalid filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() {
    let args = Args::try_parse().unwrap_or_else(|e| {
        let usage = e.use_stderr();
        let _ = e.print();
        // Help and version go to stdout and succeed; every real usage error is EX_USAGE.
        std::process::exit(if usage { EX_USAGE } else { 0 });
    });
    if let Err(e) = init_tracing(&args.log_level, args.log_format) {
        eprintln!("kshuffled: {e:#}");
        std::process::exit(EX_USAGE);
    }
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("invalid configuration: {e:#}");
            std::process::exit(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(&args, settings)) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(args: &Args, settings: Settings) -> anyhow::Result<()> {
    // Fixed buckets: every histogram is a handful of counters once drained.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&kshuffle::metrics::LATENCY_BUCKETS_SECONDS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // The exporter queues every histogram sample until it is drained, by a scrape or by
    // upkeep: drain it regularly so an unscraped daemon's memory stays flat.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
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
    let server = Server::new(settings.config, Arc::new(registry))?;

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
    info!(addr = %listener.local_addr()?, admin_addr = %admin_listener.local_addr()?, roots = ?roots,
        state_dir = %settings.state_dir.display(), executors = recovery.executors, "listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
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
    ready.store(true, Ordering::Relaxed);
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        ready.store(false, Ordering::Relaxed);
    });
    let stats = server.run(listener, shutdown).await;
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
        "stopped"
    );
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("shutting down (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    warn!("second signal: exiting now");
    std::process::exit(130);
}
