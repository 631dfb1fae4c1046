//! Sidecar mode end to end with real, unmodified Spark on a simulated cluster (no Kubernetes
//! cluster runs here): testkit's fake API server (real HTTP; Spark's own fabric8 client and
//! our `kube` client talk to it) holds the MutatingWebhookConfiguration of `sidecar/deploy`
//! as `kubectl kustomize` renders it; the real `kshuffle-sidecar webhook` runs as a local
//! process with the Deployment's env, its Service mapped to it, called over HTTPS for every
//! executor pod Spark creates; and the process kubelet runs the injected pods on 3 nodes:
//! Spark's executor container as a local JVM, the injected sidecar image as the real
//! `kshuffle-sidecar` binary binding its pod's IP (`KSHUFFLE_BIND`/`KSHUFFLE_ADMIN_BIND`, in
//! place of the pod's network namespace), both sharing the pod's emptyDir local dir (one path
//! mapping, no mount namespaces).
//!
//! `spark_k8s_sidecar_*`: `spark-submit --master k8s://…` in client mode with the `--conf`
//! flags of `sidecar/README.md`, dynamic allocation on. Every executor pod is injected and its
//! executor registers with its own sidecar at `podIP:7337`. Dynamic allocation removes the idle
//! executors by deleting their pods; the pods stay terminating because their sidecars keep
//! serving after SIGTERM (the driver still runs: in client mode there is no driver pod, so the
//! sidecar asks the driver's RPC endpoint, which the webhook copied from `SPARK_DRIVER_URL`). A
//! later stage on new executors reads the removed executors' output from those sidecars: the
//! result is exact, the map stage ran once, and the terminating pods' sidecars served every
//! block of it. When the application ends, the sidecars see the driver's endpoint refuse
//! connections, stop, and the pods are removed.
//!
//! In `spark_k8s_sidecar_3_5_with_kshuffle_scheduler_*` the executor pods are allocated by
//! `kshuffle-scheduler` through the JVM adapter of `scheduler/jvm`, not by Spark's allocator.
//!
//! `spark_k8s_sidecar_4_3_cluster_mode_*`: the same in cluster mode, the driver run by the
//! kubelet as a pod (Spark's image convention `driver`): the webhook gives the sidecars the
//! driver pod's name (the executor pods' ownerReference), and they stop once the driver pod
//! has Succeeded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shuffle/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kshuffle_testkit::apiserver::ProcessKubelet;
use kshuffle_testkit::support::{
    Group, eventually, pyspark_home, scrape_metrics, spark_submit, work_dir,
};
use kshuffle_testkit::{FakeApiServer, Node};
use kube::Api;
use kube::api::PostParams;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;

const SERVICE_DNS: &str = "kshuffle-webhook.kshuffle-sidecar.svc";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// The application's name; spark-submit's output is in `<work>/<SUBMIT>.stdout` and `.stderr`.
const SUBMIT: &str = "k8s-sidecar-test";
/// Map tasks × reduce tasks of the job's one shuffle (`k8s_sidecar.py`).
const MAPS: u64 = 6;
const REDUCES: u64 = 4;

/// The rendered manifests of `sidecar/deploy`, by kind.
fn rendered(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let docs = kshuffle_testkit::kustomize::render(&dir).unwrap_or_else(|e| panic!("{e}"));
    kshuffle_testkit::kustomize::one(&docs, kind)
        .unwrap_or_else(|e| panic!("{e}"))
        .clone()
}

