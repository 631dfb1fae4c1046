//! One client connection: reads frames, hands requests to the [`Service`], writes replies in
//! arrival order, except that stream opens and the chunks of other streams may overtake
//! queued chunk requests.
//!
//! Replies are written in the order requests arrived, with two exceptions, both for a
//! client that pipelines bulk chunk requests (Spark's executors share one connection per
//! shuffle service among all their tasks, so one task's requests queue behind another's).
//! While bulk bodies go out, the connection looks for newly arrived requests every
//! [`READ_AHEAD_AFTER_BYTES`] and answers those that only open a stream (`OpenBlocks`,
//! `FetchShuffleBlocks`, `GetLocalDirsForExecutors`) at once, ahead of the chunk requests
//! queued before them (matched by request id, so Spark's client accepts it); any other
//! request keeps its place, and holds back the opens behind it
//! ([`Connection::read_ahead`]). And the chunk requests so read ahead are served by shares
//! of [`SHARE_BYTES`] per stream, the stream with the fewest shares served first, rather
//! than strictly first come first served ([`Connection::pick_ahead`]): a task's new stream
//! gets its first chunk after a share of each stream ahead of it, not after every body
//! queued before it. Spark's client matches chunk replies by stream and chunk index; each
//! stream's chunks keep their order, and `StreamResponse`s (matched first-in first-out)
//! keep theirs.
//!
//! Small frames are batched in a write buffer. A chunk body of at most
//! `--inline-body-max-bytes` is read (`pread`) into that batch right after its header, so
//! the replies to a burst of small-block requests leave in a few large writes instead of a
//! `send` plus a `sendfile` each (two syscalls and a TCP push per 4 KiB block); a larger
//! body goes from the page cache to the socket with `sendfile(2)`, never through user
//! memory, after its header is sent with `MSG_MORE`. The batch is bounded
//! ([`WRITE_BATCH_BYTES`] plus one small body) and flushed before the connection reads again.
//! A connection reads no further requests while it writes (beyond at most
//! [`MAX_READ_AHEAD_FRAMES`] read ahead), so a slow reader cannot make the daemon buffer
//! replies.
//!
//! A write (`send` or `sendfile`) that takes fewer bytes than offered means the socket buffer
//! is full: the connection then waits for the kernel's writable event instead of trying again
//! at once (which would only fail with `EAGAIN`), as Netty does for Spark's service. In case
//! a short write had another cause (a signal, a file cut short), that wait is bounded by
//! [`SHORT_WRITE_RECHECK`] before the write is tried again.
//!
//! A connection whose client drains as fast as it sends never waits on its socket, so it
//! could hold its worker thread for as long as tokio's cooperative budget lasts (64 chunks:
//! 14 MiB of 256 KiB chunks in one turn were seen under `strace`, 256 MiB of 4 MiB ones are
//! possible), and every connection queued on that worker would wait. After
//! [`TURN_BYTES`] of bodies it yields to them, as Netty stops writing one channel after 16
//! writes.
//!
//! With `spark.authenticate` on, the first requests must be the auth handshake
//! ([`crate::auth::ServerAuth`]); anything else before it closes the connection. After it,
//! the connection acts only for the app it authenticated as, and, when AuthEngine set up a
//! transport cipher, every byte in both directions goes through it: chunk bodies are then
//! read and encrypted in user memory (no `sendfile` on encrypted connections).
//!
//! With TLS configured (`--tls-cert-file`, Spark 4's `spark.ssl.rpc.*`), every connection
//! starts with a TLS handshake ([`crate::tls::Layer`]) and every byte goes through it, the
//! auth handshake included; bodies are copied and encrypted as above. When a client also
//! sets up the transport cipher, the cipher goes *around* TLS, next to the socket, as
//! Spark's Netty pipeline puts it ([`Connection::unwrap_received`]).
//!
//! Limits on what a peer can make a connection hold: a frame must arrive whole within the
//! frame timeout of its first byte (slow senders that trickle bytes to dodge the idle
//! timeout are closed), and read-buffer bytes above [`READ_ALLOWANCE_BYTES`] are drawn from
//! the daemon-wide [`crate::budget::ByteBudget`] (a connection that needs more while it is
//! spent is closed), so thousands of connections holding large partial frames stay bounded.
//!
//! Errors: a failed request gets an `RpcFailure`/`ChunkFetchFailure`/`StreamFailure` and the
//! connection goes on; a framing error, a timeout or an I/O error closes this connection only
//! and is logged once, with the peer address, by [`serve`].

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use rustix::net::SendFlags;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::{AuthStep, ServerAuth, TransportCipher};
use crate::config::Config;
use crate::handler::{Chunk, Failure, Service};
use crate::stats::Stats;
use crate::store::Segment;
use crate::stream::Streams;
use crate::tls;
use crate::wire::{self, Frame, StreamChunkId};

/// Largest piece handed to one `sendfile` call.
const SENDFILE_MAX_BYTES: u64 = 1 << 30;
/// Initial read buffer; it grows up to the frame limit for large requests.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Read-buffer bytes a connection holds without drawing on the daemon's global read budget
/// ([`crate::budget::ByteBudget`]): Spark's requests fit many times over.
pub const READ_ALLOWANCE_BYTES: usize = 64 * 1024;
/// Flush batched small replies once this many bytes are waiting.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A write buffer larger than this is dropped when its connection waits for requests.
const IDLE_WRITE_BUFFER_BYTES: usize = 2 * READ_BUFFER_BYTES;
/// Piece of a body read at a time when it is copied (encrypted connections, inlined bodies).
const COPY_PIECE_BYTES: usize = 64 * 1024;
/// Body bytes a connection sends before it lets the other tasks of its worker run.
pub const TURN_BYTES: u64 = 4 << 20;
/// Longest wait for the writable event after a short write before the write is tried again
/// anyway (a short write not caused by a full socket buffer has no such event coming).
const SHORT_WRITE_RECHECK: Duration = Duration::from_millis(50);
/// Body bytes sent between looks at the socket for requests to answer out of turn (see the
/// module docs): small bodies go out in batches between reads anyway.
const READ_AHEAD_AFTER_BYTES: u64 = 256 << 10;
/// `RegisterExecutor` requests pipelined back to back that a connection handles together
/// (see [`Connection::register_batch`]).
const MAX_REGISTER_BATCH: usize = 64;
/// Frames a connection holds read ahead of their turn; past this it reads no more until
/// they are served (the client's requests then wait in the kernel's buffers).
const MAX_READ_AHEAD_FRAMES: usize = 512;
/// Body bytes one stream is served in a row before the connection turns to the stream with
/// the fewest shares of this size served (see [`Connection::pick_ahead`]).
pub const SHARE_BYTES: u64 = 256 << 10;

