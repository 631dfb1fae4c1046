//! The admin HTTP port over real sockets: health, readiness, metrics, and the application
//! lifecycle API (driver termination, executor gone, sweep), with its bearer token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kshuffle::admin::{self, AdminState};
use kshuffle::client::{Client, Error as ClientError};
use kshuffle::fixture::ExecutorDirs;
use kshuffle::registry::MemoryRegistry;
use kshuffle::store::SweepOptions;
use kshuffle::wire::Message;
use kshuffle::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-token";

struct Env {
    data: SocketAddr,
    admin: SocketAddr,
    root: PathBuf,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
    _tmp: tempfile::TempDir,
}

async fn start(token: Option<&str>) -> Env {
    start_with(token, None).await
}

async fn start_with(
    token: Option<&str>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    let server = Server::new(
        Config::new(vec![root.clone()]),
        Arc::new(MemoryRegistry::new()),
    )
    .unwrap();
    let sweep = SweepOptions {
        orphan_grace: Duration::ZERO,
        app_idle: None,
        max_removals: 10,
        dry_run: false,
        max_depth: 4,
    };
    let state = AdminState::new(
        server.service(),
        token.map(str::to_owned),
        prometheus,
        sweep,
        true,
    );
    let ready = Arc::clone(state.ready());
    let shutdown = CancellationToken::new();
    let data_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (data, admin_addr) = (
        data_listener.local_addr().unwrap(),
        admin_listener.local_addr().unwrap(),
    );
    tokio::spawn(admin::serve(admin_listener, state, shutdown.clone()));
    let token = shutdown.clone();
    tokio::spawn(async move { server.run(data_listener, token).await });
    Env {
        data,
        admin: admin_addr,
        root,
        ready,
        shutdown,
        _tmp: tmp,
    }
}

/// One HTTP/1.1 request; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn app_with_data(env: &Env, client: &mut Client, app: &str) -> ExecutorDirs {
    let dirs = ExecutorDirs::create(&env.root.join(app), "e", 1, 64).unwrap();
    dirs.write_map_output(0, 1, &[b"payload of ", app.as_bytes()])
        .unwrap();
    client
        .register(app, "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    dirs
}

