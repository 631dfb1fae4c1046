//! `kshuffle-node --auth-from-pods` end to end: the real binary against the fake API server
//! (`kshuffle_testkit::FakeApiServer`, real HTTP to the real `kube` client; no Kubernetes
//! cluster runs here). Executor pods carry Spark's `_SPARK_AUTH_SECRET`; clients speak
//! Spark's AuthEngine handshake and then the transport cipher, as Spark's executors do
//! (`kshuffle::client::Client::authenticate`). The node process and its waits are in
//! `common/`: every wait polls with a generous deadline; nothing is asserted from elapsed time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use kshuffle::auth::Secret;
use kshuffle::client::{Client, Credentials, Error as ClientError};
use kshuffle::fixture::ExecutorDirs;
use kshuffle::wire::Message;
use kshuffle_testkit::apiserver::{FakeApiServer, Node};
use kube::api::{Api, DeleteParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::{NodeProcess, eventually, field, message};

const NS: &str = "spark";
const THIS_NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";

// === the node process ===

impl NodeProcess {
    /// Starts `kshuffle-node --auth-from-pods` for node `THIS_NODE`, confined to `root`, and
    /// waits for its executor pod watch.
    async fn start(kubeconfig: &Path, root: &Path, state: &Path, token: &Path) -> Self {
        let mut cmd = Self::command(Some(kubeconfig), root.parent().unwrap());
        cmd.env("NODE_NAME", THIS_NODE)
            .env("KSHUFFLE_AUTH_FROM_PODS", "true")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--admin-bind",
                "127.0.0.1",
            ])
            .args([
                "--admin-port",
                "0",
                "--log-format",
                "json",
                "--sweep-interval",
                "0",
            ])
            .args(["--driver-watch=false"])
            .arg("--allowed-root")
            .arg(root)
            .arg("--state-dir")
            .arg(state)
            .arg("--admin-token-file")
            .arg(token);
        let mut node = Self::spawn(cmd).await;
        node.wait_for("executor pod watch up", |ev| {
            message(ev) == "executor pod watch up"
        })
        .await;
        node
    }

    /// Waits until `app`'s secret was learned from a pod.
    async fn wait_learned(&mut self, app: &str) {
        self.wait_for(&format!("{app}'s secret learned"), |ev| {
            message(ev).starts_with("learned the app's spark.authenticate secret")
                && field(ev, "app") == Some(app)
        })
        .await;
    }
}

// === the cluster side ===

/// An executor pod of `app` bound to `node`, with `_SPARK_AUTH_SECRET` = `secret`, as
/// Spark's `BasicExecutorFeatureStep` writes it.
fn executor_pod(name: &str, app: &str, node: &str, secret: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.metadata.labels = Some(BTreeMap::from([
        ("spark-role".to_owned(), "executor".to_owned()),
        ("spark-app-selector".to_owned(), app.to_owned()),
        ("spark-exec-id".to_owned(), "1".to_owned()),
    ]));
    pod.spec = Some(PodSpec {
        node_name: Some(node.into()),
        containers: vec![Container {
            name: "spark-kubernetes-executor".into(),
            image: Some("apache/spark:4.0.0".into()),
            env: Some(vec![
                EnvVar {
                    name: "SPARK_APPLICATION_ID".into(),
                    value: Some(app.into()),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "_SPARK_AUTH_SECRET".into(),
                    value: Some(secret.into()),
                    ..EnvVar::default()
                },
            ]),
            ..Container::default()
        }],
        termination_grace_period_seconds: Some(0),
        ..PodSpec::default()
    });
    pod
}

// === an authenticating client (Spark's AuthEngine, then the transport cipher) ===

/// Connects and authenticates as `app` with `secret`; the server's refusal as `Err`.
async fn connect(node: &NodeProcess, app: &str, secret: &str) -> Result<Client, ClientError> {
    Client::connect_authenticated(node.addr, &Credentials::new(app, Secret::from(secret))).await
}

