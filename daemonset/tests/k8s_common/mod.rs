//! Helpers shared by the simulated-cluster scenarios of `daemonset/deploy` (`k8s_*.rs`):
//! the manifests as `kubectl kustomize` renders them, the process kubelet mapping their images
//! to local programs, applying them to testkit's fake API server (real HTTP, real `kube`
//! clients; no Kubernetes cluster runs here) and waiting for the daemons ([`start_cluster`]),
//! the daemons' admin endpoint, and `spark-submit --master k8s://…` with exactly
//! `deploy/spark/spark-submit.flags`. Polling, HTTP, process groups and scratch dirs come from
//! `kshuffle_testkit::support` (re-exported here), shared with the sidecar's scenarios.
//!
//! Included by each scenario file with `mod k8s_common;` (a `mod.rs` in a subdirectory is not
//! a test binary of its own). Invariants: every wait is bounded, and nothing outlives the
//! test: a [`Group`] kills its whole process group when dropped.
// Each scenario binary uses its own subset of these helpers and re-exports.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../shuffle/tests/common/mod.rs"]
pub mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_testkit::apiserver::ProcessKubelet;
pub use kshuffle_testkit::support::{
    Group, eventually, eventually_or, http_get, pyspark_home, work_dir,
};
use kshuffle_testkit::support::{http_get_with_headers, scrape_metrics};
use kshuffle_testkit::{FakeApiServer, Node};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;

/// The namespace of the rendered manifests.
pub const NS: &str = "kshuffle";
/// The simulated nodes.
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// The rendered manifests of `daemonset/deploy`, by kind.
pub fn rendered(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let docs = kshuffle_testkit::kustomize::render(&dir).unwrap_or_else(|e| panic!("{e}"));
    kshuffle_testkit::kustomize::one(&docs, kind)
        .unwrap_or_else(|e| panic!("{e}"))
        .clone()
}

