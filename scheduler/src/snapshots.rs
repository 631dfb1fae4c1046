//! One in-memory view of the application's executor pods, fed by a watch (kube's `watcher`,
//! which relists after a 410 and backs off through outages) and by a periodic full list every
//! `spark.kubernetes.executor.apiPollingInterval`, as Spark's `ExecutorPodsWatchSnapshotSource`
//! and `ExecutorPodsPollingSnapshotSource` feed `ExecutorPodsSnapshotsStoreImpl`.
//!
//! Invariants:
//! - an update never replaces a pod with an older `resourceVersion` of it, and a pod seen
//!   deleted is not brought back by a list taken before the deletion (tombstones, dropped once
//!   a newer list confirms the pod is gone), so watch and list can race without regressing;
//! - a complete list (the watcher's initial list, or a poll) removes pods it does not contain,
//!   unless we saw them at a newer version than the list;
//! - [`ExecutorEvent`]s are emitted once per executor: `Added` when its pod first runs,
//!   `Removed` when the pod ends or disappears.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::ids::ExecutorId;
use crate::pods::EXEC_ID_LABEL;

/// The phase of an executor pod, as `ExecutorPodStates` reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum PodState {
    /// Not running yet (scheduling, pulling images).
    Pending,
    /// Running.
    Running,
    /// Exited with success.
    Succeeded,
    /// Failed or was evicted; `reason` is `status.reason` (e.g. `Evicted`).
    Failed {
        /// `status.reason`.
        reason: Option<String>,
    },
    /// A phase we do not know.
    Unknown,
}

impl PodState {
    fn of(pod: &Pod) -> Self {
        let st = pod.status.as_ref();
        match st.and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => Self::Pending,
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed {
                reason: st.and_then(|s| s.reason.clone()),
            },
            Some(_) => Self::Unknown,
        }
    }

    /// Succeeded or failed.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed { .. })
    }
}

/// What the scheduler knows of one executor pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecutorPod {
    /// The executor id (`spark-exec-id`).
    pub id: ExecutorId,
    /// The pod name.
    pub name: String,
    /// Its phase.
    pub state: PodState,
    /// Whether it has a deletion timestamp.
    pub deleting: bool,
    /// The node it is bound to.
    pub node: Option<String>,
    #[serde(skip)]
    rv: u64,
    #[serde(skip)]
    announced_running: bool,
    #[serde(skip)]
    announced_removed: bool,
}

impl ExecutorPod {
    /// A pod in `state`, for tests of code that reads snapshots.
    #[doc(hidden)]
    pub fn for_test(id: ExecutorId, state: PodState) -> Self {
        Self {
            id,
            name: format!("exec-{id}"),
            state,
            deleting: false,
            node: None,
            rv: 0,
            announced_running: false,
            announced_removed: false,
        }
    }
}

/// Executor lifecycle events, for drivers that embed the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ExecutorEvent {
    /// The executor's pod is running.
    Added {
        /// The executor.
        id: ExecutorId,
    },
    /// The executor's pod ended or is gone.
    Removed {
        /// The executor.
        id: ExecutorId,
        /// Why: `Succeeded`, `Failed`, `Evicted` (the pod's reason) or `Deleted`.
        reason: String,
    },
}

/// A copy of the view.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Executor pods by id.
    pub pods: BTreeMap<ExecutorId, ExecutorPod>,
    /// Whether a complete list has been seen; before that the view may miss pods.
    pub synced: bool,
}

#[derive(Debug, Default)]
struct View {
    snap: Snapshot,
    /// Deleted executors and the version of their deletion.
    tombstones: BTreeMap<ExecutorId, u64>,
    /// Pods of a relist in progress.
    init: Option<Vec<Pod>>,
}

/// The store: the view, a version counter to wake readers, and the event broadcast.
#[derive(Debug)]
pub struct Store {
    view: Mutex<View>,
    version: watch::Sender<u64>,
    events: broadcast::Sender<ExecutorEvent>,
}

