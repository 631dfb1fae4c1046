//! The simulated control plane behind the fake API: a scheduler that binds Pending pods to
//! nodes with room for their requests, a kubelet that starts bound pods and finishes graceful
//! deletions, each after a configurable latency.
//!
//! Invariants: a pod is bound only if its CPU and memory requests fit the node's capacity
//! minus the requests of the node's other non-terminal pods; pods that fit nowhere stay
//! Pending with a `PodScheduled=False, reason=Unschedulable` condition, written once. Pods are
//! scheduled in creation order.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, Toleration,
};
use tokio::time::Instant;

use super::quantity::parse_scaled;
use super::store::{Key, State, now_time};

/// A simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name (`spec.nodeName` of pods bound to it).
    pub name: String,
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
    /// Taints: pods that do not tolerate a `NoSchedule` or `NoExecute` one are not bound here
    /// (and the DaemonSet controller does not place its pod here).
    taints: Vec<NodeTaint>,
}

/// A node taint (`spec.taints[]` of a real node).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeTaint {
    key: String,
    value: Option<String>,
    effect: String,
}

impl Node {
    /// A node with `cpus` cores and `memory_gib` GiB.
    pub fn new(name: impl Into<String>, cpus: u64, memory_gib: u64) -> Self {
        Self {
            name: name.into(),
            cpu_millis: cpus.saturating_mul(1000),
            memory_bytes: memory_gib.saturating_mul(1 << 30),
            taints: Vec::new(),
        }
    }

    /// Adds a taint (`effect`: `NoSchedule`, `PreferNoSchedule` or `NoExecute`).
    pub fn with_taint(mut self, key: &str, value: Option<&str>, effect: &str) -> Self {
        self.taints.push(NodeTaint {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect: effect.to_owned(),
        });
        self
    }

    /// Whether a pod with these tolerations may be placed here: every `NoSchedule` and
    /// `NoExecute` taint is tolerated (the scheduler's TaintToleration filter).
    pub fn tolerated_by(&self, tolerations: &[Toleration]) -> bool {
        self.taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
    }
}

/// Whether one toleration tolerates one taint (`v1.Toleration.ToleratesTaint`).
fn tolerates(t: &Toleration, taint: &NodeTaint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or("");
    let key_ok = key.is_empty() || key == taint.key;
    let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates everything.
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    };
    effect_ok && key_ok && value_ok
}

/// Latencies of the simulated control plane.
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    /// From creation to the scheduler's first attempt to bind.
    pub schedule: Duration,
    /// From binding to Running.
    pub start: Duration,
    /// Longest a graceful deletion takes (the grace period caps it).
    pub terminate: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            schedule: Duration::from_millis(5),
            start: Duration::from_millis(10),
            terminate: Duration::from_millis(10),
        }
    }
}

/// The CPU (millicores) and memory (bytes) a pod requests: the sum over its containers of
/// `requests`, falling back to `limits` as API defaulting does. Init containers are ignored.
pub fn pod_requests(pod: &Pod) -> (u64, u64) {
    let mut cpu = 0u64;
    let mut mem = 0u64;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let res = c.resources.as_ref();
        let get = |name: &str, scale: u128| {
            let req = res
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(name));
            let lim = res
                .and_then(|r| r.limits.as_ref())
                .and_then(|m| m.get(name));
            req.or(lim)
                .and_then(|q| parse_scaled(&q.0, scale))
                .unwrap_or(0)
        };
        cpu = cpu.saturating_add(get("cpu", 1000));
        mem = mem.saturating_add(get("memory", 1));
    }
    (cpu, mem)
}

/// Whether every `spec.nodeSelector` pair is a label of `node`: the fake's nodes carry only
/// the default labels `kubernetes.io/hostname: <name>`, `kubernetes.io/os: linux` and
/// `kubernetes.io/arch: amd64`.
fn node_selector_matches(pod: &Pod, node: &str) -> bool {
    let label = |k: &str| match k {
        "kubernetes.io/hostname" => Some(node),
        "kubernetes.io/os" => Some("linux"),
        "kubernetes.io/arch" => Some("amd64"),
        _ => None,
    };
    pod.spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| label(k) == Some(v.as_str())))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Advances the simulation to `now`. Returns the next instant at which something is due.
