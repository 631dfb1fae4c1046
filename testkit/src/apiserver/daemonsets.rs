//! apps/v1 DaemonSets and a DaemonSet controller, as kube-controller-manager's runs them.
//!
//! | route | verbs |
//! |---|---|
//! | `/apis/apps/v1/namespaces/{ns}/daemonsets` | GET (list), POST |
//! | `/apis/apps/v1/namespaces/{ns}/daemonsets/{name}` | GET, DELETE |
//! | `/apis/apps/v1/daemonsets` | GET (list across namespaces) |
//!
//! The controller keeps one pod per eligible node. Eligible: every simulated node whose
//! labels (`kubernetes.io/hostname: <node>`, `kubernetes.io/os: linux`,
//! `kubernetes.io/arch: amd64`; the fake's nodes have no others and no taints, so every
//! toleration is moot) match the template's `nodeSelector` and required node affinity. Each
//! pod it creates goes through the normal pod path (admission webhooks included, as
//! `system:serviceaccount:kube-system:daemon-set-controller`) and is what the real controller
//! makes of the template:
//! - `generateName: <ds>-` (so named `<ds>-` + 5 random characters by the server);
//! - labels of the template plus `controller-revision-hash` (a hash of the template) and
//!   `pod-template-generation`;
//! - `ownerReferences`: the DaemonSet, `controller: true`, `blockOwnerDeletion: true`;
//! - `spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution` replaced by
//!   one term `matchFields: metadata.name In [<node>]` (the scheduler binds it there; the
//!   controller never sets `nodeName`);
//! - the tolerations the real controller adds (`node.kubernetes.io/not-ready` and
//!   `unreachable` NoExecute, `disk-pressure`, `memory-pressure`, `pid-pressure`,
//!   `unschedulable` NoSchedule, and `network-unavailable` NoSchedule for `hostNetwork`).
//!
//! A pod that is deleted is recreated at once; a pod that ends `Failed` is deleted and then
//! recreated, with the real controller's backoff per DaemonSet and node (1 s, doubling, at
//! most 15 min, forgotten after 30 min without failures); a `Succeeded` pod is deleted
//! without backoff; extra pods on a node are deleted, oldest kept. Deleting the DaemonSet
//! deletes its pods (the garbage collector's background propagation; `propagationPolicy:
//! Orphan` removes the owner reference instead; Foreground is treated as Background).
//! `status` (`desiredNumberScheduled`, `currentNumberScheduled`, `numberMisscheduled`,
//! `numberReady`, `numberAvailable`, `numberUnavailable`, `updatedNumberScheduled`,
//! `observedGeneration`) follows every change.
//!
//! Not implemented (listed in `testkit/README.md`): PUT/PATCH (so no rolling update),
//! `minReadySeconds` (ready counts as available at once), ControllerRevisions, watches of
//! DaemonSets, node taints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::Value;
use sha1::{Digest as _, Sha1};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::admission::{self, User};
use super::selector::LabelSelector;
use super::sim::Node;
use super::status::Error;
use super::store::Key;
use super::typed::{self, Kept, KindError};
use super::{Shared, Verb};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How often the controller resyncs when nothing happens.
const RESYNC: Duration = Duration::from_secs(1);

/// `flowcontrol.Backoff` of one (DaemonSet, node).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    last_update: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sets: Kept<DaemonSet>,
    backoff: HashMap<(String, String), Backoff>,
    /// UIDs of deleted DaemonSets whose pods the garbage collector deletes.
    deleted: HashSet<String>,
}

/// The DaemonSets and the controller's bookkeeping.
#[derive(Debug, Default)]
pub struct DaemonSets {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl DaemonSets {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether the pod's required node affinity lets it run on `node` (the `matchFields
/// metadata.name` terms the DaemonSet controller writes; terms on labels are matched against
/// the node's default labels). Used by the simulated scheduler.
pub fn node_allowed(pod: &Pod, node: &str) -> bool {
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice());
    match terms {
        None | Some([]) => true,
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
    }
}

fn node_labels(node: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &str) -> bool {
    let labels = node_labels(node);
    let empty = t.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && t.match_fields.as_ref().is_none_or(Vec::is_empty);
    !empty
        && t.match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && t.match_fields
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, (r.key == "metadata.name").then_some(node)))
}

