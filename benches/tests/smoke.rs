//! The load generator, the registration driver and the loopback measurement work end to end
//! on a tiny layout against an in-process `kshuffle` server, and the side-by-side runner
//! (`kshuffle-bench compare`) and the scaling curves (`kshuffle-bench scale`) work over the
//! real `kshuffled` binary, started and waited for exactly as `scripts/bench.sh` does. No figures are asserted: only that every block
//! arrived, verified, and the reports add up. (The Java service is the bench command's
//! business, never the tests': the runner is checked with `--baseline`, our binary twice.)
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kshuffle::registry::MemoryRegistry;
use kshuffle::{Config, Server};
use kshuffle_benches::compare::{self, Options, register_layout};
use kshuffle_benches::layout::{Layout, LayoutSpec};
use kshuffle_benches::load::{self, LoadSpec};
use kshuffle_benches::register::{self, RegisterSpec};
use kshuffle_benches::{loopback, procstat, scale};
use tokio_util::sync::CancellationToken;

/// Serves `root` on a background runtime until the token is cancelled.
fn serve(root: &std::path::Path) -> (SocketAddr, CancellationToken, std::thread::JoinHandle<()>) {
    let server = Server::new(
        Config::new(vec![root.to_path_buf()]),
        Arc::new(MemoryRegistry::new()),
    )
    .unwrap();
    let token = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = token.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server.run(listener, stop).await;
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (addr, token, thread)
}

#[test]
fn tiny_layout_fetched_and_verified_every_way() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let spec = LayoutSpec {
        maps: 5,
        reducers: 7,
        block_bytes: 3000,
        skew: 2.0,
        shuffle_id: 4,
    };
    let layout = Arc::new(Layout::create(&root, "smoke", 2, spec).unwrap());
    let (addr, token, thread) = serve(&root);
    register_layout(addr, &layout, "app-bench", "0", None).unwrap();

    // 2 maps x 3 partitions per request: 3 x 3 requests cover the grid exactly once (edges
    // included), so the bytes must add up to the layout's. The batch run reads through a
    // tiny receive buffer (`--receive-buffer`): many short reads, the same bytes.
    for (batch, receive_buffer) in [(false, None), (true, Some(4096))] {
        let run = LoadSpec {
            connections: 2,
            inflight: 2,
            max_requests: Some(9),
            duration: Duration::from_secs(120),
            receive_buffer,
            ..LoadSpec::new(2, 3, batch)
        };
        let r = load::run(addr, Arc::clone(&layout), run).unwrap();
        assert_eq!(r.requests, 9, "batch={batch}");
        assert_eq!(r.blocks, 35, "batch={batch}");
        assert_eq!(r.bytes, spec.total_bytes(), "batch={batch}");
        let chunks = if batch { 15 } else { 35 };
        assert_eq!(r.chunks, chunks, "batch={batch}");
        assert_eq!(r.open_to_first_byte.count, 9);
        assert_eq!(r.chunk.count, chunks);
        assert!(r.chunk.p50_us <= r.chunk.p99_us && r.chunk.p99_us <= r.chunk.max_us);
        assert!(r.blocks_per_sec() > 0.0 && r.mib_per_sec() > 0.0);
    }

    // A fetch of an unregistered executor fails the run instead of reporting a figure.
    let unknown = LoadSpec {
        exec_id: "nobody".into(),
        max_requests: Some(1),
        ..LoadSpec::new(1, 1, false)
    };
    let err = load::run(addr, Arc::clone(&layout), unknown).unwrap_err();
    assert!(format!("{err:#}").contains("failed"), "{err:#}");

    // Pipelined, then one connection per executor.
    for (app, one_per_connection) in [("app-many", false), ("app-fresh", true)] {
        let reg = register::run(
            addr,
            RegisterSpec {
                app_id: app.into(),
                count: 50,
                local_dirs: layout.local_dirs(),
                connections: 2,
                inflight: 4,
                one_per_connection,
                io_timeout: Duration::from_secs(60),
            },
        )
        .unwrap();
        assert_eq!((reg.registered, reg.latency.count), (50, 50), "{app}");
    }

    // With no time to run, each reader gets the pieces it asked for first, verified: 4
    // whole files (a piece is up to 8 MiB of whole partitions), cycling over its maps,
    // 0, 2, 4, 0 and 1, 3, 1, 3.
    assert_eq!(loopback::PIECES_IN_FLIGHT, 4);
    let lo = loopback::run(Arc::clone(&layout), 2, Duration::ZERO, true, Some("reno")).unwrap();
    let file = |m: u32| layout.range_len(m, 0, 7);
    assert_eq!(
        lo.bytes,
        2 * file(0) + file(2) + file(4) + 2 * file(1) + 2 * file(3)
    );

    let me = procstat::usage(std::process::id()).unwrap();
    assert!(me.peak_rss > 0);

    token.cancel();
    thread.join().unwrap();
}

/// The `kshuffled` binary of this build: `KSHUFFLED`, or `target/<profile>/kshuffled` next to
/// this test's `deps/` directory (built with the workspace, e.g. by
/// `cargo nextest run --workspace`).
fn kshuffled_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("KSHUFFLED") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("kshuffled");
    assert!(
        path.exists(),
        "{} is missing: build the whole workspace (cargo nextest run --workspace builds it) \
         or set KSHUFFLED",
        path.display()
    );
    path
}

