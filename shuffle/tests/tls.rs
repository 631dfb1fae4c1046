//! TLS on the shuffle port (Spark 4's `spark.ssl.rpc.*`) over real sockets: the protocol
//! client with TLS, alone and with `spark.authenticate` inside it and its AES cipher around
//! it (Spark's layering); clients in the clear, untrusting clients and stalled handshakes are
//! closed while everyone else is served. The server runs in-process on `127.0.0.1:0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kshuffle::auth::{AuthEngineVersion, CipherMode, Secret, StaticSecrets};
use kshuffle::client::{Client, Credentials, Error as ClientError};
use kshuffle::config::AuthSettings;
use kshuffle::fixture::{ExecutorDirs, pseudo_random_bytes};
use kshuffle::registry::MemoryRegistry;
use kshuffle::stats::Snapshot;
use kshuffle::tls::CertStore;
use kshuffle::wire::Message;
use kshuffle::{Config, Server};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

use common::TestCertificate;

const APP: &str = "app-tls";

struct Daemon {
    addr: SocketAddr,
    root: PathBuf,
    /// The certificate the daemon serves (DER), for clients to trust.
    cert: CertificateDer<'static>,
    shutdown: CancellationToken,
    task: JoinHandle<Snapshot>,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    /// A daemon serving TLS with a fresh self-signed `localhost` certificate, loaded from PEM
    /// files as `--tls-cert-file`/`--tls-key-file` are.
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap().join("root");
        std::fs::create_dir(&root).unwrap();
        let made = TestCertificate::create(tmp.path(), &["localhost"]);
        let certs = Arc::new(CertStore::load(&made.cert, &made.key).unwrap());
        let mut config = Config::new(vec![root.clone()]);
        config.tls = Some(Arc::new(certs.server_config().unwrap()));
        tweak(&mut config);
        let server = Server::new(config, Arc::new(MemoryRegistry::new())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { server.run(listener, token).await });
        Daemon {
            addr,
            root,
            cert: CertificateDer::from(made.der),
            shutdown,
            task,
            _tmp: tmp,
        }
    }

    /// A TLS client trusting `trusted` (the daemon's own certificate for a good client).
    async fn tls_client(&self, trusted: &CertificateDer<'static>) -> Result<Client, ClientError> {
        let config = kshuffle::tls::client_config([trusted.clone()]).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        Client::connect_tls(self.addr, Arc::new(config), name).await
    }

    async fn client(&self) -> Client {
        within(self.tls_client(&self.cert)).await.unwrap()
    }

    /// Registers executor "1" of `app` with one map output of `blocks`.
    async fn register(&self, c: &mut Client, app: &str, blocks: &[&[u8]]) {
        let dirs = ExecutorDirs::create(&self.root.join(app), "e", 2, 64).unwrap();
        dirs.write_map_output(0, 7, blocks).unwrap();
        within(c.register(app, "1", dirs.as_strings(), 64))
            .await
            .unwrap();
    }

    async fn stop(self) -> Snapshot {
        self.shutdown.cancel();
        within(self.task).await.unwrap()
    }
}

async fn within<F: std::future::IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// `FetchShuffleBlocks` of partitions `reduces` of map output 7 of executor "1" of `app`.
fn fetch(app: &str, reduces: &[i32]) -> Message {
    Message::FetchShuffleBlocks {
        app_id: app.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids: vec![7],
        reduce_ids: vec![reduces.to_vec()],
        batch_fetch_enabled: false,
    }
}

/// Every block of map output 7 of executor "1" of `app`, fetched as Spark does.
async fn fetch_all(c: &mut Client, app: &str, blocks: usize) -> Result<Vec<Bytes>, ClientError> {
    let all: Vec<i32> = (0..i32::try_from(blocks).unwrap()).collect();
    let stream = c.open(&fetch(app, &all)).await?;
    let mut out = Vec::new();
    for chunk_index in 0..stream.num_chunks {
        out.push(c.chunk(stream.stream_id, chunk_index).await?);
    }
    Ok(out)
}