fn fetch(app: &str) -> Message {
    Message::FetchShuffleBlocks {
        app_id: app.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![1],
        reduce_ids: vec![vec![1]],
        batch_fetch_enabled: false,
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    // The recorder is process-global: only this test installs it. Counters other tests of
    // this binary may also bump (under `cargo test`, which shares a process) are checked for
    // presence only; the gauges and the daemon's own counters are exact.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&kshuffle::metrics::LATENCY_BUCKETS_SECONDS)
        .unwrap()
        .install_recorder()
        .unwrap();
    let env = start_with(Some(TOKEN), Some(prometheus)).await;
    assert_eq!(http(env.admin, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(env.admin, "GET", "/readyz", None).await.0, 503);
    env.ready.store(true, Ordering::Relaxed);
    assert_eq!(http(env.admin, "GET", "/readyz", None).await.0, 200);

    let mut c = Client::connect(env.data).await.unwrap();
    app_with_data(&env, &mut c, "app-m").await;
    let h = c.open(&fetch("app-m")).await.unwrap();
    c.chunk(h.stream_id, 0).await.unwrap();
    let _ = c.open(&fetch("no-such-app")).await;

    let (status, text) = http(env.admin, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for needle in [
        "kshuffle_registered_executors 1",
        "kshuffle_registered_apps 1",
        "kshuffle_chunks_served_total 1",
        "kshuffle_served_bytes_total 5",
        "kshuffle_connections_open 1",
        // The one map output served keeps its data file open.
        "kshuffle_data_files_kept_open 1",
        "kshuffle_request_duration_seconds_count{type=\"FetchShuffleBlocks\"}",
        "kshuffle_request_duration_seconds_count{type=\"RegisterExecutor\"}",
        // A histogram of fixed buckets (bounded memory), not a summary of raw samples.
        "kshuffle_request_duration_seconds_bucket{type=\"RegisterExecutor\",le=\"0.01\"}",
        "kshuffle_errors_total{kind=\"unknown_executor\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    env.shutdown.cancel();
}

#[tokio::test]
async fn lifecycle_api_needs_the_token() {
    let env = start(Some(TOKEN)).await;
    let mut c = Client::connect(env.data).await.unwrap();
    let dirs = app_with_data(&env, &mut c, "app-a").await;
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        for (method, path) in [
            ("GET", "/v1/apps"),
            ("DELETE", "/v1/apps/app-a"),
            ("POST", "/v1/sweep"),
        ] {
            let (status, _) = http(env.admin, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
        }
    }
    assert!(dirs.dirs[0].exists(), "a refused request changed something");
    let h = c.open(&fetch("app-a")).await.unwrap();
    assert_eq!(c.chunk(h.stream_id, 0).await.unwrap(), &b"app-a"[..]);

    // No token configured: the lifecycle API is off.
    let off = start(None).await;
    assert_eq!(
        http(off.admin, "DELETE", "/v1/apps/app-a", Some(TOKEN))
            .await
            .0,
        403
    );
    assert_eq!(
        http(off.admin, "GET", "/metrics", None).await.0,
        404,
        "no recorder given"
    );
    env.shutdown.cancel();
    off.shutdown.cancel();
}

#[tokio::test]
async fn driver_termination_removes_exactly_one_app() {
    let env = start(Some(TOKEN)).await;
    let mut c = Client::connect(env.data).await.unwrap();
    let a = app_with_data(&env, &mut c, "app-a").await;
    let b = app_with_data(&env, &mut c, "app-b").await;

    let (status, body) = http(env.admin, "GET", "/v1/apps", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let apps: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(apps[0]["appId"], "app-a");
    assert_eq!(
        apps[1]["executors"][0]["localDirs"][0],
        b.as_strings()[0].as_str()
    );

    let (status, body) = http(env.admin, "DELETE", "/v1/apps/app-a", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let removal: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(removal["executors"], 1);
    assert!(removal["reclaimed"]["bytes"].as_u64().unwrap() > 0);
    assert!(!a.dirs[0].exists());
    assert!(b.dirs[0].exists());

    match c.open(&fetch("app-a")).await {
        Err(ClientError::Failure(m)) => assert!(m.contains("not registered"), "{m}"),
        other => panic!("app-a still served: {other:?}"),
    }
    let h = c.open(&fetch("app-b")).await.unwrap();
    assert_eq!(c.chunk(h.stream_id, 0).await.unwrap(), &b"app-b"[..]);

    let (status, body) = http(env.admin, "DELETE", "/v1/apps/app-a", Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    env.shutdown.cancel();
}

#[tokio::test]
async fn executor_gone_and_sweep_endpoints() {
    let env = start(Some(TOKEN)).await;
    let mut c = Client::connect(env.data).await.unwrap();
    let live = app_with_data(&env, &mut c, "app-live").await;
    std::fs::write(live.dirs[0].join("temp_spill"), b"spill!").unwrap();
    let orphan = ExecutorDirs::create(&env.root.join("dead"), "x", 1, 64).unwrap();
    orphan.write_map_output(0, 1, &[b"orphaned"]).unwrap();

    let (status, body) = http(
        env.admin,
        "DELETE",
        "/v1/apps/app-live/executors/1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["files"], 2, "spill and checksum file: {body}");
    let h = c.open(&fetch("app-live")).await.unwrap();
    assert_eq!(c.chunk(h.stream_id, 0).await.unwrap(), &b"app-live"[..]);
    assert_eq!(
        http(
            env.admin,
            "DELETE",
            "/v1/apps/app-live/executors/7",
            Some(TOKEN)
        )
        .await
        .0,
        404
    );

    let (status, body) = http(env.admin, "POST", "/v1/sweep?dryRun=true", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("blockmgr-x-0"), "{body}");
    assert!(orphan.dirs[0].exists(), "dry run deleted");
    let (status, body) = http(env.admin, "POST", "/v1/sweep", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!orphan.dirs[0].exists());
    assert!(live.dirs[0].exists());
    env.shutdown.cancel();
}
