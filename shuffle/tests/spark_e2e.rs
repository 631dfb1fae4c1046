//! End to end: real, unmodified Apache Spark (pyspark 4.3.0 and 3.5.9 from PyPI, Spark in
//! `local-cluster[2,1,1024]`, executors in their own JVMs) runs shuffle jobs whose remote
//! blocks are all served by `kshuffled`.
//!
//! Each test is one (Spark version, Spark session) pair with its own daemon, so the daemon's
//! counters belong to that session. The jobs are in `tests/spark/jobs.py`; each returns what
//! Spark computed (`got`) and the same value computed independently in plain Python
//! (`expected`), which must be equal, plus facts (accumulators, executor ids) asserted here
//! together with the daemon's counters.
//!
//! Needs Java 17 and python3 with venv; the pyspark venvs are installed on first use by
//! `scripts/spark-venv.sh`. The tests take minutes and use both cores: run them one at a time
//! (`.config/nextest.toml` puts them in the `spark` test group; under `cargo test` a lock in
//! this file serializes them).
//!
//!     cargo nextest run -p kshuffle --test spark_e2e
//!
//! `KSHUFFLE_E2E_VERBOSE=1` echoes Spark's stderr while it runs; `KSHUFFLE_E2E_KEEP=1` keeps
//! the temporary directory (shuffle files, executor logs under `scratch/spark-home/work`).
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Daemon, Finished, SparkDirs, Stats, run_with_timeout, spark_venv, tail};
use serde_json::Value;

/// Deadline for one Spark session (they take 20–100 s on 2 cores; jobs.py cancels a job that
/// runs longer than 180 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(480);
/// `large_blocks` shuffles ~295 MB; about half of it is read remotely, through the daemon.
const MIN_BYTES_SERVED_STATIC: u64 = 100_000_000;

/// One Spark cluster at a time, also under `cargo test` (threads of one process).
static SPARK: Mutex<()> = Mutex::new(());

// === tests ===

#[test]
fn spark_4_3_static_jobs() {
    static_jobs("4.3.0");
}

#[test]
fn spark_3_5_static_jobs() {
    static_jobs("3.5.9");
}

#[test]
fn spark_4_3_old_fetch_protocol() {
    old_fetch_protocol("4.3.0");
}

#[test]
fn spark_3_5_old_fetch_protocol() {
    old_fetch_protocol("3.5.9");
}

#[test]
fn spark_4_3_dynamic_allocation() {
    dynamic_allocation("4.3.0");
}

#[test]
fn spark_3_5_dynamic_allocation() {
    dynamic_allocation("3.5.9");
}

// === sessions ===

/// reduceByKey, groupByKey, a sort into 200 partitions, an AQE join + aggregation (batch
/// fetch) and a ~295 MB incompressible shuffle with blocks above
/// `spark.network.maxRemoteBlockSizeFetchToMem` (StreamRequest).
fn static_jobs(version: &str) {
    let run = SparkRun::execute(version, "static");
    let mut c = run.checks();
    for job in [
        "reduce_by_key",
        "group_by_key",
        "sort_200",
        "sql_join_agg",
        "large_blocks",
        "medium_blocks",
    ] {
        c.job_exact(&run.result, job);
    }
    c.check(
        run.result["jobs"]["sql_join_agg"]["aqe_coalesced"] == Value::Bool(true),
        "sql_join_agg: AQE did not coalesce shuffle partitions (no batch fetch possible); plan:\n"
            .to_owned()
            + run.result["jobs"]["sql_join_agg"]["plan"]
                .as_str()
                .unwrap_or("?"),
    );
    c.served_by_daemon(&run);
    let s = &run.stats;
    c.check(
        s.fetch_shuffle_blocks > 0,
        "daemon saw no FetchShuffleBlocks",
    );
    c.check(
        s.batch_fetches > 0,
        "batch_fetches = 0: sql_join_agg (AQE, coalesced partitions) should make Spark send \
         FetchShuffleBlocks with batchFetchEnabled=true",
    );
    c.check(
        s.streams_served > 0,
        "streams_served = 0: large_blocks has ~18 MB blocks, above \
         spark.network.maxRemoteBlockSizeFetchToMem=8m, which Spark fetches with StreamRequest",
    );
    let out_of_turn = s.all.iter().find(|(k, _)| k == "chunks_out_of_turn");
    c.check(
        out_of_turn.is_some_and(|(_, n)| *n > 0),
        format!(
            "chunks_out_of_turn = {out_of_turn:?}: medium_blocks has each reducer fetch \
             several streams of ~2.3 MB chunks at once, which the daemon should serve by turns"
        ),
    );
    c.check(
        s.bytes_served() >= MIN_BYTES_SERVED_STATIC,
        format!(
            "chunk_bytes + stream_bytes = {} < {MIN_BYTES_SERVED_STATIC}: the ~295 MB shuffle of \
             large_blocks did not go through the daemon",
            s.bytes_served()
        ),
    );
    run.finish(c);
}

