//! Real `spark-submit --master k8s://…` in client mode against the fake API server, one test
//! per Spark version: Spark's own Kubernetes client (fabric8 7.6 on Vert.x in 4.3, fabric8
//! 6.7 on OkHttp in 3.5) is the client, and the test asserts what it did through the API.
//!
//! The application only starts a SparkContext asking for two executors and stops it when the
//! test says so (`tests/spark/k8s_client.py`): no executor process runs (the fake's kubelet
//! only marks pods Running), so nothing here depends on executors registering.
//!
//! Invariants: every wait is bounded; spark-submit runs in its own process group, killed
//! when the test ends (also when it fails: [`Group`]'s Drop), and the job kills its group if
//! the test process goes away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kshuffle_testkit::apiserver::{FakeApiServer, Node, ProcessKubelet, Record, Resource};
use kshuffle_testkit::support::{self, Group, work_dir};
use serde_json::Value;

const NS: &str = "spark-jobs";
/// How long Spark may take to create its executor pods (JVM start included).
const PODS_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the application may take to stop and exit after the go file appears.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `f` until it returns `Some` (the fake's state is read without API calls).
async fn until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a EnvVar> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
}

fn env_value(pod: &Pod, name: &str) -> String {
    env(pod, name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("pod has no env {name}: {pod:#?}"))
}

fn label<'a>(pod: &'a Pod, key: &str) -> &'a str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map_or("", String::as_str)
}

/// A running spark-submit with its output collected by threads.
struct Submitted {
    group: Group,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `spark-submit --master k8s://<server> --deploy-mode client` of
/// `tests/spark/k8s_client.py` with `confs` and the job's `args`.
fn submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    confs: &[&str],
    args: &[&str],
) -> Submitted {
    let confs: Vec<String> = [
        "spark.kubernetes.container.image=kshuffle/spark-test",
        &format!("spark.kubernetes.namespace={NS}"),
        "spark.driver.host=127.0.0.1",
        "spark.executor.instances=2",
        "spark.ui.enabled=false",
    ]
    .iter()
    .chain(confs)
    .map(|c| (*c).to_owned())
    .collect();
    let mut cmd =
        support::spark_submit_command(venv, server, work, "client", "k8s-client-test", &confs);
    cmd.arg(workspace_root().join("testkit/tests/spark/k8s_client.py"))
        .args(args)
        .args(["--test-pid", &std::process::id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = Group::spawn(&mut cmd);
    let mut stdout = group.0.stdout.take().unwrap();
    let mut stderr = group.0.stderr.take().unwrap();
    Submitted {
        group,
        stdout: std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        }),
        stderr: std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        }),
    }
}

impl Submitted {
    /// Waits (bounded) for spark-submit to exit successfully; returns its JSON line.
    async fn finish(self) -> Value {
        let Submitted {
            group,
            stdout,
            stderr,
        } = self;
        let waited = tokio::task::spawn_blocking(move || {
            let mut group = group;
            let status = group.0.wait();
            (group, status)
        });
        let (group, status) = within(EXIT_TIMEOUT, "spark-submit to exit", waited)
            .await
            .unwrap();
        group.kill(); // closes the pipes of anything left in the group
        let stdout = stdout.join().unwrap();
        let stderr = stderr.join().unwrap();
        let tail: String = {
            let lines: Vec<&str> = stderr.lines().collect();
            lines[lines.len().saturating_sub(80)..].join("\n")
        };
        assert!(
            status.as_ref().is_ok_and(std::process::ExitStatus::success),
            "spark-submit: {status:?}\nstdout:\n{stdout}\nstderr (tail):\n{tail}"
        );
        stdout
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no JSON line on stdout:\n{stdout}\nstderr:\n{tail}"))
    }
}

