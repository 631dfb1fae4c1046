//! The `kshuffle-node` binary end to end: its driver-pod watch against the fake API server
//! (`kshuffle_testkit::FakeApiServer`, real HTTP to the real `kube` client; no Kubernetes
//! cluster runs here), executors registered over Spark's wire protocol, files laid out by
//! `kshuffle::fixture`. Every wait polls for the expected state with a generous deadline;
//! nothing is asserted from elapsed time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kshuffle::client::Client;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::wire::Message;
use kshuffle_testkit::apiserver::{FakeApiServer, Latencies, Outage};
use kube::api::{Api, DeleteParams};
use serde_json::Value;

mod common;

use common::{NodeProcess, eventually, field, message};

const NS: &str = "spark";

// === the node process ===

impl NodeProcess {
    /// Starts the node confined to `root`, with the driver watch on `kubeconfig`, and waits
    /// for "listening".
    async fn start(kubeconfig: &Path, root: &Path, extra: &[&str]) -> Self {
        let state = root.with_extension("state");
        let mut cmd = Self::command(Some(kubeconfig), root.parent().unwrap());
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-bind",
            "127.0.0.1",
        ])
        .args(["--admin-port", "0", "--log-format", "json"])
        .args(["--log-level", "info,kshuffle_daemonset=debug"])
        .arg("--allowed-root")
        .arg(root)
        .arg("--state-dir")
        .arg(&state)
        .args(extra);
        Self::spawn(cmd).await
    }

    async fn wait_watch_up(&mut self) {
        self.wait_for("\"driver watch up\"", |e| message(e) == "driver watch up")
            .await;
    }

    async fn wait_watch_down(&mut self) {
        self.wait_for("\"driver watch down\"", |e| {
            message(e).starts_with("driver watch down")
        })
        .await;
    }

    /// The `reason` logged when the app's driver was judged ended.
    fn end_reason(&self, app: &str) -> Option<String> {
        self.events()
            .iter()
            .find(|e| {
                message(e) == "driver ended; removing the app after the delay"
                    && field(e, "app") == Some(app)
            })
            .and_then(|e| field(e, "reason").map(str::to_owned))
    }
}

// === the cluster side ===

/// The labels Spark puts on the driver pod of `app`.
fn driver_labels(app: &str) -> BTreeMap<String, String> {
    [("spark-role", "driver"), ("spark-app-selector", app)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

struct Cluster {
    server: FakeApiServer,
    _tmp: tempfile::TempDir,
    kubeconfig: PathBuf,
    root: PathBuf,
}

impl Cluster {
    async fn start(builder: kshuffle_testkit::apiserver::Builder) -> Self {
        let server = builder.start().await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let kubeconfig = tmp.path().join("kubeconfig");
        std::fs::write(&kubeconfig, server.kubeconfig(NS)).unwrap();
        let root = tmp.path().join("local");
        Self {
            server,
            _tmp: tmp,
            kubeconfig,
            root,
        }
    }

    async fn node(&self, extra: &[&str]) -> NodeProcess {
        NodeProcess::start(&self.kubeconfig, &self.root, extra).await
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(kshuffle_testkit::kube_client(&self.server, NS).unwrap(), NS)
    }

    /// A cluster and a node on it that removes apps at once (`--driver-cleanup-delay 0s`).
    async fn with_node() -> (Self, NodeProcess) {
        let cluster = Self::start(FakeApiServer::builder()).await;
        let node = cluster.node(&["--driver-cleanup-delay", "0s"]).await;
        (cluster, node)
    }

    /// Registers the app `id` (one executor, one map output) with `node`.
    async fn register(&self, node: &NodeProcess, id: &str) -> App {
        App::register(node, &self.root, id).await
    }

    /// Creates a driver pod of `app`; `schedulable: false` keeps it Pending for ever.
    fn driver(&self, name: &str, app: &str, schedulable: bool) {
        let cpu = if schedulable { "1" } else { "100000" };
        self.insert(name, driver_labels(app), cpu);
    }

    /// Creates schedulable driver pods, (name, app) each.
    fn drivers(&self, drivers: &[(&str, &str)]) {
        for (name, app) in drivers {
            self.driver(name, app, true);
        }
    }

    /// A schedulable driver pod of `app` in namespace `ns`.
    fn driver_in(&self, ns: &str, name: &str, app: &str) {
        self.insert_in(ns, name, driver_labels(app), "1");
    }

    /// Waits for `node`'s driver watch to be up and for the pods `names` to be Running.
    async fn watch_up_and_running(&self, node: &mut NodeProcess, names: &[&str]) {
        node.wait_watch_up().await;
        for name in names {
            self.wait_phase(node, name, "Running").await;
        }
    }

    /// Deletes pod `name` through a real client.
    async fn delete(&self, name: &str, params: &DeleteParams) {
        self.api().delete(name, params).await.unwrap();
    }

    fn insert(&self, name: &str, labels: BTreeMap<String, String>, cpu: &str) {
        self.insert_in(NS, name, labels, cpu);
    }

    fn insert_in(&self, ns: &str, name: &str, labels: BTreeMap<String, String>, cpu: &str) {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = Some(labels);
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "spark-kubernetes-driver".into(),
                image: Some("apache/spark:4.0.0".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_owned(), Quantity(cpu.into())),
                            ("memory".to_owned(), Quantity("1Gi".into())),
                        ]
                        .into(),
                    ),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        });
        self.server.insert_pod(ns, pod).unwrap();
    }

    fn phase(&self, name: &str) -> String {
        self.server
            .pod(NS, name)
            .and_then(|p| p.status?.phase)
            .unwrap_or_default()
    }

    async fn wait_phase(&self, node: &NodeProcess, name: &str, phase: &str) {
        eventually(node, &format!("pod {name} {phase}"), || {
            self.phase(name) == phase
        })
        .await;
    }
}

