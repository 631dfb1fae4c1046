//! The load generator: fetches the blocks of a [`Layout`] from a shuffle service the way
//! Spark's `OneForOneBlockFetcher` does, verifying every byte.
//!
//! Each fetch is one `FetchShuffleBlocks` RPC for a rectangle of the layout (a few maps × a
//! few reduce partitions), answered by a `StreamHandle`, after which every
//! `ChunkFetchRequest` of the stream is sent at once (pipelined). A connection keeps
//! `inflight` fetches going; `connections` connections run on one client runtime. With
//! `batch`, a chunk is one contiguous range of partitions per map (Spark's batch fetch).
//!
//! A connection behaves as Netty's event loop does for Spark's client: requests made while
//! replies are read (a stream's chunk requests, the next fetch when one completes) are
//! written between reads, not when the socket has been drained, and a connection reads at
//! most [`READS_PER_TURN`] times before the other connections on its thread run. (Until
//! this was so, a connection to a server faster than it drained its socket to the end
//! first: its pipeline emptied before each new fetch, which cost throughput and measured
//! the first byte of new fetches on an empty pipe.)
//!
//! Chunk bodies are verified as they arrive and never buffered whole, so the client stays
//! small and cheap next to the server it measures. Any failure frame, unexpected frame or
//! wrong byte ends the run with an error: a benchmark that served wrong data has no figure.
//!
//! Latencies (microseconds, HDR histograms): *open to first byte* is from writing the
//! `FetchShuffleBlocks` to the arrival of the first chunk's header; *chunk* is from writing
//! a chunk's `ChunkFetchRequest` to the arrival of its last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use kshuffle::wire::{self, Frame, Message, StreamChunkId};
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};

use crate::layout::{Layout, RangeVerifier, map_id};

/// Bytes read from the socket at a time: large, so a 4 MiB body takes ~4 `recvfrom`s
/// instead of ~16 (the client shares the cores with the server it measures). The buffer is
/// allocated once per connection; bodies are verified in place in it and never copied.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Reads a connection makes in one turn before the other connections on its thread run, as
/// Netty's event loop reads a channel at most 16 times per turn (`maxMessagesPerRead`).
const READS_PER_TURN: usize = 16;

/// Largest non-chunk reply frame accepted.
const MAX_REPLY_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Frame type of `ChunkFetchSuccess` and its header length (8 length + 1 type + 12 id).
const CHUNK_SUCCESS_TYPE: u8 = 1;
const CHUNK_SUCCESS_HEADER_BYTES: usize = 21;

/// What to fetch and how.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Client connections.
    pub connections: usize,
    /// Fetch requests in flight per connection.
    pub inflight: usize,
    /// Maps per fetch request.
    pub maps_per_request: u32,
    /// Reduce partitions per fetch request.
    pub reduces_per_request: u32,
    /// Batch fetch: one chunk per map covering all its partitions of the request.
    pub batch: bool,
    /// Stop starting fetches after this long.
    pub duration: Duration,
    /// Stop starting fetches after this many (in total), if set.
    pub max_requests: Option<u64>,
    /// The registered app id.
    pub app_id: String,
    /// The registered executor id.
    pub exec_id: String,
    /// Client threads (1 = a current-thread runtime).
    pub client_threads: usize,
    /// Longest wait for any progress on a connection.
    pub io_timeout: Duration,
    /// `SO_RCVBUF` of each connection, set before it connects (Spark's
    /// `spark.shuffle.io.receiveBuffer`); `None` leaves the kernel's autotuning, as Spark
    /// does by default.
    pub receive_buffer: Option<u32>,
    /// Speak TLS with this client config (the service serves TLS: `compare --tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl LoadSpec {
    /// A spec with defaults for everything but the shape of the requests.
    pub fn new(maps_per_request: u32, reduces_per_request: u32, batch: bool) -> Self {
        Self {
            connections: 1,
            inflight: 8,
            maps_per_request,
            reduces_per_request,
            batch,
            duration: Duration::from_secs(5),
            max_requests: None,
            app_id: "app-bench".into(),
            exec_id: "0".into(),
            client_threads: 1,
            io_timeout: Duration::from_secs(60),
            receive_buffer: None,
            tls: None,
        }
    }
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// What one run achieved.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Fetch requests completed.
    pub requests: u64,
    /// Chunks received.
    pub chunks: u64,
    /// Blocks received (a batch chunk holds several).
    pub blocks: u64,
    /// Body bytes received and verified.
    pub bytes: u64,
    /// Wall time from the first connect to the last reply.
    pub elapsed: Duration,
    /// Open (FetchShuffleBlocks written) to first chunk header.
    pub open_to_first_byte: Latency,
    /// ChunkFetchRequest written to last byte of its reply.
    pub chunk: Latency,
}

