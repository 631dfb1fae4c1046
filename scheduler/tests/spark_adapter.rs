//! The JVM adapter of `scheduler/jvm` with real Spark: `spark-submit --master k8s://…` in
//! client mode against testkit's fake API server (real HTTP; no Kubernetes cluster runs
//! here).
//!
//! - `spark_4_3_kshuffle_scheduler_that_cannot_start_*`: a scheduler that cannot start stops
//!   the application at once, with the reason in the driver's log, and no executor pod is
//!   created; so does a stage with its own resource profile, which the adapter does not
//!   serve.
//! - `spark_3_5_kshuffle_scheduler_static_allocation_*`: without dynamic allocation, Spark
//!   asks once for `spark.executor.instances` as the application starts; the scheduler
//!   creates them (the process kubelet runs them as JVMs on 2 simulated nodes, from Spark's
//!   own pod: no pod template) and the job runs on them. Then the driver's JVM is SIGKILLed
//!   and its scheduler, whose stdin and log pipe were the driver's, exits on its own.
//!
//! The dynamic-allocation runs (DaemonSet and sidecar, client and cluster mode) are the
//! simulated-cluster scenarios of `daemonset/tests` and `sidecar/tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kshuffle_testkit::{FakeApiServer, Node};

use kshuffle_testkit::apiserver::ProcessKubelet;
use kshuffle_testkit::support::{
    Group, eventually, kshuffle_scheduler_confs, kshuffle_scheduler_dirs_left,
    processes_mentioning, pyspark_home, spark_submit, spark_venv, work_dir,
};

