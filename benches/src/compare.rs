//! The side-by-side runner: Spark's Java shuffle service and `kshuffled` started on separate
//! ports over the same files, the same workloads run against each in turn (alternating which
//! goes first), plus the loopback limit of the machine, measured in the same run: in every
//! repetition of the `large` workload the loopback takes a turn with the services (the
//! best of 1, 2 and 4 connections), so the limit and the figures set against it are
//! medians over the same minutes.
//!
//! Every figure is the median over the repetitions (peak RSS: the largest). Server CPU and
//! peak RSS come from `/proc` of each service's process; the peak is reset before each run.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kshuffle::daemon::congestion;

use crate::layout::{Layout, LayoutSpec};
use crate::load::{self, LoadSpec, Report};
use crate::loopback::{self, LoopbackReport};
use crate::procstat;
use crate::register::{self, RegisterReport, RegisterSpec};
use crate::services::{self, Service};
use crate::sparkjobs::{self, SparkRun};

/// Options of a comparison.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where layouts and the Java service's state go (a temp dir if `None`).
    pub work_dir: Option<PathBuf>,
    /// The `kshuffled` binary.
    pub kshuffled: PathBuf,
    /// `SPARK_HOME` of the Java service (the pinned 4.3.0 venv if `None`).
    pub spark_home: Option<PathBuf>,
    /// Spark version of the pinned venv to use when `spark_home` is `None`.
    pub spark_version: String,
    /// The workspace (for `scripts/spark-venv.sh`).
    pub workspace: PathBuf,
    /// Length of one measured run.
    pub duration: Duration,
    /// Measured runs per service and workload.
    pub reps: usize,
    /// Workloads to run (names, or empty for all).
    pub only: Vec<String>,
    /// The workloads [`Options::only`] picks from: [`workloads`] unless set (the test suite
    /// runs the runner on [`tiny_workloads`]).
    pub workloads: Option<Vec<Workload>>,
    /// Executors in the registration workload.
    pub registrations: u64,
    /// Skip the Java service (ours and loopback only).
    pub no_java: bool,
    /// Compare against this other `kshuffled` binary instead of the Java service (A/B of a
    /// change; the ratio column is then new / baseline).
    pub baseline: Option<PathBuf>,
    /// Real-Spark test sessions (`jobs.py static`) per service, 0 for none. The services'
    /// order swaps every round, so neither always goes first (a session runs slower right
    /// after the one before it: its files' writeback, a colder cache for the other JVM's).
    pub spark_sessions: usize,
    /// Extra flags for `kshuffled` (not for a baseline binary).
    pub kshuffled_args: Vec<String>,
    /// Every service serves TLS (Spark 4's `spark.ssl.rpc.enabled`) and the load generator
    /// speaks it ([`crate::tls`]); the registration workload is skipped.
    pub tls: bool,
}

/// One workload: a layout and how to fetch it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Table name.
    pub name: &'static str,
    /// What it models.
    pub about: &'static str,
    /// The files.
    pub layout: LayoutSpec,
    /// The fetches.
    pub load: LoadSpec,
}

/// The standard workloads.
pub fn workloads() -> Vec<Workload> {
    let spec = |maps, reducers, block_bytes, shuffle_id| LayoutSpec {
        maps,
        reducers,
        block_bytes,
        skew: 0.0,
        shuffle_id,
    };
    let load = |mp, rp, batch, connections, inflight| LoadSpec {
        connections,
        inflight,
        ..LoadSpec::new(mp, rp, batch)
    };
    vec![
        Workload {
            name: "small",
            about: "4 KiB blocks, 64 per request, 8 requests in flight x 4 connections",
            layout: spec(64, 512, 4 << 10, 1),
            load: load(64, 1, false, 4, 8),
        },
        Workload {
            name: "small-batch",
            about: "4 KiB blocks, batch fetch: 8 maps x 64 contiguous partitions per request, 8 in flight x 2 connections",
            layout: spec(64, 512, 4 << 10, 1),
            load: load(8, 64, true, 2, 8),
        },
        Workload {
            name: "medium",
            about: "256 KiB blocks, 32 per request (8 MiB), 4 in flight x 2 connections",
            layout: spec(32, 32, 256 << 10, 2),
            load: load(16, 2, false, 2, 4),
        },
        Workload {
            name: "large",
            about: "4 MiB blocks, 2 per request (8 MiB), 4 in flight x 2 connections",
            layout: spec(16, 16, 4 << 20, 3),
            load: LoadSpec {
                client_threads: 2,
                ..load(2, 1, false, 2, 4)
            },
        },
    ]
}

