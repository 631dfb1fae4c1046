//! Wall time of the real-Spark test workloads (`shuffle/tests/spark/jobs.py`, session
//! `static`: reduceByKey, groupByKey, a 200-partition sort, an AQE join with batch fetch and
//! a ~300 MB shuffle fetched with StreamRequest) with each shuffle service, Spark in
//! `local-cluster[2,1,1024]`, executors fetching every remote block through the service.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// What one Spark session took.
#[derive(Debug, Clone, Default)]
pub struct SparkRun {
    /// Wall time of the whole session (JVM start-up included).
    pub wall: Duration,
    /// The session's own measure (from Spark context start to the last job).
    pub session_secs: f64,
    /// Per job: (name, seconds, error if any).
    pub jobs: Vec<(String, f64, Option<String>)>,
    /// The session's other steps (context start, executors up, stop): (name, seconds).
    pub phases: Vec<(String, f64)>,
    /// CPU seconds (user + system) the shuffle service used during the session, when the
    /// caller measured it.
    pub service_cpu_secs: Option<f64>,
}

/// Runs the `static` session of `jobs.py` with the venv's `python` against the service on
/// `port`, with Spark's local dir `local_dir` (under the service's root).
///
/// # Errors
/// When the script cannot run or prints no result line.
pub fn run_static(
    python: &Path,
    jobs_py: &Path,
    port: u16,
    local_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<SparkRun> {
    std::fs::create_dir_all(local_dir)?;
    std::fs::create_dir_all(scratch)?;
    let log = std::fs::File::create(scratch.join("spark.log"))?;
    let start = Instant::now();
    let out = Command::new(python)
        .arg(jobs_py)
        .arg("static")
        .arg("--port")
        .arg(port.to_string())
        .arg("--local-dir")
        .arg(local_dir)
        .arg("--scratch")
        .arg(scratch)
        .arg("--exit-with-parent")
        // jobs.py leads its own process group, which it kills (Spark's JVMs included) when
        // this process dies.
        .process_group(0)
        .current_dir(scratch)
        .env("PYSPARK_PYTHON", python)
        .env("PYSPARK_DRIVER_PYTHON", python)
        .env_remove("SPARK_HOME")
        .env_remove("SPARK_CONF_DIR")
        .env_remove("PYSPARK_SUBMIT_ARGS")
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .context("running jobs.py")?;
    let wall = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        bail!(
            "jobs.py printed no result ({}); see {}",
            out.status,
            scratch.join("spark.log").display()
        );
    };
    let v: Value = serde_json::from_str(line)?;
    if let Some(fatal) = v.get("fatal").and_then(Value::as_str) {
        bail!("Spark session failed: {fatal}");
    }
    let mut jobs = Vec::new();
    if let Some(map) = v.get("jobs").and_then(Value::as_object) {
        for (name, job) in map {
            let secs = job.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
            let err = job.get("error").and_then(Value::as_str).map(str::to_owned);
            jobs.push((name.clone(), secs, err));
        }
    }
    let phases = v
        .get("phases")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(name, secs)| Some((name.clone(), secs.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(SparkRun {
        wall,
        session_secs: v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        jobs,
        phases,
        service_cpu_secs: None,
    })
}
