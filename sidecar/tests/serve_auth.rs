//! `kshuffle-sidecar serve` with Spark's per-app secret (`_SPARK_AUTH_SECRET`, which the
//! webhook copies from the executor container): the real binary requires `spark.authenticate`
//! with exactly that secret, for exactly its own app (`KSHUFFLE_APP_ID`). Clients speak
//! Spark's AuthEngine handshake and the transport cipher
//! (`kshuffle::client::Client::authenticate`). The fake API server
//! (`kshuffle_testkit::FakeApiServer`) only stands behind the kubeconfig; no Kubernetes cluster
//! runs here. The sidecar process helper is in `common/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use kshuffle::auth::Secret;
use kshuffle::client::{Client, Credentials, Error as ClientError};
use kshuffle::fixture::ExecutorDirs;
use kshuffle::wire::Message;
use kshuffle_testkit::FakeApiServer;

mod common;

use common::{Identity, Sidecar};

const NS: &str = "spark-jobs";
const APP: &str = "spark-7c0ffee5a1b2c3d4e5f60718293a4b5c";
const SECRET: &str = "6f3c1d0e9a8b7c6d5e4f30211f2e3d4c5b6a79880f1e2d3c4b5a69788796a5b4";

/// The executor pod the sidecar runs in.
const POD: Identity<'static> = Identity {
    namespace: NS,
    name: "wordcount-exec-1",
    app: APP,
};

/// Connects and authenticates as `app` with `secret` (Spark's AuthEngine, then the cipher).
async fn connect(addr: SocketAddr, app: &str, secret: &str) -> Result<Client, ClientError> {
    Client::connect_authenticated(addr, &Credentials::new(app, Secret::from(secret))).await
}

/// Fetches partition 1 of map 0 of shuffle 0 of executor 1.
async fn fetch(client: &mut Client) -> Result<Bytes, ClientError> {
    let stream = client
        .open(&Message::FetchShuffleBlocks {
            app_id: APP.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![0],
            reduce_ids: vec![vec![1]],
            batch_fetch_enabled: false,
        })
        .await?;
    client.chunk(stream.stream_id, 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sparks_secret_only_its_own_app_authenticates() {
    let server = FakeApiServer::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::spawn(tmp.path(), &server, &POD, Some(SECRET), &[]);
    let dirs = ExecutorDirs::create(&tmp.path().join("local"), "exec1", 2, 8).unwrap();
    dirs.write_map_output(0, 0, &[b"p0", b"partition one"])
        .unwrap();

    // Its own app with the secret: registers and fetches.
    let mut own = connect(sidecar.addr, APP, SECRET)
        .await
        .unwrap_or_else(|e| panic!("refused: {e}; log: {}", sidecar.log()));
    own.register(APP, "1", dirs.as_strings(), 8).await.unwrap();
    assert_eq!(&fetch(&mut own).await.unwrap()[..], b"partition one");

    // A wrong secret for its app: refused.
    let err = connect(sidecar.addr, APP, "not-the-secret")
        .await
        .expect_err("a wrong secret authenticated");
    assert!(err.to_string().to_lowercase().contains("auth"), "{err}");
    // The right secret under another app id: refused, naming the app.
    let err = connect(sidecar.addr, "spark-other", SECRET)
        .await
        .expect_err("another app authenticated with this pod's secret");
    assert!(
        err.to_string()
            .contains("No secret is configured for application 'spark-other'"),
        "{err}"
    );
    // No authentication at all: nothing is served.
    let mut plain = Client::connect(sidecar.addr).await.unwrap();
    let refused = plain
        .register(APP, "2", dirs.as_strings(), 8)
        .await
        .expect_err("an unauthenticated client registered");
    assert!(!refused.to_string().is_empty());
    // The secret is never written to the state dir.
    for entry in std::fs::read_dir(tmp.path().join("state")).unwrap() {
        let text = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !text.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret was written to disk"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sparks_secret_it_serves_unauthenticated_clients() {
    let server = FakeApiServer::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::spawn(tmp.path(), &server, &POD, None, &[]);
    let dirs = ExecutorDirs::create(&tmp.path().join("local"), "exec1", 2, 8).unwrap();
    dirs.write_map_output(0, 0, &[b"p0", b"partition one"])
        .unwrap();
    let mut plain = Client::connect(sidecar.addr).await.unwrap();
    plain
        .register(APP, "1", dirs.as_strings(), 8)
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {}", sidecar.log()));
    server.shutdown().await;
}
