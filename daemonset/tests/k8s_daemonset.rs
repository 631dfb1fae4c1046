//! The DaemonSet of `daemonset/deploy`, exactly as `kubectl kustomize` renders it, on a
//! simulated cluster of 3 nodes: testkit's fake API server (real HTTP, real `kube` clients;
//! no Kubernetes cluster runs here), its DaemonSet controller, and its process kubelet
//! running the real `kshuffle-node` binary for the `kshuffle-node` image. The busybox init
//! container is a host no-op (the kubelet creates the hostPath directories as the test's
//! user, so there is nothing to chown), `securityContext` users are not applied, and each
//! daemon binds its node's address (`KSHUFFLE_BIND`/`KSHUFFLE_ADMIN_BIND` set by the
//! kubelet to the pod IP, standing in for the node's network namespace).

//!
//! `spark_k8s_daemonset_*`: real `spark-submit --master k8s://…` in client mode (pyspark's
//! own Kubernetes client) on that cluster, with exactly `deploy/spark/spark-submit.flags` and
//! `deploy/spark/executor-pod-template.yaml`; the kubelet runs Spark's executor pods as local
//! JVMs on the nodes, their hostPath local dir being the same per-node directory the node's
//! daemon serves. Dynamic allocation scales executors up, deletes the idle ones' pods, and a
//! later stage reads their shuffle output through the node daemons with no map stage re-run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_common;

use std::net::TcpStream;
use std::path::Path;