impl Report {
    /// Blocks per second.
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// MiB per second of verified block bytes.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The request grid: request `k` covers map group `k % map_groups` and reduce group
/// `(k / map_groups) % reduce_groups` (all maps of a reduce range first, as a reducer does).
#[derive(Debug)]
struct Plan {
    layout: Arc<Layout>,
    spec: LoadSpec,
    map_groups: u64,
    reduce_groups: u64,
    next: AtomicU64,
    deadline: Instant,
}

/// One fetch request's rectangle.
#[derive(Debug, Clone, Copy)]
struct Rect {
    m0: u32,
    m1: u32,
    r0: u32,
    r1: u32,
}

impl Plan {
    fn take(&self) -> Option<Rect> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if self.spec.max_requests.is_some_and(|max| k >= max) {
            return None;
        }
        let ls = &self.layout.spec;
        let mg = (k % self.map_groups) as u32;
        let rg = ((k / self.map_groups) % self.reduce_groups) as u32;
        let m0 = mg * self.spec.maps_per_request;
        let r0 = rg * self.spec.reduces_per_request;
        Some(Rect {
            m0,
            m1: (m0 + self.spec.maps_per_request).min(ls.maps),
            r0,
            r1: (r0 + self.spec.reduces_per_request).min(ls.reducers),
        })
    }

    fn chunks(&self, rect: Rect) -> u32 {
        let maps = rect.m1 - rect.m0;
        if self.spec.batch {
            maps
        } else {
            maps * (rect.r1 - rect.r0)
        }
    }

    /// Chunk `i` of `rect`: (map index, first partition, end partition).
    fn chunk(&self, rect: Rect, i: u32) -> (u32, u32, u32) {
        if self.spec.batch {
            (rect.m0 + i, rect.r0, rect.r1)
        } else {
            let per_map = rect.r1 - rect.r0;
            let r = rect.r0 + i % per_map;
            (rect.m0 + i / per_map, r, r + 1)
        }
    }

    fn request(&self, rect: Rect) -> Message {
        let map_ids = (rect.m0..rect.m1).map(map_id).collect::<Vec<_>>();
        let reduces: Vec<i32> = if self.spec.batch {
            vec![rect.r0 as i32, rect.r1 as i32]
        } else {
            (rect.r0..rect.r1).map(|r| r as i32).collect()
        };
        Message::FetchShuffleBlocks {
            app_id: self.spec.app_id.clone(),
            exec_id: self.spec.exec_id.clone(),
            shuffle_id: self.layout.spec.shuffle_id,
            reduce_ids: vec![reduces; map_ids.len()],
            map_ids,
            batch_fetch_enabled: self.spec.batch,
        }
    }
}

