//! The pure decision logic of the driver-pod watch: watch events in, "this application ended"
//! decisions out. No client, no clock, no I/O, so every rule is unit-tested on its own
//! (`tests.rs`).
//!
//! An application ended, with certainty, when one of its driver pods
//! - reached phase `Succeeded` or `Failed` (containers exited; a pod never leaves those), or
//! - was deleted: a `Deleted` event, or absent from an authoritative relist (a complete list
//!   between `RelistStarted` and `RelistDone`) after it was seen before,
//!
//! and no other driver pod of the same application is still live. Nothing else ends an
//! application: a pod that is merely not found (never seen, a client-mode driver that has no
//! pod, a partial list cut by an error) decides nothing. A pod being deleted gracefully
//! (`deletionTimestamp` set) is still live until it is gone or terminal.
//!
//! Known limit: a driver pod whose `spark-role=driver` label is removed while the watch is
//! down looks, in the next relist, exactly like a deleted one (a live watch sees it leave the
//! selection and forgets it without a decision). Spark never relabels its pods.
//!
//! Invariants: each driver pod causes at most one decision (on its first transition from
//! live or unseen to ended); a relist that did not complete is discarded at the next
//! `RelistStarted`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use tracing::debug;

/// The label Spark puts on driver and executor pods: `spark-role=driver` on drivers.
pub const ROLE_LABEL: &str = "spark-role";
/// The value of [`ROLE_LABEL`] on driver pods.
pub const DRIVER_ROLE: &str = "driver";
/// The label holding the application id (`spark.app.id`, what executors register with).
pub const APP_LABEL: &str = "spark-app-selector";
/// The label selector of the watch.
pub const DRIVER_SELECTOR: &str = "spark-role=driver";

/// A Spark application id, as in the `spark-app-selector` label and in `RegisterExecutor`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub String);

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod's `namespace/name`, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an application is known to have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The driver pod reached phase `Succeeded`.
    Succeeded,
    /// The driver pod reached phase `Failed` (including evictions).
    Failed,
    /// A `Deleted` event for the driver pod.
    Deleted,
    /// The driver pod, seen before, was absent from a complete relist (deleted while the
    /// watch was down or expired).
    GoneFromRelist,
}

impl EndReason {
    /// A short name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
            Self::GoneFromRelist => "gone_from_relist",
        }
    }
}

/// The decision: application `app` ended; its files may be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEnded {
    /// The application.
    pub app: AppId,
    /// Why.
    pub reason: EndReason,
    /// The driver pod that ended.
    pub pod: PodName,
}

/// What the watch saw of one pod, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPod {
    /// Identity: `metadata.uid` (or `namespace/name` if the server sent no uid).
    pub key: String,
    /// For logs.
    pub name: PodName,
    /// The application, from [`APP_LABEL`]; `None` when the label is missing or empty.
    pub app: Option<AppId>,
    /// Whether the pod carries `spark-role=driver` (a pod leaving a label-selected watch is
    /// sent as `Deleted` with its new labels: that is not a deletion).
    pub is_driver: bool,
    /// `Some` when the phase is terminal.
    pub terminal: Option<EndReason>,
}

impl DriverPod {
    /// Reads the fields the tracker needs from a pod. Never fails: missing fields make a pod
    /// that decides nothing.
    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let name = PodName {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        let key = match meta.uid.as_deref().filter(|u| !u.is_empty()) {
            Some(uid) => uid.to_owned(),
            None => name.to_string(),
        };
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
        let app = label(APP_LABEL)
            .filter(|a| !a.is_empty())
            .map(|a| AppId(a.clone()));
        let is_driver = label(ROLE_LABEL).is_some_and(|r| r == DRIVER_ROLE);
        let terminal = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => Some(EndReason::Succeeded),
            Some("Failed") => Some(EndReason::Failed),
            _ => None,
        };
        Self {
            key,
            name,
            app,
            is_driver,
            terminal,
        }
    }
}

/// One input of the tracker (a `kube::runtime::watcher::Event`, reduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A (re)list starts: what follows until [`Input::RelistDone`] is the complete state.
    RelistStarted,
    /// A pod of the (re)list.
    Listed(DriverPod),
    /// The (re)list is complete: every tracked pod it did not contain is gone.
    RelistDone,
    /// A pod was added or modified.
    Applied(DriverPod),
    /// A pod was deleted (or left the selection).
    Deleted(DriverPod),
}

impl Input {
    /// Converts a watcher event.
    pub fn from_event(event: &kube::runtime::watcher::Event<Pod>) -> Self {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init => Self::RelistStarted,
            Event::InitApply(pod) => Self::Listed(DriverPod::from_pod(pod)),
            Event::InitDone => Self::RelistDone,
            Event::Apply(pod) => Self::Applied(DriverPod::from_pod(pod)),
            Event::Delete(pod) => Self::Deleted(DriverPod::from_pod(pod)),
        }
    }
}

