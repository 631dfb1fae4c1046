//! The `fake-apiserver` binary as `scripts/sim-cluster.sh` runs it: a simulated cluster of 3
//! nodes (the process kubelet) with the DaemonSet of `daemonset/deploy` applied as `kubectl
//! kustomize` renders it, its image run as the real `kshuffle-node` binary (built beside
//! `fake-apiserver` by any workspace build). No Spark runs here and no Kubernetes cluster is
//! involved. Checked: what it prints (URL, nodes, created/skipped objects, pods), that the URL
//! serves the API (and `kubectl` reads it through the printed kubeconfig), that a daemon
//! answers `/readyz` on every node's address, and that SIGTERM or SIGINT stops the binary and
//! every process its kubelet started. `sim_cluster_with_the_sidecar_webhook_*`: `--sidecar`'s
//! part of the binary (`sidecar/deploy` applied, a CA injected, the webhook Service mapped to
//! the real `kshuffle-sidecar webhook`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kshuffle_testkit::support::processes_mentioning;
use serde_json::Value;

/// The binary under test. If a test fails before stopping it, drop sends it SIGTERM (so it
/// stops its pods' processes), then kills it and anything it left mentioning the work dir.
struct Cluster {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    work: String,
    /// Whether the test sent its signal.
    signalled: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if self.signalled {
                // The test's signal did not stop it: no second chance.
                let _ = self.child.kill();
            } else {
                let _ = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status();
            }
        }
        let _ = self.child.wait();
        for pid in processes_mentioning(&self.work) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Cluster {
    /// Starts the binary, its stdout read line by line on a thread.
    fn spawn(cmd: &mut Command, work: &Path) -> Cluster {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Cluster {
            child,
            lines,
            seen: Vec::new(),
            work: work.display().to_string(),
            signalled: false,
        }
    }

    /// Waits (at most `secs`) for a printed line matching `f`, keeping every line seen.
    fn line(&mut self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| f(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {what}; printed:\n{}", self.seen.join("\n"));
    }
}

fn kubectl() -> std::ffi::OsString {
    std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into())
}

