//! The fake API server's DaemonSet controller, driven with the real `kube` client and the
//! DaemonSet of `daemonset/deploy` exactly as `kubectl kustomize` renders it (kubectl's
//! built-in kustomize works offline; `KUBECTL` overrides its path). Pods are run by the
//! simulated kubelet (marked Running and Ready, no process started).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_testkit::{FakeApiServer, Node, kustomize};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::Value;

const NS: &str = "kshuffle";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// The rendered manifests of `daemonset/deploy`, by kind.
fn rendered(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemonset/deploy");
    let docs = kustomize::render(&dir).unwrap_or_else(|e| panic!("{e}"));
    kustomize::one(&docs, kind).unwrap().clone()
}

async fn cluster() -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::builder()
        .nodes(NODES.iter().map(|n| Node::new(*n, 16, 64)).collect())
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, NS).unwrap();
    let ns: Namespace = serde_json::from_value(rendered("Namespace")).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    (server, client)
}

async fn apply(client: &kube::Client) -> DaemonSet {
    let ds: DaemonSet = serde_json::from_value(rendered("DaemonSet")).unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &ds)
        .await
        .unwrap()
}

/// Polls (every 20 ms, for at most 10 s) until `f` returns `Some`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The live (not terminating) pods of the DaemonSet, once there is one Running per node.
fn one_running_per_node(server: &FakeApiServer) -> Option<Vec<Pod>> {
    let pods: Vec<Pod> = server
        .pods(NS)
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    let nodes: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    (pods.len() == NODES.len() && running == NODES.len() && nodes.len() == NODES.len())
        .then_some(pods)
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn the_rendered_daemonset_gets_one_pod_per_node_as_the_real_controller_makes_them() {
    let (server, client) = cluster().await;
    let ds = apply(&client).await;
    let uid = ds.metadata.uid.clone().unwrap();
    let pods = eventually("one Running pod per node", || one_running_per_node(&server)).await;
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap();
        let suffix = name.strip_prefix("kshuffle-node-").unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        assert!(
            suffix
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{name}"
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("DaemonSet", "kshuffle-node", uid.as_str())
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "kshuffle-node");
        assert_eq!(labels["pod-template-generation"], "1");
        assert!(labels.contains_key("controller-revision-hash"));
        let spec = pod.spec.as_ref().unwrap();
        // Pinned by node affinity (as the real controller does), bound there by the scheduler.
        let term = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let field = &term[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (field.key.as_str(), field.operator.as_str()),
            ("metadata.name", "In")
        );
        assert_eq!(
            field.values.as_ref().unwrap(),
            &[spec.node_name.clone().unwrap()]
        );
        // The template's own toleration, plus the controller's (hostNetwork: network-unavailable).
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.is_none() && t.operator.as_deref() == Some("Exists"))
        );
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/network-unavailable",
        ] {
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(key)),
                "{key}"
            );
        }
        assert_eq!(spec.host_network, Some(true));
    }
    let dss = Api::<DaemonSet>::namespaced(client.clone(), NS);
    let mut status = None;
    for _ in 0..500 {
        status = dss.get("kshuffle-node").await.unwrap().status;
        if status.as_ref().is_some_and(|s| s.number_ready == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = status.unwrap();
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_misscheduled
        ),
        (3, 3, 0)
    );
    assert_eq!(
        (status.number_available, status.number_unavailable),
        (Some(3), None)
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        dss.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // kubectl finds DaemonSets and Namespaces through discovery.
    let url = server.url();
    let cache = std::env::temp_dir().join(format!("kshuffle-kubectl-cache-{}", std::process::id()));
    let cache_dir = cache.clone();
    let out = tokio::task::spawn_blocking(move || {
        let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
        Command::new(kubectl)
            .args(["--server", &url, "--cache-dir"])
            .arg(&cache)
            .args(["get", "daemonsets,namespaces", "-A", "-o", "json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&cache_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("DaemonSet", "kshuffle-node"), ("Namespace", "kshuffle")]
    );
}

#[tokio::test]
async fn a_killed_or_deleted_daemon_pod_is_replaced_on_its_node() {
    let (server, client) = cluster().await;
    apply(&client).await;
    let first = eventually("one Running pod per node", || one_running_per_node(&server)).await;
    let victim = first[0].clone();
    let victim_name = victim.metadata.name.clone().unwrap();
    let victim_node = victim.spec.as_ref().unwrap().node_name.clone().unwrap();

    // The process dies (exit 137): the pod is Failed; the controller deletes it and makes a new
    // one for the same node.
    assert!(server.exit_pod(NS, &victim_name, 137));
    let second = eventually("a replacement of the failed pod", || {
        one_running_per_node(&server).filter(|p| !names(p).contains(&victim_name))
    })
    .await;
    let replacement: Vec<&Pod> = second
        .iter()
        .filter(|p| !names(&first).contains(p.metadata.name.as_ref().unwrap()))
        .collect();
    assert_eq!(replacement.len(), 1);
    assert_eq!(
        replacement[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some(victim_node.as_str())
    );
    assert!(
        server.pod(NS, &victim_name).is_none(),
        "the failed pod is deleted"
    );

    // Deleted through the API: replaced too, once the old one is gone.
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let gone = replacement[0].metadata.name.clone().unwrap();
    pods.delete(&gone, &DeleteParams::default()).await.unwrap();
    let third = eventually("a replacement of the deleted pod", || {
        one_running_per_node(&server).filter(|p| !names(p).contains(&gone))
    })
    .await;
    assert_eq!(third.len(), 3);
}

#[tokio::test]
async fn deleting_the_daemonset_deletes_its_pods_unless_orphaned() {
    let (server, client) = cluster().await;
    let dss = Api::<DaemonSet>::namespaced(client.clone(), NS);
    apply(&client).await;
    eventually("one Running pod per node", || one_running_per_node(&server)).await;
    dss.delete("kshuffle-node", &DeleteParams::default())
        .await
        .unwrap();
    eventually("every pod gone", || {
        server.pods(NS).is_empty().then_some(())
    })
    .await;
    let err = dss.get("kshuffle-node").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));

    // Orphan: the pods stay, without the owner reference, and nobody replaces or deletes them.
    apply(&client).await;
    let pods = eventually("one Running pod per node", || one_running_per_node(&server)).await;
    dss.delete("kshuffle-node", &DeleteParams::orphan())
        .await
        .unwrap();
    let orphans = eventually("owner references removed", || {
        let now = server.pods(NS);
        now.iter()
            .all(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
            })
            .then_some(now)
    })
    .await;
    assert_eq!(names(&orphans), names(&pods));
}

/// The real controller's backoff for failed pods, on the paused tokio clock (the fake's
/// controller, scheduler and kubelet all run on it; no wall-clock time is asserted): a second
/// failure on the same node within the 1 s backoff is left alone until the backoff ends.
#[tokio::test]
async fn a_pod_failing_again_within_the_backoff_waits_for_it() {
    let (server, client) = cluster().await;
    apply(&client).await;
    let first = eventually("one Running pod per node", || one_running_per_node(&server)).await;
    tokio::time::pause();
    let node_of = |p: &Pod| p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let victim = first[0].clone();
    let node = node_of(&victim);
    let on_node = |server: &FakeApiServer| -> Vec<Pod> {
        server
            .pods(NS)
            .into_iter()
            .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node.as_str()))
            .collect()
    };

    // First failure: deleted and replaced at once (no backoff yet).
    assert!(server.exit_pod(NS, victim.metadata.name.as_deref().unwrap(), 1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = on_node(&server);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].metadata.name, victim.metadata.name);
    assert_eq!(
        now[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );

    // Second failure 100 ms later: still there, Failed, 100 ms on (the backoff is 1 s)...
    let second = now[0].metadata.name.clone().unwrap();
    assert!(server.exit_pod(NS, &second, 1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = on_node(&server);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].metadata.name.as_deref(), Some(second.as_str()));
    assert_eq!(
        now[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Failed")
    );
    // ...and replaced once the backoff is over.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let now = on_node(&server);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].metadata.name.as_deref(), Some(second.as_str()));
    assert_eq!(
        now[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
}

/// Node taints: the rendered DaemonSet tolerates everything (`operator: Exists`) and runs on a
/// tainted node too; without that toleration it skips the node, and so does the scheduler
/// for an ordinary pod.
#[tokio::test]
async fn taints_are_honoured_against_the_templates_tolerations() {
    let server = FakeApiServer::builder()
        .nodes(vec![
            Node::new("node-1", 16, 64),
            Node::new("node-2", 16, 64).with_taint("dedicated", Some("gpu"), "NoSchedule"),
        ])
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, NS).unwrap();
    let bound = |server: &FakeApiServer| -> BTreeSet<String> {
        server
            .pods(NS)
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect()
    };
    let dss = Api::<DaemonSet>::namespaced(client.clone(), NS);
    apply(&client).await;
    let nodes = eventually("a pod on each node", || {
        let b = bound(&server);
        (b.len() == 2).then_some(b)
    })
    .await;
    assert_eq!(
        nodes,
        BTreeSet::from(["node-1".to_owned(), "node-2".to_owned()])
    );
    dss.delete("kshuffle-node", &DeleteParams::default())
        .await
        .unwrap();
    eventually("every pod gone", || {
        server.pods(NS).is_empty().then_some(())
    })
    .await;

    let mut ds: DaemonSet = serde_json::from_value(rendered("DaemonSet")).unwrap();
    ds.spec.template.spec.as_mut().unwrap().tolerations = None;
    dss.create(&PostParams::default(), &ds).await.unwrap();
    let mut status = None;
    for _ in 0..500 {
        status = dss.get("kshuffle-node").await.unwrap().status;
        if status.as_ref().is_some_and(|s| s.number_ready == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status.unwrap().desired_number_scheduled, 1);
    assert_eq!(bound(&server), BTreeSet::from(["node-1".to_owned()]));
    assert_eq!(server.pods(NS).len(), 1);

    // An ordinary pod that may only go to the tainted node stays Pending, Unschedulable.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "pinned" },
        "spec": {
            "containers": [{ "name": "c", "image": "i" }],
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchFields": [
                    { "key": "metadata.name", "operator": "In", "values": ["node-2"] }] }] } } },
        },
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let cond = eventually("PodScheduled=False", || {
        let p = server.pod(NS, "pinned")?;
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
    })
    .await;
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert!(
        server
            .pod(NS, "pinned")
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none()
    );
}
