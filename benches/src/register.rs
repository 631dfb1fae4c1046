//! Many-executor registration: `RegisterExecutor` for `count` executors of one app, in one
//! of two shapes. Pipelined: spread over `connections` connections with `inflight` RPCs
//! outstanding on each. One per connection: each executor connects, registers and
//! disconnects, `connections` of them at a time, as executors starting on a node do (a
//! Spark executor registers once, on its own connection). Every executor registers the same
//! local dirs (those of a real layout), so the service's path checks do real work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use kshuffle::wire::{self, ExecutorShuffleInfo, Frame, Message};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::load::Latency;

/// Outcome of a registration run.
#[derive(Debug, Clone, Default)]
pub struct RegisterReport {
    /// Executors registered.
    pub registered: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// RPC latency.
    pub latency: Latency,
}

impl RegisterReport {
    /// Registrations per second.
    pub fn per_sec(&self) -> f64 {
        self.registered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What to register.
#[derive(Debug, Clone)]
pub struct RegisterSpec {
    /// App id (executor ids are `0..count`).
    pub app_id: String,
    /// Executors.
    pub count: u64,
    /// Their local dirs.
    pub local_dirs: Vec<String>,
    /// Connections.
    pub connections: usize,
    /// RPCs outstanding per connection.
    pub inflight: usize,
    /// Each registration on a connection of its own (`connections` at a time; `inflight`
    /// unused).
    pub one_per_connection: bool,
    /// Longest wait for any reply.
    pub io_timeout: Duration,
}

/// Registers `spec.count` executors at `addr`.
///
/// # Errors
/// Any refusal or transport error.
pub fn run(addr: SocketAddr, spec: RegisterSpec) -> anyhow::Result<RegisterReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicU64::new(0));
    runtime.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..spec.connections.max(1))
            .map(|_| {
                let (spec, next) = (Arc::clone(&spec), Arc::clone(&next));
                if spec.one_per_connection {
                    tokio::spawn(one_per_connection(addr, spec, next))
                } else {
                    tokio::spawn(conn(addr, spec, next))
                }
            })
            .collect();
        let mut hist = crate::load::new_histogram();
        let mut registered = 0;
        for t in tasks {
            let (n, h) = t.await.context("registration task panicked")??;
            registered += n;
            hist.add(&h)?;
        }
        Ok(RegisterReport {
            registered,
            elapsed: start.elapsed(),
            latency: Latency::of(&hist),
        })
    })
}

/// The registration of executor `k`.
fn register_message(spec: &RegisterSpec, k: u64) -> bytes::Bytes {
    Message::RegisterExecutor {
        app_id: spec.app_id.clone(),
        exec_id: k.to_string(),
        info: ExecutorShuffleInfo {
            local_dirs: spec.local_dirs.clone(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    }
    .to_bytes()
}

/// The request id of a reply, or the service's refusal.
fn reply_id(frame: Frame) -> anyhow::Result<i64> {
    match frame {
        Frame::RpcResponse { request_id, .. } => Ok(request_id),
        Frame::RpcFailure { request_id, error } => bail!(
            "registration {request_id} refused: {}",
            error.lines().next().unwrap_or_default()
        ),
        other => bail!("unexpected reply {}", other.type_name()),
    }
}

/// Executors registering one per connection until `spec.count` are; latency from connect
/// to reply.
async fn one_per_connection(
    addr: SocketAddr,
    spec: Arc<RegisterSpec>,
    next: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hist = crate::load::new_histogram();
    let mut done = 0u64;
    let (mut rbuf, mut wbuf) = (BytesMut::with_capacity(4096), BytesMut::new());
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= spec.count {
            return Ok((done, hist));
        }
        let started = Instant::now();
        let request_id = k as i64 + 1;
        let body = register_message(&spec, k);
        wire::encode(&Frame::RpcRequest { request_id, body }, &mut wbuf);
        let registered = async {
            let mut socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            // Closed with a reset, not a FIN: thousands of short connections leave no
            // TIME_WAIT behind to use up loopback ports. A zero linger never blocks.
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO))?;
            socket.write_all(&wbuf).await?;
            loop {
                if let Some(frame) = wire::decode(&mut rbuf, 1 << 20)? {
                    return reply_id(frame);
                }
                if socket.read_buf(&mut rbuf).await? == 0 {
                    bail!("connection closed by the server");
                }
            }
        };
        let id = tokio::time::timeout(spec.io_timeout, registered)
            .await
            .context("registration made no progress")??;
        ensure!(id == request_id, "reply to request {id}, sent {request_id}");
        hist.record(crate::load::micros(started.elapsed()))?;
        done += 1;
        rbuf.clear();
        wbuf.clear();
    }
}

async fn conn(
    addr: SocketAddr,
    spec: Arc<RegisterSpec>,
    next: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut hist = crate::load::new_histogram();
    let mut outstanding: Vec<(i64, Instant)> = Vec::new();
    let (mut rbuf, mut wbuf) = (BytesMut::with_capacity(64 * 1024), BytesMut::new());
    let mut done = 0u64;
    let mut exhausted = false;
    loop {
        while !exhausted && outstanding.len() < spec.inflight.max(1) {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= spec.count {
                exhausted = true;
                break;
            }
            let body = register_message(&spec, k);
            let request_id = k as i64 + 1;
            wire::encode(&Frame::RpcRequest { request_id, body }, &mut wbuf);
            outstanding.push((request_id, Instant::now()));
        }
        if outstanding.is_empty() {
            return Ok((done, hist));
        }
        while !wbuf.is_empty() {
            match socket.try_write(&wbuf) {
                Ok(n) => wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let interest = if wbuf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = tokio::time::timeout(spec.io_timeout, socket.ready(interest))
            .await
            .context("registration made no progress")??;
        if !ready.is_readable() {
            continue;
        }
        rbuf.reserve(64 * 1024);
        match socket.try_read_buf(&mut rbuf) {
            Ok(0) => bail!("connection closed by the server"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        while let Some(frame) = wire::decode(&mut rbuf, 1 << 20)? {
            let id = reply_id(frame)?;
            let at = outstanding
                .iter()
                .position(|(r, _)| *r == id)
                .context("reply to an unknown registration")?;
            let (_, sent) = outstanding.swap_remove(at);
            hist.record(crate::load::micros(sent.elapsed()))?;
            done += 1;
        }
        ensure!(rbuf.len() < 1 << 20, "oversized reply");
    }
}
