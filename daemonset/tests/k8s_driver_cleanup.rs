//! Driver-pod cleanup in DaemonSet mode, with real Spark in cluster mode on a simulated
//! 3-node cluster: testkit's fake API server (real HTTP, real `kube` and fabric8 clients; no
//! Kubernetes cluster runs here), its DaemonSet controller and its process kubelet, which
//! runs the rendered DaemonSet's real `kshuffle-node` on every node and Spark's driver and
//! executor pods as local JVMs (the driver by Spark's image convention `driver`, reaching
//! its executors through its Service name, resolved by the kubelet's per-pod hosts file).
//!
//! `spark_k8s_driver_cleanup_*`: two applications at once, each in its own namespace, with
//! exactly `deploy/spark/spark-submit.flags` and the executor pod template, each writing
//! shuffle output on 2 executors (one node holds executors of both). The daemons run the
//! manifest's args with a 2 s `--driver-cleanup-delay` and an admin token (to list their
//! registrations). When A's driver pod has Succeeded, every node daemon drops exactly A's
//! registrations and `blockmgr-*` dirs, and B's stay as they were; when B's driver pod is
//! then deleted, B goes from every node too. B's executor pods are allocated by
//! `kshuffle-scheduler`, started in B's driver pod by the JVM adapter of `scheduler/jvm`
//! (cluster mode: owner references to the driver pod); A's by Spark's own allocator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_common::{
    Cluster, Group, admin_apps, common, eventually, eventually_or, kshuffle_scheduler_confs,
    kubelet, pyspark_home, spark_submit, start_cluster, work_dir,
};
use k8s_openapi::api::core::v1::Pod;
use kshuffle_testkit::FakeApiServer;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::Value;

const TOKEN: &str = "driver-cleanup-test-token";

/// One application: its namespace, submit process and control files.
struct App {
    ns: &'static str,
    name: &'static str,
    marker: PathBuf,
    release: PathBuf,
    go: PathBuf,
    submit: Group,
}

