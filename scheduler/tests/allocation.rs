//! The scheduler against the fake API server of `kshuffle-testkit` with the real kube client:
//! pods created in batches with Spark's labels and owner reference, killed, replaced.
//! No Kubernetes cluster is involved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kshuffle_scheduler::config::Config;
use kshuffle_scheduler::ids::ExecutorId;
use kshuffle_scheduler::snapshots::ExecutorEvent;
use kshuffle_scheduler::{Scheduler, pods};
use kshuffle_testkit::{FakeApiServer, kube_client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NS: &str = "spark";

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn driver() -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("driver".into());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "spark-kubernetes-driver".into(),
            image: Some("spark:4".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    });
    p
}

fn config(extra: &[&str]) -> Config {
    let mut args = vec![
        "spark.app.id=spark-app-1",
        "spark.kubernetes.namespace=spark",
        "spark.kubernetes.driver.pod.name=driver",
        "spark.kubernetes.container.image=spark:4",
        "spark.kubernetes.allocation.batch.delay=20ms",
        "spark.kubernetes.executor.apiPollingInterval=500ms",
        "spark.kubernetes.dynamicAllocation.deleteGracePeriod=0s",
    ];
    args.extend_from_slice(extra);
    Config::from_args(args).unwrap()
}

fn running(server: &FakeApiServer) -> usize {
    server
        .pods(NS)
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("spark-role").is_some_and(|r| r == "executor"))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
}

fn running_driver(server: &FakeApiServer) -> bool {
    server
        .pod(NS, "driver")
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
        .is_some_and(|p| p == "Running")
}

fn executors(server: &FakeApiServer) -> Vec<Pod> {
    server
        .pods(NS)
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some("driver"))
        .collect()
}

async fn start(
    server: &FakeApiServer,
    conf: &Config,
) -> (Scheduler, TaskTracker, CancellationToken) {
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let s = Scheduler::start(
        kube_client(server, NS).unwrap(),
        conf,
        None,
        &tasks,
        cancel.clone(),
    )
    .await
    .unwrap();
    (s, tasks, cancel)
}

#[tokio::test]
async fn scales_up_in_batches_with_sparks_labels_then_kills() {
    let server = FakeApiServer::start().await.unwrap();
    let driver = server.insert_pod(NS, driver()).unwrap();
    eventually("the driver to run", || running_driver(&server)).await;
    let conf = config(&[
        "spark.kubernetes.allocation.batch.size=4",
        "spark.kubernetes.allocation.maxPendingPods=4",
    ]);
    let (sched, tasks, cancel) = start(&server, &conf).await;
    let mut events = sched.events();
    sched.request_total_executors(10).unwrap();
    eventually("10 running executors", || running(&server) == 10).await;
    eventually("the scheduler's view", || sched.counts().running == 10).await;

    let pods = executors(&server);
    assert_eq!(pods.len(), 10);
    let mut ids: Vec<u64> = Vec::new();
    for p in &pods {
        let l = p.metadata.labels.as_ref().unwrap();
        assert_eq!(l["spark-app-selector"], "spark-app-1");
        assert_eq!(l["spark-role"], "executor");
        let id: u64 = l["spark-exec-id"].parse().unwrap();
        assert_eq!(
            p.metadata.name.as_deref(),
            Some(format!("spark-app-1-exec-{id}").as_str())
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, driver.metadata.uid.clone().unwrap());
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    // maxPendingPods: never more than 4 Pending at once.
    assert!(
        server.max_pending() <= 4,
        "max pending {}",
        server.max_pending()
    );
    assert_eq!(server.calls().create, 10);

    let mut added = 0;
    within("10 added events", async {
        while added < 10 {
            if let ExecutorEvent::Added { .. } = events.recv().await.unwrap() {
                added += 1;
            }
        }
    })
    .await;

    // What Spark's allocation manager does on idle timeout: lower the total, kill.
    sched.request_total_executors(7).unwrap();
    let killed = sched
        .kill_executors(&[ExecutorId(2), ExecutorId(3), ExecutorId(4), ExecutorId(99)])
        .await;
    assert_eq!(killed, [ExecutorId(2), ExecutorId(3), ExecutorId(4)]);
    eventually("7 executors left", || executors(&server).len() == 7).await;
    let mut removed = Vec::new();
    within("3 removed events", async {
        while removed.len() < 3 {
            if let ExecutorEvent::Removed { id, reason } = events.recv().await.unwrap() {
                assert_eq!(reason, "Deleted");
                removed.push(id);
            }
        }
    })
    .await;
    removed.sort();
    assert_eq!(removed, [ExecutorId(2), ExecutorId(3), ExecutorId(4)]);
    // Settled: no replacement for killed executors.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(executors(&server).len(), 7);
    assert_eq!(server.calls().create, 10);
    cancel.cancel();
    tasks.close();
    within("shutdown", tasks.wait()).await;
}

#[tokio::test]
async fn failed_and_evicted_pods_are_deleted_and_replaced() {
    let server = FakeApiServer::start().await.unwrap();
    server.insert_pod(NS, driver()).unwrap();
    let (sched, _tasks, cancel) = start(&server, &config(&[])).await;
    let mut events = sched.events();
    sched.request_total_executors(3).unwrap();
    eventually("3 running", || running(&server) == 3).await;
    assert!(server.evict_pod(NS, "spark-app-1-exec-1"));
    assert!(server.exit_pod(NS, "spark-app-1-exec-2", 1));
    eventually("replacements running", || {
        running(&server) == 3 && executors(&server).len() == 3
    })
    .await;
    let names: Vec<String> = executors(&server)
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        names,
        [
            "spark-app-1-exec-3",
            "spark-app-1-exec-4",
            "spark-app-1-exec-5"
        ]
    );
    let mut reasons = Vec::new();
    within("removed events", async {
        while reasons.len() < 2 {
            if let ExecutorEvent::Removed { reason, .. } = events.recv().await.unwrap() {
                reasons.push(reason);
            }
        }
    })
    .await;
    reasons.sort();
    assert_eq!(reasons, ["Evicted", "Failed"]);
    assert_eq!(sched.counts().recent_failures, 2);
    cancel.cancel();
}

