//! The DaemonSet of `daemonset/deploy`, exactly as `kubectl kustomize` renders it, on a
//! simulated cluster of 3 nodes: testkit's fake API server (real HTTP, real `kube` clients;
//! no Kubernetes cluster runs here), its DaemonSet controller, and its process kubelet
//! running the real `kshuffle-node` binary for the `kshuffle-node` image. The busybox init
//! container is a host no-op (the kubelet creates the hostPath directories as the test's
//! user, so there is nothing to chown), `securityContext` users are not applied, and each
//! daemon binds its node's address (`KSHUFFLE_BIND`/`KSHUFFLE_ADMIN_BIND` set by the
//! kubelet to the pod IP, standing in for the node's network namespace).

//!
//! `spark_k8s_daemonset_*`: real `spark-submit --master k8s://…` in client mode (pyspark's
//! own Kubernetes client) on that cluster, with exactly `deploy/spark/spark-submit.flags` and
//! `deploy/spark/executor-pod-template.yaml`; the kubelet runs Spark's executor pods as local
//! JVMs on the nodes, their hostPath local dir being the same per-node directory the node's
//! daemon serves. Dynamic allocation scales executors up, deletes the idle ones' pods, and a
//! later stage reads their shuffle output through the node daemons with no map stage re-run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shuffle/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The process kubelet for the rendered DaemonSet: its images mapped to local programs. The
/// daemons bind the manifest's fixed ports on their node addresses, so each test has its own
/// `network` of node addresses (tests run at once).
fn kubelet(spark_home: &Path, work: &Path, network: &str) -> ProcessKubelet {
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
    let kubelet = kubelet(&work.join("no-spark"), &work.join("kubelet"), "127.0.2");
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
    assert_eq!(ips, ["127.0.2.1", "127.0.2.2", "127.0.2.3"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_daemon_pod_is_recreated_and_reloads_its_registrations() {
    let work = work_dir("k8s-daemonset-recreate");
    let kubelet = kubelet(&work.join("no-spark"), &work.join("kubelet"), "127.0.3");
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
    let on_node_1 = |p: &Pod| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-1");
    let old = pods.iter().find(|p| on_node_1(p)).unwrap();
    let old_name = old.metadata.name.clone().unwrap();
    let ip = old.status.as_ref().unwrap().pod_ip.clone().unwrap();

    // An executor registers with node-1's daemon, its dirs in node-1's hostPath.
    let root = kubelet.host_path("node-1", "/var/lib/kshuffle");
    let dirs = kshuffle::fixture::ExecutorDirs::create(&root, "exec-1", 1, 64).unwrap();
    let mut shuffle = kshuffle::client::Client::connect(format!("{ip}:7337").parse().unwrap())
        .await
        .unwrap();
    shuffle
        .register("app-20260101000000-0001", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    drop(shuffle);

    // The pod is deleted (as `kubectl delete pod`): SIGTERM, the daemon drains and exits, the
    // controller creates a new pod for the node, and the new daemon reloads the registration
    // from the node's state dir.
    Api::<Pod>::namespaced(client, NS)
        .delete(&old_name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let new = eventually("a new Ready pod on node-1", 60, || {
        server.pods(NS).into_iter().find(|p| {
            on_node_1(p) && p.metadata.name.as_deref() != Some(old_name.as_str()) && ready(p)
        })
    })
    .await;
    assert!(server.pod(NS, &old_name).is_none());
    let stderr = kubelet
        .pod_dir(NS, new.metadata.name.as_deref().unwrap())
        .join("stderr");
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"registry loaded\"") && l.contains("\"executors\":1")),
        "{log}"
    );
    assert_eq!(metric(&[ip], "kshuffle_registered_executors"), 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

/// A child process leading its own process group; the whole group is killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// The pyspark package of a venv: `SPARK_HOME` of the process kubelet.
fn pyspark_home(venv: &Path) -> PathBuf {
    let lib = std::fs::read_dir(venv.join("lib")).unwrap();
    let py = lib
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
        })
        .expect("lib/python3*");
    py.join("site-packages/pyspark")
}

/// The `--conf` flags of `deploy/spark/spark-submit.flags`, the pod template's path made
/// absolute (the file says: a path on the machine where spark-submit runs).
fn submit_flags() -> Vec<String> {
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

/// The sum over `ips` of a counter on the daemons' `/metrics`.
fn metric(ips: &[String], name: &str) -> u64 {
    ips.iter()
        .map(|ip| {
            let text = http_get(&format!("{ip}:7338"), "/metrics");
            text.lines()
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

async fn spark_daemonset_scenario(version: &str) {
    let venv = common::spark_venv(version);
    let work = work_dir(&format!("spark-k8s-daemonset-{version}"));
    let kubelet = kubelet(&pyspark_home(&venv), &work.join("kubelet"), "127.0.4");
    // 1.5 CPUs a node: its daemon (250m) and one executor (1 CPU) fit, a second executor
    // goes to another node.
    let nodes = NODES
        .iter()
        .map(|n| {
            let mut node = Node::new(*n, 2, 8);
            node.cpu_millis = 1500;
            node
        })
        .collect();
    let server = FakeApiServer::builder()
        .nodes(nodes)
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, NS).unwrap();
    apply(&client).await;
    let daemons = eventually("3 Ready kshuffle-node pods", 30, || {
        let pods = server.pods(NS);
        (pods.len() == 3 && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    let mut ips: Vec<String> = daemons
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    ips.sort();

    let spark_ns = "spark-jobs";
    let mut cmd = Command::new(venv.join("bin/spark-submit"));
    cmd.arg("--master")
        .arg(format!("k8s://{}", server.url()))
        .args(["--deploy-mode", "client", "--name", "k8s-daemonset-test"]);
    for conf in submit_flags().iter().map(String::as_str).chain([
        "spark.kubernetes.container.image=kshuffle/spark-test",
        &format!("spark.kubernetes.namespace={spark_ns}"),
        "spark.driver.host=127.0.0.1",
        "spark.ui.enabled=false",
        "spark.executor.memory=512m",
        "spark.executor.cores=1",
        "spark.dynamicAllocation.minExecutors=0",
        "spark.dynamicAllocation.initialExecutors=0",
        "spark.dynamicAllocation.maxExecutors=2",
        "spark.dynamicAllocation.executorIdleTimeout=2s",
        "spark.dynamicAllocation.schedulerBacklogTimeout=1s",
        "spark.task.maxFailures=1",
    ]) {
        cmd.args(["--conf", conf]);
    }
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/k8s_daemonset.py"))
        .args(["--test-pid", &std::process::id().to_string()])
        .args(["--daemons", &ips.join(",")])
        .current_dir(&work)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", venv.join("bin/python"))
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("SPARK_HOME")
        .env_remove("SPARK_CONF_DIR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("submit.stdout")).unwrap())
        .stderr(std::fs::File::create(work.join("submit.stderr")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut group = Group(cmd.spawn().expect("start spark-submit"));
    let status = eventually("spark-submit to exit", 150, || group.0.try_wait().unwrap()).await;
    let stdout = std::fs::read_to_string(work.join("submit.stdout")).unwrap();
    let stderr = std::fs::read_to_string(work.join("submit.stderr")).unwrap();
    let tail = common::tail(&stderr, 60);
    assert!(status.success(), "spark-submit: {status}\n{stdout}\n{tail}");
    let result: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}\n{tail}"));
    assert_eq!(result["spark_version"], version, "{result}");
    assert_eq!(result["phase_a_count"], 200_000, "{result}");
    assert_eq!(result["executors_gone"], true, "{result}");
    assert_eq!(result["phase_b_correct"], true, "{result}");
    // The map stage ran once: phase B read phase A's output, written by executors that
    // were gone (their pods deleted by Spark).
    assert_eq!(result["map_records_a"], 200_000, "{result}");
    assert_eq!(result["map_records_b"], 200_000, "{result}");
    // Executors ran on the nodes' addresses (hostNetwork).
    for host in result["phase_a_hosts"].as_array().unwrap() {
        assert!(ips.iter().any(|ip| host == ip), "{result}");
    }
    // The node daemons registered the executors, and phase B (with every writer gone) read
    // through them: blocks over the network, or the writers' local dirs for readers on the
    // same node (spark.shuffle.readHostLocalDisk).
    let registrations = metric(&ips, "kshuffle_registrations_total");
    assert!(registrations >= 2, "registrations: {registrations}");
    let count = |v: &Value| {
        v["kshuffle_fetch_shuffle_blocks_total"].as_u64().unwrap()
            + v["kshuffle_local_dirs_requests_total"].as_u64().unwrap()
    };
    let (before, after) = (
        count(&result["served_before_b"]),
        count(&result["served_after_b"]),
    );
    assert!(
        after > before,
        "phase B asked the node daemons nothing: {result}"
    );
    eprintln!("{result}\nregistrations {registrations}");
    // The executors' block manager dirs are in the nodes' hostPath directories, the ones the
    // daemons serve.
    let blockmgr = NODES.iter().any(|n| {
        std::fs::read_dir(kubelet.host_path(n, "/var/lib/kshuffle"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("blockmgr-"))
    });
    assert!(
        blockmgr,
        "no blockmgr-* dir in any node's /var/lib/kshuffle"
    );
    drop(group);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_4_3_dynamic_allocation_reads_removed_executors_output() {
    spark_daemonset_scenario("4.3.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_3_5_dynamic_allocation_reads_removed_executors_output() {
    spark_daemonset_scenario("3.5.9").await;
}
