//! The daemon over real sockets with the protocol client: every request Spark sends, and bad
//! input as raw bytes. The server runs in-process on `127.0.0.1:0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kshuffle::client::{Client, Error as ClientError};
use kshuffle::fixture::{ExecutorDirs, pseudo_random_bytes};
use kshuffle::registry::MemoryRegistry;
use kshuffle::stats::Snapshot;
use kshuffle::wire::{Frame, Message, StreamChunkId};
use kshuffle::{Config, Server};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const APP: &str = "app-20261125-0001";

struct Daemon {
    addr: SocketAddr,
    root: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Snapshot>,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_registry(tweak, Arc::new(MemoryRegistry::new())).await
    }

    async fn with_registry(
        tweak: impl FnOnce(&mut Config),
        registry: Arc<dyn kshuffle::registry::Registry>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut config = Config::new(vec![root.clone()]);
        tweak(&mut config);
        let server = Server::new(config, registry).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { server.run(listener, token).await });
        Daemon {
            addr,
            root,
            shutdown,
            task,
            _tmp: tmp,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await.unwrap()
    }

    /// A registered executor "1" of APP with `maps` map outputs of shuffle 0 (map ids
    /// 100..), each with `parts` partitions of pseudo-random sizes.
    async fn executor(&self, client: &mut Client, maps: i64, parts: usize) -> Layout {
        let dirs = ExecutorDirs::create(&self.root, "e1", 2, 64).unwrap();
        let mut outputs = Vec::new();
        for m in 0..maps {
            let data: Vec<Vec<u8>> = (0..parts)
                .map(|r| {
                    pseudo_random_bytes((m * 1000 + r as i64) as u64, (r * 37 + m as usize) % 500)
                })
                .collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            dirs.write_map_output(0, 100 + m, &refs).unwrap();
            outputs.push(data);
        }
        client
            .register(APP, "1", dirs.as_strings(), 64)
            .await
            .unwrap();
        Layout { dirs, outputs }
    }

    async fn stop(self) -> Snapshot {
        self.shutdown.cancel();
        within(self.task).await.unwrap()
    }
}

struct Layout {
    dirs: ExecutorDirs,
    outputs: Vec<Vec<Vec<u8>>>,
}

async fn within<F: std::future::IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

fn failure(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Failure(message)) => message,
        other => panic!("expected a failure reply, got {other:?}"),
    }
}

fn fetch(exec: &str, map_ids: Vec<i64>, reduce_ids: Vec<Vec<i32>>, batch: bool) -> Message {
    Message::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: exec.into(),
        shuffle_id: 0,
        map_ids,
        reduce_ids,
        batch_fetch_enabled: batch,
    }
}

#[tokio::test]
async fn fetch_shuffle_blocks_plain_batch_and_stream_request() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 3, 20).await;

    // Plain: chunks in row-major order of (map, reduce).
    let reduce_ids = vec![vec![0, 5, 19], vec![], vec![7, 3]];
    let handle = c
        .open(&fetch("1", vec![100, 101, 102], reduce_ids.clone(), false))
        .await
        .unwrap();
    assert_eq!(handle.num_chunks, 5);
    let want = [(0, 0), (0, 5), (0, 19), (2, 7), (2, 3)];
    for (i, (m, r)) in want.iter().enumerate() {
        let got = within(c.chunk(handle.stream_id, i as i32)).await.unwrap();
        assert_eq!(got, layout.outputs[*m][*r], "chunk {i}");
    }

    // Batch: one contiguous range per map, partitions concatenated.
    let handle = c
        .open(&fetch(
            "1",
            vec![101, 100],
            vec![vec![2, 9], vec![0, 20]],
            true,
        ))
        .await
        .unwrap();
    assert_eq!(handle.num_chunks, 2);
    assert_eq!(
        c.chunk(handle.stream_id, 0).await.unwrap(),
        layout.outputs[1][2..9].concat()
    );
    assert_eq!(
        c.chunk(handle.stream_id, 1).await.unwrap(),
        layout.outputs[0].concat()
    );

    // StreamRequest (Spark's fetch-to-disk path) for a multi-MiB block.
    let big = pseudo_random_bytes(7, 5 << 20);
    layout.dirs.write_map_output(0, 900, &[b"x", &big]).unwrap();
    let handle = c
        .open(&fetch("1", vec![900], vec![vec![1, 0]], false))
        .await
        .unwrap();
    assert_eq!(c.stream(handle.stream_id, 0).await.unwrap(), big);
    assert_eq!(c.stream(handle.stream_id, 1).await.unwrap(), &b"x"[..]);

    let stats = daemon.stop().await;
    assert_eq!(stats.registrations, 1);
    assert_eq!(stats.fetch_shuffle_blocks, 3);
    assert_eq!(stats.batch_fetches, 1);
    assert_eq!(stats.chunks_served, 7);
    assert_eq!(
        (stats.streams_served, stats.stream_bytes),
        (2, big.len() as u64 + 1)
    );
    assert_eq!(stats.rpc_failures + stats.chunk_failures, 0);
}

