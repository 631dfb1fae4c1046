//! The accept loop and the daemon's lifecycle.
//!
//! [`Server::run`] takes an already-bound listener and a cancellation token, so tests bind
//! `127.0.0.1:0` and stop the server by cancelling. Connections are capped by a semaphore
//! (one over the cap is accepted and closed at once, so the client sees a prompt failure
//! rather than a hanging connect); accept errors (e.g. out of file descriptors) back off.
//!
//! Shutdown: stop accepting; connections finish the request at hand and close, except those
//! whose client still has streams open, which keep serving them for at most the grace
//! period; then everything left is dropped.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::budget::ByteBudget;
use crate::config::Config;
use crate::conn;
use crate::handler::Service;
use crate::registry::Registry;
use crate::stats::{Snapshot, Stats};
use crate::store::Store;
use crate::stream::StreamIds;

/// The shuffle server.
#[derive(Debug)]
pub struct Server {
    service: Arc<Service>,
}

impl Server {
    /// Builds the server over `registry`.
    ///
    /// # Errors
    /// When an allowed root is missing or cannot be canonicalized.
    pub fn new(config: Config, registry: Arc<dyn Registry>) -> io::Result<Self> {
        let store = Store::new(
            registry,
            &config.allowed_roots,
            config.index_cache_bytes,
            config.open_data_files,
        )?;
        let service = Service {
            store,
            stats: Stats::default(),
            stream_ids: StreamIds::new(),
            read_budget: ByteBudget::new(config.read_buffer_budget_bytes),
            stream_budget: Arc::new(ByteBudget::new(config.stream_budget_bytes)),
            config,
        };
        Ok(Self {
            service: Arc::new(service),
        })
    }

    /// The state shared with every connection (for the admin port).
    pub fn service(&self) -> Arc<Service> {
        Arc::clone(&self.service)
    }

    /// Runs the orphan sweep every `interval` until `shutdown`.
    pub async fn sweep_periodically(
        &self,
        options: crate::store::SweepOptions,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: skip it, so a restart does not sweep before the
        // executors that were running have had a chance to touch their files.
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let service = Arc::clone(&self.service);
            let opts = options.clone();
            let swept = tokio::task::spawn_blocking(move || {
                service.store.sweep(&opts, std::time::SystemTime::now())
            })
            .await;
            match swept {
                Ok(r) if !r.orphan_dirs.is_empty() || !r.idle_apps.is_empty() => info!(
                    orphan_dirs = r.orphan_dirs.len(),
                    idle_apps = r.idle_apps.len(),
                    deferred = r.deferred,
                    bytes = r.reclaimed.bytes,
                    dry_run = r.dry_run,
                    "sweep done"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "sweep task failed"),
            }
        }
    }

    /// The live counters.
    pub fn stats(&self) -> &Stats {
        &self.service.stats
    }

    /// The canonical allowed roots.
    pub fn roots(&self) -> &[std::path::PathBuf] {
        self.service.store.roots()
    }

    /// Serves `listener` until `shutdown` is cancelled, then drains (see the module docs)
    /// and returns the final counters.
    pub async fn run(&self, listener: TcpListener, shutdown: CancellationToken) -> Snapshot {
        let config = &self.service.config;
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let tracker = TaskTracker::new();
        let closer = tokio::spawn(close_idle_files(
            Arc::clone(&self.service),
            shutdown.clone(),
        ));
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(5);
                    pair
                }
                Err(e) => {
                    warn!(error = %e, ?backoff, "accept failed; backing off");
                    if crate::store::open_files::out_of_descriptors(&e) {
                        // Kept data files give way to connections (closed on the blocking
                        // pool: the last close of a deleted file frees its blocks).
                        let service = Arc::clone(&self.service);
                        tokio::task::spawn_blocking(move || service.store.open_files().shed());
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                Stats::inc(&self.service.stats.connections_refused);
                warn!(%peer, limit = config.max_connections, "connection limit reached; closing new connection");
                drop(socket);
                continue;
            };
            Stats::inc(&self.service.stats.connections);
            let service = Arc::clone(&self.service);
            let token = shutdown.child_token();
            tracker.spawn(async move {
                conn::serve(socket, peer, service, token).await;
                drop(permit);
            });
        }
        drop(listener);
        tracker.close();
        let open = tracker.len();
        if open > 0 {
            info!(connections = open, grace = ?config.shutdown_grace_period, "draining connections");
        }
        if tokio::time::timeout(config.shutdown_grace_period, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                connections = tracker.len(),
                "grace period over; dropping remaining connections"
            );
        }
        closer.abort();
        if let Err(e) = self.service.store.registry().flush() {
            warn!(error = %e, "cannot flush the registry");
        }
        self.service.stats.snapshot()
    }
}

/// How long a kept data-file descriptor may go unused before it is closed (an open
/// descriptor of a file Spark deleted holds its disk space).
pub const OPEN_FILE_IDLE: Duration = Duration::from_secs(10);

/// Closes kept data files unused for [`OPEN_FILE_IDLE`], checking every half of it, until
/// `shutdown`. On the blocking pool: closing the last descriptor of a deleted file frees
/// its blocks, which can take a while for a large one.
async fn close_idle_files(service: Arc<Service>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(OPEN_FILE_IDLE / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let service = Arc::clone(&service);
        let closed = tokio::task::spawn_blocking(move || {
            service.store.open_files().evict_idle(OPEN_FILE_IDLE)
        })
        .await;
        if let Ok(n) = closed
            && n > 0
        {
            tracing::debug!(closed = n, "closed idle data files");
        }
    }
}
