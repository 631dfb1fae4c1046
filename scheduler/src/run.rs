//! The service: the scheduler plus its HTTP API, until shutdown. The binary's `main` parses
//! flags, initialises logging, binds the port and calls [`run`].

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::pods::Template;
use crate::scheduler::{self, Scheduler};

/// How long in-flight work may take after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler could not start.
    #[error(transparent)]
    Start(#[from] scheduler::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// A label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start(e) => e.kind(),
            Self::Serve(_) => "serve",
        }
    }
}

/// Writes `addr` (`ip:port`) to `path` whole: to a file beside it, then renamed, so a reader
/// never sees half of it.
///
/// # Errors
/// The file system's.
pub fn write_address_file(
    path: &std::path::Path,
    addr: std::net::SocketAddr,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Cancels `token` when standard input reaches its end (or fails): the parent holding the
/// other end of the pipe has closed it or is gone. Anything written is ignored. The blocking
/// read runs on a thread of its own, never on the runtime's.
pub fn cancel_at_stdin_eof(token: CancellationToken) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
        tracing::info!("standard input closed: shutting down");
        token.cancel();
    });
}

/// Runs the scheduler and serves its API on `listener` until `shutdown`; with `api_token`,
/// the allocation API needs it as a bearer token ([`crate::http::require_token`]).
///
/// # Errors
/// When the scheduler cannot start (e.g. no driver pod) or the server fails.
pub async fn run(
    client: kube::Client,
    config: Config,
    template: Option<Template>,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    api_token: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let tasks = TaskTracker::new();
    let sched = Scheduler::start(client, &config, template, &tasks, shutdown.child_token()).await?;
    tracing::info!(app = %config.app_id, addr = ?listener.local_addr().ok(), "scheduler started");
    let events = crate::events::EventLog::default();
    tasks.spawn(events.clone().fill(sched.events(), shutdown.child_token()));
    let mut app = crate::http::router(sched, metrics, events);
    if let Some(token) = api_token {
        app = crate::http::require_token(app, token);
    }
    let token = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    shutdown.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running after the shutdown grace period");
    }
    served.map_err(Error::Serve)
}
