//! The scheduler of one application, for drivers that embed it: `request_total_executors`,
//! `kill_executors`, executor added/removed events. It runs the snapshot feed and the
//! allocation loop (one round per `spark.kubernetes.allocation.batch.delay`, and at once
//! when the target changes with no request outstanding, as Spark's
//! `setTotalExpectedExecutors` does).
//!
//! Talks to Kubernetes only through the `kube` client it is given. No cluster runs in our
//! tests: they give it a client for the fake API server of `kshuffle-testkit`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allocator::{API_CALL_TIMEOUT, Allocator, Applier, Counts, Settings};
use crate::config::Config;
use crate::ids::ExecutorId;
use crate::pods::{self, Factory, Template, owner_reference};
use crate::snapshots::{self, ExecutorEvent, ExecutorPod, Store};

/// Errors of the scheduler's API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A requested total above `spark.dynamicAllocation.maxExecutors`.
    #[error(
        "requested {requested} executors, more than spark.dynamicAllocation.maxExecutors ({max})"
    )]
    TooMany {
        /// What was asked.
        requested: u32,
        /// The limit.
        max: u32,
    },
    /// The pod template cannot be used.
    #[error(transparent)]
    Template(#[from] pods::Error),
    /// The driver pod named by `spark.kubernetes.driver.pod.name` could not be read.
    #[error("no driver pod {name} in namespace {namespace}: {source}")]
    DriverPod {
        /// Its name.
        name: String,
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The driver pod lookup timed out.
    #[error("timed out reading the driver pod {0}")]
    DriverPodTimeout(String),
}

impl Error {
    /// A label for metrics; `TooMany` and `Template` are the caller's, `DriverPod*` the
    /// cluster's.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooMany { .. } => "too_many",
            Self::Template(e) => e.kind(),
            Self::DriverPod { .. } => "driver_pod",
            Self::DriverPodTimeout(_) => "driver_pod_timeout",
        }
    }
}

#[derive(Debug)]
struct Inner {
    allocator: Arc<Mutex<Allocator>>,
    store: Arc<Store>,
    applier: Applier,
    wake: Notify,
    max_total: u32,
}