/// `daemonset/deploy` rendered by `kubectl kustomize` into `out`; its kshuffle-node and
/// busybox images.
fn render_daemonset(out: &Path) -> (String, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemonset/deploy");
    let rendered = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (set KUBECTL)");
    assert!(rendered.status.success(), "{rendered:?}");
    std::fs::write(out, &rendered.stdout).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&rendered.stdout).unwrap()).unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    (
        spec["containers"][0]["image"].as_str().unwrap().to_owned(),
        spec["initContainers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether an HTTP answer's status is 200.
fn ok(answer: &str) -> bool {
    answer
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/1.") && l.contains(" 200 "))
}

async fn scenario(network: &str, signal: &str) {
    let work: PathBuf = std::env::temp_dir().join(format!(
        "kshuffle-sim-cluster-{signal}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let manifests = work.join("daemonset.yaml");
    let (node_image, init_image) = render_daemonset(&manifests);
    let bin = Path::new(env!("CARGO_BIN_EXE_fake-apiserver"));
    let node_bin = bin.with_file_name("kshuffle-node");
    assert!(
        node_bin.is_file(),
        "{} is missing: build the whole workspace (cargo build --workspace --bins)",
        node_bin.display()
    );
    let flags =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemonset/deploy/spark/spark-submit.flags");
    let mut cmd = Command::new(bin);
    cmd.args(["--nodes", "3", "--node-network", network])
        .arg("--work-dir")
        .arg(work.join("cluster"))
        .arg("--apply")
        .arg(&manifests)
        .arg("--image")
        .arg(format!("{node_image}={}", node_bin.display()))
        .arg("--address-env")
        .arg(format!("{node_image}=KSHUFFLE_BIND,KSHUFFLE_ADMIN_BIND"))
        .args(["--noop-image", &init_image])
        .args(["--max-probe-period-ms", "200"])
        .args(["--spark-submit", "/venv/bin/spark-submit"])
        .arg("--submit-flags")
        .arg(&flags)
        .args(["--submit-conf", "spark.kshuffle.scheduler.binary=/bin/ks"]);
    let mut cluster = Cluster::spawn(&mut cmd, &work);

    let line = cluster.line("the URL", 30, |l| l.starts_with("fake API server at "));
    let url = line.trim_start_matches("fake API server at ").to_owned();
    let api = url.trim_start_matches("http://").to_owned();
    for i in 1..=3 {
        cluster.line("a node", 5, |l| {
            l.starts_with(&format!("node node-{i} {network}.{i} "))
        });
    }
    let kubeconfig = cluster.line("the kubeconfig", 5, |l| l.starts_with("kubeconfig "));
    let kubeconfig = kubeconfig.trim_start_matches("kubeconfig ").to_owned();
    cluster.line("the Namespace", 10, |l| l == "created Namespace kshuffle");
    cluster.line("the DaemonSet", 10, |l| {
        l == "created DaemonSet kshuffle/kshuffle-node"
    });
    // Kinds the fake does not serve are listed, not failed.
    cluster.line("a skipped ServiceAccount", 10, |l| {
        l == "skipped ServiceAccount kshuffle/kshuffle-node (not served by the fake API server)"
    });
    // The example command carries the flags file's flags, its pod template made absolute.
    cluster.line("the spark-submit command", 10, |l| {
        l.contains(&format!("--master k8s://{url} --deploy-mode client"))
    });
    cluster.line("the pod template flag", 10, |l| {
        l.contains("--conf spark.kubernetes.executor.podTemplateFile=/")
            && l.contains("executor-pod-template.yaml")
    });
    cluster.line("the shuffle service flag", 10, |l| {
        l.contains("--conf spark.shuffle.service.enabled=true")
    });
    cluster.line("the --submit-conf flag", 10, |l| {
        l.contains("--conf spark.kshuffle.scheduler.binary=/bin/ks")
    });
    // One Ready daemon pod per node, on the node's address.
    for i in 1..=3 {
        cluster.line("a Ready daemon pod", 60, |l| {
            l.starts_with("pod kshuffle/kshuffle-node-")
                && l.ends_with(&format!(" node-{i} {network}.{i} Running Ready"))
        });
    }

    // The URL serves the API.
    let version = http_get(&api, "/version");
    assert!(ok(&version), "{version}");
    let ds = http_get(
        &api,
        "/apis/apps/v1/namespaces/kshuffle/daemonsets/kshuffle-node",
    );
    assert!(ds.contains("\"numberReady\":3"), "{ds}");
    // kubectl reads it through the printed kubeconfig.
    let pods = Command::new(kubectl())
        .args([
            "get",
            "pods",
            "-A",
            "--kubeconfig",
            &kubeconfig,
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&pods.stdout);
    assert!(pods.status.success(), "{pods:?}");
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.starts_with("pod/kshuffle-node-"))
            .count(),
        3,
        "{listed}"
    );
    // kubectl logs reads a daemon's log from the kubelet's files.
    let first = listed
        .lines()
        .find(|l| l.starts_with("pod/kshuffle-node-"))
        .unwrap()
        .trim_start_matches("pod/")
        .to_owned();
    let logs = Command::new(kubectl())
        .args([
            "logs",
            "-n",
            "kshuffle",
            &first,
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success(), "{logs:?}");
    assert!(text.contains("\"registry loaded\""), "{text}");
    let missing = Command::new(kubectl())
        .args([
            "logs",
            "-n",
            "kshuffle",
            "nope",
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("pods \"nope\" not found"),
        "{missing:?}"
    );
    // Every node's daemon answers on its node's address.
    for i in 1..=3 {
        let ready = http_get(&format!("{network}.{i}:7338"), "/readyz");
        assert!(ok(&ready), "{ready}");
    }
    // The kubelet maps the daemons' hostPath arguments into the work dir: their command
    // lines name it.
    let work_str = work.display().to_string();
    let started = processes_mentioning(&work_str);
    assert!(started.len() >= 3, "daemon processes: {started:?}");

    // The signal stops the binary (exit 0) and every process its kubelet started.
    let pid = cluster.child.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    cluster.signalled = true;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cluster.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after SIG{signal}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let left = processes_mentioning(&work_str);
    assert!(left.is_empty(), "left running: {left:?} of {started:?}");
    for i in 1..=3 {
        assert!(TcpStream::connect(format!("{network}.{i}:7337")).is_err());
    }
    assert!(TcpStream::connect(&api).is_err());
    drop(cluster);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn sim_cluster_runs_the_daemonset_on_three_nodes_and_stops_everything_on_sigterm() {
    scenario("127.0.11", "TERM").await;
}

#[tokio::test]
async fn sim_cluster_stops_everything_on_sigint() {
    scenario("127.0.12", "INT").await;
}

/// The webhook Service's DNS name, which its certificate must carry.
const WEBHOOK_DNS: &str = "kshuffle-webhook.kshuffle-sidecar.svc";

/// `kshuffle-sidecar webhook` (killed on drop) and its address.
struct Webhook {
    child: Child,
    addr: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the webhook with `env` and a certificate for [`WEBHOOK_DNS`] from a CA made here;
/// returns it and the CA's PEM file.
fn start_webhook(dir: &Path, env: &[(String, String)]) -> (Webhook, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![WEBHOOK_DNS.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (crt, key_file, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = Path::new(env!("CARGO_BIN_EXE_fake-apiserver")).with_file_name("kshuffle-sidecar");
    assert!(
        bin.is_file(),
        "{} is missing: build the whole workspace",
        bin.display()
    );
    let mut child = Command::new(bin)
        .arg("webhook")
        .arg("--tls-cert-file")
        .arg(&crt)
        .arg("--tls-key-file")
        .arg(&key_file)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("webhook listening") {
                let _ = tx.send(());
            }
        }
    });
    let webhook = Webhook {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the webhook did not log that it listens");
    (webhook, ca)
}

/// `--sidecar` of `scripts/sim-cluster.sh`: `sidecar/deploy` applied with a CA injected into
/// its MutatingWebhookConfiguration and its webhook Service mapped to the real
/// `kshuffle-sidecar webhook`; an executor pod created through the API comes back with the
/// sidecar injected.
#[tokio::test]
async fn sim_cluster_with_the_sidecar_webhook_injects_executor_pods() {
    let work: PathBuf = std::env::temp_dir().join(format!(
        "kshuffle-sim-cluster-sidecar-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sidecar/deploy");
    let rendered = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (set KUBECTL)");
    assert!(rendered.status.success(), "{rendered:?}");
    let manifests = work.join("sidecar.yaml");
    std::fs::write(&manifests, &rendered.stdout).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&rendered.stdout).unwrap()).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env: Vec<(String, String)> = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(k, _)| k.starts_with("KSHUFFLE_WEBHOOK_"))
        .collect();
    let (webhook, ca) = start_webhook(&work, &env);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"));
    cmd.arg("--apply")
        .arg(&manifests)
        .arg("--ca-bundle")
        .arg(&ca)
        .arg("--webhook-service")
        .arg(format!(
            "kshuffle-sidecar/kshuffle-webhook={}",
            webhook.addr
        ))
        .arg("--no-request-log");
    let mut cluster = Cluster::spawn(&mut cmd, &work);
    let line = cluster.line("the URL", 30, |l| l.starts_with("fake API server at "));
    let url = line.trim_start_matches("fake API server at ").to_owned();
    cluster.line("the webhook configuration", 10, |l| {
        l == "created MutatingWebhookConfiguration kshuffle-sidecar"
    });
    cluster.line("a skipped Deployment", 10, |l| {
        l.starts_with("skipped Deployment kshuffle-sidecar/kshuffle-webhook")
    });

    // An executor pod, as Spark creates it, opted in by label.
    let review: Value = serde_json::from_str(include_str!(
        "../../sidecar/tests/fixtures/executor-review.json"
    ))
    .unwrap();
    let mut pod = review["request"]["object"].clone();
    pod["metadata"]["labels"]["kshuffle.io/inject"] = "true".into();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_namespace = "spark-jobs".into();
    let client = kube::Client::try_from(config).unwrap();
    let created = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "spark-jobs")
        .create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    let containers: Vec<String> = created
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(containers, ["spark-kubernetes-executor", "kshuffle"]);
    drop(cluster);
    drop(webhook);
    let _ = std::fs::remove_dir_all(&work);
}