/// `spark.shuffle.useOldFetchProtocol=true`: shuffle blocks are requested with
/// `OpenBlocks(shuffle_S_M_R…)` instead of FetchShuffleBlocks.
fn old_fetch_protocol(version: &str) {
    let run = SparkRun::execute(version, "old-protocol");
    let mut c = run.checks();
    for job in ["old_protocol_reduce_by_key", "old_protocol_sort"] {
        c.job_exact(&run.result, job);
    }
    c.served_by_daemon(&run);
    let s = &run.stats;
    c.check(
        s.open_blocks > 0,
        "open_blocks = 0 with spark.shuffle.useOldFetchProtocol=true",
    );
    c.check(
        s.fetch_shuffle_blocks == 0,
        format!(
            "fetch_shuffle_blocks = {} with spark.shuffle.useOldFetchProtocol=true (expected only \
             OpenBlocks)",
            s.fetch_shuffle_blocks
        ),
    );
    run.finish(c);
}

/// Dynamic allocation: shuffle map output (phase A) and DISK_ONLY cached blocks are read in
/// phase B, after every executor of phase A is gone, by new executors, through the daemon.
fn dynamic_allocation(version: &str) {
    let run = SparkRun::execute(version, "dynamic");
    let r = &run.result;
    let mut c = run.checks();
    for job in ["dyn_phase_a_shuffle", "dyn_phase_a_cache"] {
        c.job_ok(r, job);
    }
    c.check(
        r["executors_gone_error"].is_null(),
        format!(
            "phase A executors never went away: {}",
            r["executors_gone_error"]
        ),
    );
    c.job_exact(r, "dynamic_shuffle");
    c.job_exact(r, "dynamic_disk_only_rdd");

    // Nothing recomputed: each map record and each cached record was produced exactly once.
    for (job, counted, expected, what) in [
        (
            "dynamic_shuffle",
            "map_records",
            "map_records_expected",
            "shuffle map function",
        ),
        (
            "dynamic_disk_only_rdd",
            "cache_records",
            "cache_records_expected",
            "cached RDD",
        ),
    ] {
        let (n, want) = (&r["jobs"][job][counted], &r["jobs"][job][expected]);
        c.check(
            n == want && !n.is_null(),
            format!(
                "{job}: the {what} ran for {n} records, expected exactly {want}: the data of the \
                 gone executors was recomputed instead of read from the shuffle service"
            ),
        );
    }

    // Phase A executors were all gone before phase B, which ran on new executors only.
    let ids = |key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut phase_a, phase_b) = (ids("phase_a_executors"), ids("phase_b_executors"));
    // Executors alive at the end of phase A (driver's view), whether or not they ran a task.
    for id in ids("phase_a_executors_live") {
        if !phase_a.contains(&id) {
            phase_a.push(id);
        }
    }
    let phase_b_start = r["phase_b_start_ms"].as_u64();
    c.check(
        !phase_a.is_empty(),
        "no executor ids recorded for phase A tasks",
    );
    c.check(
        !phase_b.is_empty(),
        "no executor ids recorded for phase B tasks",
    );
    c.check(
        phase_a
            .iter()
            .chain(&phase_b)
            .all(|id| id.parse::<u32>().is_ok()),
        format!("unexpected executor ids: phase A {phase_a:?}, phase B {phase_b:?}"),
    );
    let reused: Vec<&String> = phase_b.iter().filter(|id| phase_a.contains(id)).collect();
    c.check(
        reused.is_empty(),
        format!("phase B ran on phase A executors {reused:?} (A {phase_a:?}, B {phase_b:?})"),
    );
    let timeline = r["executors"].as_array().cloned().unwrap_or_default();
    let find = |id: &str| timeline.iter().find(|e| e["id"].as_str() == Some(id));
    for id in &phase_a {
        let removed = find(id).and_then(|e| e["removed_ms"].as_u64());
        c.check(
            matches!((removed, phase_b_start), (Some(t), Some(start)) if t <= start),
            format!(
                "phase A executor {id} was not removed before phase B started (removed at \
                 {removed:?}, phase B at {phase_b_start:?})"
            ),
        );
    }
    for id in &phase_b {
        let added = find(id).and_then(|e| e["added_ms"].as_u64());
        c.check(
            matches!((added, phase_b_start), (Some(t), Some(start)) if t >= start),
            format!(
                "phase B executor {id} was not started after phase B began (added at {added:?}, \
                 phase B at {phase_b_start:?})"
            ),
        );
    }

    c.served_by_daemon(&run);
    let s = &run.stats;
    c.check(
        s.rdd_blocks_served > 0,
        "rdd_blocks_served = 0: phase B should read the DISK_ONLY blocks of the gone executors \
         with OpenBlocks(rdd_*) (spark.shuffle.service.fetch.rdd.enabled=true)",
    );
    c.check(
        s.fetch_shuffle_blocks > 0,
        "daemon saw no FetchShuffleBlocks",
    );
    run.finish(c);
}

