//! Real Spark on a "node": unmodified Spark (pyspark 4.3.0 and 3.5.9, `local-cluster[2,1,1024]`,
//! executors in their own JVMs) writes shuffle output into ONE shared directory standing for
//! the node's hostPath (`spark.local.dir` is the root itself, as `SPARK_LOCAL_DIRS` is the
//! hostPath mount in `daemonset/deploy/spark/executor-pod-template.yaml`), with the flags of
//! `daemonset/deploy/spark/spark-submit.flags` that apply outside Kubernetes, and the real
//! `kshuffle-node` binary serving every executor. Both writing executors are released
//! (dynamic allocation) and new ones read their output back without recomputation.
//!
//! Then the node's driver watch, pointed by a kubeconfig at the fake API server
//! (`kshuffle_testkit::FakeApiServer`: real HTTP, real `kube` client; no Kubernetes cluster
//! runs here), sees the driver pod of the real application (labels `spark-role=driver`,
//! `spark-app-selector=<the app id Spark chose>`) reach `Succeeded`: exactly that app's
//! registrations and `blockmgr-*` dirs must go, while a second app registered on the same
//! node, whose driver pod is still running, keeps its registration and files.
//!
//! One Spark session per version, 30-60 s; `.config/nextest.toml` runs `spark_*` tests one
//! at a time. `KSHUFFLE_E2E_VERBOSE=1` echoes Spark's stderr, `KSHUFFLE_E2E_KEEP=1` keeps the
//! temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shuffle/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, SparkDirs, run_with_timeout, spark_venv, tail};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kshuffle::client::Client;
use kshuffle::fixture::ExecutorDirs;
use kshuffle_testkit::FakeApiServer;
use serde_json::Value;

/// Deadline of the Spark session (30-60 s on an idle 2-core machine).
const SESSION_TIMEOUT: Duration = Duration::from_secs(480);
/// How long the node may take to see the watch up, or to remove an ended app.
const DEADLINE: Duration = Duration::from_secs(60);
/// The namespace of the driver pods in the fake API server.
const NS: &str = "spark";
/// The other application on the node: registered, files written, its driver still running.
const OTHER_APP: &str = "app-20260101000000-0042";
const ADMIN_TOKEN: &str = "spark-node-test-token";

/// One Spark cluster at a time, also under `cargo test` (threads of one process).
static SPARK: Mutex<()> = Mutex::new(());

#[test]
fn spark_node_4_3_shared_root_and_driver_cleanup() {
    node_session("4.3.0");
}

#[test]
fn spark_node_3_5_shared_root_and_driver_cleanup() {
    node_session("3.5.9");
}

// === helpers ===

/// The `--conf` flags of `deploy/spark/spark-submit.flags` that mean something outside
/// Kubernetes (the `spark.kubernetes.*` ones do not; the port is the test daemon's own).
fn flags_for_local_cluster() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/spark/spark-submit.flags");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(conf) = line.strip_prefix("--conf ") else {
            continue;
        };
        let (key, value) = conf.split_once('=').unwrap();
        if key.starts_with("spark.kubernetes.") || key == "spark.shuffle.service.port" {
            continue;
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    let keys: BTreeSet<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "spark.shuffle.service.enabled",
        "spark.dynamicAllocation.enabled",
        "spark.dynamicAllocation.shuffleTracking.enabled",
        "spark.shuffle.readHostLocalDisk",
    ] {
        assert!(keys.contains(key), "{} has no {key}", path.display());
    }
    out
}

fn driver_pod(name: &str, app_id: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            labels: Some(BTreeMap::from([
                ("spark-role".to_owned(), "driver".to_owned()),
                ("spark-app-selector".to_owned(), app_id.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "spark-kubernetes-driver".to_owned(),
                image: Some("spark:test".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// `GET /v1/apps` on the admin port: app id -> its executors' registered dirs.
fn registered_apps(admin: SocketAddr) -> BTreeMap<String, Vec<String>> {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/apps HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET /v1/apps: {response}");
    let apps: Value = serde_json::from_str(body).unwrap();
    apps.as_array()
        .unwrap()
        .iter()
        .map(|app| {
            let dirs = app["executors"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|e| e["localDirs"].as_array().unwrap().clone())
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            (app["appId"].as_str().unwrap().to_owned(), dirs)
        })
        .collect()
}

/// The `blockmgr-*` dirs under `root`, at any depth (a standalone worker, which
/// `local-cluster` runs, nests each executor's dirs in `spark-*/executor-*/`; on Kubernetes
/// they are directly in the root).
fn blockmgr_dirs(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for (path, kind) in entries(&dir) {
            if !kind.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("blockmgr-") {
                out.insert(path);
            } else {
                stack.push(path);
            }
        }
    }
    out
}

/// The entries of `dir` with their types. Spark runs while the tests walk its dirs, so an
/// entry (or `dir`) that vanishes meanwhile (Spark deletes its temp files and dirs) is
/// left out, not an error.
fn entries(dir: &Path) -> Vec<(PathBuf, std::fs::FileType)> {
    let list = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        list => list.unwrap(),
    };
    list.filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .collect()
}

/// Regular files under `dir`, recursively (see [`entries`] for what vanishes meanwhile).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for (path, kind) in entries(&d) {
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out
}

/// Polls `cond` (on the runtime's clock) until it holds, or panics with `what` and the log.
fn eventually(
    rt: &tokio::runtime::Runtime,
    daemon: &Daemon,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "not {what} within {DEADLINE:?}; node log:\n{}",
            tail(&daemon.log_text(), 60)
        );
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
}

fn job<'a>(result: &'a Value, name: &str, stderr: &str) -> &'a Value {
    let job = &result["jobs"][name];
    assert!(
        job.is_object() && job["error"].is_null(),
        "job {name} failed: {}\nSpark stderr (tail):\n{}",
        job["error"],
        tail(stderr, 80)
    );
    assert_eq!(job["got"], job["expected"], "job {name}: Spark's result");
    job
}

