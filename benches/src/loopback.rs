//! The loopback limit of this machine for the same bytes: the layout's data files sent with
//! plain `sendfile(2)` over loopback TCP connections, no protocol, to a reader that reads
//! into a buffer as large as the load generator's and (optionally) verifies every block the
//! same way. What a shuffle service can reach at best for large blocks is this figure.
//!
//! The reader asks for the bytes as a fetching client does: pieces of about
//! [`PIECE_BYTES`] (whole partitions, in file order), [`PIECES_IN_FLIGHT`] asked at a time
//! with a one-byte request each, the next asked as soon as one is in. A sender that pushes
//! whole files without being asked is slower (about 4.4 GiB/s against 7-8 here with CUBIC):
//! its bytes pile up in its socket buffer and go out when the reader's ACKs open the
//! window, in the reader's context, so one core does the sending and the receiving of a
//! connection while a server paced by requests sends on its own. Even so the figure moves
//! with thread placement (see [`best`]).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::layout::Layout;
use crate::procstat;

/// Outcome of a loopback run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopbackReport {
    /// Bytes received.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// CPU seconds of the sending threads. Not a floor for a server: bytes a sender leaves
    /// queued in its socket buffer go out when the reader's ACKs open the window, in the
    /// reader's context, with the loopback receive path's softirq work, and how much does
    /// depends on the threads' placement (benches/README.md).
    pub sender_cpu_secs: f64,
}

impl LoopbackReport {
    /// Sender CPU seconds per GB (10^9 bytes).
    pub fn sender_cpu_per_gb(&self) -> f64 {
        self.sender_cpu_secs / (self.bytes as f64 / 1e9).max(1e-12)
    }

    /// MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The best of [`run`] over 1, 2 and 4 connections, each for `duration`, and the number of
/// connections that gave it. On 2 cores the same transfer runs at either of two speeds
/// (4.4 or 7.4 GiB/s over 2 connections with CUBIC here), by where the scheduler puts the
/// threads; the limit is the best the machine did.
///
/// # Errors
/// As [`run`].
pub fn best(
    layout: &Arc<Layout>,
    duration: Duration,
    verify: bool,
    congestion: Option<&str>,
) -> anyhow::Result<(LoopbackReport, usize)> {
    let mut best: Option<(LoopbackReport, usize)> = None;
    for connections in [1, 2, 4] {
        let r = run(
            Arc::clone(layout),
            connections,
            duration,
            verify,
            congestion,
        )?;
        if best.is_none_or(|(b, _)| r.mib_per_sec() > b.mib_per_sec()) {
            best = Some((r, connections));
        }
    }
    best.context("no loopback run")
}

/// Bytes a request asks for at most (whole partitions): a fetch request of the `large`
/// workload (2 blocks of 4 MiB).
pub const PIECE_BYTES: u64 = 8 << 20;
/// Requests each reader keeps in flight, as the `large` workload does.
pub const PIECES_IN_FLIGHT: usize = 4;

/// Sends the data files of `layout` over `connections` loopback connections for about
/// `duration` (at least one piece per connection), piece by piece as the reader asks (see
/// the module docs); the reader verifies every byte when `verify`. The senders use TCP
/// congestion control `congestion` (`None`: the node's default), as a service would on its
/// connections.
///
/// # Errors
/// Socket errors, an algorithm the kernel refuses, or bytes that do not verify.
pub fn run(
    layout: Arc<Layout>,
    connections: usize,
    duration: Duration,
    verify: bool,
    congestion: Option<&str>,
) -> anyhow::Result<LoopbackReport> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let files = Arc::new(layout.data_files()?);
    let connections = connections.max(1).min(files.len().max(1));
    let start = Instant::now();
    let deadline = start + duration;
    let mut threads = Vec::new();
    for c in 0..connections {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        reader.set_nodelay(true)?;
        writer.set_nodelay(true)?;
        if let Some(algorithm) = congestion {
            rustix::net::sockopt::set_tcp_congestion(&writer, algorithm)
                .with_context(|| format!("TCP congestion control {algorithm}"))?;
        }
        let (files, layout_s) = (Arc::clone(&files), Arc::clone(&layout));
        threads.push(std::thread::spawn(move || {
            send(writer, &files, &layout_s, c, connections)
        }));
        let layout = Arc::clone(&layout);
        threads.push(std::thread::spawn(move || {
            receive(reader, &layout, c, connections, deadline, verify)
        }));
    }
    let (mut bytes, mut sender_cpu_secs) = (0, 0.0);
    for (i, t) in threads.into_iter().enumerate() {
        let (n, cpu) = t
            .join()
            .map_err(|_| anyhow::anyhow!("loopback thread panicked"))??;
        if i % 2 == 1 {
            bytes += n;
        } else {
            sender_cpu_secs += cpu;
        }
    }
    Ok(LoopbackReport {
        bytes,
        elapsed: start.elapsed(),
        sender_cpu_secs,
    })
}