/// `spark-submit --deploy-mode cluster` of `k8s_driver_cleanup.py` into namespace `ns`;
/// `wait_go`: its driver creates its SparkContext only once `App::go` exists. `extra`:
/// more confs.
fn submit(
    venv: &Path,
    server: &FakeApiServer,
    work: &Path,
    ns: &'static str,
    wait_go: bool,
    extra: &[&str],
) -> App {
    let name = ns;
    let mut confs: Vec<String> = vec![
        "spark.kubernetes.container.image=kshuffle/spark-test".into(),
        format!("spark.kubernetes.namespace={ns}"),
        // The driver's API client (in-cluster default: https://kubernetes.default.svc).
        format!("spark.kubernetes.driver.master={}", server.url()),
        "spark.kubernetes.submission.waitAppCompletion=false".into(),
        format!("spark.pyspark.python={}", venv.join("bin/python").display()),
        "spark.ui.enabled=false".into(),
        "spark.driver.memory=512m".into(),
        "spark.kubernetes.driver.request.cores=100m".into(),
        "spark.executor.memory=512m".into(),
        "spark.executor.cores=1".into(),
        "spark.kubernetes.executor.request.cores=600m".into(),
        "spark.dynamicAllocation.minExecutors=2".into(),
        "spark.dynamicAllocation.initialExecutors=2".into(),
        "spark.dynamicAllocation.maxExecutors=2".into(),
        "spark.task.maxFailures=1".into(),
    ];
    confs.extend(extra.iter().map(|c| (*c).to_owned()));
    let marker = work.join(format!("{ns}.marker"));
    let release = work.join(format!("{ns}.release"));
    let go = work.join(format!("{ns}.go"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spark/k8s_driver_cleanup.py");
    let mut cmd = spark_submit(venv, server, work, "cluster", name, &confs);
    cmd.arg(format!("local://{}", script.display()))
        .arg("--marker")
        .arg(&marker)
        .arg("--release")
        .arg(&release);
    if wait_go {
        cmd.arg("--go").arg(&go);
    }
    App {
        ns,
        name,
        marker,
        release,
        go,
        submit: Group::spawn(&mut cmd),
    }
}

fn role(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get("spark-role")
        .map(String::as_str)
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

/// Registrations of every node: (node, app id) → (executor id, dir) pairs.
type Registrations = BTreeMap<(String, String), BTreeSet<(String, String)>>;

fn registrations(daemons: &[(String, String)]) -> Registrations {
    let mut out = Registrations::new();
    for (node, ip) in daemons {
        for app in admin_apps(ip, TOKEN).as_array().unwrap() {
            let id = app["appId"].as_str().unwrap().to_owned();
            let entry = out.entry((node.clone(), id)).or_default();
            for e in app["executors"].as_array().unwrap() {
                for dir in e["localDirs"].as_array().unwrap() {
                    entry.insert((
                        e["execId"].as_str().unwrap().to_owned(),
                        dir.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// The `blockmgr-*` dirs in every node's hostPath root, as (node, local path): the kubelet
/// maps the executors' `SPARK_LOCAL_DIRS`, so these are the paths they register.
fn blockmgr_dirs(
    kubelet: &kshuffle_testkit::apiserver::ProcessKubelet,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for node in k8s_common::NODES {
        let root = kubelet.host_path(node, "/var/lib/kshuffle");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("blockmgr-") {
                out.insert((node.to_owned(), e.path().display().to_string()));
            }
        }
    }
    out
}

/// The app's (node, dir) pairs in `regs`.
fn dirs_of(regs: &Registrations, app: &str) -> BTreeSet<(String, String)> {
    regs.iter()
        .filter(|((_, a), _)| a == app)
        .flat_map(|((node, _), dirs)| dirs.iter().map(|(_, d)| (node.clone(), d.clone())))
        .collect()
}

/// The app's driver pod, if there is one yet.
fn driver_pod(server: &FakeApiServer, ns: &str) -> Option<Pod> {
    server
        .pods(ns)
        .into_iter()
        .find(|p| role(p) == Some("driver"))
}

/// The standard error of `pod`'s container, as the kubelet keeps it (empty if none yet).
fn pod_stderr(
    kubelet: &kshuffle_testkit::apiserver::ProcessKubelet,
    ns: &str,
    pod: &Pod,
) -> String {
    pod.metadata
        .name
        .as_deref()
        .and_then(|name| std::fs::read_to_string(kubelet.pod_dir(ns, name).join("stderr")).ok())
        .unwrap_or_default()
}

/// The whole standard error of the app's driver pod (empty without one).
fn driver_stderr(
    kubelet: &kshuffle_testkit::apiserver::ProcessKubelet,
    server: &FakeApiServer,
    ns: &str,
) -> String {
    driver_pod(server, ns)
        .map(|d| pod_stderr(kubelet, ns, &d))
        .unwrap_or_default()
}

fn driver_log(
    kubelet: &kshuffle_testkit::apiserver::ProcessKubelet,
    server: &FakeApiServer,
    ns: &str,
) -> String {
    let Some(driver) = driver_pod(server, ns) else {
        return format!("(no driver pod in {ns})");
    };
    let err = pod_stderr(kubelet, ns, &driver);
    let st = driver.status.unwrap_or_default();
    format!(
        "phase {:?} reason {:?} message {:?} node {:?}\n{}",
        st.phase,
        st.reason,
        st.message,
        driver.spec.and_then(|s| s.node_name),
        common::tail(&err, 60)
    )
}

/// Panics with the driver's log if its pod failed.
fn check_driver(
    kubelet: &kshuffle_testkit::apiserver::ProcessKubelet,
    server: &FakeApiServer,
    ns: &str,
) {
    let failed = server
        .pods(ns)
        .iter()
        .any(|p| role(p) == Some("driver") && phase(p) == Some("Failed"));
    assert!(
        !failed,
        "the driver of {ns} failed: {}",
        driver_log(kubelet, server, ns)
    );
}

async fn spark_driver_cleanup_scenario(version: &str, network: &str) {
    let venv = common::spark_venv(version);
    let work = work_dir(&format!("spark-k8s-driver-cleanup-{version}"));
    let token = work.join("admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    // Its own pod network too: the drivers bind Spark's fixed ports on their pod IPs.
    let pod_network = format!(
        "127.{}",
        100 + network.rsplit('.').next().unwrap().parse::<u8>().unwrap()
    );
    let kubelet =
        kubelet(&pyspark_home(&venv), &work.join("kubelet"), network).pod_network(&pod_network);
    // 1.5 CPUs a node: the daemon (250m), drivers (100m) and executors (600m) are placed
    // first-fit so that one node holds an executor of each app (see below).
    let Cluster {
        server,
        client,
        daemons: pods,
        ..
    } = start_cluster(
        &kubelet,
        1500,
        &[
            "--driver-cleanup-delay=2s",
            &format!("--admin-token-file={}", token.display()),
        ],
    )
    .await;
    let daemons: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                node_of(p).unwrap().to_owned(),
                p.status.as_ref().unwrap().pod_ip.clone().unwrap(),
            )
        })
        .collect();

    // Both at once; A's driver asks for its executors once B's are placed. The drivers
    // (100m) and B's first executor fit on node-1, B's second goes to node-2, then A's to
    // node-2 and node-3. B's executors reach its driver by its Service's name (on 4.x the
    // default is the driver pod's IP: spark.kubernetes.executor.useDriverPodIP).
    // B's executor pods are created by kshuffle-scheduler, started by the JVM adapter in
    // B's driver pod.
    let mut b_confs = vec!["spark.kubernetes.executor.useDriverPodIP=false".to_owned()];
    b_confs.extend(kshuffle_scheduler_confs(
        &pyspark_home(&venv),
        &work,
        "local://",
    ));
    let b_confs: Vec<&str> = b_confs.iter().map(String::as_str).collect();
    let mut b = submit(&venv, &server, &work, "spark-b", false, &b_confs);
    let mut a = submit(&venv, &server, &work, "spark-a", true, &[]);
    let diagnose = |app: &App| {
        let out =
            std::fs::read_to_string(work.join(format!("{}.stderr", app.name))).unwrap_or_default();
        format!(
            "submit of {}:\n{}\ndriver:\n{}",
            app.ns,
            common::tail(&out, 30),
            driver_log(&kubelet, &server, app.ns)
        )
    };
    eventually_or(
        "B's 2 executor pods to be placed",
        90,
        || diagnose(&b),
        || {
            check_driver(&kubelet, &server, b.ns);
            let placed = server
                .pods(b.ns)
                .iter()
                .filter(|p| role(p) == Some("executor") && node_of(p).is_some())
                .count();
            (placed == 2).then_some(())
        },
    )
    .await;
    std::fs::write(&a.go, "").unwrap();
    for app in [&mut a, &mut b] {
        let status = eventually("spark-submit (cluster mode) to exit", 60, || {
            app.submit.0.try_wait().unwrap()
        })
        .await;
        assert!(status.success(), "{status}\n{}", diagnose(app));
    }
    let mut results = BTreeMap::new();
    for app in [&a, &b] {
        let text = eventually("the application's shuffle to be done", 120, || {
            check_driver(&kubelet, &server, app.ns);
            std::fs::read_to_string(&app.marker).ok()
        })
        .await;
        let r: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(r["correct"], true, "{r}");
        assert_eq!(r["spark_version"], version, "{r}");
        // The executors reached the driver at its Service's name (B; A too on 3.5) or at its
        // pod IP (A on 4.x), and said so in their logs.
        let host = r["driver_host"].as_str().unwrap();
        let driver_ip = server
            .pods(app.ns)
            .iter()
            .find(|p| role(p) == Some("driver"))
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            .unwrap();
        let by_name = host.ends_with(&format!("-driver-svc.{}.svc", app.ns));
        assert!(by_name || (app.ns == "spark-a" && host == driver_ip), "{r}");
        if app.ns == "spark-b" {
            assert!(by_name, "{r}");
        }
        for exec in server
            .pods(app.ns)
            .iter()
            .filter(|p| role(p) == Some("executor"))
        {
            let log = kubelet
                .pod_dir(app.ns, exec.metadata.name.as_deref().unwrap())
                .join("stderr");
            let log = std::fs::read_to_string(log).unwrap();
            let line = format!("Connecting to driver: spark://CoarseGrainedScheduler@{host}:");
            assert!(
                log.contains(&line),
                "{line} not in\n{}",
                common::tail(&log, 40)
            );
        }
        results.insert(app.ns, r);
    }
    // B's executor pods came from kshuffle-scheduler in its driver pod (its log is the
    // driver's), named and labelled as Spark's, owned by the driver pod; A's from Spark.
    let b_log = driver_stderr(&kubelet, &server, b.ns);
    assert!(
        b_log.contains("kshuffle-scheduler is ready at") && !b_log.contains("Going to request"),
        "{b_log}"
    );
    let b_driver_pod = driver_pod(&server, b.ns).unwrap();
    let b_execs: Vec<Pod> = server
        .pods(b.ns)
        .into_iter()
        .filter(|p| role(p) == Some("executor"))
        .collect();
    assert_eq!(b_execs.len(), 2);
    for p in &b_execs {
        let name = p.metadata.name.as_deref().unwrap();
        let id = &p.metadata.labels.as_ref().unwrap()["spark-exec-id"];
        assert!(name.ends_with(&format!("-exec-{id}")), "{name}");
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(Some(&owner.uid), b_driver_pod.metadata.uid.as_ref());
        assert_eq!(owner.kind, "Pod");
        let created = format!("created executor pod executor={id} pod=\"{name}\"");
        assert!(b_log.contains(&created), "{created} not in {b_log}");
    }
    let a_log = driver_stderr(&kubelet, &server, a.ns);
    assert!(
        a_log.contains("Going to request") && !a_log.contains("kshuffle-scheduler"),
        "{a_log}"
    );
    let app_a = results["spark-a"]["app_id"].as_str().unwrap().to_owned();
    let app_b = results["spark-b"]["app_id"].as_str().unwrap().to_owned();
    let exec_nodes = |ns: &str| -> BTreeSet<String> {
        server
            .pods(ns)
            .iter()
            .filter(|p| role(p) == Some("executor"))
            .filter_map(|p| node_of(p).map(str::to_owned))
            .collect()
    };
    let (nodes_a, nodes_b) = (exec_nodes("spark-a"), exec_nodes("spark-b"));
    assert!(
        nodes_a.intersection(&nodes_b).next().is_some(),
        "no node with executors of both apps: A {nodes_a:?}, B {nodes_b:?}"
    );

    // Both apps registered their 2 executors with the daemons of their nodes, and their
    // dirs are in those nodes' hostPath roots.
    let before = registrations(&daemons);
    let count = |app: &str| -> usize {
        let execs: BTreeSet<&str> = before
            .iter()
            .filter(|((_, a), _)| a == app)
            .flat_map(|(_, dirs)| dirs.iter().map(|(e, _)| e.as_str()))
            .collect();
        execs.len()
    };
    assert_eq!(count(&app_a), 2, "{before:?}");
    assert_eq!(count(&app_b), 2, "{before:?}");
    assert_eq!(before.len(), nodes_a.len() + nodes_b.len(), "{before:?}");
    let (dirs_a, dirs_b) = (dirs_of(&before, &app_a), dirs_of(&before, &app_b));
    let on_disk = blockmgr_dirs(&kubelet);
    assert!(
        dirs_a.is_subset(&on_disk) && dirs_b.is_subset(&on_disk),
        "{on_disk:?}"
    );

    // A ends: its driver pod Succeeds, and after the cleanup delay every node has dropped
    // exactly A's registrations and dirs.
    std::fs::write(&a.release, "").unwrap();
    eventually("A's driver pod to succeed", 60, || {
        let pods = server.pods(a.ns);
        let driver = pods.iter().find(|p| role(p) == Some("driver"))?;
        assert_ne!(phase(driver), Some("Failed"), "{}", diagnose(&a));
        (phase(driver) == Some("Succeeded")).then_some(())
    })
    .await;
    let after_a = eventually("A's cleanup on every node", 30, || {
        let regs = registrations(&daemons);
        let gone = regs.keys().all(|(_, app)| *app != app_a)
            && blockmgr_dirs(&kubelet).is_disjoint(&dirs_a);
        gone.then_some(regs)
    })
    .await;
    let b_only: Registrations = before
        .iter()
        .filter(|((_, app), _)| *app == app_b)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(after_a, b_only, "B's registrations changed");
    let left: BTreeSet<(String, String)> = on_disk.difference(&dirs_a).cloned().collect();
    assert_eq!(blockmgr_dirs(&kubelet), left, "other files were removed");

    // B's driver pod is deleted while it waits: B goes from every node.
    let b_driver = server
        .pods(b.ns)
        .into_iter()
        .find(|p| role(p) == Some("driver"))
        .and_then(|p| p.metadata.name)
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), b.ns)
        .delete(&b_driver, &DeleteParams::default())
        .await
        .unwrap();
    eventually("B's cleanup on every node", 60, || {
        let gone =
            registrations(&daemons).is_empty() && blockmgr_dirs(&kubelet).is_disjoint(&dirs_b);
        gone.then_some(())
    })
    .await;
    assert!(server.pod(b.ns, &b_driver).is_none());
    eprintln!(
        "A {app_a} on {nodes_a:?}, B {app_b} on {nodes_b:?}; removed A {dirs_a:?}, then B {dirs_b:?}"
    );
    drop(server);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_driver_cleanup_4_3() {
    spark_driver_cleanup_scenario("4.3.0", "127.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_k8s_driver_cleanup_3_5() {
    spark_driver_cleanup_scenario("3.5.9", "127.0.6").await;
}