use k8s_common::{
    Cluster, Group, NODES, NS, common, eventually, http_get, kshuffle_scheduler_confs, kubelet,
    metric, pyspark_home, ready, spark_submit, start_cluster, work_dir,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_daemonset_runs_kshuffle_node_on_three_simulated_nodes() {
    let work = work_dir("k8s-daemonset");
    // No Spark container runs here: the Spark home is never used.
    let kubelet = kubelet(&work.join("no-spark"), &work.join("kubelet"), "127.0.2");
    let Cluster {
        server,
        daemons: pods,
        ..
    } = start_cluster(&kubelet, 4000, &[]).await;
    let mut ips: Vec<String> = Vec::new();
    for pod in &pods {
        let st = pod.status.as_ref().unwrap();
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        let ip = st.pod_ip.clone().unwrap();
        // hostNetwork: the node's address.
        assert_eq!(Some(&ip), st.host_ip.as_ref());
        let init = &st.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(init.name, "prepare-host-dirs");
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.restart_count == 0, "{cs:?}");
        // The real daemon serves on its node's address only, on the manifest's ports.
        let answer = http_get(&format!("{ip}:7338"), "/readyz");
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
        TcpStream::connect(format!("{ip}:7337")).unwrap();
        // Its hostPath directories are the node's.
        let root = kubelet.host_path(&node, "/var/lib/kshuffle");
        assert!(root.is_dir(), "{}", root.display());
        // It listened on its node's address, serving the node's directory, and its driver
        // watch (through the kubelet's kubeconfig) reached the fake API server.
        let stderr = kubelet
            .pod_dir(NS, pod.metadata.name.as_deref().unwrap())
            .join("stderr");
        eventually("the daemon's driver watch", 10, || {
            let log = std::fs::read_to_string(&stderr).ok()?;
            (log.contains(&format!("\"addr\":\"{ip}:7337\""))
                && log.contains(&root.display().to_string())
                && log.contains("driver watch up"))
            .then_some(())
        })
        .await;
        ips.push(ip);
    }
    ips.sort();
    assert_eq!(ips, ["127.0.2.1", "127.0.2.2", "127.0.2.3"]);
    drop(server);
    // Every daemon ended with the server.
    eventually("the daemons to stop", 10, || {
        ips.iter()
            .all(|ip| TcpStream::connect(format!("{ip}:7337")).is_err())
            .then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_daemon_pod_is_recreated_and_reloads_its_registrations() {
    let work = work_dir("k8s-daemonset-recreate");
    let kubelet = kubelet(&work.join("no-spark"), &work.join("kubelet"), "127.0.3");
    let Cluster {
        server,
        client,
        daemons: pods,
        ..
    } = start_cluster(&kubelet, 4000, &[]).await;
    let on_node_1 = |p: &Pod| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-1");
    let old = pods.iter().find(|p| on_node_1(p)).unwrap();
    let old_name = old.metadata.name.clone().unwrap();
    let ip = old.status.as_ref().unwrap().pod_ip.clone().unwrap();

    // An executor registers with node-1's daemon, its dirs in node-1's hostPath.
    let root = kubelet.host_path("node-1", "/var/lib/kshuffle");
    let dirs = kshuffle::fixture::ExecutorDirs::create(&root, "exec-1", 1, 64).unwrap();
    let mut shuffle = kshuffle::client::Client::connect(format!("{ip}:7337").parse().unwrap())
        .await
        .unwrap();
    shuffle
        .register("app-20260101000000-0001", "1", dirs.as_strings(), 64)
        .await
        .unwrap();
    drop(shuffle);

    // The pod is deleted (as `kubectl delete pod`): SIGTERM, the daemon drains and exits, the
    // controller creates a new pod for the node, and the new daemon reloads the registration
    // from the node's state dir.
    Api::<Pod>::namespaced(client, NS)
        .delete(&old_name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let new = eventually("a new Ready pod on node-1", 60, || {
        server.pods(NS).into_iter().find(|p| {
            on_node_1(p) && p.metadata.name.as_deref() != Some(old_name.as_str()) && ready(p)
        })
    })
    .await;
    assert!(server.pod(NS, &old_name).is_none());
    let stderr = kubelet
        .pod_dir(NS, new.metadata.name.as_deref().unwrap())
        .join("stderr");
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"registry loaded\"") && l.contains("\"executors\":1")),
        "{log}"
    );
    assert_eq!(metric(&[ip], "kshuffle_registered_executors"), 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

/// Which executor pod allocator the driver runs.
#[derive(Clone, Copy, PartialEq)]
enum Allocator {
    /// Spark's own (`ExecutorPodsAllocator`).
    Spark,
    /// kshuffle-scheduler, through the JVM adapter of `scheduler/jvm`.
    Kshuffle,
    /// The same, the scheduler killed (SIGKILL) once the first executors are gone: the
    /// adapter starts it again, and the new one scales up for the second phase.
    KshuffleKilled,
}

async fn spark_daemonset_scenario(version: &str, allocator: Allocator) {
    let venv = common::spark_venv(version);
    let suffix = match allocator {
        Allocator::Spark => "",
        Allocator::Kshuffle => "-kshuffle-scheduler",
        Allocator::KshuffleKilled => "-kshuffle-scheduler-killed",
    };
    let work = work_dir(&format!("spark-k8s-daemonset-{version}{suffix}"));
    let kubelet = kubelet(&pyspark_home(&venv), &work.join("kubelet"), "127.0.4");
    // 1.5 CPUs a node: its daemon (250m) and one executor (1 CPU) fit, a second executor
    // goes to another node.
    let Cluster { server, ips, .. } = start_cluster(&kubelet, 1500, &[]).await;

    let spark_ns = "spark-jobs";
    let confs: Vec<String> = [
        "spark.kubernetes.container.image=kshuffle/spark-test",
        &format!("spark.kubernetes.namespace={spark_ns}"),
        "spark.driver.host=127.0.0.1",
        "spark.ui.enabled=false",
        "spark.executor.memory=512m",
        "spark.executor.cores=1",
        "spark.dynamicAllocation.minExecutors=0",
        "spark.dynamicAllocation.initialExecutors=0",
        "spark.dynamicAllocation.maxExecutors=2",
        "spark.dynamicAllocation.executorIdleTimeout=2s",
        "spark.dynamicAllocation.schedulerBacklogTimeout=1s",
        "spark.task.maxFailures=1",
    ]
    .map(str::to_owned)
    .into();
    let mut confs = confs;
    if allocator != Allocator::Spark {
        confs.extend(kshuffle_scheduler_confs(&pyspark_home(&venv), &work, ""));
        // One pod per batch: the log shows each created.
        confs.push("spark.kubernetes.allocation.batch.size=1".to_owned());
    }
    let mut cmd = spark_submit(&venv, &server, &work, "client", "submit", &confs);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/k8s_daemonset.py"))
        .args(["--test-pid", &std::process::id().to_string()])
        .args(["--daemons", &ips.join(",")]);
    let mut group = Group::spawn(&mut cmd);
    if allocator == Allocator::KshuffleKilled {
        // The adapter's files are in the driver's temp dir, so the scheduler's command line
        // names this test's work dir.
        let needle = format!("{}/kshuffle-scheduler-", work.join("jvm-tmp").display());
        eventually("an executor pod", 60, || {
            (!server.pods(spark_ns).is_empty()).then_some(())
        })
        .await;
        eventually("the first executors to be gone", 90, || {
            server.pods(spark_ns).is_empty().then_some(())
        })
        .await;
        let pids = kshuffle_testkit::support::processes_mentioning(&needle);
        assert_eq!(pids.len(), 1, "scheduler processes: {pids:?}");
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pids[0].to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }
    let status = eventually("spark-submit to exit", 150, || group.0.try_wait().unwrap()).await;
    let stdout = std::fs::read_to_string(work.join("submit.stdout")).unwrap();
    let stderr = std::fs::read_to_string(work.join("submit.stderr")).unwrap();
    let tail = common::tail(&stderr, 60);
    assert!(status.success(), "spark-submit: {status}\n{stdout}\n{tail}");
    let result: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}\n{tail}"));
    assert_eq!(result["spark_version"], version, "{result}");
    assert_eq!(result["phase_a_count"], 200_000, "{result}");
    assert_eq!(result["executors_gone"], true, "{result}");
    assert_eq!(result["phase_b_correct"], true, "{result}");
    // The map stage ran once: phase B read phase A's output, written by executors that
    // were gone (their pods deleted by Spark).
    assert_eq!(result["map_records_a"], 200_000, "{result}");
    assert_eq!(result["map_records_b"], 200_000, "{result}");
    // Executors ran on the nodes' addresses (hostNetwork).
    for host in result["phase_a_hosts"].as_array().unwrap() {
        assert!(ips.iter().any(|ip| host == ip), "{result}");
    }
    // The node daemons registered the executors, and phase B (with every writer gone) read
    // through them: blocks over the network, or the writers' local dirs for readers on the
    // same node (spark.shuffle.readHostLocalDisk).
    let registrations = metric(&ips, "kshuffle_registrations_total");
    assert!(registrations >= 2, "registrations: {registrations}");
    let count = |v: &Value| {
        v["kshuffle_fetch_shuffle_blocks_total"].as_u64().unwrap()
            + v["kshuffle_local_dirs_requests_total"].as_u64().unwrap()
    };
    let (before, after) = (
        count(&result["served_before_b"]),
        count(&result["served_after_b"]),
    );
    assert!(
        after > before,
        "phase B asked the node daemons nothing: {result}"
    );
    eprintln!("{result}\nregistrations {registrations}");
    // The executors' block manager dirs are in the nodes' hostPath directories, the ones the
    // daemons serve.
    let blockmgr = NODES.iter().any(|n| {
        std::fs::read_dir(kubelet.host_path(n, "/var/lib/kshuffle"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("blockmgr-"))
    });
    assert!(
        blockmgr,
        "no blockmgr-* dir in any node's /var/lib/kshuffle"
    );
    // Who created the executor pods: Spark's allocator logs each request; with the adapter,
    // kshuffle-scheduler (its log in the driver's) created them, one per batch, and stopped
    // when the driver closed its standard input.
    let spark_requests = stderr.contains("Going to request");
    match allocator {
        Allocator::Spark => assert!(spark_requests, "{tail}"),
        Allocator::Kshuffle | Allocator::KshuffleKilled => {
            assert!(!spark_requests, "Spark's allocator ran:\n{tail}");
            for needle in [
                "kshuffle-scheduler is ready at http://127.0.0.1:",
                "scheduler started",
                "standard input closed: shutting down",
            ] {
                assert!(stderr.contains(needle), "no {needle:?} in:\n{tail}");
            }
            let created: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("created executor pod"))
                .collect();
            assert!(
                created.len() >= 2,
                "{} pods created:\n{tail}",
                created.len()
            );
            // The adapter's every call carried the scheduler's API token.
            assert!(!stderr.contains("bearer token refused"), "{tail}");
            // Its files (in the driver's temp dir) went with the application.
            let left = kshuffle_testkit::support::kshuffle_scheduler_dirs_left(&work);
            assert!(left.is_empty(), "{left:?}");
            let ours: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("kshuffle") && !l.contains("JAVA_TOOL_OPTIONS"))
                .collect();
            eprintln!("{}", ours.join("\n"));
            let starts = stderr.matches("scheduler started").count();
            if allocator == Allocator::KshuffleKilled {
                assert!(
                    stderr.contains("kshuffle-scheduler exited with code")
                        && stderr.contains("starting it again"),
                    "{tail}"
                );
                assert_eq!(starts, 2, "{tail}");
                // The new scheduler used none of the ids the driver had seen: each executor
                // pod name was created once.
                let mut names: Vec<&str> = created
                    .iter()
                    .filter_map(|l| l.split("pod=").nth(1))
                    .collect();
                let all = names.len();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len(), all, "an executor id was used twice:\n{tail}");
            } else {
                assert_eq!(starts, 1, "{tail}");
            }
            // Nothing of the application is left: the scheduler deleted its pods.
            assert!(
                server
                    .pods(spark_ns)
                    .iter()
                    .all(|p| p.metadata.deletion_timestamp.is_some()),
                "{:?}",
                server.pods(spark_ns)
            );
        }
    }
    drop(group);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_4_3_dynamic_allocation_reads_removed_executors_output() {
    spark_daemonset_scenario("4.3.0", Allocator::Spark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_3_5_dynamic_allocation_reads_removed_executors_output() {
    spark_daemonset_scenario("3.5.9", Allocator::Spark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_4_3_with_kshuffle_scheduler_allocating_executor_pods() {
    spark_daemonset_scenario("4.3.0", Allocator::KshuffleKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_daemonset_3_5_with_kshuffle_scheduler_allocating_executor_pods() {
    spark_daemonset_scenario("3.5.9", Allocator::Kshuffle).await;
}