/// The `KSHUFFLE_WEBHOOK_*` env of the rendered Deployment's webhook container.
fn deployment_env() -> BTreeMap<String, String> {
    let deployment = rendered("Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    env.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(k, _)| k.starts_with("KSHUFFLE_WEBHOOK_"))
        .collect()
}

/// The real webhook binary with the Deployment's env, serving HTTPS with a certificate for its
/// Service name from a test CA (what cert-manager does in the cluster).
struct Webhook {
    _child: Group,
    addr: SocketAddr,
    ca_pem: String,
}

fn start_webhook(dir: &Path) -> Webhook {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVICE_DNS.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"));
    cmd.arg("webhook")
        .arg("--tls-cert-file")
        .arg(&cert_path)
        .arg("--tls-key-file")
        .arg(&key_path)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .env_remove("RUST_LOG")
        .envs(deployment_env())
        .stderr(Stdio::piped());
    let mut child = Group::spawn(&mut cmd);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = dir.join("webhook.log");
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if line.contains("webhook listening") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the webhook did not log that it listens");
    Webhook {
        _child: child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        ca_pem: ca_cert.pem(),
    }
}

/// The MutatingWebhookConfiguration of `sidecar/deploy`, as rendered, with the CA injected
/// (cert-manager's CA injector does this in the cluster).
fn webhook_config(ca_pem: &str) -> MutatingWebhookConfiguration {
    let mut config: MutatingWebhookConfiguration =
        serde_json::from_value(rendered("MutatingWebhookConfiguration")).unwrap();
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    config
}

/// The `--conf` flags of the `spark-submit` block in `sidecar/README.md`.
fn readme_flags() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## spark-submit flags")
        .nth(1)
        .expect("README has a spark-submit flags section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section has a code block");
    let flags: Vec<String> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--conf "))
        .map(|c| c.trim_end_matches('\\').trim().to_owned())
        .collect();
    for want in [
        "spark.shuffle.service.enabled=true",
        "spark.dynamicAllocation.enabled=true",
        "spark.kubernetes.executor.label.kshuffle.io/inject=true",
    ] {
        assert!(flags.iter().any(|f| f == want), "{want} in {flags:?}");
    }
    flags
}

/// The counters of a sidecar's `/metrics` (admin port 7338 on its pod IP), by name.
fn counters(ip: &str) -> BTreeMap<String, u64> {
    scrape_metrics(&format!("{ip}:7338"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_executor(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("spark-role"))
        .is_some_and(|r| r == "executor")
}

fn driver_pod(server: &FakeApiServer, ns: &str) -> Option<Pod> {
    server.pods(ns).into_iter().find(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("spark-role"))
            .is_some_and(|r| r == "driver")
    })
}

/// Where Spark's driver runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `spark-submit` on the test machine is the driver; no driver pod.
    Client,
    /// The driver runs in a pod (the kubelet's `driver` convention).
    Cluster,
}

/// Waits for `file` in `work` (written by the job), failing early once the application
/// cannot write it any more (spark-submit exited in client mode, the driver pod failed in
/// cluster mode).
async fn handshake(
    work: &Path,
    file: &str,
    submit: &mut Group,
    server: &FakeApiServer,
    ns: &str,
    mode: Mode,
) -> Value {
    let path = work.join(file);
    eventually(file, 150, || {
        if mode == Mode::Client
            && let Some(status) = submit.0.try_wait().unwrap()
        {
            let stderr =
                std::fs::read_to_string(work.join(format!("{SUBMIT}.stderr"))).unwrap_or_default();
            panic!(
                "spark-submit exited ({status}) before {file}:\n{}",
                common::tail(&stderr, 60)
            );
        }
        if mode == Mode::Cluster
            && let Some(driver) = driver_pod(server, ns)
            && driver.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        {
            panic!("the driver pod failed before {file}: {driver:?}");
        }
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    })
    .await
}

