//! A simulated cluster for the scheduler: the testkit's fake API server with nodes, a driver
//! pod and an executor template requesting 1 CPU and 1 GiB, plus a running scheduler.
//! Shared by the simulation tests and the `scale` benchmark.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kshuffle_scheduler::Scheduler;
use kshuffle_scheduler::config::Config;
use kshuffle_scheduler::pods;
use kshuffle_testkit::apiserver::Builder;
use kshuffle_testkit::{FakeApiServer, Node, kube_client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const NS: &str = "spark";

pub const TEMPLATE: &str = "
spec:
  containers:
    - name: spark-kubernetes-executor
      image: spark:4.0.0
      resources:
        requests: {cpu: '1', memory: 1Gi}
";

/// `n` nodes of 8 CPUs and 16 GiB: room for `8 * n` executors.
pub fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node::new(format!("node-{i}"), 8, 16))
        .collect()
}

pub struct Cluster {
    pub server: FakeApiServer,
    pub scheduler: Scheduler,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

impl Cluster {
    pub async fn start(builder: Builder, conf: &[&str]) -> Self {
        let server = builder.start().await.unwrap();
        let mut driver = Pod::default();
        driver.metadata.name = Some("driver".into());
        driver.spec = Some(PodSpec {
            containers: vec![Container {
                name: "spark-kubernetes-driver".into(),
                image: Some("spark:4".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        server.insert_pod(NS, driver).unwrap();
        let mut args = vec![
            "spark.app.id=sim",
            "spark.kubernetes.namespace=spark",
            "spark.kubernetes.driver.pod.name=driver",
            "spark.kubernetes.dynamicAllocation.deleteGracePeriod=1s",
        ];
        args.extend_from_slice(conf);
        let config = Config::from_args(args).unwrap();
        let template = pods::parse_template(TEMPLATE, None, None).unwrap();
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let scheduler = Scheduler::start(
            kube_client(&server, NS).unwrap(),
            &config,
            Some(template.into()),
            &tasks,
            cancel.clone(),
        )
        .await
        .unwrap();
        Self {
            server,
            scheduler,
            tasks,
            cancel,
        }
    }

    /// Executor pods on the server (not counted as API calls).
    pub fn executor_pods(&self) -> Vec<Pod> {
        self.server
            .pods(NS)
            .into_iter()
            .filter(|p| p.metadata.name.as_deref() != Some("driver"))
            .collect()
    }

    pub fn running(&self) -> usize {
        self.executor_pods()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count()
    }

    /// Waits (polling the fake, every 20 ms) until `cond` holds; panics after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills every executor, as a driver's idle timeouts would, until no executor pod is left
    /// (the scheduler's view may trail the server by a few events: kill what it has seen,
    /// again, until the server is empty). Panics after `limit`.
    pub async fn kill_all(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.executor_pods().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out killing executors"
            );
            let ids: Vec<_> = self
                .scheduler
                .executors()
                .into_iter()
                .map(|e| e.id)
                .collect();
            self.scheduler.kill_executors(&ids).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