// === the daemon side ===

/// An application with one registered executor and one map output.
struct App {
    id: String,
    dirs: ExecutorDirs,
    payload: Vec<u8>,
}

impl App {
    async fn register(node: &NodeProcess, root: &Path, id: &str) -> Self {
        let dirs = ExecutorDirs::create(root, id, 2, 8).unwrap();
        let payload = format!("reduce-1 of {id}").into_bytes();
        dirs.write_map_output(0, 3, &[b"reduce-0", &payload])
            .unwrap();
        let mut client = Client::connect(node.addr).await.unwrap();
        client
            .register(id, "1", dirs.as_strings(), 8)
            .await
            .unwrap();
        Self {
            id: id.to_owned(),
            dirs,
            payload,
        }
    }

    fn files_exist(&self) -> bool {
        self.dirs.dirs.iter().all(|d| d.is_dir())
    }

    fn files_gone(&self) -> bool {
        self.dirs.dirs.iter().all(|d| !d.exists())
    }

    /// Fetches partition 1 over the wire.
    async fn fetch(&self, node: &NodeProcess) -> Result<Vec<u8>, String> {
        let mut client = Client::connect(node.addr)
            .await
            .map_err(|e| e.to_string())?;
        let handle = client
            .open(&Message::FetchShuffleBlocks {
                app_id: self.id.clone(),
                exec_id: "1".into(),
                shuffle_id: 0,
                map_ids: vec![3],
                reduce_ids: vec![vec![1]],
                batch_fetch_enabled: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        let chunk = client
            .chunk(handle.stream_id, 0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(chunk.to_vec())
    }

    /// Its files are there and it is served, byte for byte.
    async fn assert_served(&self, node: &NodeProcess) {
        assert!(
            self.files_exist(),
            "{} lost its files; log:\n{}",
            self.id,
            node.log()
        );
        assert_eq!(
            self.fetch(node).await.as_deref(),
            Ok(&self.payload[..]),
            "{} not served; log:\n{}",
            self.id,
            node.log()
        );
    }

    /// Waits until its files are gone, then checks it is no longer registered.
    async fn assert_removed(&self, node: &NodeProcess) {
        eventually(node, &format!("{} removed", self.id), || self.files_gone()).await;
        // The removal is logged (after its metrics are counted).
        eventually(node, &format!("{} removal logged", self.id), || {
            node.count(|e| {
                message(e) == "app removed: its driver ended" && field(e, "app") == Some(&self.id)
            }) == 1
        })
        .await;
        let err = self
            .fetch(node)
            .await
            .expect_err("a removed app is not served");
        assert!(
            err.contains(&self.id),
            "unexpected failure for {}: {err}",
            self.id
        );
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_driver_removes_exactly_its_app() {
    let (cluster, mut node) = Cluster::with_node().await;
    let a = cluster.register(&node, "spark-a").await;
    let b = cluster.register(&node, "spark-b").await;
    let p = cluster.register(&node, "spark-p").await;
    cluster.drivers(&[("a-driver", "spark-a"), ("b-driver", "spark-b")]);
    cluster.driver("p-driver", "spark-p", false);
    cluster.driver("x-driver", "spark-unknown", true);
    cluster
        .watch_up_and_running(&mut node, &["a-driver", "x-driver"])
        .await;
    // A driver of an app this node never registered ends: ignored.
    assert!(cluster.server.exit_pod(NS, "x-driver", 0));
    node.wait_for("the unknown app ignored", |e| {
        message(e) == "driver ended for an app not registered here; ignored"
            && field(e, "app") == Some("spark-unknown")
    })
    .await;

    assert!(cluster.server.exit_pod(NS, "a-driver", 0));
    a.assert_removed(&node).await;
    assert_eq!(node.end_reason("spark-a").as_deref(), Some("succeeded"));
    // Running and Pending drivers keep their apps.
    assert_eq!(cluster.phase("b-driver"), "Running");
    assert_eq!(cluster.phase("p-driver"), "Pending");
    b.assert_served(&node).await;
    p.assert_served(&node).await;
    assert_eq!(node.end_reason("spark-b"), None);
    assert_eq!(node.end_reason("spark-p"), None);

    let (status, page) = http_get(node.admin, "/metrics");
    assert_eq!(status, 200);
    assert_metric(&page, "kshuffle_driver_watch_apps_removed_total", 1.0);
    // b-driver (Running) and p-driver (Pending) are live.
    assert_metric(&page, "kshuffle_driver_watch_drivers", 2.0);
    assert_metric(&page, "kshuffle_driver_watch_up", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_limits_the_watch() {
    let cluster = Cluster::start(FakeApiServer::builder()).await;
    let mut node = cluster
        .node(&["--driver-cleanup-delay", "0s", "--watch-namespace", "jobs"])
        .await;
    let outside = cluster.register(&node, "spark-outside").await;
    let inside = cluster.register(&node, "spark-inside").await;
    cluster.driver("out-driver", "spark-outside", true);
    cluster.driver_in("jobs", "in-driver", "spark-inside");
    cluster
        .watch_up_and_running(&mut node, &["out-driver"])
        .await;
    eventually(&node, "in-driver Running", || {
        cluster
            .server
            .pod("jobs", "in-driver")
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    // The driver outside the namespace ends first, then the one inside.
    assert!(cluster.server.exit_pod(NS, "out-driver", 0));
    assert!(cluster.server.exit_pod("jobs", "in-driver", 0));
    inside.assert_removed(&node).await;
    outside.assert_served(&node).await;
    assert_eq!(node.end_reason("spark-outside"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_driver_removes_its_app_after_the_delay() {
    let cluster = Cluster::start(FakeApiServer::builder()).await;
    let mut node = cluster.node(&["--driver-cleanup-delay", "1s"]).await;
    let a = cluster.register(&node, "spark-a").await;
    let b = cluster.register(&node, "spark-b").await;
    cluster.drivers(&[("a-driver", "spark-a"), ("b-driver", "spark-b")]);
    cluster.watch_up_and_running(&mut node, &["a-driver"]).await;
    assert!(cluster.server.exit_pod(NS, "a-driver", 1));
    // The decision is logged first; the removal follows it (after the delay).
    node.wait_for("the decision", |e| {
        message(e) == "driver ended; removing the app after the delay"
            && field(e, "app") == Some("spark-a")
    })
    .await;
    a.assert_removed(&node).await;
    assert_eq!(node.end_reason("spark-a").as_deref(), Some("failed"));
    let removed = node
        .wait_for("the removal", |e| {
            message(e) == "app removed: its driver ended" && field(e, "app") == Some("spark-a")
        })
        .await;
    assert_eq!(removed["fields"]["executors"], 1, "{removed}");
    b.assert_served(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_driver_removes_its_app() {
    let (cluster, mut node) = Cluster::with_node().await;
    let a = cluster.register(&node, "spark-a").await;
    let b = cluster.register(&node, "spark-b").await;
    cluster.drivers(&[("a-driver", "spark-a"), ("b-driver", "spark-b")]);
    cluster.watch_up_and_running(&mut node, &["a-driver"]).await;
    // A graceful delete: the pod is terminating (still live) until the kubelet removes it.
    cluster.delete("a-driver", &DeleteParams::default()).await;
    a.assert_removed(&node).await;
    assert_eq!(node.end_reason("spark-a").as_deref(), Some("deleted"));
    assert!(cluster.server.pod(NS, "a-driver").is_none());
    b.assert_served(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists_and_catches_what_happened_in_the_gap() {
    // A short history, so a watch resumed after the gap gets 410; a slow kubelet, so a
    // graceful deletion asked for before the gap completes inside it.
    let cluster = Cluster::start(
        FakeApiServer::builder()
            .history_limit(8)
            .latencies(Latencies {
                terminate: Duration::from_secs(2),
                ..Latencies::default()
            }),
    )
    .await;
    let mut node = cluster.node(&["--driver-cleanup-delay", "0s"]).await;
    let deleted = cluster.register(&node, "spark-del").await;
    let finished = cluster.register(&node, "spark-fin").await;
    let running = cluster.register(&node, "spark-run").await;
    // Registered, but its driver is never seen (client mode): never removed by the watch.
    let no_pod = cluster.register(&node, "spark-client-mode").await;
    cluster.drivers(&[
        ("del-driver", "spark-del"),
        ("fin-driver", "spark-fin"),
        ("run-driver", "spark-run"),
    ]);
    cluster
        .watch_up_and_running(&mut node, &["del-driver", "fin-driver", "run-driver"])
        .await;

    cluster.delete("del-driver", &DeleteParams::default()).await;
    cluster.server.start_outage(Outage::Refuse);
    node.wait_watch_down().await;
    // In the gap: the deletion completes, the other driver succeeds, and enough else
    // happens that the watch's resourceVersion is compacted away.
    eventually(&node, "del-driver gone", || {
        cluster.server.pod(NS, "del-driver").is_none()
    })
    .await;
    assert!(cluster.server.exit_pod(NS, "fin-driver", 0));
    for i in 0..10 {
        let labels = [("app".to_owned(), "other".to_owned())].into();
        cluster.insert(&format!("filler-{i}"), labels, "1");
    }
    // Nothing was decided while the watch was down.
    assert_eq!(node.end_reason("spark-del"), None);
    assert_eq!(node.end_reason("spark-fin"), None);
    deleted.assert_served(&node).await;
    finished.assert_served(&node).await;

    cluster.server.end_outage();
    node.wait_for("the 410", |e| {
        message(e) == "driver watch expired (410); relisting"
    })
    .await;
    deleted.assert_removed(&node).await;
    finished.assert_removed(&node).await;
    assert_eq!(
        node.end_reason("spark-del").as_deref(),
        Some("gone_from_relist")
    );
    assert_eq!(node.end_reason("spark-fin").as_deref(), Some("succeeded"));
    running.assert_served(&node).await;
    no_pod.assert_served(&node).await;

    let (_, page) = http_get(node.admin, "/metrics");
    let restarts = metric(&page, "kshuffle_driver_watch_restarts_total");
    assert!(restarts >= Some(1.0), "{page}");
    let expired = metric(
        &page,
        "kshuffle_driver_watch_errors_total{kind=\"expired\"}",
    );
    assert!(expired >= Some(1.0), "{page}");
    assert_metric(&page, "kshuffle_driver_watch_apps_removed_total", 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outages_remove_nothing_and_the_watch_recovers() {
    let (cluster, mut node) = Cluster::with_node().await;
    let a = cluster.register(&node, "spark-a").await;
    let b = cluster.register(&node, "spark-b").await;
    let c = cluster.register(&node, "spark-client-mode").await;
    cluster.drivers(&[("a-driver", "spark-a"), ("b-driver", "spark-b")]);
    cluster
        .watch_up_and_running(&mut node, &["a-driver", "b-driver"])
        .await;
    // Refused connections: the watch fails again and again, and removes nothing.
    cluster.server.start_outage(Outage::Refuse);
    node.wait_count("watch retries", 2, |e| {
        message(e) == "driver watch still down"
    })
    .await;
    for app in [&a, &b, &c] {
        app.assert_served(&node).await;
    }
    cluster.server.end_outage();
    // A termination after the outage is acted on.
    assert!(cluster.server.exit_pod(NS, "a-driver", 0));
    a.assert_removed(&node).await;
    node.wait_for("\"driver watch recovered\"", |e| {
        message(e) == "driver watch recovered"
    })
    .await;

    // 503 on every request: the node keeps asking (the watch backs off between attempts),
    // and removes nothing.
    let calls = cluster.server.calls();
    cluster.server.start_outage(Outage::Unavailable);
    eventually(&node, "503s answered to the watch", || {
        let now = cluster.server.calls();
        now.watch + now.list >= calls.watch + calls.list + 3
    })
    .await;
    // Logged as a second outage (once), not hidden behind client retries.
    node.wait_count("a second \"driver watch down\"", 2, |e| {
        message(e).starts_with("driver watch down")
    })
    .await;
    b.assert_served(&node).await;
    c.assert_served(&node).await;
    cluster.server.end_outage();
    cluster.delete("b-driver", &DeleteParams::default()).await;
    b.assert_removed(&node).await;
    c.assert_served(&node).await;
    assert_eq!(node.end_reason("spark-client-mode"), None);
    // Two outages, each logged once however many attempts failed.
    let downs = node.count(|e| message(e).starts_with("driver watch down"));
    assert_eq!(downs, 2, "{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_removes_ended_apps_it_sees_and_keeps_the_rest() {
    let (cluster, mut node) = Cluster::with_node().await;
    let finished = cluster.register(&node, "spark-fin").await;
    let deleted = cluster.register(&node, "spark-del").await;
    let running = cluster.register(&node, "spark-run").await;
    cluster.drivers(&[
        ("fin-driver", "spark-fin"),
        ("del-driver", "spark-del"),
        ("run-driver", "spark-run"),
    ]);
    cluster
        .watch_up_and_running(&mut node, &["fin-driver", "del-driver", "run-driver"])
        .await;
    drop(node);

    // While the node is down: one driver finishes, one is deleted outright.
    assert!(cluster.server.exit_pod(NS, "fin-driver", 0));
    cluster
        .delete("del-driver", &DeleteParams::default().grace_period(0))
        .await;
    assert!(cluster.server.pod(NS, "del-driver").is_none());

    // The restarted node recovers the three apps from its journal. The finished driver is
    // in its first list: removed. The deleted one it never saw: not found is not ended, so
    // that app is left to the idle sweep.
    let mut node = cluster.node(&["--driver-cleanup-delay", "0s"]).await;
    node.wait_watch_up().await;
    finished.assert_removed(&node).await;
    assert_eq!(node.end_reason("spark-fin").as_deref(), Some("succeeded"));
    deleted.assert_served(&node).await;
    running.assert_served(&node).await;
    assert_eq!(node.end_reason("spark-del"), None);
}

/// GET over plain HTTP/1.1; returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// `page` has metric `name` at `want`.
fn assert_metric(page: &str, name: &str, want: f64) {
    assert_eq!(metric(page, name), Some(want), "{name} in {page}");
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_the_api_server_is_unreachable() {
    let cluster = Cluster::start(FakeApiServer::builder()).await;
    cluster.server.start_outage(Outage::Refuse);
    let mut node = cluster.node(&[]).await;
    node.wait_watch_down().await;
    assert_eq!(http_get(node.admin, "/readyz").0, 200, "{}", node.log());
    let a = cluster.register(&node, "spark-a").await;
    a.assert_served(&node).await;
    // The watch comes up once the API server is back.
    cluster.server.end_outage();
    node.wait_for("the watch up", |e| message(e) == "driver watch recovered")
        .await;
}

/// Runs the node with no Kubernetes configuration, `--allowed-root <tmp>/local` and `args`;
/// returns its exit code and stderr.
fn run_unconfigured(tmp: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = NodeProcess::command(None, tmp)
        .arg("--allowed-root")
        .arg(tmp.join("local"))
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_kubernetes_configuration_it_exits_with_usage_status() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("local");
    let (code, stderr) = run_unconfigured(tmp.path(), &["--port", "0", "--admin-port", "0"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--driver-watch"), "{stderr}");

    // Bad values of its own flags are usage errors naming the flag.
    for (flag, value) in [
        ("--driver-cleanup-delay", "soon"),
        ("--driver-watch", "maybe"),
    ] {
        let (code, stderr) = run_unconfigured(tmp.path(), &[flag, value]);
        assert_eq!(code, Some(64), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }

    // --driver-watch=false serves as plain kshuffled, with no configuration at all.
    let mut child = NodeProcess::command(None, tmp.path())
        .arg("--allowed-root")
        .arg(&root)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--admin-port", "0"])
        .args(["--log-format", "json", "--driver-watch=false"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let listening = lines.any(|l| {
        l.ok()
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .is_some_and(|e| message(&e) == "listening")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "--driver-watch=false did not start serving");
}