// === impl SparkRun ===

/// One Spark session of `jobs.py` against its own daemon, finished.
struct SparkRun {
    name: String,
    result: Value,
    stats: Stats,
    python: Finished,
    daemon_log: String,
    daemon_warnings: Vec<String>,
    scratch: PathBuf,
    started: Instant,
    _dir: tempfile::TempDir,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl SparkRun {
    fn execute(version: &str, session: &str) -> SparkRun {
        let lock = SPARK.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let name = format!("pyspark {version}, session {session}");
        let venv = spark_venv(version);
        let python = venv.join("bin/python");

        let keep = std::env::var_os("KSHUFFLE_E2E_KEEP").is_some();
        let dirs = SparkDirs::create("kshuffle-spark-e2e-", keep);
        if keep {
            eprintln!("{name}: keeping {}", dirs.base.display());
        }

        let daemon = Daemon::start(Daemon::standard_args(&dirs.allowed));
        let mut cmd = dirs.python_command(&python, "jobs.py", session, daemon.port());
        let SparkDirs {
            tmp: dir, scratch, ..
        } = dirs;
        let echo = std::env::var_os("KSHUFFLE_E2E_VERBOSE").map(|_| "[spark] ");
        let python_run = run_with_timeout(&mut cmd, SESSION_TIMEOUT, echo);

        let mut daemon = daemon;
        let stats = daemon.try_stop();
        let daemon_log = daemon.log_text();
        let daemon_warnings = daemon.warnings().iter().map(|e| e.raw.clone()).collect();
        drop(daemon);

        let result = python_run
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<Value>(l).ok());

        let mut problems = Vec::new();
        if !python_run.success() {
            problems.push(format!("jobs.py: {}", python_run.describe()));
        }
        let result = result.unwrap_or_else(|| {
            problems.push("jobs.py printed no JSON result line".to_owned());
            Value::Null
        });
        if let Some(fatal) = result.get("fatal").filter(|f| !f.is_null()) {
            problems.push(format!("Spark session failed: {fatal}"));
        }
        let stats = stats.unwrap_or_else(|e| {
            problems.push(e);
            Stats::default()
        });
        let run = SparkRun {
            name,
            result,
            stats,
            python: python_run,
            daemon_log,
            daemon_warnings,
            scratch,
            started,
            _dir: dir,
            _lock: lock,
        };
        if !problems.is_empty() {
            run.fail(&problems);
        }
        run
    }

    fn checks(&self) -> Checks {
        Checks {
            failures: Vec::new(),
        }
    }

    /// Panics with every failed check and the logs, or reports the wall time.
    fn finish(self, checks: Checks) {
        if !checks.failures.is_empty() {
            self.fail(&checks.failures);
        }
        eprintln!(
            "{}: ok, wall time {:.1}s (Spark session {:.1}s); daemon: {}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.python.elapsed.as_secs_f64(),
            self.stats
        );
        eprintln!("{}", self.job_times());
    }

    fn job_times(&self) -> String {
        let mut out = String::from("job times:");
        if let Some(jobs) = self.result["jobs"].as_object() {
            for (name, job) in jobs {
                let _ = write!(out, " {name}={}s", job["seconds"]);
            }
        }
        out
    }

    fn fail(&self, failures: &[String]) -> ! {
        let mut report = String::new();
        let _ = writeln!(
            report,
            "===== Spark driver stderr ({}) =====",
            self.python.describe()
        );
        let _ = writeln!(report, "{}", tail(&self.python.stderr, 400));
        for (path, text) in executor_logs(&self.scratch) {
            let _ = writeln!(report, "===== executor log {} =====", path.display());
            let _ = writeln!(report, "{}", tail(&text, 60));
        }
        let _ = writeln!(report, "===== kshuffled log =====");
        let _ = writeln!(report, "{}", tail(&self.daemon_log, 200));
        let _ = writeln!(report, "===== daemon counters: {} =====", self.stats);
        let _ = writeln!(report, "{}", self.job_times());
        eprintln!("{report}");
        let mut msg = format!(
            "{}: {} problem(s) after {:.1}s:\n",
            self.name,
            failures.len(),
            self.started.elapsed().as_secs_f64()
        );
        for f in failures {
            let _ = writeln!(msg, "  - {f}");
        }
        if !self.daemon_warnings.is_empty() {
            let _ = writeln!(
                msg,
                "kshuffled logged {} warning(s)/error(s), the first ones:",
                self.daemon_warnings.len()
            );
            for w in self.daemon_warnings.iter().take(5) {
                let _ = writeln!(msg, "  {w}");
            }
        }
        panic!("{msg}");
    }
}

