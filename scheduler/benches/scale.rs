//! Scale benchmark: the scheduler against the testkit's simulated cluster (fake API server
//! with API, scheduling and start latency, and node capacity). Prints, per scenario, the time
//! from `request_total_executors` until every executor pod runs (or is gone), the API calls
//! the fake server received, calls per pod and the most pods Pending at once.
//!
//! `cargo bench -p kshuffle-scheduler --bench scale` (add `-- quick` for the small scenarios
//! only). Numbers depend on the simulated latencies below, not on a real cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, nodes};
use kshuffle_testkit::{FakeApiServer, Latencies};

struct Scenario {
    name: &'static str,
    target: usize,
    conf: &'static [&'static str],
}

fn report(name: &str, phase: &str, pods: usize, took: Duration, c: &Cluster, calls_before: u64) {
    let calls = c.server.calls();
    let made = calls.total() - calls_before;
    println!(
        "{name:<28} {phase:<5} pods={pods:<5} time={:>7.2}s api_calls={made:<6} calls/pod={:<5.2} creates={:<5} max_pending={}",
        took.as_secs_f64(),
        made as f64 / pods.max(1) as f64,
        calls.create,
        c.server.max_pending().saturating_sub(1), // the driver pod was Pending once
    );
}

async fn run(s: &Scenario) {
    let c = Cluster::start(
        FakeApiServer::builder()
            .nodes(nodes(s.target.div_ceil(8) + 1))
            .api_latency(Duration::from_millis(2))
            .latencies(Latencies {
                schedule: Duration::from_millis(50),
                start: Duration::from_millis(500),
                terminate: Duration::from_millis(200),
            }),
        s.conf,
    )
    .await;
    c.wait("the first list", Duration::from_secs(30), |c| {
        c.scheduler.synced()
    })
    .await;
    let before = c.server.calls().total();
    let t0 = Instant::now();
    c.scheduler
        .request_total_executors(s.target as u32)
        .unwrap();
    c.wait("target running", Duration::from_secs(600), |c| {
        c.running() == s.target
    })
    .await;
    report(s.name, "up", s.target, t0.elapsed(), &c, before);

    let before = c.server.calls().total();
    let t0 = Instant::now();
    c.scheduler.request_total_executors(0).unwrap();
    c.kill_all(Duration::from_secs(600)).await;
    c.wait("no executors", Duration::from_secs(600), |c| {
        c.executor_pods().is_empty()
    })
    .await;
    report(s.name, "down", s.target, t0.elapsed(), &c, before);
    c.stop().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let scenarios = [
        Scenario {
            name: "spark-defaults (10/1s)",
            target: 100,
            conf: &[],
        },
        Scenario {
            name: "batch 50/200ms, pending<=100",
            target: 500,
            conf: &[
                "spark.kubernetes.allocation.batch.size=50",
                "spark.kubernetes.allocation.batch.delay=200ms",
                "spark.kubernetes.allocation.maxPendingPods=100",
            ],
        },
        Scenario {
            name: "batch 100/100ms, pending<=200",
            target: 1000,
            conf: &[
                "spark.kubernetes.allocation.batch.size=100",
                "spark.kubernetes.allocation.batch.delay=100ms",
                "spark.kubernetes.allocation.maxPendingPods=200",
            ],
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "simulated: API 2 ms/request, scheduling 50 ms, start 500 ms, termination 200 ms; 8 executors per node"
    );
    for s in scenarios
        .iter()
        .take(if quick { 1 } else { scenarios.len() })
    {
        rt.block_on(run(s));
    }
}