/// The chunks of one stream that come one after another from the same map output open its
/// data file once (counted by `map_outputs_opened`), and every byte is still right; a new
/// stream opens the files again, so a map output rewritten between streams is served new.
/// (A data file truncated mid-stream is still refused cleanly: see
/// `bad_requests_get_failures_and_the_connection_goes_on`.)
#[tokio::test]
async fn a_stream_opens_each_run_of_one_map_output_once() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 2, 6).await;

    let reduce_ids = vec![vec![0, 1, 2, 3], vec![4, 5], vec![5]];
    let handle = c
        .open(&fetch("1", vec![100, 101, 100], reduce_ids, false))
        .await
        .unwrap();
    let want = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (0, 5)];
    assert_eq!(handle.num_chunks as usize, want.len());
    for (i, (m, r)) in want.iter().enumerate() {
        let got = within(c.chunk(handle.stream_id, i as i32)).await.unwrap();
        assert_eq!(got, layout.outputs[*m][*r], "chunk {i}");
    }

    // Rewritten (other sizes, other bytes) between streams: the next stream sees the new files.
    let new: Vec<Vec<u8>> = (0..3)
        .map(|r| pseudo_random_bytes(900 + r, 300 + r as usize))
        .collect();
    let refs: Vec<&[u8]> = new.iter().map(Vec::as_slice).collect();
    layout.dirs.write_map_output(0, 100, &refs).unwrap();
    let handle = c
        .open(&fetch("1", vec![100], vec![vec![1, 2]], false))
        .await
        .unwrap();
    assert_eq!(c.chunk(handle.stream_id, 0).await.unwrap(), new[1]);
    assert_eq!(c.chunk(handle.stream_id, 1).await.unwrap(), new[2]);

    let stats = daemon.stop().await;
    assert_eq!(stats.chunks_served, 9);
    // Stream 1: map 100, map 101, map 100 again; stream 2: map 100.
    assert_eq!(stats.map_outputs_opened, 4, "{stats:?}");
}

#[tokio::test]
async fn open_blocks_for_shuffle_and_rdd_blocks() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 2, 4).await;
    layout
        .dirs
        .write_rdd_block(3, 4, b"cached partition 4")
        .unwrap();

    let open = |ids: &[&str]| Message::OpenBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        block_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    };
    let handle = c
        .open(&open(&["shuffle_0_101_3", "shuffle_0_100_1"]))
        .await
        .unwrap();
    assert_eq!(handle.num_chunks, 2);
    assert_eq!(
        c.chunk(handle.stream_id, 0).await.unwrap(),
        layout.outputs[1][3]
    );
    assert_eq!(
        c.chunk(handle.stream_id, 1).await.unwrap(),
        layout.outputs[0][1]
    );

    let handle = c.open(&open(&["rdd_3_4"])).await.unwrap();
    assert_eq!(
        c.chunk(handle.stream_id, 0).await.unwrap(),
        &b"cached partition 4"[..]
    );
    let handle = c.open(&open(&["rdd_3_5"])).await.unwrap();
    let err = failure(c.chunk(handle.stream_id, 0).await);
    assert!(err.contains("Chunk was not found"), "{err}");

    let stats = daemon.stop().await;
    assert_eq!(
        (
            stats.open_blocks,
            stats.rdd_blocks_served,
            stats.chunk_failures
        ),
        (3, 1, 1)
    );
}