/// Runs `spec` against the service at `addr` serving `layout` (already registered as
/// `spec.app_id`/`spec.exec_id`), on a runtime of its own.
///
/// # Errors
/// Connection failures, timeouts, failure replies and any byte that does not verify.
pub fn run(addr: SocketAddr, layout: Arc<Layout>, spec: LoadSpec) -> anyhow::Result<Report> {
    ensure!(
        spec.connections > 0 && spec.inflight > 0,
        "connections and inflight must be positive"
    );
    ensure!(
        spec.maps_per_request > 0 && spec.reduces_per_request > 0,
        "a request needs at least one map and one partition"
    );
    let runtime = if spec.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.client_threads)
            .enable_all()
            .build()?
    };
    let ls = layout.spec;
    let plan = Arc::new(Plan {
        map_groups: u64::from(ls.maps.div_ceil(spec.maps_per_request)),
        reduce_groups: u64::from(ls.reducers.div_ceil(spec.reduces_per_request)),
        next: AtomicU64::new(0),
        deadline: Instant::now() + spec.duration,
        layout,
        spec,
    });
    runtime.block_on(async move {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..plan.spec.connections {
            let plan = Arc::clone(&plan);
            tasks.push(tokio::spawn(async move { Conn::run(addr, plan).await }));
        }
        let mut report = Report::default();
        let mut first = new_histogram();
        let mut chunk = new_histogram();
        for task in tasks {
            let c = task.await.context("connection task panicked")??;
            report.requests += c.requests;
            report.chunks += c.chunks;
            report.blocks += c.blocks;
            report.bytes += c.bytes;
            first.add(&c.first)?;
            chunk.add(&c.chunk)?;
        }
        report.elapsed = start.elapsed();
        report.open_to_first_byte = Latency::of(&first);
        report.chunk = Latency::of(&chunk);
        Ok(report)
    })
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits; the bounds are constants that are valid.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 600_000_000)
}

/// A fetch in progress.
#[derive(Debug)]
struct Fetch {
    request_id: i64,
    rect: Rect,
    stream_id: Option<i64>,
    num_chunks: u32,
    next_chunk: u32,
    opened_at: Instant,
    chunks_sent_at: Instant,
}

/// One connection's TLS session and its record buffers.
struct Tls {
    session: rustls::ClientConnection,
    records_in: BytesMut,
    records_out: BytesMut,
}

/// Receive state: between frames, or inside a chunk body.
#[derive(Debug)]
enum Rx {
    Header,
    Body {
        fetch: usize,
        remaining: u64,
        verifier: RangeVerifier,
        blocks: u32,
    },
}

struct Conn {
    plan: Arc<Plan>,
    socket: TcpStream,
    /// Replies in clear, not yet consumed.
    rbuf: BytesMut,
    /// Requests in clear, not yet sent (or, with TLS, not yet encrypted).
    wbuf: BytesMut,
    /// With TLS: the session, records received and not yet opened, records to send.
    tls: Option<Tls>,
    fetches: Vec<Fetch>,
    rx: Rx,
    next_request_id: i64,
    requests: u64,
    chunks: u64,
    blocks: u64,
    bytes: u64,
    first: Histogram<u64>,
    chunk: Histogram<u64>,
}

