//! The scheduler at scale against a simulated cluster (the testkit's fake API server with
//! scheduling latency and node capacity). Real time with small latencies; nothing here
//! asserts on durations, only on what happened: counts of pods, API calls and pending pods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, nodes};
use kshuffle_testkit::{FakeApiServer, Latencies, Outage};

fn latencies() -> Latencies {
    Latencies {
        schedule: Duration::from_millis(5),
        start: Duration::from_millis(20),
        terminate: Duration::from_millis(10),
    }
}

// A guard against hangs, not a timing assertion: generous for a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(240);

fn exec_ids(c: &Cluster) -> Vec<u64> {
    c.executor_pods()
        .iter()
        .map(|p| {
            p.metadata.labels.as_ref().unwrap()["spark-exec-id"]
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_to_a_thousand_and_back_within_the_pending_cap_and_proportional_calls() {
    let c = Cluster::start(
        FakeApiServer::builder()
            .nodes(nodes(125))
            .latencies(latencies())
            .api_latency(Duration::from_millis(1)),
        &[
            "spark.kubernetes.allocation.batch.size=50",
            "spark.kubernetes.allocation.batch.delay=10ms",
            "spark.kubernetes.allocation.maxPendingPods=100",
            "spark.kubernetes.executor.apiPollingInterval=5s",
        ],
    )
    .await;
    c.scheduler.request_total_executors(1000).unwrap();
    c.wait("1000 running", LIMIT, |c| c.running() == 1000).await;
    c.wait("the scheduler's view", LIMIT, |c| {
        c.scheduler.counts().running == 1000
    })
    .await;
    let up = c.server.calls();
    // Steady state: no busy polling (only the periodic list may come).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = c.server.calls();
    assert!(
        idle.total() - up.total() <= 1,
        "calls while idle: {idle:?} vs {up:?}"
    );

    c.scheduler.request_total_executors(0).unwrap();
    c.kill_all(LIMIT).await;
    c.wait("no executor pods", LIMIT, |c| c.executor_pods().is_empty())
        .await;

    let calls = c.server.calls();
    let pending = c.server.max_pending();
    // The driver pod was Pending once too.
    assert!(pending <= 101, "max pending {pending}");
    assert_eq!(
        calls.create, 1000,
        "one create per executor, none repeated: {calls:?}"
    );
    // Creates, 10 delete-collections of 100 ids, a few lists and watches, the driver GET.
    assert!(
        calls.total() <= 1100,
        "API calls not proportional to pods: {calls:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_are_timed_out_not_retried_in_a_loop() {
    let c = Cluster::start(
        FakeApiServer::builder()
            .nodes(nodes(2))
            .latencies(latencies()),
        &[
            "spark.kubernetes.allocation.batch.size=10",
            "spark.kubernetes.allocation.batch.delay=10ms",
            "spark.kubernetes.allocation.maxPendingPods=10",
            "spark.kubernetes.allocation.executor.timeout=500ms",
            "spark.executor.maxNumFailures=20",
        ],
    )
    .await;
    // Room for 16; ask for 40.
    c.scheduler.request_total_executors(40).unwrap();
    c.wait("allocation to stop after too many failures", LIMIT, |c| {
        c.scheduler.counts().stopped
    })
    .await;
    let at_stop = c.server.calls().create;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = c.server.calls();
    assert_eq!(later.create, at_stop, "no creates once stopped");
    assert_eq!(c.running(), 16, "what fits runs");
    // Bounded, not a loop: the 16 that fit, the 20 failures allowed, at most one pending cap
    // (10) timed out in the round that stops it, and one more cap of requests re-created
    // because a loaded machine showed them late (Spark's creation-timeout rule).
    assert!(later.create <= 16 + 20 + 10 + 10, "{later:?}");
    assert!(
        c.server.max_pending() <= 11,
        "max pending {}",
        c.server.max_pending()
    );
    c.stop().await;
}

async fn outage_midway(outage: Outage) {
    let c = Cluster::start(
        FakeApiServer::builder()
            .nodes(nodes(50))
            .latencies(latencies())
            // Small history: after the outage the watch must relist (410).
            .history_limit(50),
        &[
            "spark.kubernetes.allocation.batch.size=30",
            "spark.kubernetes.allocation.batch.delay=10ms",
            "spark.kubernetes.executor.apiPollingInterval=1s",
        ],
    )
    .await;
    c.scheduler.request_total_executors(300).unwrap();
    c.wait("100 running", LIMIT, |c| c.running() >= 100).await;
    c.server.start_outage(outage);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile the cluster moves on: an executor is evicted.
    let victim = c.executor_pods()[0].metadata.name.clone().unwrap();
    assert!(c.server.evict_pod(common::NS, &victim));
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.server.end_outage();
    c.wait("300 running, the evicted one replaced", LIMIT, |c| {
        c.running() == 300 && c.executor_pods().len() == 300
    })
    .await;
    // The scheduler's view matches the server: nothing lost.
    c.wait("the scheduler's view to match", LIMIT, |c| {
        let mine: BTreeSet<u64> = c.scheduler.executors().iter().map(|e| e.id.0).collect();
        mine == exec_ids(c).into_iter().collect()
    })
    .await;
    // No duplicates: settled at exactly the target, every id once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids = exec_ids(&c);
    assert_eq!(ids.len(), 300);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 300);
    let calls = c.server.calls();
    assert!(calls.list >= 2, "relisted after the outage: {calls:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_midway_refusing_connections_loses_and_duplicates_nothing() {
    outage_midway(Outage::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_midway_answering_503_loses_and_duplicates_nothing() {
    outage_midway(Outage::Unavailable).await;
}
