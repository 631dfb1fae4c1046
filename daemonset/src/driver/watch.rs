//! The I/O of the driver-pod watch, kept thin: `kube::runtime::watcher` over the API
//! server, events fed to the pure [`Tracker`], each decision scheduled for removal after the
//! cleanup delay, through the daemon's one removal path ([`Cleanup`]).
//!
//! Failure handling:
//! - a watch that expires (410 Gone/Expired) is relisted by the watcher; the tracker judges
//!   pods it had seen and the complete relist lacks as deleted;
//! - any other error (API server refused, 5xx, cut connection, a list that fails half-way)
//!   is counted, logged once per outage ("driver watch down"), and retried with exponential
//!   backoff up to a cap. An error never decides anything: only events do;
//! - removals pending when the daemon stops are dropped: after a restart, a driver pod still
//!   terminal is seen again in the first list; one deleted meanwhile is not (left to the
//!   idle sweep).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kshuffle::store::{self, AppRemoval};
use kube::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::tracker::{AppEnded, AppId, DRIVER_SELECTOR, Input, Tracker};

/// What the watch needs of the daemon: its one removal path.
pub trait Cleanup: Send + Sync + 'static {
    /// Removes application `app`'s registrations and files; `Ok(None)` when it is not
    /// registered here. Blocking (filesystem): called on a blocking thread.
    ///
    /// # Errors
    /// When the removal cannot be recorded (nothing is removed then).
    fn remove_app(&self, app: &AppId) -> Result<Option<AppRemoval>, store::Error>;

    /// Whether any executor of `app` is registered here (in memory, non-blocking).
    fn is_registered(&self, app: &AppId) -> bool;
}

impl Cleanup for kshuffle::store::Store {
    fn remove_app(&self, app: &AppId) -> Result<Option<AppRemoval>, store::Error> {
        kshuffle::store::Store::remove_app(self, &app.0)
    }

    fn is_registered(&self, app: &AppId) -> bool {
        !self.registry().executors_of(&app.0).is_empty()
    }
}

impl Cleanup for kshuffle::handler::Service {
    fn remove_app(&self, app: &AppId) -> Result<Option<AppRemoval>, store::Error> {
        self.store.remove_app(&app.0)
    }

    fn is_registered(&self, app: &AppId) -> bool {
        Cleanup::is_registered(&self.store, app)
    }
}

/// How the watch runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch one namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// How long after an application ended its files are removed (reducers may still be
    /// finishing a last fetch). Zero removes at once.
    pub cleanup_delay: Duration,
    /// First retry delay after an error; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            cleanup_delay: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The metric names of the watch.
pub mod metric {
    /// Counter: applications removed because their driver pod ended.
    pub const APPS_REMOVED: &str = "kshuffle_driver_watch_apps_removed_total";
    /// Counter, label `reason`: applications whose driver ended (registered here or not).
    pub const APPS_ENDED: &str = "kshuffle_driver_watch_apps_ended_total";
    /// Counter: removals that failed (the registry could not record them).
    pub const REMOVAL_ERRORS: &str = "kshuffle_driver_watch_removal_errors_total";
    /// Counter: relists after the first list (watch expired, or resumed after an error).
    pub const RESTARTS: &str = "kshuffle_driver_watch_restarts_total";
    /// Counter, label `kind`: watch errors.
    pub const ERRORS: &str = "kshuffle_driver_watch_errors_total";
    /// Gauge: driver pods seen and not yet ended.
    pub const DRIVERS: &str = "kshuffle_driver_watch_drivers";
    /// Gauge: 1 while the watch is healthy, 0 from an error until the next event.
    pub const UP: &str = "kshuffle_driver_watch_up";
}