/// Runs the application with Spark `version` and asserts, through the fake, what its
/// Kubernetes client did.
async fn spark_client_mode(version: &str, fabric8: &str) {
    let venv = support::spark_venv(version);
    let server = FakeApiServer::start().await.unwrap();
    let work = work_dir(&format!("spark-k8s-{version}"));
    let go_file = work.join("go");
    let go = go_file.to_str().unwrap();
    // Do not wait for executors that will never register before handing back the context.
    let spark = submit(
        &venv,
        &server,
        &work,
        &["spark.scheduler.minRegisteredResourcesRatio=0"],
        &["--go-file", go],
    );

    // While the SparkContext is up: its ConfigMap and two executor pods.
    let pods = within(
        PODS_TIMEOUT,
        "two executor pods",
        until(|| {
            let pods = server.pods(NS);
            (pods.len() >= 2).then_some(pods)
        }),
    )
    .await;
    let cms = server.objects(Resource::ConfigMaps, NS);
    let requests_up = server.requests();

    std::fs::write(&go_file, b"go").unwrap();
    let result = spark.finish().await;
    assert_eq!(result["spark_version"], version);
    let app_id = result["app_id"].as_str().unwrap().to_owned();

    // The executor pods: exactly the two requested, with Spark's labels and env.
    assert_eq!(pods.len(), 2, "{pods:#?}");
    let mut ids: Vec<&str> = pods.iter().map(|p| label(p, "spark-exec-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2"]);
    for pod in &pods {
        let id = label(pod, "spark-exec-id");
        assert_eq!(label(pod, "spark-app-selector"), app_id);
        assert_eq!(label(pod, "spark-role"), "executor");
        assert_eq!(label(pod, "spark-version"), version);
        let name = pod.metadata.name.as_deref().unwrap();
        assert!(name.ends_with(&format!("-exec-{id}")), "{name}");
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("kshuffle/spark-test"));
        assert_eq!(c.args.as_deref(), Some(&["executor".to_owned()][..]));
        let driver_url = env_value(pod, "SPARK_DRIVER_URL");
        assert!(
            driver_url.starts_with("spark://CoarseGrainedScheduler@127.0.0.1:"),
            "{driver_url}"
        );
        assert_eq!(env_value(pod, "SPARK_EXECUTOR_ID"), id);
        assert_eq!(env_value(pod, "SPARK_APPLICATION_ID"), app_id);
        assert_eq!(env_value(pod, "SPARK_EXECUTOR_CORES"), "1");
        assert_eq!(env_value(pod, "SPARK_EXECUTOR_MEMORY"), "1024m");
        // The pod IP comes from the downward API, resolved by the kubelet.
        let ip = env(pod, "SPARK_EXECUTOR_POD_IP").expect("SPARK_EXECUTOR_POD_IP");
        let field = ip.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(field.map(|f| f.field_path.as_str()), Some("status.podIP"));
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .unwrap();
        assert_eq!(requests["cpu"].0, "1");
        assert_eq!(
            requests["memory"].0, "1408Mi",
            "1 GiB heap + 384 MiB overhead"
        );
    }

    // Its ConfigMap of executor settings, labelled for the application.
    assert_eq!(cms.len(), 1, "{cms:#?}");
    let cm = &cms[0];
    assert_eq!(
        cm["metadata"]["labels"]["spark-app-selector"],
        app_id.as_str()
    );
    assert_eq!(cm["metadata"]["labels"]["spark-role"], "executor");
    let props = cm["data"]["spark.properties"].as_str().unwrap();
    assert!(
        props.contains(&format!("spark.kubernetes.namespace={NS}")),
        "{props}"
    );

    // Its executor watch: a WebSocket upgrade with the application's selector, accepted.
    let from_spark = |r: &&Record| r.user_agent == format!("fabric8-kubernetes-client/{fabric8}");
    let watch = requests_up
        .iter()
        .filter(from_spark)
        .find(|r| r.param("watch").as_deref() == Some("true"))
        .unwrap_or_else(|| panic!("no watch in {requests_up:#?}"));
    assert!(watch.websocket, "{watch:?}");
    assert_eq!(watch.status, 101, "{watch:?}");
    assert_eq!(watch.path, format!("/api/v1/namespaces/{NS}/pods"));
    let selector = watch.param("labelSelector").unwrap();
    assert!(
        selector.starts_with(&format!("spark-app-selector={app_id},spark-role=executor")),
        "{selector}"
    );
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));

    // On stop: executor pods deleted by label, and so is the ConfigMap.
    let requests = server.requests();
    let deleted = requests
        .iter()
        .filter(from_spark)
        .find(|r| r.method == "DELETE" && r.path == format!("/api/v1/namespaces/{NS}/pods"))
        .unwrap_or_else(|| panic!("no delete of pods in {requests:#?}"));
    assert_eq!(deleted.status, 200);
    assert_eq!(
        deleted.param("labelSelector"),
        Some(format!("spark-app-selector={app_id},spark-role=executor"))
    );
    within(
        Duration::from_secs(30),
        "the executor pods to go",
        until(|| server.pods(NS).is_empty().then_some(())),
    )
    .await;
    assert!(server.objects(Resource::ConfigMaps, NS).is_empty());
    // Nothing Spark asked for was unknown to the fake.
    let unanswered: Vec<_> = requests
        .iter()
        .filter(|r| r.status == 404 || r.status == 405 || r.status >= 500)
        .collect();
    assert!(unanswered.is_empty(), "{unanswered:#?}");
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_client_4_3_in_client_mode() {
    spark_client_mode("4.3.0", "7.6.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_client_3_5_in_client_mode() {
    spark_client_mode("3.5.9", "6.7.2").await;
}

/// The pyspark package of a venv (`SPARK_HOME` of the process kubelet), with Spark's jars.
fn pyspark_home(venv: &Path) -> PathBuf {
    let home = support::pyspark_home(venv);
    assert!(home.join("jars").is_dir(), "{}", home.display());
    home
}

/// Spark's executors, run as local JVMs by the process kubelet on the pods Spark created,
/// register with the driver and run a shuffle job whose result is exact; on stop the pods
/// are deleted and their processes are gone.
async fn spark_executors_on_the_process_kubelet(version: &str) {
    let venv = support::spark_venv(version);
    let work = work_dir(&format!("spark-kubelet-{version}"));
    let kubelet = ProcessKubelet::new(pyspark_home(&venv), work.join("kubelet"))
        .java_options(support::TEST_JVM_OPTIONS);
    let server = FakeApiServer::builder()
        .nodes(vec![Node::new("node-1", 4, 8), Node::new("node-2", 4, 8)])
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    let spark = submit(
        &venv,
        &server,
        &work,
        &[
            "spark.executor.memory=512m",
            "spark.executor.cores=1",
            // Fail fast instead of waiting out retries if an executor cannot serve.
            "spark.task.maxFailures=1",
        ],
        &["--shuffle"],
    );
    // Observe the pods while they run.
    let running = within(
        PODS_TIMEOUT,
        "two executor pods Running",
        until(|| {
            let pods = server.pods(NS);
            let running: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() == 2).then_some(running)
        }),
    )
    .await;
    let result = spark.finish().await;
    assert_eq!(result["got"], result["expected"], "{result}");

    let mut pod_ips: Vec<String> = running
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    pod_ips.sort();
    for ip in &pod_ips {
        assert!(ip.starts_with("127.1."), "{ip}");
    }
    for p in &running {
        let host_ip = p.status.as_ref().unwrap().host_ip.clone().unwrap();
        assert!(host_ip.starts_with("127.0.1."), "{host_ip}");
    }
    // The executors Spark used are the ones on the pods' addresses.
    let hosts: Vec<String> = serde_json::from_value(result["executor_hosts"].clone()).unwrap();
    assert_eq!(hosts, pod_ips);
    // Each ran the executor backend and registered with the driver.
    for p in &running {
        let name = p.metadata.name.as_deref().unwrap();
        let log = std::fs::read_to_string(kubelet.pod_dir(NS, name).join("stderr")).unwrap();
        assert!(
            log.contains("Successfully registered with driver"),
            "{name}:\n{log}"
        );
        // Its block manager wrote into the pod's emptyDir (SPARK_LOCAL_DIRS, mapped).
        let local = kubelet
            .pod_dir(NS, name)
            .join("volumes/spark-local-dir-1/blockmgr-");
        assert!(
            log.contains(&format!("Created local directory at {}", local.display())),
            "{name}:\n{log}"
        );
    }
    // Spark deleted its executor pods; the kubelet ended their processes and removed them.
    within(
        Duration::from_secs(60),
        "the executor pods to go",
        until(|| server.pods(NS).is_empty().then_some(())),
    )
    .await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_kubelet_4_3_runs_executors_for_a_shuffle() {
    spark_executors_on_the_process_kubelet("4.3.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_kubelet_3_5_runs_executors_for_a_shuffle() {
    spark_executors_on_the_process_kubelet("3.5.9").await;
}