/// Asserts that the driver's `log` contains each of `needles`.
fn assert_mentions(log: &str, needles: &[&str]) {
    for needle in needles {
        assert!(log.contains(needle), "no {needle:?} in\n{}", tail(log, 40));
    }
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

/// A job whose only stage asks for executors of its own resource profile (stage-level
/// scheduling, with dynamic allocation).
const PROFILE_JOB: &str = "from pyspark.sql import SparkSession\n\
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests\n\
    spark = SparkSession.builder.getOrCreate()\n\
    rp = ResourceProfileBuilder().require(ExecutorResourceRequests().cores(1).memory('512m'))\n\
    rp = rp.require(TaskResourceRequests().cpus(1)).build\n\
    print('COUNT', spark.sparkContext.parallelize(range(10), 2).withResources(rp).count())\n\
    spark.stop()\n";

/// Runs `job` with the adapter, `bin` as the scheduler and `extra` confs; returns the
/// driver's standard error once spark-submit has failed.
async fn failing_submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    (name, job): (&str, &str),
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
    // Not `{name}.py`: the script's dir comes first on `sys.path`, and `profile.py` would
    // shadow the standard library's `profile`, which pyspark imports.
    let path = work.join(format!("job-{name}.py"));
    std::fs::write(&path, job).unwrap();
    let mut cmd = spark_submit(venv, server, work, "client", name, &confs);
    cmd.arg(&path);
    let mut group = Group::spawn(&mut cmd);
    let status = eventually("spark-submit to exit", 120, || group.0.try_wait().unwrap()).await;
    let stdout = std::fs::read_to_string(work.join(format!("{name}.stdout"))).unwrap();
    let stderr = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap();
    // No count printed (a traceback may quote the line that prints it).
    assert!(
        !status.success() && !stdout.lines().any(|l| l.starts_with("COUNT ")),
        "{status}\n{stdout}\n{}",
        tail(&stderr, 40)
    );
    // The adapter's files (in the driver's temp dir) went with the application.
    let left = kshuffle_scheduler_dirs_left(work);
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
    let log = failing_submit(&venv, &server, &work, ("missing", JOB), &missing, &[]).await;
    assert_mentions(
        &log,
        &[
            "cannot start kshuffle-scheduler",
            &missing.display().to_string(),
        ],
    );

    // A setting Spark's own allocator would only read later, refused by the scheduler: its
    // message names the key, and the driver's says it exited.
    let log = failing_submit(
        &venv,
        &server,
        &work,
        ("refused", JOB),
        real,
        &["spark.kubernetes.allocation.batch.size=0"],
    )
    .await;
    assert_mentions(
        &log,
        &[
            "spark.kubernetes.allocation.batch.size",
            "kshuffle-scheduler exited with code 64",
        ],
    );
    assert!(server.pods("spark").is_empty());

    // A stage with its own resource profile: the adapter serves the default profile only,
    // and stops the application saying so instead of leaving the stage waiting for ever.
    let log = failing_submit(
        &venv,
        &server,
        &work,
        ("profile", PROFILE_JOB),
        real,
        &[
            "spark.dynamicAllocation.enabled=true",
            "spark.dynamicAllocation.shuffleTracking.enabled=true",
            "spark.dynamicAllocation.maxExecutors=2",
        ],
    )
    .await;
    assert_mentions(
        &log,
        &[
            "serves the default resource profile only",
            "executors of resource profile 1 (stage-level scheduling): stopping the application",
        ],
    );
    assert!(server.pods("spark").is_empty());
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_3_5_kshuffle_scheduler_static_allocation_creates_the_executors_spark_asks_for() {
    let venv = spark_venv("3.5.9");
    let work = work_dir("spark-adapter-static");
    let kubelet = ProcessKubelet::new(pyspark_home(&venv), work.join("kubelet"))
        .node_network("127.0.13")
        .pod_network("127.43")
        .java_options(kshuffle_testkit::support::TEST_JVM_OPTIONS);
    let server = FakeApiServer::builder()
        .nodes(vec![Node::new("node-1", 4, 8), Node::new("node-2", 4, 8)])
        .process_kubelet(kubelet)
        .start()
        .await
        .unwrap();
    let real = Path::new(env!("CARGO_BIN_EXE_kshuffle-scheduler"));
    let mut confs = kshuffle_scheduler_confs(real, &pyspark_home(&venv), &work, "");
    confs.extend(
        [
            "spark.kubernetes.container.image=kshuffle/spark-test",
            "spark.kubernetes.namespace=spark",
            "spark.driver.host=127.0.0.1",
            "spark.ui.enabled=false",
            "spark.executor.instances=2",
            "spark.executor.memory=512m",
            "spark.executor.cores=1",
            "spark.task.maxFailures=1",
            // Tasks wait for both executors, so both run some.
            "spark.scheduler.minRegisteredResourcesRatio=1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
        ]
        .map(str::to_owned),
    );
    let job = work.join("job.py");
    std::fs::write(
        &job,
        "from pyspark.sql import SparkSession\n\
         spark = SparkSession.builder.getOrCreate()\n\
         sc = spark.sparkContext\n\
         pairs = sc.parallelize(range(100000), 8).map(lambda x: (x % 100, x))\n\
         sums = dict(pairs.reduceByKey(lambda a, b: a + b, 4).collect())\n\
         ok = all(sums[k] == sum(range(k, 100000, 100)) for k in range(100))\n\
         print('RESULT', ok, len(sums), flush=True)\n\
         import time\n\
         time.sleep(600)\n",
    )
    .unwrap();
    let mut cmd = spark_submit(&venv, &server, &work, "client", "static", &confs);
    cmd.arg(&job);
    let mut group = Group::spawn(&mut cmd);
    let stdout_path = work.join("static.stdout");
    let stderr_path = work.join("static.stderr");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    let exited = eventually("the job's result", 150, || {
        if read(&stdout_path).contains("RESULT") {
            return Some(None);
        }
        group.0.try_wait().unwrap().map(Some)
    })
    .await;
    assert!(
        exited.is_none() && read(&stdout_path).contains("RESULT True 100"),
        "{exited:?}\n{}\n{}",
        read(&stdout_path),
        tail(&read(&stderr_path), 60)
    );
    // The driver dies without stopping anything (the job sleeps): its scheduler, whose stdin
    // and log pipe were the driver's, stops on its own and does not outlive it.
    let schedulers =
        || processes_mentioning(&format!("{}/jvm-tmp/kshuffle-scheduler-", work.display()));
    assert_eq!(schedulers().len(), 1, "{}", tail(&read(&stderr_path), 60));
    // spark-submit execs the driver's JVM, the group's leader: SIGKILL to it alone (as the
    // OOM killer would), not to the group the scheduler is in.
    group.0.kill().unwrap();
    eventually(
        "the scheduler to exit after its driver was killed",
        30,
        || schedulers().is_empty().then_some(()),
    )
    .await;
    let stderr = read(&stderr_path);
    // Exactly the two executors asked for, created by the scheduler (not Spark's allocator).
    let created: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("created executor pod"))
        .collect();
    assert_eq!(created.len(), 2, "{}", tail(&stderr, 60));
    assert!(!stderr.contains("Going to request"));
    // Both ran tasks, at their pods' addresses.
    for id in ["1", "2"] {
        let ran = stderr.lines().any(|l| {
            l.contains("Starting task")
                && l.contains("(127.43.")
                && l.contains(&format!(", executor {id}, "))
        });
        assert!(
            ran && created
                .iter()
                .any(|l| l.contains(&format!("executor={id} "))),
            "{}",
            tail(&stderr, 60)
        );
    }
    drop(group);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