/// Small, inlined, and larger than any inline size (`sendfile` on a connection in the clear).
fn blocks() -> Vec<Vec<u8>> {
    vec![
        b"a small block".to_vec(),
        pseudo_random_bytes(1, 20_000),
        pseudo_random_bytes(2, 3_000_000),
    ]
}

#[tokio::test]
async fn a_fetch_over_tls_returns_every_byte() {
    let daemon = Daemon::start(|_| {}).await;
    let blocks = blocks();
    let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    let mut c = daemon.client().await;
    daemon.register(&mut c, APP, &refs).await;
    let got = within(fetch_all(&mut c, APP, blocks.len())).await.unwrap();
    assert_eq!(got, blocks);
    // A second connection, a second handshake; the large block also by `StreamRequest`
    // (Spark's fetch-to-disk path: the body follows its frame).
    let mut again = daemon.client().await;
    let got = within(fetch_all(&mut again, APP, blocks.len()))
        .await
        .unwrap();
    assert_eq!(got, blocks);
    let stream = within(again.open(&fetch(APP, &[2]))).await.unwrap();
    let body = within(again.stream(stream.stream_id, 0)).await.unwrap();
    assert_eq!(body, blocks[2]);
    drop((c, again));
    let stats = daemon.stop().await;
    assert_eq!(stats.tls_handshakes, 2, "{stats:?}");
    assert_eq!(stats.chunks_served, 6, "{stats:?}");
    assert_eq!(stats.streams_served, 1, "{stats:?}");
    assert_eq!(stats.connection_errors, 0, "{stats:?}");
}

/// Spark allows both: `spark.authenticate` with `spark.network.crypto.enabled` runs its
/// handshake inside TLS, and the AES transport cipher it sets up then runs around TLS, next
/// to the socket (Spark adds its handlers first in the Netty pipeline, ahead of TLS's).
#[tokio::test]
async fn authentication_runs_inside_tls_and_the_aes_cipher_around_it() {
    let secrets =
        StaticSecrets::per_app(Default::default()).with_app(APP, Secret::from("tls-secret"));
    let daemon = Daemon::start(|config| {
        config.auth = Some(AuthSettings {
            secrets: Arc::new(secrets),
            version: AuthEngineVersion::V1,
            cipher: CipherMode::Ctr,
            sasl_fallback: true,
        });
    })
    .await;
    let blocks = blocks();
    let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    let mut c = daemon.client().await;
    within(c.authenticate(&Credentials::new(APP, Secret::from("tls-secret"))))
        .await
        .unwrap();
    assert!(c.is_authenticated());
    daemon.register(&mut c, APP, &refs).await;
    let got = within(fetch_all(&mut c, APP, blocks.len())).await.unwrap();
    assert_eq!(got, blocks);

    // TLS alone is not authentication: a request before the handshake is refused.
    let mut unauthenticated = daemon.client().await;
    let refused = within(fetch_all(&mut unauthenticated, APP, 1)).await;
    assert!(
        matches!(&refused, Err(ClientError::Failure(text)) if text.contains("SaslMessage")),
        "{refused:?}"
    );
    drop((c, unauthenticated));
    let stats = daemon.stop().await;
    assert_eq!(stats.tls_handshakes, 2, "{stats:?}");
    assert_eq!(stats.encrypted_connections, 1, "{stats:?}");
    assert_eq!(stats.chunks_served, 3, "{stats:?}");
}