/// Executor stderr files under `scratch/spark-home/work/<app>/<exec>/stderr`.
fn executor_logs(scratch: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(apps) = std::fs::read_dir(scratch.join("spark-home/work")) else {
        return out;
    };
    for app in apps.flatten() {
        let Ok(execs) = std::fs::read_dir(app.path()) else {
            continue;
        };
        let mut execs: Vec<PathBuf> = execs.flatten().map(|e| e.path()).collect();
        execs.sort();
        for exec in execs {
            let path = exec.join("stderr");
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path, text));
            }
        }
    }
    out
}

// === impl Checks ===

/// Collects failed checks so one run reports all of them.
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.failures.push(msg.into());
        }
    }

    /// The job ran without error.
    fn job_ok(&mut self, result: &Value, job: &str) -> bool {
        let j = &result["jobs"][job];
        if j.is_null() {
            self.failures.push(format!("{job}: did not run"));
            return false;
        }
        if !j["error"].is_null() {
            self.failures
                .push(format!("{job}: failed in Spark: {}", j["error"]));
            return false;
        }
        true
    }

    /// The job ran and Spark's result equals the independently computed one.
    fn job_exact(&mut self, result: &Value, job: &str) {
        if !self.job_ok(result, job) {
            return;
        }
        let j = &result["jobs"][job];
        let (got, expected) = (&j["got"], &j["expected"]);
        if expected.is_null() {
            self.failures.push(format!("{job}: no expected value"));
        } else if got != expected {
            self.failures.push(format!(
                "{job}: Spark's result differs: {}",
                diff(got, expected)
            ));
        }
    }

    /// Blocks were served by the daemon, every executor registered, nothing failed.
    fn served_by_daemon(&mut self, run: &SparkRun) {
        let s = &run.stats;
        let executors = run.result["executors"].as_array().map_or(0, Vec::len) as u64;
        self.check(
            executors >= 2,
            format!("Spark reported {executors} executors, expected >= 2"),
        );
        self.check(
            s.registrations >= executors,
            format!(
                "registrations = {} < {executors} executors",
                s.registrations
            ),
        );
        self.check(
            s.chunks_served + s.streams_served > 0,
            "the daemon served no chunk and no stream: the blocks did not come from it",
        );
        self.check(s.chunks_served > 0, "chunks_served = 0");
        self.check(
            s.rpc_failures == 0 && s.chunk_failures == 0,
            format!(
                "the daemon answered {} RPC(s) and {} chunk request(s) with a failure",
                s.rpc_failures, s.chunk_failures
            ),
        );
    }
}

/// A short description of how `got` differs from `expected`.
fn diff(got: &Value, expected: &Value) -> String {
    const MAX: usize = 10;
    let short = |v: &Value| {
        let s = v.to_string();
        if s.len() > 200 {
            format!("{}…", &s[..s.floor_char_boundary(200)])
        } else {
            s
        }
    };
    match (got, expected) {
        (Value::Object(g), Value::Object(e)) => {
            let missing: Vec<&String> = e.keys().filter(|k| !g.contains_key(*k)).collect();
            let extra: Vec<&String> = g.keys().filter(|k| !e.contains_key(*k)).collect();
            let differ: Vec<String> = e
                .iter()
                .filter_map(|(k, ev)| {
                    let gv = g.get(k)?;
                    (gv != ev).then(|| format!("{k}: got {} expected {}", short(gv), short(ev)))
                })
                .collect();
            let mut out = format!(
                "{} keys expected, {} got; {} missing, {} unexpected, {} differ",
                e.len(),
                g.len(),
                missing.len(),
                extra.len(),
                differ.len()
            );
            if !missing.is_empty() {
                let _ = write!(out, "; missing {:?}", &missing[..missing.len().min(MAX)]);
            }
            if !extra.is_empty() {
                let _ = write!(out, "; unexpected {:?}", &extra[..extra.len().min(MAX)]);
            }
            for d in differ.iter().take(MAX) {
                let _ = write!(out, "; {d}");
            }
            out
        }
        _ => format!("got {} expected {}", short(got), short(expected)),
    }
}
