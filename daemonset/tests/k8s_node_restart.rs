//! Issue 10's scenario "a node daemon pod is killed in the middle of a job": real
//! `spark-submit --master k8s://…` in client mode with exactly `deploy/spark/spark-submit.flags`
//! and the executor pod template, on a simulated cluster of 3 nodes (testkit's fake API server,
//! its DaemonSet controller and process kubelet running the rendered DaemonSet with the real
//! `kshuffle-node`; no Kubernetes cluster runs here, see `k8s_common`).
//!
//! Two executors write a shuffle's map output on two nodes, go idle and are removed (Spark
//! deletes their pods), so the only copy of the output is behind those nodes' daemons. Then,
//! between the map and the reduce stage (the job waits for a signal file):
//! - one node's daemon process is SIGKILLed: its container dies and the kubelet restarts it in
//!   the same pod (`restartPolicy: Always`), with no chance to flush anything;
//! - the other node's daemon pod is deleted (as `kubectl delete pod`): SIGTERM, and the
//!   DaemonSet controller creates a new pod on that node.
//!
//! Each new daemon reloads its registrations from the node's state hostPath (its
//! `kshuffle_registered_executors` gauge and its "registry loaded" log line equal what the old
//! one had), and the reduce stage, run by new executors, reads the map output through them: the
//! result is exact, the map-side accumulator is unchanged (no map stage re-ran), and both
//! restarted daemons served blocks or local dirs. The daemons are back before the reduce stage
//! starts, so Spark's fetch retries are not needed here (`shuffle/tests/spark_e2e.rs` covers a
//! daemon restarted inside the retry window).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_common::{
    Cluster, Group, NODES, NS, common, eventually, kubelet, metric, pyspark_home, ready,
    spark_submit, start_cluster, work_dir,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::Value;

/// The simulated nodes' /24 (tests running at once must not share one).
const NETWORK: &str = "127.0.41";
/// Records the job's map stage writes.
const N: u64 = 200_000;

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// The pid of the live `kshuffle-node` process serving `root` (the kubelet maps the
/// manifest's `--allowed-root` into the node's directory, so its command line names it).
fn daemon_pid(root: &Path) -> Option<u32> {
    let bin = env!("CARGO_BIN_EXE_kshuffle-node");
    let root = format!("--allowed-root={}", root.display());
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            let mut args = cmd.split(|b| *b == 0).map(String::from_utf8_lossy);
            let first = args.next()?;
            (!zombie && first == bin && args.any(|a| a == root.as_str())).then_some(pid)
        })
}

/// The `executors` of the last "registry loaded" line of a daemon's log.
fn loaded_executors(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"registry loaded\""))
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["fields"]["executors"].as_u64()
        })
        .collect()
}