#[tokio::test]
async fn local_dirs_and_remove_blocks() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 2, 4).await;

    let reply = c
        .rpc(&Message::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into()],
        })
        .await
        .unwrap();
    assert_eq!(
        Message::decode(&reply).unwrap(),
        Message::LocalDirsForExecutors {
            exec_ids: vec!["1".into()],
            num_local_dirs_by_exec: vec![2],
            all_local_dirs: layout.dirs.as_strings(),
        }
    );
    let err = failure(
        c.rpc(&Message::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into(), "9".into()],
        })
        .await,
    );
    assert!(
        err.contains("Executor is not registered") && err.contains("execId=9"),
        "{err}"
    );

    let remove = |ids: &[&str]| Message::RemoveBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        block_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    };
    let reply = c
        .rpc(&remove(&[
            "shuffle_0_100_0.index",
            "shuffle_0_100_0.data",
            "shuffle_0_555_0.data",
            "../x",
        ]))
        .await
        .unwrap();
    assert_eq!(
        Message::decode(&reply).unwrap(),
        Message::BlocksRemoved {
            num_removed_blocks: 2
        }
    );
    // The removed map output is gone; the other one is still served.
    let handle = c
        .open(&fetch("1", vec![100, 101], vec![vec![0], vec![0]], false))
        .await
        .unwrap();
    let err = failure(c.chunk(handle.stream_id, 0).await);
    assert!(err.contains("shuffle_0_100_0.index"), "{err}");
    assert_eq!(
        c.chunk(handle.stream_id, 1).await.unwrap(),
        layout.outputs[1][0]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn bad_requests_get_failures_and_the_connection_goes_on() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 1, 4).await;

    // An auth message (AuthEngine's, SASL's) to a service without auth: Spark's service
    // answers "Unknown message type: -5"; ours says so too, then why.
    for (tag, ty) in [(0xFB, "-5"), (0xEA, "-22")] {
        let err = failure(c.rpc_raw(Bytes::from(vec![tag, 0, 0, 0, 1, b'a'])).await);
        assert!(
            err.starts_with(&format!(
                "Unknown message type: {ty} (an authentication handshake"
            )) && err.contains("spark.authenticate")
                && err.contains("--auth-secret-file"),
            "{err}"
        );
    }
    // Any other unknown type is only that.
    let err = failure(
        c.rpc_raw(Bytes::from_static(&[0x7F, 0, 0, 0, 1, b'a']))
            .await,
    );
    assert_eq!(err, "Unknown message type: 127");
    let err = failure(c.rpc_raw(Bytes::new()).await);
    assert!(!err.is_empty());
    // A truncated message body.
    let err = failure(
        c.rpc_raw(Bytes::from_static(&[9, 0, 0, 0, 200, b'x']))
            .await,
    );
    assert!(!err.is_empty());
    // Unknown app or executor.
    let err = failure(c.open(&fetch("7", vec![100], vec![vec![0]], false)).await);
    assert!(
        err.contains("Executor is not registered (appId=app-20261125-0001, execId=7)"),
        "{err}"
    );
    // Block ids that do not parse, or of mixed kinds.
    for ids in [
        &["shuffle_0_x_1"][..],
        &["shuffle_0_1"],
        &["rdd_1_2", "shuffle_0_1_2"],
        &["../../etc"],
    ] {
        let msg = Message::OpenBlocks {
            app_id: APP.into(),
            exec_id: "1".into(),
            block_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        };
        let err = failure(c.open(&msg).await);
        assert!(!err.is_empty(), "{ids:?}");
    }
    // Messages a shuffle service does not take.
    let err = failure(
        c.rpc(&Message::RegisterDriver {
            app_id: APP.into(),
            heartbeat_timeout_ms: 1,
        })
        .await,
    );
    assert!(err.contains("Unexpected message: RegisterDriver"), "{err}");
    let err = failure(
        c.rpc(&Message::FinalizeShuffleMerge {
            app_id: APP.into(),
            app_attempt_id: 1,
            shuffle_id: 0,
            shuffle_merge_id: 0,
        })
        .await,
    );
    assert!(err.contains("Cannot handle shuffle block merge"), "{err}");
    // Registration outside the allowed roots.
    let outside = tempfile::tempdir().unwrap();
    let err = failure(
        c.register(APP, "2", vec![outside.path().display().to_string()], 64)
            .await,
    );
    assert!(
        err.contains("not under any of the service's allowed roots"),
        "{err}"
    );

    // Missing index, reduce id past the end, truncated data.
    let handle = c
        .open(&fetch(
            "1",
            vec![555, 100, 100],
            vec![vec![0], vec![9], vec![1]],
            false,
        ))
        .await
        .unwrap();
    let err = failure(c.chunk(handle.stream_id, 0).await);
    assert!(
        err.contains("Failed to open file") && err.contains("shuffle_0_555_0.index"),
        "{err}"
    );
    let err = failure(c.chunk(handle.stream_id, 1).await);
    assert!(err.contains("out of range"), "{err}");
    let data = layout
        .dirs
        .path(&kshuffle::store::BlockFile::ShuffleData {
            shuffle_id: 0,
            map_id: 100,
        })
        .unwrap();
    std::fs::write(&data, b"short").unwrap();
    let err = failure(c.chunk(handle.stream_id, 2).await);
    assert!(err.contains("has 5 bytes"), "{err}");

    // Out of order, beyond the stream, unknown streams, bad StreamRequest ids.
    let layout2 = daemon.root.join("second");
    std::fs::create_dir(&layout2).unwrap();
    let dirs = ExecutorDirs::create(&layout2, "e3", 1, 64).unwrap();
    dirs.write_map_output(0, 100, &[b"a", b"b"]).unwrap();
    c.register(APP, "3", dirs.as_strings(), 64).await.unwrap();
    let handle = c
        .open(&fetch("3", vec![100], vec![vec![0, 1]], false))
        .await
        .unwrap();
    let err = failure(c.chunk(handle.stream_id, 1).await);
    assert_eq!(err, "Received out-of-order chunk index 1 (expected 0)");
    assert_eq!(c.chunk(handle.stream_id, 0).await.unwrap(), &b"a"[..]);
    assert_eq!(c.chunk(handle.stream_id, 1).await.unwrap(), &b"b"[..]);
    let err = failure(c.chunk(handle.stream_id, 2).await);
    assert!(err.contains("is closed"), "finished stream: {err}");
    let err = failure(c.chunk(42, 0).await);
    assert!(err.contains("streamId 42 is closed"), "{err}");
    c.send(&Frame::StreamRequest {
        stream_id: "not-a-stream".into(),
    })
    .await
    .unwrap();
    match c.recv().await.unwrap().0 {
        Frame::StreamFailure { stream_id, error } => {
            assert_eq!(stream_id, "not-a-stream");
            assert!(!error.is_empty());
        }
        other => panic!("expected StreamFailure, got {other:?}"),
    }

    // After all of that, the same connection still serves.
    let handle = c
        .open(&fetch("3", vec![100], vec![vec![1]], false))
        .await
        .unwrap();
    assert_eq!(c.chunk(handle.stream_id, 0).await.unwrap(), &b"b"[..]);
    let stats = daemon.stop().await;
    assert_eq!(stats.connection_errors, 0);
    assert!(stats.rpc_failures >= 10, "{stats:?}");
}

fn raw_frame(len: i64, rest: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i64(len);
    b.put_slice(rest);
    b.to_vec()
}

