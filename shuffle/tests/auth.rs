//! `spark.authenticate` over real sockets: the AuthEngine handshake (Spark's default
//! authEngineVersion 1 and AES-CTR) before anything else, encrypted traffic after it, and a
//! connection that may only act for the app it authenticated as.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kshuffle::auth::{AuthEngineVersion, CipherMode, Secret, StaticSecrets};
use kshuffle::client::{Client, Credentials, Error as ClientError};
use kshuffle::config::AuthSettings;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::registry::MemoryRegistry;
use kshuffle::wire::{Frame, Message, StreamChunkId};
use kshuffle::{Config, Server};
use tokio_util::sync::CancellationToken;

struct Env {
    addr: SocketAddr,
    root: std::path::PathBuf,
    _tmp: tempfile::TempDir,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start(inline_body_max_bytes: u64) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut config = Config::new(vec![root.clone()]);
    config.inline_body_max_bytes = inline_body_max_bytes;
    let secrets = StaticSecrets::per_app(Default::default())
        .with_app("app-a", Secret::from("secret-a"))
        .with_app("app-b", Secret::from("secret-b"));
    config.auth = Some(AuthSettings {
        secrets: Arc::new(secrets),
        version: AuthEngineVersion::V1,
        cipher: CipherMode::Ctr,
        sasl_fallback: true,
    });
    let server = Server::new(config, Arc::new(MemoryRegistry::new())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { server.run(listener, token).await });
    Env {
        addr,
        root,
        _tmp: tmp,
        _shutdown: shutdown.drop_guard(),
    }
}

/// Connects and authenticates as `app` with `secret`.
async fn connect(env: &Env, app: &str, secret: &str) -> Result<Client, ClientError> {
    Client::connect_authenticated(env.addr, &Credentials::new(app, Secret::from(secret))).await
}

/// The server's text of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Failure(text)) => text,
        other => panic!("not refused by the server: {other:?}"),
    }
}

/// The server closed the connection (possibly with a reset).
async fn assert_closed(c: &mut Client) {
    match c.recv().await {
        Err(ClientError::Closed | ClientError::Io(_)) => {}
        other => panic!("connection not closed: {other:?}"),
    }
}

fn fetch(app: &str) -> Message {
    Message::FetchShuffleBlocks {
        app_id: app.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![1],
        reduce_ids: vec![vec![0, 1]],
        batch_fetch_enabled: false,
    }
}

async fn register(c: &mut Client, env: &Env, app: &str, parts: [&[u8]; 2]) {
    let dirs = ExecutorDirs::create(&env.root.join(app), "e", 1, 64).unwrap();
    dirs.write_map_output(0, 1, &parts).unwrap();
    c.register(app, "1", dirs.as_strings(), 64).await.unwrap();
}

async fn fetch_all(c: &mut Client, app: &str) -> Result<Vec<Bytes>, ClientError> {
    let stream = c.open(&fetch(app)).await?;
    let mut out = Vec::new();
    for chunk_index in 0..stream.num_chunks {
        out.push(c.chunk(stream.stream_id, chunk_index).await?);
    }
    Ok(out)
}

async fn encrypted_round_trip(inline: u64) {
    let env = start(inline).await;
    let big = kshuffle::fixture::pseudo_random_bytes(3, 300_000);
    let mut a = connect(&env, "app-a", "secret-a").await.unwrap();
    register(&mut a, &env, "app-a", [b"first block", &big]).await;
    let blocks = fetch_all(&mut a, "app-a").await.unwrap();
    assert_eq!(
        blocks,
        [Bytes::from_static(b"first block"), Bytes::from(big)]
    );
}

#[tokio::test]
async fn authenticated_and_encrypted_fetch() {
    encrypted_round_trip(0).await;
}

#[tokio::test]
async fn authenticated_and_encrypted_fetch_with_inlined_bodies() {
    encrypted_round_trip(32 * 1024).await;
}