/// Whether a DaemonSet's pod may run on `node`: nodeSelector, required affinity, and the
/// node's taints against the template's tolerations plus the ones the controller adds.
fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let tolerations = new_pod(ds, &node.name)
        .and_then(|p| p.spec)
        .and_then(|s| s.tolerations)
        .unwrap_or_default();
    node.tolerated_by(&tolerations) && eligible_by_labels(ds, &node.name)
}

/// Whether a DaemonSet's template may run on `node` (nodeSelector and required affinity).
fn eligible_by_labels(ds: &DaemonSet, node: &str) -> bool {
    let Some(spec) = ds.spec.template.spec.as_ref() else {
        return false;
    };
    let labels = node_labels(node);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let probe = Pod {
        spec: Some(spec.clone()),
        ..Pod::default()
    };
    selector_ok && node_allowed(&probe, node)
}

/// The node a daemon pod is for: its `matchFields` term, else `spec.nodeName`.
fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let from_affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .and_then(|r| r.node_selector_terms.first())
        .and_then(|t| t.match_fields.as_ref())
        .and_then(|f| {
            f.iter()
                .find(|r| r.key == "metadata.name" && r.operator == "In")
        })
        .and_then(|r| r.values.as_ref())
        .and_then(|v| v.first().cloned());
    from_affinity.or_else(|| spec.node_name.clone().filter(|n| !n.is_empty()))
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "DaemonSet")
        .map(|o| o.uid.as_str())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn template_hash(ds: &DaemonSet) -> String {
    let text = serde_json::to_vec(&ds.spec.template).unwrap_or_default();
    let d = Sha1::digest(&text);
    let n = d
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    format!(
        "{}{}",
        super::store::random_suffix(n),
        super::store::random_suffix(n.rotate_left(32))
    )
}