#[tokio::test]
async fn a_missing_driver_pod_is_an_error_and_too_many_executors_are_refused() {
    let server = FakeApiServer::start().await.unwrap();
    let tasks = TaskTracker::new();
    let err = Scheduler::start(
        kube_client(&server, NS).unwrap(),
        &config(&[]),
        None,
        &tasks,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "driver_pod");
    assert!(
        err.to_string()
            .contains("no driver pod driver in namespace spark"),
        "{err}"
    );

    server.insert_pod(NS, driver()).unwrap();
    let conf = config(&[
        "spark.dynamicAllocation.enabled=true",
        "spark.dynamicAllocation.maxExecutors=5",
    ]);
    let (sched, _tasks, cancel) = start(&server, &conf).await;
    let err = sched.request_total_executors(6).unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested 6 executors, more than spark.dynamicAllocation.maxExecutors (5)"
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_pod_template_shapes_the_executors() {
    let server = FakeApiServer::start().await.unwrap();
    server.insert_pod(NS, driver()).unwrap();
    let template = pods::parse_template(
        "metadata: {labels: {team: data}}\nspec:\n  nodeSelector: {disk: ssd}\n  containers:\n  - name: spark-kubernetes-executor\n    image: spark:custom\n",
        None,
        None,
    )
    .unwrap();
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let conf = Config::from_args([
        "spark.app.id=app-2",
        "spark.kubernetes.namespace=spark",
        "spark.kubernetes.allocation.batch.delay=20ms",
    ])
    .unwrap();
    let sched = Scheduler::start(
        kube_client(&server, NS).unwrap(),
        &conf,
        Some(template.into()),
        &tasks,
        cancel.clone(),
    )
    .await
    .unwrap();
    sched.request_total_executors(1).unwrap();
    eventually("one pod", || executors(&server).len() == 1).await;
    let pod = executors(&server).remove(0);
    assert_eq!(pod.metadata.labels.as_ref().unwrap()["team"], "data");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
    assert_eq!(spec.containers[0].image.as_deref(), Some("spark:custom"));
    assert!(
        pod.metadata.owner_references.is_none(),
        "no driver pod configured"
    );
    cancel.cancel();
}

/// A Rust driver embedding both halves: Spark's policy (clock injected, one tick per second)
/// decides, the scheduler creates and deletes pods.
#[tokio::test]
async fn the_policy_drives_the_scheduler() {
    use kshuffle_scheduler::ids::StageId;
    use kshuffle_scheduler::policy::{Policy, TaskEnd};

    let server = FakeApiServer::start().await.unwrap();
    server.insert_pod(NS, driver()).unwrap();
    let conf = config(&[
        "spark.dynamicAllocation.enabled=true",
        "spark.shuffle.service.enabled=true",
        "spark.dynamicAllocation.maxExecutors=20",
        "spark.dynamicAllocation.executorIdleTimeout=30s",
    ]);
    let (sched, _tasks, cancel) = start(&server, &conf).await;
    let mut policy = Policy::new(conf.dynamic_allocation.clone());
    let sec = Duration::from_secs;
    policy.stage_submitted(sec(0), StageId(0), 100, None);
    // Ramp-up ticks at 1s, 2s, 3s, 4s, 5s: 1, 3, 7, 15, 20 (max).
    for t in 1..=5 {
        let d = policy.schedule(sec(t));
        sched.apply_decision(&d).await.unwrap();
    }
    assert_eq!(policy.target(), 20);
    eventually("20 running", || running(&server) == 20).await;
    eventually("the scheduler to see them", || {
        sched
            .executors()
            .iter()
            .filter(|e| e.state == kshuffle_scheduler::snapshots::PodState::Running)
            .count()
            == 20
    })
    .await;
    // The driver registers the executors; they each run one task and go idle at 10s.
    for e in sched.executors() {
        policy.executor_added(sec(5), e.id);
        policy.task_started(sec(5), StageId(0), e.id);
        policy.task_ended(sec(10), StageId(0), e.id, TaskEnd::Success);
    }
    policy.stage_completed(StageId(0));
    // Nothing pending: the target drops at once; the idle executors go 30s after 10s.
    let d = policy.schedule(sec(11));
    assert!(d.target_changed && d.target == 0 && d.remove.is_empty());
    sched.apply_decision(&d).await.unwrap();
    let d = policy.schedule(sec(40));
    assert_eq!(d.remove.len(), 20);
    assert_eq!(sched.apply_decision(&d).await.unwrap().len(), 20);
    eventually("all gone", || executors(&server).is_empty()).await;
    assert_eq!(server.calls().create, 20);
    cancel.cancel();
}
