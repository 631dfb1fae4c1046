//! The loopback limit of this machine for the same bytes: the layout's data files sent with
//! plain `sendfile(2)` over loopback TCP connections, no protocol, to a reader that reads
//! into the same 256 KiB buffer as the load generator and (optionally) verifies every block
//! the same way. What a shuffle service can reach at best for large blocks is this figure.

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
    /// CPU seconds of the sending threads. Not a floor for a server: these senders always
    /// have more to send than the reader's window takes, so the bytes queue in their socket
    /// buffers and go out when the reader's ACKs open the window, in the reader's context,
    /// with the loopback receive path's softirq work. A server paced by requests sends into
    /// an open window and runs that path itself (README, Benchmarks, "What is met").
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

/// Sends whole data files of `layout` over `connections` loopback connections for about
/// `duration` (at least one file per connection); the reader verifies every byte when
/// `verify`. The senders use TCP congestion control `congestion` (`None`: the node's
/// default), as a service would on its connections.
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
    let connections = connections.max(1);
    let start = Instant::now();
    let deadline = start + duration;
    let mut threads = Vec::new();
    for c in 0..connections {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        if let Some(algorithm) = congestion {
            rustix::net::sockopt::set_tcp_congestion(&writer, algorithm)
                .with_context(|| format!("TCP congestion control {algorithm}"))?;
        }
        let files = Arc::clone(&files);
        threads.push(std::thread::spawn(move || {
            send(writer, &files, c, connections, deadline)
        }));
        let layout = Arc::clone(&layout);
        threads.push(std::thread::spawn(move || {
            receive(reader, &layout, c, connections, verify)
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

/// The maps connection `c` of `n` carries, in order, cycling.
fn maps(c: usize, n: usize, maps: usize) -> impl Iterator<Item = usize> {
    (c..maps).step_by(n).cycle()
}

fn send(
    sock: TcpStream,
    files: &[PathBuf],
    c: usize,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<(u64, f64)> {
    let mut sent = 0;
    if c >= files.len() {
        return Ok((0, 0.0));
    }
    let cpu_before = procstat::thread_cpu_secs()?;
    for (i, m) in maps(c, n, files.len()).enumerate() {
        if i > 0 && Instant::now() >= deadline {
            break;
        }
        let file = std::fs::File::open(&files[m])?;
        let len = file.metadata()?.len();
        let mut offset = 0u64;
        while offset < len {
            let step = (len - offset).min(1 << 30) as usize;
            let k =
                rustix::fs::sendfile(&sock, &file, Some(&mut offset), step).context("sendfile")?;
            ensure!(k > 0, "file shrank");
            sent += k as u64;
        }
    }
    let cpu = procstat::thread_cpu_secs()? - cpu_before;
    sock.shutdown(std::net::Shutdown::Write)?;
    Ok((sent, cpu))
}

fn receive(
    mut sock: TcpStream,
    layout: &Layout,
    c: usize,
    n: usize,
    verify: bool,
) -> anyhow::Result<(u64, f64)> {
    let reducers = layout.spec.reducers;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let n_maps = layout.spec.maps as usize;
    if c >= n_maps {
        return Ok((0, 0.0));
    }
    let mut order = maps(c, n, n_maps);
    let mut current = None;
    loop {
        let k = sock.read(&mut buf)?;
        if k == 0 {
            ensure!(current.is_none(), "loopback stream ended inside a file");
            return Ok((total, 0.0));
        }
        total += k as u64;
        if !verify {
            continue;
        }
        let mut data = &buf[..k];
        while !data.is_empty() {
            let (m, v, left) = match current.take() {
                Some(state) => state,
                None => {
                    let m = order.next().context("no next map")? as u32;
                    (
                        m,
                        layout.verifier(m, 0, reducers),
                        layout.range_len(m, 0, reducers),
                    )
                }
            };
            let mut v = v;
            let take = (left.min(data.len() as u64)) as usize;
            ensure!(v.feed(layout, &data[..take]), "loopback bytes differ");
            data = &data[take..];
            let left = left - take as u64;
            if left > 0 {
                current = Some((m, v, left));
            }
        }
    }
}