/// The buffer socket reads go into: `raw` (AES ciphertext) under a transport cipher, else
/// `tls_in` (TLS records) under TLS, else `rbuf` (frames). With both, the cipher is next to
/// the socket, outside TLS, as Spark's Netty pipeline has it (the cipher's handlers are added
/// first in the pipeline after the auth handshake, ahead of the `SslHandler`); see
/// [`Connection::unwrap_received`]. Takes the fields, not the connection, so the socket stays
/// free to borrow.
fn socket_buffer<'a>(
    (tls, cipher): (bool, bool),
    tls_in: &'a mut BytesMut,
    raw: &'a mut BytesMut,
    rbuf: &'a mut BytesMut,
) -> &'a mut BytesMut {
    match (tls, cipher) {
        (_, true) => raw,
        (true, false) => tls_in,
        (false, false) => rbuf,
    }
}

/// The policy of [`Connection::pick_ahead`], over the stream ids of the chunk requests at
/// the head of the queue (in arrival order): the first request of `keeps_turn` if it has
/// one, else the first request of the stream with the fewest `shares`, the earliest among
/// equals. Returns its position and stream; `None` for an empty run.
fn pick_by_shares(
    run: impl Iterator<Item = i64>,
    keeps_turn: Option<i64>,
    shares: impl Fn(i64) -> u64,
) -> Option<(usize, i64)> {
    let mut best: Option<(u64, usize, i64)> = None;
    let mut previous = None;
    for (at, stream_id) in run.enumerate() {
        if Some(stream_id) == keeps_turn {
            return Some((at, stream_id));
        }
        // A stream's later requests never beat its first one.
        if previous.replace(stream_id) == Some(stream_id) {
            continue;
        }
        let n = shares(stream_id);
        if best.is_none_or(|(fewest, _, _)| n < fewest) {
            best = Some((n, at, stream_id));
            // Nothing beats it, unless the stream keeping its turn comes later.
            if n == 0 && keeps_turn.is_none() {
                break;
            }
        }
    }
    best.map(|(_, at, stream_id)| (at, stream_id))
}

/// Why a connection was closed by the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer sent something that is not a valid frame.
    #[error("protocol error: {0}")]
    Wire(#[from] wire::Error),
    /// A frame type a server never receives, or one that cannot be served safely.
    #[error("unexpected {0} frame from a client")]
    UnexpectedFrame(&'static str),
    /// No bytes from the peer for the idle timeout.
    #[error("idle for {0:?}, closing")]
    Idle(Duration),
    /// A frame started arriving and was not complete within the frame timeout.
    #[error("frame not complete within {0:?} of its first byte ({1} bytes received)")]
    FrameTimeout(Duration, usize),
    /// The frame being received needs more buffer than the daemon's global read budget has
    /// left (many connections are sending large frames at once).
    #[error(
        "read-buffer budget exhausted: this connection needs {need} more bytes, \
         {used} of {limit} are held by all connections"
    )]
    ReadBudget {
        /// Bytes this connection asked for.
        need: usize,
        /// Bytes held in the budget by all connections.
        used: usize,
        /// The budget.
        limit: usize,
    },
    /// The peer did not read our reply for the write timeout.
    #[error("write made no progress for {0:?}")]
    WriteStalled(Duration),
    /// The peer closed in the middle of a frame.
    #[error("connection closed by peer mid-frame ({0} bytes pending)")]
    TruncatedFrame(usize),
    /// A data file shrank while it was being sent (the header had promised its length).
    #[error("file shrank while being sent")]
    FileShrank,
    /// A request other than the auth handshake before authentication.
    #[error("{0} before authentication")]
    Unauthenticated(&'static str),
    /// The transport cipher refused the peer's bytes (forged or garbled).
    #[error("transport decryption failed: {0}")]
    Transport(#[from] crate::auth::Error),
    /// TLS failed: a handshake, a record, or a client in the clear on a TLS port.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// Socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Wire(e) => e.kind(),
            Error::UnexpectedFrame(_) => "unexpected_frame",
            Error::Idle(_) => "idle_timeout",
            Error::FrameTimeout(..) => "frame_timeout",
            Error::ReadBudget { .. } => "read_budget",
            Error::WriteStalled(_) => "write_timeout",
            Error::TruncatedFrame(_) => "truncated_frame",
            Error::FileShrank => "file_shrank",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Transport(_) => "transport_decrypt",
            Error::Tls(tls::Error::Plaintext | tls::Error::NotTls(_)) => "tls_expected",
            Error::Tls(tls::Error::Untrusted(_)) => "tls_untrusted",
            Error::Tls(_) => "tls",
            Error::Io(_) => "io",
        }
    }
}

/// Socket options of a shuffle connection: no Nagle delay (replies are whole frames), and
/// the configured congestion control. A failure is logged and the connection served as is.
pub fn tune(socket: &TcpStream, config: &Config) {
    if let Err(e) = socket.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    if let Some(algorithm) = &config.tcp_congestion_control
        && let Err(e) = rustix::net::sockopt::set_tcp_congestion(socket, algorithm)
    {
        debug!(error = %e, algorithm, "setting the TCP congestion control failed");
    }
}

