//! The HTTP/JSON API over real sockets, the scheduler behind it talking to the testkit's fake
//! API server; and the binary's usage errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kshuffle_scheduler::Scheduler;
use kshuffle_scheduler::config::Config;
use kshuffle_testkit::{FakeApiServer, Latencies, kube_client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NS: &str = "spark";

async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    call_as(addr, None, method, path, body).await
}

/// [`call`] with `Authorization: Bearer <token>` when `token` is given.
async fn call_as(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        code,
        serde_json::from_str(body.trim()).unwrap_or(Value::String(body.to_owned())),
    )
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_http_api_drives_the_scheduler_and_rejects_bad_input() {
    // Killed pods terminate slowly, so the scheduler still sees them as deleted ones.
    let server = FakeApiServer::builder()
        .latencies(Latencies {
            terminate: Duration::from_secs(3600),
            ..Latencies::default()
        })
        .start()
        .await
        .unwrap();
    let mut driver = Pod::default();
    driver.metadata.name = Some("driver".into());
    driver.spec = Some(PodSpec {
        containers: vec![Container {
            name: "d".into(),
            image: Some("spark:4".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    server.insert_pod(NS, driver).unwrap();
    let conf = Config::from_args([
        "spark.app.id=http-app",
        "spark.kubernetes.namespace=spark",
        "spark.kubernetes.driver.pod.name=driver",
        "spark.kubernetes.container.image=spark:4",
        "spark.kubernetes.allocation.batch.delay=20ms",
        "spark.dynamicAllocation.enabled=true",
        "spark.dynamicAllocation.maxExecutors=5",
        "spark.kubernetes.dynamicAllocation.deleteGracePeriod=30s",
    ])
    .unwrap();
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let sched = Scheduler::start(
        kube_client(&server, NS).unwrap(),
        &conf,
        None,
        &tasks,
        cancel.clone(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = kshuffle_scheduler::events::EventLog::default();
    tokio::spawn(events.clone().fill(sched.events(), cancel.child_token()));
    tokio::spawn(async move {
        axum::serve(
            listener,
            kshuffle_scheduler::http::router(sched, None, events),
        )
        .await
        .unwrap();
    });

    eventually("ready", async || {
        call(addr, "GET", "/ready", "").await.0 == 200
    })
    .await;
    assert_eq!(call(addr, "GET", "/live", "").await.0, 200);
    let (code, body) = call(addr, "PUT", "/v1/executors/total", r#"{"total": 3}"#).await;
    assert_eq!((code, body), (200, json!({ "total": 3 })));
    eventually("3 running", async || {
        call(addr, "GET", "/v1/executors", "").await.1["counts"]["running"] == 3
    })
    .await;
    let (_, body) = call(addr, "GET", "/v1/executors", "").await;
    let states: Vec<&str> = body["executors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "running", "running"]);
    assert_eq!(body["executors"][0]["name"], "http-app-exec-1");

    eventually("3 added events", async || {
        call(addr, "GET", "/v1/events?after=0", "").await.1["events"]
            .as_array()
            .is_some_and(|e| e.len() == 3)
    })
    .await;
    let (_, page) = call(addr, "GET", "/v1/events?after=0", "").await;
    assert_eq!(page["events"][0]["event"], "added");
    assert_eq!(
        (page["next"].clone(), page["missed"].clone()),
        (json!(3), json!(false))
    );
    let (_, page) = call(addr, "GET", "/v1/events?after=3", "").await;
    assert_eq!(page["events"], json!([]));

    let (code, body) = call(addr, "POST", "/v1/executors/kill", r#"{"ids": [1, 77]}"#).await;
    assert_eq!((code, body), (200, json!({ "killed": [1] })));
    let (code, body) = call(addr, "GET", "/v1/executors/1/deleted", "").await;
    assert_eq!((code, body), (200, json!({ "deleted": true })));

    for (method, path, body, needle) in [
        ("PUT", "/v1/executors/total", "{not json", "parse"),
        (
            "PUT",
            "/v1/executors/total",
            r#"{"total": -1}"#,
            "invalid value",
        ),
        (
            "PUT",
            "/v1/executors/total",
            r#"{"total": 1.5}"#,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/executors/total",
            r#"{"total": 6}"#,
            "spark.dynamicAllocation.maxExecutors (5)",
        ),
        (
            "PUT",
            "/v1/executors/total",
            r#"{"total": 1, "extra": 2}"#,
            "unknown field",
        ),
        ("PUT", "/v1/executors/total", r#"{}"#, "missing field"),
        (
            "POST",
            "/v1/executors/kill",
            r#"{"ids": ["a"]}"#,
            "invalid type",
        ),
        (
            "POST",
            "/v1/executors/kill",
            r#"{"ids": [-3]}"#,
            "invalid value",
        ),
        ("GET", "/v1/executors/x/deleted", "", "Cannot parse"),
        ("GET", "/v1/events?after=-1", "", "invalid digit"),
        ("GET", "/v1/events?since=1", "", "unknown field"),
    ] {
        let (code, body) = call(addr, method, path, body).await;
        assert_eq!(code, 400, "{method} {path} {body}");
        let err = body["error"].as_str().unwrap_or_default();
        assert!(err.contains(needle), "{method} {path}: {err}");
    }
    // Nothing above changed the target.
    assert_eq!(
        call(addr, "GET", "/v1/executors", "").await.1["counts"]["target"],
        3
    );
    cancel.cancel();
}

/// Waits for the binary at `addr` to be ready, asks it for 2 executors (with `token`) and waits
/// for their pods.
async fn ready_then_two_pods(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    server: &FakeApiServer,
) {
    eventually("ready", async || {
        call(addr, "GET", "/ready", "").await.0 == 200
    })
    .await;
    let total = r#"{"total": 2}"#;
    let (code, _) = call_as(addr, token, "PUT", "/v1/executors/total", total).await;
    assert_eq!(code, 200);
    eventually("2 pods", async || server.pods(NS).len() == 2).await;
}

#[test]
fn the_binary_rejects_bad_flags_with_exit_64_naming_them() {
    let bin = env!("CARGO_BIN_EXE_kshuffle-scheduler");
    for (args, needle) in [
        (
            vec!["--conf", "spark.dynamicAllocation.maxExecutors=-1"],
            "spark.dynamicAllocation.maxExecutors",
        ),
        (
            vec![
                "--conf",
                "spark.dynamicAllocation.minExecutors=3",
                "--conf",
                "spark.dynamicAllocation.maxExecutors=2",
            ],
            "spark.dynamicAllocation.minExecutors",
        ),
        (
            vec!["--conf", "spark.kubernetes.allocation.batch.sise=3"],
            "spark.kubernetes.allocation.batch.sise",
        ),
        (vec!["--listen", "nowhere"], "--listen"),
        (
            vec![
                "--conf",
                "spark.kubernetes.container.image=i",
                "--listen",
                "0.0.0.0:7400",
            ],
            "--api-token-file, or --open-api",
        ),
        (
            vec![
                "--conf",
                "spark.kubernetes.container.image=i",
                "--api-token-file",
                "/nonexistent/token",
            ],
            "--api-token-file",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_api_against_the_fake_server_and_stops_on_sigterm() {
    use std::io::BufRead;

    let server = FakeApiServer::start().await.unwrap();
    let bin = env!("CARGO_BIN_EXE_kshuffle-scheduler");
    let mut child = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kube-url",
            &server.url(),
            "--conf",
            "spark.app.id=bin-app",
            "--conf",
            "spark.kubernetes.namespace=spark",
            "--conf",
            "spark.kubernetes.container.image=spark:4",
            "--conf",
            "spark.kubernetes.allocation.batch.delay=20ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addr = tokio::task::spawn_blocking(move || {
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            if line.contains("scheduler started") {
                let rest = line.split("Some(").nth(1).unwrap();
                return rest
                    .split(')')
                    .next()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap();
            }
        }
        panic!("the binary did not start");
    })
    .await
    .unwrap();

    ready_then_two_pods(addr, None, &server).await;
    let names: Vec<_> = server
        .pods(NS)
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["bin-app-exec-1", "bin-app-exec-2"]);
    let (code, body) = call(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("kshuffle_scheduler_api_calls_total{verb=\"create\"} 2"),
        "{text}"
    );

    let status = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    // Our own shutdown leaves the executors alone.
    assert_eq!(server.pods(NS).len(), 2);
}

/// What the JVM adapter (`scheduler/jvm`) relies on: `--spark-executor-pod` (Spark's pod kept
/// but for each executor's own fields, unknown Spark keys under our prefixes ignored),
/// `--address-file` for `--listen 127.0.0.1:0`, `--first-executor-id`, `--api-token-file`
/// and `--stop-on-stdin-eof`, with its log going nowhere (a killed driver's pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_run_by_the_jvm_adapter_takes_sparks_pod_and_stops_with_its_stdin() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = kshuffle_testkit::support::work_dir("scheduler-adapter-flags");
    let pod = dir.join("executor-pod.json");
    std::fs::write(
        &pod,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"spark-app-name": "job", "spark-role": "executor"}},
            "spec": {
                "hostname": "executor",
                "containers": [{
                    "name": "exec", "image": "spark:3.5", "args": ["executor"],
                    "env": [{"name": "SPARK_DRIVER_URL", "value": "spark://CoarseGrainedScheduler@d:7078"}],
                    "resources": {"requests": {"cpu": "1", "memory": "896Mi"}}
                }]
            }
        })
        .to_string(),
    )
    .unwrap();
    let props = dir.join("spark.properties");
    std::fs::write(
        &props,
        "spark.app.id=spark-abc\n\
         spark.kubernetes.namespace=spark\n\
         spark.kubernetes.executor.podNamePrefix=job-1f\n\
         spark.kubernetes.executor.podTemplateContainerName=exec\n\
         spark.kubernetes.executor.label.team=data\n\
         spark.kubernetes.allocation.batch.delay=20ms\n\
         spark.executor.memory=4g\n",
    )
    .unwrap();
    let address = dir.join("address");
    let token_file = dir.join("api-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_kshuffle-scheduler");
    let mut child = std::process::Command::new(bin)
        .arg("--listen=127.0.0.1:0")
        .arg(format!("--address-file={}", address.display()))
        .arg("--stop-on-stdin-eof")
        .arg(format!("--spark-executor-pod={}", pod.display()))
        .arg(format!("--properties-file={}", props.display()))
        .arg("--first-executor-id=5")
        .arg(format!("--api-token-file={}", token_file.display()))
        .arg(format!("--kube-url={}", server.url()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads its log, as when the driver is killed (the adapter pumps the log into
    // the driver's stderr): every line fails with EPIPE, and the scheduler must go on, and
    // still stop when its stdin closes.
    drop((child.stdout.take(), child.stderr.take()));
    eventually("the address file", async || address.exists()).await;
    // Written whole (renamed into place).
    let addr: std::net::SocketAddr = std::fs::read_to_string(&address).unwrap().parse().unwrap();
    // The allocation API needs the token; health and metrics do not.
    for token in [None, Some("wrong")] {
        let (code, body) = call_as(addr, token, "GET", "/v1/executors", "").await;
        assert_eq!(code, 401, "{body}");
    }
    assert_eq!(call(addr, "GET", "/metrics", "").await.0, 200);
    ready_then_two_pods(addr, Some("s3cret-token"), &server).await;
    let pods = server.pods(NS);
    let names: Vec<_> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["job-1f-exec-5", "job-1f-exec-6"]);
    let p = &pods[0];
    let labels = p.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["spark-app-selector"], "spark-abc");
    assert_eq!(labels["spark-exec-id"], "5");
    assert_eq!(labels["spark-app-name"], "job");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("job-1f-exec-5"));
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("spark:3.5"));
    // Spark's resources stay (not the 4g + overhead of the properties).
    let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["memory"].0, "896Mi");
    let env = c.env.as_ref().unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("SPARK_EXECUTOR_ID").as_deref(), Some("5"));
    assert_eq!(
        value("SPARK_DRIVER_URL").as_deref(),
        Some("spark://CoarseGrainedScheduler@d:7078")
    );
    assert_eq!(value("SPARK_EXECUTOR_MEMORY"), None);

    // The parent goes: its end of the pipe closes, and the scheduler stops (leaving the pods).
    drop(child.stdin.take());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(server.pods(NS).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