/// A short label for a watcher error.
fn error_kind(err: &watcher::Error) -> &'static str {
    match err {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(s) if s.code == 410 => "expired",
        watcher::Error::WatchError(_) => "watch_error",
        watcher::Error::WatchFailed(_) => "watch_failed",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

/// Runs the watch until `shutdown` is cancelled. Never returns an error: the API server
/// being away only delays cleanup.
pub async fn run(
    client: kube::Client,
    config: Config,
    cleanup: Arc<dyn Cleanup>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = match config.namespace.as_deref() {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    // MostRecent (kube's default, spelled out because certainty rests on it): relists are
    // consistent reads, never a stale watch-cache page, so a pod absent from one is gone.
    let wc = watcher::Config::default()
        .labels(DRIVER_SELECTOR)
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = watcher(api, wc).boxed();
    let mut tracker = Tracker::new();
    let removals = Removals {
        cleanup,
        delay: config.cleanup_delay,
        pending: Arc::new(Mutex::new(HashSet::new())),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let scope = config.namespace.as_deref().unwrap_or("<all>");
    info!(
        namespace = scope,
        selector = DRIVER_SELECTOR,
        "driver watch starting"
    );
    metrics::gauge!(metric::UP).set(0.0);
    // `healthy`: the last thing the watcher produced was a complete view or a live event;
    // `down_logged`: the current error streak was logged (once per outage).
    let mut healthy = false;
    let mut down_logged = false;
    let mut listed_once = false;
    let mut backoff = config.backoff_initial;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = events.next() => next,
        };
        let Some(next) = next else { break };
        match next {
            Ok(event) => {
                backoff = config.backoff_initial;
                let input = Input::from_event(&event);
                if input == Input::RelistStarted {
                    if listed_once {
                        metrics::counter!(metric::RESTARTS).increment(1);
                        debug!("driver watch relisting");
                    }
                    listed_once = true;
                }
                let mid_list = matches!(input, Input::RelistStarted | Input::Listed(_));
                for decision in tracker.step(input) {
                    removals.schedule(decision);
                }
                let drivers = tracker.live_drivers();
                metrics::gauge!(metric::DRIVERS).set(drivers as f64);
                if !healthy && !mid_list {
                    healthy = true;
                    metrics::gauge!(metric::UP).set(1.0);
                    if down_logged {
                        info!(namespace = scope, drivers, "driver watch recovered");
                    } else {
                        info!(namespace = scope, drivers, "driver watch up");
                    }
                    down_logged = false;
                }
            }
            Err(err) => {
                let kind = error_kind(&err);
                metrics::counter!(metric::ERRORS, "kind" => kind).increment(1);
                if kind == "expired" {
                    // Routine: the watcher relists at once; nothing is down.
                    info!("driver watch expired (410); relisting");
                    continue;
                }
                healthy = false;
                metrics::gauge!(metric::UP).set(0.0);
                if down_logged {
                    debug!(error = %err, retry_in = ?backoff, "driver watch still down");
                } else {
                    down_logged = true;
                    warn!(
                        error = %err,
                        retry_in = ?backoff,
                        "driver watch down; no cleanup is decided until it recovers"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
    removals.tasks.close();
    removals.tasks.wait().await;
    info!("driver watch stopped");
}

/// Waits out the cleanup delay; false when shutdown came first.
async fn wait_delay(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Removals scheduled after the cleanup delay, at most one pending per app.
struct Removals {
    cleanup: Arc<dyn Cleanup>,
    delay: Duration,
    pending: Arc<Mutex<HashSet<AppId>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Removals {
    fn schedule(&self, decision: AppEnded) {
        let AppEnded { app, reason, pod } = decision;
        metrics::counter!(metric::APPS_ENDED, "reason" => reason.as_str()).increment(1);
        if !self.cleanup.is_registered(&app) {
            // Most driver pods of a cluster ran apps with no executor on this node; after a
            // restart, every completed driver still around is seen ending once more.
            debug!(%app, %pod, reason = reason.as_str(), "driver ended for an app not registered here; ignored");
            return;
        }
        if !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.clone())
        {
            debug!(%app, "removal already pending");
            return;
        }
        info!(%app, %pod, reason = reason.as_str(), delay = ?self.delay, "driver ended; removing the app after the delay");
        let cleanup = Arc::clone(&self.cleanup);
        let pending = Arc::clone(&self.pending);
        let delay = self.delay;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            if !wait_delay(delay, &shutdown).await {
                return;
            }
            let target = app.clone();
            let result = tokio::task::spawn_blocking(move || cleanup.remove_app(&target)).await;
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&app);
            match result {
                Ok(Ok(Some(removal))) => {
                    metrics::counter!(metric::APPS_REMOVED).increment(1);
                    info!(
                        %app,
                        executors = removal.executors,
                        files = removal.reclaimed.files,
                        bytes = removal.reclaimed.bytes,
                        "app removed: its driver ended"
                    );
                }
                Ok(Ok(None)) => debug!(%app, "app of an ended driver already removed"),
                Ok(Err(e)) => {
                    metrics::counter!(metric::REMOVAL_ERRORS).increment(1);
                    error!(%app, error = %e, "cannot remove the app of an ended driver; the idle sweep will retry");
                }
                Err(e) => {
                    metrics::counter!(metric::REMOVAL_ERRORS).increment(1);
                    error!(%app, error = %e, "app removal task failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kshuffle::store::cleanup::Reclaimed;

    use super::*;
    use crate::driver::tracker::{EndReason, PodName};

    /// Records the apps it is asked to remove.
    #[derive(Default)]
    struct Recorder {
        removed: Mutex<Vec<AppId>>,
        calls: AtomicUsize,
    }

    impl Cleanup for Recorder {
        fn remove_app(&self, app: &AppId) -> Result<Option<AppRemoval>, store::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.removed.lock().unwrap().push(app.clone());
            Ok(Some(AppRemoval {
                app_id: app.0.clone(),
                executors: 1,
                reclaimed: Reclaimed::default(),
                errors: Vec::new(),
            }))
        }

        fn is_registered(&self, app: &AppId) -> bool {
            app.0 != "unknown"
        }
    }

    fn ended(app: &str) -> AppEnded {
        AppEnded {
            app: AppId(app.into()),
            reason: EndReason::Succeeded,
            pod: PodName {
                namespace: "ns".into(),
                name: format!("{app}-driver"),
            },
        }
    }

    fn removals(cleanup: Arc<Recorder>, delay: Duration, shutdown: &CancellationToken) -> Removals {
        Removals {
            cleanup,
            delay,
            pending: Arc::new(Mutex::new(HashSet::new())),
            tasks: TaskTracker::new(),
            shutdown: shutdown.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_waited_out_unless_shutdown_comes_first() {
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { wait_delay(Duration::from_secs(30), &shutdown).await }
        });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!waiting.is_finished(), "the delay ended early");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(waiting.await.unwrap());

        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { wait_delay(Duration::from_secs(30), &shutdown).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
        assert!(!waiting.await.unwrap(), "shutdown did not cut the delay");
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_is_removed_once_per_pending_removal() {
        let rec = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let r = removals(Arc::clone(&rec), Duration::from_secs(30), &shutdown);
        // Ended twice while pending (e.g. Failed, then deleted), and another app.
        r.schedule(ended("app-1"));
        r.schedule(ended("app-1"));
        r.schedule(ended("app-2"));
        // An app not registered here is not even scheduled.
        r.schedule(ended("unknown"));
        assert_eq!(r.pending.lock().unwrap().len(), 2);
        tokio::time::sleep(Duration::from_secs(31)).await;
        r.tasks.close();
        r.tasks.wait().await;
        let mut removed = rec.removed.lock().unwrap().clone();
        removed.sort();
        assert_eq!(removed, vec![AppId("app-1".into()), AppId("app-2".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drops_pending_removals() {
        let rec = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let r = removals(Arc::clone(&rec), Duration::from_secs(30), &shutdown);
        r.schedule(ended("app-1"));
        shutdown.cancel();
        r.tasks.close();
        r.tasks.wait().await;
        assert_eq!(rec.calls.load(Ordering::SeqCst), 0);
    }
}