/// [`workloads`] on layouts of a few MiB (same block sizes and request shapes, fewer maps and
/// partitions): for checking that the runner works end to end, never for figures.
pub fn tiny_workloads() -> Vec<Workload> {
    workloads()
        .into_iter()
        .map(|mut w| {
            let (maps, reducers) = if w.layout.block_bytes >= 1 << 20 {
                (2, 2)
            } else {
                (8, 16)
            };
            w.layout.maps = maps;
            w.layout.reducers = reducers;
            w.load.maps_per_request = w.load.maps_per_request.min(maps);
            w.load.reduces_per_request = w.load.reduces_per_request.min(reducers);
            w
        })
        .collect()
}

/// One metric row of the table: its name, how to read it from a [`Summary`], how to print
/// it, and the target.
type Row<'a> = (
    &'a str,
    fn(&Summary) -> f64,
    &'a dyn Fn(f64) -> String,
    &'a str,
);

/// Figures of one service on one workload.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// The load report.
    pub report: Report,
    /// Server CPU seconds during the run.
    pub cpu_secs: f64,
    /// The user-mode part of them.
    pub user_secs: f64,
    /// Server peak RSS during the run.
    pub peak_rss: u64,
}

impl Measured {
    /// Server CPU seconds per GB (10^9 bytes) served.
    pub fn cpu_per_gb(&self) -> f64 {
        self.cpu_secs / self.gb()
    }

    /// Server user-mode CPU seconds per GB served.
    pub fn user_per_gb(&self) -> f64 {
        self.user_secs / self.gb()
    }

    fn gb(&self) -> f64 {
        (self.report.bytes as f64 / 1e9).max(1e-12)
    }
}

/// Runs `load` against `service` (already registered), measuring the server.
///
/// # Errors
/// Load errors and `/proc` failures.
pub fn measure(
    service: &Service,
    layout: &Arc<Layout>,
    load: LoadSpec,
) -> anyhow::Result<Measured> {
    let pid = service.pid();
    procstat::reset_peak(pid)?;
    let before = procstat::usage(pid)?;
    let report = load::run(service.addr, Arc::clone(layout), load)
        .with_context(|| format!("load against {}", service.name))?;
    let after = procstat::usage(pid)?;
    Ok(Measured {
        report,
        cpu_secs: after.cpu_secs - before.cpu_secs,
        user_secs: after.user_secs - before.user_secs,
        peak_rss: after.peak_rss,
    })
}

/// Registers the layout's executor as `app`/`exec` at `addr`.
///
/// # Errors
/// When the service refuses.
pub fn register_layout(
    addr: SocketAddr,
    layout: &Layout,
    app: &str,
    exec: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = match tls {
            None => kshuffle::client::Client::connect(addr).await?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                kshuffle::client::Client::connect_tls(addr, Arc::clone(config), name).await?
            }
        };
        client.register(app, exec, layout.local_dirs(), 64).await?;
        anyhow::Ok(())
    })
    .with_context(|| format!("registering {app}/{exec} at {addr}"))
}

/// The median of `xs`, or `None` when there are none.
fn median_if_any(xs: Vec<f64>) -> Option<f64> {
    (!xs.is_empty()).then(|| median(xs))
}

/// Median of `xs` (the mean of the middle two for an even count; 0 for none).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match (xs.get(n / 2), n % 2) {
        (None, _) => 0.0,
        (Some(&m), 1) => m,
        (Some(&m), _) => (m + xs.get(n / 2 - 1).copied().unwrap_or(m)) / 2.0,
    }
}

/// The figures of one service on one workload, over the repetitions.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Median blocks/s.
    pub blocks_per_sec: f64,
    /// Median MiB/s.
    pub mib_per_sec: f64,
    /// Median p50 open-to-first-byte (µs).
    pub first_p50: f64,
    /// Median p99 open-to-first-byte (µs).
    pub first_p99: f64,
    /// Median p99 chunk latency (µs).
    pub chunk_p99: f64,
    /// Median server CPU s per GB.
    pub cpu_per_gb: f64,
    /// Median server user-mode CPU s per GB.
    pub user_per_gb: f64,
    /// Largest peak RSS (bytes).
    pub peak_rss: f64,
}