fn rv_of(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn parse(pod: &Pod) -> Option<ExecutorPod> {
    let id = pod
        .metadata
        .labels
        .as_ref()?
        .get(EXEC_ID_LABEL)?
        .parse()
        .ok()?;
    Some(ExecutorPod {
        id,
        name: pod.metadata.name.clone()?,
        state: PodState::of(pod),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        rv: rv_of(pod),
        announced_running: false,
        announced_removed: false,
    })
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty, unsynced store.
    pub fn new() -> Self {
        Self {
            view: Mutex::new(View::default()),
            version: watch::channel(0).0,
            // Bounded: a subscriber that falls this far behind misses events (and is told so).
            events: broadcast::channel(4096).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current view.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snap.clone()
    }

    /// Wakes on every change of the view.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Executor added/removed events.
    pub fn events(&self) -> broadcast::Receiver<ExecutorEvent> {
        self.events.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn announce(&self, p: &mut ExecutorPod) {
        if p.state == PodState::Running && !p.announced_running && !p.deleting {
            p.announced_running = true;
            let _ = self.events.send(ExecutorEvent::Added { id: p.id });
        }
        if p.state.is_terminal() && !p.announced_removed {
            p.announced_removed = true;
            let reason = match &p.state {
                PodState::Failed { reason: Some(r) } => r.clone(),
                PodState::Failed { reason: None } => "Failed".into(),
                _ => "Succeeded".into(),
            };
            let _ = self
                .events
                .send(ExecutorEvent::Removed { id: p.id, reason });
        }
    }

    fn gone(&self, p: &ExecutorPod) {
        if !p.announced_removed {
            let _ = self.events.send(ExecutorEvent::Removed {
                id: p.id,
                reason: "Deleted".into(),
            });
        }
    }

    fn upsert(&self, view: &mut View, pod: &Pod) {
        let Some(mut new) = parse(pod) else { return };
        if view.tombstones.get(&new.id).is_some_and(|t| *t >= new.rv) {
            return;
        }
        if let Some(old) = view.snap.pods.get(&new.id) {
            if old.rv > new.rv {
                return;
            }
            new.announced_running = old.announced_running;
            new.announced_removed = old.announced_removed;
        }
        self.announce(&mut new);
        view.snap.pods.insert(new.id, new);
    }

    fn remove(&self, view: &mut View, pod: &Pod) {
        let Some(p) = parse(pod) else { return };
        if let Some(old) = view.snap.pods.remove(&p.id) {
            self.gone(&old);
        }
        view.tombstones.insert(p.id, p.rv);
    }

    /// Replaces the view with a complete list. `list_rv` is the list's version when known;
    /// pods we saw at a newer version survive it.
    fn replace(&self, view: &mut View, pods: &[Pod], list_rv: Option<u64>) {
        let listed: BTreeMap<ExecutorId, &Pod> = pods
            .iter()
            .filter_map(|p| parse(p).map(|e| (e.id, p)))
            .collect();
        let stale: Vec<ExecutorId> = view
            .snap
            .pods
            .iter()
            .filter(|(id, p)| !listed.contains_key(id) && list_rv.is_none_or(|rv| p.rv <= rv))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(old) = view.snap.pods.remove(&id) {
                self.gone(&old);
            }
        }
        for pod in listed.values() {
            self.upsert(view, pod);
        }
        // A newer complete list settles every deletion it covers.
        match list_rv {
            Some(rv) => view.tombstones.retain(|_, t| *t > rv),
            None => view.tombstones.clear(),
        }
        view.snap.synced = true;
    }

    /// Applies one watcher event.
    pub fn apply(&self, event: watcher::Event<Pod>) {
        let mut view = self.lock();
        match event {
            watcher::Event::Apply(pod) => self.upsert(&mut view, &pod),
            watcher::Event::Delete(pod) => self.remove(&mut view, &pod),
            watcher::Event::Init => view.init = Some(Vec::new()),
            watcher::Event::InitApply(pod) => match view.init.as_mut() {
                Some(buf) => buf.push(pod),
                None => self.upsert(&mut view, &pod),
            },
            watcher::Event::InitDone => {
                let pods = view.init.take().unwrap_or_default();
                self.replace(&mut view, &pods, None);
            }
        }
        drop(view);
        self.bump();
    }

    /// Applies a periodic full list.
    pub fn apply_list(&self, pods: &[Pod], list_rv: Option<u64>) {
        let mut view = self.lock();
        self.replace(&mut view, pods, list_rv);
        drop(view);
        self.bump();
    }
}

/// Keeps the store fed until cancelled: the watch (relisting on 410, backing off through
/// outages) and the periodic list.
pub async fn run(
    api: Api<Pod>,
    selector: String,
    polling: Duration,
    store: Arc<Store>,
    cancel: CancellationToken,
) {
    let watch = {
        let (api, selector, store) = (api.clone(), selector.clone(), Arc::clone(&store));
        async move {
            let cfg = watcher::Config::default().labels(&selector);
            let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => store.apply(ev),
                    Err(e) => {
                        metrics::counter!("kshuffle_scheduler_watch_errors_total").increment(1);
                        tracing::debug!(error = %e, "executor pod watch");
                    }
                }
            }
        }
    };
    let poll = async move {
        let mut every = tokio::time::interval(polling);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let lp = ListParams::default().labels(&selector);
            crate::metrics::api_call("list");
            match tokio::time::timeout(crate::allocator::API_CALL_TIMEOUT, api.list(&lp)).await {
                Ok(Ok(list)) => {
                    let rv = list
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|r| r.parse().ok());
                    store.apply_list(&list.items, rv);
                }
                Ok(Err(e)) => {
                    crate::metrics::api_error("list", &e);
                    tracing::debug!(error = %e, "executor pod poll");
                }
                Err(_) => crate::metrics::api_timeout("list"),
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = watch => {}
        () = poll => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: u64, rv: u64, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("app-exec-{id}"));
        p.metadata.resource_version = Some(rv.to_string());
        p.metadata.labels = Some([(EXEC_ID_LABEL.to_owned(), id.to_string())].into());
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn older_versions_and_stale_lists_do_not_regress_the_view() {
        let store = Store::new();
        let mut events = store.events();
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(pod(1, 5, "Pending")));
        assert!(!store.snapshot().synced);
        store.apply(watcher::Event::InitDone);
        assert!(store.snapshot().synced);
        store.apply(watcher::Event::Apply(pod(1, 7, "Running")));
        assert_eq!(
            events.try_recv().unwrap(),
            ExecutorEvent::Added { id: ExecutorId(1) }
        );
        // A list taken at version 6 says Pending: ignored, we know version 7.
        store.apply_list(&[pod(1, 6, "Pending")], Some(6));
        assert_eq!(
            store.snapshot().pods[&ExecutorId(1)].state,
            PodState::Running
        );
        // Deleted at 9; a list at 8 still has it: it stays gone.
        store.apply(watcher::Event::Delete(pod(1, 9, "Running")));
        assert_eq!(
            events.try_recv().unwrap(),
            ExecutorEvent::Removed {
                id: ExecutorId(1),
                reason: "Deleted".into()
            }
        );
        store.apply_list(&[pod(1, 8, "Running")], Some(8));
        assert!(store.snapshot().pods.is_empty());
        // A pod created at 12 survives a list at 10 that does not have it.
        store.apply(watcher::Event::Apply(pod(2, 12, "Pending")));
        store.apply_list(&[], Some(10));
        assert!(store.snapshot().pods.contains_key(&ExecutorId(2)));
        // A list at 13 without it: it was deleted while we were not looking.
        store.apply_list(&[], Some(13));
        assert!(store.snapshot().pods.is_empty());
    }

    #[test]
    fn terminal_pods_are_announced_once() {
        let store = Store::new();
        let mut events = store.events();
        store.apply(watcher::Event::Apply(pod(3, 1, "Running")));
        let mut failed = pod(3, 2, "Failed");
        if let Some(s) = failed.status.as_mut() {
            s.reason = Some("Evicted".into());
        }
        store.apply(watcher::Event::Apply(failed.clone()));
        store.apply(watcher::Event::Apply(failed));
        store.apply(watcher::Event::Delete(pod(3, 4, "Failed")));
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                ExecutorEvent::Added { id: ExecutorId(3) },
                ExecutorEvent::Removed {
                    id: ExecutorId(3),
                    reason: "Evicted".into()
                },
            ]
        );
    }

    #[test]
    fn pods_without_an_executor_id_are_ignored() {
        let store = Store::new();
        let mut p = pod(1, 1, "Running");
        p.metadata.labels = None;
        store.apply(watcher::Event::Apply(p));
        assert!(store.snapshot().pods.is_empty());
    }
}
