//! `kshuffle-sidecar serve` with Spark's per-app secret (`_SPARK_AUTH_SECRET`, which the
//! webhook copies from the executor container): the real binary requires `spark.authenticate`
//! with exactly that secret, for exactly its own app (`KSHUFFLE_APP_ID`). Clients speak
//! Spark's AuthEngine handshake (`kshuffle::auth::ClientAuth`) and the transport cipher.
//! The fake API server (`kshuffle_testkit::FakeApiServer`) only stands behind the kubeconfig;
//! no Kubernetes cluster runs here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kshuffle::auth::{AuthEngineVersion, ClientAuth, Secret, TransportCipher};
use kshuffle::client::Client;
use kshuffle::fixture::ExecutorDirs;
use kshuffle::wire::{self, Frame, Message, StreamChunkId};
use kshuffle_testkit::FakeApiServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "spark-jobs";
const APP: &str = "spark-7c0ffee5a1b2c3d4e5f60718293a4b5c";
const SECRET: &str = "6f3c1d0e9a8b7c6d5e4f30211f2e3d4c5b6a79880f1e2d3c4b5a69788796a5b4";
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The sidecar process (killed on drop), its JSON log collected from stderr.
struct Sidecar {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
    addr: SocketAddr,
}

impl Sidecar {
    fn start(dir: &Path, server: &FakeApiServer, secret: Option<&str>) -> Sidecar {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: test\n    namespace: {NS}\n\
                 current-context: test\n",
                server.url()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"));
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--admin-bind", "127.0.0.1", "--admin-port", "0"])
            .arg("--allowed-root")
            .arg(dir.join("local"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--log-format", "json", "--log-level", "info"]);
        for (key, _) in std::env::vars() {
            if key.starts_with("KSHUFFLE_") || key == "_SPARK_AUTH_SECRET" || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        if let Some(secret) = secret {
            cmd.env("_SPARK_AUTH_SECRET", secret);
        }
        cmd.env("KSHUFFLE_APP_ID", APP)
            .env("KSHUFFLE_POD_NAMESPACE", NS)
            .env("KSHUFFLE_POD_NAME", "wordcount-exec-1")
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kshuffle-sidecar");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if event["fields"]["message"] == "listening" {
                    let _ = tx.send(event["fields"]["addr"].as_str().unwrap_or("").to_owned());
                }
                sink.lock().unwrap().push(event);
            }
        });
        let addr = rx
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no \"listening\": {:?}", log.lock().unwrap()));
        Sidecar {
            child,
            log,
            addr: addr.parse().unwrap(),
        }
    }

    fn log(&self) -> String {
        format!("{:?}", self.log.lock().unwrap())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random(buf: &mut [u8]) {
    kshuffle::auth::fill_random(buf);
}

/// A connection that authenticated with Spark's AuthEngine and speaks through the cipher.
struct AuthClient {
    socket: TcpStream,
    cipher: Option<TransportCipher>,
    raw: BytesMut,
    plain: BytesMut,
    next_id: i64,
}

impl AuthClient {
    async fn connect(addr: SocketAddr, app: &str, secret: &str) -> Result<Self, String> {
        let socket = TcpStream::connect(addr).await.unwrap();
        let mut c = Self {
            socket,
            cipher: None,
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            next_id: 1,
        };
        let (state, challenge) = ClientAuth::challenge(
            app,
            Secret::from(secret),
            AuthEngineVersion::V1,
            &mut random,
        )
        .unwrap();
        let response = c.rpc(Bytes::from(challenge)).await?;
        c.cipher = Some(state.finish(&response).map_err(|e| e.to_string())?);
        Ok(c)
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

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = wire::decode(&mut self.plain, usize::MAX >> 2).unwrap() {
                return Some(frame);
            }
            // Straight into the heap buffer (no large array held across the await).
            let n = tokio::time::timeout(HANG_GUARD, self.socket.read_buf(&mut self.raw))
                .await
                .expect("timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
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
            None => Err("connection closed".into()),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn register(&mut self, dirs: &ExecutorDirs) -> Result<(), String> {
        let msg = Message::RegisterExecutor {
            app_id: APP.into(),
            exec_id: "1".into(),
            info: wire::ExecutorShuffleInfo {
                local_dirs: dirs.as_strings(),
                sub_dirs_per_local_dir: 8,
                shuffle_manager: "sort".into(),
            },
        };
        self.rpc(msg.to_bytes()).await.map(|_| ())
    }

    async fn fetch(&mut self) -> Result<Bytes, String> {
        let msg = Message::FetchShuffleBlocks {
            app_id: APP.into(),
            exec_id: "1".into(),
            shuffle_id: 0,
            map_ids: vec![0],
            reduce_ids: vec![vec![1]],
            batch_fetch_enabled: false,
        };
        let reply = self.rpc(msg.to_bytes()).await?;
        let Ok(Message::StreamHandle { stream_id, .. }) = Message::decode(&reply) else {
            return Err(format!("no stream handle: {reply:?}"));
        };
        self.send(&Frame::ChunkFetchRequest(StreamChunkId {
            stream_id,
            chunk_index: 0,
        }))
        .await;
        match self.recv().await {
            Some(Frame::ChunkFetchSuccess { body, .. }) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sparks_secret_only_its_own_app_authenticates() {
    let server = FakeApiServer::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(tmp.path(), &server, Some(SECRET));
    let dirs = ExecutorDirs::create(&tmp.path().join("local"), "exec1", 2, 8).unwrap();
    dirs.write_map_output(0, 0, &[b"p0", b"partition one"])
        .unwrap();

    // Its own app with the secret: registers and fetches.
    let mut own = AuthClient::connect(sidecar.addr, APP, SECRET)
        .await
        .unwrap_or_else(|e| panic!("refused: {e}; log: {}", sidecar.log()));
    own.register(&dirs).await.unwrap();
    assert_eq!(&own.fetch().await.unwrap()[..], b"partition one");

    // A wrong secret for its app: refused.
    let err = AuthClient::connect(sidecar.addr, APP, "not-the-secret")
        .await
        .err()
        .expect("a wrong secret authenticated");
    assert!(err.to_lowercase().contains("auth"), "{err}");
    // The right secret under another app id: refused, naming the app.
    let err = AuthClient::connect(sidecar.addr, "spark-other", SECRET)
        .await
        .err()
        .expect("another app authenticated with this pod's secret");
    assert!(
        err.contains("No secret is configured for application 'spark-other'"),
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
    let sidecar = Sidecar::start(tmp.path(), &server, None);
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