impl Summary {
    /// Summarizes runs.
    pub fn of(runs: &[Measured]) -> Self {
        let m = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        Self {
            blocks_per_sec: m(&|r| r.report.blocks_per_sec()),
            mib_per_sec: m(&|r| r.report.mib_per_sec()),
            first_p50: m(&|r| r.report.open_to_first_byte.p50_us as f64),
            first_p99: m(&|r| r.report.open_to_first_byte.p99_us as f64),
            chunk_p99: m(&|r| r.report.chunk.p99_us as f64),
            cpu_per_gb: m(&|r| r.cpu_per_gb()),
            user_per_gb: m(&|r| r.user_per_gb()),
            peak_rss: runs.iter().map(|r| r.peak_rss as f64).fold(0.0, f64::max),
        }
    }
}

/// A registration run and the service's RSS after it (bytes).
pub type Registered = (RegisterReport, u64);

/// Everything one comparison measured.
#[derive(Debug, Default)]
pub struct Results {
    /// Per workload: (workload, ours, Java if run).
    pub fetches: Vec<(Workload, Summary, Option<Summary>)>,
    /// Registration, per shape: (shape, ours, Java), with RSS after (bytes).
    pub registrations: Vec<(&'static str, Registered, Option<Registered>)>,
    /// Loopback with verification (the best of [`Results::loopback_alongside`]), and raw
    /// (at the same connection count), over the large layout, with ours' congestion control.
    pub loopback: Option<(LoopbackReport, LoopbackReport)>,
    /// Loopback with verification with the node's default congestion control (what the
    /// Java service uses), when that is another one.
    pub loopback_system: Option<LoopbackReport>,
    /// Connections of the best loopback run.
    pub loopback_connections: usize,
    /// Loopback figures (verified, ours' congestion control, each the best of 1, 2 and 4
    /// connections) taken in turn with the services' runs of the `large` workload, one per
    /// repetition: the limit over the same minutes as the figures set against it.
    pub loopback_alongside: Vec<LoopbackReport>,
    /// TCP congestion control: (ours, the node's default, which the Java service uses).
    pub congestion: (Option<String>, Option<String>),
    /// Idle RSS after start (ours, Java).
    pub idle_rss: (u64, Option<u64>),
    /// The Java service's name.
    pub java_name: String,
    /// Every fetch went over TLS ([`Options::tls`]).
    pub tls: bool,
    /// Real-Spark sessions in the order they ran, each with its service (0: ours, 1: Java
    /// or the baseline).
    pub spark: Vec<(usize, SparkRun)>,
}

/// Runs the comparison, printing progress to stderr.
///
/// # Errors
/// When a service cannot start or any run fails.
pub fn run(opts: &Options) -> anyhow::Result<Results> {
    let (_tmp, work) = crate::work_dir(opts.work_dir.as_deref(), "kshuffle-bench-")?;
    let root = work.join("root");
    let state = work.join("java-state");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&state)?;
    let selected: Vec<Workload> = opts
        .workloads
        .clone()
        .unwrap_or_else(workloads)
        .into_iter()
        .filter(|w| opts.only.is_empty() || opts.only.iter().any(|o| o == w.name))
        .collect();
    let want_registration =
        !opts.tls && (opts.only.is_empty() || opts.only.iter().any(|o| o == "register"));
    let (tls, ours_args) = crate::tls::for_run(
        opts.tls,
        &work,
        &opts.kshuffled_args,
        "no registration workload",
    )?;
    let tls_client = tls.as_ref().map(|t| Arc::clone(&t.client));
    let want_loopback = selected.iter().any(|w| w.name == "large");

