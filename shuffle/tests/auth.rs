//! `spark.authenticate` over real sockets: the AuthEngine handshake (Spark's default
//! authEngineVersion 1 and AES-CTR) before anything else, encrypted traffic after it, and a
//! connection that may only act for the app it authenticated as.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kshuffle::auth::{
    AuthEngineVersion, CipherMode, ClientAuth, Secret, StaticSecrets, TransportCipher,
};
use kshuffle::config::AuthSettings;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::registry::MemoryRegistry;
use kshuffle::wire::{self, Frame, Message, StreamChunkId};
use kshuffle::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// A client connection that can authenticate and then speaks through the cipher.
struct AuthClient {
    socket: TcpStream,
    cipher: Option<TransportCipher>,
    raw: BytesMut,
    plain: BytesMut,
    next_id: i64,
}

fn random(buf: &mut [u8]) {
    kshuffle::auth::fill_random(buf);
}

impl AuthClient {
    async fn connect(addr: SocketAddr) -> Self {
        let socket = TcpStream::connect(addr).await.unwrap();
        Self {
            socket,
            cipher: None,
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            next_id: 1,
        }
    }

    async fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::new();
        wire::encode(frame, &mut buf);
        if let Some(c) = &mut self.cipher {
            let mut sealed = BytesMut::new();
            c.seal(&buf, &mut random, &mut sealed).unwrap();
            buf = sealed;
        }
        self.socket.write_all(&buf).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = wire::decode(&mut self.plain, usize::MAX >> 2).unwrap() {
                return Some(frame);
            }
            let mut buf = [0u8; 65536];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.socket.read(&mut buf),
            )
            .await
            .expect("timed out")
            .ok()?;
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
            match &mut self.cipher {
                Some(c) => c.open(&mut self.raw, &mut self.plain).unwrap(),
                None => self.plain.unsplit(self.raw.split()),
            }
        }
    }

    async fn rpc(&mut self, body: Bytes) -> Result<Bytes, String> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.send(&Frame::RpcRequest { request_id, body }).await;
        match self.recv().await {
            Some(Frame::RpcResponse {
                request_id: id,
                body,
            }) if id == request_id => Ok(body),
            Some(Frame::RpcFailure {
                request_id: id,
                error,
            }) if id == request_id => Err(error),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn authenticate(&mut self, app: &str, secret: &str) -> Result<(), String> {
        let (state, challenge) = ClientAuth::challenge(
            app,
            Secret::from(secret),
            AuthEngineVersion::V1,
            &mut random,
        )
        .unwrap();
        let response = self.rpc(Bytes::from(challenge)).await?;
        self.cipher = Some(state.finish(&response).map_err(|e| e.to_string())?);
        Ok(())
    }
}

fn fetch(app: &str) -> Bytes {
    Message::FetchShuffleBlocks {
        app_id: app.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![1],
        reduce_ids: vec![vec![0, 1]],
        batch_fetch_enabled: false,
    }
    .to_bytes()
}

async fn register(c: &mut AuthClient, env: &Env, app: &str, parts: [&[u8]; 2]) {
    let dirs = ExecutorDirs::create(&env.root.join(app), "e", 1, 64).unwrap();
    dirs.write_map_output(0, 1, &parts).unwrap();
    let info = wire::ExecutorShuffleInfo {
        local_dirs: dirs.as_strings(),
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "sort".into(),
    };
    let msg = Message::RegisterExecutor {
        app_id: app.into(),
        exec_id: "1".into(),
        info,
    };
    assert_eq!(c.rpc(msg.to_bytes()).await.unwrap(), Bytes::new());
}

async fn fetch_all(c: &mut AuthClient, app: &str) -> Result<Vec<Bytes>, String> {
    let reply = c.rpc(fetch(app)).await?;
    let Message::StreamHandle {
        stream_id,
        num_chunks,
    } = Message::decode(&reply).unwrap()
    else {
        panic!("no stream handle")
    };
    let mut out = Vec::new();
    for chunk_index in 0..num_chunks {
        c.send(&Frame::ChunkFetchRequest(StreamChunkId {
            stream_id,
            chunk_index,
        }))
        .await;
        match c.recv().await.unwrap() {
            Frame::ChunkFetchSuccess { body, .. } => out.push(body),
            other => panic!("chunk {chunk_index}: {other:?}"),
        }
    }
    Ok(out)
}

async fn encrypted_round_trip(inline: u64) {
    let env = start(inline).await;
    let big = kshuffle::fixture::pseudo_random_bytes(3, 300_000);
    let mut a = AuthClient::connect(env.addr).await;
    a.authenticate("app-a", "secret-a").await.unwrap();
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
    let mut b = AuthClient::connect(env.addr).await;
    b.authenticate("app-b", "secret-b").await.unwrap();
    register(&mut b, &env, "app-b", [b"b0", b"b1"]).await;

    let mut a = AuthClient::connect(env.addr).await;
    a.authenticate("app-a", "secret-a").await.unwrap();
    let err = fetch_all(&mut a, "app-b").await.unwrap_err();
    assert_eq!(
        err,
        "Client for app-a not authorized for application app-b."
    );
    let remove = Message::RemoveBlocks {
        app_id: "app-b".into(),
        exec_id: "1".into(),
        block_ids: vec!["shuffle_0_1_0.data".into()],
    };
    assert!(
        a.rpc(remove.to_bytes())
            .await
            .unwrap_err()
            .contains("not authorized")
    );
    let dirs = Message::GetLocalDirsForExecutors {
        app_id: "app-b".into(),
        exec_ids: vec!["1".into()],
    };
    assert!(
        a.rpc(dirs.to_bytes())
            .await
            .unwrap_err()
            .contains("not authorized")
    );
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
    let mut plain = AuthClient::connect(env.addr).await;
    let err = plain.rpc(fetch("app-a")).await.unwrap_err();
    assert!(!err.is_empty());
    assert!(plain.recv().await.is_none(), "connection not closed");
    // A chunk request first: closed without a reply.
    let mut chunk = AuthClient::connect(env.addr).await;
    chunk
        .send(&Frame::ChunkFetchRequest(StreamChunkId {
            stream_id: 1,
            chunk_index: 0,
        }))
        .await;
    assert!(chunk.recv().await.is_none());
    // Wrong secret, unknown app.
    for (app, secret) in [("app-a", "secret-b"), ("app-z", "secret-a")] {
        let mut c = AuthClient::connect(env.addr).await;
        let err = c.authenticate(app, secret).await.unwrap_err();
        assert!(!err.is_empty(), "{app}");
        assert!(c.recv().await.is_none(), "{app}: connection not closed");
    }
    // Everyone else is still served.
    let mut a = AuthClient::connect(env.addr).await;
    a.authenticate("app-a", "secret-a").await.unwrap();
    register(&mut a, &env, "app-a", [b"x", b"y"]).await;
    assert_eq!(fetch_all(&mut a, "app-a").await.unwrap().len(), 2);
}