/// Serves one connection until it closes, logging its end once.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    service: Arc<Service>,
    shutdown: CancellationToken,
) {
    let span = info_span!("conn", %peer);
    async move {
        tune(&socket, &service.config);
        let tls = match service
            .config
            .tls
            .as_ref()
            .map(|c| tls::Layer::new(Arc::clone(c)))
        {
            None => None,
            Some(Ok(layer)) => Some(layer),
            Some(Err(e)) => {
                warn!(error = %e, "cannot start a TLS session; closing the connection");
                return;
            }
        };
        Stats::inc(&service.stats.connections_open);
        let mut conn = Connection::new(socket, service, shutdown, tls);
        let result = conn.run().await;
        // Unless writing or TLS itself failed, the stream is at a record boundary.
        if !matches!(
            result,
            Err(Error::WriteStalled(_) | Error::Io(_) | Error::Tls(_) | Error::Transport(_))
        ) {
            conn.close_tls();
        }
        let stats = &conn.service.stats;
        Stats::dec(&stats.connections_open);
        Stats::adjust(&stats.streams_open, conn.streams.len(), 0);
        match result {
            Ok(()) => debug!("connection closed"),
            Err(Error::Io(e)) if is_disconnect(&e) => debug!(error = %e, "peer went away"),
            Err(e) => {
                Stats::inc(&conn.service.stats.connection_errors);
                crate::metrics::error(e.kind());
                warn!(kind = e.kind(), error = %e, "closing connection");
            }
        }
    }
    .instrument(span)
    .await;
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// Which reply carried a chunk.
#[derive(Debug, Clone, Copy)]
enum Served {
    /// `ChunkFetchSuccess`.
    Chunk,
    /// `StreamResponse`.
    Stream,
}

struct Connection {
    socket: TcpStream,
    service: Arc<Service>,
    shutdown: CancellationToken,
    streams: Streams,
    /// Plaintext received, not yet decoded.
    rbuf: BytesMut,
    /// Plaintext to send.
    wbuf: BytesMut,
    /// The handshake in progress; `None` once authenticated or when auth is off.
    auth: Option<ServerAuth>,
    /// The app this connection authenticated as.
    client_id: Option<String>,
    /// The transport cipher installed by the handshake, if any.
    cipher: Option<TransportCipher>,
    /// Bytes to decrypt with the cipher (with a cipher only).
    raw: BytesMut,
    /// The TLS session, when the daemon serves TLS (inside the cipher, if both).
    tls: Option<tls::Layer>,
    /// TLS records not yet whole, from the socket (or from the cipher, with both).
    tls_in: BytesMut,
    /// Scratch for the transport cipher's output (with a cipher only; TLS seals in place).
    sealed: BytesMut,
    /// Bytes taken from the service's read budget for `rbuf`, `raw` and `tls_in`.
    budget_held: usize,
    /// The last write was short: the socket buffer is full (see the module docs).
    short_write: AtomicBool,
    /// Body bytes sent since the connection last yielded to its worker's other tasks.
    turn_sent: u64,
    /// Body bytes sent since the connection last read from its socket.
    sent_since_read: u64,
    /// Requests read ahead while bodies were going out, to be handled before anything left
    /// in `rbuf` (see [`Connection::read_ahead`] and [`Connection::pick_ahead`]).
    ahead: VecDeque<Frame>,
    /// The stream whose chunks were served last, and the body bytes left of its share.
    serving: Option<(i64, u64)>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.service.read_budget.give_back(self.budget_held);
    }
}

impl Connection {
    fn new(
        socket: TcpStream,
        service: Arc<Service>,
        shutdown: CancellationToken,
        tls: Option<tls::Layer>,
    ) -> Self {
        let streams = Streams::with_budget(
            service.config.max_streams_per_connection,
            Arc::clone(&service.stream_budget),
        );
        let auth = service.config.auth.as_ref().map(|a| {
            ServerAuth::new(Arc::clone(&a.secrets), a.version, a.sasl_fallback)
                .with_cipher(a.cipher)
        });
        Self {
            socket,
            service,
            shutdown,
            streams,
            rbuf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            wbuf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            auth,
            client_id: None,
            cipher: None,
            raw: BytesMut::new(),
            tls,
            tls_in: BytesMut::new(),
            sealed: BytesMut::new(),
            budget_held: 0,
            short_write: AtomicBool::new(false),
            turn_sent: 0,
            sent_since_read: 0,
            ahead: VecDeque::new(),
            serving: None,
        }
    }

    /// Brings the bytes held from the read budget in line with the read buffers' capacity
    /// above [`READ_ALLOWANCE_BYTES`]; a large buffer left empty is dropped first.
    ///
    /// # Errors
    /// [`Error::ReadBudget`] when more is needed and the budget has no room.
    fn settle_read_budget(&mut self) -> Result<(), Error> {
        for buf in [&mut self.rbuf, &mut self.raw, &mut self.tls_in] {
            if buf.is_empty() && buf.capacity() > READ_ALLOWANCE_BYTES {
                *buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
            }
        }
        let held = self.rbuf.capacity() + self.raw.capacity() + self.tls_in.capacity();
        let want = held.saturating_sub(READ_ALLOWANCE_BYTES);
        let budget = &self.service.read_budget;
        if want > self.budget_held {
            let need = want - self.budget_held;
            if !budget.try_take(need) {
                return Err(Error::ReadBudget {
                    need,
                    used: budget.used(),
                    limit: budget.limit(),
                });
            }
        } else {
            budget.give_back(self.budget_held - want);
        }
        self.budget_held = want;
        Ok(())
    }

    /// Which layers the connection has: TLS, the transport cipher.
    fn layers(&self) -> (bool, bool) {
        (self.tls.is_some(), self.cipher.is_some())
    }