/// Fetches partition 1 of map 3 of shuffle 0 of `app`'s executor 1.
async fn fetch_block(client: &mut Client, app: &str) -> Result<Bytes, ClientError> {
    let stream = client
        .open(&Message::FetchShuffleBlocks {
            app_id: app.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![3],
            reduce_ids: vec![vec![1]],
            batch_fetch_enabled: false,
        })
        .await?;
    client.chunk(stream.stream_id, 0).await
}

/// Authenticates as `app` with `secret`, registers its executor and fetches its block.
async fn register_and_fetch(node: &NodeProcess, app: &str, secret: &str, dirs: &ExecutorDirs) {
    let mut c = connect(node, app, secret)
        .await
        .unwrap_or_else(|e| panic!("{app} refused: {e}; log:\n{}", node.log()));
    c.register(app, "1", dirs.as_strings(), 8).await.unwrap();
    assert_eq!(
        &fetch_block(&mut c, app).await.unwrap()[..],
        payload(app).as_slice()
    );
}

/// Authenticates as `app` with `secret` and fetches (a fresh connection, as a reducer).
async fn fetch(node: &NodeProcess, app: &str, secret: &str) -> Result<Bytes, ClientError> {
    let mut c = connect(node, app, secret).await?;
    fetch_block(&mut c, app).await
}

fn payload(app: &str) -> Vec<u8> {
    format!("reduce-1 of {app}").into_bytes()
}

fn dirs_of(root: &Path, app: &str) -> ExecutorDirs {
    let dirs = ExecutorDirs::create(root, app, 2, 8).unwrap();
    dirs.write_map_output(0, 3, &[b"reduce-0", &payload(app)])
        .unwrap();
    dirs
}

/// The attempt failed authentication (the server refused the app, or its reply does not
/// verify without the right secret).
fn assert_refused(result: Result<Bytes, ClientError>, app: &str, node: &NodeProcess) {
    let err = result.expect_err("authenticated without the right secret");
    assert!(
        err.to_string().to_lowercase().contains("auth"),
        "{app}: unexpected error {err}; log:\n{}",
        node.log()
    );
}

