//! The JVM adapter of `scheduler/jvm` failing as an application starts, with real Spark:
//! `spark-submit --master k8s://…` (pyspark 4.3.0, client mode) against testkit's fake API
//! server (real HTTP; no Kubernetes cluster runs here). A scheduler that cannot start stops
//! the application at once, with the reason in the driver's log, and no executor pod is
//! created. The adapter's working runs are the simulated-cluster scenarios of
//! `daemonset/tests` and `sidecar/tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kshuffle_testkit::FakeApiServer;
use kshuffle_testkit::support::{
    Group, eventually, kshuffle_scheduler_confs, pyspark_home, spark_submit, work_dir,
};

/// The venv of pyspark `version` from `scripts/spark-venv.sh` (installed on first use; the
/// test command installs both before the tests).
fn spark_venv(version: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spark-venv.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(version)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spark-venv.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap()
            .trim(),
    )
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

const JOB: &str = "from pyspark.sql import SparkSession\n\
    spark = SparkSession.builder.getOrCreate()\n\
    print('COUNT', spark.sparkContext.parallelize(range(10), 2).count())\n\
    spark.stop()\n";

/// Runs the job with the adapter, `bin` as the scheduler and `extra` confs; returns the
/// driver's standard error once spark-submit has failed.
async fn failing_submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    name: &str,
    bin: &Path,
    extra: &[&str],
) -> String {
    let real = Path::new(env!("CARGO_BIN_EXE_kshuffle-scheduler"));
    let mut confs: Vec<String> = kshuffle_scheduler_confs(real, &pyspark_home(venv), work, "")
        .into_iter()
        .filter(|c| !c.starts_with("spark.kshuffle.scheduler.binary="))
        .collect();
    confs.push(format!("spark.kshuffle.scheduler.binary={}", bin.display()));
    confs.extend(
        [
            "spark.kubernetes.container.image=kshuffle/spark-test",
            "spark.kubernetes.namespace=spark",
            "spark.driver.host=127.0.0.1",
            "spark.ui.enabled=false",
            "spark.kshuffle.scheduler.startTimeout=20s",
        ]
        .map(str::to_owned),
    );
    confs.extend(extra.iter().map(|c| (*c).to_owned()));
    let job = work.join("job.py");
    std::fs::write(&job, JOB).unwrap();
    let mut cmd = spark_submit(venv, server, work, "client", name, &confs);
    cmd.arg(&job);
    let mut group = Group::spawn(&mut cmd);
    let status = eventually("spark-submit to exit", 120, || group.0.try_wait().unwrap()).await;
    let stdout = std::fs::read_to_string(work.join(format!("{name}.stdout"))).unwrap();
    let stderr = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap();
    assert!(
        !status.success() && !stdout.contains("COUNT"),
        "{status}\n{stdout}\n{}",
        tail(&stderr, 40)
    );
    // The adapter's files (in the driver's temp dir) went with the application.
    let left: Vec<_> = std::fs::read_dir(work.join("jvm-tmp"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kshuffle-scheduler-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_4_3_kshuffle_scheduler_that_cannot_start_stops_the_application_with_the_reason() {
    let venv = spark_venv("4.3.0");
    let work = work_dir("spark-adapter-errors");
    let server = FakeApiServer::start().await.unwrap();
    let real = Path::new(env!("CARGO_BIN_EXE_kshuffle-scheduler"));

    // No such program.
    let missing = work.join("no-such-kshuffle-scheduler");
    let log = failing_submit(&venv, &server, &work, "missing", &missing, &[]).await;
    for needle in [
        "cannot start kshuffle-scheduler",
        &missing.display().to_string(),
    ] {
        assert!(log.contains(needle), "no {needle:?} in\n{}", tail(&log, 40));
    }

    // A setting Spark's own allocator would only read later, refused by the scheduler: its
    // message names the key, and the driver's says it exited.
    let log = failing_submit(
        &venv,
        &server,
        &work,
        "refused",
        real,
        &["spark.kubernetes.allocation.batch.size=0"],
    )
    .await;
    for needle in [
        "spark.kubernetes.allocation.batch.size",
        "kshuffle-scheduler exited with code 64",
    ] {
        assert!(log.contains(needle), "no {needle:?} in\n{}", tail(&log, 40));
    }
    assert!(server.pods("spark").is_empty());
    let _ = std::fs::remove_dir_all(&work);
}
