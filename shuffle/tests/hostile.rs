//! Hostile clients over real sockets against the real `kshuffled` binary: slowloris
//! connections, floods of streams never fetched, huge declared lengths, thousands of
//! connections, streams read past their end, chunk indexes out of range, requests interleaved
//! on one connection.
//!
//! During every attack a well-behaved client fetches map outputs and checks every byte, and
//! the daemon's memory is read from `/proc/<pid>/status` (VmRSS, VmHWM) before and after:
//! each test asserts the growth stays under a stated bound (no timing assertions; waits are
//! bounded only as hang guards). Bad input must end in a failure reply or a closed
//! connection, logged once with the peer address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{Daemon, SparkDirs};
use kshuffle::client::{Client, Error as ClientError};
use kshuffle::fixture::{ExecutorDirs, pseudo_random_bytes};
use kshuffle::wire::{Frame, Message, StreamChunkId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "app-20261126000000-0001";
const MAPS: i64 = 8;
const PARTS: usize = 16;
/// Hang guard for one wait (never an assertion about speed).
const GUARD: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// A daemon with one registered executor whose map outputs the good client verifies.
struct Target {
    daemon: Daemon,
    outputs: Vec<Vec<Vec<u8>>>,
    _dirs: SparkDirs,
}

impl Target {
    async fn start(flags: &[&str]) -> Target {
        let dirs = SparkDirs::create("kshuffle-hostile-", false);
        let exec = ExecutorDirs::create(&dirs.local_dir, "good", 2, 16).unwrap();
        let mut outputs = Vec::new();
        for m in 0..MAPS {
            let parts: Vec<Vec<u8>> = (0..PARTS)
                .map(|r| pseudo_random_bytes((m * 100 + r as i64) as u64, 1000 + r * 997))
                .collect();
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            exec.write_map_output(0, m, &refs).unwrap();
            outputs.push(parts);
        }
        let mut args = Daemon::standard_args(&dirs.allowed);
        args.extend(flags.iter().map(OsString::from));
        let daemon = Daemon::start(args);
        let mut client = connect(daemon.addr()).await;
        client
            .register(APP, "1", exec.as_strings(), 16)
            .await
            .unwrap();
        let target = Target {
            daemon,
            outputs,
            _dirs: dirs,
        };
        target.good_client(&mut client).await;
        target
    }

    fn addr(&self) -> SocketAddr {
        self.daemon.addr()
    }

    /// Fetches every block of every map output and checks each byte; returns the bytes.
    async fn good_client(&self, client: &mut Client) -> u64 {
        // Reported, never asserted: how the well-behaved client fares during an attack.
        let started = std::time::Instant::now();
        let mut verified = 0u64;
        let reduce_ids: Vec<Vec<i32>> = (0..MAPS).map(|_| (0..PARTS as i32).collect()).collect();
        let handle = guard(client.open(&fetch((0..MAPS).collect(), reduce_ids, false)))
            .await
            .expect("the good client's fetch is answered");
        assert_eq!(handle.num_chunks as usize, MAPS as usize * PARTS);
        for i in 0..handle.num_chunks {
            let (m, r) = (i as usize / PARTS, i as usize % PARTS);
            let body = guard(client.chunk(handle.stream_id, i)).await.unwrap();
            assert_eq!(&body[..], &self.outputs[m][r][..], "map {m} reduce {r}");
            verified += body.len() as u64;
        }
        eprintln!(
            "good client: {} blocks, {} KiB verified in {:.1} ms",
            handle.num_chunks,
            verified / 1024,
            started.elapsed().as_secs_f64() * 1000.0
        );
        verified
    }

    /// A fresh good client's full round (connect, fetch, verify).
    async fn good_round(&self) -> u64 {
        let mut client = connect(self.addr()).await;
        self.good_client(&mut client).await
    }

    /// (VmRSS, VmHWM) of the daemon, in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon.pid()))
            .expect("the daemon's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Log lines of WARN events about `peer` whose message is `message`, once there is at
    /// least one (the log is read on another thread: it may lag the socket's close).
    async fn warnings_about(&self, peer: SocketAddr, message: &str) -> Vec<String> {
        warnings_about(&self.daemon, peer, message).await
    }
}

/// [`Target::warnings_about`] for any daemon; gives up (returning none) after [`GUARD`].
async fn warnings_about(daemon: &Daemon, peer: SocketAddr, message: &str) -> Vec<String> {
    let quoted = format!("\"{peer}\"");
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let found: Vec<String> = daemon
            .warnings()
            .into_iter()
            .filter(|e| e.message == message && e.raw.contains(&quoted))
            .map(|e| e.raw)
            .collect();
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Memory before and after an attack; asserts the growth is under `bound` bytes.
struct Meter {
    before: (u64, u64),
}

impl Meter {
    fn start(target: &Target) -> Meter {
        Meter {
            before: target.memory(),
        }
    }

    fn check(&self, target: &Target, what: &str, bound: u64) {
        let after = target.memory();
        let growth = after.1.saturating_sub(self.before.0);
        eprintln!(
            "{what}: VmRSS {} -> {} MiB, VmHWM {} -> {} MiB (peak growth {:.1} MiB, bound {} MiB)",
            self.before.0 / MIB,
            after.0 / MIB,
            self.before.1 / MIB,
            after.1 / MIB,
            growth as f64 / MIB as f64,
            bound / MIB
        );
        assert!(
            growth <= bound,
            "{what}: the daemon's peak memory grew by {growth} bytes (bound {bound})"
        );
    }
}

async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("hang guard: no answer within 30 s")
}

async fn connect(addr: SocketAddr) -> Client {
    guard(Client::connect(addr)).await.unwrap()
}

fn fetch(map_ids: Vec<i64>, reduce_ids: Vec<Vec<i32>>, batch: bool) -> Message {
    Message::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        shuffle_id: 0,
        map_ids,
        reduce_ids,
        batch_fetch_enabled: batch,
    }
}

fn frame_bytes(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    kshuffle::wire::encode(frame, &mut buf);
    buf
}

/// Waits (bounded) until the daemon closes `socket`; returns what it sent first.
async fn closed_by_daemon(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match guard(socket.read(&mut buf)).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris: connections that stall mid-frame, and connections that trickle a frame (and an
/// auth handshake) one byte at a time so the idle timeout never fires, are closed after the
/// frame timeout; the good client is served meanwhile; each close is logged once with the
/// peer address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_others_served() {
    let target = Target::start(&["--idle-timeout", "2s", "--frame-timeout", "3s"]).await;
    let meter = Meter::start(&target);
    let request = frame_bytes(&Frame::RpcRequest {
        request_id: 7,
        body: fetch(vec![0], vec![vec![0]], false).to_bytes(),
    });

    // 100 that stall after half a frame, 20 that trickle a byte every 250 ms.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(target.addr()).await.unwrap();
        s.write_all(&request[..request.len() / 2]).await.unwrap();
        stalled.push(s);
    }
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        let s = TcpStream::connect(target.addr()).await.unwrap();
        let peer = s.local_addr().unwrap();
        let bytes = request.clone();
        tricklers.push((
            peer,
            tokio::spawn(async move {
                let mut s = s;
                for b in bytes.iter() {
                    if s.write_all(&[*b]).await.is_err() {
                        return true; // closed by the daemon
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                false // the whole frame went through: not closed in time
            }),
        ));
    }
    // Meanwhile the good client keeps fetching and verifying.
    let mut verified = 0;
    for _ in 0..3 {
        verified += target.good_round().await;
    }
    assert!(verified > 0);

    for s in &mut stalled {
        let got = closed_by_daemon(s).await;
        assert!(got.is_empty(), "a stalled connection got a reply: {got:?}");
    }
    for (peer, task) in tricklers {
        assert!(
            guard(task).await.unwrap(),
            "a trickling connection ({peer}) was never closed"
        );
        let logged = target.warnings_about(peer, "closing connection").await;
        assert_eq!(logged.len(), 1, "{peer} logged {logged:?}");
        assert!(logged[0].contains("frame_timeout"), "{}", logged[0]);
    }
    let peer = stalled[0].local_addr().unwrap();
    let logged = target.warnings_about(peer, "closing connection").await;
    assert_eq!(logged.len(), 1, "{peer} logged {logged:?}");
    assert!(
        logged[0].contains("idle_timeout") || logged[0].contains("frame_timeout"),
        "{}",
        logged[0]
    );
    target.good_round().await;
    meter.check(&target, "slowloris (120 connections)", 64 * MIB);
}

/// The handshake trickled byte by byte to a daemon with `spark.authenticate` on is cut off
/// by the frame timeout too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_auth_handshake_is_closed() {
    let dirs = SparkDirs::create("kshuffle-hostile-auth-", false);
    let secret = dirs.base.join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let mut args = Daemon::standard_args(&dirs.allowed);
    args.extend(
        [
            "--frame-timeout",
            "2s",
            "--idle-timeout",
            "10s",
            "--auth-secret-file",
        ]
        .iter()
        .map(OsString::from),
    );
    args.push(secret.into_os_string());
    let daemon = Daemon::start(args);
    let (_client, first) =
        kshuffle::auth::SaslClient::start(APP, &kshuffle::auth::Secret::from("s3cret"));
    let request = frame_bytes(&Frame::RpcRequest {
        request_id: 1,
        body: Bytes::from(first),
    });
    let mut s = TcpStream::connect(daemon.addr()).await.unwrap();
    let peer = s.local_addr().unwrap();
    let mut closed = false;
    for b in request.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !closed {
        // Everything went out before the timeout fired (only on a very slow machine):
        // the daemon must then have answered the first SASL step.
        let got = closed_by_daemon(&mut s).await;
        assert!(!got.is_empty(), "no answer and no close");
        return;
    }
    closed_by_daemon(&mut s).await;
    let logged = warnings_about(&daemon, peer, "closing connection").await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("frame_timeout"), "{}", logged[0]);
}