/// One scenario; `pod_network` (two bytes, e.g. `127.31`) is its own, because the sidecars
/// bind the fixed ports 7337/7338 (and cluster-mode drivers 7078/7079) on their pod IPs.
/// `kshuffle_scheduler`: the driver allocates executor pods through `kshuffle-scheduler` and
/// the JVM adapter of `scheduler/jvm`, not Spark's own allocator: the webhook injects them
/// all the same.
async fn spark_sidecar_scenario(
    version: &str,
    mode: Mode,
    pod_network: &str,
    kshuffle_scheduler: bool,
) {
    let venv = common::spark_venv(version);
    let work = work_dir(&format!("spark-k8s-sidecar-{version}-{mode:?}"));
    let env = deployment_env();
    let image = env["KSHUFFLE_WEBHOOK_IMAGE"].clone();
    let webhook = start_webhook(&work);
    let kubelet = ProcessKubelet::new(pyspark_home(&venv), work.join("kubelet"))
        .image(&image, env!("CARGO_BIN_EXE_kshuffle-sidecar"))
        .address_env(&image, &["KSHUFFLE_BIND", "KSHUFFLE_ADMIN_BIND"])
        .pod_network(pod_network)
        // The injected probes' period is 10 s.
        .max_probe_period(Duration::from_millis(500))
        .java_options(kshuffle_testkit::support::TEST_JVM_OPTIONS);
    let server = FakeApiServer::builder()
        .nodes(NODES.iter().map(|n| Node::new(*n, 4, 8)).collect())
        .webhook_service("kshuffle-sidecar", "kshuffle-webhook", webhook.addr)
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    let client = kshuffle_testkit::kube_client(&server, "default").unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &webhook_config(&webhook.ca_pem))
        .await
        .unwrap();

    let flags = readme_flags();
    let spark_ns = flags
        .iter()
        .find_map(|f| f.strip_prefix("spark.kubernetes.namespace="))
        .unwrap_or("default")
        .to_owned();
    let mut confs: Vec<String> = flags;
    confs.extend(
        [
            "spark.kubernetes.container.image=kshuffle/spark-test",
            "spark.ui.enabled=false",
            "spark.executor.memory=512m",
            "spark.executor.cores=1",
            "spark.dynamicAllocation.minExecutors=0",
            "spark.dynamicAllocation.initialExecutors=0",
            "spark.dynamicAllocation.maxExecutors=2",
            "spark.dynamicAllocation.executorIdleTimeout=2s",
            "spark.dynamicAllocation.schedulerBacklogTimeout=1s",
            "spark.task.maxFailures=1",
        ]
        .map(str::to_owned),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/k8s_sidecar.py");
    let script = match mode {
        Mode::Client => {
            confs.push("spark.driver.host=127.0.0.1".to_owned());
            script.display().to_string()
        }
        Mode::Cluster => {
            confs.extend([
                // The driver's API client (in-cluster default: https://kubernetes.default.svc).
                format!("spark.kubernetes.driver.master={}", server.url()),
                "spark.kubernetes.submission.waitAppCompletion=false".to_owned(),
                format!("spark.pyspark.python={}", venv.join("bin/python").display()),
                "spark.driver.memory=512m".to_owned(),
            ]);
            // A path "in the image": the kubelet runs the driver on this machine's files.
            format!("local://{}", script.display())
        }
    };
    if kshuffle_scheduler {
        let bin =
            Path::new(env!("CARGO_BIN_EXE_kshuffle-sidecar")).with_file_name("kshuffle-scheduler");
        let scheme = if mode == Mode::Cluster {
            "local://"
        } else {
            ""
        };
        confs.extend(kshuffle_testkit::support::kshuffle_scheduler_confs(
            &bin,
            &pyspark_home(&venv),
            &work,
            scheme,
        ));
    }
    let deploy_mode = format!("{mode:?}").to_lowercase();
    let mut cmd = spark_submit(&venv, &server, &work, &deploy_mode, SUBMIT, &confs);
    cmd.arg(script)
        .args(["--test-pid", &std::process::id().to_string()])
        .arg("--dir")
        .arg(&work);
    let mut submit = Group::spawn(&mut cmd);
    let started = tokio::time::Instant::now();

    // Phase A ran and Spark removed every executor; their pods must be terminating, not gone.
    let phase_a = handshake(&work, "phase_a.json", &mut submit, &server, &spark_ns, mode).await;
    assert_eq!(phase_a["executors_gone"], true, "{phase_a}");
    eprintln!("{:?}: phase A done, its executors gone", started.elapsed());
    let writers = eventually("the phase A pods to be terminating", 30, || {
        let pods: Vec<Pod> = server
            .pods(&spark_ns)
            .into_iter()
            .filter(is_executor)
            .collect();
        (!pods.is_empty() && pods.iter().all(terminating)).then_some(pods)
    })
    .await;
    let hosts: Vec<&str> = phase_a["phase_a_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let mut before = BTreeMap::new();
    for pod in &writers {
        let ip = pod_ip(pod);
        // Injected by the webhook, as the pod object says.
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert!(
            annotations.contains_key("kshuffle.io/injected"),
            "{annotations:?}"
        );
        let containers = &pod.spec.as_ref().unwrap().containers;
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["spark-kubernetes-executor", "kshuffle"], "{pod:?}");
        assert_eq!(containers[1].image.as_deref(), Some(image.as_str()));
        // How the sidecar learns that the application ended: the driver pod that owns the
        // executor pod (cluster mode), or the driver's endpoint (client mode).
        let sidecar_env: Vec<&str> = containers[1]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .filter(|n| n.starts_with("KSHUFFLE_DRIVER_"))
            .collect();
        match mode {
            Mode::Client => assert_eq!(sidecar_env, ["KSHUFFLE_DRIVER_URL"]),
            Mode::Cluster => assert_eq!(sidecar_env, ["KSHUFFLE_DRIVER_POD"]),
        }
        // The executor JVM has exited; the sidecar still runs (so the pod terminates, slowly).
        let statuses = pod.status.as_ref().unwrap().container_statuses.clone();
        let state_of = |c: &str| {
            statuses
                .iter()
                .flatten()
                .find(|s| s.name == c)
                .and_then(|s| s.state.clone())
                .unwrap_or_default()
        };
        assert!(
            state_of("spark-kubernetes-executor").terminated.is_some(),
            "{statuses:?}"
        );
        assert!(state_of("kshuffle").running.is_some(), "{statuses:?}");
        // Its executor registered with this sidecar (podIP:7337).
        let c = counters(&ip);
        assert_eq!(c["kshuffle_registrations_total"], 1, "{ip}: {c:?}");
        before.insert(name(pod), (ip, c));
    }
    // The executors Spark still listed after phase A (an idle one may already have been
    // removed) ran in these pods: executors' hosts are their pod IPs.
    for host in &hosts {
        assert!(
            before.values().any(|(ip, _)| ip == host),
            "{host} is not a phase A pod: {before:?}"
        );
    }
    std::fs::write(work.join("go_b"), "").unwrap();

    // Phase B ran on new executors, reading phase A's output from the terminating pods.
    let phase_b = handshake(&work, "phase_b.json", &mut submit, &server, &spark_ns, mode).await;
    let mut served_chunks = 0;
    let mut served_bytes = 0;
    for (pod, (ip, was)) in &before {
        let stored = server.pod(&spark_ns, pod).expect("still terminating");
        assert!(terminating(&stored), "{pod}");
        let now = counters(ip);
        served_chunks += now["kshuffle_chunks_served_total"] - was["kshuffle_chunks_served_total"];
        served_bytes += now["kshuffle_served_bytes_total"] - was["kshuffle_served_bytes_total"];
    }
    std::fs::write(work.join("go_end"), "").unwrap();
    eprintln!("{:?}: phase B done", started.elapsed());

    let result = handshake(&work, "result.json", &mut submit, &server, &spark_ns, mode).await;
    let status = eventually("spark-submit to exit", 60, || submit.0.try_wait().unwrap()).await;
    let stderr = std::fs::read_to_string(work.join(format!("{SUBMIT}.stderr"))).unwrap();
    assert!(
        status.success(),
        "spark-submit: {status}\n{}",
        common::tail(&stderr, 60)
    );
    eprintln!(
        "{result}\nphase B: {served_chunks} chunks, {served_bytes} bytes from the sidecars of {} deleted pods",
        before.len()
    );
    assert_eq!(result["spark_version"], version, "{result}");
    // Who created the executor pods (in client mode the driver's log is spark-submit's).
    if mode == Mode::Client {
        let ours = stderr.contains("kshuffle-scheduler is ready at")
            && stderr.contains("created executor pod");
        let sparks = stderr.contains("Going to request");
        assert_eq!(
            (ours, sparks),
            (kshuffle_scheduler, !kshuffle_scheduler),
            "{}",
            common::tail(&stderr, 60)
        );
    }
    assert_eq!(result["phase_a_count"], 200_000, "{result}");
    assert_eq!(result["phase_b_correct"], true, "{result}");
    // The map stage ran once: phase B read phase A's output, written by executors whose pods
    // were deleted.
    assert_eq!(result["map_records_a"], 200_000, "{result}");
    assert_eq!(result["map_records_b"], 200_000, "{result}");
    // Phase B's executors are new pods: every block of the shuffle (each reducer's partition
    // of each map output) was served by the sidecars of the deleted pods.
    for host in phase_b["phase_b_hosts"].as_array().unwrap() {
        assert!(
            !before.values().any(|(ip, _)| host == ip),
            "{host} is a phase A pod: {phase_b}"
        );
    }
    assert_eq!(served_chunks, MAPS * REDUCES, "{before:?}");
    assert!(served_bytes > 0);
    // Every executor pod went through the webhook (the pod-label entry; the namespace is not
    // labelled).
    let executor_pods = (before.len() + phase_b["phase_b_hosts"].as_array().unwrap().len()) as u64;
    assert!(
        server.webhook_calls() >= executor_pods,
        "{} webhook calls for {executor_pods} executor pods",
        server.webhook_calls()
    );

    // The application ended: the driver pod Succeeded (cluster mode), or there is no driver
    // pod and the driver's endpoint refuses connections (client mode). Every sidecar stops
    // and every executor pod is removed.
    let why = match mode {
        Mode::Client => "refuses connections",
        Mode::Cluster => "Succeeded",
    };
    eventually("every executor pod to be removed", 60, || {
        (!server.pods(&spark_ns).iter().any(is_executor)).then_some(())
    })
    .await;
    for pod in before.keys() {
        let log = std::fs::read_to_string(kubelet.pod_dir(&spark_ns, pod).join("kshuffle.stderr"))
            .unwrap();
        for want in [
            "signal received: serving until the driver ends",
            "driver gone: stopping",
            why,
        ] {
            assert!(
                log.contains(want),
                "{want:?} not in {pod}'s sidecar log:\n{log}"
            );
        }
    }
    eprintln!(
        "{:?}: every sidecar stopped, every executor pod removed",
        started.elapsed()
    );
    if mode == Mode::Cluster {
        let driver = driver_pod(&server, &spark_ns).expect("the driver pod stays");
        let phase = driver.status.and_then(|s| s.phase);
        assert_eq!(phase.as_deref(), Some("Succeeded"));
    }
    drop(submit);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_sidecar_4_3_deleted_executor_pods_serve_until_the_driver_ends() {
    spark_sidecar_scenario("4.3.0", Mode::Client, "127.31", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_sidecar_3_5_with_kshuffle_scheduler_deleted_executor_pods_serve_until_the_driver_ends()
 {
    spark_sidecar_scenario("3.5.9", Mode::Client, "127.32", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_sidecar_4_3_cluster_mode_serves_until_the_driver_pod_succeeds() {
    spark_sidecar_scenario("4.3.0", Mode::Cluster, "127.33", false).await;
}