// === the session ===

fn node_session(version: &str) {
    let _one_at_a_time = SPARK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = spark_venv(version);
    let keep = std::env::var_os("KSHUFFLE_E2E_KEEP").is_some();
    let mut dirs = SparkDirs::create("kshuffle-node-", keep);
    // The node's hostPath: Spark's local dir is the root itself, as on the node.
    let root = dirs.allowed.clone();
    dirs.local_dir = root.clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeApiServer::start()).unwrap();
    let kubeconfig_path = dirs.scratch.join("kubeconfig");
    std::fs::write(&kubeconfig_path, api.kubeconfig(NS)).unwrap();
    let token_path = dirs.scratch.join("admin-token");
    std::fs::write(&token_path, ADMIN_TOKEN).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
    cmd.args(Daemon::standard_args(&root))
        .args(["--admin-bind", "127.0.0.1", "--driver-cleanup-delay", "0s"])
        .arg("--admin-token-file")
        .arg(&token_path)
        .env("KUBECONFIG", &kubeconfig_path)
        // Nothing of the machine's own Kubernetes set-up may leak in.
        .env("HOME", &dirs.scratch)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("RUST_LOG");
    let daemon = Daemon::start_command(cmd);
    let admin: SocketAddr = daemon
        .events()
        .iter()
        .find(|e| e.message == "listening")
        .and_then(|e| e.str_field("admin_addr"))
        .expect("the \"listening\" event names admin_addr")
        .parse()
        .unwrap();
    eventually(&rt, &daemon, "driver watch up", || {
        daemon
            .events()
            .iter()
            .any(|e| e.message == "driver watch up")
    });

    // The other app of the node: one executor with map output, its driver still running.
    let other = ExecutorDirs::create(&root, "other-app", 2, 64).unwrap();
    other
        .write_map_output(0, 7, &[b"kept", b"after the other app's cleanup"])
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(daemon.addr()).await.unwrap();
        client
            .register(OTHER_APP, "1", other.as_strings(), 64)
            .await
            .unwrap();
    });
    api.insert_pod(NS, driver_pod("other-driver", OTHER_APP))
        .unwrap();

    // --- real Spark, with the DaemonSet's flags.
    let python = venv.join("bin/python");
    let mut spark = dirs.python_command(&python, "jobs.py", "node", daemon.port());
    for (key, value) in flags_for_local_cluster() {
        spark.arg("--conf").arg(format!("{key}={value}"));
    }
    let echo = std::env::var_os("KSHUFFLE_E2E_VERBOSE")
        .is_some()
        .then_some("[spark] ");
    let run = run_with_timeout(&mut spark, SESSION_TIMEOUT, echo);
    let line = run.stdout.lines().rev().find(|l| l.starts_with('{'));
    let result: Value = match line.map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => panic!(
            "Spark {version} printed no result ({}); stderr (tail):\n{}\nnode log (tail):\n{}",
            run.describe(),
            tail(&run.stderr, 120),
            tail(&daemon.log_text(), 40)
        ),
    };
    assert!(
        result["fatal"].is_null(),
        "Spark session failed: {}\nstderr (tail):\n{}",
        result["fatal"],
        tail(&run.stderr, 120)
    );
    assert_eq!(result["spark_version"], version);
    job(&result, "node_write", &run.stderr);
    assert!(
        result["executors_gone_error"].is_null(),
        "{}",
        result["executors_gone_error"]
    );
    let read = job(&result, "node_read_after_release", &run.stderr);
    assert_eq!(
        read["map_records"], read["map_records_expected"],
        "map output was read back, not recomputed"
    );
    let ids = |key: &str| -> BTreeSet<String> {
        result[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let (writers, readers) = (ids("writers"), ids("readers"));
    assert!(!writers.is_empty() && !readers.is_empty());
    assert!(
        writers.is_disjoint(&readers),
        "new executors read what released ones wrote: writers {writers:?}, readers {readers:?}"
    );
    let app_id = result["app_id"].as_str().unwrap().to_owned();

    // --- every executor of the app registered dirs directly in the shared root.
    let apps = registered_apps(admin);
    assert_eq!(
        apps.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([app_id.clone(), OTHER_APP.to_owned()]),
        "registered apps"
    );
    let spark_dirs: BTreeSet<PathBuf> = apps[&app_id].iter().map(PathBuf::from).collect();
    assert!(
        spark_dirs.len() >= writers.len() + readers.len(),
        "one dir per executor at least: {spark_dirs:?}"
    );
    for dir in &spark_dirs {
        assert!(
            dir.starts_with(&root) && dir != &root,
            "{dir:?} is inside the shared root"
        );
    }
    let other_dirs: BTreeSet<PathBuf> = other.dirs.iter().cloned().collect();
    let other_files: Vec<PathBuf> = other.dirs.iter().flat_map(|d| files_under(d)).collect();
    assert_eq!(
        other_files.len(),
        3,
        "index, data and checksum: {other_files:?}"
    );
    let on_disk = blockmgr_dirs(&root);
    let registered: BTreeSet<PathBuf> = spark_dirs.union(&other_dirs).cloned().collect();
    assert!(
        on_disk.is_subset(&registered) && other_dirs.is_subset(&on_disk),
        "every blockmgr dir in the root is registered: on disk {on_disk:?}, registered {registered:?}"
    );
    // local-cluster's standalone Workers delete their app dir (`executor-*/`, the parent of
    // each executor's blockmgr dir) when the app finishes, in the background
    // (`Worker.maybeCleanupApplication`), racing with the driver JVM's exit: now and then
    // one gets there first. (No such Worker runs on Kubernetes.) The daemon cannot have done
    // it: it deletes registered dirs only, never their parents, and only with the app's
    // registrations, which are all still here (above).
    let gone: Vec<&PathBuf> = spark_dirs.difference(&on_disk).collect();
    for dir in &gone {
        let parent = dir.parent().unwrap();
        assert!(
            !parent.exists(),
            "{dir:?} is gone but its parent {parent:?} is not: not Spark's Worker"
        );
    }
    if gone.is_empty() {
        let spark_files: Vec<PathBuf> = spark_dirs.iter().flat_map(|d| files_under(d)).collect();
        assert!(
            spark_files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "index")),
            "the app's map output is on disk before its driver ends: {spark_files:?}"
        );
    } else {
        // Put them back, so that the daemon's removal below covers every registered dir.
        eprintln!("local-cluster's Worker removed {gone:?} at the app's end; putting them back");
        for dir in &gone {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("put-back"), b"removed by the daemon with its app").unwrap();
        }
    }

    // --- the driver pod of the real application ends.
    api.insert_pod(NS, driver_pod("spark-node-driver", &app_id))
        .unwrap();
    assert!(api.exit_pod(NS, "spark-node-driver", 0), "pod exists");
    eventually(&rt, &daemon, "the app's files removed", || {
        spark_dirs.iter().all(|d| !d.exists())
    });
    eventually(&rt, &daemon, "the app's registrations removed", || {
        !registered_apps(admin).contains_key(&app_id)
    });
    let ended: Vec<_> = daemon
        .events()
        .into_iter()
        .filter(|e| e.message == "driver ended; removing the app after the delay")
        .collect();
    assert_eq!(ended.len(), 1, "one app ended");
    assert_eq!(ended[0].str_field("app").as_deref(), Some(app_id.as_str()));

    // --- and nothing else.
    let apps = registered_apps(admin);
    assert_eq!(
        apps.keys().cloned().collect::<Vec<_>>(),
        vec![OTHER_APP.to_owned()]
    );
    assert_eq!(apps[OTHER_APP], other.as_strings());
    assert_eq!(
        blockmgr_dirs(&root),
        other_dirs,
        "only the other app's dirs remain"
    );
    for file in &other_files {
        assert!(file.is_file(), "{file:?} of the other app is kept");
    }
    assert!(root.is_dir(), "the root itself stays");

    let stats = daemon.stop();
    let registrations = u64::try_from(spark_dirs.len()).unwrap();
    assert!(
        stats.registrations > registrations,
        "every executor registered with the node (and the other app): {stats}"
    );
    // Same-node reducers asked the node for the writers' dirs (GetLocalDirsForExecutors) and
    // read the files themselves: the registered paths meant the same files to them.
    assert!(
        stats.local_dirs_requests > 0,
        "host-local reads through the shared root: {stats}"
    );
    eprintln!(
        "Spark {version}: app {app_id}, writers {writers:?}, readers {readers:?}, \
         {} dirs removed; node counters: {stats}",
        spark_dirs.len()
    );
    rt.block_on(api.shutdown());
}