/// A flood of streams never fetched: each connection gets exactly its cap, then a clear
/// failure; memory stays bounded; the good client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_flood_hits_the_per_connection_cap() {
    const CAP: usize = 64;
    let target = Target::start(&["--max-streams-per-connection", "64"]).await;
    let meter = Meter::start(&target);
    // Each request names every block of every map: 128 chunks per stream.
    let reduce_ids: Vec<Vec<i32>> = (0..MAPS).map(|_| (0..PARTS as i32).collect()).collect();
    let old = Message::OpenBlocks {
        app_id: APP.into(),
        exec_id: "1".into(),
        block_ids: (0..MAPS)
            .flat_map(|m| (0..PARTS).map(move |r| format!("shuffle_0_{m}_{r}")))
            .collect(),
    };
    let mut tasks = Vec::new();
    for c in 0..40 {
        let addr = target.addr();
        let message = if c % 2 == 0 {
            fetch((0..MAPS).collect(), reduce_ids.clone(), false)
        } else {
            old.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            let mut opened = 0;
            for _ in 0..CAP + 10 {
                match guard(client.open(&message)).await {
                    Ok(_) => opened += 1,
                    Err(ClientError::Failure(msg)) => {
                        assert!(msg.contains("Too many open streams"), "{msg}");
                        // The connection stays usable after the refusal.
                        continue;
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (opened, client)
        }));
    }
    let verified = target.good_round().await;
    assert!(verified > 0);
    let mut clients = Vec::new();
    for t in tasks {
        let (opened, client) = guard(t).await.unwrap();
        assert_eq!(opened, CAP, "streams opened on one connection");
        clients.push(client);
    }
    target.good_round().await;
    // 40 connections × 64 streams × 128 chunks, all held.
    meter.check(&target, "stream flood (2,560 streams)", 64 * MIB);
    drop(clients);
}