    /// Makes room for a socket read in the buffer it goes into and settles the read budget
    /// for it.
    fn prepare_read(&mut self) -> Result<(), Error> {
        let layers = self.layers();
        let into = socket_buffer(layers, &mut self.tls_in, &mut self.raw, &mut self.rbuf);
        if into.capacity() - into.len() < READ_BUFFER_BYTES / 4 {
            into.reserve(READ_BUFFER_BYTES);
        }
        self.settle_read_budget()
    }

    /// Received bytes not yet decoded into frames, at every layer; a TLS handshake under
    /// way counts as a frame in progress (its records are not buffered between them).
    fn pending_bytes(&self) -> usize {
        let handshaking = self.tls.as_ref().is_some_and(tls::Layer::is_handshaking);
        (self.rbuf.len() + self.raw.len() + self.tls_in.len()).max(usize::from(handshaking))
    }

    /// Ends an established TLS session with `close_notify` (as Netty's `SslHandler` does when
    /// Spark's own services close a channel), so the peer can tell the end from a truncation:
    /// best effort, without waiting (a full socket buffer or a gone peer just gets the FIN).
    fn close_tls(&mut self) {
        let Some(layer) = &mut self.tls else { return };
        if layer.negotiated().is_none() {
            return;
        }
        layer.close();
        let mut out = BytesMut::new();
        if layer.seal(&[], &mut out).is_err() {
            return;
        }
        if let Some(cipher) = &mut self.cipher {
            let mut sealed = BytesMut::new();
            if cipher
                .seal(&out, &mut crate::auth::fill_random, &mut sealed)
                .is_err()
            {
                return;
            }
            out = sealed;
        }
        let _ = rustix::net::send(&self.socket, &out, SendFlags::NOSIGNAL);
    }

