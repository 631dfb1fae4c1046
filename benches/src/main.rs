//! `kshuffle-bench`: the load generator and the side-by-side runner (see the crate docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kshuffle_benches::compare::{self, Options};
use kshuffle_benches::layout::{Layout, LayoutSpec};
use kshuffle_benches::load::{self, LoadSpec};
use kshuffle_benches::{loopback, procstat};

#[derive(Parser)]
#[command(about = "Benchmarks of kshuffled against Spark's Java shuffle service")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Shape {
    /// Map outputs in the layout.
    #[arg(long, default_value_t = 64)]
    maps: u32,
    /// Reduce partitions per map output.
    #[arg(long, default_value_t = 512)]
    reducers: u32,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    block_bytes: u64,
    /// Block size skew (0 = uniform).
    #[arg(long, default_value_t = 0.0)]
    skew: f64,
}

/// The services a run starts, for `compare` and `scale`.
#[derive(clap::Args)]
struct Services {
    /// Work directory (default: a temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The kshuffled binary (default: next to this one).
    #[arg(long)]
    kshuffled: Option<PathBuf>,
    /// SPARK_HOME of the Java service (default: the pinned pyspark venv).
    #[arg(long)]
    spark_home: Option<PathBuf>,
    /// Pinned pyspark version for the Java service.
    #[arg(long, default_value = "4.3.0")]
    spark_version: String,
    /// Without the Java service.
    #[arg(long)]
    no_java: bool,
    /// Extra flag for kshuffled (repeat; e.g. --kshuffled-arg=--inline-body-max-bytes=32768).
    #[arg(long = "kshuffled-arg", allow_hyphen_values = true)]
    kshuffled_args: Vec<String>,
    /// Both services serve TLS (Spark 4's spark.ssl.rpc.enabled: Java's with its
    /// spark.ssl.rpc.* settings, ours with --tls-cert-file) and the load generator speaks
    /// it. Skips the registration workload and curve.
    #[arg(long)]
    tls: bool,
}