impl Conn {
    async fn run(addr: SocketAddr, plan: Arc<Plan>) -> anyhow::Result<Conn> {
        let socket = match plan.spec.receive_buffer {
            None => TcpStream::connect(addr).await,
            Some(bytes) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.set_recv_buffer_size(bytes)?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr}"))?;
        socket.set_nodelay(true)?;
        let mut socket = socket;
        let tls = match &plan.spec.tls {
            None => None,
            Some(config) => {
                let mut session = crate::tls::session(config)?;
                crate::tls::handshake(&mut socket, &mut session)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                Some(Tls {
                    session,
                    records_in: BytesMut::with_capacity(READ_CHUNK_BYTES),
                    records_out: BytesMut::new(),
                })
            }
        };
        let mut conn = Conn {
            plan,
            socket,
            tls,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(64 * 1024),
            fetches: Vec::new(),
            rx: Rx::Header,
            next_request_id: 1,
            requests: 0,
            chunks: 0,
            blocks: 0,
            bytes: 0,
            first: new_histogram(),
            chunk: new_histogram(),
        };
        conn.serve().await?;
        Ok(conn)
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let io_timeout = self.plan.spec.io_timeout;
        loop {
            self.send_requests()?;
            if self.fetches.is_empty() {
                return Ok(());
            }
            let interest = if self.outgoing().is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let ready = tokio::time::timeout(io_timeout, self.socket.ready(interest))
                .await
                .with_context(|| format!("no progress for {io_timeout:?}"))??;
            if ready.is_readable() {
                for _ in 0..READS_PER_TURN {
                    let into = match &mut self.tls {
                        Some(tls) => &mut tls.records_in,
                        None => &mut self.rbuf,
                    };
                    if into.capacity() - into.len() < READ_CHUNK_BYTES / 2 {
                        into.reserve(READ_CHUNK_BYTES);
                    }
                    match self.socket.try_read_buf(into) {
                        Ok(0) => bail!("connection closed by the server"),
                        Ok(_) => {
                            if let Some(tls) = &mut self.tls {
                                crate::tls::open(
                                    &mut tls.session,
                                    &mut tls.records_in,
                                    &mut self.rbuf,
                                )?;
                            }
                            self.process()?;
                            // Requests made while reading (a stream's chunk requests, the
                            // next open when a fetch completed) go out at once, as Netty
                            // writes between reads: a reader that drained its socket to the
                            // end first would hold them back for as long as the server keeps
                            // it busy, and starve its own pipeline.
                            self.send_requests()?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("reading replies"),
                    }
                }
                // The other connections on this thread get their turn: a connection whose
                // server keeps its socket full would otherwise read for as long as the run
                // lasts (`try_read` takes nothing from tokio's cooperative budget).
                tokio::task::yield_now().await;
            }
        }
    }

    /// What is left to write to the socket: the requests, or with TLS their records.
    fn outgoing(&mut self) -> &mut BytesMut {
        match &mut self.tls {
            Some(tls) => &mut tls.records_out,
            None => &mut self.wbuf,
        }
    }

    /// Opens fetches up to the in-flight limit and writes as much of the request buffer as
    /// the socket takes without waiting (through TLS when the connection has it).
    fn send_requests(&mut self) -> anyhow::Result<()> {
        while self.fetches.len() < self.plan.spec.inflight {
            let Some(rect) = self.plan.take() else { break };
            self.open(rect);
        }
        if let Some(tls) = &mut self.tls
            && !self.wbuf.is_empty()
        {
            crate::tls::seal(&mut tls.session, &self.wbuf, &mut tls.records_out)?;
            self.wbuf.clear();
        }
        let socket = &self.socket;
        let out = match &mut self.tls {
            Some(tls) => &mut tls.records_out,
            None => &mut self.wbuf,
        };
        while !out.is_empty() {
            match socket.try_write(out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("writing requests"),
            }
        }
        Ok(())
    }

    fn open(&mut self, rect: Rect) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let body = self.plan.request(rect).to_bytes();
        wire::encode(&Frame::RpcRequest { request_id, body }, &mut self.wbuf);
        let now = Instant::now();
        self.fetches.push(Fetch {
            request_id,
            rect,
            stream_id: None,
            num_chunks: self.plan.chunks(rect),
            next_chunk: 0,
            opened_at: now,
            chunks_sent_at: now,
        });
    }

    /// Consumes as much of the read buffer as possible.
    fn process(&mut self) -> anyhow::Result<()> {
        loop {
            match &mut self.rx {
                Rx::Body {
                    fetch,
                    remaining,
                    verifier,
                    blocks,
                } => {
                    let n = (*remaining).min(self.rbuf.len() as u64) as usize;
                    if n == 0 && *remaining > 0 {
                        return Ok(());
                    }
                    let (fetch, blocks) = (*fetch, *blocks);
                    ensure!(
                        verifier.feed(&self.plan.layout, &self.rbuf[..n]),
                        "wrong bytes in chunk {} of request {:?}",
                        self.fetches[fetch].next_chunk,
                        self.fetches[fetch].rect
                    );
                    self.rbuf.advance(n);
                    *remaining -= n as u64;
                    self.bytes += n as u64;
                    if *remaining == 0 {
                        ensure!(verifier.is_complete(), "chunk shorter than its blocks");
                        self.rx = Rx::Header;
                        self.chunk_done(fetch, blocks);
                    }
                }
                Rx::Header => {
                    let Some(head) = self.rbuf.first_chunk::<9>() else {
                        return Ok(());
                    };
                    if head[8] == CHUNK_SUCCESS_TYPE {
                        let Some(h) = self.rbuf.first_chunk::<CHUNK_SUCCESS_HEADER_BYTES>() else {
                            return Ok(());
                        };
                        let frame_len = i64::from_be_bytes(h[..8].try_into()?);
                        let stream_id = i64::from_be_bytes(h[9..17].try_into()?);
                        let index = i32::from_be_bytes(h[17..21].try_into()?);
                        let body = u64::try_from(frame_len - CHUNK_SUCCESS_HEADER_BYTES as i64)
                            .context("bad ChunkFetchSuccess length")?;
                        self.rbuf.advance(CHUNK_SUCCESS_HEADER_BYTES);
                        self.chunk_header(stream_id, index, body)?;
                    } else {
                        let Some(frame) = wire::decode(&mut self.rbuf, MAX_REPLY_FRAME_BYTES)?
                        else {
                            return Ok(());
                        };
                        self.frame(frame)?;
                    }
                }
            }
        }
    }

