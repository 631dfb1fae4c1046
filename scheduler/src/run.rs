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
