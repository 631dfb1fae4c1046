//! The watch of this node's executor pods that feeds [`PodSecrets`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event, watcher};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{EXECUTOR_SELECTOR, PodSecret, PodSecrets, log_learned, pod_secret};

/// How the watch runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (`spec.nodeName` of the pods watched).
    pub node_name: String,
    /// Watch one namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// How often secrets of apps removed from the daemon (and without a pod here) are
    /// forgotten.
    pub prune_interval: Duration,
    /// First retry delay after an error; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Config {
    /// The defaults for `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            namespace: None,
            prune_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The pods of this node, as the watch last saw them.
#[derive(Default)]
struct NodePods {
    /// (namespace, name) → app id.
    pods: HashMap<(String, String), String>,
    /// Pods of a relist in progress.
    relist: Option<HashMap<(String, String), String>>,
    /// Apps already warned about (`valueFrom`), so each is logged once.
    warned: HashSet<String>,
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Runs the watch until `shutdown` is cancelled; never returns an error (the API server
/// being away only delays learning new secrets; known ones stay).
pub async fn run(
    client: kube::Client,
    config: Config,
    secrets: Arc<PodSecrets>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = match config.namespace.as_deref() {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let fields = format!("spec.nodeName={}", config.node_name);
    let wc = watcher::Config::default()
        .labels(EXECUTOR_SELECTOR)
        .fields(&fields)
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = watcher(api, wc).boxed();
    let mut state = NodePods::default();
    let mut prune = tokio::time::interval(config.prune_interval);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = config.backoff_initial;
    let mut down_logged = false;
    info!(node = %config.node_name, selector = EXECUTOR_SELECTOR, "executor pod watch starting (--auth-from-pods)");
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = prune.tick() => {
                prune_now(&secrets).await;
                continue;
            }
            () = secrets.stale.notified() => {
                prune_now(&secrets).await;
                continue;
            }
            next = events.next() => next,
        };
        let Some(next) = next else { break };
        match next {
            Ok(event) => {
                backoff = config.backoff_initial;
                if down_logged {
                    info!("executor pod watch recovered");
                    down_logged = false;
                }
                let complete = apply(&mut state, &event, &config.node_name, &secrets).await;
                if complete {
                    let live: HashSet<String> = state.pods.values().cloned().collect();
                    let first = !secrets.lock().synced;
                    secrets.set_live(live);
                    if first {
                        info!(
                            pods = state.pods.len(),
                            apps = secrets.apps().len(),
                            "executor pod watch up"
                        );
                    }
                }
            }
            Err(err) => {
                if matches!(&err, watcher::Error::WatchError(s) if s.code == 410) {
                    debug!("executor pod watch expired (410); relisting");
                    continue;
                }
                if down_logged {
                    debug!(error = %err, "executor pod watch still down");
                } else {
                    down_logged = true;
                    warn!(error = %err, retry_in = ?backoff, "executor pod watch down; secrets of new apps are not learned until it recovers");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
    info!("executor pod watch stopped");
}

/// Applies one event; true when `state.pods` is a complete view afterwards.
async fn apply(
    state: &mut NodePods,
    event: &Event<Pod>,
    node: &str,
    secrets: &Arc<PodSecrets>,
) -> bool {
    match event {
        Event::Init => {
            state.relist = Some(HashMap::new());
            false
        }
        Event::InitApply(pod) => {
            if let Some(app) = observe(state, pod, node, secrets).await {
                state
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key(pod), app);
            }
            false
        }
        Event::InitDone => {
            state.pods = state.relist.take().unwrap_or_default();
            true
        }
        Event::Apply(pod) => {
            match observe(state, pod, node, secrets).await {
                Some(app) => state.pods.insert(key(pod), app),
                None => state.pods.remove(&key(pod)),
            };
            state.relist.is_none()
        }
        Event::Delete(pod) => {
            state.pods.remove(&key(pod));
            state.relist.is_none()
        }
    }
}

/// Learns what `pod` says; its app id if it is an executor of this node with an app label.
async fn observe(
    state: &mut NodePods,
    pod: &Pod,
    node: &str,
    secrets: &Arc<PodSecrets>,
) -> Option<String> {
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    if !on_node {
        // The field selector keeps other nodes' pods out; a server that ignored it must not
        // make this node trust them.
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    match pod_secret(pod) {
        PodSecret::Found { app, secret } => {
            let secrets = Arc::clone(secrets);
            let (a, n) = (app.clone(), name.clone());
            // A new secret is persisted (fsync) before it is used.
            match tokio::task::spawn_blocking(move || secrets.learn(&a, secret)).await {
                Ok((learned, persisted)) => log_learned(&app, &n, learned, &persisted),
                Err(e) => warn!(%app, error = %e, "learning a secret failed"),
            }
            Some(app)
        }
        PodSecret::ValueFrom { app } => {
            if state.warned.insert(app.clone()) {
                warn!(%app, pod = %name, "the executor pod's _SPARK_AUTH_SECRET is a valueFrom reference, which --auth-from-pods does not resolve; its connections are refused unless a secret file covers the app");
            }
            Some(app)
        }
        PodSecret::None => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::APP_ID_LABEL))
            .cloned(),
    }
}

/// Forgets the secrets of removed apps (blocking I/O on a blocking thread).
async fn prune_now(secrets: &Arc<PodSecrets>) {
    let s = Arc::clone(secrets);
    match tokio::task::spawn_blocking(move || s.prune()).await {
        Ok((gone, persisted)) => {
            for app in &gone {
                info!(%app, "forgot the app's secret: not registered here and no executor pod on this node");
            }
            if let Err(e) = persisted {
                warn!(error = %e, "cannot rewrite the learned secrets file");
            }
        }
        Err(e) => warn!(error = %e, "pruning secrets failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

    use super::*;

    fn pod(name: &str, app: &str, node: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("spark-role".to_owned(), "executor".to_owned()),
            (super::super::APP_ID_LABEL.to_owned(), app.to_owned()),
        ]));
        pod.spec = Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                env: Some(vec![EnvVar {
                    name: super::super::ENV_AUTH_SECRET.into(),
                    value: Some(format!("secret-of-{app}")),
                    ..EnvVar::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        pod
    }

    fn live(state: &NodePods) -> Vec<String> {
        let mut apps: Vec<String> = state.pods.values().cloned().collect();
        apps.sort();
        apps.dedup();
        apps
    }

    #[tokio::test]
    async fn relists_replace_the_view_and_other_nodes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Arc::new(PodSecrets::open(dir.path()).unwrap());
        let mut state = NodePods::default();
        let events = [
            Event::Init,
            Event::InitApply(pod("a-1", "app-a", "n1")),
            Event::InitApply(pod("o-1", "app-o", "n2")),
        ];
        for event in &events {
            assert!(
                !apply(&mut state, event, "n1", &secrets).await,
                "complete mid-list"
            );
        }
        assert!(apply(&mut state, &Event::InitDone, "n1", &secrets).await);
        assert_eq!(live(&state), ["app-a"]);
        assert_eq!(secrets.apps(), ["app-a"], "another node's pod was trusted");

        assert!(
            apply(
                &mut state,
                &Event::Apply(pod("b-1", "app-b", "n1")),
                "n1",
                &secrets
            )
            .await
        );
        assert_eq!(live(&state), ["app-a", "app-b"]);
        // A relist (after a 410) that no longer has a-1: its app is no longer live here,
        // though its secret stays until the app is pruned.
        apply(&mut state, &Event::Init, "n1", &secrets).await;
        apply(
            &mut state,
            &Event::InitApply(pod("b-1", "app-b", "n1")),
            "n1",
            &secrets,
        )
        .await;
        assert_eq!(
            live(&state),
            ["app-a", "app-b"],
            "the old view is kept until the relist is done"
        );
        assert!(apply(&mut state, &Event::InitDone, "n1", &secrets).await);
        assert_eq!(live(&state), ["app-b"]);
        assert!(
            apply(
                &mut state,
                &Event::Delete(pod("b-1", "app-b", "n1")),
                "n1",
                &secrets
            )
            .await
        );
        assert!(live(&state).is_empty());
        assert_eq!(secrets.apps(), ["app-a", "app-b"]);
    }
}