async fn node_restart_scenario(version: &str) {
    let venv = common::spark_venv(version);
    let work = work_dir(&format!("spark-k8s-node-restart-{version}"));
    let kubelet = kubelet(&pyspark_home(&venv), &work.join("kubelet"), NETWORK);
    // 1.5 CPUs a node: its daemon (250m) and one executor (1 CPU) fit, so the two executors
    // run on two nodes.
    let Cluster {
        server,
        client,
        ips,
        ..
    } = start_cluster(&kubelet, 1500, &[]).await;
    let node_by_ip = |ip: &str| {
        (0..NODES.len())
            .find(|i| kubelet.node_address(*i) == ip)
            .map(|i| NODES[i])
            .unwrap_or_else(|| panic!("{ip} is no node's address ({ips:?})"))
    };

    let signals = work.join("signals");
    std::fs::create_dir_all(&signals).unwrap();
    let confs: Vec<String> = [
        "spark.kubernetes.container.image=kshuffle/spark-test",
        "spark.kubernetes.namespace=spark-jobs",
        "spark.driver.host=127.0.0.1",
        "spark.ui.enabled=false",
        "spark.executor.memory=512m",
        "spark.executor.cores=1",
        "spark.dynamicAllocation.minExecutors=0",
        "spark.dynamicAllocation.initialExecutors=2",
        "spark.dynamicAllocation.maxExecutors=2",
        // Long enough for both initial executors to still be there when the job starts (the
        // SparkContext waits for them to register; on a loaded machine they come seconds
        // apart), short enough to keep the test quick.
        "spark.dynamicAllocation.executorIdleTimeout=10s",
        "spark.dynamicAllocation.schedulerBacklogTimeout=1s",
        "spark.task.maxFailures=1",
    ]
    .map(str::to_owned)
    .to_vec();
    let name = "k8s-node-restart";
    let mut cmd = spark_submit(&venv, &server, &work, "client", name, &confs);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/k8s_node_restart.py"))
        .args(["--test-pid", &std::process::id().to_string()])
        .arg("--signal-dir")
        .arg(&signals);
    let mut group = Group::spawn(&mut cmd);
    let stderr_tail = || {
        let text = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap_or_default();
        common::tail(&text, 60)
    };

    // Phase A done and every executor gone.
    let phase_a: Value = eventually("the job's map stage", 150, || {
        if let Some(status) = group.0.try_wait().unwrap() {
            panic!("spark-submit exited early: {status}\n{}", stderr_tail());
        }
        let text = std::fs::read_to_string(signals.join("phase_a.json")).ok()?;
        serde_json::from_str(&text).ok()
    })
    .await;
    assert_eq!(phase_a["phase_a_count"], N, "{phase_a}");
    assert_eq!(phase_a["map_records_a"], N, "{phase_a}");
    let mut hosts: Vec<String> = phase_a["phase_a_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    hosts.dedup();
    assert_eq!(hosts.len(), 2, "two executors on two nodes: {phase_a}");
    let (ip_killed, ip_deleted) = (hosts[0].clone(), hosts[1].clone());
    let (node_killed, node_deleted) = (node_by_ip(&ip_killed), node_by_ip(&ip_deleted));
    // Spark deleted the executors' pods; they are gone once their JVMs exited.
    eventually("the executors' pods to be gone", 60, || {
        server.pods("spark-jobs").is_empty().then_some(())
    })
    .await;
    // Both nodes hold map output (in the hostPath the daemons serve), and their daemons the
    // writers' registrations.
    let mut registered = Vec::new();
    for (node, ip) in [(node_killed, &ip_killed), (node_deleted, &ip_deleted)] {
        let root = kubelet.host_path(node, "/var/lib/kshuffle");
        let data = files_ending(&root, ".data");
        assert!(!data.is_empty(), "no map output under {}", root.display());
        let n = metric(std::slice::from_ref(ip), "kshuffle_registered_executors");
        assert!(n >= 1, "{node}: {n} registered executors");
        registered.push(n);
    }

    let daemon_on = |node: &str| {
        server
            .pods(NS)
            .into_iter()
            .find(|p| node_of(p) == node)
            .unwrap_or_else(|| panic!("no daemon pod on {node}"))
    };
    // node_killed: SIGKILL the daemon's process (the container dies at once).
    let killed_pod = daemon_on(node_killed);
    let killed_name = killed_pod.metadata.name.clone().unwrap();
    assert_eq!(restarts(&killed_pod), 0);
    let pid = daemon_pid(&kubelet.host_path(node_killed, "/var/lib/kshuffle"))
        .unwrap_or_else(|| panic!("no kshuffle-node process of {node_killed}"));
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // node_deleted: delete the daemon's pod.
    let deleted_name = daemon_on(node_deleted).metadata.name.clone().unwrap();
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete(&deleted_name, &DeleteParams::default())
        .await
        .unwrap();

    // The kubelet restarts the killed container in its pod; the DaemonSet controller
    // replaces the deleted pod on its node.
    let restarted = eventually(
        "the killed daemon's container restarted and Ready",
        60,
        || {
            let p = server.pod(NS, &killed_name)?;
            (restarts(&p) >= 1 && ready(&p)).then_some(p)
        },
    )
    .await;
    assert_eq!(node_of(&restarted), node_killed);
    let replacement = eventually(
        "a new Ready daemon pod on the deleted pod's node",
        60,
        || {
            server.pods(NS).into_iter().find(|p| {
                node_of(p) == node_deleted
                    && p.metadata.name.as_deref() != Some(deleted_name.as_str())
                    && ready(p)
            })
        },
    )
    .await;
    assert!(server.pod(NS, &deleted_name).is_none());
    assert_ne!(
        daemon_pid(&kubelet.host_path(node_killed, "/var/lib/kshuffle")),
        Some(pid),
        "a new process"
    );
    // Each new daemon reloaded every registration of the old one from the state hostPath.
    let log = |pod: &str| kubelet.pod_dir(NS, pod).join("stderr");
    let killed_loads = loaded_executors(&log(&killed_name));
    assert_eq!(
        killed_loads.len(),
        2,
        "the killed container's log (restarts append) has two loads: {killed_loads:?}"
    );
    assert_eq!(killed_loads.last(), Some(&registered[0]));
    let replacement_name = replacement.metadata.name.clone().unwrap();
    assert_eq!(
        loaded_executors(&log(&replacement_name)),
        [registered[1]],
        "the replacement pod's load"
    );
    assert_eq!(
        metric(
            std::slice::from_ref(&ip_killed),
            "kshuffle_registered_executors"
        ),
        registered[0]
    );
    assert_eq!(
        metric(
            std::slice::from_ref(&ip_deleted),
            "kshuffle_registered_executors"
        ),
        registered[1]
    );

    // Phase B: the reduce stage reads the map output through the restarted daemons.
    std::fs::write(signals.join("go"), b"").unwrap();
    let status = eventually("spark-submit to exit", 150, || group.0.try_wait().unwrap()).await;
    let stdout = std::fs::read_to_string(work.join(format!("{name}.stdout"))).unwrap();
    assert!(
        status.success(),
        "spark-submit: {status}\n{stdout}\n{}",
        stderr_tail()
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}\n{}", stderr_tail()));
    assert_eq!(result["spark_version"], version, "{result}");
    assert_eq!(result["phase_b_correct"], true, "{result}");
    // The map stage ran once: the reduce read phase A's output, through the new daemons.
    assert_eq!(result["map_records_b"], N, "{result}");
    // Spark's own log agrees: one map stage attempt, submitted once (phase B submitted only
    // its result stage).
    let driver_log = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap();
    let map_submits = driver_log
        .lines()
        .filter(|l| l.contains("missing tasks from ShuffleMapStage"))
        .count();
    assert_eq!(map_submits, 1, "{}", stderr_tail());
    // The counters of the new daemon processes count only what they served: each of them
    // was asked for blocks (remote readers) or for the writers' dirs (readers on its node).
    for ip in [&ip_killed, &ip_deleted] {
        let ip = std::slice::from_ref(ip);
        let served = metric(ip, "kshuffle_fetch_shuffle_blocks_total")
            + metric(ip, "kshuffle_local_dirs_requests_total");
        assert!(
            served > 0,
            "{ip:?} served nothing after its restart: {result}"
        );
    }
    eprintln!(
        "{result}\nkilled {node_killed} ({killed_name}), deleted {node_deleted} \
         ({deleted_name} -> {replacement_name}), registrations reloaded {registered:?}"
    );
    drop(group);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_node_restart_4_3_daemons_killed_between_stages_reload_and_serve() {
    node_restart_scenario("4.3.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_node_restart_3_5_daemons_killed_between_stages_reload_and_serve() {
    node_restart_scenario("3.5.9").await;
}