/// A handle on a running scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Starts the snapshot feed and the allocation loop on `tasks`, until `cancel`.
    ///
    /// Reads the driver pod first when `spark.kubernetes.driver.pod.name` is set, for the
    /// owner reference (Spark fails the application when it is missing; so do we).
    ///
    /// # Errors
    /// [`Error::DriverPod`] / [`Error::DriverPodTimeout`].
    pub async fn start(
        client: kube::Client,
        config: &Config,
        template: Option<Template>,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let k = &config.kubernetes;
        let api: Api<Pod> = Api::namespaced(client, &k.namespace);
        let owner = match &k.driver_pod_name {
            None => None,
            Some(name) => {
                crate::metrics::api_call("get");
                let driver = tokio::time::timeout(API_CALL_TIMEOUT, api.get(name))
                    .await
                    .map_err(|_| Error::DriverPodTimeout(name.clone()))?
                    .map_err(|source| Error::DriverPod {
                        name: name.clone(),
                        namespace: k.namespace.clone(),
                        source,
                    })?;
                owner_reference(&driver)
            }
        };
        let factory = Factory::new(
            template,
            &config.app_id,
            k.pod_name_prefix.as_deref(),
            k.container_image.as_deref(),
            k.pod_template_container_name.as_deref(),
            owner,
        )
        .with_executor(config.executor.clone());
        let selector = factory.selector();
        let applier = Applier::new(api.clone(), factory, k.delete_grace_period);
        let mut allocator = Allocator::new(Settings::from_config(config));
        allocator.set_target(config.dynamic_allocation.initial_executors);
        let store = Arc::new(Store::new());
        let da = &config.dynamic_allocation;
        let inner = Arc::new(Inner {
            allocator: Arc::new(Mutex::new(allocator)),
            store: Arc::clone(&store),
            applier,
            wake: Notify::new(),
            max_total: if da.enabled {
                da.max_executors
            } else {
                i32::MAX as u32
            },
        });
        tasks.spawn(snapshots::run(
            api,
            selector,
            k.api_polling_interval,
            store,
            cancel.child_token(),
        ));
        tasks.spawn(run_loop(
            Arc::clone(&inner),
            k.batch_delay,
            cancel.child_token(),
        ));
        Ok(Self { inner })
    }

    fn allocator(&self) -> MutexGuard<'_, Allocator> {
        self.inner
            .allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the total number of executors wanted (Spark's `requestTotalExecutors`).
    ///
    /// # Errors
    /// [`Error::TooMany`] above `spark.dynamicAllocation.maxExecutors`.
    pub fn request_total_executors(&self, total: u32) -> Result<(), Error> {
        if total > self.inner.max_total {
            return Err(Error::TooMany {
                requested: total,
                max: self.inner.max_total,
            });
        }
        let mut a = self.allocator();
        a.set_target(total);
        metrics::gauge!("kshuffle_scheduler_target_executors").set(f64::from(total));
        if a.outstanding() == 0 {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Kills executors (Spark's `killExecutors` without adjusting the target): deletes their
    /// pods with the kill grace period. Returns the executors it will kill (unknown ids are
    /// ignored).
    pub async fn kill_executors(&self, ids: &[ExecutorId]) -> Vec<ExecutorId> {
        let snap = self.inner.store.snapshot();
        let killed = self.allocator().kill(Instant::now(), &snap, ids);
        if !killed.is_empty() {
            self.inner.applier.kill(&killed).await;
        }
        killed
    }

    /// Carries out a [`policy::Decision`](crate::policy::Decision) the way Spark's
    /// `ExecutorAllocationManager` does: a new total when the target changed, then the idle
    /// executors killed without adjusting it. Returns the executors killed.
    ///
    /// # Errors
    /// [`Error::TooMany`] when the target exceeds `spark.dynamicAllocation.maxExecutors`.
    pub async fn apply_decision(
        &self,
        decision: &crate::policy::Decision,
    ) -> Result<Vec<ExecutorId>, Error> {
        if decision.target_changed {
            self.request_total_executors(decision.target)?;
        }
        if decision.remove.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.kill_executors(&decision.remove).await)
    }

    /// Whether the scheduler deleted this executor's pod (Spark's `isDeleted`), so a late
    /// registration from it can be refused.
    pub fn is_deleted(&self, id: ExecutorId) -> bool {
        self.allocator().is_deleted(id)
    }

    /// Executor added/removed events from now on.
    pub fn events(&self) -> broadcast::Receiver<ExecutorEvent> {
        self.inner.store.events()
    }

    /// The executor pods as last seen.
    pub fn executors(&self) -> Vec<ExecutorPod> {
        self.inner.store.snapshot().pods.into_values().collect()
    }

    /// Whether a complete list of the executor pods has been seen.
    pub fn synced(&self) -> bool {
        self.inner.store.snapshot().synced
    }

    /// Counts as of the last allocation round.
    pub fn counts(&self) -> Counts {
        self.allocator().counts()
    }

    /// Deletes every executor pod of the application (Spark's `ExecutorPodsAllocator.stop`),
    /// when the application ends. Not called on our own shutdown: a restarted scheduler picks
    /// the pods up again.
    ///
    /// # Errors
    /// The API error, if the call failed.
    pub async fn stop_application(&self) -> Result<(), kube::Error> {
        self.allocator().set_target(0);
        let api = self.inner.applier.api();
        let lp = ListParams::default().labels(&self.inner.applier.factory().selector());
        crate::metrics::api_call("deletecollection");
        api.delete_collection(&DeleteParams::default(), &lp)
            .await
            .map(|_| ())
    }
}

async fn run_loop(inner: Arc<Inner>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
            () = inner.wake.notified() => {}
        }
        let started = Instant::now();
        let snap = inner.store.snapshot();
        let (plan, counts) = {
            let mut a = inner.allocator.lock().unwrap_or_else(|e| e.into_inner());
            let plan = a.round(started, &snap);
            (plan, a.counts())
        };
        metrics::gauge!("kshuffle_scheduler_pods", "state" => "running")
            .set(f64::from(counts.running));
        metrics::gauge!("kshuffle_scheduler_pods", "state" => "pending")
            .set(f64::from(counts.pending));
        metrics::gauge!("kshuffle_scheduler_pods", "state" => "failed")
            .set(f64::from(counts.failed));
        if !plan.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = inner.applier.apply(plan, &inner.allocator) => {}
            }
        }
        metrics::counter!("kshuffle_scheduler_rounds_total").increment(1);
        metrics::histogram!("kshuffle_scheduler_round_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}