#[test]
fn runner_drives_the_real_kshuffled_binary_on_tiny_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = kshuffled_binary();
    let opts = Options {
        work_dir: Some(tmp.path().to_path_buf()),
        kshuffled: binary.clone(),
        spark_home: None,
        spark_version: "4.3.0".into(),
        workspace: compare::workspace_root(),
        duration: Duration::from_millis(200),
        reps: 1,
        only: Vec::new(),
        workloads: Some(compare::tiny_workloads()),
        registrations: 20,
        no_java: true,
        // Our binary against itself: both go through the runner's start-up (flags, log
        // filter, `listening` event), registration and measurement, as the Java service
        // would (but without it).
        baseline: Some(binary),
        spark_sessions: 0,
        kshuffled_args: Vec::new(),
        tls: false,
    };
    let results = compare::run(&opts).unwrap();

    let names: Vec<&str> = results.fetches.iter().map(|(w, ..)| w.name).collect();
    assert_eq!(names, ["small", "small-batch", "medium", "large"]);
    for (w, ours, baseline) in &results.fetches {
        let baseline = baseline.as_ref().unwrap();
        for s in [ours, baseline] {
            assert!(s.blocks_per_sec > 0.0 && s.mib_per_sec > 0.0, "{}", w.name);
            assert!(s.first_p50 <= s.first_p99, "{}", w.name);
            // Figures of the service's own process, read from /proc.
            assert!(s.peak_rss > 0.0 && s.cpu_per_gb >= 0.0, "{}", w.name);
        }
    }
    let (verified, raw) = results.loopback.unwrap();
    assert!(verified.bytes > 0 && raw.bytes > 0);
    // One loopback run in turn with the services' runs of the large workload per repetition.
    assert_eq!(results.loopback_alongside.len(), opts.reps);
    assert!(results.loopback_alongside.iter().all(|l| l.bytes > 0));
    assert_eq!(results.registrations.len(), 2);
    for (shape, (ours, ours_rss), baseline) in &results.registrations {
        let (theirs, _) = baseline.as_ref().unwrap();
        assert_eq!((ours.registered, theirs.registered), (20, 20), "{shape}");
        assert!(*ours_rss > 0);
    }
    assert!(results.idle_rss.0 > 0 && results.idle_rss.1.is_some_and(|r| r > 0));

    let table = compare::table(&results);
    for row in [
        "| small | blocks/s |",
        "| large | % of loopback (sendfile, verified, median of 1 turns with the large runs",
        "| large | % of the best loopback turn",
        "| small-batch | % of loopback",
        "| register 20 executors, pipelined: 4 conns × 32 in flight | registrations/s |",
        "| register 20 executors, one connection each, 128 at a time | registrations/s |",
        "| idle | RSS after start |",
    ] {
        assert!(table.contains(row), "no `{row}` row in\n{table}");
    }
}

/// `compare --tls`: both services (here our binary and itself as the baseline) get a
/// certificate and serve TLS, registration and every fetch go over it, bytes verified.
#[test]
fn the_runner_speaks_tls_with_the_real_kshuffled_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = kshuffled_binary();
    let opts = Options {
        work_dir: Some(tmp.path().to_path_buf()),
        kshuffled: binary.clone(),
        spark_home: None,
        spark_version: "4.3.0".into(),
        workspace: compare::workspace_root(),
        duration: Duration::from_millis(200),
        reps: 1,
        only: vec!["small".into(), "large".into()],
        workloads: Some(compare::tiny_workloads()),
        registrations: 20,
        no_java: true,
        baseline: Some(binary),
        spark_sessions: 0,
        kshuffled_args: Vec::new(),
        tls: true,
    };
    let results = compare::run(&opts).unwrap();
    let names: Vec<&str> = results.fetches.iter().map(|(w, ..)| w.name).collect();
    assert_eq!(names, ["small", "large"]);
    for (w, ours, baseline) in &results.fetches {
        for s in [ours, baseline.as_ref().unwrap()] {
            assert!(s.blocks_per_sec > 0.0 && s.mib_per_sec > 0.0, "{}", w.name);
        }
    }
    assert!(
        results.registrations.is_empty(),
        "no registration workload over TLS"
    );
    let table = compare::table(&results);
    // (Both binaries were started with --tls-cert-file, which makes TLS required, and the
    // client completes a verified handshake before every request: the run succeeding means
    // every byte went over TLS.)
    assert!(table.starts_with("Every fetch over TLS"), "{table}");
}

#[test]
fn scaling_curves_run_over_the_real_kshuffled_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        work_dir: Some(tmp.path().to_path_buf()),
        kshuffled: kshuffled_binary(),
        spark_home: None,
        spark_version: "4.3.0".into(),
        workspace: compare::workspace_root(),
        duration: Duration::from_millis(200),
        reps: 1,
        only: Vec::new(),
        workloads: Some(compare::tiny_workloads()),
        registrations: 0,
        no_java: true,
        baseline: None,
        spark_sessions: 0,
        kshuffled_args: Vec::new(),
        tls: false,
    };
    let curves = scale::run(&opts, &[1, 3], &[5, 10]).unwrap();
    assert_eq!(curves.names, ["kshuffled"]);
    let conns: Vec<usize> = curves.connections.iter().map(|p| p.connections).collect();
    assert_eq!(conns, [1, 3]);
    for p in &curves.connections {
        let m = &p.measured[0];
        assert!(
            m.report.blocks > 0 && m.peak_rss > 0,
            "{} connections",
            p.connections
        );
    }
    // Registrations accumulate level by level.
    let totals: Vec<u64> = curves.executors.iter().map(|p| p.total).collect();
    assert_eq!(totals, [5, 15]);
    for p in &curves.executors {
        let (per_sec, rss, blocks_per_sec) = p.measured[0];
        assert!(
            per_sec > 0.0 && rss > 0 && blocks_per_sec > 0.0,
            "{} executors",
            p.total
        );
    }
    let tables = scale::tables(&curves);
    assert!(tables.contains("| 3 | "), "{tables}");
    assert!(tables.contains("| 15 | "), "{tables}");
}
