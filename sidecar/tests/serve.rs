//! `kshuffle-sidecar serve` as a process, against the fake Kubernetes API server of `testkit`
//! (no cluster runs here; the sidecar uses the real `kube` client, pointed at the fake server
//! through a kubeconfig file).
//!
//! What it proves: after SIGTERM the sidecar keeps serving a registered executor's blocks
//! while the application's driver pod runs (and while the API server is down), and exits 0 once
//! the driver pod has Succeeded or is deleted; with nothing registered it exits at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kshuffle::client::Client;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::wire::Message;
use kshuffle_testkit::{FakeApiServer, Outage};

mod common;

use common::{HANG_GUARD, Identity, Sidecar};

const NS: &str = "spark-jobs";
const APP: &str = "spark-4a1f0c6e2b9d4c7a8e3f5b1d2c6a9e0f";
const DRIVER: &str = "wordcount-driver";
const PARTITIONS: [&[u8]; 3] = [b"alpha", b"", b"gamma-gamma-gamma"];

fn driver_pod() -> Pod {
    let labels = BTreeMap::from([
        ("spark-role".to_owned(), "driver".to_owned()),
        ("spark-app-selector".to_owned(), APP.to_owned()),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(DRIVER.to_owned()),
            namespace: Some(NS.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "spark-kubernetes-driver".to_owned(),
                image: Some("apache/spark:4.0.1".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(HANG_GUARD, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("hung waiting for {what}"));
}

fn phase(server: &FakeApiServer) -> Option<String> {
    server.pod(NS, DRIVER)?.status?.phase
}

/// The executor pod the sidecar runs in.
const POD: Identity<'static> = Identity {
    namespace: NS,
    name: "wordcount-exec-1",
    app: APP,
};

impl Sidecar {
    fn start(dir: &Path, server: &FakeApiServer) -> (Sidecar, SocketAddr) {
        Self::start_with(dir, server, &[])
    }

    /// Starts it with quick driver checks and `extra` flags.
    fn start_with(dir: &Path, server: &FakeApiServer, extra: &[&str]) -> (Sidecar, SocketAddr) {
        let mut flags = vec![
            "--driver-check-interval",
            "50ms",
            "--driver-check-max-backoff",
            "200ms",
        ];
        flags.extend_from_slice(extra);
        let sidecar = Self::spawn(dir, server, &POD, None, &flags);
        let addr = sidecar.addr;
        (sidecar, addr)
    }
}

/// Fetches every partition of map 0 through the service.
async fn fetch_all(addr: SocketAddr) -> Vec<Vec<u8>> {
    let mut client = tokio::time::timeout(HANG_GUARD, Client::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let message = Message::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![0],
        reduce_ids: vec![vec![0, 1, 2]],
        batch_fetch_enabled: false,
    };
    let handle = client.open(&message).await.unwrap();
    let mut out = Vec::new();
    for chunk in 0..handle.num_chunks {
        out.push(
            client
                .chunk(handle.stream_id, chunk)
                .await
                .unwrap()
                .to_vec(),
        );
    }
    out
}

/// What the sidecar logs at SIGTERM when something is registered.
const SERVING_ON: &str = "signal received: serving until the driver ends";

/// The `check` field of that line: what decides that the driver is gone.
fn check_logged(sidecar: &Sidecar) -> String {
    let line = sidecar.logged(SERVING_ON).expect("the SIGTERM line");
    line["fields"]["check"]
        .as_str()
        .unwrap_or_else(|| panic!("no check field: {line}"))
        .to_owned()
}

async fn register(dir: &Path, addr: SocketAddr) {
    let dirs = ExecutorDirs::create(&dir.join("local"), "exec1", 2, 8).unwrap();
    dirs.write_map_output(0, 0, &PARTITIONS).unwrap();
    let mut client = Client::connect(addr).await.unwrap();
    client
        .register(APP, "1", dirs.as_strings(), 8)
        .await
        .unwrap();
}

/// Inserts the driver pod and waits for it to run.
async fn start_driver(server: &FakeApiServer) {
    server.insert_pod(NS, driver_pod()).unwrap();
    wait_for("driver Running", || {
        phase(server).as_deref() == Some("Running")
    })
    .await;
}

/// Deletes pod `name` through a real client.
async fn delete_pod(server: &FakeApiServer, name: &str) {
    let client = kshuffle_testkit::kube_client(server, NS).unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, NS);
    pods.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
}

/// Sends SIGTERM once the sidecar serves.
async fn sigterm_when_up(sidecar: &mut Sidecar) {
    wait_for("the sidecar to be up", || {
        sidecar.logged("sidecar serving").is_some()
    })
    .await;
    sidecar.signal("-TERM");
}

/// Sends SIGTERM once the sidecar serves, and waits for it to log that it serves on until
/// the driver ends (something is registered).
async fn sigterm_while_registered(sidecar: &mut Sidecar) {
    sigterm_when_up(sidecar).await;
    wait_for("the signal to be handled", || {
        sidecar.logged(SERVING_ON).is_some()
    })
    .await;
}

/// Waits for the sidecar to exit with status 0.
async fn stops_cleanly(sidecar: &mut Sidecar) {
    let status = sidecar.wait_exit().await;
    assert!(status.success(), "{status:?}");
}

/// Waits for the sidecar to exit with status 0, having logged that the driver is gone for a
/// reason that contains `reason`.
async fn stops_because(sidecar: &mut Sidecar, reason: &str) {
    stops_cleanly(sidecar).await;
    let gone = sidecar
        .logged("driver gone: stopping")
        .expect("logs why it stops");
    assert!(
        gone["fields"]["reason"].as_str().unwrap().contains(reason),
        "{gone}"
    );
}

/// Runs `kshuffle-sidecar serve --allowed-root <temp dir> args` without `env` set, checks
/// that it exits 64 (usage), and returns its stderr.
fn usage_error(args: &[&str], env: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"))
        .args(["serve", "--allowed-root"])
        .arg(dir.path())
        .args(args)
        .env_remove(env)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn expected() -> Vec<Vec<u8>> {
    PARTITIONS.iter().map(|p| p.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_it_serves_until_the_driver_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await.unwrap();
    start_driver(&server).await;

    let (mut sidecar, addr) = Sidecar::start(dir.path(), &server);
    register(dir.path(), addr).await;
    assert_eq!(fetch_all(addr).await, expected());

    sigterm_while_registered(&mut sidecar).await;
    assert_eq!(
        check_logged(&sidecar),
        "driver pod (labelled)",
        "no --driver-pod, no --driver-url"
    );
    // Several driver checks happen, all "alive": still serving.
    let lists = server.calls().list;
    wait_for("two driver checks", || server.calls().list >= lists + 2).await;
    assert!(
        sidecar.exited().is_none(),
        "must keep serving while the driver runs"
    );
    assert_eq!(fetch_all(addr).await, expected());

    // The API server goes away: never read as "driver gone".
    server.start_outage(Outage::Refuse);
    wait_for("a failed driver check", || {
        sidecar
            .logged("cannot check whether the driver runs; serving on")
            .is_some()
    })
    .await;
    assert!(sidecar.exited().is_none(), "an API outage must not stop it");
    assert_eq!(fetch_all(addr).await, expected());
    server.end_outage();

    assert!(server.exit_pod(NS, DRIVER, 0));
    stops_because(&mut sidecar, "Succeeded").await;
    // Only `list` was used: the ClusterRole in deploy/rbac.yaml (list pods) is enough.
    let calls = server.calls();
    assert!(calls.list > 0);
    assert_eq!(calls.total(), calls.list, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_driver_pod_ends_the_sidecar_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await.unwrap();
    start_driver(&server).await;
    let (mut sidecar, addr) = Sidecar::start(dir.path(), &server);
    register(dir.path(), addr).await;

    sigterm_when_up(&mut sidecar).await;
    let lists = server.calls().list;
    wait_for("a driver check", || server.calls().list > lists).await;
    assert!(sidecar.exited().is_none());

    delete_pod(&server, DRIVER).await;
    stops_cleanly(&mut sidecar).await;
    assert!(sidecar.logged("driver gone: stopping").is_some());
}

/// Client mode: no driver pod exists; the driver's RPC endpoint (`--driver-url`, copied by the
/// webhook from Spark's `SPARK_DRIVER_URL`) decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_client_mode_it_serves_until_the_driver_endpoint_refuses_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await.unwrap();
    // Stands in for the driver's RPC server: it accepts connections while it lives.
    let driver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "spark://CoarseGrainedScheduler@127.0.0.1:{}",
        driver.local_addr().unwrap().port()
    );
    let (mut sidecar, addr) = Sidecar::start_with(dir.path(), &server, &["--driver-url", &url]);
    register(dir.path(), addr).await;
    sigterm_while_registered(&mut sidecar).await;
    let port = driver.local_addr().unwrap().port();
    assert_eq!(
        check_logged(&sidecar),
        format!("driver pod (labelled), else driver endpoint 127.0.0.1:{port}")
    );
    // Several checks: no driver pod listed, the endpoint accepts: still serving.
    let lists = server.calls().list;
    wait_for("three driver checks", || server.calls().list >= lists + 3).await;
    assert!(
        sidecar.exited().is_none(),
        "must keep serving while the driver's endpoint accepts connections: {}",
        sidecar.log()
    );
    assert_eq!(fetch_all(addr).await, expected());

    // The driver exits: its port refuses connections, and the sidecar stops.
    drop(driver);
    stops_because(&mut sidecar, "refuses connections").await;
}

/// Client mode with the driver in a pod (`spark.kubernetes.driver.pod.name`): executor pods
/// are owned by that pod, which carries none of Spark's driver labels; the webhook passes its
/// name (`--driver-pod`), and the sidecar looks it up by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlabelled_driver_pod_named_by_the_owner_reference_decides() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await.unwrap();
    let mut notebook = driver_pod();
    notebook.metadata.name = Some("notebook-0".to_owned());
    notebook.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "jupyter".to_owned())]));
    server.insert_pod(NS, notebook).unwrap();
    // Another app's driver pod is never taken for ours.
    let mut other = driver_pod();
    other.metadata.name = Some("other-driver".to_owned());
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("spark-app-selector".to_owned(), "spark-other".to_owned());
    server.insert_pod(NS, other).unwrap();
    let (mut sidecar, addr) =
        Sidecar::start_with(dir.path(), &server, &["--driver-pod", "notebook-0"]);
    register(dir.path(), addr).await;
    sigterm_while_registered(&mut sidecar).await;
    assert_eq!(
        check_logged(&sidecar),
        "driver pod (labelled, else named notebook-0)"
    );
    // Each check lists by label (nothing) and then by name (the notebook pod).
    let lists = server.calls().list;
    wait_for("three driver checks", || server.calls().list >= lists + 6).await;
    assert!(
        sidecar.exited().is_none(),
        "must keep serving while the owner pod runs: {}",
        sidecar.log()
    );
    assert_eq!(fetch_all(addr).await, expected());

    delete_pod(&server, "notebook-0").await;
    stops_because(&mut sidecar, "notebook-0").await;
}

#[test]
fn a_driver_url_that_is_not_sparks_is_a_usage_error() {
    let stderr = usage_error(
        &[
            "--app-id",
            APP,
            "--namespace",
            NS,
            "--driver-url",
            "http://driver:7078",
        ],
        "KSHUFFLE_DRIVER_URL",
    );
    assert!(stderr.contains("--driver-url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_registered_it_stops_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await.unwrap();
    server.insert_pod(NS, driver_pod()).unwrap();
    let (mut sidecar, _addr) = Sidecar::start(dir.path(), &server);
    sigterm_when_up(&mut sidecar).await;
    stops_cleanly(&mut sidecar).await;
    assert!(
        sidecar
            .logged("signal received and nothing registered: stopping")
            .is_some()
    );
    assert_eq!(server.calls().list, 0, "no API call needed");
}

#[test]
fn missing_app_id_is_a_usage_error() {
    let stderr = usage_error(&["--app-id", " ", "--namespace", NS], "KSHUFFLE_APP_ID");
    assert!(stderr.contains("--app-id"));
}