    fn chunk_header(&mut self, stream_id: i64, index: i32, body: u64) -> anyhow::Result<()> {
        let fetch = self
            .fetches
            .iter()
            .position(|f| f.stream_id == Some(stream_id))
            .with_context(|| format!("chunk of unknown stream {stream_id}"))?;
        let f = &self.fetches[fetch];
        ensure!(
            u32::try_from(index).ok() == Some(f.next_chunk),
            "chunk {index} of stream {stream_id} out of order (expected {})",
            f.next_chunk
        );
        if f.next_chunk == 0 {
            self.first.record(micros(f.opened_at.elapsed()))?;
        }
        let (m, start, end) = self.plan.chunk(f.rect, f.next_chunk);
        let want = self.plan.layout.range_len(m, start, end);
        ensure!(
            body == want,
            "chunk {index} of stream {stream_id} has {body} bytes, expected {want}"
        );
        self.rx = Rx::Body {
            fetch,
            remaining: body,
            verifier: self.plan.layout.verifier(m, start, end),
            blocks: end - start,
        };
        Ok(())
    }

    fn chunk_done(&mut self, fetch: usize, blocks: u32) {
        let f = &mut self.fetches[fetch];
        let _ = self.chunk.record(micros(f.chunks_sent_at.elapsed()));
        f.next_chunk += 1;
        self.chunks += 1;
        self.blocks += u64::from(blocks);
        if f.next_chunk == f.num_chunks {
            self.fetches.swap_remove(fetch);
            self.requests += 1;
        }
    }

    fn frame(&mut self, frame: Frame) -> anyhow::Result<()> {
        match frame {
            Frame::RpcResponse { request_id, body } => {
                let fetch = self
                    .fetches
                    .iter()
                    .position(|f| f.request_id == request_id)
                    .with_context(|| format!("reply to unknown request {request_id}"))?;
                let Message::StreamHandle {
                    stream_id,
                    num_chunks,
                } = Message::decode(&body)?
                else {
                    bail!("FetchShuffleBlocks answered with something else than a StreamHandle");
                };
                let f = &mut self.fetches[fetch];
                ensure!(
                    u32::try_from(num_chunks).ok() == Some(f.num_chunks),
                    "stream of {num_chunks} chunks, expected {}",
                    f.num_chunks
                );
                f.stream_id = Some(stream_id);
                for chunk_index in 0..num_chunks {
                    let id = StreamChunkId {
                        stream_id,
                        chunk_index,
                    };
                    wire::encode(&Frame::ChunkFetchRequest(id), &mut self.wbuf);
                }
                f.chunks_sent_at = Instant::now();
                if num_chunks == 0 {
                    self.fetches.swap_remove(fetch);
                    self.requests += 1;
                }
                Ok(())
            }
            Frame::RpcFailure { request_id, error } => {
                bail!("request {request_id} failed: {}", first_line(&error))
            }
            Frame::ChunkFetchFailure { id, error } => {
                bail!("chunk {id:?} failed: {}", first_line(&error))
            }
            other => bail!("unexpected reply {}", other.type_name()),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}
