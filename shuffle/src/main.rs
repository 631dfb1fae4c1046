//! `kshuffled`: the kshuffle daemon. Parses flags, sets up logging, binds, and runs
//! [`kshuffle::Server`] until SIGTERM/SIGINT (a second signal exits at once).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kshuffle::registry::MemoryRegistry;
use kshuffle::{Config, Server};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Exit status for a bad configuration (BSD `EX_USAGE`).
const EX_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "kshuffled",
    version,
    about = "External shuffle service for Apache Spark"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "KSHUFFLE_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Port to listen on (Spark's `spark.shuffle.service.port`; 0 picks a free port).
    #[arg(long, env = "KSHUFFLE_PORT", default_value_t = 7337)]
    port: u16,
    /// Directory executors' local dirs must be inside (repeat or comma-separate for several).
    /// Created if missing.
    #[arg(
        long = "allowed-root",
        env = "KSHUFFLE_ALLOWED_ROOTS",
        value_delimiter = ',',
        required = true
    )]
    allowed_roots: Vec<PathBuf>,
    /// Log filter (`info`, `debug`, `kshuffle=debug,warn`, …); `RUST_LOG` overrides it.
    #[arg(long, env = "KSHUFFLE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "KSHUFFLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Largest incoming frame in bytes.
    #[arg(long, env = "KSHUFFLE_MAX_FRAME_BYTES", default_value_t = kshuffle::wire::DEFAULT_MAX_FRAME_LEN_BYTES)]
    max_frame_bytes: usize,
    /// Most concurrent connections.
    #[arg(long, env = "KSHUFFLE_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Most open streams per connection.
    #[arg(
        long,
        env = "KSHUFFLE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 4096
    )]
    max_streams_per_connection: usize,
    /// Close connections idle this long (e.g. `120s`, `2m`, `500ms`).
    #[arg(long, env = "KSHUFFLE_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Close connections whose replies make no progress this long.
    #[arg(long, env = "KSHUFFLE_WRITE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// On shutdown, how long open streams may still be served.
    #[arg(long, env = "KSHUFFLE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Bound of the index-file cache, in bytes.
    #[arg(long, env = "KSHUFFLE_INDEX_CACHE_BYTES", default_value_t = 100 * 1024 * 1024)]
    index_cache_bytes: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 2m, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    }
}

fn init_tracing(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => tracing_subscriber::EnvFilter::try_new(env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid log filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let Args {
        bind: _,
        port: _,
        allowed_roots,
        log_level: _,
        log_format: _,
        max_frame_bytes,
        max_connections,
        max_streams_per_connection,
        idle_timeout,
        write_timeout,
        shutdown_grace,
        index_cache_bytes,
    } = args;
    anyhow::ensure!(
        *max_frame_bytes >= 1024,
        "--max-frame-bytes must be at least 1024"
    );
    anyhow::ensure!(*max_connections > 0, "--max-connections must be positive");
    anyhow::ensure!(
        *max_streams_per_connection > 0,
        "--max-streams-per-connection must be positive"
    );
    anyhow::ensure!(!idle_timeout.is_zero(), "--idle-timeout must be positive");
    anyhow::ensure!(!write_timeout.is_zero(), "--write-timeout must be positive");
    for root in allowed_roots {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create allowed root {}", root.display()))?;
    }
    Ok(Config {
        allowed_roots: allowed_roots.clone(),
        max_frame_len_bytes: *max_frame_bytes,
        max_connections: *max_connections,
        max_streams_per_connection: *max_streams_per_connection,
        idle_timeout: *idle_timeout,
        write_timeout: *write_timeout,
        shutdown_grace_period: *shutdown_grace,
        index_cache_bytes: *index_cache_bytes,
    })
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
    let config = match config(&args) {
        Ok(c) => c,
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
    if let Err(e) = runtime.block_on(run(SocketAddr::new(args.bind, args.port), config)) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(addr: SocketAddr, config: Config) -> anyhow::Result<()> {
    let server = Server::new(config, Arc::new(MemoryRegistry::new()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let roots: Vec<String> = server
        .roots()
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    info!(addr = %local, roots = ?roots, "listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let stats = server.run(listener, shutdown).await;
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