#[tokio::test]
async fn a_client_acts_only_for_its_own_app() {
    let env = start(0).await;
    let mut b = connect(&env, "app-b", "secret-b").await.unwrap();
    register(&mut b, &env, "app-b", [b"b0", b"b1"]).await;

    let mut a = connect(&env, "app-a", "secret-a").await.unwrap();
    let err = refusal(fetch_all(&mut a, "app-b").await);
    assert_eq!(
        err,
        "Client for app-a not authorized for application app-b."
    );
    let remove = Message::RemoveBlocks {
        app_id: "app-b".into(),
        exec_id: "1".into(),
        block_ids: vec!["shuffle_0_1_0.data".into()],
    };
    assert!(refusal(a.rpc(&remove).await).contains("not authorized"));
    let dirs = Message::GetLocalDirsForExecutors {
        app_id: "app-b".into(),
        exec_ids: vec!["1".into()],
    };
    assert!(refusal(a.rpc(&dirs).await).contains("not authorized"));
    // A second handshake on an authenticated connection is only an unknown message (the
    // hint for services without auth is not given where auth is on).
    let again = refusal(
        a.rpc_raw(Bytes::from_static(&[0xEA, 0, 0, 0, 1, b'a']))
            .await,
    );
    assert_eq!(again, "Unknown message type: -22");
    // B is untouched.
    assert_eq!(
        fetch_all(&mut b, "app-b").await.unwrap(),
        [Bytes::from_static(b"b0"), Bytes::from_static(b"b1")]
    );
}

#[tokio::test]
async fn nothing_before_authentication_and_wrong_secrets_are_refused() {
    let env = start(0).await;
    // A plain request first: refused and closed.
    let mut plain = Client::connect(env.addr).await.unwrap();
    let err = refusal(plain.rpc(&fetch("app-a")).await);
    assert!(
        err.starts_with("Expected SaslMessage")
            && err.ends_with("requires spark.authenticate=true"),
        "{err}"
    );
    assert_closed(&mut plain).await;
    // A chunk request first: closed without a reply.
    let mut chunk = Client::connect(env.addr).await.unwrap();
    chunk
        .send(&Frame::ChunkFetchRequest(StreamChunkId {
            stream_id: 1,
            chunk_index: 0,
        }))
        .await
        .unwrap();
    assert_closed(&mut chunk).await;
    // Wrong secret, unknown app.
    for (app, secret) in [("app-a", "secret-b"), ("app-z", "secret-a")] {
        let mut c = Client::connect(env.addr).await.unwrap();
        let credentials = Credentials::new(app, Secret::from(secret));
        assert!(
            !refusal(c.authenticate(&credentials).await).is_empty(),
            "{app}"
        );
        assert_closed(&mut c).await;
    }
    // Everyone else is still served.
    let mut a = connect(&env, "app-a", "secret-a").await.unwrap();
    register(&mut a, &env, "app-a", [b"x", b"y"]).await;
    assert_eq!(fetch_all(&mut a, "app-a").await.unwrap().len(), 2);
}

/// On an encrypted connection too, a stream open sent behind pipelined bulk chunk requests is
/// answered before the last of them (read ahead through the cipher), and every chunk still
/// arrives whole and in order.
#[tokio::test]
async fn an_encrypted_stream_open_is_answered_ahead_of_queued_chunks() {
    let env = start(0).await;
    let mut a = connect(&env, "app-a", "secret-a").await.unwrap();
    let parts: Vec<Vec<u8>> = (0..4)
        .map(|i| kshuffle::fixture::pseudo_random_bytes(i, 2 << 20))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let dirs = ExecutorDirs::create(&env.root.join("app-a"), "e", 1, 64).unwrap();
    dirs.write_map_output(0, 1, &refs).unwrap();
    a.register("app-a", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    let mut open = fetch("app-a");
    if let Message::FetchShuffleBlocks { reduce_ids, .. } = &mut open {
        *reduce_ids = vec![vec![0, 1, 2, 3]];
    }
    let stream = a.open(&open).await.unwrap();
    let mut batch = bytes::BytesMut::new();
    for chunk_index in 0..4 {
        let id = StreamChunkId {
            stream_id: stream.stream_id,
            chunk_index,
        };
        kshuffle::wire::encode(&Frame::ChunkFetchRequest(id), &mut batch);
    }
    let second = Frame::RpcRequest {
        request_id: 42,
        body: fetch("app-a").to_bytes(),
    };
    kshuffle::wire::encode(&second, &mut batch);
    a.send_raw(&batch).await.unwrap();
    let (mut chunks, mut answered_after) = (0, None);
    while chunks < parts.len() {
        match a.recv().await.unwrap().0 {
            Frame::ChunkFetchSuccess { id, body } => {
                assert_eq!(id.chunk_index, chunks as i32);
                assert!(body[..] == parts[chunks][..], "chunk {chunks}");
                chunks += 1;
            }
            Frame::RpcResponse {
                request_id: 42,
                body,
            } => {
                assert!(matches!(
                    Message::decode(&body).unwrap(),
                    Message::StreamHandle { num_chunks: 2, .. }
                ));
                answered_after = Some(chunks);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        answered_after.is_some_and(|n| n < parts.len()),
        "open answered after {answered_after:?} of the queued chunks"
    );
}