/// The pieces connection `c` of `n` carries, in order, cycling over its maps: (map,
/// partitions `start..end`).
fn pieces(layout: &Layout, c: usize, n: usize) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
    let maps = layout.spec.maps;
    let per_piece =
        u32::try_from((PIECE_BYTES / layout.spec.block_bytes.max(1)).max(1)).unwrap_or(u32::MAX);
    let reducers = layout.spec.reducers;
    (c..maps as usize).step_by(n).cycle().flat_map(move |m| {
        (0..reducers)
            .step_by(per_piece as usize)
            .map(move |start| (m as u32, start, (start + per_piece).min(reducers)))
    })
}

/// Serves the reader's requests until it stops asking: for each request byte, the next
/// piece with `sendfile`. Returns (0, its CPU seconds).
fn send(
    mut sock: TcpStream,
    files: &[PathBuf],
    layout: &Layout,
    c: usize,
    n: usize,
) -> anyhow::Result<(u64, f64)> {
    let cpu_before = procstat::thread_cpu_secs()?;
    let open: Vec<std::fs::File> = files
        .iter()
        .map(std::fs::File::open)
        .collect::<Result<_, _>>()?;
    let mut order = pieces(layout, c, n);
    let mut requests = [0u8; 64];

    loop {
        let asked = sock.read(&mut requests)?;
        if asked == 0 {
            break;
        }
        for _ in 0..asked {
            let (m, start, end) = order.next().context("no next piece")?;
            let file = open.get(m as usize).context("no such map")?;
            let mut offset = layout.range_len(m, 0, start);
            let stop = offset + layout.range_len(m, start, end);
            while offset < stop {
                let step = (stop - offset).min(1 << 30) as usize;
                let k = rustix::fs::sendfile(&sock, file, Some(&mut offset), step)
                    .context("sendfile")?;
                ensure!(k > 0, "file shrank");
            }
        }
    }
    let cpu = procstat::thread_cpu_secs()? - cpu_before;
    Ok((0, cpu))
}

/// Asks for pieces until `deadline` and reads them, verifying every byte when `verify`.
/// Returns (bytes received, 0).
fn receive(
    mut sock: TcpStream,
    layout: &Layout,
    c: usize,
    n: usize,
    deadline: Instant,
    verify: bool,
) -> anyhow::Result<(u64, f64)> {
    use std::io::Write;
    let mut buf = vec![0u8; crate::load::READ_CHUNK_BYTES];
    let mut order = pieces(layout, c, n);
    let mut in_flight = std::collections::VecDeque::new();
    let mut ask = |sock: &mut TcpStream, in_flight: &mut std::collections::VecDeque<_>| {
        let (m, start, end) = order.next().context("no next piece")?;
        in_flight.push_back((
            layout.verifier(m, start, end),
            layout.range_len(m, start, end),
        ));
        sock.write_all(&[1])?;
        anyhow::Ok(())
    };
    for _ in 0..PIECES_IN_FLIGHT {
        ask(&mut sock, &mut in_flight)?;
    }
    let mut total = 0u64;
    while !in_flight.is_empty() {
        let k = sock.read(&mut buf)?;
        ensure!(k > 0, "loopback stream ended with pieces in flight");
        total += k as u64;
        let mut data = buf.get(..k).unwrap_or_default();
        while !data.is_empty() {
            let (verifier, left) = in_flight.front_mut().context("bytes nobody asked for")?;
            let take = (*left).min(data.len() as u64) as usize;
            let (piece, more) = data.split_at(take);
            ensure!(
                !verify || verifier.feed(layout, piece),
                "loopback bytes differ"
            );
            *left -= take as u64;
            data = more;
            if *left == 0 {
                in_flight.pop_front();
                if Instant::now() < deadline {
                    ask(&mut sock, &mut in_flight)?;
                }
            }
        }
    }
    sock.shutdown(std::net::Shutdown::Write)?;
    Ok((total, 0.0))
}