    /// Passes what the socket delivered up through the transport cipher and TLS, whichever
    /// the connection has, to `rbuf`. With both, the cipher is the outer layer: Spark's
    /// client runs its auth handshake inside TLS, then puts the AES cipher between the socket
    /// and TLS, so the bytes on the wire are AES of TLS records of frames.
    fn unwrap_received(&mut self) -> Result<(), Error> {
        if let Some(cipher) = &mut self.cipher {
            let into = if self.tls.is_some() {
                &mut self.tls_in
            } else {
                &mut self.rbuf
            };
            cipher.open(&mut self.raw, into)?;
        }
        if let Some(layer) = &mut self.tls {
            if let Err(e) = layer.open(&mut self.tls_in, &mut self.rbuf) {
                // The alert rustls queued for the peer, best effort and without waiting.
                let mut alert = BytesMut::new();
                if layer.seal(&[], &mut alert).is_ok() && !alert.is_empty() {
                    let _ = rustix::net::send(&self.socket, &alert, SendFlags::NOSIGNAL);
                }
                return Err(e.into());
            }
            if let Some((version, suite)) = layer.newly_established() {
                Stats::inc(&self.service.stats.tls_handshakes);
                debug!(?version, ?suite, "TLS established");
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), Error> {
        let max_frame = self.service.config.max_frame_len_bytes;
        let idle = self.service.config.idle_timeout;
        let frame_timeout = self.service.config.frame_timeout;
        // When the first byte of the frame being received arrived.
        let mut partial_since: Option<tokio::time::Instant> = None;
        loop {
            let mut decoded = false;
            while let Some(frame) = self.next_frame(max_frame)? {
                decoded = true;
                if !self.handle(frame).await? {
                    self.flush().await?;
                    return Ok(());
                }
            }
            self.flush().await?;
            // Started after the replies went out, so time spent writing to a slow reader is
            // not counted against the frame it pipelined behind its requests.
            let pending = self.pending_bytes();
            if pending == 0 {
                partial_since = None;
            } else if decoded || partial_since.is_none() {
                partial_since = Some(tokio::time::Instant::now());
            }
            if let Some(since) = partial_since
                && since.elapsed() >= frame_timeout
            {
                return Err(Error::FrameTimeout(frame_timeout, pending));
            }
            // On shutdown, stay only while a client is still reading streams it opened.
            if self.shutdown.is_cancelled() && self.streams.is_empty() {
                return Ok(());
            }
            self.prepare_read()?;
            // Wait no longer than the frame in progress has left.
            let wait = match partial_since {
                Some(since) => idle.min(frame_timeout.saturating_sub(since.elapsed())),
                None => idle,
            };
            let layers = self.layers();
            let into = socket_buffer(layers, &mut self.tls_in, &mut self.raw, &mut self.rbuf);
            let read = match self.socket.try_read_buf(into) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read: the connection is about to wait, so it gives back the
                    // write buffers a burst of small bodies made large. Idle connections (a
                    // Spark executor keeps its own open between stages) stay small.
                    for buf in [&mut self.wbuf, &mut self.sealed] {
                        if buf.is_empty() && buf.capacity() > IDLE_WRITE_BUFFER_BYTES {
                            *buf = BytesMut::new();
                        }
                    }
                    tokio::select! {
                        biased;
                        r = timeout(wait, self.socket.read_buf(into)) => r,
                        () = self.shutdown.cancelled(), if self.streams.is_empty() => return Ok(()),
                    }
                }
                r => Ok(r),
            };
            match read {
                Err(_) if partial_since.is_some_and(|s| s.elapsed() >= frame_timeout) => {
                    return Err(Error::FrameTimeout(frame_timeout, pending));
                }
                Err(_) => return Err(Error::Idle(idle)),
                Ok(Ok(0)) if self.pending_bytes() == 0 => return Ok(()),
                Ok(Ok(0)) => return Err(Error::TruncatedFrame(self.pending_bytes())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
            self.sent_since_read = 0;
            self.unwrap_received()?;
        }
    }

    /// The next request to handle: one of those read ahead ([`Connection::pick_ahead`]),
    /// else the next in `rbuf`.
    fn next_frame(&mut self, max_frame: usize) -> Result<Option<Frame>, Error> {
        if self.ahead.is_empty() {
            return Ok(wire::decode(&mut self.rbuf, max_frame)?);
        }
        let at = self.pick_ahead();
        if at > 0 {
            Stats::inc(&self.service.stats.chunks_out_of_turn);
        }
        Ok(self.ahead.remove(at))
    }

    /// Which of the requests read ahead to handle next: the first, unless it and the ones
    /// after it are chunk requests of several streams. Those are served by shares of
    /// [`SHARE_BYTES`]: the stream served last keeps its turn until it has had a share in a
    /// row, then the turn goes to the stream with the fewest whole shares served so far
    /// (the one asked for first among equals), starting with its oldest request.
    ///
    /// So the tasks of an executor, which share its one connection, progress together: a
    /// task's new stream gets its first chunk after at most a share of each stream ahead of
    /// it instead of after every body queued before it, while a stream of small chunks still
    /// goes out a share at a time (one map output kept open, replies batched). Only
    /// `ChunkFetchRequest`s trade places, and only among themselves: Spark's client matches
    /// their replies by stream and chunk index, and the chunks of each stream keep their
    /// order (required: a stream's chunks are handed out in order). Anything else, a
    /// `StreamRequest` included (matched first-in first-out), waits for every request that
    /// arrived before it and holds back every one after it. Costs a scan of at most
    /// [`MAX_READ_AHEAD_FRAMES`] requests per share, not per chunk.
    fn pick_ahead(&mut self) -> usize {
        let run = self.ahead.iter().map_while(|f| match f {
            Frame::ChunkFetchRequest(id) => Some(id.stream_id),
            _ => None,
        });
        // The stream served last, if its share is not used up and it is still open.
        let keeps_turn = self
            .serving
            .filter(|&(id, left)| left > 0 && self.streams.served(id).is_some())
            .map(|(id, _)| id);
        // A stream that is not open (finished, never opened) fails at once: it ranks first.
        let shares = |id| self.streams.served(id).unwrap_or(0) / SHARE_BYTES;
        let Some((at, stream_id)) = pick_by_shares(run, keeps_turn, shares) else {
            return 0;
        };
        if Some(stream_id) != keeps_turn {
            self.serving = Some((stream_id, SHARE_BYTES));
        }
        at
    }

    /// Counts a chunk body of `len` bytes of stream `stream_id` against its share (a new
    /// one if another stream was served before it).
    fn served(&mut self, stream_id: i64, len: u64) {
        self.streams.add_served(stream_id, len);
        let left = match self.serving {
            Some((id, left)) if id == stream_id => left,
            _ => SHARE_BYTES,
        };
        self.serving = Some((stream_id, left.saturating_sub(len)));
    }

    /// Before a chunk's reply, once enough body bytes have gone out since the last read,
    /// reads what the client has sent meanwhile (without waiting) and answers the requests
    /// that only open a stream ([`Message::is_read_only_open`]) at once, ahead of the
    /// chunk requests queued before them; everything else is kept in `ahead`.
    ///
    /// A client that pipelines bulk chunk requests on one connection (Spark's executors share
    /// one connection per shuffle service among all their tasks) thus gets a new stream's
    /// `StreamHandle` without waiting for the bodies already queued, and can send that
    /// stream's chunk requests sooner. Only `ChunkFetchRequest`s and `StreamRequest`s are
    /// overtaken: they only read streams that are already open. Any other frame stops the
    /// reading ahead until it is handled, so registrations, removals, uploads and the like
    /// keep their place (an `UploadStream`'s body follows it out of frame and is never
    /// decoded ahead). Which chunk request is then served first is up to
    /// [`Connection::pick_ahead`]; an `RpcResponse` is matched by its request id.
    async fn read_ahead(&mut self) -> Result<(), Error> {
        let blocked = self.ahead.back().is_some_and(|f| {
            !matches!(f, Frame::ChunkFetchRequest(_) | Frame::StreamRequest { .. })
        });
        if self.auth.is_some()
            || self.sent_since_read < READ_AHEAD_AFTER_BYTES
            || blocked
            || self.ahead.len() >= MAX_READ_AHEAD_FRAMES
        {
            return Ok(());
        }
        self.sent_since_read = 0;
        self.prepare_read()?;
        // End of input or an error is left for the main loop, after what is queued; what
        // `rbuf` already holds is looked at either way.
        let layers = self.layers();
        let into = socket_buffer(layers, &mut self.tls_in, &mut self.raw, &mut self.rbuf);
        if let Ok(n) = self.socket.try_read_buf(into)
            && n > 0
        {
            self.unwrap_received()?;
        }
        let max_frame = self.service.config.max_frame_len_bytes;
        while self.ahead.len() < MAX_READ_AHEAD_FRAMES {
            let Some(frame) = wire::decode(&mut self.rbuf, max_frame)? else {
                break;
            };
            match frame {
                Frame::RpcRequest { request_id, body }
                    if crate::wire::Message::is_read_only_open(&body) =>
                {
                    Stats::inc(&self.service.stats.rpcs_read_ahead);
                    self.answer_rpc(request_id, body).await?;
                }
                frame @ (Frame::ChunkFetchRequest(_) | Frame::StreamRequest { .. }) => {
                    self.ahead.push_back(frame);
                }
                other => {
                    self.ahead.push_back(other);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Handles one frame; `Ok(false)` asks to close the connection after flushing.
    async fn handle(&mut self, frame: Frame) -> Result<bool, Error> {
        let open_before = self.streams.len();
        let result = self.dispatch(frame).await;
        Stats::adjust(
            &self.service.stats.streams_open,
            open_before,
            self.streams.len(),
        );
        result
    }

    /// One frame before authentication: only the handshake's RPCs are accepted.
    async fn authenticate(&mut self, frame: Frame) -> Result<bool, Error> {
        let Frame::RpcRequest { request_id, body } = frame else {
            return Err(Error::Unauthenticated(frame.type_name()));
        };
        let Some(auth) = &mut self.auth else {
            return Ok(true);
        };
        match auth.step(&body, &mut crate::auth::fill_random) {
            Ok(AuthStep::Continue(reply)) => {
                self.queue(&Frame::RpcResponse {
                    request_id,
                    body: reply,
                })
                .await?;
            }
            Ok(AuthStep::Done {
                reply,
                app_id,
                transport,
            }) => {
                // The last reply goes out in clear; everything after it through the cipher.
                self.queue(&Frame::RpcResponse {
                    request_id,
                    body: reply,
                })
                .await?;
                self.flush().await?;
                debug!(app = %app_id, encrypted = transport.is_some(), "authenticated");
                self.auth = None;
                self.client_id = Some(app_id);
                if let Some(cipher) = transport {
                    // Bytes the client sent after its last auth message are already
                    // encrypted: move them back before decoding. Under TLS they are still
                    // undecoded records (the cipher goes outside TLS: `unwrap_received`).
                    let early = match self.tls {
                        Some(_) => self.tls_in.split(),
                        None => self.rbuf.split(),
                    };
                    self.raw.unsplit(early);
                    self.cipher = Some(cipher);
                    Stats::inc(&self.service.stats.encrypted_connections);
                    self.unwrap_received()?;
                }
            }
            Err(e) => {
                crate::metrics::error(e.kind());
                Stats::inc(&self.service.stats.rpc_failures);
                warn!(kind = e.kind(), error = %e, "authentication failed");
                self.queue(&Frame::RpcFailure {
                    request_id,
                    error: e.to_string(),
                })
                .await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn dispatch(&mut self, frame: Frame) -> Result<bool, Error> {
        if self.auth.is_some() {
            return self.authenticate(frame).await;
        }
        let started = std::time::Instant::now();
        match frame {
            Frame::RpcRequest { request_id, body }
                if crate::wire::Message::is_register_executor(&body) && self.ahead.is_empty() =>
            {
                self.register_batch(request_id, body).await?;
            }
            Frame::RpcRequest { request_id, body } => self.answer_rpc(request_id, body).await?,
            Frame::ChunkFetchRequest(id) => {
                self.read_ahead().await?;
                match self
                    .service
                    .chunk(&mut self.streams, id.stream_id, i64::from(id.chunk_index))
                {
                    Ok(chunk) => {
                        self.served(id.stream_id, chunk.segment.len);
                        wire::encode_chunk_success_header(id, chunk.segment.len, &mut self.wbuf)?;
                        self.send_chunk(chunk, Served::Chunk, started).await?;
                    }
                    Err(failure) => self.chunk_failed(id, failure).await?,
                }
            }
            Frame::StreamRequest { stream_id } => {
                self.read_ahead().await?;
                let chunk = StreamChunkId::parse_stream_request(&stream_id)
                    .map_err(Failure::from)
                    .and_then(|id| {
                        let index = i64::from(id.chunk_index);
                        self.service.chunk(&mut self.streams, id.stream_id, index)
                    });
                match chunk {
                    Ok(chunk) => {
                        let len = chunk.segment.len;
                        wire::encode_stream_response_header(&stream_id, len, &mut self.wbuf);
                        self.send_chunk(chunk, Served::Stream, started).await?;
                    }
                    Err(failure) => {
                        self.log_failure("stream", &failure);
                        Stats::inc(&self.service.stats.chunk_failures);
                        self.queue(&Frame::StreamFailure {
                            stream_id,
                            error: failure.message,
                        })
                        .await?;
                    }
                }
            }
            Frame::OneWayMessage { body } => {
                if let Some(failure) = self.service.one_way(&body) {
                    self.log_failure("one_way", &failure);
                }
            }
            Frame::UploadStream { request_id, .. } => {
                // Its body follows out of frame; it cannot be skipped safely, so the
                // connection closes after the failure, as Spark's own service does.
                let failure = Failure {
                    kind: "upload_unsupported",
                    message:
                        "UploadStream is not supported: this service does not accept pushed blocks"
                            .into(),
                };
                self.log_failure("upload", &failure);
                Stats::inc(&self.service.stats.rpc_failures);
                self.queue(&Frame::RpcFailure {
                    request_id,
                    error: failure.message,
                })
                .await?;
                return Ok(false);
            }
            Frame::MergedBlockMetaRequest { request_id, .. } => {
                Stats::inc(&self.service.stats.rpc_failures);
                let error = "Cannot handle shuffle block merge: push-based shuffle is not supported by this service".into();
                self.queue(&Frame::RpcFailure { request_id, error }).await?;
            }
            other => return Err(Error::UnexpectedFrame(other.type_name())),
        }
        Ok(true)
    }

    /// Handles an RPC and queues its reply.
    async fn answer_rpc(&mut self, request_id: i64, body: bytes::Bytes) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let kind = crate::wire::Message::type_name_of(&body);
        let client = self.client_id.as_deref();
        let reply = self.service.rpc(&body, &mut self.streams, client).await;
        crate::metrics::request_duration(kind, started);
        self.queue_reply(request_id, reply).await
    }

    /// Queues the reply to RPC `request_id`, counting and logging a failure.
    async fn queue_reply(
        &mut self,
        request_id: i64,
        reply: Result<bytes::Bytes, Failure>,
    ) -> Result<(), Error> {
        let frame = match reply {
            Ok(body) => Frame::RpcResponse { request_id, body },
            Err(failure) => {
                self.log_failure("rpc", &failure);
                Stats::inc(&self.service.stats.rpc_failures);
                Frame::RpcFailure {
                    request_id,
                    error: failure.message,
                }
            }
        };
        self.queue(&frame).await
    }

    /// Handles a `RegisterExecutor` together with the ones pipelined right behind it (up to
    /// [`MAX_REGISTER_BATCH`], those already received), concurrently, so they share the
    /// registry's `fdatasync` instead of each waiting for its own in turn; the replies go
    /// out in request order, before anything that arrived after them is handled. (Spark's
    /// executors register once each, on their own connections, which share syncs anyway;
    /// this is for a client pipelining many.) Only when nothing is held read ahead, so the
    /// frame that ends the batch can be put back first in line.
    async fn register_batch(&mut self, request_id: i64, body: bytes::Bytes) -> Result<(), Error> {
        use crate::wire::Message;
        // Which executor a registration is for: a second registration of one already in the
        // batch must follow the first (the later one replaces it, in the journal as in
        // memory), so it ends the batch.
        fn executor(m: &Message) -> Option<(&str, &str)> {
            match m {
                Message::RegisterExecutor {
                    app_id, exec_id, ..
                } => Some((app_id, exec_id)),
                _ => None,
            }
        }
        // One that does not decode is answered alone, with the failure `rpc` gives it.
        let Ok(first) = Message::decode(&body) else {
            return self.answer_rpc(request_id, body).await;
        };
        let mut batch = vec![(request_id, first)];
        let max_frame = self.service.config.max_frame_len_bytes;
        // A framing error after some registrations is reported once they are answered.
        let mut bad_frame = None;
        while batch.len() < MAX_REGISTER_BATCH {
            match wire::decode(&mut self.rbuf, max_frame) {
                Ok(Some(Frame::RpcRequest { request_id, body }))
                    if Message::is_register_executor(&body) =>
                {
                    match Message::decode(&body) {
                        Ok(m) if !batch.iter().any(|(_, b)| executor(b) == executor(&m)) => {
                            batch.push((request_id, m));
                        }
                        _ => {
                            self.ahead
                                .push_front(Frame::RpcRequest { request_id, body });
                            break;
                        }
                    }
                }
                Ok(Some(other)) => {
                    self.ahead.push_front(other);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    bad_frame = Some(e);
                    break;
                }
            }
        }
        let mut running = tokio::task::JoinSet::new();
        for (at, (request_id, message)) in batch.into_iter().enumerate() {
            let service = Arc::clone(&self.service);
            let client = self.client_id.clone();
            running.spawn(async move {
                let started = std::time::Instant::now();
                // A registration opens no stream: this table stays empty.
                let mut none = Streams::new(0);
                let reply = service
                    .rpc_message(message, &mut none, client.as_deref())
                    .await;
                crate::metrics::request_duration("RegisterExecutor", started);
                (at, request_id, reply)
            });
        }
        let mut replies = Vec::with_capacity(running.len());
        while let Some(done) = running.join_next().await {
            replies.push(done.map_err(|e| {
                Error::Io(io::Error::other(format!("registration task failed: {e}")))
            })?);
        }
        replies.sort_unstable_by_key(|(at, _, _)| *at);
        for (_, request_id, reply) in replies {
            self.queue_reply(request_id, reply).await?;
        }
        match bad_frame {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Sends the body of a chunk whose header was just queued, and counts it.
    async fn send_chunk(
        &mut self,
        chunk: Chunk,
        served: Served,
        started: std::time::Instant,
    ) -> Result<(), Error> {
        let Segment { file, offset, len } = &chunk.segment;
        self.send_body(file, *offset, *len).await?;
        let stats = &self.service.stats;
        let (count, bytes) = match served {
            Served::Chunk => (&stats.chunks_served, &stats.chunk_bytes),
            Served::Stream => (&stats.streams_served, &stats.stream_bytes),
        };
        Stats::inc(count);
        Stats::add(bytes, *len);
        if chunk.rdd {
            Stats::inc(&stats.rdd_blocks_served);
        }
        crate::metrics::chunk_duration(matches!(served, Served::Stream), started);
        self.turn_sent += *len;
        self.sent_since_read += *len;
        if self.turn_sent >= TURN_BYTES {
            self.turn_sent = 0;
            Stats::inc(&self.service.stats.turns_yielded);
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    fn log_failure(&self, what: &'static str, failure: &Failure) {
        crate::metrics::error(failure.kind);
        warn!(request = what, kind = failure.kind, error = %failure.message, "request failed");
    }

    async fn chunk_failed(&mut self, id: StreamChunkId, failure: Failure) -> Result<(), Error> {
        self.log_failure("chunk", &failure);
        Stats::inc(&self.service.stats.chunk_failures);
        self.queue(&Frame::ChunkFetchFailure {
            id,
            error: failure.message,
        })
        .await
    }

    /// Appends a small frame to the write buffer, flushing when the batch is large.
    async fn queue(&mut self, frame: &Frame) -> Result<(), Error> {
        wire::encode(frame, &mut self.wbuf);
        if self.wbuf.len() >= WRITE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.send_wbuf(false).await
    }

    /// Sends the body of the frame whose header was just queued: with `sendfile` (zero-copy)
    /// unless the connection is encrypted or the body is at most the configured inline size,
    /// in which case it is read into the write batch.
    async fn send_body(&mut self, file: &File, offset: u64, len: u64) -> Result<(), Error> {
        if self.cipher.is_none()
            && self.tls.is_none()
            && len > self.service.config.inline_body_max_bytes
        {
            return self.send_segment(file, offset, len).await;
        }
        let (mut offset, mut remaining) = (offset, len);
        while remaining > 0 {
            let piece = remaining.min(COPY_PIECE_BYTES as u64) as usize;
            let start = self.wbuf.len();
            self.wbuf.resize(start + piece, 0);
            let mut filled = 0usize;
            while let Some(dst) = self.wbuf.get_mut(start + filled..)
                && !dst.is_empty()
            {
                match file.read_at(dst, offset + filled as u64) {
                    Ok(0) => return Err(Error::FileShrank),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            offset += piece as u64;
            remaining -= piece as u64;
            if self.wbuf.len() >= WRITE_BATCH_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Sends the buffered frames (the last one being a header) with `MSG_MORE`, then the
    /// body with `sendfile`.
    async fn send_segment(&mut self, file: &File, offset: u64, len: u64) -> Result<(), Error> {
        self.send_wbuf(len > 0).await?;
        let (mut offset, mut remaining) = (offset, len);
        while remaining > 0 {
            let step = remaining.min(SENDFILE_MAX_BYTES) as usize;
            let sock = &self.socket;
            let sent = self
                .with_writable(step, || {
                    rustix::fs::sendfile(sock, file, Some(&mut offset), step)
                        .map_err(io::Error::from)
                })
                .await?;
            if sent == 0 {
                return Err(Error::FileShrank);
            }
            remaining -= sent as u64;
        }
        Ok(())
    }

    async fn send_wbuf(&mut self, more: bool) -> Result<(), Error> {
        // TLS first, also when there is nothing else to send (handshake messages, alerts),
        // then the cipher around it (`unwrap_received` says why in that order).
        if let Some(layer) = &mut self.tls {
            layer.seal_in_place(&mut self.wbuf)?;
        }
        if let Some(cipher) = &mut self.cipher
            && !self.wbuf.is_empty()
        {
            self.sealed.clear();
            cipher.seal(&self.wbuf, &mut crate::auth::fill_random, &mut self.sealed)?;
            std::mem::swap(&mut self.wbuf, &mut self.sealed);
        }
        let flags = if more {
            SendFlags::MORE | SendFlags::NOSIGNAL
        } else {
            SendFlags::NOSIGNAL
        };
        let mut written = 0;
        while written < self.wbuf.len() {
            let sock = &self.socket;
            let pending = self.wbuf.get(written..).unwrap_or_default();
            let n = self
                .with_writable(pending.len(), || {
                    rustix::net::send(sock, pending, flags).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            written += n;
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Runs a non-blocking write `op` of `offered` bytes when the socket is writable, retrying
    /// on `EAGAIN`, with the write timeout on every wait. A short write clears the socket's
    /// writable readiness, so the next write waits for the kernel's event instead of failing
    /// with `EAGAIN` first; if no event comes within [`SHORT_WRITE_RECHECK`], the write is
    /// tried anyway (see the module docs).
    async fn with_writable<F>(&self, offered: usize, mut op: F) -> Result<usize, Error>
    where
        F: FnMut() -> io::Result<usize>,
    {
        let limit = self.service.config.write_timeout;
        loop {
            let short = self.short_write.load(Ordering::Relaxed);
            let wait = if short {
                limit.min(SHORT_WRITE_RECHECK)
            } else {
                limit
            };
            match timeout(wait, self.socket.writable()).await {
                Ok(ready) => ready?,
                Err(_) if short => {
                    // No event since the short write. Tried directly: tokio's readiness stays
                    // clear, so the next wait is bounded too until an event comes.
                    match op() {
                        Ok(n) => return Ok(n),
                        // Full after all: the kernel now owes an event.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.short_write.store(false, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                Err(_) => return Err(Error::WriteStalled(limit)),
            }
            self.short_write.store(false, Ordering::Relaxed);
            let mut took = None;
            let attempt = self.socket.try_io(Interest::WRITABLE, || {
                let n = op()?;
                if n > 0 && n < offered {
                    // Reported as `WouldBlock` so that tokio clears the readiness; the count
                    // goes out through `took`.
                    took = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (attempt, took) {
                (_, Some(n)) => {
                    self.short_write.store(true, Ordering::Relaxed);
                    return Ok(n);
                }
                (Ok(n), None) => return Ok(n),
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) if e.kind() == io::ErrorKind::Interrupted => continue,
                (Err(e), None) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick_by_shares;

    #[tokio::test]
    async fn a_connection_gets_no_delay_and_the_configured_congestion_control() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let config = super::Config {
            tcp_congestion_control: Some("reno".to_owned()),
            ..super::Config::new(vec![])
        };
        super::tune(&socket, &config);
        assert!(socket.nodelay().unwrap());
        assert_eq!(
            rustix::net::sockopt::tcp_congestion(&socket).unwrap(),
            "reno"
        );
    }

    /// `pick_by_shares` over `run`, with `shares` given per stream id (0 if not listed).
    fn pick(run: &[i64], keeps_turn: Option<i64>, shares: &[(i64, u64)]) -> Option<(usize, i64)> {
        let of = |id| shares.iter().find(|(s, _)| *s == id).map_or(0, |(_, n)| *n);
        pick_by_shares(run.iter().copied(), keeps_turn, of)
    }

    #[test]
    fn the_stream_with_the_fewest_shares_goes_first_from_its_oldest_request() {
        assert_eq!(pick(&[1, 1, 1, 2, 2], None, &[(1, 3)]), Some((3, 2)));
        assert_eq!(
            pick(&[1, 2, 3, 3, 2], None, &[(1, 3), (2, 2), (3, 1)]),
            Some((2, 3))
        );
        // Equals: the one asked for first; a stream's later requests never beat its first.
        assert_eq!(pick(&[1, 2, 1], None, &[(1, 1), (2, 1)]), Some((0, 1)));
        assert_eq!(pick(&[2, 1, 2, 1], None, &[(1, 0), (2, 1)]), Some((1, 1)));
        assert_eq!(pick(&[7], None, &[]), Some((0, 7)));
        assert_eq!(pick(&[], None, &[]), None);
    }

    #[test]
    fn the_stream_served_last_keeps_its_turn_until_its_share_is_used() {
        // Stream 1 has more shares than the new stream 2, but its share is not used up.
        assert_eq!(pick(&[2, 2, 1, 1], Some(1), &[(1, 4)]), Some((2, 1)));
        // Nothing of it is queued: the fewest shares decide.
        assert_eq!(pick(&[3, 2, 2], Some(1), &[(2, 0), (3, 5)]), Some((1, 2)));
    }
}