#[tokio::test]
async fn clients_in_the_clear_or_untrusting_are_closed_and_others_are_served() {
    let daemon = Daemon::start(|_| {}).await;
    let blocks = blocks();
    let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    let mut good = daemon.client().await;
    daemon.register(&mut good, APP, &refs).await;

    // Spark without spark.ssl.rpc.enabled: its first frame closes the connection.
    let mut plain = within(Client::connect(daemon.addr)).await.unwrap();
    let refused = within(plain.rpc(&Message::GetLocalDirsForExecutors {
        app_id: APP.into(),
        exec_ids: vec!["1".into()],
    }))
    .await;
    assert!(
        matches!(refused, Err(ClientError::Closed | ClientError::Io(_))),
        "{refused:?}"
    );

    // A client that does not trust the daemon's certificate fails its handshake.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = TestCertificate::create(elsewhere.path(), &["localhost"]);
    let untrusting = within(daemon.tls_client(&CertificateDer::from(other.der)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            untrusting,
            ClientError::Tls(rustls::Error::InvalidCertificate(_))
        ),
        "{untrusting}"
    );

    // The first connection was never disturbed.
    let got = within(fetch_all(&mut good, APP, blocks.len()))
        .await
        .unwrap();
    assert_eq!(got, blocks);
    drop(good);
    let stats = daemon.stop().await;
    assert_eq!(stats.tls_handshakes, 1, "{stats:?}");
    assert_eq!(stats.connection_errors, 2, "{stats:?}");
}

/// A handshake is held to the frame timeout, as a frame is: a ClientHello that stops halfway,
/// and a client that sends its ClientHello and never finishes, are both closed.
#[tokio::test]
async fn a_stalled_handshake_is_closed_by_the_frame_timeout() {
    let frame_timeout = Duration::from_millis(300);
    let daemon = Daemon::start(|config| {
        config.frame_timeout = frame_timeout;
        config.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // A real ClientHello, as the rustls client writes it.
    let config = kshuffle::tls::client_config([]).unwrap();
    let mut hello_client =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut hello = Vec::new();
    hello_client.write_tls(&mut hello).unwrap();

    for sent in [&hello[..hello.len() / 2], &hello[..]] {
        let mut socket = TcpStream::connect(daemon.addr).await.unwrap();
        socket.write_all(sent).await.unwrap();
        let started = Instant::now();
        // Whatever the server answers (its ServerHello for a whole ClientHello), then EOF.
        let mut sink = Vec::new();
        // (A reset, after an unread ServerHello, is a close too.)
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sink))
            .await
            .expect("a stalled handshake was kept open");
        assert!(
            started.elapsed() >= frame_timeout,
            "closed before the frame timeout"
        );
        assert_eq!(
            sink.is_empty(),
            sent.len() < hello.len(),
            "a ServerHello for a whole ClientHello only"
        );
    }
    let stats = daemon.stop().await;
    assert_eq!(stats.tls_handshakes, 0, "{stats:?}");
    assert_eq!(stats.connection_errors, 2, "{stats:?}");
}

/// An established TLS session driven by hand over a plain socket, to see every record the
/// server sends, the last ones included.
async fn raw_session(daemon: &Daemon) -> (TcpStream, rustls::ClientConnection) {
    let config = kshuffle::tls::client_config([daemon.cert.clone()]).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(daemon.addr).await.unwrap();
    loop {
        let mut out = Vec::new();
        while session.wants_write() {
            session.write_tls(&mut out).unwrap();
        }
        socket.write_all(&out).await.unwrap();
        if !session.is_handshaking() {
            return (socket, session);
        }
        let mut buf = vec![0; 64 * 1024];
        let n = within(socket.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        session.read_tls(&mut &buf[..n]).unwrap();
        session.process_new_packets().unwrap();
    }
}

/// When the daemon closes a TLS connection itself (here: idle), it ends the session with
/// `close_notify` first, so the client can tell the end from a truncation.
#[tokio::test]
async fn the_daemon_ends_a_session_with_close_notify() {
    let daemon = Daemon::start(|config| config.idle_timeout = Duration::from_millis(300)).await;
    let (mut socket, mut session) = raw_session(&daemon).await;
    let mut rest = Vec::new();
    within(socket.read_to_end(&mut rest)).await.unwrap();
    let mut rest = &rest[..];
    while !rest.is_empty() {
        session.read_tls(&mut rest).unwrap();
    }
    let state = session.process_new_packets().unwrap();
    assert!(state.peer_has_closed(), "no close_notify before the FIN");
    daemon.stop().await;
}
