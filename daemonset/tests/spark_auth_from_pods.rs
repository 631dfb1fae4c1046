//! Real Spark (pyspark 4.3.0 with the AuthEngine, 3.5.9 with SASL; `local-cluster`, executor
//! JVMs) with `spark.authenticate=true` against `kshuffle-node --auth-from-pods`, which
//! learns the application's secret **only** from an executor pod in the fake API server
//! (`kshuffle_testkit::FakeApiServer`; no Kubernetes cluster runs here). The pod is created
//! as on Kubernetes: labelled `spark-app-selector=<the app id Spark chose>`, bound to this
//! node, with Spark's `_SPARK_AUTH_SECRET` env. This proves that the identity Spark's
//! executors present to the shuffle service is that app id and that the learned secret
//! authenticates them. Job script: `shuffle/tests/spark/pod_auth_jobs.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shuffle/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, SparkDirs, run_with_timeout, spark_venv, tail};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use kshuffle_testkit::FakeApiServer;
use kshuffle_testkit::apiserver::Node;
use serde_json::Value;

/// Deadline of the Spark session (30-60 s on an idle 2-core machine).
const SESSION_TIMEOUT: Duration = Duration::from_secs(480);
const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "spark";
const NODE: &str = "node-a";
const SECRET: &str = "kshuffle-pod-secret-4b1d";

/// One Spark cluster at a time, also under `cargo test` (threads of one process).
static SPARK: Mutex<()> = Mutex::new(());

#[test]
fn spark_4_3_auth_from_pods_auth_engine() {
    session("4.3.0", true);
}

#[test]
fn spark_3_5_auth_from_pods_sasl() {
    session("3.5.9", false);
}

/// An executor pod of `app` on this node, as Spark's `BasicExecutorFeatureStep` writes it.
fn executor_pod(app: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(format!("{app}-exec-1").to_lowercase());
    pod.metadata.labels = Some(BTreeMap::from([
        ("spark-role".to_owned(), "executor".to_owned()),
        ("spark-app-selector".to_owned(), app.to_owned()),
        ("spark-exec-id".to_owned(), "1".to_owned()),
    ]));
    pod.spec = Some(PodSpec {
        node_name: Some(NODE.into()),
        containers: vec![Container {
            name: "spark-kubernetes-executor".into(),
            image: Some("apache/spark:4.0.0".into()),
            env: Some(vec![EnvVar {
                name: "_SPARK_AUTH_SECRET".into(),
                value: Some(SECRET.into()),
                ..EnvVar::default()
            }]),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    pod
}

fn session(version: &str, crypto: bool) {
    let _one_at_a_time = SPARK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = spark_venv(version);
    let dirs = SparkDirs::create("kshuffle-podauth-", false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = rt
        .block_on(
            FakeApiServer::builder()
                .nodes(vec![Node::new(NODE, 8, 32)])
                .start(),
        )
        .unwrap();
    let kubeconfig_path = dirs.scratch.join("kubeconfig");
    std::fs::write(&kubeconfig_path, api.kubeconfig(NS)).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
    cmd.args(Daemon::standard_args(&dirs.allowed))
        .args([
            "--auth-from-pods",
            "--node-name",
            NODE,
            "--driver-watch=false",
        ])
        .env("KUBECONFIG", &kubeconfig_path)
        .env("HOME", &dirs.scratch)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("NODE_NAME")
        .env_remove("RUST_LOG");
    let mut daemon = Daemon::start_command(cmd);
    let start = Instant::now();
    while !daemon
        .events()
        .iter()
        .any(|e| e.message == "executor pod watch up")
    {
        assert!(
            start.elapsed() < DEADLINE,
            "executor pod watch not up:\n{}",
            tail(&daemon.log_text(), 40)
        );
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }

    let signal_dir = dirs.scratch.join("signal");
    std::fs::create_dir_all(&signal_dir).unwrap();
    let python = venv.join("bin/python");
    let mut spark = dirs.python_command(&python, "pod_auth_jobs.py", "podauth", daemon.port());
    spark.arg("--secret").arg(SECRET);
    spark.arg("--signal-dir").arg(&signal_dir);
    if crypto {
        spark.arg("--crypto");
    }
    let started = Instant::now();
    // The harness side of the cluster: once Spark chose its app id, its executor pod appears.
    let (run, pod_app) = std::thread::scope(|s| {
        let app_file = signal_dir.join("app-id");
        let api = &api;
        let handle = rt.handle().clone();
        let creator = s.spawn(move || {
            while started.elapsed() < SESSION_TIMEOUT {
                if let Ok(app) = std::fs::read_to_string(&app_file) {
                    api.insert_pod(NS, executor_pod(&app)).unwrap();
                    return Some(app);
                }
                handle.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
            }
            None
        });
        let run = run_with_timeout(&mut spark, SESSION_TIMEOUT, None);
        // Unblock the creator if Spark never wrote the id.
        if !signal_dir.join("app-id").exists() {
            std::fs::write(signal_dir.join("app-id"), "never-started").unwrap();
        }
        (run, creator.join().unwrap())
    });
    let log = daemon.log_text();
    let stats = daemon.try_stop().unwrap_or_else(|e| panic!("{e}"));
    let result: Value = run
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "Spark session produced no result ({}).\nSpark stderr:\n{}\ndaemon log:\n{}",
                run.describe(),
                tail(&run.stderr, 80),
                tail(&log, 40)
            )
        });
    eprintln!(
        "pyspark {version} auth-from-pods ({}): {:.1}s, {result}, daemon: {stats}",
        if crypto { "AuthEngine" } else { "SASL" },
        started.elapsed().as_secs_f64()
    );
    let app = result["app_id"].as_str().unwrap();
    assert_eq!(pod_app.as_deref(), Some(app));
    assert_eq!(
        result["ok"],
        true,
        "the job failed: {result}\n{}\ndaemon log:\n{}",
        tail(&run.stderr, 60),
        tail(&log, 40)
    );
    // The secret came from the pod, and the executors registered with it.
    assert!(
        log.contains("learned the app's spark.authenticate secret") && log.contains(app),
        "{}",
        tail(&log, 40)
    );
    assert!(stats.registrations >= 2, "{stats}");
    assert!(stats.chunks_served > 0, "{stats}");
    rt.block_on(api.shutdown());
}