/// Huge and nonsensical declared lengths close the connection before anything is allocated
/// for them; nothing is answered; the good client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths_close_the_connection() {
    let target = Target::start(&["--max-frame-bytes", "1048576"]).await;
    let meter = Meter::start(&target);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, len) in [
        ("i64::MAX frame", i64::MAX),
        ("4 GiB frame", 1i64 << 32),
        ("frame over the limit", 1_048_577),
        ("negative frame", -5),
        ("frame shorter than its header", 3),
    ] {
        let mut b = BytesMut::new();
        b.put_i64(len);
        b.put_u8(3);
        b.put_i64(1);
        b.put_i32(i32::MAX);
        cases.push((name, b.to_vec()));
    }
    // An RpcRequest whose message declares a 2 GiB string inside a small frame.
    let mut body = BytesMut::new();
    body.put_u8(0); // OpenBlocks
    body.put_i32(i32::MAX);
    body.put_slice(b"app");
    let mut b = BytesMut::new();
    kshuffle::wire::encode(
        &Frame::RpcRequest {
            request_id: 9,
            body: body.freeze(),
        },
        &mut b,
    );
    let rpc_case = b.to_vec();
    for round in 0..20 {
        for (name, bytes) in &cases {
            let mut s = TcpStream::connect(target.addr()).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let got = closed_by_daemon(&mut s).await;
            assert!(got.is_empty(), "{name}: got a reply {got:?}");
            if round == 0 {
                let peer = s.local_addr().unwrap();
                let logged = target.warnings_about(peer, "closing connection").await;
                assert_eq!(logged.len(), 1, "{name} ({peer}): {logged:?}");
            }
        }
        // The bad message is answered with a failure and the connection goes on.
        let mut c = connect(target.addr()).await;
        c.send_raw(&rpc_case).await.unwrap();
        match guard(c.recv()).await.unwrap().0 {
            Frame::RpcFailure { request_id, error } => {
                assert_eq!(request_id, 9);
                assert!(!error.is_empty());
            }
            other => panic!("{other:?}"),
        }
        target.good_client(&mut c).await;
    }
    meter.check(&target, "huge declared lengths (120 connections)", 32 * MIB);
}