    // Layouts, shared by workloads with the same file shape. Registration alone needs one
    // too (its executors' local dirs): a single small map output.
    let mut layouts: Vec<(LayoutSpec, Arc<Layout>)> = Vec::new();
    if selected.is_empty() && want_registration {
        let spec = LayoutSpec {
            maps: 1,
            reducers: 1,
            block_bytes: 4096,
            skew: 0.0,
            shuffle_id: 0,
        };
        layouts.push((spec, Arc::new(Layout::create(&root, "reg", 2, spec)?)));
    }
    for w in &selected {
        if layouts.iter().any(|(s, _)| *s == w.layout) {
            continue;
        }
        eprintln!(
            "writing layout {} maps x {} partitions x {} B",
            w.layout.maps, w.layout.reducers, w.layout.block_bytes
        );
        let tag = format!("s{}", w.layout.shuffle_id);
        layouts.push((
            w.layout,
            Arc::new(Layout::create(&root, &tag, 2, w.layout)?),
        ));
    }
    let layout_of = |spec: &LayoutSpec| {
        layouts
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, l)| Arc::clone(l))
            .context("layout missing")
    };

    let ours = Service::start_kshuffled(
        &opts.kshuffled,
        &root,
        &work.join("kshuffled-state"),
        &ours_args,
        Duration::from_secs(20),
    )?;
    eprintln!("kshuffled pid {} on {}", ours.pid(), ours.addr);
    let java = if let Some(baseline) = &opts.baseline {
        let state = work.join("baseline-state");
        let baseline_args = tls.as_ref().map_or(&[][..], |t| &t.kshuffled_args[..]);
        let mut b = Service::start_kshuffled(
            baseline,
            &root,
            &state,
            baseline_args,
            Duration::from_secs(20),
        )?;
        b.name = "baseline".into();
        eprintln!("baseline kshuffled pid {} on {}", b.pid(), b.addr);
        Some(b)
    } else if opts.no_java {
        None
    } else {
        let home = match &opts.spark_home {
            Some(h) => h.clone(),
            None => services::spark_home(&opts.workspace, &opts.spark_version)?,
        };
        let name = format!("spark-{}", opts.spark_version);
        let log = work.join("java-service.log");
        let java_opts = tls.as_ref().map_or("", |t| &t.java_opts);
        let java = Service::start_java(
            &home,
            &name,
            &state,
            &root,
            &log,
            java_opts,
            Duration::from_secs(90),
        )?;
        eprintln!("{} pid {} on {}", java.name, java.pid(), java.addr);
        Some(java)
    };
    let services: Vec<&Service> = std::iter::once(&ours).chain(java.as_ref()).collect();
    let mut results = Results {
        java_name: java.as_ref().map(|j| j.name.clone()).unwrap_or_default(),
        idle_rss: (
            procstat::usage(ours.pid())?.rss,
            java.as_ref()
                .map(|j| procstat::usage(j.pid()))
                .transpose()?
                .map(|u| u.rss),
        ),
        congestion: (ours.congestion.clone(), congestion::system_default()),
        tls: opts.tls,
        ..Results::default()
    };
    for s in &services {
        for (_, layout) in &layouts {
            let exec = format!("exec-s{}", layout.spec.shuffle_id);
            register_layout(s.addr, layout, "app-bench", &exec, tls_client.as_ref())?;
        }
    }

    for w in &selected {
        let layout = layout_of(&w.layout)?;
        let load = LoadSpec {
            exec_id: format!("exec-s{}", w.layout.shuffle_id),
            duration: opts.duration,
            tls: tls_client.clone(),
            ..w.load.clone()
        };
        // Warm-up (JIT, page cache), not measured.
        for s in &services {
            let warm = LoadSpec {
                duration: (opts.duration / 2).max(opts.duration.min(Duration::from_secs(1))),
                ..load.clone()
            };
            load::run(s.addr, Arc::clone(&layout), warm)
                .with_context(|| format!("warm-up of {} against {}", w.name, s.name))?;
        }
        // The loopback takes its turns with the services' runs of the large workload (index
        // `services.len()` in the order): each turn the best of 1, 2 and 4 connections (no
        // one count is always the best, and one count runs at either of two speeds).
        let loopback_turn = want_loopback && w.name == "large";
        let cc = results.congestion.0.clone();
        if loopback_turn {
            let warm = opts.duration.min(Duration::from_secs(1));
            loopback::run(Arc::clone(&layout), 2, warm, true, cc.as_deref())?;
        }
        let mut alongside: Vec<(LoopbackReport, usize)> = Vec::new();
        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); services.len()];
        for rep in 0..opts.reps {
            let mut order: Vec<usize> = (0..services.len() + usize::from(loopback_turn)).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let Some(service) = services.get(i) else {
                    let (l, conns) = loopback::best(&layout, opts.duration, true, cc.as_deref())?;
                    eprintln!(
                        "{:<12} {:<12} rep {rep}: {:>8.1} MiB/s verified, best over {conns} connection(s)",
                        w.name,
                        "loopback",
                        l.mib_per_sec()
                    );
                    alongside.push((l, conns));
                    continue;
                };
                let m = measure(service, &layout, load.clone())?;
                eprintln!(
                    "{:<12} {:<12} rep {rep}: {:>10.0} blocks/s {:>8.1} MiB/s p99 first byte {:>6} us, cpu {:.2} s, peak RSS {:.1} MiB",
                    w.name,
                    service.name,
                    m.report.blocks_per_sec(),
                    m.report.mib_per_sec(),
                    m.report.open_to_first_byte.p99_us,
                    m.cpu_secs,
                    m.peak_rss as f64 / 1048576.0
                );
                runs[i].push(m);
            }
        }
        if let Some(&(best, conns)) = alongside
            .iter()
            .max_by(|a, b| a.0.mib_per_sec().total_cmp(&b.0.mib_per_sec()))
        {
            let raw = loopback::run(
                Arc::clone(&layout),
                conns,
                opts.duration,
                false,
                cc.as_deref(),
            )?;
            eprintln!(
                "loopback sendfile ({}): best run {:.1} MiB/s verified ({conns} connection(s)), {:.1} MiB/s raw",
                cc.as_deref().unwrap_or("node's default"),
                best.mib_per_sec(),
                raw.mib_per_sec()
            );
            results.loopback = Some((best, raw));
            results.loopback_connections = conns;
            results.loopback_alongside = alongside.iter().map(|&(l, _)| l).collect();
        }
        let ours_summary = Summary::of(&runs[0]);
        let java_summary = runs.get(1).map(|r| Summary::of(r));
        results
            .fetches
            .push((w.clone(), ours_summary, java_summary));
    }

    if want_loopback
        && results.congestion.0.is_some()
        && results.congestion.0 != results.congestion.1
    {
        let layout = layout_of(
            &selected
                .iter()
                .find(|w| w.name == "large")
                .context("no large")?
                .layout,
        )?;
        let (system, conns) = loopback::best(&layout, opts.duration, true, None)?;
        eprintln!(
            "loopback sendfile (node's default): {:.1} MiB/s verified, {conns} connection(s)",
            system.mib_per_sec()
        );
        results.loopback_system = Some(system);
    }

    if want_registration && opts.registrations > 0 {
        let dirs = layouts
            .first()
            .map(|(_, l)| l.local_dirs())
            .context("no layout for registration dirs")?;
        // Pipelined on a few connections, then one connection per executor (as executors
        // starting on a node register), each service in turn, under a fresh app each.
        let shapes: [(&'static str, usize, usize, bool); 2] = [
            ("pipelined: 4 conns × 32 in flight", 4, 32, false),
            ("one connection each, 128 at a time", 128, 1, true),
        ];
        for (shape, connections, inflight, one_per_connection) in shapes {
            let mut out = Vec::new();
            for s in &services {
                let spec = RegisterSpec {
                    app_id: format!("app-register-{}", results.registrations.len()),
                    count: opts.registrations,
                    local_dirs: dirs.clone(),
                    connections,
                    inflight,
                    one_per_connection,
                    io_timeout: Duration::from_secs(120),
                };
                let r = register::run(s.addr, spec)
                    .with_context(|| format!("registration ({shape}) at {}", s.name))?;
                let rss = procstat::usage(s.pid())?.rss;
                eprintln!(
                    "register     {:<12} {} executors, {shape}: {:.0}/s, p99 {} us, RSS after {:.1} MiB",
                    s.name,
                    r.registered,
                    r.per_sec(),
                    r.latency.p99_us,
                    rss as f64 / 1048576.0
                );
                out.push((r, rss));
            }
            let mut it = out.into_iter();
            if let Some(o) = it.next() {
                results.registrations.push((shape, o, it.next()));
            }
        }
    }
    if opts.spark_sessions > 0 {
        let python = services::spark_venv(&opts.workspace, &opts.spark_version)?.join("bin/python");
        let jobs_py = opts.workspace.join("shuffle/tests/spark/jobs.py");
        'rounds: for round in 0..opts.spark_sessions {
            let mut order: Vec<usize> = (0..services.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let Some(s) = services.get(i) else { continue };
                eprintln!("real-Spark session {} against {} ...", round + 1, s.name);
                let local = root.join(format!("spark-local-{i}-{round}"));
                let before = procstat::usage(s.pid()).ok();
                let run = sparkjobs::run_static(
                    &python,
                    &jobs_py,
                    s.addr.port(),
                    &local,
                    &work.join(format!("spark-scratch-{i}-{round}")),
                );
                // The session's shuffle files go (and their unwritten pages with them), so
                // the next session does not wait behind their writeback.
                let _ = std::fs::remove_dir_all(&local);
                // A failed Spark session is reported, not allowed to discard the other figures.
                let run = match run {
                    Ok(mut run) => {
                        let after = procstat::usage(s.pid()).ok();
                        run.service_cpu_secs =
                            before.zip(after).map(|(b, a)| a.cpu_secs - b.cpu_secs);
                        run
                    }
                    Err(e) => {
                        eprintln!("real-Spark session against {} failed: {e:#}", s.name);
                        break 'rounds;
                    }
                };
                eprintln!(
                    "real-Spark session {} against {}: {:.1} s wall, {:.1} s session",
                    round + 1,
                    s.name,
                    run.wall.as_secs_f64(),
                    run.session_secs
                );
                results.spark.push((i, run));
            }
        }
    }
    Ok(results)
}