/// The pod the controller creates for `node`.
fn new_pod(ds: &DaemonSet, node: &str) -> Option<Pod> {
    let spec = &ds.spec;
    let name = ds.metadata.name.clone()?;
    let uid = ds.metadata.uid.clone()?;
    let mut pod = Pod {
        metadata: spec.template.metadata.clone().unwrap_or_default(),
        spec: spec.template.spec.clone(),
        status: None,
    };
    let meta = &mut pod.metadata;
    meta.name = None;
    meta.namespace = None;
    meta.generate_name = Some(format!("{name}-"));
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("controller-revision-hash".into(), template_hash(ds));
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let pspec = pod.spec.get_or_insert_with(Default::default);
    let affinity = pspec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_owned()]),
            }]),
            match_expressions: None,
        }],
    });
    let host_network = pspec.host_network == Some(true);
    let tolerations = pspec.tolerations.get_or_insert_with(Vec::new);
    let mut add = |key: &str, effect: &str| {
        if !tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect))
        {
            tolerations.push(Toleration {
                key: Some(key.to_owned()),
                operator: Some("Exists".into()),
                effect: Some(effect.to_owned()),
                ..Toleration::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if host_network {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    Some(pod)
}

/// What one reconcile decided.
#[derive(Default)]
struct Plan {
    create: Vec<(String, Pod)>,
    delete: Vec<Key>,
    /// When a backoff ends.
    wake: Option<Instant>,
}

/// `flowcontrol.Backoff.Next`: the first failure (or one long after the last) waits the
/// initial delay, each further one twice the last, up to the maximum.
fn backoff_next(b: Option<Backoff>, now: Instant) -> Backoff {
    let delay = match b {
        Some(b) if now.saturating_duration_since(b.last_update) <= 2 * MAX_BACKOFF => {
            (b.delay * 2).min(MAX_BACKOFF)
        }
        _ => INITIAL_BACKOFF,
    };
    Backoff {
        delay,
        last_update: now,
    }
}

/// Decides creates and deletes and updates every status, under the store's lock.
fn plan(s: &Shared, now: Instant) -> Plan {
    let nodes: Vec<Node> = s.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut state = s.store.lock();
    let mut inner = s.daemonsets.lock();
    let mut out = Plan::default();
    let live: HashSet<String> = inner
        .sets
        .items
        .values()
        .filter_map(|d| d.metadata.uid.clone())
        .collect();
    // Garbage collection of the pods of deleted DaemonSets.
    for (key, t) in &state.pods {
        if controller_uid(&t.pod).is_some_and(|u| inner.deleted.contains(u) && !live.contains(u))
            && t.pod.metadata.deletion_timestamp.is_none()
        {
            out.delete.push(key.clone());
        }
    }
    let keys: Vec<(String, String)> = inner.sets.items.keys().cloned().collect();
    for key in keys {
        let Some(ds) = inner.sets.items.get(&key).cloned() else {
            continue;
        };
        let Some(uid) = ds.metadata.uid.clone() else {
            continue;
        };
        let ns = key.0.clone();
        let mut by_node: BTreeMap<String, Vec<(Key, Pod)>> = BTreeMap::new();
        for (k, t) in state.pods.iter().filter(|(k, _)| k.0 == ns) {
            if controller_uid(&t.pod) == Some(uid.as_str())
                && let Some(n) = pod_node(&t.pod)
            {
                by_node
                    .entry(n)
                    .or_default()
                    .push((k.clone(), t.pod.clone()));
            }
        }
        let mut status = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            ..DaemonSetStatus::default()
        };
        let mut available = 0;
        for node_obj in &nodes {
            let node = &node_obj.name;
            let pods = by_node.remove(node).unwrap_or_default();
            if !eligible(&ds, node_obj) {
                status.number_misscheduled += i32::try_from(pods.len()).unwrap_or(i32::MAX);
                out.delete.extend(pods.into_iter().map(|(k, _)| k));
                continue;
            }
            status.desired_number_scheduled += 1;
            if pods.is_empty() {
                if let Some(pod) = new_pod(&ds, node) {
                    out.create.push((ns.clone(), pod));
                }
                continue;
            }
            status.current_number_scheduled += 1;
            let mut running: Vec<(Key, Pod)> = Vec::new();
            for (k, pod) in pods {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match phase(&pod) {
                    "Failed" => {
                        let bkey = (uid.clone(), node.clone());
                        let b = inner.backoff.get(&bkey).copied();
                        if let Some(b) = b
                            && now.saturating_duration_since(b.last_update) < b.delay
                        {
                            let at = b.last_update + b.delay;
                            out.wake = Some(out.wake.map_or(at, |w| w.min(at)));
                            continue;
                        }
                        inner.backoff.insert(bkey, backoff_next(b, now));
                        out.delete.push(k);
                    }
                    "Succeeded" => out.delete.push(k),
                    _ => running.push((k, pod)),
                }
            }
            if running.iter().any(|(_, p)| ready(p)) {
                status.number_ready += 1;
                available += 1;
            }
            // More than one: keep the oldest.
            running.sort_by(|a, b| {
                a.1.metadata
                    .creation_timestamp
                    .cmp(&b.1.metadata.creation_timestamp)
            });
            out.delete
                .extend(running.into_iter().skip(1).map(|(k, _)| k));
        }
        // Pods for nodes that are gone.
        for (_, pods) in by_node {
            status.number_misscheduled += i32::try_from(pods.len()).unwrap_or(i32::MAX);
            out.delete.extend(pods.into_iter().map(|(k, _)| k));
        }
        status.updated_number_scheduled = Some(status.current_number_scheduled);
        status.number_available = Some(available);
        let unavailable = status.desired_number_scheduled - available;
        status.number_unavailable = (unavailable > 0).then_some(unavailable);
        if ds.status.as_ref() != Some(&status) {
            let rv = state.next_rv();
            if let Some(stored) = inner.sets.items.get_mut(&key) {
                stored.status = Some(status);
                stored.metadata.resource_version = Some(rv.to_string());
            }
        }
    }
    // Forget backoffs that ended long ago.
    inner
        .backoff
        .retain(|_, b| now.saturating_duration_since(b.last_update) <= 2 * MAX_BACKOFF);
    out
}

/// Runs the controller until the server stops.
pub async fn run(s: Arc<Shared>) {
    let rv = s.store.lock().rv();
    let mut rx = match s.store.watch(None, Some(rv)) {
        Ok(start) => start.rx,
        Err(e) => {
            tracing::error!(error = %e, "DaemonSet controller cannot watch pods");
            return;
        }
    };
    loop {
        let now = Instant::now();
        let plan = plan(&s, now);
        for (ns, pod) in plan.create {
            if let Err(e) = admission::create_pod(&s, &ns, pod, User::DaemonSetController).await {
                tracing::warn!(namespace = %ns, error = %e, "DaemonSet controller: FailedCreate");
            }
        }
        for (ns, name) in plan.delete {
            // Gone already is fine: another path deleted it.
            let _ = s.store.delete(&ns, &name, None, None);
        }
        let wake = plan.wake.unwrap_or(now + RESYNC).min(now + RESYNC);
        tokio::select! {
            () = s.cancel.cancelled() => return,
            () = s.daemonsets.changed.notified() => {}
            r = rx.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

// === routes ===

type Shr = State<Arc<Shared>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The routes of this module.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/daemonsets",
            get(list_ns).post(create),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
            get(get_one).delete(delete_one),
        )
        .route("/apis/apps/v1/daemonsets", get(list_all))
        .route(
            "/apis/apps/v1",
            get(|| async { typed::resource_list::<DaemonSet>(&["ds"], true) }),
        )
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() })
        .with_state(shared)
}

fn answer(r: Result<Response, KindError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn list_ns(s: Shr, Path(ns): Path<String>, q: Params) -> Response {
    answer(list(s, Some(ns), q).await)
}

async fn list_all(s: Shr, q: Params) -> Response {
    answer(list(s, None, q).await)
}

async fn list(State(s): Shr, ns: Option<String>, q: Params) -> Result<Response, KindError> {
    s.admit(Verb::List).await?;
    let p = typed::params(q)?;
    typed::reject_unsupported::<DaemonSet>(&p)?;
    let sel = LabelSelector::parse(p.get("labelSelector").map_or("", String::as_str))?;
    let items = s.daemonsets.lock().sets.list(ns.as_deref(), &sel);
    let rv = s.store.lock().rv();
    Ok(typed::list_body(rv, &items))
}

fn validate(ds: &DaemonSet) -> Result<(), KindError> {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let mut causes = Vec::new();
    {
        let spec = &ds.spec;
        {
            let sel = &spec.selector;
            let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
            if empty {
                causes.push(("spec.selector".into(), "Required value".into()));
            }
            typed::check_selector(Some(sel), "spec.selector", &mut causes);
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !empty && !typed::selector_matches(Some(sel), &labels) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    "Invalid value: `selector` does not match template `labels`".into(),
                ));
            }
            if spec
                .template
                .spec
                .as_ref()
                .is_none_or(|p| p.containers.is_empty())
            {
                causes.push((
                    "spec.template.spec.containers".into(),
                    "Required value".into(),
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(KindError::Invalid("DaemonSet", name, causes))
    }
}

async fn create(State(s): Shr, Path(ns): Path<String>, q: Params, body: Bytes) -> Response {
    let run = async {
        s.admit(Verb::Create).await?;
        typed::reject_unsupported::<DaemonSet>(&typed::params(q)?)?;
        let mut ds: DaemonSet = typed::parse(&body)?;
        validate(&ds)?;
        ds.status = Some(DaemonSetStatus::default());
        let created = {
            let mut state = s.store.lock();
            s.daemonsets.lock().sets.create(&mut state, &ns, ds)?
        };
        s.daemonsets.changed.notify_one();
        Ok((StatusCode::CREATED, axum::Json(created)).into_response())
    };
    answer(run.await)
}

async fn get_one(State(s): Shr, Path((ns, name)): Path<(String, String)>) -> Response {
    let run = async {
        s.admit(Verb::Get).await?;
        let ds = s.daemonsets.lock().sets.get(&ns, &name)?;
        Ok(axum::Json(ds).into_response())
    };
    answer(run.await)
}

fn propagation(p: &HashMap<String, String>, body: &[u8]) -> Result<Option<String>, Error> {
    let mut policy = p.get("propagationPolicy").cloned();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("invalid DeleteOptions: {e}")))?;
        if let Some(pp) = v.get("propagationPolicy").and_then(Value::as_str) {
            policy = Some(pp.to_owned());
        }
    }
    match policy.as_deref() {
        None | Some("Background" | "Foreground" | "Orphan") => Ok(policy),
        Some(other) => Err(Error::BadRequest(format!(
            "propagationPolicy: Unsupported value: {other:?}"
        ))),
    }
}

