//! Helpers shared by the simulated-cluster scenarios of `daemonset/deploy` (`k8s_*.rs`):
//! the manifests as `kubectl kustomize` renders them, the process kubelet mapping their images
//! to local programs, applying them to testkit's fake API server (real HTTP, real `kube`
//! clients; no Kubernetes cluster runs here), polling, the daemons' admin endpoint, and
//! `spark-submit --master k8s://…` with exactly `deploy/spark/spark-submit.flags`.
//!
//! Included by each scenario file with `mod k8s_common;` (a `mod.rs` in a subdirectory is not
//! a test binary of its own). Invariants: every wait is bounded, and nothing outlives the
//! test: a [`Group`] kills its whole process group when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../shuffle/tests/common/mod.rs"]
pub mod common;

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

/// Applies the Namespace and the DaemonSet as rendered.
pub async fn apply(client: &kube::Client) {
    apply_with_args(client, &[]).await;
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

/// Polls every 50 ms, for at most `secs`, until `f` returns `Some`.
pub async fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..secs * 20 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// [`eventually`], with `diagnose()` in the panic message when it times out.
pub async fn eventually_or<T>(
    what: &str,
    secs: u64,
    diagnose: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    for _ in 0..secs * 20 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}\n{}", diagnose());
}

/// An HTTP/1.0 GET; the whole answer, status line and headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A fresh directory under the temp dir, named after the test and this process.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kshuffle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process leading its own process group; the whole group is killed on drop.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

impl Group {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> Group {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        Group(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }
}

/// The pyspark package of a venv: `SPARK_HOME` of the process kubelet.
pub fn pyspark_home(venv: &Path) -> PathBuf {
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

/// `spark-submit --master k8s://<server> --deploy-mode <mode> --name <name>` of `venv`, with
/// [`submit_flags`] then `confs` as `--conf`s, run in `work` with stdout and stderr in
/// `work/<name>.stdout` and `work/<name>.stderr`; the caller adds the application and its
/// arguments and starts it with [`Group::spawn`].
pub fn spark_submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    deploy_mode: &str,
    name: &str,
    confs: &[String],
) -> Command {
    let mut cmd = Command::new(venv.join("bin/spark-submit"));
    cmd.arg("--master")
        .arg(format!("k8s://{}", server.url()))
        .args(["--deploy-mode", deploy_mode, "--name", name]);
    for conf in submit_flags().iter().chain(confs) {
        cmd.arg("--conf").arg(conf);
    }
    cmd.current_dir(work)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .env("PYSPARK_PYTHON", venv.join("bin/python"))
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("SPARK_HOME")
        .env_remove("SPARK_CONF_DIR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join(format!("{name}.stdout"))).unwrap())
        .stderr(std::fs::File::create(work.join(format!("{name}.stderr"))).unwrap());
    cmd
}

/// The text of `/metrics` of the daemon at `ip`.
pub fn metrics_text(ip: &str) -> String {
    http_get(&format!("{ip}:7338"), "/metrics")
}

/// The sum over `ips` of a counter or gauge on the daemons' `/metrics` (all label sets).
pub fn metric(ips: &[String], name: &str) -> u64 {
    ips.iter()
        .map(|ip| {
            metrics_text(ip)
                .lines()
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

/// `GET /v1/apps` of the daemon at `ip` with the bearer `token` (the daemon started with
/// `--admin-token-file`): its registered apps and their executors, as JSON.
pub fn admin_apps(ip: &str, token: &str) -> Value {
    let addr = format!("{ip}:7338");
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /v1/apps HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.contains(" 200 "), "GET /v1/apps on {ip}: {out}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET /v1/apps on {ip}: {e}: {body}"))
}
