//! The DaemonSet of `daemonset/deploy`, exactly as `kubectl kustomize` renders it, on a
//! simulated cluster of 3 nodes: testkit's fake API server (real HTTP, real `kube` clients;
//! no Kubernetes cluster runs here), its DaemonSet controller, and its process kubelet
//! running the real `kshuffle-node` binary for the `kshuffle-node` image. The busybox init
//! container is a host no-op (the kubelet creates the hostPath directories as the test's
//! user, so there is nothing to chown), `securityContext` users are not applied, and each
//! daemon binds its node's address (`KSHUFFLE_BIND`/`KSHUFFLE_ADMIN_BIND` set by the
//! kubelet to the pod IP, standing in for the node's network namespace).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kshuffle_testkit::apiserver::ProcessKubelet;
use kshuffle_testkit::{FakeApiServer, Node};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;

const NS: &str = "kshuffle";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// The rendered manifests of `daemonset/deploy`, by kind.
fn rendered(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {kubectl:?} ({e}); install kubectl or set KUBECTL"));
    assert!(
        out.status.success(),
        "kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    docs.into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the rendered manifests"))
}

/// The process kubelet for the rendered DaemonSet: its images mapped to local programs.
pub fn kubelet(spark_home: &Path, work: &Path) -> ProcessKubelet {
    let ds = rendered("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let node_image = spec["containers"][0]["image"].as_str().unwrap().to_owned();
    let init_image = spec["initContainers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(init_image.starts_with("busybox"), "{init_image}");
    ProcessKubelet::new(spark_home, work)
        .image(&node_image, env!("CARGO_BIN_EXE_kshuffle-node"))
        .address_env(&node_image, &["KSHUFFLE_BIND", "KSHUFFLE_ADMIN_BIND"])
        .noop_image(&init_image)
        // The manifest's readiness period is 5 s.
        .max_probe_period(Duration::from_millis(200))
}

/// Applies the Namespace and the DaemonSet.
async fn apply(client: &kube::Client) {
    let ns: Namespace = serde_json::from_value(rendered("Namespace")).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let ds: DaemonSet = serde_json::from_value(rendered("DaemonSet")).unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls every 50 ms, for at most `secs`, until `f` returns `Some`.
async fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..secs * 20 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kshuffle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_daemonset_runs_kshuffle_node_on_three_simulated_nodes() {
    let work = work_dir("k8s-daemonset");
    // No Spark container runs here: the Spark home is never used.
    let kubelet = kubelet(&work.join("no-spark"), &work.join("kubelet"));
    let server = FakeApiServer::builder()
        .nodes(NODES.iter().map(|n| Node::new(*n, 4, 8)).collect())
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, NS).unwrap();
    apply(&client).await;
    let pods = eventually("3 Ready kshuffle-node pods", 30, || {
        let pods = server.pods(NS);
        (pods.len() == 3 && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    let mut ips: Vec<String> = Vec::new();
    for pod in &pods {
        let st = pod.status.as_ref().unwrap();
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        let ip = st.pod_ip.clone().unwrap();
        // hostNetwork: the node's address.
        assert_eq!(Some(&ip), st.host_ip.as_ref());
        let init = &st.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(init.name, "prepare-host-dirs");
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.restart_count == 0, "{cs:?}");
        // The real daemon serves on its node's address only, on the manifest's ports.
        let answer = http_get(&format!("{ip}:7338"), "/readyz");
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
        TcpStream::connect(format!("{ip}:7337")).unwrap();
        // Its hostPath directories are the node's.
        let root = kubelet.host_path(&node, "/var/lib/kshuffle");
        assert!(root.is_dir(), "{}", root.display());
        // It listened on its node's address, serving the node's directory, and its driver
        // watch (through the kubelet's kubeconfig) reached the fake API server.
        let stderr = kubelet
            .pod_dir(NS, pod.metadata.name.as_deref().unwrap())
            .join("stderr");
        eventually("the daemon's driver watch", 10, || {
            let log = std::fs::read_to_string(&stderr).ok()?;
            (log.contains(&format!("\"addr\":\"{ip}:7337\""))
                && log.contains(&root.display().to_string())
                && log.contains("driver watch up"))
            .then_some(())
        })
        .await;
        ips.push(ip);
    }
    ips.sort();
    assert_eq!(ips, ["127.0.1.1", "127.0.1.2", "127.0.1.3"]);
    drop(server);
    // Every daemon ended with the server.
    eventually("the daemons to stop", 10, || {
        ips.iter()
            .all(|ip| TcpStream::connect(format!("{ip}:7337")).is_err())
            .then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&work);
}