/// A tracked driver pod.
#[derive(Debug, Clone)]
struct Tracked {
    app: AppId,
    name: PodName,
    /// Already terminal (its decision was made).
    ended: bool,
}

/// The state of the watch: driver pods seen, and the relist in progress.
#[derive(Debug, Default)]
pub struct Tracker {
    pods: HashMap<String, Tracked>,
    /// Live (not ended) tracked pods per app, kept in step with `pods` by `insert`/`remove`.
    live: HashMap<AppId, usize>,
    live_total: usize,
    /// Keys listed by the relist in progress, if any.
    relist: Option<HashSet<String>>,
}

// === impl Tracker ===

impl Tracker {
    /// An empty tracker (nothing seen yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Driver pods seen and not yet ended.
    pub fn live_drivers(&self) -> usize {
        self.live_total
    }

    fn insert(&mut self, key: String, tracked: Tracked) {
        if !tracked.ended {
            *self.live.entry(tracked.app.clone()).or_default() += 1;
            self.live_total += 1;
        }
        if let Some(old) = self.pods.insert(key, tracked) {
            self.unlive(&old);
        }
    }

    fn remove(&mut self, key: &str) -> Option<Tracked> {
        let old = self.pods.remove(key)?;
        self.unlive(&old);
        Some(old)
    }

    fn unlive(&mut self, t: &Tracked) {
        if t.ended {
            return;
        }
        self.live_total = self.live_total.saturating_sub(1);
        if let Some(n) = self.live.get_mut(&t.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(&t.app);
            }
        }
    }

    /// Applies one input; returns the applications that ended because of it.
    pub fn step(&mut self, input: Input) -> Vec<AppEnded> {
        let mut out = Vec::new();
        match input {
            Input::RelistStarted => self.relist = Some(HashSet::new()),
            Input::Listed(pod) => {
                if let Some(seen) = self.relist.as_mut() {
                    seen.insert(pod.key.clone());
                }
                self.applied(pod, &mut out);
            }
            Input::RelistDone => {
                // Without a relist in progress there is no complete view: decide nothing.
                if let Some(seen) = self.relist.take() {
                    let mut gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    gone.sort();
                    for key in gone {
                        self.gone(&key, EndReason::GoneFromRelist, &mut out);
                    }
                }
            }
            Input::Applied(pod) => self.applied(pod, &mut out),
            Input::Deleted(pod) => {
                if !pod.is_driver {
                    // Left the selection (label changed): not a deletion; forget it.
                    if let Some(t) = self.remove(&pod.key) {
                        debug!(pod = %t.name, "pod is no longer labelled as a driver; forgotten");
                    }
                } else if self.pods.contains_key(&pod.key) {
                    self.gone(&pod.key, EndReason::Deleted, &mut out);
                } else if let Some(app) = pod.app {
                    // Deleted before we saw it live: certain all the same.
                    self.decide(app, EndReason::Deleted, pod.name, &mut out);
                }
            }
        }
        out
    }

    fn applied(&mut self, pod: DriverPod, out: &mut Vec<AppEnded>) {
        let (Some(app), true) = (pod.app.clone(), pod.is_driver) else {
            debug!(pod = %pod.name, "driver pod without a spark-app-selector label; ignored");
            self.remove(&pod.key);
            return;
        };
        let was_ended = self.pods.get(&pod.key).is_some_and(|t| t.ended);
        self.insert(
            pod.key.clone(),
            Tracked {
                app: app.clone(),
                name: pod.name.clone(),
                ended: pod.terminal.is_some() || was_ended,
            },
        );
        if let (Some(reason), false) = (pod.terminal, was_ended) {
            self.decide(app, reason, pod.name, out);
        }
    }

    /// Tracked pod `key` is gone for good.
    fn gone(&mut self, key: &str, reason: EndReason, out: &mut Vec<AppEnded>) {
        if let Some(t) = self.remove(key)
            && !t.ended
        {
            self.decide(t.app, reason, t.name, out);
        }
    }

    /// A driver pod of `app` ended: the app ended unless another of its drivers is live.
    fn decide(&self, app: AppId, reason: EndReason, pod: PodName, out: &mut Vec<AppEnded>) {
        if let Some(live) = self.live.get(&app) {
            debug!(%app, ended = %pod, live, "another driver pod of the app is live");
            return;
        }
        out.push(AppEnded { app, reason, pod });
    }
}

#[cfg(test)]
mod tests;