/// `DELETE /v1/apps/{app}` on the admin port; the HTTP status line.
async fn delete_app(node: &NodeProcess, token: &str, app: &str) -> String {
    let mut s = TcpStream::connect(node.admin).await.unwrap();
    let req = format!(
        "DELETE /v1/apps/{app} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or("").to_owned()
}

fn secrets_file(state: &Path) -> String {
    std::fs::read_to_string(state.join("pod-auth-secrets")).unwrap_or_default()
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_executor_pods_of_this_node_authenticate_their_app_only() {
    let server = FakeApiServer::builder()
        .nodes(vec![
            Node::new(THIS_NODE, 8, 32),
            Node::new(OTHER_NODE, 8, 32),
        ])
        .start()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(NS)).unwrap();
    let root = tmp.path().join("local");
    let state: PathBuf = tmp.path().join("state");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "t0ken").unwrap();
    let mut node = NodeProcess::start(&kubeconfig, &root, &state, &token_file).await;

    // Before any pod: an unknown app is refused with a clear error.
    let err = connect(&node, "spark-a", "secret-a")
        .await
        .expect_err("an unknown app authenticated");
    assert!(
        err.to_string()
            .contains("No secret is configured for application 'spark-a'"),
        "{err}"
    );
    // Logged with the peer's address.
    node.wait_for("the refusal logged with the peer", |ev| {
        message(ev) == "authentication failed"
            && field(ev, "error").is_some_and(|e| e.contains("'spark-a'"))
            && ev.to_string().contains("\"peer\":\"127.0.0.1:")
    })
    .await;

    server
        .insert_pod(
            NS,
            executor_pod("a-exec-1", "spark-a", THIS_NODE, "secret-a"),
        )
        .unwrap();
    server
        .insert_pod(
            NS,
            executor_pod("b-exec-1", "spark-b", THIS_NODE, "secret-b"),
        )
        .unwrap();
    // An app whose executor runs on another node: not this node's secret to learn.
    server
        .insert_pod(
            NS,
            executor_pod("o-exec-1", "spark-o", OTHER_NODE, "secret-o"),
        )
        .unwrap();
    node.wait_learned("spark-a").await;
    node.wait_learned("spark-b").await;

    let a = dirs_of(&root, "spark-a");
    let b = dirs_of(&root, "spark-b");
    register_and_fetch(&node, "spark-a", "secret-a", &a).await;
    register_and_fetch(&node, "spark-b", "secret-b", &b).await;
    // A wrong secret, another app's secret, the other node's app, a made-up app: refused.
    assert_refused(fetch(&node, "spark-a", "wrong").await, "spark-a", &node);
    assert_refused(fetch(&node, "spark-a", "secret-b").await, "spark-a", &node);
    assert_refused(fetch(&node, "spark-o", "secret-o").await, "spark-o", &node);
    assert_refused(fetch(&node, "spark-z", "secret-a").await, "spark-z", &node);
    // Authenticated as b, a's blocks are not b's to read.
    let mut as_b = connect(&node, "spark-b", "secret-b").await.unwrap();
    let err = fetch_block(&mut as_b, "spark-a").await.unwrap_err();
    assert!(err.to_string().contains("not authorized"), "{err}");
    assert!(
        !secrets_file(&state).contains("spark-o"),
        "the other node's secret was learned"
    );

    // Dynamic allocation deletes a's executor pod: its output is still fetched by the
    // app's other executors, with the same secret.
    let api: Api<Pod> = Api::namespaced(kshuffle_testkit::kube_client(&server, NS).unwrap(), NS);
    api.delete("a-exec-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(&node, "a-exec-1 gone", || {
        server.pod(NS, "a-exec-1").is_none()
    })
    .await;
    // Events come in order: once a later pod is learned, the deletion was seen too.
    server
        .insert_pod(
            NS,
            executor_pod("c-exec-1", "spark-c", THIS_NODE, "secret-c"),
        )
        .unwrap();
    node.wait_learned("spark-c").await;
    assert_eq!(
        &fetch(&node, "spark-a", "secret-a").await.unwrap()[..],
        payload("spark-a")
    );

    // SIGKILL and restart on the same state dir: the pod is gone, the app is registered,
    // the secret was persisted (mode 0600).
    node.kill();
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(state.join("pod-auth-secrets"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(
        mode & 0o777,
        0o600,
        "the secrets file is readable by others"
    );
    let node = NodeProcess::start(&kubeconfig, &root, &state, &token_file).await;
    assert_eq!(
        &fetch(&node, "spark-a", "secret-a").await.unwrap()[..],
        payload("spark-a")
    );
    assert_refused(fetch(&node, "spark-a", "wrong").await, "spark-a", &node);
    assert_eq!(
        &fetch(&node, "spark-b", "secret-b").await.unwrap()[..],
        payload("spark-b")
    );

    // The app is removed (admin DELETE): its secret is refused at once, then forgotten, on
    // disk too; b is untouched.
    assert!(delete_app(&node, "t0ken", "spark-a").await.contains("200"));
    assert_refused(fetch(&node, "spark-a", "secret-a").await, "spark-a", &node);
    eventually(&node, "spark-a's secret forgotten", || {
        !secrets_file(&state).contains("spark-a ")
    })
    .await;
    assert!(
        secrets_file(&state).contains("spark-b "),
        "b's secret went with a's"
    );
    assert_eq!(
        &fetch(&node, "spark-b", "secret-b").await.unwrap()[..],
        payload("spark-b")
    );
    server.shutdown().await;
}

#[test]
fn auth_from_pods_without_a_node_name_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"))
        .env_remove("NODE_NAME")
        .env_remove("KSHUFFLE_AUTH_FROM_PODS")
        .env_remove("KUBECONFIG")
        .env("HOME", tmp.path())
        .arg("--auth-from-pods")
        .arg("--allowed-root")
        .arg(tmp.path().join("local"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node-name"), "{stderr}");
}