/// 2,000 connections against a cap of 1,000: the excess is accepted and closed at once (and
/// logged with its peer); the connections within the cap stay open and the good client, which
/// connected first, keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_capped() {
    const CAP: usize = 1000;
    const TOTAL: usize = 2000;
    // This process holds every client socket: it needs the same open-files headroom the
    // daemon gives itself (the usual soft limit is 1024).
    let limits = kshuffle::daemon::limits::raise_open_files_limit().unwrap();
    assert!(
        limits.now.is_none_or(|n| n >= TOTAL as u64 + 256),
        "this test needs an open-files hard limit of at least {} (ulimit -Hn), found {limits:?}",
        TOTAL + 256
    );
    let target = Target::start(&["--max-connections", "1000"]).await;
    // The daemon raised its open-files limit (soft to hard) at start, and said so.
    assert!(
        target
            .daemon
            .events()
            .iter()
            .any(|e| e.message == "open-files limit raised to the hard limit"),
        "no open-files limit event"
    );
    let mut good = connect(target.addr()).await;
    target.good_client(&mut good).await;
    let meter = Meter::start(&target);
    let mut sockets = Vec::with_capacity(TOTAL);
    for _ in 0..TOTAL {
        sockets.push(guard(TcpStream::connect(target.addr())).await.unwrap());
    }
    // Those over the cap are closed by the daemon without a byte; the rest stay open. A
    // write then read tells them apart: a kept connection answers a ping-sized request.
    let probe = frame_bytes(&Frame::RpcRequest {
        request_id: 1,
        body: Message::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["1".into()],
        }
        .to_bytes(),
    });
    let mut kept = 0;
    let mut refused = Vec::new();
    for s in &mut sockets {
        let _ = s.write_all(&probe).await;
        let mut len = [0u8; 8];
        match guard(s.read_exact(&mut len)).await {
            Ok(_) => kept += 1,
            Err(_) => refused.push(s.local_addr().unwrap()),
        }
    }
    assert_eq!(kept, CAP - 1, "connections served besides the good client");
    assert_eq!(refused.len(), TOTAL - CAP + 1);
    target.good_client(&mut good).await;
    let logged = target
        .warnings_about(
            refused[0],
            "connection limit reached; closing new connection",
        )
        .await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    meter.check(&target, "2,000 connections", 128 * MIB);
    drop(sockets);
    // Once they are gone, new clients are served again.
    target.good_round().await;
}