/// The process kubelet for the rendered DaemonSet: its images mapped to local programs. The
/// daemons bind the manifest's fixed ports on their node addresses, so each test has its own
/// `network` of node addresses (tests run at once).
pub fn kubelet(spark_home: &Path, work: &Path, network: &str) -> ProcessKubelet {
    let ds = rendered("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let node_image = spec["containers"][0]["image"].as_str().unwrap().to_owned();
    let init_image = spec["initContainers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(init_image.starts_with("busybox"), "{init_image}");
    ProcessKubelet::new(spark_home, work)
        .node_network(network)
        .image(&node_image, env!("CARGO_BIN_EXE_kshuffle-node"))
        .address_env(&node_image, &["KSHUFFLE_BIND", "KSHUFFLE_ADMIN_BIND"])
        .noop_image(&init_image)
        // The manifest's readiness period is 5 s.
        .max_probe_period(Duration::from_millis(200))
        .java_options(kshuffle_testkit::support::TEST_JVM_OPTIONS)
}

/// Nodes of `cpu_millis` CPUs and 8 GiB each, named [`NODES`].
pub fn nodes(cpu_millis: u64) -> Vec<Node> {
    NODES
        .iter()
        .map(|n| {
            let mut node = Node::new(*n, 1, 8);
            node.cpu_millis = cpu_millis;
            node
        })
        .collect()
}

/// Applies the Namespace and the DaemonSet, with `extra` `--flag=value` args for the node
/// container: each replaces the manifest's arg of the same flag (the daemon refuses a flag
/// given twice), or is appended. E.g. `--driver-cleanup-delay=1s`.
pub async fn apply_with_args(client: &kube::Client, extra: &[&str]) {
    let ns: Namespace = serde_json::from_value(rendered("Namespace")).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let mut ds = rendered("DaemonSet");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .expect("the node container has args");
    for arg in extra {
        let flag = arg.split('=').next().unwrap_or(arg);
        let same = |a: &Value| {
            a.as_str()
                .is_some_and(|a| a.split('=').next() == Some(flag))
        };
        match args.iter_mut().find(|a| same(a)) {
            Some(a) => *a = Value::from(*arg),
            None => args.push(Value::from(*arg)),
        }
    }
    let ds: DaemonSet = serde_json::from_value(ds).unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
}

/// A simulated cluster with the rendered DaemonSet applied and its daemons Ready.
pub struct Cluster {
    /// The fake API server; dropping it stops the kubelet's pods (the daemons with them).
    pub server: FakeApiServer,
    /// A `kube` client of the server, default namespace [`NS`].
    pub client: kube::Client,
    /// The Ready `kshuffle-node` pods, one per node.
    pub daemons: Vec<Pod>,
    /// Their pod IPs (their nodes' addresses: hostNetwork), sorted.
    pub ips: Vec<String>,
}

/// Starts the fake API server with [`nodes`]`(cpu_millis)` and `kubelet`, applies the
/// Namespace and the DaemonSet with `extra_args` for the node container (see
/// [`apply_with_args`]) and waits for its daemons to be Ready ([`ready_daemons`]).
pub async fn start_cluster(
    kubelet: &ProcessKubelet,
    cpu_millis: u64,
    extra_args: &[&str],
) -> Cluster {
    let server = FakeApiServer::builder()
        .nodes(nodes(cpu_millis))
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, NS).unwrap();
    apply_with_args(&client, extra_args).await;
    let (daemons, ips) = ready_daemons(&server).await;
    Cluster {
        server,
        client,
        daemons,
        ips,
    }
}

/// Whether the pod's Ready condition is True.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits (at most 30 s) for one Ready `kshuffle-node` pod per node; returns them and their
/// IPs, sorted.
pub async fn ready_daemons(server: &FakeApiServer) -> (Vec<Pod>, Vec<String>) {
    let pods = eventually("3 Ready kshuffle-node pods", 30, || {
        let pods = server.pods(NS);
        (pods.len() == NODES.len() && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    let mut ips: Vec<String> = pods
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    ips.sort();
    (pods, ips)
}

/// The `--conf` flags of `deploy/spark/spark-submit.flags`, the pod template's path made
/// absolute (the file says: a path on the machine where spark-submit runs).
pub fn submit_flags() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/spark");
    let text = std::fs::read_to_string(dir.join("spark-submit.flags")).unwrap();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(conf) = line.strip_prefix("--conf ") else {
            continue;
        };
        let conf = match conf.split_once('=') {
            Some((k, v)) if k == "spark.kubernetes.executor.podTemplateFile" => {
                format!("{k}={}", dir.join(v).display())
            }
            _ => conf.to_owned(),
        };
        out.push(conf);
    }
    assert!(
        out.iter()
            .any(|c| c == "spark.shuffle.service.enabled=true")
    );
    assert!(
        out.iter()
            .any(|c| c.starts_with("spark.kubernetes.executor.podTemplateFile="))
    );
    out
}

/// `kshuffle_testkit::support::spark_submit` with [`submit_flags`] then `confs` as `--conf`s:
/// `spark-submit --master k8s://<server> --deploy-mode <mode> --name <name>` of `venv`, run in
/// `work` with stdout and stderr in `work/<name>.stdout` and `work/<name>.stderr`; the caller
/// adds the application and its arguments and starts it with [`Group::spawn`].
pub fn spark_submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    deploy_mode: &str,
    name: &str,
    confs: &[String],
) -> Command {
    let confs: Vec<String> = submit_flags()
        .into_iter()
        .chain(confs.iter().cloned())
        .collect();
    kshuffle_testkit::support::spark_submit(venv, server, work, deploy_mode, name, &confs)
}

/// [`kshuffle_testkit::support::kshuffle_scheduler_confs`] with the workspace's
/// `kshuffle-scheduler`, next to `kshuffle-node`.
pub fn kshuffle_scheduler_confs(spark_home: &Path, work: &Path, scheme: &str) -> Vec<String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_kshuffle-node")).with_file_name("kshuffle-scheduler");
    kshuffle_testkit::support::kshuffle_scheduler_confs(&bin, spark_home, work, scheme)
}

/// The sum over `ips` of a counter or gauge on the daemons' `/metrics` (all label sets;
/// 0 where a daemon does not have it).
pub fn metric(ips: &[String], name: &str) -> u64 {
    ips.iter()
        .map(|ip| {
            scrape_metrics(&format!("{ip}:7338"))
                .get(name)
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

/// `GET /v1/apps` of the daemon at `ip` with the bearer `token` (the daemon started with
/// `--admin-token-file`): its registered apps and their executors, as JSON.
pub fn admin_apps(ip: &str, token: &str) -> Value {
    let out = http_get_with_headers(
        &format!("{ip}:7338"),
        "/v1/apps",
        &[&format!("Authorization: Bearer {token}")],
    );
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.contains(" 200 "), "GET /v1/apps on {ip}: {out}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET /v1/apps on {ip}: {e}: {body}"))
}
