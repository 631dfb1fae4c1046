//! Scaling curves: throughput, tail latency and server memory as client connections grow
//! (1 → 1,000) and as registered executors grow (10 → 100,000), for `kshuffled` and the Java
//! service side by side (same machinery and files as [`crate::compare`]).
//!
//! Connections: the small-block workload (4 KiB blocks, 64 per request) with 2 requests in
//! flight per connection. Executors: registrations are added level by level (each level a
//! new app of that many executors, so the totals accumulate), then the small-block workload
//! runs once more on one connection to show whether lookups bend.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::compare::{self, Measured, Options, register_layout};
use crate::layout::{Layout, LayoutSpec};
use crate::load::LoadSpec;
use crate::procstat;
use crate::register::{self, RegisterSpec};
use crate::services::{self, Service};

/// One point of the connection curve, per service.
#[derive(Debug, Clone)]
pub struct ConnPoint {
    /// Client connections.
    pub connections: usize,
    /// Per service, in start order.
    pub measured: Vec<Measured>,
}

/// One point of the executor curve, per service.
#[derive(Debug, Clone)]
pub struct ExecPoint {
    /// Executors registered so far.
    pub total: u64,
    /// Per service: (registrations/s of this level, RSS after, blocks/s after).
    pub measured: Vec<(f64, u64, f64)>,
}

/// Both curves and the service names.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    /// Service names, in start order.
    pub names: Vec<String>,
    /// Connection curve.
    pub connections: Vec<ConnPoint>,
    /// Executor curve.
    pub executors: Vec<ExecPoint>,
}

/// Runs both curves at the given levels.
///
/// # Errors
/// When a service cannot start or a run fails.
pub fn run(opts: &Options, connections: &[usize], executors: &[u64]) -> anyhow::Result<Curves> {
    let (_tmp, work) = crate::work_dir(opts.work_dir.as_deref(), "kshuffle-scale-")?;
    let root = work.join("root");
    std::fs::create_dir_all(&root)?;
    // The small workload's files ([`Options::workloads`] shrinks them for the smoke test).
    let spec = opts
        .workloads
        .as_ref()
        .and_then(|w| w.iter().find(|w| w.name == "small"))
        .map_or(
            LayoutSpec {
                maps: 64,
                reducers: 512,
                block_bytes: 4 << 10,
                skew: 0.0,
                shuffle_id: 1,
            },
            |w| w.layout,
        );
    eprintln!("writing layout");
    let layout = Arc::new(Layout::create(&root, "scale", 2, spec)?);
    let (tls, ours_args) =
        crate::tls::for_run(opts.tls, &work, &opts.kshuffled_args, "no executors curve")?;
    let tls_client = tls.as_ref().map(|t| Arc::clone(&t.client));
    let mut services = vec![Service::start_kshuffled(
        &opts.kshuffled,
        &root,
        &work.join("kshuffled-state"),
        &ours_args,
        Duration::from_secs(20),
    )?];
    if !opts.no_java {
        let home = match &opts.spark_home {
            Some(h) => h.clone(),
            None => services::spark_home(&opts.workspace, &opts.spark_version)?,
        };
        let state = work.join("java-state");
        std::fs::create_dir_all(&state)?;
        services.push(Service::start_java(
            &home,
            &format!("spark-{}", opts.spark_version),
            &state,
            &root,
            &work.join("java-service.log"),
            tls.as_ref().map_or("", |t| &t.java_opts),
            Duration::from_secs(90),
        )?);
    }
    let mut curves = Curves {
        names: services.iter().map(|s| s.name.clone()).collect(),
        ..Curves::default()
    };
    for s in &services {
        register_layout(s.addr, &layout, "app-bench", "0", tls_client.as_ref())?;
    }
    let small = |connections: usize, secs: Duration| LoadSpec {
        connections,
        inflight: 2,
        duration: secs,
        io_timeout: Duration::from_secs(120),
        tls: tls_client.clone(),
        ..LoadSpec::new(64, 1, false)
    };
    // Warm-up.
    for s in &services {
        compare::measure(
            s,
            &layout,
            small(4, opts.duration.min(Duration::from_secs(2))),
        )?;
    }
    for &c in connections {
        let mut measured = Vec::new();
        for s in &services {
            let m = compare::measure(s, &layout, small(c, opts.duration))?;
            eprintln!(
                "{c:>5} connections {:<12} {:>9.0} blocks/s p99 first byte {:>7} us peak RSS {:.1} MiB",
                s.name,
                m.report.blocks_per_sec(),
                m.report.open_to_first_byte.p99_us,
                m.peak_rss as f64 / 1048576.0
            );
            measured.push(m);
        }
        curves.connections.push(ConnPoint {
            connections: c,
            measured,
        });
    }
    let mut total = 0;
    let executors = if opts.tls { &[][..] } else { executors };
    for (level, &n) in executors.iter().enumerate() {
        total += n;
        let mut measured = Vec::new();
        for s in &services {
            let r = register::run(
                s.addr,
                RegisterSpec {
                    app_id: format!("app-scale-{level}"),
                    count: n,
                    local_dirs: layout.local_dirs(),
                    connections: 4,
                    inflight: 32,
                    one_per_connection: false,
                    io_timeout: Duration::from_secs(300),
                },
            )?;
            let rss = procstat::usage(s.pid())?.rss;
            let m = compare::measure(s, &layout, small(1, opts.duration))?;
            eprintln!(
                "{total:>7} executors {:<12} {:>8.0} registrations/s RSS {:.1} MiB, then {:.0} blocks/s",
                s.name,
                r.per_sec(),
                rss as f64 / 1048576.0,
                m.report.blocks_per_sec()
            );
            measured.push((r.per_sec(), rss, m.report.blocks_per_sec()));
        }
        curves.executors.push(ExecPoint { total, measured });
    }
    Ok(curves)
}

/// The curves as Markdown tables.
pub fn tables(c: &Curves) -> String {
    let mut s = String::new();
    let names = c.names.join(" / ");
    let _ = writeln!(
        s,
        "| connections | blocks/s ({names}) | p99 open→first byte ms ({names}) | peak RSS MiB ({names}) |"
    );
    let _ = writeln!(s, "|---:|---|---|---|");
    for p in &c.connections {
        let col = |f: &dyn Fn(&Measured) -> String| {
            p.measured.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            p.connections,
            col(&|m| format!("{:.0}", m.report.blocks_per_sec())),
            col(&|m| format!("{:.1}", m.report.open_to_first_byte.p99_us as f64 / 1000.0)),
            col(&|m| format!("{:.0}", m.peak_rss as f64 / 1048576.0)),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| registered executors | registrations/s ({names}) | RSS MiB ({names}) | blocks/s after, 1 connection ({names}) |"
    );
    let _ = writeln!(s, "|---:|---|---|---|");
    for p in &c.executors {
        let col = |f: &dyn Fn(&(f64, u64, f64)) -> String| {
            p.measured.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            p.total,
            col(&|m| format!("{:.0}", m.0)),
            col(&|m| format!("{:.0}", m.1 as f64 / 1048576.0)),
            col(&|m| format!("{:.0}", m.2)),
        );
    }
    s
}