async fn delete_one(
    State(s): Shr,
    Path((ns, name)): Path<(String, String)>,
    q: Params,
    body: Bytes,
) -> Response {
    let run = async {
        s.admit(Verb::Delete).await?;
        let p = typed::params(q)?;
        typed::reject_unsupported::<DaemonSet>(&p)?;
        let orphan = propagation(&p, &body)?.as_deref() == Some("Orphan");
        let removed = {
            let mut state = s.store.lock();
            let mut inner = s.daemonsets.lock();
            let removed = inner.sets.remove(&mut state, &ns, &name)?;
            let uid = removed.metadata.uid.clone().unwrap_or_default();
            if orphan {
                let owned: Vec<Key> = state
                    .pods
                    .iter()
                    .filter(|(_, t)| controller_uid(&t.pod) == Some(uid.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in owned {
                    let _ = state.modify(&k, |t| {
                        if let Some(refs) = t.pod.metadata.owner_references.as_mut() {
                            refs.retain(|o| o.uid != uid);
                        }
                        Ok(())
                    });
                }
            } else {
                inner.deleted.insert(uid);
            }
            removed
        };
        s.daemonsets.changed.notify_one();
        Ok::<_, KindError>(axum::Json(removed).into_response())
    };
    answer(run.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pod_backoff_doubles_to_the_cap_and_resets_after_quiet() {
        let t0 = Instant::now();
        let mut b = backoff_next(None, t0);
        assert_eq!(b.delay, INITIAL_BACKOFF);
        let mut delays = vec![b.delay];
        for i in 1..12 {
            b = backoff_next(Some(b), t0 + Duration::from_secs(i));
            delays.push(b.delay);
        }
        assert_eq!(delays[..5], [1, 2, 4, 8, 16].map(Duration::from_secs));
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
        // Quiet for longer than twice the cap: back to the initial delay.
        let later = b.last_update + 2 * MAX_BACKOFF + Duration::from_secs(1);
        assert_eq!(backoff_next(Some(b), later).delay, INITIAL_BACKOFF);
    }

    #[test]
    fn the_controllers_node_affinity_pins_a_pod_to_one_node() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "d", "uid": "u", "generation": 1 },
            "spec": {
                "selector": { "matchLabels": { "a": "b" } },
                "template": {
                    "metadata": { "labels": { "a": "b" } },
                    "spec": { "containers": [{ "name": "c", "image": "i" }],
                              "nodeSelector": { "kubernetes.io/os": "linux" } },
                },
            },
        }))
        .unwrap();
        assert!(eligible(&ds, &Node::new("n1", 1, 1)));
        // A NoSchedule taint the template does not tolerate; the controller's own tolerations
        // (unschedulable, not-ready, ...) are tolerated.
        assert!(!eligible(
            &ds,
            &Node::new("n1", 1, 1).with_taint("dedicated", Some("gpu"), "NoSchedule")
        ));
        assert!(eligible(
            &ds,
            &Node::new("n1", 1, 1).with_taint(
                "node.kubernetes.io/unschedulable",
                None,
                "NoSchedule"
            )
        ));
        assert!(eligible(
            &ds,
            &Node::new("n1", 1, 1).with_taint("dedicated", Some("gpu"), "PreferNoSchedule")
        ));
        let pod = new_pod(&ds, "n1").unwrap();
        assert!(node_allowed(&pod, "n1"));
        assert!(!node_allowed(&pod, "n2"));
        assert_eq!(pod_node(&pod).as_deref(), Some("n1"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("d-"));
        let mut windows = ds.clone();
        if let Some(spec) = windows.spec.template.spec.as_mut() {
            spec.node_selector =
                Some([("kubernetes.io/os".to_owned(), "windows".to_owned())].into());
        }
        assert!(!eligible(&windows, &Node::new("n1", 1, 1)));
    }
}