impl Services {
    /// Runner options for these services, `secs` per measured run: one repetition of no
    /// workload, no baseline and no Spark session until the caller sets them.
    fn options(self, secs: f64) -> anyhow::Result<Options> {
        let kshuffled = self
            .kshuffled
            .or_else(compare::default_kshuffled)
            .context("no kshuffled next to this binary; build it (cargo build --release -p kshuffle) or pass --kshuffled")?;
        Ok(Options {
            work_dir: self.work_dir,
            kshuffled,
            spark_home: self.spark_home,
            spark_version: self.spark_version,
            workspace: compare::workspace_root(),
            duration: Duration::from_secs_f64(secs),
            reps: 1,
            only: Vec::new(),
            workloads: None,
            registrations: 0,
            no_java: self.no_java,
            baseline: None,
            spark_sessions: 0,
            kshuffled_args: self.kshuffled_args,
            tls: self.tls,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Lay out files under ROOT, register them at ADDR and fetch them for a while.
    Load {
        /// The service.
        #[arg(long)]
        addr: SocketAddr,
        /// A directory under the service's allowed root (or spark.local.dir).
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        shape: Shape,
        /// Client connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Fetch requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// Maps per fetch request.
        #[arg(long, default_value_t = 64)]
        maps_per_request: u32,
        /// Reduce partitions per fetch request.
        #[arg(long, default_value_t = 1)]
        reduces_per_request: u32,
        /// Batch fetch (one chunk per map).
        #[arg(long)]
        batch: bool,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Client threads.
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Stop after this many fetch requests (a fixed amount of work, for profiles that
        /// count syscalls, allocations or instructions per block); `--secs` still bounds it.
        #[arg(long)]
        max_requests: Option<u64>,
        /// SO_RCVBUF of each client connection in bytes, like Spark's
        /// spark.shuffle.io.receiveBuffer (default: the kernel's autotuning, as Spark's).
        #[arg(long)]
        receive_buffer: Option<u32>,
        /// Server pid, to report its CPU and peak RSS.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Start the Java service and kshuffled over the same files and compare them.
    Compare {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Measured runs per service and workload (alternating order); the table shows the
        /// median, so five keep one slow or fast run from deciding a ratio.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only these workloads (small, small-batch, medium, large, register).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Executors in the registration workload.
        #[arg(long, default_value_t = 20_000)]
        registrations: u64,
        #[command(flatten)]
        services: Services,
        /// Another kshuffled binary to compare against instead of the Java service.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Also run the real-Spark test session (jobs.py static) against each service.
        #[arg(long)]
        spark_jobs: bool,
        /// Real-Spark sessions per service with --spark-jobs, the services' order swapped
        /// every round (ours, Java; Java, ours; ...).
        #[arg(long, default_value_t = 2)]
        spark_reps: usize,
    },
    /// Scaling curves: connections 1 → 1,000 and registered executors 10 → 100,000.
    Scale {
        /// Seconds per point.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Connection levels.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        connections: Vec<usize>,
        /// Executors added per level (totals accumulate).
        #[arg(long, value_delimiter = ',', default_value = "10,990,9000,90000")]
        executors: Vec<u64>,
        #[command(flatten)]
        services: Services,
    },
    /// Measure the loopback sendfile limit over a layout under a temp dir.
    Loopback {
        #[command(flatten)]
        shape: Shape,
        /// Connections.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Read and discard instead of verifying.
        #[arg(long)]
        raw: bool,
        /// TCP congestion control of the senders (default: the node's).
        #[arg(long)]
        congestion_control: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Load {
            addr,
            root,
            shape,
            connections,
            inflight,
            maps_per_request,
            reduces_per_request,
            batch,
            secs,
            client_threads,
            max_requests,
            receive_buffer,
            pid,
        } => {
            let layout = Arc::new(Layout::create(&root, "load", 2, layout_spec(&shape))?);
            compare::register_layout(addr, &layout, "app-bench", "0", None)?;
            let spec = LoadSpec {
                connections,
                inflight,
                duration: Duration::from_secs_f64(secs),
                client_threads,
                max_requests,
                receive_buffer,
                ..LoadSpec::new(maps_per_request, reduces_per_request, batch)
            };
            let before = pid.map(procstat::usage).transpose()?;
            if let Some(pid) = pid {
                procstat::reset_peak(pid)?;
            }
            let r = load::run(addr, layout, spec)?;
            println!(
                "{} requests, {} chunks, {} blocks, {} bytes verified in {:.2} s: {:.0} blocks/s, {:.1} MiB/s",
                r.requests,
                r.chunks,
                r.blocks,
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.blocks_per_sec(),
                r.mib_per_sec()
            );
            for (name, l) in [
                ("open→first byte", r.open_to_first_byte),
                ("chunk", r.chunk),
            ] {
                println!(
                    "{name:<16} p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)",
                    l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
                );
            }
            if let (Some(pid), Some(before)) = (pid, before) {
                let after = procstat::usage(pid)?;
                let cpu = after.cpu_secs - before.cpu_secs;
                println!(
                    "server: {cpu:.2} CPU s ({:.2} s/GB), peak RSS {:.1} MiB",
                    cpu / (r.bytes as f64 / 1e9),
                    after.peak_rss as f64 / 1048576.0
                );
            }
        }
        Cmd::Compare {
            secs,
            reps,
            only,
            registrations,
            services,
            baseline,
            spark_jobs,
            spark_reps,
        } => {
            let opts = Options {
                reps: reps.max(1),
                only,
                registrations,
                baseline,
                spark_sessions: if spark_jobs { spark_reps.max(1) } else { 0 },
                ..services.options(secs)?
            };
            let results = compare::run(&opts)?;
            println!("{}", compare::table(&results));
        }
        Cmd::Scale {
            secs,
            connections,
            executors,
            services,
        } => {
            let opts = services.options(secs)?;
            let curves = kshuffle_benches::scale::run(&opts, &connections, &executors)?;
            println!("{}", kshuffle_benches::scale::tables(&curves));
        }
        Cmd::Loopback {
            shape,
            connections,
            secs,
            raw,
            congestion_control,
        } => {
            let tmp = tempfile::tempdir()?;
            let layout = Arc::new(Layout::create(tmp.path(), "loop", 2, layout_spec(&shape))?);
            let r = loopback::run(
                layout,
                connections,
                Duration::from_secs_f64(secs),
                !raw,
                congestion_control.as_deref(),
            )?;
            println!(
                "{} bytes in {:.2} s: {:.1} MiB/s, sender {:.2} CPU s/GB",
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.mib_per_sec(),
                r.sender_cpu_per_gb()
            );
        }
    }
    Ok(())
}

fn layout_spec(shape: &Shape) -> LayoutSpec {
    LayoutSpec {
        maps: shape.maps,
        reducers: shape.reducers,
        block_bytes: shape.block_bytes,
        skew: shape.skew,
        shuffle_id: 1,
    }
}