#[tokio::test]
async fn framing_errors_close_only_that_connection() {
    let daemon = Daemon::start(|c| c.max_frame_len_bytes = 64 * 1024).await;
    let mut good = daemon.client().await;
    let layout = daemon.executor(&mut good, 1, 2).await;

    let bad_inputs: Vec<(&str, Vec<u8>)> = vec![
        ("oversized length", raw_frame(1 << 40, &[3])),
        ("over the configured limit", raw_frame(64 * 1024 + 1, &[3])),
        ("negative length", raw_frame(-5, &[3])),
        ("zero length", raw_frame(0, &[])),
        (
            "a TLS ClientHello (Spark 4 with spark.ssl.rpc.enabled)",
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
        ),
        (
            "an HTTP request",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("unknown frame type", raw_frame(9 + 4, &[0x42, 0, 0, 0, 0])),
        (
            "response type from a client",
            raw_frame(9 + 12, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        ),
        (
            "body length disagrees",
            raw_frame(
                8 + 1 + 8 + 4 + 1,
                &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 2],
            ),
        ),
    ];
    for (what, bytes) in bad_inputs {
        let mut bad = daemon.client().await;
        bad.send_raw(&bytes).await.unwrap();
        match within(bad.recv()).await {
            Err(ClientError::Closed) | Err(ClientError::Io(_)) => {}
            other => panic!("{what}: expected the connection to close, got {other:?}"),
        }
        // Everyone else is still served.
        let handle = good
            .open(&fetch("1", vec![100], vec![vec![1]], false))
            .await
            .unwrap();
        assert_eq!(
            good.chunk(handle.stream_id, 0).await.unwrap(),
            layout.outputs[0][1],
            "{what}"
        );
    }

    // A client that disappears in the middle of a frame.
    let mut bad = daemon.client().await;
    bad.send_raw(&raw_frame(100, &[3, 0, 0])).await.unwrap();
    drop(bad);
    // UploadStream: failure, then the connection closes (its body cannot be skipped).
    let mut up = daemon.client().await;
    up.send(&Frame::UploadStream {
        request_id: 5,
        meta: Bytes::from_static(&[6]),
        body_byte_count: 3,
    })
    .await
    .unwrap();
    up.send_raw(b"abc").await.unwrap();
    match within(up.recv()).await.unwrap().0 {
        Frame::RpcFailure { request_id: 5, .. } => {}
        other => panic!("expected RpcFailure, got {other:?}"),
    }
    assert!(matches!(
        within(up.recv()).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));

    let stats = daemon.stop().await;
    assert!(stats.connection_errors >= 7, "{stats:?}");
}

#[tokio::test]
async fn streams_belong_to_the_connection_that_opened_them() {
    let daemon = Daemon::start(|_| {}).await;
    let mut a = daemon.client().await;
    let layout = daemon.executor(&mut a, 1, 2).await;
    let handle = a
        .open(&fetch("1", vec![100], vec![vec![0, 1]], false))
        .await
        .unwrap();
    let mut b = daemon.client().await;
    let err = failure(b.chunk(handle.stream_id, 0).await);
    assert!(err.contains("is closed"), "{err}");
    let err = failure(b.stream(handle.stream_id, 0).await);
    assert!(err.contains("is closed"), "{err}");
    // The owner is unaffected.
    assert_eq!(
        a.chunk(handle.stream_id, 0).await.unwrap(),
        layout.outputs[0][0]
    );
    // `a` still has a stream open: closing it lets shutdown finish without the grace period.
    drop(a);
    daemon.stop().await;
}

#[tokio::test]
async fn limits_on_streams_and_connections() {
    let daemon = Daemon::start(|c| {
        c.max_streams_per_connection = 2;
        c.max_connections = 2;
    })
    .await;
    let mut a = daemon.client().await;
    daemon.executor(&mut a, 1, 2).await;
    a.open(&fetch("1", vec![100], vec![vec![0]], false))
        .await
        .unwrap();
    let h = a
        .open(&fetch("1", vec![100], vec![vec![1]], false))
        .await
        .unwrap();
    let err = failure(a.open(&fetch("1", vec![100], vec![vec![1]], false)).await);
    assert!(err.contains("Too many open streams"), "{err}");
    // Finishing a stream frees its slot.
    a.chunk(h.stream_id, 0).await.unwrap();
    a.open(&fetch("1", vec![100], vec![vec![1]], false))
        .await
        .unwrap();

    let _b = daemon.client().await;
    let mut third = daemon.client().await;
    assert!(matches!(
        within(third.recv()).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    drop(a);
    let stats = daemon.stop().await;
    assert_eq!(stats.connections_refused, 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let daemon = Daemon::start(|c| c.idle_timeout = Duration::from_millis(200)).await;
    let mut c = daemon.client().await;
    assert!(matches!(
        within(c.recv()).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    daemon.stop().await;
}

#[tokio::test]
async fn shutdown_lets_open_streams_finish_then_stops() {
    let daemon = Daemon::start(|c| c.shutdown_grace_period = Duration::from_secs(5)).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 1, 3).await;
    let mut idle = daemon.client().await;
    let handle = c
        .open(&fetch("1", vec![100], vec![vec![0, 1, 2]], false))
        .await
        .unwrap();
    assert_eq!(
        c.chunk(handle.stream_id, 0).await.unwrap(),
        layout.outputs[0][0]
    );

    daemon.shutdown.cancel();
    // A connection without open streams closes; new connections are not accepted.
    assert!(matches!(
        within(idle.recv()).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        Client::connect(daemon.addr).await.is_err(),
        "still accepting after shutdown"
    );
    // The open stream is still served to its end, then the server stops.
    assert_eq!(
        c.chunk(handle.stream_id, 1).await.unwrap(),
        layout.outputs[0][1]
    );
    assert_eq!(
        c.chunk(handle.stream_id, 2).await.unwrap(),
        layout.outputs[0][2]
    );
    let stats = within(daemon.task).await.unwrap();
    assert_eq!(stats.chunks_served, 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let layout = daemon.executor(&mut c, 2, 30).await;
    // As Spark's client does: one request, then all chunk requests back to back, with an
    // RPC interleaved.
    let handle = c
        .open(&fetch(
            "1",
            vec![100, 101],
            vec![(0..30).collect(), (0..30).collect()],
            false,
        ))
        .await
        .unwrap();
    for i in 0..handle.num_chunks {
        c.send(&Frame::ChunkFetchRequest(StreamChunkId {
            stream_id: handle.stream_id,
            chunk_index: i,
        }))
        .await
        .unwrap();
        if i == 10 {
            let body = Message::GetLocalDirsForExecutors {
                app_id: APP.into(),
                exec_ids: vec!["1".into()],
            }
            .to_bytes();
            c.send(&Frame::RpcRequest {
                request_id: 77,
                body,
            })
            .await
            .unwrap();
        }
    }
    for i in 0..handle.num_chunks {
        let (m, r) = ((i / 30) as usize, (i % 30) as usize);
        match within(c.recv()).await.unwrap().0 {
            Frame::ChunkFetchSuccess { id, body } => {
                assert_eq!(id.chunk_index, i);
                assert_eq!(body, layout.outputs[m][r]);
            }
            other => panic!("chunk {i}: {other:?}"),
        }
        if i == 10 {
            assert!(matches!(
                within(c.recv()).await.unwrap().0,
                Frame::RpcResponse { request_id: 77, .. }
            ));
        }
    }
    daemon.stop().await;
}

/// A registry in memory whose writes fail with ENOSPC (a full disk, as the journal's do)
/// when `full`, or else take `delay` each (as a sync does), counting how many run at once.
#[derive(Default)]
struct TestRegistry {
    memory: MemoryRegistry,
    full: bool,
    delay: Duration,
    running: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
}

impl kshuffle::registry::Registry for TestRegistry {
    fn insert(
        &self,
        executor: Arc<kshuffle::registry::Executor>,
    ) -> Result<(), kshuffle::registry::Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.full {
            return Err(kshuffle::registry::Error::Store(
                std::io::Error::from_raw_os_error(28),
            ));
        }
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most_at_once.fetch_max(now, SeqCst);
        // `insert` is blocking (the daemon calls it on a blocking thread), as a sync is.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(self.delay);
        self.running.fetch_sub(1, SeqCst);
        self.memory.insert(executor)
    }
    fn get(&self, app: &str, exec: &str) -> Option<Arc<kshuffle::registry::Executor>> {
        self.memory.get(app, exec)
    }
    fn executors_of(&self, app: &str) -> Vec<Arc<kshuffle::registry::Executor>> {
        self.memory.executors_of(app)
    }
    fn remove_app(
        &self,
        app: &str,
    ) -> Result<Vec<Arc<kshuffle::registry::Executor>>, kshuffle::registry::Error> {
        self.memory.remove_app(app)
    }
    fn apps(&self) -> Vec<kshuffle::registry::AppId> {
        self.memory.apps()
    }
    fn all(&self) -> Vec<Arc<kshuffle::registry::Executor>> {
        self.memory.all()
    }
    fn len(&self) -> usize {
        self.memory.len()
    }
}

#[tokio::test]
async fn a_registration_that_cannot_be_persisted_is_refused_with_the_reason() {
    let registry = TestRegistry {
        full: true,
        ..TestRegistry::default()
    };
    let daemon = Daemon::with_registry(|_| {}, Arc::new(registry)).await;
    let dirs = ExecutorDirs::create(&daemon.root, "e", 1, 64).unwrap();
    let mut c = daemon.client().await;
    let err = failure(c.register(APP, "1", dirs.as_strings(), 64).await);
    assert!(
        err.contains("registry store failed") && err.contains("No space left on device"),
        "{err}"
    );
    // Not served either: the client was told it is not registered.
    let err = failure(c.open(&fetch("1", vec![1], vec![vec![0]], false)).await);
    assert!(err.contains("not registered"), "{err}");
    drop(c);
    let stats = daemon.stop().await;
    assert_eq!(stats.registrations, 0);
}

/// `RegisterExecutor`s pipelined on one connection are handled together (their registry
/// writes overlap, so a durable registry shares its syncs among them) and answered in
/// request order; a second registration of an executor in the pipeline waits for the first
/// and replaces it; a request behind them sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_registrations_are_handled_together_and_answered_in_order() {
    let registry = Arc::new(TestRegistry {
        delay: Duration::from_millis(50),
        ..TestRegistry::default()
    });
    let daemon = Daemon::with_registry(|_| {}, Arc::clone(&registry) as _).await;
    let first = ExecutorDirs::create(&daemon.root, "first", 1, 4).unwrap();
    let second = ExecutorDirs::create(&daemon.root, "second", 1, 4).unwrap();
    let register = |request_id: i64, exec: &str, dirs: &ExecutorDirs| Frame::RpcRequest {
        request_id,
        body: Message::RegisterExecutor {
            app_id: APP.into(),
            exec_id: exec.into(),
            info: kshuffle::wire::ExecutorShuffleInfo {
                local_dirs: dirs.as_strings(),
                sub_dirs_per_local_dir: 4,
                shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
            },
        }
        .to_bytes(),
    };
    // Executors 0-19, executor 3 again (other dirs), then a lookup of executor 3's dirs.
    let mut frames: Vec<Frame> = (0..20)
        .map(|i| register(i + 1, &i.to_string(), &first))
        .collect();
    frames.push(register(21, "3", &second));
    frames.push(Frame::RpcRequest {
        request_id: 22,
        body: Message::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["3".into()],
        }
        .to_bytes(),
    });
    let mut c = daemon.client().await;
    send_batch(&mut c, &frames).await;
    for want in 1..=22 {
        match within(c.recv()).await.unwrap().0 {
            Frame::RpcResponse { request_id, body } => {
                assert_eq!(request_id, want);
                if want == 22 {
                    let Message::LocalDirsForExecutors { all_local_dirs, .. } =
                        Message::decode(&body).unwrap()
                    else {
                        panic!("{body:?}")
                    };
                    assert_eq!(all_local_dirs, second.as_strings());
                }
            }
            other => panic!("reply {want}: {other:?}"),
        }
    }
    // Sent in one write, the first 20 were in hand together (the daemon may have read
    // them in more than one piece, so not necessarily all 20 at once).
    let most = registry
        .most_at_once
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(most > 1, "registrations ran one at a time");
    drop(c);
    let stats = daemon.stop().await;
    assert_eq!(stats.registrations, 21);
}

/// A reader with a tiny receive window: nearly every `sendfile` (or, with bodies copied into
/// the write batch, every `send`) of the daemon is short, and the daemon must then wait for
/// the socket's writable event. Every byte arrives, in order, with the RPC sent in between.
#[tokio::test]
async fn a_reader_with_a_tiny_receive_window_gets_every_byte() {
    for inline in [0, 4 << 20] {
        let daemon = Daemon::start(|c| c.inline_body_max_bytes = inline).await;
        let mut c = daemon.client().await;
        let dirs = ExecutorDirs::create(&daemon.root, "e1", 2, 64).unwrap();
        let parts: Vec<Vec<u8>> = [1_500_000, 0, 700_001, 3]
            .iter()
            .enumerate()
            .map(|(i, &len)| pseudo_random_bytes(i as u64 + 9, len))
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        dirs.write_map_output(0, 100, &refs).unwrap();
        c.register(APP, "1", dirs.as_strings(), 64).await.unwrap();

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut raw = socket.connect(daemon.addr).await.unwrap();
        let mut rbuf = BytesMut::new();
        let open = fetch("1", vec![100], vec![vec![0, 1, 2, 3]], false).to_bytes();
        send_frames(
            &mut raw,
            &[Frame::RpcRequest {
                request_id: 1,
                body: open,
            }],
        )
        .await;
        let handle = match within(read_frame(&mut raw, &mut rbuf)).await {
            Frame::RpcResponse { body, .. } => match Message::decode(&body).unwrap() {
                Message::StreamHandle {
                    stream_id,
                    num_chunks,
                } => (stream_id, num_chunks),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(handle.1, 4);
        let chunk = |i| chunk_requests(handle.0, [i]).remove(0);
        let dirs_rpc = Frame::RpcRequest {
            request_id: 2,
            body: Message::GetLocalDirsForExecutors {
                app_id: APP.into(),
                exec_ids: vec!["1".into()],
            }
            .to_bytes(),
        };
        send_frames(
            &mut raw,
            &[chunk(0), chunk(1), dirs_rpc, chunk(2), chunk(3)],
        )
        .await;
        // The RPC is read-only, so it may be answered ahead of chunk 1 once chunk 0's body
        // is out (`Connection::read_ahead`), but never after chunk 2, and the chunks keep
        // their order.
        let mut rpc_answered_before = None;
        for (i, part) in parts.iter().enumerate() {
            let mut frame = within(read_frame(&mut raw, &mut rbuf)).await;
            if let Frame::RpcResponse { request_id: 2, .. } = frame {
                assert!(rpc_answered_before.is_none(), "inline={inline}");
                rpc_answered_before = Some(i);
                frame = within(read_frame(&mut raw, &mut rbuf)).await;
            }
            match frame {
                Frame::ChunkFetchSuccess { id, body } => {
                    assert_eq!(id.chunk_index, i as i32, "inline={inline}");
                    assert!(body[..] == part[..], "chunk {i} bytes, inline={inline}");
                }
                other => panic!("chunk {i}, inline={inline}: {other:?}"),
            }
        }
        assert!(
            matches!(rpc_answered_before, Some(1 | 2)),
            "inline={inline}: RPC answered before chunk {rpc_answered_before:?}"
        );
        let stats = daemon.stop().await;
        assert_eq!(stats.chunks_served, 4, "inline={inline}");
    }
}

/// Spark's executors share one connection per shuffle service among all their tasks: a task
/// opening a stream must not wait for the bulk bodies another task's chunk requests queued.
/// A `FetchShuffleBlocks` sent after eight pipelined 1 MiB chunk requests is answered before
/// the last of them, the chunks still arrive whole and in order, and the new stream serves.
#[tokio::test]
async fn a_stream_open_is_answered_ahead_of_queued_bulk_chunks() {
    const PART: usize = 1 << 20;
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let dirs = ExecutorDirs::create(&daemon.root, "e1", 1, 4).unwrap();
    let parts: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random_bytes(i, PART)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    dirs.write_map_output(0, 100, &refs).unwrap();
    dirs.write_map_output(0, 101, &[&b"second stream"[..]])
        .unwrap();
    c.register(APP, "1", dirs.as_strings(), 4).await.unwrap();
    let first = c
        .open(&fetch("1", vec![100], vec![(0..8).collect()], false))
        .await
        .unwrap();
    let mut frames = chunk_requests(first.stream_id, 0..8);
    frames.push(Frame::RpcRequest {
        request_id: 9,
        body: fetch("1", vec![101], vec![vec![0]], false).to_bytes(),
    });
    send_batch(&mut c, &frames).await;
    let mut second = None;
    let mut chunks = 0;
    while chunks < parts.len() {
        match within(c.recv()).await.unwrap().0 {
            Frame::ChunkFetchSuccess { id, body } => {
                assert_eq!(id.chunk_index, chunks as i32);
                assert!(body[..] == parts[chunks][..], "chunk {chunks} bytes");
                chunks += 1;
            }
            Frame::RpcResponse {
                request_id: 9,
                body,
            } => {
                assert!(second.is_none());
                second = Some((chunks, Message::decode(&body).unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }
    let (after_chunks, handle) = second.expect("the open was answered");
    assert!(
        after_chunks < parts.len(),
        "StreamHandle only after all {after_chunks} queued chunks"
    );
    let Message::StreamHandle {
        stream_id,
        num_chunks: 1,
    } = handle
    else {
        panic!("{handle:?}")
    };
    c.send(&Frame::ChunkFetchRequest(StreamChunkId {
        stream_id,
        chunk_index: 0,
    }))
    .await
    .unwrap();
    match within(c.recv()).await.unwrap().0 {
        Frame::ChunkFetchSuccess { body, .. } => assert_eq!(&body[..], b"second stream"),
        other => panic!("{other:?}"),
    }
    let stats = daemon.stop().await;
    assert_eq!(stats.rpcs_read_ahead, 1);
    assert_eq!(stats.chunks_served, 9);
}

/// Only stream opens overtake chunk requests, and nothing overtakes a request that changes
/// state: a `RegisterExecutor` queued behind bulk chunks is answered after them, and an open
/// for that executor sent after it waits for it (and so finds the executor registered).
#[tokio::test]
async fn requests_that_change_state_keep_their_place_behind_queued_chunks() {
    const PART: usize = 1 << 20;
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let dirs = ExecutorDirs::create(&daemon.root, "e1", 1, 4).unwrap();
    let parts: Vec<Vec<u8>> = (0..6).map(|i| pseudo_random_bytes(i, PART)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    dirs.write_map_output(0, 100, &refs).unwrap();
    let late = ExecutorDirs::create(&daemon.root, "e2", 1, 4).unwrap();
    late.write_map_output(0, 200, &[&b"late executor"[..]])
        .unwrap();
    c.register(APP, "1", dirs.as_strings(), 4).await.unwrap();
    let first = c
        .open(&fetch("1", vec![100], vec![(0..6).collect()], false))
        .await
        .unwrap();
    let mut frames = chunk_requests(first.stream_id, 0..6);
    let register = Message::RegisterExecutor {
        app_id: APP.into(),
        exec_id: "2".into(),
        info: kshuffle::wire::ExecutorShuffleInfo {
            local_dirs: late.as_strings(),
            sub_dirs_per_local_dir: 4,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    };
    frames.insert(
        3,
        Frame::RpcRequest {
            request_id: 5,
            body: register.to_bytes(),
        },
    );
    frames.push(Frame::RpcRequest {
        request_id: 6,
        body: fetch("2", vec![200], vec![vec![0]], false).to_bytes(),
    });
    send_batch(&mut c, &frames).await;
    let mut order = Vec::new();
    let mut handle = None;
    while order.len() < frames.len() {
        match within(c.recv()).await.unwrap().0 {
            Frame::ChunkFetchSuccess { id, body } => {
                assert!(body[..] == parts[id.chunk_index as usize][..]);
                order.push(format!("chunk {}", id.chunk_index));
            }
            Frame::RpcResponse { request_id, body } => {
                if request_id == 6 {
                    handle = Some(Message::decode(&body).unwrap());
                }
                order.push(format!("rpc {request_id}"));
            }
            other => panic!("{other:?}"),
        }
    }
    let registered_at = order.iter().position(|o| o == "rpc 5").unwrap();
    let opened_at = order.iter().position(|o| o == "rpc 6").unwrap();
    assert_eq!(
        &order[..registered_at],
        ["chunk 0", "chunk 1", "chunk 2"],
        "{order:?}"
    );
    assert!(opened_at > registered_at, "{order:?}");
    let chunks: Vec<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|o| o.starts_with("chunk"))
        .collect();
    assert_eq!(
        chunks,
        [
            "chunk 0", "chunk 1", "chunk 2", "chunk 3", "chunk 4", "chunk 5"
        ]
    );
    assert!(
        matches!(handle, Some(Message::StreamHandle { num_chunks: 1, .. })),
        "{handle:?}"
    );
    drop(c);
    let stats = daemon.stop().await;
    assert_eq!(stats.registrations, 2);
}

/// The chunk requests an executor's tasks pipeline on their shared connection are served by
/// shares of `conn::SHARE_BYTES` (256 KiB) per stream, fewest shares first, each stream's
/// chunks in order: a stream whose requests arrive behind a bulk stream's is served once
/// the daemon looks ahead, not after all of it; and nothing overtakes a `StreamRequest` (its
/// reply is matched first-in first-out). Which request goes next is unit-tested in
/// `conn::tests`.
#[tokio::test]
async fn chunk_requests_of_several_streams_are_served_by_shares() {
    const MIB: usize = 1 << 20;
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let dirs = ExecutorDirs::create(&daemon.root, "e1", 1, 4).unwrap();
    // Map 100: eight 1 MiB partitions. Map 101: one 512 KiB partition, then 4 KiB ones.
    // Map 102: 4 KiB partitions. Map 103: one 1 MiB partition, read as a stream.
    let bulk: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random_bytes(i, MIB)).collect();
    let mut mixed = vec![pseudo_random_bytes(20, MIB / 2)];
    mixed.extend((0..128).map(|i| pseudo_random_bytes(100 + i, 4096)));
    let small: Vec<Vec<u8>> = (0..128)
        .map(|i| pseudo_random_bytes(300 + i, 4096))
        .collect();
    let streamed = pseudo_random_bytes(40, MIB);
    let bodies = [&bulk, &mixed, &small, &vec![streamed]];
    for (m, parts) in bodies.iter().enumerate() {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        dirs.write_map_output(0, 100 + m as i64, &refs).unwrap();
    }
    c.register(APP, "1", dirs.as_strings(), 4).await.unwrap();

    // Sends `frames` at once and returns the replies as "s<map>c<chunk>", each body checked.
    async fn replies(
        c: &mut Client,
        streams: &[(i64, usize)],
        bodies: &[&Vec<Vec<u8>>],
        frames: &[Frame],
    ) -> Vec<String> {
        send_batch(c, frames).await;
        let map_of = |stream_id| streams.iter().position(|&(s, _)| s == stream_id).unwrap();
        let mut order = Vec::new();
        while order.len() < frames.len() {
            let (id, body) = match within(c.recv()).await.unwrap() {
                (Frame::ChunkFetchSuccess { id, body }, _) => (id, body),
                (Frame::StreamResponse { stream_id, .. }, Some(body)) => (
                    StreamChunkId::parse_stream_request(&stream_id).unwrap(),
                    body,
                ),
                other => panic!("{other:?}"),
            };
            let m = map_of(id.stream_id);
            assert!(
                body[..] == bodies[m][id.chunk_index as usize][..],
                "bytes of stream {m} chunk {}",
                id.chunk_index
            );
            order.push(format!("s{m}c{}", id.chunk_index));
        }
        order
    }
    let mut streams = Vec::new();
    for (m, parts) in bodies.iter().enumerate() {
        let all = (0..parts.len() as i32).collect();
        let handle = c
            .open(&fetch("1", vec![100 + m as i64], vec![all], false))
            .await;
        streams.push((handle.unwrap().stream_id, parts.len()));
    }
    let chunks = |s: usize, indexes: std::ops::Range<i32>| chunk_requests(streams[s].0, indexes);
    let names = |s: usize, chunks: std::ops::Range<i32>| chunks.map(move |i| format!("s{s}c{i}"));

    // Bulk stream 0 (chunks 0-3), then a StreamRequest, then stream 2's first chunk and
    // stream 0's 4-7. After chunk 0 the daemon reads ahead; stream 0's chunks 1-3 still go
    // before the StreamRequest, and stream 2 only after it, though it has had nothing yet.
    let mut frames = chunks(0, 0..4);
    frames.push(Frame::StreamRequest {
        stream_id: format!("{}_0", streams[3].0),
    });
    frames.extend(chunks(2, 0..1));
    frames.extend(chunks(0, 4..8));
    let order = replies(&mut c, &streams, &bodies, &frames).await;
    let expected: Vec<String> = names(0, 0..4)
        .chain(names(3, 0..1))
        .chain(names(2, 0..1))
        .chain(names(0, 4..8))
        .collect();
    assert_eq!(order, expected);

    // Stream 1's 512 KiB chunk and its 4 KiB ones, then stream 2's. Once chunk 0 is out the
    // daemon reads ahead: stream 1 has 2 shares served, stream 2 none, so stream 2 goes
    // next, from its oldest request, and (still having fewer) to its end.
    let mut frames = chunks(1, 0..129);
    frames.extend(chunks(2, 1..128));
    let order = replies(&mut c, &streams, &bodies, &frames).await;
    let expected: Vec<String> = names(1, 0..2)
        .chain(names(2, 1..128))
        .chain(names(1, 2..129))
        .collect();
    assert_eq!(order, expected);
    drop(c);
    let stats = daemon.stop().await;
    assert_eq!(stats.chunk_failures, 0);
    assert_eq!(stats.chunks_out_of_turn, 127);
}

/// `ChunkFetchRequest`s for chunks `indexes` of stream `stream_id`.
fn chunk_requests(stream_id: i64, indexes: impl IntoIterator<Item = i32>) -> Vec<Frame> {
    indexes
        .into_iter()
        .map(|chunk_index| {
            Frame::ChunkFetchRequest(StreamChunkId {
                stream_id,
                chunk_index,
            })
        })
        .collect()
}

/// Sends `frames` in one write, as a client pipelining them does.
async fn send_batch(c: &mut Client, frames: &[Frame]) {
    let mut out = BytesMut::new();
    for frame in frames {
        kshuffle::wire::encode(frame, &mut out);
    }
    c.send_raw(&out).await.unwrap();
}

async fn send_frames(socket: &mut tokio::net::TcpStream, frames: &[Frame]) {
    use tokio::io::AsyncWriteExt;
    let mut out = BytesMut::new();
    for frame in frames {
        kshuffle::wire::encode(frame, &mut out);
    }
    socket.write_all(&out).await.unwrap();
}

/// Reads one frame 4 KiB at a time, letting the daemon's task run between reads.
async fn read_frame(socket: &mut tokio::net::TcpStream, buf: &mut BytesMut) -> Frame {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(frame) = kshuffle::wire::decode(buf, 16 << 20).unwrap() {
            return frame;
        }
        let mut piece = [0u8; 4096];
        let n = socket.read(&mut piece).await.unwrap();
        assert!(n > 0, "closed mid-frame");
        buf.extend_from_slice(&piece[..n]);
        tokio::task::yield_now().await;
    }
}

/// A data file cut short while its body is being sent: `sendfile` stops short at the new
/// end with room left in the socket buffer, so no writable event follows; the daemon tries
/// again within its short-write recheck, finds the end and closes the connection (the header
/// promised more) instead of stalling until the write timeout.
#[tokio::test]
async fn a_file_cut_short_mid_send_closes_the_connection_promptly() {
    // The cut lies beyond what the kernel can have queued when it happens (the socket's send
    // buffer, at most `tcp_wmem`'s 4 MiB by default, and a tiny receive window).
    const BODY: usize = 32 << 20;
    const CUT: usize = 24 << 20;
    let daemon = Daemon::start(|c| c.write_timeout = Duration::from_secs(600)).await;
    let mut c = daemon.client().await;
    let dirs = ExecutorDirs::create(&daemon.root, "e1", 1, 4).unwrap();
    let body = pseudo_random_bytes(3, BODY);
    dirs.write_map_output(0, 100, &[&body]).unwrap();
    c.register(APP, "1", dirs.as_strings(), 4).await.unwrap();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut raw = socket.connect(daemon.addr).await.unwrap();
    let mut rbuf = BytesMut::new();
    let open = fetch("1", vec![100], vec![vec![0]], false).to_bytes();
    send_frames(
        &mut raw,
        &[Frame::RpcRequest {
            request_id: 1,
            body: open,
        }],
    )
    .await;
    let stream_id = match within(read_frame(&mut raw, &mut rbuf)).await {
        Frame::RpcResponse { body, .. } => match Message::decode(&body).unwrap() {
            Message::StreamHandle { stream_id, .. } => stream_id,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let request = Frame::ChunkFetchRequest(StreamChunkId {
        stream_id,
        chunk_index: 0,
    });
    send_frames(&mut raw, &[request]).await;
    // The first bytes of the reply: the daemon is inside the body's `sendfile` loop, held by
    // the tiny receive window. Then the file loses its last 8 MiB.
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    while received.len() < 4096 {
        let mut piece = [0u8; 4096];
        let n = within(raw.read(&mut piece)).await.unwrap();
        assert!(n > 0, "closed before the body started");
        received.extend_from_slice(&piece[..n]);
    }
    let data = dirs
        .path(&kshuffle::store::BlockFile::ShuffleData {
            shuffle_id: 0,
            map_id: 100,
        })
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(CUT as u64)
        .unwrap();
    // Read to the end: the connection closes after the bytes the file still had.
    within(raw.read_to_end(&mut received)).await.unwrap();
    let header = 21;
    assert_eq!(received.len(), header + CUT, "bytes before the close");
    assert!(received[header..] == body[..CUT], "body prefix");
    let stats = daemon.stop().await;
    assert_eq!(stats.connection_errors, 1);
}

/// A connection yields its worker after every `TURN_BYTES` of bodies, however fast its client
/// reads (counted: a yield leaves no other trace), and the stream goes on unharmed.
#[tokio::test]
async fn a_connection_yields_its_worker_after_each_turn_of_body_bytes() {
    const PART: usize = 1 << 20;
    let daemon = Daemon::start(|_| {}).await;
    let mut c = daemon.client().await;
    let dirs = ExecutorDirs::create(&daemon.root, "e1", 1, 4).unwrap();
    let parts: Vec<Vec<u8>> = (0..10).map(|i| pseudo_random_bytes(i, PART)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    dirs.write_map_output(0, 100, &refs).unwrap();
    c.register(APP, "1", dirs.as_strings(), 4).await.unwrap();
    let handle = c
        .open(&fetch("1", vec![100], vec![(0..10).collect()], false))
        .await
        .unwrap();
    for (i, part) in parts.iter().enumerate() {
        let body = within(c.chunk(handle.stream_id, i as i32)).await.unwrap();
        assert!(body[..] == part[..], "chunk {i}");
    }
    let stats = daemon.stop().await;
    let sent = (parts.len() * PART) as u64;
    assert_eq!(stats.chunk_bytes, sent);
    assert_eq!(stats.turns_yielded, sent / kshuffle::conn::TURN_BYTES);
}