fn ratio(ours: f64, java: Option<f64>) -> String {
    match java {
        Some(j) if j > 0.0 => format!("{:.2}", ours / j),
        _ => "-".into(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// The results as a Markdown table (ratios are ours / Java).
pub fn table(r: &Results) -> String {
    let java = if r.java_name.is_empty() {
        "Java"
    } else {
        &r.java_name
    };
    let mut s = String::new();
    if r.tls {
        let _ = writeln!(
            s,
            "Every fetch over TLS (both services serving it; the loopback limit is plain sendfile).\n"
        );
    }
    let _ = writeln!(
        s,
        "| workload | metric | kshuffled | {java} | kshuffled / {java} | target (vs Java) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    let mib = |b: f64| format!("{:.0} MiB", b / 1048576.0);
    let int = |v: f64| format!("{v:.0}");
    // The limit the services' figures are set against: the median of the loopback runs
    // taken in turn with theirs (medians against a median), else the best run.
    let loop_best = r.loopback.map(|(v, _)| v.mib_per_sec());
    let turns: Vec<f64> = r
        .loopback_alongside
        .iter()
        .map(LoopbackReport::mib_per_sec)
        .collect();
    let loop_alongside = median_if_any(turns.clone());
    let loop_limit = loop_alongside.or(loop_best);
    let limit_label = match loop_alongside {
        Some(_) => format!(
            "median of {} turns with the large runs, each the best of 1/2/4 connections",
            turns.len()
        ),
        None => "best of 1/2/4 connections".to_owned(),
    };
    for (w, o, j) in &r.fetches {
        let j = j.as_ref();
        let cpu = |v: f64| format!("{v:.2}");
        let user = |v: f64| format!("{v:.3}");
        let blocks_target = match w.name {
            "small" => ">= 2",
            // 64 partitions per chunk: 256 KiB ranges, bound by the loopback's bandwidth
            // (its row below), which 2x Java's would exceed.
            "small-batch" => "(bandwidth-bound)",
            _ => "",
        };
        let rows: &[Row<'_>] = &[
            ("blocks/s", |x| x.blocks_per_sec, &int, blocks_target),
            (
                "MiB/s",
                |x| x.mib_per_sec,
                &int,
                if w.name == "large" { "> 1" } else { "" },
            ),
            ("open→first byte p50 (µs)", |x| x.first_p50, &int, ""),
            ("open→first byte p99 (µs)", |x| x.first_p99, &int, "<= 0.5"),
            ("chunk p99 (µs)", |x| x.chunk_p99, &int, ""),
            ("server CPU s/GB", |x| x.cpu_per_gb, &cpu, "<= 0.5"),
            (
                "server CPU s/GB in user mode (own code; the rest is the kernel's)",
                |x| x.user_per_gb,
                &user,
                "",
            ),
            ("server peak RSS", |x| x.peak_rss, &mib, "<= 0.1"),
        ];
        for &(metric, get, fmt, target) in rows {
            let (ov, jv) = (get(o), j.map(get));
            let _ = writeln!(
                s,
                "| {} | {metric} | {} | {} | {} | {target} |",
                w.name,
                fmt(ov),
                opt(jv, fmt),
                ratio(ov, jv)
            );
        }
        // One row of each service's throughput as a share of loopback figure `l`.
        let percent_row = |metric: String, l: f64, target: &str| {
            let percent = |v: f64| format!("{:.0}%", 100.0 * v / l);
            format!(
                "| {} | {metric} | {} | {} | | {target} |\n",
                w.name,
                percent(o.mib_per_sec),
                opt(j.map(|j| j.mib_per_sec), percent)
            )
        };
        if w.name != "small"
            && let Some(l) = loop_limit
        {
            s.push_str(&percent_row(
                format!("% of loopback (sendfile, verified, {limit_label}: {l:.0} MiB/s)"),
                l,
                if w.name == "large" { "ours >= 90%" } else { "" },
            ));
        }
        if w.name == "large"
            && loop_alongside.is_some()
            && let Some(l) = loop_best
        {
            s.push_str(&percent_row(
                format!("% of the best loopback turn ({l:.0} MiB/s)"),
                l,
                "",
            ));
        }
    }
    let (ours_cc, node_cc) = &r.congestion;
    let cc_name = |cc: &Option<String>| cc.clone().unwrap_or_else(|| "node's default".into());
    let _ = writeln!(
        s,
        "| TCP | congestion control | {} | {} (the node's default) | | |",
        cc_name(ours_cc),
        cc_name(node_cc)
    );
    if let Some(l) = loop_alongside {
        let spread = turns
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let _ = writeln!(
            s,
            "| loopback | sendfile → read+verify, {}, {limit_label} (MiB/s; range {:.0}-{:.0}) | {l:.0} | | | |",
            cc_name(ours_cc),
            spread.0,
            spread.1
        );
    }
    if let Some((v, raw)) = r.loopback {
        let _ = writeln!(
            s,
            "| loopback | sendfile → read+verify, {}, the best turn ({} connections) (MiB/s) | {:.0} | | | |",
            cc_name(ours_cc),
            r.loopback_connections,
            v.mib_per_sec()
        );
        if let Some(system) = r.loopback_system {
            let _ = writeln!(
                s,
                "| loopback | the same with the node's default, {}, best of 1/2/4 (MiB/s) | {:.0} | | | |",
                cc_name(node_cc),
                system.mib_per_sec()
            );
        }
        let _ = writeln!(
            s,
            "| loopback | sendfile → read, discard, {} connection(s) (MiB/s) | {:.0} | | | |",
            r.loopback_connections,
            raw.mib_per_sec()
        );
        let _ = writeln!(
            s,
            "| loopback | sendfile sender CPU s/GB (much of the sending can run in the reader's context, as its ACKs open the window: not a floor for a server) | {:.2} | | | |",
            v.sender_cpu_per_gb()
        );
    }
    for (shape, (o, orss), j) in &r.registrations {
        let j = j.as_ref();
        let what = format!("register {} executors, {shape}", o.registered);
        let _ = writeln!(
            s,
            "| {what} | registrations/s | {:.0} | {} | {} | |",
            o.per_sec(),
            opt(j.map(|(j, _)| j.per_sec()), int),
            ratio(o.per_sec(), j.map(|(j, _)| j.per_sec()))
        );
        let _ = writeln!(
            s,
            "| {what} | p99 latency (µs) | {} | {} | {} | |",
            o.latency.p99_us,
            opt(j.map(|(j, _)| j.latency.p99_us as f64), int),
            ratio(
                o.latency.p99_us as f64,
                j.map(|(j, _)| j.latency.p99_us as f64)
            )
        );
        let _ = writeln!(
            s,
            "| {what} | RSS after | {} | {} | {} | |",
            mib(*orss as f64),
            opt(j.map(|(_, r)| *r as f64), mib),
            ratio(*orss as f64, j.map(|(_, r)| *r as f64))
        );
    }
    let sessions = |service: usize| -> Vec<&SparkRun> {
        r.spark
            .iter()
            .filter(|(i, _)| *i == service)
            .map(|(_, run)| run)
            .collect()
    };
    let (ours, theirs) = (sessions(0), sessions(1));
    if !ours.is_empty() {
        // Medians over each service's sessions, per job as well.
        let wall = |runs: &[&SparkRun]| median(runs.iter().map(|x| x.wall.as_secs_f64()).collect());
        let job = |runs: &[&SparkRun], name: &str| {
            let found: Vec<_> = runs
                .iter()
                .filter_map(|x| x.jobs.iter().find(|(n, _, _)| n == name))
                .collect();
            let failed = found.iter().any(|(_, _, err)| err.is_some());
            let times = found.iter().map(|(_, secs, _)| *secs).collect();
            (!found.is_empty()).then(|| (median(times), failed))
        };
        let j = (!theirs.is_empty()).then(|| wall(&theirs));
        let _ = writeln!(
            s,
            "| real Spark (jobs.py static, median of {} / {} sessions) | session wall time (s) | {:.1} | {} | {} | |",
            ours.len(),
            theirs.len(),
            wall(&ours),
            opt(j, |v| format!("{v:.1}")),
            ratio(wall(&ours), j)
        );
        let cpu = |runs: &[&SparkRun]| {
            median_if_any(runs.iter().filter_map(|x| x.service_cpu_secs).collect())
        };
        if let Some(o) = cpu(&ours) {
            let j = cpu(&theirs);
            let _ = writeln!(
                s,
                "| real Spark (jobs.py static) | service CPU during the session (s) | {o:.2} | {} | {} | |",
                opt(j, |v| format!("{v:.2}")),
                ratio(o, j)
            );
        }
        let mark = |failed: bool| if failed { " (failed)" } else { "" };
        let names = ours
            .first()
            .map(|x| x.jobs.iter().map(|(n, _, _)| n.as_str()));
        for name in names.into_iter().flatten() {
            let Some((secs, failed)) = job(&ours, name) else {
                continue;
            };
            let js = job(&theirs, name);
            let _ = writeln!(
                s,
                "| real Spark (jobs.py static) | job {name} (s) | {secs:.1}{} | {} | {} | |",
                mark(failed),
                js.map(|(v, f)| format!("{v:.1}{}", mark(f)))
                    .unwrap_or_else(|| "-".into()),
                ratio(secs, js.map(|(v, _)| v))
            );
        }
        let phase = |runs: &[&SparkRun], name: &str| {
            median_if_any(
                runs.iter()
                    .filter_map(|x| x.phases.iter().find(|(n, _)| n == name).map(|(_, s)| *s))
                    .collect(),
            )
        };
        let names = ours
            .first()
            .map(|x| x.phases.iter().map(|(n, _)| n.as_str()));
        for name in names.into_iter().flatten() {
            let Some(secs) = phase(&ours, name) else {
                continue;
            };
            let js = phase(&theirs, name);
            let _ = writeln!(
                s,
                "| real Spark (jobs.py static) | {} (s) | {secs:.1} | {} | {} | |",
                name.replace('_', " "),
                opt(js, |v| format!("{v:.1}")),
                ratio(secs, js)
            );
        }
    }
    let (oi, ji) = r.idle_rss;
    let _ = writeln!(
        s,
        "| idle | RSS after start | {} | {} | {} | |",
        mib(oi as f64),
        opt(ji.map(|v| v as f64), mib),
        ratio(oi as f64, ji.map(|v| v as f64))
    );
    s
}

/// `kshuffled` next to the running binary (`target/<profile>/`), if it is there.
pub fn default_kshuffled() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("kshuffled");
    candidate.exists().then_some(candidate)
}

/// The workspace root of this crate (`benches/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 9.0]), 3.0);
    }

    fn session(wall: f64, jobs: &[(&str, f64)]) -> SparkRun {
        SparkRun {
            wall: Duration::from_secs_f64(wall),
            session_secs: wall - 5.0,
            jobs: jobs
                .iter()
                .map(|(n, s)| ((*n).to_owned(), *s, None))
                .collect(),
            phases: vec![("executors_up".to_owned(), wall / 5.0)],
            // A tenth of the wall time, so each session's figure is its own.
            service_cpu_secs: Some(wall / 10.0),
        }
    }

    #[test]
    fn spark_rows_are_medians_of_each_services_sessions_whatever_the_order() {
        let results = Results {
            // Rounds alternate: ours first, then the other first.
            spark: vec![
                (0, session(50.0, &[("sort", 10.0)])),
                (1, session(40.0, &[("sort", 8.0)])),
                (1, session(44.0, &[("sort", 9.0)])),
                (0, session(54.0, &[("sort", 12.0)])),
            ],
            ..Results::default()
        };
        let table = table(&results);
        let row = |prefix: &str| {
            table
                .lines()
                .find(|l| l.contains(prefix))
                .unwrap_or_else(|| panic!("no {prefix} row in\n{table}"))
                .to_owned()
        };
        assert_eq!(
            row("session wall time"),
            "| real Spark (jobs.py static, median of 2 / 2 sessions) | session wall time (s) | 52.0 | 42.0 | 1.24 | |"
        );
        assert_eq!(
            row("job sort"),
            "| real Spark (jobs.py static) | job sort (s) | 11.0 | 8.5 | 1.29 | |"
        );
        assert_eq!(
            row("service CPU"),
            "| real Spark (jobs.py static) | service CPU during the session (s) | 5.20 | 4.20 | 1.24 | |"
        );
        assert_eq!(
            row("executors up"),
            "| real Spark (jobs.py static) | executors up (s) | 10.4 | 8.4 | 1.24 | |"
        );
    }
}