/// With `kubelet` false the simulated kubelet does nothing (pods are not started and graceful
/// deletions not finished): a process kubelet (`kubelet.rs`) does it instead.
pub fn step(
    state: &mut State,
    nodes: &[Node],
    lat: &Latencies,
    now: Instant,
    kubelet: bool,
) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    let mut due = |at: Instant| {
        next = Some(next.map_or(at, |n| n.min(at)));
    };

    // Kubelet: finish graceful deletions.
    let finished: Vec<Key> = state
        .pods
        .iter()
        .filter(|_| kubelet)
        .filter_map(|(k, t)| {
            let (requested, deadline) = t.delete_at?;
            let at = deadline.min(requested + lat.terminate);
            (at <= now).then(|| k.clone())
        })
        .collect();
    for key in &finished {
        state.remove(key);
    }

    // Used capacity per node.
    let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
    for t in state.pods.values() {
        if let Some(node) = node_of(&t.pod)
            && !matches!(phase(&t.pod), Some("Succeeded" | "Failed"))
        {
            let (c, m) = pod_requests(&t.pod);
            let e = used.entry(node).or_default();
            e.0 = e.0.saturating_add(c);
            e.1 = e.1.saturating_add(m);
        }
    }
    let mut used: HashMap<String, (u64, u64)> =
        used.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();

    // Scheduler: bind pending pods in creation order.
    let mut pending: Vec<(Instant, Key)> = state
        .pods
        .iter()
        .filter(|(_, t)| {
            t.delete_at.is_none() && phase(&t.pod) == Some("Pending") && node_of(&t.pod).is_none()
        })
        .map(|(k, t)| (t.created, k.clone()))
        .collect();
    pending.sort();
    for (created, key) in pending {
        let ready_at = created + lat.schedule;
        if ready_at > now {
            due(ready_at);
            continue;
        }
        let Some(t) = state.pods.get(&key) else {
            continue;
        };
        let (cpu, mem) = pod_requests(&t.pod);
        let fit = nodes.iter().find(|n| {
            let (uc, um) = used.get(&n.name).copied().unwrap_or((0, 0));
            uc.saturating_add(cpu) <= n.cpu_millis
                && um.saturating_add(mem) <= n.memory_bytes
                && super::daemonsets::node_allowed(&t.pod, &n.name)
                && node_selector_matches(&t.pod, &n.name)
                && n.tolerated_by(
                    t.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.tolerations.as_deref())
                        .unwrap_or_default(),
                )
        });
        match fit {
            Some(node) => {
                let e = used.entry(node.name.clone()).or_default();
                e.0 = e.0.saturating_add(cpu);
                e.1 = e.1.saturating_add(mem);
                let node_name = node.name.clone();
                state.modify_meta(&key, |t| {
                    t.bound_at = Some(now);
                    if let Some(spec) = t.pod.spec.as_mut() {
                        spec.node_name = Some(node_name);
                    }
                    set_condition(&mut t.pod, "PodScheduled", "True", None, None);
                });
                if kubelet {
                    due(now + lat.start);
                }
            }
            None if !t.unschedulable_noted => {
                let msg = format!(
                    "0/{} nodes are available: {} Insufficient cpu or memory.",
                    nodes.len(),
                    nodes.len()
                );
                state.modify_meta(&key, |t| {
                    t.unschedulable_noted = true;
                    set_condition(
                        &mut t.pod,
                        "PodScheduled",
                        "False",
                        Some("Unschedulable"),
                        Some(msg),
                    );
                });
            }
            None => {}
        }
    }

    // Kubelet: start bound pods.
    let starting: Vec<(Key, Instant)> = state
        .pods
        .iter()
        .filter(|_| kubelet)
        .filter(|(_, t)| t.delete_at.is_none() && phase(&t.pod) == Some("Pending"))
        .filter_map(|(k, t)| t.bound_at.map(|b| (k.clone(), b + lat.start)))
        .collect();
    for (key, at) in starting {
        if at > now {
            due(at);
            continue;
        }
        let ip_seq = state.rv();
        state.modify_meta(&key, |t| start_pod(&mut t.pod, ip_seq));
    }

    // Wake for pending graceful deletions.
    for t in state.pods.values().filter(|_| kubelet) {
        if let Some((requested, deadline)) = t.delete_at {
            due(deadline.min(requested + lat.terminate));
        }
    }
    next
}

fn set_condition(
    pod: &mut Pod,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != type_);
    conds.push(PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Some(now_time()),
        ..PodCondition::default()
    });
}

fn start_pod(pod: &mut Pod, ip_seq: u64) {
    let names: Vec<(String, Option<String>)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect();
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some("Running".into());
    st.start_time = Some(now_time());
    st.pod_ip = Some(format!(
        "10.{}.{}.{}",
        (ip_seq >> 16) & 0xff,
        (ip_seq >> 8) & 0xff,
        ip_seq & 0xff
    ));
    st.container_statuses = Some(
        names
            .into_iter()
            .map(|(name, image)| ContainerStatus {
                name,
                image: image.unwrap_or_default(),
                image_id: String::new(),
                ready: true,
                restart_count: 0,
                started: Some(true),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now_time()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect(),
    );
    set_condition(pod, "Ready", "True", None, None);
}