/// Streams past their end, chunk indexes out of range or out of order, unknown streams and
/// malformed stream names get failure replies and the connection goes on; requests
/// pipelined on one connection are all answered, each stream's in order, with the right
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_requests_fail_cleanly_and_pipelined_requests_are_all_answered() {
    let target = Target::start(&[]).await;
    let meter = Meter::start(&target);
    let mut c = connect(target.addr()).await;
    let h = c
        .open(&fetch(vec![3], vec![vec![1, 2]], false))
        .await
        .unwrap();
    let err = |r: Result<Bytes, ClientError>| match r {
        Err(ClientError::Failure(m)) => m,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert!(!err(c.chunk(h.stream_id, 5).await).is_empty());
    // The stream is gone after a refused request (as Spark's own service drops it).
    let h = c
        .open(&fetch(vec![3], vec![vec![1, 2]], false))
        .await
        .unwrap();
    assert_eq!(
        &c.chunk(h.stream_id, 0).await.unwrap()[..],
        &target.outputs[3][1][..]
    );
    assert_eq!(
        &c.chunk(h.stream_id, 1).await.unwrap()[..],
        &target.outputs[3][2][..]
    );
    assert!(
        !err(c.chunk(h.stream_id, 2).await).is_empty(),
        "past the end"
    );
    assert!(!err(c.chunk(h.stream_id, -1).await).is_empty());
    assert!(!err(c.chunk(h.stream_id, i32::MAX).await).is_empty());
    assert!(!err(c.chunk(12345, 0).await).is_empty(), "unknown stream");
    assert!(!err(c.stream(h.stream_id, 7).await).is_empty());
    for name in ["", "x_1", "1_", "_", "99999999999999999999_0", "1_-1"] {
        c.send(&Frame::StreamRequest {
            stream_id: name.into(),
        })
        .await
        .unwrap();
        match guard(c.recv()).await.unwrap().0 {
            Frame::StreamFailure { stream_id, error } => {
                assert_eq!(stream_id, name);
                assert!(!error.is_empty());
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }

    // Pipelined: three opens, then every chunk of the three streams interleaved, all sent
    // before reading anything.
    let mut batch = BytesMut::new();
    for (i, m) in [0i64, 5, 7].iter().enumerate() {
        kshuffle::wire::encode(
            &Frame::RpcRequest {
                request_id: 100 + i as i64,
                body: fetch(vec![*m], vec![(0..PARTS as i32).collect()], false).to_bytes(),
            },
            &mut batch,
        );
    }
    c.send_raw(&batch).await.unwrap();
    let mut streams = Vec::new();
    for i in 0..3 {
        match guard(c.recv()).await.unwrap().0 {
            Frame::RpcResponse { request_id, body } => {
                assert_eq!(request_id, 100 + i);
                match Message::decode(&body).unwrap() {
                    Message::StreamHandle { stream_id, .. } => streams.push(stream_id),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let mut batch = BytesMut::new();
    for r in 0..PARTS as i32 {
        for s in &streams {
            kshuffle::wire::encode(
                &Frame::ChunkFetchRequest(StreamChunkId {
                    stream_id: *s,
                    chunk_index: r,
                }),
                &mut batch,
            );
        }
    }
    c.send_raw(&batch).await.unwrap();
    // Streams may take turns out of arrival order (by shares of bytes, `conn::pick_ahead`);
    // each stream's chunks come in order.
    let maps = [0usize, 5, 7];
    let mut next = [0usize; 3];
    for _ in 0..PARTS * maps.len() {
        match guard(c.recv()).await.unwrap().0 {
            Frame::ChunkFetchSuccess { id, body } => {
                let k = streams.iter().position(|s| *s == id.stream_id).unwrap();
                assert_eq!(id.chunk_index as usize, next[k], "stream {k}");
                assert_eq!(&body[..], &target.outputs[maps[k]][next[k]][..]);
                next[k] += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    target.good_client(&mut c).await;
    meter.check(&target, "bad chunk requests", 32 * MIB);
}

/// Many connections each holding a large partial frame: the bytes held in read buffers are
/// bounded by the daemon's global read-buffer budget; connections over it are closed with a
/// clear error, and the good client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_buffers_are_bounded_by_the_global_budget() {
    const BUDGET: u64 = 32 * MIB;
    let target = Target::start(&[
        "--max-frame-bytes",
        "8388608",
        "--read-buffer-budget-bytes",
        "33554432",
    ])
    .await;
    let meter = Meter::start(&target);
    // 48 connections each declare a 8 MiB frame and send 4 MiB of it: 192 MiB if unbounded.
    let mut header = BytesMut::new();
    header.put_i64(8 * MIB as i64);
    header.put_u8(3);
    header.put_i64(1);
    header.put_i32((8 * MIB) as i32 - 21);
    let payload = vec![0u8; 4 * MIB as usize];
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let addr = target.addr();
        let header = header.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let peer = s.local_addr().unwrap();
            let sent = s.write_all(&header).await.is_ok() && s.write_all(&payload).await.is_ok();
            (peer, sent, s)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(guard(t).await.unwrap());
    }
    target.good_round().await;
    meter.check(&target, "48 partial 8 MiB frames", BUDGET + 48 * MIB);
    // At least one was closed for want of budget, logged with its peer address.
    let peers: Vec<String> = held.iter().map(|(p, _, _)| format!("\"{p}\"")).collect();
    let deadline = tokio::time::Instant::now() + GUARD;
    let refused = loop {
        let refused: Vec<String> = target
            .daemon
            .warnings()
            .into_iter()
            .filter(|e| e.message == "closing connection" && e.raw.contains("read_budget"))
            .filter(|e| peers.iter().any(|p| e.raw.contains(p)))
            .map(|e| e.raw)
            .collect();
        if !refused.is_empty() || tokio::time::Instant::now() >= deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !refused.is_empty(),
        "no connection was refused by the read-buffer budget"
    );
    drop(held);
    target.good_round().await;
}

/// Streams opened with large requests and never fetched: the bytes they keep come from the
/// daemon-wide stream budget, requests beyond it get a clear failure, and the good client
/// (whose fetches fit each connection's free allowance) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_state_is_bounded_by_the_global_budget() {
    const BUDGET: u64 = 32 * MIB;
    let target = Target::start(&[
        "--max-frame-bytes",
        "2097152",
        "--stream-budget-bytes",
        "33554432",
    ])
    .await;
    let meter = Meter::start(&target);
    // 6 connections × 24 streams of 250,000 reduce ids (1 MB each): 144 MB if unbounded.
    let big = fetch(vec![0], vec![vec![0; 250_000]], false);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let addr = target.addr();
        let big = big.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            let (mut opened, mut refused) = (0, Vec::new());
            for _ in 0..24 {
                match guard(client.open(&big)).await {
                    Ok(_) => opened += 1,
                    Err(ClientError::Failure(msg)) => refused.push(msg),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (opened, refused, client)
        }));
    }
    let mut held = Vec::new();
    let mut opened_total = 0;
    let mut refusals = Vec::new();
    for t in tasks {
        let (opened, refused, client) = guard(t).await.unwrap();
        opened_total += opened;
        refusals.extend(refused);
        held.push(client);
    }
    // The good client is served while the budget is spent.
    target.good_round().await;
    assert!(
        opened_total < 6 * 24 && !refusals.is_empty(),
        "no stream was refused ({opened_total} opened)"
    );
    assert!(
        refusals.iter().all(|m| m.contains("too many open streams")),
        "{refusals:?}"
    );
    meter.check(&target, "144 streams of 1 MB requests", BUDGET + 48 * MIB);
    // Connections that go away give their budget back: new large fetches work again.
    drop(held);
    let mut c = connect(target.addr()).await;
    let mut reopened = 0;
    for _ in 0..40 {
        // The daemon may still be closing the old connections: a refusal is retried.
        if guard(c.open(&big)).await.is_ok() {
            reopened += 1;
            if reopened == 2 {
                break;
            }
        }
    }
    assert_eq!(reopened, 2, "the budget was not given back");
}

/// A client that pipelines a large fetch and the start of its next request, then reads slowly:
/// the time the daemon spends writing to it does not count against the frame behind, so it is
/// not cut off by the frame timeout (only a peer slow to *send* is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_with_a_pipelined_partial_frame_is_not_cut_off() {
    let target = Target::start(&["--frame-timeout", "2s"]).await;
    let exec = ExecutorDirs::create(&target._dirs.local_dir, "big", 1, 4).unwrap();
    let block = pseudo_random_bytes(7, 32 * MIB as usize);
    exec.write_map_output(0, 0, &[&block]).unwrap();
    let mut c = connect(target.addr()).await;
    c.register(APP, "2", exec.as_strings(), 4).await.unwrap();
    let open = Message::FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "2".into(),
        shuffle_id: 0,
        map_ids: vec![0],
        reduce_ids: vec![vec![0]],
        batch_fetch_enabled: false,
    };
    let handle = c.open(&open).await.unwrap();
    // The chunk request, then half of the next request, then nothing read for 3 s: the
    // daemon's write of the 32 MiB body blocks on the full socket buffers meanwhile.
    let mut batch = frame_bytes(&Frame::ChunkFetchRequest(StreamChunkId {
        stream_id: handle.stream_id,
        chunk_index: 0,
    }));
    let next = frame_bytes(&Frame::RpcRequest {
        request_id: 77,
        body: Message::GetLocalDirsForExecutors {
            app_id: APP.into(),
            exec_ids: vec!["2".into()],
        }
        .to_bytes(),
    });
    let half = next.len() / 2;
    batch.extend_from_slice(&next[..half]);
    c.send_raw(&batch).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    match guard(c.recv()).await.unwrap().0 {
        Frame::ChunkFetchSuccess { body, .. } => assert!(body[..] == block[..], "chunk bytes"),
        other => panic!("{other:?}"),
    }
    c.send_raw(&next[half..]).await.unwrap();
    match guard(c.recv()).await.unwrap().0 {
        Frame::RpcResponse { request_id, .. } => assert_eq!(request_id, 77),
        other => panic!("the pipelined request was not answered: {other:?}"),
    }
}
